//! Approximate band search through class centroids. An anchor's other-label neighbours in a
//! band lie almost all in the classes whose centroids are nearest to it: on 100,000 clustered
//! points in 5,000 classes, its 500 nearest class centroids held 99.3% of its true in-band
//! negatives. So each anchor is scored against every centroid (a pure-Rust GEMM per block of
//! anchors; from `CELLS_FROM_CLASSES` classes only against those of the cells it opens, see
//! `cells.rs`) and picks its `candidates` nearest classes; then each class, whose members are
//! one run of a class-ordered copy of the points, is scored against the anchors that picked
//! it, and the scores pass through the exact backend's fused row scan. Classes that the
//! triangle inequality rules out are never picked, so a band is exact (and says so) whenever
//! the cap cut no class it could reach and no unopened cell could hold one.

use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use super::cells::{Cells, CELLS_FROM_CLASSES};
use super::exact::{BandRows, Row};
use super::{
    gemm, open_bands, Band, BandHits, ExactIndex, Neighbour, NeighbourIndex, Points, Restriction,
};

/// Slack on the centroid bound for float32 rounding in the scores it is compared with.
pub(super) const BOUND_SLACK: f32 = 1e-4;

/// Anchor × centroid scores live at once in one worker's tile.
const CENTROID_SCORES_PER_TILE: usize = 1 << 20;

/// Anchors whose picked classes are held at once: a pass's lists hold up to this many times
/// `candidates` entries (a million anchors at once held gigabytes).
const ANCHORS_PER_PASS: usize = 1 << 16;

/// Candidate classes per neighbour asked for when the question is an anchor's nearest
/// other-label samples rather than a band.
const GRAPH_CLASSES_PER_NEIGHBOUR: usize = 4;

pub struct ClassIndex<'a> {
    exact: ExactIndex<'a>,
    /// The points with each class's members in one run of rows (row-major, `dim` wide).
    grouped: Vec<f32>,
    dim: usize,
    /// Row of `grouped` of each sample.
    position: Vec<usize>,
    /// Sample index of each row of `grouped`.
    order: Vec<usize>,
    /// Rows of `grouped` per class.
    runs: Vec<Range<usize>>,
    /// Class of each sample, as an index into `runs`.
    class_of: Vec<usize>,
    level: ClassLevel,
}

/// The class level of the classes path, apart from where the members are: each class's mean
/// and radius, and cells over the means at many classes. In memory it sits beside a
/// class-ordered copy of the points; out of core (`mine::blocks`) it is built from the
/// shards' class summaries and is all an anchor block needs to pick its classes.
pub struct ClassLevel {
    dim: usize,
    /// Unnormalised class means, classes × dim, row-major.
    /// Empty when `cells` holds them.
    centroids: Vec<f32>,
    /// Largest distance of a member from its class mean.
    radius: Vec<f32>,
    /// The centroids grouped into cells, when there are too many to score each per anchor.
    cells: Option<Cells>,
    candidates: usize,
}

/// Which classes each row of a band search looks in, class by class (what a block of anchors
/// carries to every block of the corpus): the rows (a band search's distinct queries,
/// ascending) that search class `c` are `rows[offsets[c]..offsets[c + 1]]`, ascending, and
/// `whole[r]` says that row `r` searched every class its bands could reach.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClassPicks {
    pub offsets: Vec<usize>,
    pub rows: Vec<u32>,
    pub whole: Vec<bool>,
}

impl ClassPicks {
    /// Each row's picked classes (and whether that was every reachable one) turned around.
    fn from_rows(picks: Vec<(Vec<u32>, bool)>, classes: usize) -> Self {
        let mut offsets = vec![0usize; classes + 1];
        for (picked, _) in &picks {
            for &c in picked {
                offsets[c as usize + 1] += 1;
            }
        }
        for c in 0..classes {
            offsets[c + 1] += offsets[c];
        }
        let mut next = offsets.clone();
        let mut rows = vec![0u32; offsets[classes]];
        let mut whole = Vec::with_capacity(picks.len());
        for (r, (picked, all)) in picks.into_iter().enumerate() {
            whole.push(all);
            for c in picked {
                rows[next[c as usize]] = r as u32;
                next[c as usize] += 1;
            }
        }
        ClassPicks {
            offsets,
            rows,
            whole,
        }
    }

