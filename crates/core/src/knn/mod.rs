//! The neighbour layer: one interface, three backends (exact blocked GEMM in pure Rust, the
//! approximate classes path, and HNSW through hnsw_rs). Mining, evaluation and audit all ask
//! their questions here.

mod cells;
mod classes;
mod exact;
mod gemm;
mod hnsw;

pub use classes::{
    band_search_picked, class_summary, classes_reach, ClassIndex, ClassLevel, ClassPicks,
};
pub use exact::{band_search_block, ExactIndex, CORPUS_BLOCK, QUERY_BLOCK};
pub use gemm::{dot_tile, Kernel};
pub use hnsw::{HnswIndex, HnswLoader, HnswParams};

use serde::{Deserialize, Serialize};

/// One neighbour: a sample index and its dot product with the query (unit vectors, so larger
/// is closer; every distance is a function of it, see [`crate::definitions::Distance`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    pub index: usize,
    pub dot: f32,
}

/// Which samples may be returned for a query. The query itself never is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restriction {
    Any,
    OtherLabels,
    SameLabel,
}

/// A question for the miner: the other-label samples whose dot product with `query` lies in
/// `[min_dot, max_dot]` (a distance band such as the semi-hard one), the `k` nearest first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Band {
    pub query: usize,
    pub min_dot: f32,
    pub max_dot: f32,
    pub k: usize,
}

impl Band {
    fn contains(&self, n: &Neighbour) -> bool {
        n.dot >= self.min_dot && n.dot <= self.max_dot
    }
}

/// The answer to a [`Band`]. `complete` says that no nearer band member was missed: the search
/// went past the band's far edge or through every other-label sample, or found `k`.
#[derive(Debug, Clone, PartialEq)]
pub struct BandHits {
    pub hits: Vec<Neighbour>,
    pub complete: bool,
}

/// k nearest neighbours of indexed samples, nearest first. A list shorter than `k` holds every
/// sample that the restriction allows.
pub trait NeighbourIndex {
    fn search(&self, queries: &[usize], k: usize, restriction: Restriction) -> Vec<Vec<Neighbour>>;

    /// Name and parameters, recorded in every output that used the index.
    fn describe(&self) -> serde_json::Value;

    /// Where an incomplete band answer looked, for the reason an anchor was skipped:
    /// "no semihard negative among {reach}".
    fn band_reach(&self, max_depth: usize) -> String {
        format!("the {max_depth} nearest other-label neighbours")
    }

    /// The `k` nearest other-label samples of each query (or fewer), found the way bands
    /// are: as `search` finds them, except on the classes path, which looks only in a few
    /// nearest classes of each query (its `search` stays exact). What training's neighbour graph asks for: a million rows in
    /// 200,000 classes took minutes to search exactly.
    fn nearest_other_labels(&self, queries: &[usize], k: usize) -> Vec<Vec<Neighbour>> {
        self.band_search(&open_bands(queries, k), k, k)
            .into_iter()
            .map(|answer| answer.hits)
            .collect()
    }

    /// Band members of each query. This default searches the `start_depth` nearest
    /// other-label neighbours and widens ×4 up to `max_depth` for the bands not yet answered;
    /// backends that can test the band directly override it.
    fn band_search(&self, bands: &[Band], start_depth: usize, max_depth: usize) -> Vec<BandHits> {
        let mut answers: Vec<Option<BandHits>> = vec![None; bands.len()];
        let mut pending: Vec<usize> = (0..bands.len()).collect();
        let mut depth = start_depth.clamp(1, max_depth.max(1));
        while !pending.is_empty() {
            let mut queries: Vec<usize> = pending.iter().map(|&i| bands[i].query).collect();
            queries.sort_unstable();
            queries.dedup();
            let lists = self.search(&queries, depth, Restriction::OtherLabels);
            let last_round = depth >= max_depth;
            pending.retain(|&i| {
                let band = &bands[i];
                let list = &lists[queries.binary_search(&band.query).expect("searched")];
                let hits: Vec<Neighbour> = list
                    .iter()
                    .filter(|n| band.contains(n))
                    .take(band.k)
                    .copied()
                    .collect();
                let exhaustive = list.len() < depth;
                let passed = list.last().is_some_and(|n| n.dot < band.min_dot);
                let complete = exhaustive || passed || hits.len() >= band.k;
                if complete || last_round {
                    answers[i] = Some(BandHits { hits, complete });
                    return false;
                }
                true
            });
            depth = (depth * 4).min(max_depth);
        }
        answers
            .into_iter()
            .map(|a| a.expect("every band answered"))
            .collect()
    }
}

