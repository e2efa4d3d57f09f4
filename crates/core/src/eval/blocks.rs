//! Retrieval metrics over a corpus never whole in one process, in the blocked miner's shape
//! (`mine::blocks`), exact: a query's metrics follow from the rank of each of its relevant rows,
//! and that rank is its place among its class's rows (all in its anchor block) plus the
//! other-label rows that score above it, counts that add across corpus blocks.
//!
//! 1. [`relevant`]: each query's relevant scores (its class's other rows), highest first.
//! 2. [`count_closer`]: per relevant score, the other-label rows of one corpus block that
//!    rank between it and the one before.
//! 3. [`merge`]: several corpus blocks' counts as one (they add).
//! 4. [`tally`]: the anchor block's sums of the metrics; [`Tally::add`] and
//!    [`Tally::metrics`] give [`super::evaluate`]'s numbers (rows ranked as [`super::Against`]
//!    ranks them: by Euclidean distance, ties putting the relevant row first).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Metrics, RECALL_AT};
use crate::knn::{dot_tile, CORPUS_BLOCK};
use crate::mine::blocks::{Block, BlockError};

/// Queries of one worker's tile.
const QUERY_TILE: usize = 256;

/// Each query's relevant scores, flat: query `q` holds `scores[offsets[q]..offsets[q+1]]`,
/// highest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Relevant {
    pub offsets: Vec<usize>,
    pub scores: Vec<f32>,
}

impl Relevant {
    pub(super) fn from_lists(lists: Vec<Vec<f32>>) -> Self {
        let mut out = Relevant {
            offsets: vec![0],
            scores: Vec::new(),
        };
        for s in lists {
            out.scores.extend(s);
            out.offsets.push(out.scores.len());
        }
        out
    }
}

/// Ranking by Euclidean distance is ranking by q·r − |r|²/2, highest first.
fn half_norm(row: &[f32]) -> f32 {
    0.5 * row.iter().map(|v| v * v).sum::<f32>()
}

/// Reference row `r`'s ranking score for query `q`: higher is nearer.
pub(super) fn score(q: &[f32], r: &[f32]) -> f32 {
    q.iter().zip(r).map(|(a, b)| a * b).sum::<f32>() - half_norm(r)
}

/// Rows and their labels, of queries or of a reference.
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub data: &'a [f32],
    pub labels: &'a [u32],
}

impl<'a> Rows<'a> {
    fn of(block: Block<'a>) -> Self {
        Rows {
            data: block.points.data,
            labels: block.points.labels,
        }
    }
}

/// The 1-based ranks of a query's relevant rows from their counts (per relevant row, the
/// other-label rows between it and the one before): the relevant rows before it, itself, and
/// every other-label row above it.
pub(super) fn ranks(between: &[u64]) -> Vec<usize> {
    let mut closer = 0usize;
    between
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            closer += c as usize;
            j + 1 + closer
        })
        .collect()
}

/// Step 1: the relevant scores of every row of `anchors` (which holds whole classes).
pub fn relevant(anchors: Block) -> Relevant {
    let p = anchors.points;
    let mut members: std::collections::HashMap<u32, Vec<usize>> = Default::default();
    for (i, &l) in p.labels.iter().enumerate() {
        members.entry(l).or_default().push(i);
    }
    let lists: Vec<Vec<f32>> = (0..p.len())
        .into_par_iter()
        .map(|q| {
            let mut s: Vec<f32> = members[&p.labels[q]]
                .iter()
                .filter(|&&j| j != q)
                .map(|&j| score(p.row(q), p.row(j)))
                .collect();
            s.sort_unstable_by(|a, b| b.total_cmp(a));
            s
        })
        .collect();
    Relevant::from_lists(lists)
}

/// Step 2: for each relevant score of each query, how many other-label rows of `corpus`
/// score between it and the previous relevant score (flat, aligned with `relevant.scores`).
pub fn count_closer(anchors: Block, relevant: &Relevant, corpus: Block) -> Vec<u64> {
    count_between(
        Rows::of(anchors),
        relevant,
        Rows::of(corpus),
        anchors.points.dim,
    )
}