    /// The rows that search `class` (none for a class these picks do not know).
    pub fn rows_of(&self, class: usize) -> &[u32] {
        match (self.offsets.get(class), self.offsets.get(class + 1)) {
            (Some(&start), Some(&end)) => &self.rows[start..end],
            _ => &[],
        }
    }

    /// Refuses picks that cannot belong to `rows` rows and `classes` classes.
    pub fn check(&self, rows: usize, classes: usize) -> Result<(), String> {
        let consistent = self.offsets.len() == classes + 1
            && self.offsets.first() == Some(&0)
            && self.offsets.windows(2).all(|w| w[0] <= w[1])
            && self.offsets.last() == Some(&self.rows.len())
            && self.whole.len() == rows
            && self.rows.iter().all(|&r| (r as usize) < rows);
        if consistent {
            Ok(())
        } else {
            Err(format!(
                "class picks for {} rows and {} classes do not fit {rows} rows and {classes} \
                 classes (picks of another anchor block, or damaged)",
                self.whole.len(),
                self.offsets.len().saturating_sub(1)
            ))
        }
    }
}

/// Where the classes path looks for a band's members, searching `candidates` classes.
pub fn classes_reach(candidates: usize) -> String {
    format!("the members of the {candidates} nearest classes")
}

/// A class's mean (accumulated in float64) and radius: the largest distance of a member from
/// the mean. `members` are its rows, each `dim` wide.
pub fn class_summary<'r>(
    members: impl Iterator<Item = &'r [f32]> + Clone,
    dim: usize,
) -> (Vec<f32>, f32) {
    let mut sum = vec![0f64; dim];
    let mut count = 0usize;
    for row in members.clone() {
        count += 1;
        for (s, &x) in sum.iter_mut().zip(row) {
            *s += f64::from(x);
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / count.max(1) as f64).collect();
    let radius = members
        .map(|row| {
            let squared: f64 = mean
                .iter()
                .zip(row)
                .map(|(m, &x)| (f64::from(x) - m).powi(2))
                .sum();
            squared.sqrt() as f32
        })
        .fold(0.0, f32::max);
    (mean.iter().map(|&m| m as f32).collect(), radius)
}

impl ClassLevel {
    /// The level over `means` (classes × dim) and `radius`, picking `candidates` classes per
    /// query, through cells from [`CELLS_FROM_CLASSES`] classes on.
    pub fn new(means: Vec<f32>, radius: Vec<f32>, dim: usize, candidates: usize) -> Self {
        Self::with_cells_from(means, radius, dim, candidates, CELLS_FROM_CLASSES)
    }

    pub(crate) fn with_cells_from(
        means: Vec<f32>,
        radius: Vec<f32>,
        dim: usize,
        candidates: usize,
        cells_from: usize,
    ) -> Self {
        let classes = radius.len();
        let cells = (classes >= cells_from.max(1)).then(|| Cells::new(&means, &radius, dim));
        let centroids = if cells.is_some() { Vec::new() } else { means };
        // More candidates than classes means every class; the cap keeps the ranking's
        // buffers (a few times the count) from overflowing on a huge --candidate-classes.
        let candidates = candidates.clamp(1, classes.max(1));
        ClassLevel {
            dim,
            centroids,
            radius,
            cells,
            candidates,
        }
    }

    pub fn classes(&self) -> usize {
        self.radius.len()
    }

    pub fn candidates(&self) -> usize {
        self.candidates
    }

    /// How many centroids (or cell centres) each query is scored against, and how many
    /// queries are scored in one tile.
    fn query_block(&self) -> (usize, usize) {
        let scored = self.cells.as_ref().map_or(self.classes(), Cells::count);
        (
            scored,
            (CENTROID_SCORES_PER_TILE / scored.max(1)).clamp(1, 256),
        )
    }

    /// For each of `count` queries (`query(q)`: its unit vector, `own(q)`: its class,
    /// `threshold(q)`: the lowest dot product its bands accept), the `limit` nearest classes
    /// that the triangle inequality (a·x ≤ a·μ + r for a member x of a class with mean μ and
    /// radius r) leaves reachable, scored against every centroid or against those of the
    /// cells it opens; and whether that was every reachable class.
    fn pick<'q>(
        &self,
        count: usize,
        query: impl Fn(usize) -> &'q [f32] + Sync,
        own: impl Fn(usize) -> u32 + Sync,
        threshold: impl Fn(usize) -> f32 + Sync,
        limit: usize,
    ) -> Vec<(Vec<u32>, bool)> {
        let dim = self.dim;
        let (scored, block) = self.query_block();
        let radius = &self.radius[..];
        let targets = self
            .cells
            .as_ref()
            .map_or(&self.centroids[..], Cells::centres);
        let all: Vec<usize> = (0..count).collect();
        all.par_chunks(block)
            .flat_map_iter(|block_queries| {
                let queries: Vec<f32> = block_queries
                    .iter()
                    .flat_map(|&q| query(q).iter().copied())
                    .collect();
                let mut scores = vec![0f32; block_queries.len() * scored];
                gemm::dot_tile(&queries, targets, dim, &mut scores);
                let (mut opened, mut opened_scores) = (Vec::new(), Vec::new());
                block_queries
                    .iter()
                    .zip(queries.chunks_exact(dim))
                    .zip(scores.chunks_exact(scored))
                    .map(|((&q, anchor), scores)| {
                        let (own, threshold) = (own(q), threshold(q));
                        let Some(cells) = &self.cells else {
                            let (picked, capped) = pick_nearest(
                                scores,
                                |d| d as u32 != own,
                                |d| radius[d],
                                threshold,
                                limit,
                            );
                            return (picked.into_iter().map(|d| d as u32).collect(), !capped);
                        };
                        let unopened_reachable = cells.open(
                            anchor,
                            scores,
                            threshold,
                            limit,
                            &mut opened,
                            &mut opened_scores,
                        );
                        let (picked, capped) = pick_nearest(
                            &opened_scores,
                            |d| opened[d] != own,
                            |d| radius[opened[d] as usize],
                            threshold,
                            limit,
                        );
                        let picked = picked.into_iter().map(|d| opened[d]).collect();
                        (picked, !(capped || unopened_reachable))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The `limit` classes that each distinct query of `bands` (rows of `anchors`, whose
    /// labels are this level's classes) searches.
    pub fn pick_bands(&self, anchors: Points, bands: &[Band], limit: usize) -> ClassPicks {
        let band_rows = BandRows::new(bands, |q| (q, anchors.labels[q]));
        let sources = &band_rows.sources;
        self.pick_rows(
            &band_rows.rows,
            |r| anchors.row(sources[r]),
            |r| anchors.labels[sources[r]],
            limit,
        )
    }

    /// Classes searched for a query's `k` nearest other-label samples rather than a band:
    /// they lie in at most `k` classes, nearly always among the few nearest, so
    /// `GRAPH_CLASSES_PER_NEIGHBOUR × k` (when `--candidate-classes` is larger) find them at a
    /// fraction of the cost.
    pub fn nearest_limit(&self, k: usize) -> usize {
        self.candidates.min(GRAPH_CLASSES_PER_NEIGHBOUR * k).max(1)
    }

    /// The classes each of `rows` searches (`vector(r)`: row `r`'s query vector, `own(r)`:
    /// its class).
    fn pick_rows<'q>(
        &self,
        rows: &[Row],
        vector: impl Fn(usize) -> &'q [f32] + Sync,
        own: impl Fn(usize) -> u32 + Sync,
        limit: usize,
    ) -> ClassPicks {
        let picks = self.pick(rows.len(), vector, own, |r| rows[r].threshold, limit);
        ClassPicks::from_rows(picks, self.classes())
    }

    /// Where a band was looked for, for the reason an anchor was skipped.
    pub fn reach(&self) -> String {
        classes_reach(self.candidates)
    }

    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": "classes",
            "kernel": gemm::Kernel::current().name(),
            "classes": self.classes(),
            "candidate_classes": self.candidates,
            "cells": self.cells.as_ref().map(Cells::count),
        })
    }
}

impl<'a> ClassIndex<'a> {
    /// Indexes `points` for searching the `candidates` nearest classes of each anchor.
    pub fn new(points: Points<'a>, candidates: usize) -> Self {
        Self::with_cells_from(points, candidates, CELLS_FROM_CLASSES)
    }

    /// The same, with centroids grouped into cells from `cells_from` classes on.
    pub(crate) fn with_cells_from(
        points: Points<'a>,
        candidates: usize,
        cells_from: usize,
    ) -> Self {
        let exact = ExactIndex::new(points);
        let mut labels: Vec<u32> = points.labels.to_vec();
        labels.sort_unstable();
        labels.dedup();
        let class_of: Vec<usize> = points
            .labels
            .iter()
            .map(|l| labels.binary_search(l).expect("own label"))
            .collect();
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by_key(|&i| (class_of[i], i));
        let mut runs = vec![0..0; labels.len()];
        let mut start = 0;
        while start < order.len() {
            let class = class_of[order[start]];
            let end = start + order[start..].partition_point(|&i| class_of[i] == class);
            runs[class] = start..end;
            start = end;
        }
        let dim = points.dim;
        let mut means = Vec::with_capacity(labels.len() * dim);
        let mut radius = Vec::with_capacity(labels.len());
        for run in &runs {
            let (mean, r) = class_summary(order[run.clone()].iter().map(|&i| points.row(i)), dim);
            means.extend(mean);
            radius.push(r);
        }
        let grouped: Vec<f32> = order.iter().flat_map(|&i| points.row(i)).copied().collect();
        let mut position = vec![0; order.len()];
        for (row, &i) in order.iter().enumerate() {
            position[i] = row;
        }
        ClassIndex {
            exact,
            grouped,
            dim,
            position,
            order,
            runs,
            class_of,
            level: ClassLevel::with_cells_from(means, radius, dim, candidates, cells_from),
        }
    }

    /// Band members in each anchor's `candidates` nearest classes, a group of anchors at a
    /// time. A group is whole tiles, so tiles (and their rounding) are those of one pass.
    fn band_search_in(&self, bands: &[Band], candidates: usize) -> Vec<BandHits> {
        let labels = self.exact.points.labels;
        let mut band_rows = BandRows::new(bands, |q| (q, labels[q]));
        let mut searched_all = Vec::with_capacity(band_rows.rows.len());
        let block = self.level.query_block().1;
        let pass = (ANCHORS_PER_PASS / block).max(1) * block;
        for rows in band_rows.rows.chunks_mut(pass) {
            searched_all.extend(self.search_picked_classes(rows, candidates));
        }
        band_rows.answers(bands, |r| searched_all[r])
    }

    /// Fills `rows` from the `candidates` classes each picks, and says which searched every
    /// class its bands could reach.
    fn search_picked_classes(&self, rows: &mut [Row], candidates: usize) -> Vec<bool> {
        let (labels, points) = (self.exact.points.labels, self.exact.points);
        let picks = self.level.pick_rows(
            rows,
            |r| points.row(rows[r].query),
            |r| self.class_of[rows[r].query] as u32,
            candidates,
        );
        let anchor_rows: Vec<usize> = rows.iter().map(|row| self.position[row.query]).collect();
        let (grouped, dim) = (&self.grouped[..], self.dim);
        let jobs: Vec<(Range<usize>, &[u32])> = self
            .runs
            .iter()
            .enumerate()
            .map(|(class, run)| (run.clone(), picks.rows_of(class)))
            .filter(|(_, picked)| !picked.is_empty())
            .collect();
        scan_picked(
            rows,
            0,
            |r| &grouped[anchor_rows[r] * dim..(anchor_rows[r] + 1) * dim],
            &jobs,
            grouped,
            dim,
            |c| (self.order[c], labels[self.order[c]]),
        );
        picks.whole
    }
}

/// Band answers among one block of a corpus that is never whole in one process, on the
/// classes path (`mine::blocks`): the members of the classes that `picks` (from
/// [`ClassLevel::pick_bands`] on the same `bands`) chose, among the rows of `corpus`, named by
/// `corpus_ids`; `bands[i].query` is a row of `anchors`, the sample `anchor_ids` names. Each
/// class is one run of rows wherever it is whole in a block (shards are placed by label);
/// other blocks are grouped by label first. A band is complete when its row searched every
/// class it could reach, as [`ClassIndex`]'s are, so blocks agree on it.
pub fn band_search_picked(
    anchors: Points,
    anchor_ids: &[usize],
    bands: &[Band],
    picks: &ClassPicks,
    corpus: Points,
    corpus_ids: &[usize],
) -> Vec<BandHits> {
    let mut band_rows = BandRows::new(bands, |q| (anchor_ids[q], anchors.labels[q]));
    let labels = corpus.labels;
    let grouped = !labels.windows(2).any(|w| w[0] > w[1]);
    let order: Vec<usize> = if grouped {
        Vec::new()
    } else {
        let mut order: Vec<usize> = (0..corpus.len()).collect();
        order.sort_by_key(|&i| (labels[i], i));
        order
    };
    let at = |c: usize| if grouped { c } else { order[c] };
    let gathered: Vec<f32>;
    let members = if grouped {
        corpus.data
    } else {
        gathered = order.iter().flat_map(|&i| corpus.row(i)).copied().collect();
        &gathered
    };
    let mut classes: Vec<(Range<usize>, &[u32])> = Vec::new();
    let mut start = 0;
    while start < corpus.len() {
        let class = labels[at(start)];
        let end = start
            + (start..corpus.len())
                .take_while(|&c| labels[at(c)] == class)
                .count();
        let picked = picks.rows_of(class as usize);
        if !picked.is_empty() {
            classes.push((start..end, picked));
        }
        start = end;
    }
    // Rows a pass at a time, as in memory: the anchors a pass scores stay in cache (whole
    // anchor blocks at once ran 2.6× slower at 10⁶ rows).
    let sources = &band_rows.sources;
    let count = band_rows.rows.len();
    for (pass, rows) in band_rows.rows.chunks_mut(ANCHORS_PER_PASS).enumerate() {
        let first = pass * ANCHORS_PER_PASS;
        let last = (first + ANCHORS_PER_PASS).min(count);
        let jobs: Vec<(Range<usize>, &[u32])> = classes
            .iter()
            .map(|(run, picked)| {
                let from = picked.partition_point(|&r| (r as usize) < first);
                let to = picked.partition_point(|&r| (r as usize) < last);
                (run.clone(), &picked[from..to])
            })
            .filter(|(_, picked)| !picked.is_empty())
            .collect();
        scan_picked(
            rows,
            first,
            |r| anchors.row(sources[r]),
            &jobs,
            members,
            corpus.dim,
            |c| (corpus_ids[at(c)], labels[at(c)]),
        );
    }
    band_rows.answers(bands, |r| picks.whole[r])
}

/// Each job's members (a run of rows of `members`, `dim` wide) scored against the rows that
/// picked them (`anchor(r)`: row `r`'s query vector; `rows` are rows `first..` of the
/// search), the scores through those rows' scans;
/// `column(c)` is member row `c`'s sample and label. Jobs run in parallel, so a row can be
/// offered scores by two threads: each row has a lock, taken only when a score clears the
/// row's ceiling and threshold, which are read without it (a stale threshold is lower, so it
/// only costs a wasted lock).
fn scan_picked<'m>(
    rows: &mut [Row],
    first: usize,
    anchor: impl Fn(usize) -> &'m [f32] + Sync,
    jobs: &[(Range<usize>, &[u32])],
    members: &[f32],
    dim: usize,
    column: impl Fn(usize) -> (usize, u32) + Sync,
) {
    let bounds: Vec<(f32, AtomicU32)> = rows
        .iter()
        .map(|row| (row.ceiling, AtomicU32::new(row.threshold.to_bits())))
        .collect();
    let rows: Vec<Mutex<&mut Row>> = rows.iter_mut().map(Mutex::new).collect();
    jobs.par_iter().for_each(|(run, picked)| {
        let class_members = &members[run.start * dim..run.end * dim];
        let mut scores = vec![0f32; run.len()];
        for &picker in picked.iter() {
            score_members(anchor(picker as usize), class_members, &mut scores);
            let r = picker as usize - first;
            let (ceiling, threshold) = &bounds[r];
            let floor = f32::from_bits(threshold.load(Ordering::Relaxed));
            if scores.iter().all(|&x| x < floor || x > *ceiling) {
                continue;
            }
            let mut row = rows[r].lock().expect("unpoisoned");
            row.scan(&scores, |c| column(run.start + c));
            threshold.store(row.threshold.to_bits(), Ordering::Relaxed);
        }
    });
}

/// The `limit` classes of highest centroid score among those that `allowed` admits and the
/// bound leaves reachable (score + radius ≥ `threshold`), and whether any reachable class was
/// left out. Nearest centroid first: ranking by the bound (adding the radius) lost recall on
/// clustered data. With many classes, an order statistic of every 16th score gives a cut that
/// about 2 × `limit` scores clear, and only those are ranked; when fewer than `limit`
/// reachable classes clear it, all reachable classes are.
fn pick_nearest(
    scores: &[f32],
    allowed: impl Fn(usize) -> bool,
    radius: impl Fn(usize) -> f32,
    threshold: f32,
    limit: usize,
) -> (Vec<usize>, bool) {
    const STRIDE: usize = 16;
    let reachable = |d: usize| allowed(d) && scores[d] + radius(d) + BOUND_SLACK >= threshold;
    let cut = if scores.len() > 8 * limit {
        let mut sample: Vec<f32> = scores.iter().step_by(STRIDE).copied().collect();
        let rank = (2 * limit / STRIDE).min(sample.len() - 1);
        *sample.select_nth_unstable_by(rank, |a, b| b.total_cmp(a)).1
    } else {
        f32::NEG_INFINITY
    };
    let mut reachable_count = 0;
    let mut kept = Vec::with_capacity(4 * limit);
    for d in (0..scores.len()).filter(|&d| reachable(d)) {
        reachable_count += 1;
        if scores[d] >= cut {
            kept.push(d);
        }
    }
    if kept.len() < limit.min(reachable_count) {
        kept = (0..scores.len()).filter(|&d| reachable(d)).collect();
    }
    let (picked, _) = nearest(kept, limit, |d| scores[d]);
    (picked, reachable_count > limit)
}

/// The `limit` items of highest `score` (all when there are fewer), and whether any was cut.
fn nearest(
    mut items: Vec<usize>,
    limit: usize,
    score: impl Fn(usize) -> f32,
) -> (Vec<usize>, bool) {
    let capped = items.len() > limit;
    if capped {
        items.select_nth_unstable_by(limit - 1, |&a, &b| score(b).total_cmp(&score(a)));
        items.truncate(limit);
    }
    (items, capped)
}

impl NeighbourIndex for ClassIndex<'_> {
    /// k-NN lists are exact: only band search goes through the classes.
    fn search(&self, queries: &[usize], k: usize, restriction: Restriction) -> Vec<Vec<Neighbour>> {
        self.exact.search(queries, k, restriction)
    }

    /// Two passes over each group of anchors: each anchor picks its candidate classes, then
    /// each candidate class is multiplied once with the anchors that picked it (its members
    /// are one run of rows, so only the anchors are gathered) and the scores go through those
    /// anchors' rows.
    fn band_search(&self, bands: &[Band], _start_depth: usize, _max_depth: usize) -> Vec<BandHits> {
        self.band_search_in(bands, self.level.candidates)
    }

    /// A band search in [`ClassLevel::nearest_limit`] classes.
    fn nearest_other_labels(&self, queries: &[usize], k: usize) -> Vec<Vec<Neighbour>> {
        self.band_search_in(&open_bands(queries, k), self.level.nearest_limit(k))
            .into_iter()
            .map(|answer| answer.hits)
            .collect()
    }

    fn band_reach(&self, _max_depth: usize) -> String {
        self.level.reach()
    }

    fn describe(&self) -> serde_json::Value {
        self.level.describe()
    }
}