/// Bands that every other-label sample lies in: their answers are the `k` nearest.
fn open_bands(queries: &[usize], k: usize) -> Vec<Band> {
    queries
        .iter()
        .map(|&query| Band {
            query,
            min_dot: f32::NEG_INFINITY,
            max_dot: f32::INFINITY,
            k,
        })
        .collect()
}

/// Which backend `--knn` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KnnChoice {
    /// exact, classes or HNSW by corpus size and number of classes (the sidecar says why)
    Auto,
    Exact,
    /// band search in each anchor's nearest classes (approximate; k-NN lists stay exact)
    Classes,
    Hnsw,
}

/// Everything that decides which neighbour index is built and how.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KnnConfig {
    pub choice: KnnChoice,
    pub hnsw: HnswParams,
    /// Classes whose members each anchor's bands search on the `classes` path.
    pub candidate_classes: usize,
}

impl Default for KnnConfig {
    fn default() -> Self {
        KnnConfig {
            choice: KnnChoice::Auto,
            hnsw: HnswParams::default(),
            candidate_classes: 500,
        }
    }
}

/// Corpus size from which `--knn auto` picks HNSW when the classes path does not apply: exact
/// mining grows as N², HNSW about as N log N, and at 100,000 samples exact was still 2.3×
/// faster (`make bench-mine`, README).
pub const AUTO_HNSW_FROM: usize = 300_000;

/// The share of the classes searched below which the classes path beats exact search. At
/// 100,000 samples in 4,995 classes (`make bench-mine`, README) it took 18.5 s at 10% and
/// 98.8 s with every class allowed, against exact's 45–47 s: break-even lies near 40%, and
/// the rule keeps a margin below it.
pub const AUTO_CLASSES_BELOW: f64 = 0.2;

/// Below this many samples exact search takes seconds and `auto` does not approximate.
pub const AUTO_APPROXIMATE_FROM: usize = 20_000;

impl KnnConfig {
    /// The backend that runs on `points`, and why.
    pub fn resolve(&self, points: Points) -> (KnnChoice, String) {
        let mut labels = points.labels.to_vec();
        labels.sort_unstable();
        labels.dedup();
        self.resolve_for(points.len(), labels.len())
    }

    /// The backend that runs on `n` samples in `classes` classes, and why.
    pub fn resolve_for(&self, n: usize, classes: usize) -> (KnnChoice, String) {
        if self.choice != KnnChoice::Auto {
            return (self.choice, "asked for with --knn".to_string());
        }
        if n < AUTO_APPROXIMATE_FROM {
            return (
                KnnChoice::Exact,
                format!("auto: {n} samples, under {AUTO_APPROXIMATE_FROM}, exact is fast"),
            );
        }
        let share = self.candidate_classes as f64 / classes.max(1) as f64;
        if share < AUTO_CLASSES_BELOW {
            return (
                KnnChoice::Classes,
                format!(
                    "auto: {} candidate classes of {} ({:.1}%) cost less than exact search (below {:.0}%)",
                    self.candidate_classes,
                    classes,
                    100.0 * share,
                    100.0 * AUTO_CLASSES_BELOW
                ),
            );
        }
        if n >= AUTO_HNSW_FROM {
            return (
                KnnChoice::Hnsw,
                format!(
                    "auto: {n} samples (from {AUTO_HNSW_FROM}) in {classes} classes, too few for the classes path"
                ),
            );
        }
        (
            KnnChoice::Exact,
            format!(
                "auto: {classes} classes are too few for the classes path, {n} samples too few for HNSW"
            ),
        )
    }
}

/// A neighbour index of the backend `--knn` chose.
pub enum Backend<'a> {
    Exact(ExactIndex<'a>),
    Classes(ClassIndex<'a>),
    Hnsw(HnswIndex<'a>),
}

/// The one place a backend is chosen and built (audit and training call it; mining calls
/// [`build_as`] after [`KnnConfig::resolve`], to record the reason and to use its HNSW cache).
pub fn build<'a>(points: Points<'a>, cfg: &KnnConfig) -> Backend<'a> {
    build_as(points, cfg.resolve(points).0, cfg)
}

