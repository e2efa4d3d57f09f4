//! Retrieval metrics (README, "Definitions"): P@1, R-Precision, MAP@R and Recall@K from exact neighbours,
//! the query itself excluded; queries whose label has no other sample are skipped. The trainer's
//! validation and `tripmine eval` both use this module.

pub mod blocks;

use std::collections::HashMap;

use serde::Serialize;

use crate::embeddings::{EmbeddingsFrom, Network, SourceError};
use crate::knn::{ExactIndex, Neighbour, NeighbourIndex, Points, Restriction};

pub const RECALL_AT: [usize; 4] = [1, 2, 4, 8];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    pub p_at_1: f64,
    pub r_precision: f64,
    pub map_at_r: f64,
    /// Recall@K for K in [`RECALL_AT`]: some neighbour among the first K shares the label.
    pub recall_at_k: std::collections::BTreeMap<usize, f64>,
    pub queries: usize,
    pub skipped_queries: usize,
}

impl Metrics {
    /// The metrics as `tripmine eval --json` prints them and `tripmine.evaluate` returns them:
    /// `p_at_1`, `r_precision`, `map_at_r`, `recall_at_k` (keyed "1", "2", "4", "8"),
    /// `queries` and `skipped_queries`.
    pub fn to_json(&self) -> serde_json::Value {
        let recall: serde_json::Map<String, serde_json::Value> = self
            .recall_at_k
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        serde_json::json!({
            "p_at_1": self.p_at_1,
            "r_precision": self.r_precision,
            "map_at_r": self.map_at_r,
            "recall_at_k": recall,
            "queries": self.queries,
            "skipped_queries": self.skipped_queries,
        })
    }
}

/// Metrics of one query from the relevance of its ranked neighbours (`r` = samples sharing its label).
fn query_metrics(relevant: &[bool], r: usize) -> (f64, f64, f64) {
    let p1 = relevant.first().copied().unwrap_or(false) as u8 as f64;
    let mut hits = 0usize;
    let mut ap = 0.0;
    for (i, &rel) in relevant.iter().take(r).enumerate() {
        if rel {
            hits += 1;
            ap += hits as f64 / (i + 1) as f64;
        }
    }
    (p1, hits as f64 / r as f64, ap / r as f64)
}

/// Metrics from each query's ranked neighbours (nearest first, at least R of them).
pub fn from_neighbours(labels: &[u32], queries: &[usize], lists: &[Vec<Neighbour>]) -> Metrics {
    from_neighbours_within(labels, queries, lists, usize::MAX)
}

/// [`from_neighbours`] with R capped at `max_r`: the metrics a k-NN graph can give (the audit's
/// leave-one-out check of its model). With `max_r` ≥ every class size they are the full metrics.
pub fn from_neighbours_within(
    labels: &[u32],
    queries: &[usize],
    lists: &[Vec<Neighbour>],
    max_r: usize,
) -> Metrics {
    let mut sums = Sums::new(labels, max_r);
    sums.add(queries, lists);
    sums.finish()
}

/// Running sums of the per-query metrics, so that queries can be scored a block at a time and
/// their neighbour lists dropped (a 10-class corpus of 100k samples would otherwise hold 100k
/// lists of 10k neighbours).
struct Sums<'a> {
    labels: &'a [u32],
    class_size: HashMap<u32, usize>,
    max_r: usize,
    p1: f64,
    rp: f64,
    map: f64,
    recall: [f64; RECALL_AT.len()],
    used: usize,
    skipped: usize,
}

impl<'a> Sums<'a> {
    fn new(labels: &'a [u32], max_r: usize) -> Self {
        let mut class_size: HashMap<u32, usize> = HashMap::new();
        for &l in labels {
            *class_size.entry(l).or_default() += 1;
        }
        Sums {
            labels,
            class_size,
            max_r,
            p1: 0.0,
            rp: 0.0,
            map: 0.0,
            recall: [0.0; RECALL_AT.len()],
            used: 0,
            skipped: 0,
        }
    }

    fn add(&mut self, queries: &[usize], lists: &[Vec<Neighbour>]) {
        let labels = self.labels;
        for (&q, list) in queries.iter().zip(lists) {
            let r = (self.class_size[&labels[q]] - 1).min(self.max_r);
            if r == 0 {
                self.skipped += 1;
                continue;
            }
            let relevant: Vec<bool> = list.iter().map(|n| labels[n.index] == labels[q]).collect();
            let (a, b, c) = query_metrics(&relevant, r);
            self.p1 += a;
            self.rp += b;
            self.map += c;
            for (slot, &k) in self.recall.iter_mut().zip(&RECALL_AT) {
                *slot += relevant.iter().take(k).any(|&x| x) as u8 as f64;
            }
            self.used += 1;
        }
        self.skipped += queries.len().saturating_sub(lists.len());
    }