/// One anchor's dot product with each member (rows of `anchor.len()` values) into `scores`.
pub(super) fn score_members(anchor: &[f32], members: &[f32], scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features this function is compiled for.
        unsafe { score_members_fused(anchor, members, scores) };
        return;
    }
    score_members_with(anchor, members, scores, |x, y, acc| acc + x * y);
}

/// The same with fused multiply-adds on 8-float vectors (the portable build targets SSE2):
/// this is the bulk of the classes path's work.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn score_members_fused(anchor: &[f32], members: &[f32], scores: &mut [f32]) {
    score_members_with(anchor, members, scores, f32::mul_add);
}

/// Each dot product in eight lanes, which the compiler turns into vector instructions (a
/// plain iterator sum must keep its order and stays scalar). `step(x, y, acc)` accumulates.
/// Four accumulators, or four members at a time, measured slower here.
#[inline(always)]
fn score_members_with(
    anchor: &[f32],
    members: &[f32],
    scores: &mut [f32],
    step: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    for (score, member) in scores.iter_mut().zip(members.chunks_exact(anchor.len())) {
        let mut lanes = [0f32; 8];
        let (a8, b8) = (anchor.chunks_exact(8), member.chunks_exact(8));
        let tail: f32 = a8
            .remainder()
            .iter()
            .zip(b8.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in a8.zip(b8) {
            for i in 0..8 {
                lanes[i] = step(x[i], y[i], lanes[i]);
            }
        }
        *score = lanes.iter().sum::<f32>() + tail;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{brute_force, clustered};
    use super::*;

    fn semi_hard_bands(points: Points, width: f32, k: usize) -> Vec<Band> {
        (0..points.len())
            .step_by(3)
            .map(|q| {
                let nearest = brute_force(points, q, 1, Restriction::OtherLabels)[0].dot;
                Band {
                    query: q,
                    min_dot: nearest - 2.0 * width,
                    max_dot: nearest - width,
                    k,
                }
            })
            .collect()
    }

    fn band_oracle(points: Points, band: &Band) -> Vec<usize> {
        brute_force(points, band.query, usize::MAX, Restriction::OtherLabels)
            .into_iter()
            .filter(|n| n.dot >= band.min_dot && n.dot <= band.max_dot)
            .take(band.k)
            .map(|n| n.index)
            .collect()
    }

    #[test]
    fn the_sampled_cut_picks_what_ranking_every_reachable_class_picks() {
        let mut rng = crate::rng::Rng::new(9);
        let classes = 5000;
        let scores: Vec<f32> = (0..classes).map(|_| rng.normal() as f32).collect();
        let radius: Vec<f32> = (0..classes).map(|_| rng.next_f64() as f32 * 0.5).collect();
        for (threshold, limit) in [
            (f32::NEG_INFINITY, 50),
            (1.0, 50),
            (2.4, 50),
            (0.0, 400),
            (3.5, 10),
        ] {
            let (mut got, capped) =
                pick_nearest(&scores, |d| d != 7, |d| radius[d], threshold, limit);
            let mut all: Vec<usize> = (0..classes)
                .filter(|&d| d != 7 && scores[d] + radius[d] + BOUND_SLACK >= threshold)
                .collect();
            assert_eq!(capped, all.len() > limit);
            all.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
            all.truncate(limit);
            got.sort_unstable();
            all.sort_unstable();
            assert_eq!(got, all, "threshold {threshold}, limit {limit}");
        }
    }

    #[test]
    fn every_class_searched_is_exact_and_says_so() {
        let (data, labels) = clustered(9, 11, 16, 0.7, 8);
        let points = Points {
            data: &data,
            dim: 16,
            labels: &labels,
        };
        let bands = semi_hard_bands(points, 0.05, 4);
        let index = ClassIndex::new(points, 9);
        for (band, got) in bands.iter().zip(index.band_search(&bands, 1, 1)) {
            let got_ids: Vec<usize> = got.hits.iter().map(|n| n.index).collect();
            assert_eq!(got_ids, band_oracle(points, band), "{band:?}");
            assert!(got.complete);
        }
    }

    #[test]
    fn cells_opened_whole_are_exact_and_say_so() {
        let (data, labels) = clustered(200, 3, 16, 0.7, 5);
        let points = Points {
            data: &data,
            dim: 16,
            labels: &labels,
        };
        let index = ClassIndex::with_cells_from(points, 200, 1);
        assert_eq!(index.level.cells.as_ref().map(Cells::count), Some(14));
        let bands = semi_hard_bands(points, 0.05, 4);
        for (band, got) in bands.iter().zip(index.band_search(&bands, 1, 1)) {
            let got_ids: Vec<usize> = got.hits.iter().map(|n| n.index).collect();
            assert_eq!(got_ids, band_oracle(points, band), "{band:?}");
            assert!(got.complete);
        }
    }

    #[test]
    fn cells_find_most_nearest_negatives_and_flag_what_they_may_miss() {
        let (data, labels) = clustered(900, 3, 16, 0.3, 3);
        let points = Points {
            data: &data,
            dim: 16,
            labels: &labels,
        };
        let exact = ExactIndex::new(points);
        let all: Vec<usize> = (0..points.len()).step_by(7).collect();
        let truth = exact.nearest_other_labels(&all, 8);
        let recall = |index: &ClassIndex| {
            let got = index.nearest_other_labels(&all, 8);
            let found: usize = got
                .iter()
                .zip(&truth)
                .map(|(g, t)| {
                    g.iter()
                        .filter(|n| t.iter().any(|m| m.index == n.index))
                        .count()
                })
                .sum();
            found as f64 / (8 * all.len()) as f64
        };
        // Every class a candidate, but the 8 nearest are looked for in the 32 nearest classes.
        let every_mean = ClassIndex::new(points, 900);
        let through_cells = ClassIndex::with_cells_from(points, 900, 1);
        assert!(every_mean.level.cells.is_none() && through_cells.level.cells.is_some());
        let (r_all, r_cells) = (recall(&every_mean), recall(&through_cells));
        eprintln!("recall of the 8 nearest: every mean {r_all:.3}, cells {r_cells:.3}");
        // Random centres in 16 dimensions are nearly equidistant, the hardest case for cells:
        // opening 256 of 900 classes' means keeps 0.89 here, every mean scored 0.997.
        assert!(r_all > 0.98, "every mean's recall {r_all:.3}");
        assert!(r_cells > 0.8, "cells' recall {r_cells:.3}");
        let bands = semi_hard_bands(points, 0.05, 5);
        let mut incomplete = 0;
        let few_cells = ClassIndex::with_cells_from(points, 30, 1);
        for (band, got) in bands.iter().zip(few_cells.band_search(&bands, 1, 1)) {
            if got.complete {
                let got_ids: Vec<usize> = got.hits.iter().map(|n| n.index).collect();
                assert_eq!(
                    got_ids,
                    band_oracle(points, band),
                    "complete but wrong: {band:?}"
                );
            } else {
                incomplete += 1;
            }
        }
        assert!(
            incomplete > 0,
            "the cells never bound: the test measures nothing"
        );
    }

    #[test]
    fn nearest_classes_keep_most_band_members_and_flag_what_the_cap_may_miss() {
        let (data, labels) = clustered(60, 12, 24, 0.9, 2);
        let points = Points {
            data: &data,
            dim: 24,
            labels: &labels,
        };
        let index = ClassIndex::new(points, 15);
        let bands = semi_hard_bands(points, 0.05, 5);
        let (mut found, mut wanted, mut incomplete) = (0, 0, 0);
        for (band, got) in bands.iter().zip(index.band_search(&bands, 1, 1)) {
            let truth = band_oracle(points, band);
            let got_ids: Vec<usize> = got.hits.iter().map(|n| n.index).collect();
            found += truth.iter().filter(|i| got_ids.contains(i)).count();
            wanted += truth.len();
            if got.complete {
                assert_eq!(got_ids, truth, "complete but wrong: {band:?}");
            } else {
                incomplete += 1;
            }
            for n in &got.hits {
                assert!(n.dot >= band.min_dot && n.dot <= band.max_dot);
            }
        }
        let recall = found as f64 / wanted as f64;
        assert!(wanted > 500, "too few band members to measure: {wanted}");
        eprintln!(
            "recall {recall:.3}, {incomplete} of {} bands capped",
            bands.len()
        );
        assert!(recall > 0.9, "recall {recall:.3} from 15 of 60 classes");
        assert!(
            incomplete > 0,
            "the cap never bound: the test measures nothing"
        );
    }
}