/// [`count_closer`] on plain rows: what [`super::Against`] (a separate reference) uses too.
pub(super) fn count_between(
    queries: Rows,
    relevant: &Relevant,
    reference: Rows,
    dim: usize,
) -> Vec<u64> {
    let half: Vec<f32> = reference.data.chunks_exact(dim).map(half_norm).collect();
    let (nq, nr) = (queries.labels.len(), reference.labels.len());
    let all: Vec<usize> = (0..nq).collect();
    let per_tile: Vec<Vec<u64>> = all
        .par_chunks(QUERY_TILE)
        .map(|tile_queries| {
            let first = tile_queries[0];
            let rows = &queries.data[first * dim..(first + tile_queries.len()) * dim];
            let own = |q: usize| &relevant.scores[relevant.offsets[q]..relevant.offsets[q + 1]];
            let mut counts: Vec<Vec<u64>> = tile_queries
                .iter()
                .map(|&q| vec![0; own(q).len()])
                .collect();
            let mut tile = Vec::new();
            for start in (0..nr).step_by(CORPUS_BLOCK) {
                let len = CORPUS_BLOCK.min(nr - start);
                tile.resize(tile_queries.len() * len, 0.0);
                dot_tile(
                    rows,
                    &reference.data[start * dim..(start + len) * dim],
                    dim,
                    &mut tile,
                );
                for (x, (&q, dots)) in tile_queries.iter().zip(tile.chunks_exact(len)).enumerate() {
                    let scores = own(q);
                    let Some(&farthest) = scores.last() else {
                        continue;
                    };
                    let label = queries.labels[q];
                    for (col, &dot) in dots.iter().enumerate() {
                        let s = dot - half[start + col];
                        if s <= farthest || reference.labels[start + col] == label {
                            continue;
                        }
                        counts[x][scores.partition_point(|&v| v >= s)] += 1;
                    }
                }
            }
            counts.concat()
        })
        .collect();
    per_tile.concat()
}

/// Step 3: the counts of several corpus blocks for the same queries, as one.
pub fn merge<'a>(parts: impl IntoIterator<Item = &'a [u64]>) -> Result<Vec<u64>, BlockError> {
    let mut total: Option<Vec<u64>> = None;
    for part in parts {
        match &mut total {
            None => total = Some(part.to_vec()),
            Some(t) if t.len() == part.len() => t.iter_mut().zip(part).for_each(|(x, y)| *x += y),
            Some(t) => {
                return Err(BlockError::Mismatch(format!(
                    "counts of {} relevant rows and of {}: counts of another anchor block",
                    t.len(),
                    part.len()
                )))
            }
        }
    }
    Ok(total.unwrap_or_default())
}

/// Sums of the per-query metrics of some queries; they add across anchor blocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub p_at_1: f64,
    pub r_precision: f64,
    pub map_at_r: f64,
    pub recall_at_k: [f64; RECALL_AT.len()],
    pub queries: usize,
    pub skipped_queries: usize,
}