    fn finish(self) -> Metrics {
        let used = self.used;
        let mean = |x: f64| if used == 0 { 0.0 } else { x / used as f64 };
        Metrics {
            p_at_1: mean(self.p1),
            r_precision: mean(self.rp),
            map_at_r: mean(self.map),
            recall_at_k: RECALL_AT
                .iter()
                .zip(self.recall)
                .map(|(&k, v)| (k, mean(v)))
                .collect(),
            queries: used,
            skipped_queries: self.skipped,
        }
    }
}

/// Neighbours held at once while evaluating: queries are searched and scored in blocks of
/// this many neighbours (16 bytes each).
const NEIGHBOURS_IN_FLIGHT: usize = 4_000_000;

/// Every sample queried against all others with exact neighbours, in blocks of queries whose
/// neighbour lists are scored and dropped.
pub fn evaluate(points: Points) -> Metrics {
    evaluate_in_blocks(points, NEIGHBOURS_IN_FLIGHT)
}

fn evaluate_in_blocks(points: Points, in_flight: usize) -> Metrics {
    let mut sums = Sums::new(points.labels, usize::MAX);
    let deepest = sums
        .class_size
        .values()
        .max()
        .copied()
        .unwrap_or(1)
        .max(*RECALL_AT.last().expect("non-empty"));
    let index = ExactIndex::new(points);
    let queries: Vec<usize> = (0..points.len()).collect();
    for block in queries.chunks((in_flight / deepest).max(1)) {
        let lists = index.search(block, deepest, Restriction::Any);
        sums.add(block, &lists);
    }
    sums.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranked(order: &[usize]) -> Vec<Neighbour> {
        order
            .iter()
            .map(|&index| Neighbour { index, dot: 0.0 })
            .collect()
    }

    #[test]
    fn hand_computed_query() {
        // R = 3; relevance of the ranking: 1 0 1 | 1 → P@1 = 1, RP = 2/3, MAP@R = (1 + 2/3)/3.
        let (p1, rp, map) = query_metrics(&[true, false, true, true], 3);
        assert_eq!(p1, 1.0);
        assert!((rp - 2.0 / 3.0).abs() < 1e-12);
        assert!((map - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        // 0 1 1 → P@1 = 0, RP = 2/3, MAP@R = (1/2 + 2/3)/3.
        let (p1, rp, map) = query_metrics(&[false, true, true], 3);
        assert_eq!(p1, 0.0);
        assert!((rp - 2.0 / 3.0).abs() < 1e-12);
        assert!((map - (0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn metrics_in_blocks_equal_metrics_of_all_lists_at_once() {
        let (data, labels) = crate::knn::testing::clustered(6, 9, 8, 1.2, 2);
        let mut labels = labels;
        labels.push(99); // a singleton, skipped
        let mut data = data;
        data.extend_from_within(..8);
        // Near row 0 but not equal to it: an exact tie would be broken by the last bit of
        // each block's rounding, which differs with the blocking and the CPU's kernel.
        data[8 * 54] += 0.05;
        let points = Points {
            data: &data,
            dim: 8,
            labels: &labels,
        };
        let queries: Vec<usize> = (0..points.len()).collect();
        let lists = ExactIndex::new(points).search(&queries, 9, Restriction::Any);
        let whole = from_neighbours(&labels, &queries, &lists);
        for in_flight in [1, 9, 50, 1000] {
            let blocks = evaluate_in_blocks(points, in_flight);
            assert_eq!(blocks, whole, "{in_flight} neighbours in flight");
        }
        assert_eq!(whole.skipped_queries, 1);
    }

    #[test]
    fn singleton_queries_are_skipped_and_recall_counts_any_hit() {
        let labels = [0, 0, 1, 1, 2];
        let lists = vec![
            ranked(&[2, 1, 3, 4]), // query 0: miss then hit
            ranked(&[0, 2, 3, 4]), // query 1: hit first
            ranked(&[3, 0, 1, 4]),
            ranked(&[0, 1, 4, 2]), // query 3: hit only at rank 4
            ranked(&[0, 1, 2, 3]), // query 4: its label is alone
        ];
        let m = from_neighbours(&labels, &[0, 1, 2, 3, 4], &lists);
        assert_eq!((m.queries, m.skipped_queries), (4, 1));
        assert_eq!(m.p_at_1, 0.5);
        assert_eq!(m.map_at_r, 0.5);
        assert_eq!(m.recall_at_k[&1], 0.5);
        assert_eq!(m.recall_at_k[&2], 0.75);
        assert_eq!(m.recall_at_k[&4], 1.0);
        // R capped at 1: MAP@R is then P@1, and singletons are still skipped.
        let capped = from_neighbours_within(&labels, &[0, 1, 2, 3, 4], &lists, 1);
        assert_eq!(capped.queries, 4);
        assert_eq!(capped.map_at_r, capped.p_at_1);
    }
}

/// `tripmine eval`, validated.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub source: EmbeddingsFrom,
    /// Only samples of this split (the manifest's split column).
    pub split: Option<String>,
}

/// Measures retrieval on the embeddings of a corpus (or one split of it); `network` embeds
/// `--corpus` with `--model`.
pub fn run(cfg: &EvalConfig, network: Option<&dyn Network>) -> Result<Metrics, SourceError> {
    let loaded = cfg.source.load(network, cfg.split.as_deref())?;
    if cfg.source.needs_network() {
        for p in &loaded.problems {
            eprintln!("warning: skipping {}: {}", p.path, p.reason);
        }
    }
    let set = loaded.set;
    let (_, labels) = crate::corpus::label_ids(set.samples.iter().map(|s| s.label.as_str()));
    let points = Points {
        data: &set.data,
        dim: set.dim,
        labels: &labels,
    };
    Ok(evaluate(points))
}

/// Each query's retrieval among a separate reference set (pytorch-metric-learning's
/// `AccuracyCalculator.get_accuracy(query, query_labels, reference, reference_labels,
/// ref_includes_query)`), computed exactly from the rank of every relevant reference row, so
/// that no list of k neighbours per query is ever held: a query's state is its R relevant
/// scores and R counters, whatever the reference's size.
pub struct Against<'a> {
    pub queries: &'a [f32],
    pub query_labels: &'a [u32],
    pub reference: &'a [f32],
    pub reference_labels: &'a [u32],
    pub dim: usize,
    /// Query i is reference row i (pml's `ref_includes_query`): it is never its own neighbour.
    pub ref_includes_query: bool,
}

/// Per-query metrics of [`Against`], as pml computes them from its first `k` neighbours
/// (`None`: the whole reference, pml's `k=None`). Rows are ranked by Euclidean distance on
/// the rows as given (faiss's `IndexFlatL2`, pml's default); ties rank the relevant row first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryScores {
    /// R: reference rows sharing the query's label (itself aside); 0 for a lone query, whose
    /// metrics are NaN (pml leaves such queries out of every mean).
    pub relevant: Vec<u32>,
    pub precision_at_1: Vec<f64>,
    pub r_precision: Vec<f64>,
    pub map_at_r: Vec<f64>,
    /// Average precision over the first k neighbours, divided by R.
    pub mean_average_precision: Vec<f64>,
    pub reciprocal_rank: Vec<f64>,
}

/// Queries scored together at least.
const AGAINST_QUERY_BLOCK: usize = 256;
/// Relevant scores held at once at most (16 MB, and as many counts).
const RELEVANT_IN_FLIGHT: usize = 4_000_000;

/// The metrics of one query from the ranks (1-based, ascending) of its R relevant rows.
fn scores_from_ranks(ranks: &[usize], k: usize) -> [f64; 5] {
    let r = ranks.len();
    let within_r = r.min(k);
    let (mut hits_r, mut ap_r, mut ap_k) = (0usize, 0.0f64, 0.0f64);
    for (j, &rank) in ranks.iter().enumerate() {
        let precision = (j + 1) as f64 / rank as f64;
        if rank <= within_r {
            hits_r += 1;
            ap_r += precision;
        }
        if rank <= k {
            ap_k += precision;
        }
    }
    let first = ranks[0];
    [
        (first == 1) as u8 as f64,
        hits_r as f64 / within_r as f64,
        ap_r / r as f64,
        ap_k / r as f64,
        if first <= k { 1.0 / first as f64 } else { 0.0 },
    ]
}

impl Against<'_> {
    /// Every query's metrics at `k` neighbours (`None`: all of the reference).
    pub fn scores(&self, k: Option<usize>) -> QueryScores {
        use rayon::prelude::*;
        let dim = self.dim;
        let nq = self.query_labels.len();
        let k = k.unwrap_or(usize::MAX).max(1);
        let mut members: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, &l) in self.reference_labels.iter().enumerate() {
            members.entry(l).or_default().push(i);
        }
        let deepest = members.values().map(Vec::len).max().unwrap_or(1);
        // Queries go through in chunks whose relevant scores stay within RELEVANT_IN_FLIGHT.
        let chunk = AGAINST_QUERY_BLOCK.max(RELEVANT_IN_FLIGHT / deepest);
        let mut out = QueryScores::default();
        for start in (0..nq).step_by(chunk) {
            let queries: Vec<usize> = (start..nq.min(start + chunk)).collect();
            let lists: Vec<Vec<f32>> = queries
                .par_iter()
                .map(|&q| {
                    let row = &self.queries[q * dim..(q + 1) * dim];
                    let own = members
                        .get(&self.query_labels[q])
                        .map_or(&[][..], Vec::as_slice);
                    let mut s: Vec<f32> = own
                        .iter()
                        .filter(|&&j| !(self.ref_includes_query && j == q))
                        .map(|&j| blocks::score(row, &self.reference[j * dim..(j + 1) * dim]))
                        .collect();
                    s.sort_unstable_by(|a, b| b.total_cmp(a));
                    s
                })
                .collect();
            let relevant = blocks::Relevant::from_lists(lists);
            let counts = blocks::count_between(
                blocks::Rows {
                    data: &self.queries[start * dim..(start + queries.len()) * dim],
                    labels: &self.query_labels[start..start + queries.len()],
                },
                &relevant,
                blocks::Rows {
                    data: self.reference,
                    labels: self.reference_labels,
                },
                dim,
            );
            for w in relevant.offsets.windows(2) {
                if w[0] == w[1] {
                    out.push(0, [f64::NAN; 5]);
                    continue;
                }
                let ranks = blocks::ranks(&counts[w[0]..w[1]]);
                out.push(ranks.len() as u32, scores_from_ranks(&ranks, k));
            }
        }
        out
    }
}

impl QueryScores {
    fn push(&mut self, relevant: u32, s: [f64; 5]) {
        self.relevant.push(relevant);
        self.precision_at_1.push(s[0]);
        self.r_precision.push(s[1]);
        self.map_at_r.push(s[2]);
        self.mean_average_precision.push(s[3]);
        self.reciprocal_rank.push(s[4]);
    }
}

#[cfg(test)]
mod against_tests {
    use super::*;

    #[test]
    fn ranks_give_pml_s_truncated_metrics() {
        // Relevant rows at ranks 1, 3, 6 (R = 3).
        let s = scores_from_ranks(&[1, 3, 6], usize::MAX);
        assert_eq!(s[0], 1.0);
        assert!((s[1] - 2.0 / 3.0).abs() < 1e-12);
        assert!((s[2] - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((s[3] - (1.0 + 2.0 / 3.0 + 0.5) / 3.0).abs() < 1e-12);
        assert_eq!(s[4], 1.0);
        // k = 2: R-precision over the first two, MAP@R still divided by R.
        let s = scores_from_ranks(&[2, 3, 6], 2);
        assert_eq!(s[0], 0.0);
        assert_eq!(s[1], 0.5);
        assert!((s[2] - 0.5 / 3.0).abs() < 1e-12);
        assert_eq!(s[4], 0.5);
    }

    #[test]
    fn the_corpus_against_itself_equals_evaluate() {
        let (data, labels) = crate::knn::testing::clustered(7, 6, 8, 1.1, 4);
        let points = Points {
            data: &data,
            dim: 8,
            labels: &labels,
        };
        let whole = evaluate(points);
        let s = Against {
            queries: &data,
            query_labels: &labels,
            reference: &data,
            reference_labels: &labels,
            dim: 8,
            ref_includes_query: true,
        }
        .scores(None);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!((mean(&s.precision_at_1) - whole.p_at_1).abs() < 1e-12);
        assert!((mean(&s.r_precision) - whole.r_precision).abs() < 1e-12);
        assert!((mean(&s.map_at_r) - whole.map_at_r).abs() < 1e-12);
        assert!(s.relevant.iter().all(|&r| r == 5));
    }

    #[test]
    fn separate_queries_rank_among_the_reference_only() {
        // Reference on a line of angles; one query between a class-1 and a class-0 row.
        let reference = [1.0f32, 0.0, 0.8, 0.6, 0.6, 0.8, 0.0, 1.0];
        let reference_labels = [0u32, 1, 0, 2];
        let queries = [0.7f32, 0.72, 0.0, 1.0];
        let query_labels = [0u32, 5];
        let s = Against {
            queries: &queries,
            query_labels: &query_labels,
            reference: &reference,
            reference_labels: &reference_labels,
            dim: 2,
            ref_includes_query: false,
        }
        .scores(None);
        // Query 0: row 2 (label 0, rank 1), row 1 (label 1), row 3 (label 2), row 0 (rank 4).
        assert_eq!(s.relevant, vec![2, 0]);
        assert_eq!(s.precision_at_1[0], 1.0);
        assert!((s.mean_average_precision[0] - (1.0 + 2.0 / 4.0) / 2.0).abs() < 1e-12);
        assert_eq!(s.r_precision[0], 0.5);
        assert!(
            s.map_at_r[1].is_nan(),
            "a label absent from the reference is a lone query"
        );
    }
}
