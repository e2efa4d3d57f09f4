//! Approximate k-NN with hnsw_rs on unit vectors (DistL2: DistDot can panic on normalised
//! input). hnsw_rs has no label filter that is fast for "other labels", so a query asks for
//! k plus the size of its own class and drops its own class afterwards.

use std::collections::HashMap;

use std::path::Path;

use hnsw_rs::api::AnnT;
use hnsw_rs::hnswio::HnswIo;
use hnsw_rs::prelude::{DistL2, Hnsw};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Neighbour, NeighbourIndex, Points, Restriction};
use crate::definitions::dot;

/// Reads a saved index; an [`HnswIndex::load`]ed index borrows it.
pub type HnswLoader = HnswIo;

/// hnsw_rs's `max_layer` must be 16 or `file_dump` fails.
const MAX_LAYER: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Links per node (hnsw_rs's max_nb_connection).
    pub m: usize,
    pub ef_construction: usize,
    /// Search breadth; raised to k when k is larger.
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 100,
            ef_search: 64,
        }
    }
}

pub struct HnswIndex<'a> {
    hnsw: Hnsw<'a, f32, DistL2>,
    /// "built" or "loaded" (from a saved index).
    origin: &'static str,
    points: Points<'a>,
    params: HnswParams,
    /// Members of each label, sorted: the filter for same-label queries.
    members: HashMap<u32, Vec<usize>>,
    build_seconds: f64,
}

impl<'a> HnswIndex<'a> {
    pub fn build(points: Points<'a>, params: HnswParams) -> Self {
        let start = std::time::Instant::now();
        let hnsw = Hnsw::<f32, DistL2>::new(
            params.m,
            points.len(),
            MAX_LAYER,
            params.ef_construction,
            DistL2 {},
        );
        let items: Vec<(&[f32], usize)> = (0..points.len()).map(|i| (points.row(i), i)).collect();
        for chunk in items.chunks(10_000) {
            hnsw.parallel_insert_slice(&chunk.to_vec());
        }
        let mut hnsw = hnsw;
        hnsw.set_searching_mode(true);
        Self::assemble(hnsw, points, params, "built", start.elapsed().as_secs_f64())
    }

    /// An index saved by [`HnswIndex::save`]; `loader` must outlive it (hnsw_rs borrows it).
    pub fn load(
        loader: &'a mut HnswIo,
        points: Points<'a>,
        params: HnswParams,
    ) -> Result<Self, String> {
        let start = std::time::Instant::now();
        let mut hnsw: Hnsw<'a, f32, DistL2> = loader.load_hnsw().map_err(|e| e.to_string())?;
        if hnsw.get_nb_point() != points.len() {
            return Err(format!(
                "holds {} points, the embeddings {}",
                hnsw.get_nb_point(),
                points.len()
            ));
        }
        hnsw.set_searching_mode(true);
        Ok(Self::assemble(
            hnsw,
            points,
            params,
            "loaded",
            start.elapsed().as_secs_f64(),
        ))
    }

    /// Writes the graph and data files (`<basename>.hnsw.graph`, `.hnsw.data`) into `dir`.
    pub fn save(&self, dir: &Path, basename: &str) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        self.hnsw
            .file_dump(dir, basename)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn assemble(
        hnsw: Hnsw<'a, f32, DistL2>,
        points: Points<'a>,
        params: HnswParams,
        origin: &'static str,
        seconds: f64,
    ) -> Self {
        let mut members: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, &l) in points.labels.iter().enumerate() {
            members.entry(l).or_default().push(i);
        }
        HnswIndex {
            hnsw,
            origin,
            points,
            params,
            members,
            build_seconds: seconds,
        }
    }

    pub fn build_seconds(&self) -> f64 {
        self.build_seconds
    }

    fn search_one(&self, q: usize, k: usize, restriction: Restriction) -> Vec<Neighbour> {
        let own = &self.members[&self.points.labels[q]];
        let row = self.points.row(q);
        let found = match restriction {
            Restriction::Any => self
                .hnsw
                .search(row, k + 1, self.params.ef_search.max(k + 1)),
            Restriction::OtherLabels => {
                let want = (k + own.len()).min(self.points.len());
                self.hnsw.search(row, want, self.params.ef_search.max(want))
            }
            Restriction::SameLabel => {
                let want = k.min(own.len());
                self.hnsw.search_filter(
                    row,
                    want + 1,
                    self.params.ef_search.max(want + 1),
                    Some(own),
                )
            }
        };
        let mut list: Vec<Neighbour> = found
            .into_iter()
            .map(|n| n.d_id)
            .filter(|&j| self.points.allowed(q, j, restriction))
            .map(|j| Neighbour {
                index: j,
                dot: dot(row, self.points.row(j)),
            })
            .collect();
        list.sort_by(|a, b| b.dot.total_cmp(&a.dot).then(a.index.cmp(&b.index)));
        list.truncate(k);
        list
    }
}

impl NeighbourIndex for HnswIndex<'_> {
    fn search(&self, queries: &[usize], k: usize, restriction: Restriction) -> Vec<Vec<Neighbour>> {
        queries
            .par_iter()
            .map(|&q| self.search_one(q, k, restriction))
            .collect()
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": "hnsw",
            "m": self.params.m,
            "ef_construction": self.params.ef_construction,
            "ef_search": self.params.ef_search,
            "index": self.origin,
            "build_seconds": self.build_seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{brute_force, clustered};
    use super::*;

    #[test]
    fn recall_against_brute_force_is_high() {
        let (data, labels) = clustered(40, 25, 32, 0.7, 2);
        let points = Points {
            data: &data,
            dim: 32,
            labels: &labels,
        };
        let index = HnswIndex::build(points, HnswParams::default());
        let queries: Vec<usize> = (0..points.len()).step_by(7).collect();
        for restriction in [
            Restriction::Any,
            Restriction::OtherLabels,
            Restriction::SameLabel,
        ] {
            let got = index.search(&queries, 10, restriction);
            let mut hits = 0;
            let mut total = 0;
            for (q, list) in queries.iter().zip(&got) {
                assert!(list
                    .iter()
                    .all(|n| points.allowed(*q, n.index, restriction)));
                let want = brute_force(points, *q, 10, restriction);
                total += want.len();
                hits += want
                    .iter()
                    .filter(|w| list.iter().any(|n| n.index == w.index))
                    .count();
            }
            let recall = hits as f64 / total as f64;
            assert!(recall >= 0.95, "{restriction:?}: recall {recall}");
        }
    }

    #[test]
    fn a_saved_index_answers_like_the_built_one() {
        let (data, labels) = clustered(10, 20, 16, 0.7, 4);
        let points = Points {
            data: &data,
            dim: 16,
            labels: &labels,
        };
        let built = HnswIndex::build(points, HnswParams::default());
        let dir = tempfile::tempdir().unwrap();
        built.save(dir.path(), "index").unwrap();
        let mut loader = HnswIo::new(dir.path(), "index");
        let loaded = HnswIndex::load(&mut loader, points, HnswParams::default()).unwrap();
        let queries: Vec<usize> = (0..points.len()).collect();
        assert_eq!(
            built.search(&queries, 5, Restriction::OtherLabels),
            loaded.search(&queries, 5, Restriction::OtherLabels)
        );
        assert_eq!(loaded.describe()["index"], "loaded");
    }
}