/// Step 4: the anchor block's sums from its relevant scores and their merged counts.
pub fn tally(relevant: &Relevant, counts: &[u64]) -> Result<Tally, BlockError> {
    if counts.len() != relevant.scores.len() {
        return Err(BlockError::Mismatch(format!(
            "{} counts for {} relevant rows",
            counts.len(),
            relevant.scores.len()
        )));
    }
    let mut t = Tally::default();
    for w in relevant.offsets.windows(2) {
        let between = &counts[w[0]..w[1]];
        let r = between.len();
        if r == 0 {
            t.skipped_queries += 1;
            continue;
        }
        let ranks = ranks(between);
        let first = ranks[0];
        let (mut hits, mut ap) = (0usize, 0.0f64);
        for (j, &rank) in ranks.iter().enumerate() {
            if rank <= r {
                hits += 1;
                ap += (j + 1) as f64 / rank as f64;
            }
        }
        t.p_at_1 += (first == 1) as u8 as f64;
        t.r_precision += hits as f64 / r as f64;
        t.map_at_r += ap / r as f64;
        for (slot, &k) in t.recall_at_k.iter_mut().zip(&RECALL_AT) {
            *slot += (first <= k) as u8 as f64;
        }
        t.queries += 1;
    }
    Ok(t)
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.p_at_1 += other.p_at_1;
        self.r_precision += other.r_precision;
        self.map_at_r += other.map_at_r;
        for (a, b) in self.recall_at_k.iter_mut().zip(&other.recall_at_k) {
            *a += b;
        }
        self.queries += other.queries;
        self.skipped_queries += other.skipped_queries;
    }

    /// The means, as [`super::evaluate`] reports them.
    pub fn metrics(&self) -> Metrics {
        let mean = |x: f64| {
            if self.queries == 0 {
                0.0
            } else {
                x / self.queries as f64
            }
        };
        Metrics {
            p_at_1: mean(self.p_at_1),
            r_precision: mean(self.r_precision),
            map_at_r: mean(self.map_at_r),
            recall_at_k: RECALL_AT
                .iter()
                .zip(self.recall_at_k)
                .map(|(&k, v)| (k, mean(v)))
                .collect(),
            queries: self.queries,
            skipped_queries: self.skipped_queries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knn::testing::clustered;
    use crate::knn::Points;

    type Owned = (Vec<f32>, Vec<u32>, Vec<usize>);

    fn block(dim: usize, (d, l, r): &Owned) -> Block<'_> {
        Block {
            points: Points {
                data: d,
                dim,
                labels: l,
            },
            ids: r,
        }
    }

    #[test]
    fn every_grid_gives_evaluates_metrics() {
        let dim = 8;
        let (mut data, mut labels) = clustered(12, 6, dim, 0.8, 3);
        let (one, _) = clustered(1, 1, dim, 0.0, 9);
        data.extend(one);
        labels.push(99);
        let n = labels.len();
        let want = super::super::evaluate(Points {
            data: &data,
            dim,
            labels: &labels,
        });
        let gather = |rows: Vec<usize>| {
            let d: Vec<f32> = rows
                .iter()
                .flat_map(|&i| data[i * dim..(i + 1) * dim].iter().copied())
                .collect();
            let l: Vec<u32> = rows.iter().map(|&i| labels[i]).collect();
            (d, l, rows)
        };
        for (anchor_blocks, corpus_blocks) in [(1, 1), (3, 4), (5, 2)] {
            let anchors: Vec<_> = (0..anchor_blocks)
                .map(|b| {
                    gather(
                        (0..n)
                            .filter(|&i| labels[i] as usize % anchor_blocks == b)
                            .collect(),
                    )
                })
                .collect();
            let corpus: Vec<_> = (0..corpus_blocks)
                .map(|b| gather((b..n).step_by(corpus_blocks).collect()))
                .collect();
            let mut total = Tally::default();
            for a in &anchors {
                let rel = relevant(block(dim, a));
                let parts: Vec<Vec<u64>> = corpus
                    .iter()
                    .map(|c| count_closer(block(dim, a), &rel, block(dim, c)))
                    .collect();
                let counts = merge(parts.iter().map(Vec::as_slice)).unwrap();
                total.add(&tally(&rel, &counts).unwrap());
            }
            let got = total.metrics();
            assert_eq!(
                (got.queries, got.skipped_queries),
                (want.queries, want.skipped_queries)
            );
            for (g, w) in [
                (got.p_at_1, want.p_at_1),
                (got.r_precision, want.r_precision),
                (got.map_at_r, want.map_at_r),
            ] {
                assert!(
                    (g - w).abs() < 1e-12,
                    "{anchor_blocks}×{corpus_blocks}: {g} vs {w}"
                );
            }
            assert_eq!(got.recall_at_k, want.recall_at_k);
        }
    }
}
