//! The coarse level of the classes path. With hundreds of thousands of classes, scoring every
//! anchor against every class mean is the search's whole cost (a million anchors against
//! 200,000 means is 2.6·10¹³ flops, minutes on this machine). So the class means are grouped
//! into about √classes cells by a few rounds of k-means; an anchor scores the cell centres,
//! opens its nearest cells until they hold a few times the classes it may pick, and picks
//! among their means only. A cell's bound (its centre's score plus its reach) says whether a
//! class left in an unopened cell could hold a band member, so an answer still says when it
//! may be incomplete.

use std::ops::Range;

use rayon::prelude::*;

use super::classes::{score_members, BOUND_SLACK};
use super::gemm;
use crate::rng::Rng;

/// Class count from which the classes path searches through cells. Below it every mean is
/// scored, as `make bench-mine` measured: 5,000 classes at 100,000 rows (99.3% of in-band
/// negatives in the 500 nearest classes) and 50,161 classes at a million rows (716 s, 92.4%
/// of the float64 nearest negatives). At 200,001 classes and a million rows the scoring alone
/// kept a training refresh busy for over 18 minutes; through cells it takes under a minute.
pub const CELLS_FROM_CLASSES: usize = 100_000;

/// An anchor opens cells until they hold this many times the classes it may pick.
const OPEN_FACTOR: usize = 8;

/// Rounds of k-means over the class means.
const LLOYD_ROUNDS: usize = 4;

pub(super) struct Cells {
    dim: usize,
    /// Cell centres, cells × dim.
    centres: Vec<f32>,
    /// Class ids grouped by cell.
    classes: Vec<u32>,
    /// The class means in the order of `classes`, dim wide.
    means: Vec<f32>,
    /// Rows of `classes` per cell.
    runs: Vec<Range<usize>>,
    /// Per cell, the largest |mean − centre| + class radius: no member of its classes has a
    /// dot product with a unit anchor above the centre's plus this.
    reach: Vec<f32>,
}

impl Cells {
    /// Cells over `means` (classes × dim, row-major) with each class's `radius`.
    pub(super) fn new(means: &[f32], radius: &[f32], dim: usize) -> Self {
        let count = radius.len();
        let cells = ((count as f64).sqrt().round() as usize).clamp(1, count.max(1));
        let mut rng = Rng::new(0xCE11_5EED);
        let mut start: Vec<usize> = (0..count).collect();
        rng.shuffle(&mut start);
        let mut centres: Vec<f32> = start[..cells]
            .iter()
            .flat_map(|&c| &means[c * dim..(c + 1) * dim])
            .copied()
            .collect();
        let mut cell_of = nearest_centres(means, &centres, dim);
        for _ in 1..LLOYD_ROUNDS {
            let mut sums = vec![0f64; cells * dim];
            let mut sizes = vec![0usize; cells];
            for (c, &g) in cell_of.iter().enumerate() {
                sizes[g] += 1;
                for (s, &x) in sums[g * dim..(g + 1) * dim]
                    .iter_mut()
                    .zip(&means[c * dim..(c + 1) * dim])
                {
                    *s += f64::from(x);
                }
            }
            // An emptied cell keeps its old centre.
            for (g, &size) in sizes.iter().enumerate().filter(|(_, &s)| s > 0) {
                for (slot, s) in centres[g * dim..(g + 1) * dim]
                    .iter_mut()
                    .zip(&sums[g * dim..(g + 1) * dim])
                {
                    *slot = (s / size as f64) as f32;
                }
            }
            cell_of = nearest_centres(means, &centres, dim);
        }
        let mut classes: Vec<u32> = (0..count as u32).collect();
        classes.sort_by_key(|&c| (cell_of[c as usize], c));
        let mut runs = vec![0..0; cells];
        let mut reach = vec![f32::NEG_INFINITY; cells];
        for (row, &c) in classes.iter().enumerate() {
            let g = cell_of[c as usize];
            if runs[g].is_empty() {
                runs[g] = row..row;
            }
            runs[g].end = row + 1;
            let mean = &means[c as usize * dim..(c as usize + 1) * dim];
            let centre = &centres[g * dim..(g + 1) * dim];
            let apart: f64 = mean
                .iter()
                .zip(centre)
                .map(|(&m, &z)| (f64::from(m) - f64::from(z)).powi(2))
                .sum();
            reach[g] = reach[g].max(apart.sqrt() as f32 + radius[c as usize]);
        }
        let grouped = classes
            .iter()
            .flat_map(|&c| &means[c as usize * dim..(c as usize + 1) * dim])
            .copied()
            .collect();
        Cells {
            dim,
            centres,
            classes,
            means: grouped,
            runs,
            reach,
        }
    }