/// Builds the index of a resolved `choice` (`Auto` is taken as exact).
pub fn build_as<'a>(points: Points<'a>, choice: KnnChoice, cfg: &KnnConfig) -> Backend<'a> {
    match choice {
        KnnChoice::Hnsw => Backend::Hnsw(HnswIndex::build(points, cfg.hnsw)),
        KnnChoice::Classes => Backend::Classes(ClassIndex::new(points, cfg.candidate_classes)),
        KnnChoice::Exact | KnnChoice::Auto => Backend::Exact(ExactIndex::new(points)),
    }
}

impl NeighbourIndex for Backend<'_> {
    fn search(&self, queries: &[usize], k: usize, restriction: Restriction) -> Vec<Vec<Neighbour>> {
        match self {
            Backend::Exact(i) => i.search(queries, k, restriction),
            Backend::Classes(i) => i.search(queries, k, restriction),
            Backend::Hnsw(i) => i.search(queries, k, restriction),
        }
    }

    fn band_reach(&self, max_depth: usize) -> String {
        match self {
            Backend::Exact(i) => i.band_reach(max_depth),
            Backend::Classes(i) => i.band_reach(max_depth),
            Backend::Hnsw(i) => i.band_reach(max_depth),
        }
    }

    fn describe(&self) -> serde_json::Value {
        match self {
            Backend::Exact(i) => i.describe(),
            Backend::Classes(i) => i.describe(),
            Backend::Hnsw(i) => i.describe(),
        }
    }

    fn band_search(&self, bands: &[Band], start_depth: usize, max_depth: usize) -> Vec<BandHits> {
        match self {
            Backend::Exact(i) => i.band_search(bands, start_depth, max_depth),
            Backend::Classes(i) => i.band_search(bands, start_depth, max_depth),
            Backend::Hnsw(i) => i.band_search(bands, start_depth, max_depth),
        }
    }

    fn nearest_other_labels(&self, queries: &[usize], k: usize) -> Vec<Vec<Neighbour>> {
        match self {
            Backend::Exact(i) => i.nearest_other_labels(queries, k),
            Backend::Classes(i) => i.nearest_other_labels(queries, k),
            Backend::Hnsw(i) => i.nearest_other_labels(queries, k),
        }
    }
}

/// Unit-vector embeddings with their labels: what every backend indexes.
#[derive(Debug, Clone, Copy)]
pub struct Points<'a> {
    pub data: &'a [f32],
    pub dim: usize,
    pub labels: &'a [u32],
}

impl<'a> Points<'a> {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn allowed(&self, query: usize, candidate: usize, restriction: Restriction) -> bool {
        query != candidate
            && match restriction {
                Restriction::Any => true,
                Restriction::OtherLabels => self.labels[query] != self.labels[candidate],
                Restriction::SameLabel => self.labels[query] == self.labels[candidate],
            }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::definitions::dot;
    use crate::rng::Rng;

    /// `classes` clusters of `per_class` unit vectors in `dim` dimensions.
    pub fn clustered(
        classes: usize,
        per_class: usize,
        dim: usize,
        spread: f64,
        seed: u64,
    ) -> (Vec<f32>, Vec<u32>) {
        let mut rng = Rng::new(seed);
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for c in 0..classes {
            let centre: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
            for _ in 0..per_class {
                let v: Vec<f64> = centre.iter().map(|x| x + spread * rng.normal()).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                data.extend(v.iter().map(|x| (x / norm) as f32));
                labels.push(c as u32);
            }
        }
        (data, labels)
    }

    /// Brute force: the oracle the backends are checked against.
    pub fn brute_force(
        points: Points,
        query: usize,
        k: usize,
        restriction: Restriction,
    ) -> Vec<Neighbour> {
        let mut all: Vec<Neighbour> = (0..points.len())
            .filter(|&j| points.allowed(query, j, restriction))
            .map(|j| Neighbour {
                index: j,
                dot: dot(points.row(query), points.row(j)),
            })
            .collect();
        all.sort_by(|a, b| b.dot.total_cmp(&a.dot).then(a.index.cmp(&b.index)));
        all.truncate(k);
        all
    }
}