    pub(super) fn count(&self) -> usize {
        self.runs.len()
    }

    pub(super) fn centres(&self) -> &[f32] {
        &self.centres
    }

    /// The classes of the cells an anchor opens, with their mean scores, and whether a class
    /// of an unopened cell could reach `threshold`. `cell_scores` are the anchor's dot
    /// products with the centres; cells open nearest first until they hold `OPEN_FACTOR ×
    /// limit` classes. `scores` and `classes` are cleared and filled.
    pub(super) fn open(
        &self,
        anchor: &[f32],
        cell_scores: &[f32],
        threshold: f32,
        limit: usize,
        classes: &mut Vec<u32>,
        scores: &mut Vec<f32>,
    ) -> bool {
        classes.clear();
        scores.clear();
        let wanted = OPEN_FACTOR * limit;
        let mut order: Vec<usize> = (0..self.count()).collect();
        // Most anchors open a few cells: rank a few times what the average cell size needs
        // first, and all of them only when those hold too few classes.
        let average = self.classes.len().div_ceil(self.count().max(1)).max(1);
        let first = (2 * wanted.div_ceil(average) + 2).min(order.len());
        let by_score = |a: &usize, b: &usize| cell_scores[*b].total_cmp(&cell_scores[*a]);
        if first < order.len() {
            order.select_nth_unstable_by(first - 1, by_score);
        }
        order[..first].sort_unstable_by(by_score);
        let mut opened = order.len();
        for rank in 0..order.len() {
            if classes.len() >= wanted {
                opened = rank;
                break;
            }
            if rank == first {
                order[first..].sort_unstable_by(by_score);
            }
            let run = self.runs[order[rank]].clone();
            classes.extend_from_slice(&self.classes[run.clone()]);
            let at = scores.len();
            scores.resize(at + run.len(), 0.0);
            score_members(
                anchor,
                &self.means[run.start * self.dim..run.end * self.dim],
                &mut scores[at..],
            );
        }
        order[opened..].iter().any(|&g| {
            !self.runs[g].is_empty() && cell_scores[g] + self.reach[g] + BOUND_SLACK >= threshold
        })
    }
}

/// The nearest centre of each mean (largest μ·z − |z|²/2).
fn nearest_centres(means: &[f32], centres: &[f32], dim: usize) -> Vec<usize> {
    let cells = centres.len() / dim;
    let half_norms: Vec<f32> = centres
        .chunks_exact(dim)
        .map(|z| z.iter().map(|x| x * x).sum::<f32>() / 2.0)
        .collect();
    let block = (1 << 18) / cells.max(1);
    means
        .par_chunks(block.max(1) * dim)
        .flat_map_iter(|block| {
            let mut tile = vec![0f32; block.len() / dim * cells];
            gemm::dot_tile(block, centres, dim, &mut tile);
            tile.chunks_exact(cells)
                .map(|row| {
                    (0..cells)
                        .max_by(|&a, &b| {
                            (row[a] - half_norms[a]).total_cmp(&(row[b] - half_norms[b]))
                        })
                        .expect("one cell at least")
                })
                .collect::<Vec<_>>()
        })
        .collect()
}
