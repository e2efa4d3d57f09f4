//! Global triplet mining: load (or compute) embeddings, drop excluded samples, build the
//! neighbour index, run the miner, write the triplet CSV and its JSON sidecar.

mod miner;
mod rules;

pub use miner::{mine, MineStats, Triplet};
pub use rules::{MiningRules, NegativeOrder, PositiveRule, Selection, Strategy};

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::Device;

use crate::embed::{embed_corpus, EmbedError, ModelChoice};
use crate::knn::{
    ExactIndex, HnswIndex, HnswLoader, HnswParams, KnnChoice, NeighbourIndex, Points,
};
use crate::output::{write_atomic, write_json};
use crate::store::{self, EmbeddingSet, StoreError};
use crate::triplets::{self, TripletRow};

/// Where the embeddings come from.
#[derive(Debug, Clone)]
pub enum EmbeddingSource {
    Dir(PathBuf),
    Corpus {
        corpus: PathBuf,
        model: PathBuf,
        batch_size: usize,
    },
}

/// `tripmine mine`, validated.
#[derive(Debug, Clone)]
pub struct MineConfig {
    pub source: EmbeddingSource,
    /// `None` writes the CSV to stdout (and no sidecar).
    pub out: Option<PathBuf>,
    pub rules: MiningRules,
    pub knn: KnnChoice,
    pub hnsw: HnswParams,
    pub exclude: Option<PathBuf>,
    pub device: Device,
}

#[derive(Debug, thiserror::Error)]
pub enum MineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("exclude list {path}: {message}")]
    Exclude { path: PathBuf, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl MineError {
    /// Bad input (exit 2) as opposed to a failure while working (exit 1).
    pub fn is_input_error(&self) -> bool {
        match self {
            MineError::Store(_) | MineError::Exclude { .. } => true,
            MineError::Embed(e) => e.is_input_error(),
            MineError::Write { .. } => false,
        }
    }
}

pub struct MineSummary {
    pub stats: MineStats,
    pub backend: serde_json::Value,
    pub excluded: usize,
    pub seconds: f64,
}

/// Samples with labels interned as dense ids, ready for the neighbour layer.
pub struct Labelled {
    pub data: Vec<f32>,
    pub dim: usize,
    pub labels: Vec<u32>,
    pub names: Vec<String>,
    /// Position of each kept sample in the embedding set.
    pub origin: Vec<usize>,
}

impl Labelled {
    /// Every sample of `set` whose path is not in `excluded`.
    pub fn from_set(set: &EmbeddingSet, excluded: &HashSet<String>) -> Self {
        let mut names: Vec<String> = set.samples.iter().map(|s| s.label.clone()).collect();
        names.sort();
        names.dedup();
        let id: BTreeMap<&str, u32> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i as u32))
            .collect();
        let origin: Vec<usize> = (0..set.len())
            .filter(|&i| !excluded.contains(&set.samples[i].path))
            .collect();
        Labelled {
            data: origin
                .iter()
                .flat_map(|&i| set.row(i).iter().copied())
                .collect(),
            dim: set.dim,
            labels: origin
                .iter()
                .map(|&i| id[set.samples[i].label.as_str()])
                .collect(),
            names,
            origin,
        }
    }

    pub fn points(&self) -> Points<'_> {
        Points {
            data: &self.data,
            dim: self.dim,
            labels: &self.labels,
        }
    }
}

/// Paths listed in the `path` column of a CSV (e.g. an audit's `exclude.csv`).
pub fn read_exclude(path: &Path) -> Result<HashSet<String>, MineError> {
    let bad = |message: String| MineError::Exclude {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = csv::Reader::from_path(path).map_err(|e| bad(e.to_string()))?;
    let col = reader
        .headers()
        .map_err(|e| bad(e.to_string()))?
        .iter()
        .position(|h| h == "path")
        .ok_or_else(|| bad("no `path` column".into()))?;
    reader
        .records()
        .map(|r| {
            r.map(|r| r.get(col).unwrap_or("").to_string())
                .map_err(|e| bad(e.to_string()))
        })
        .collect()
}

pub fn run(cfg: &MineConfig) -> Result<MineSummary, MineError> {
    let start = Instant::now();
    let set = match &cfg.source {
        EmbeddingSource::Dir(dir) => store::read(dir)?,
        EmbeddingSource::Corpus {
            corpus,
            model,
            batch_size,
        } => {
            embed_corpus(
                corpus,
                &ModelChoice::Checkpoint(model.clone()),
                cfg.device,
                *batch_size,
                false,
            )?
            .set
        }
    };
    let excluded = match &cfg.exclude {
        Some(path) => read_exclude(path)?,
        None => HashSet::new(),
    };
    let labelled = Labelled::from_set(&set, &excluded);
    let points = labelled.points();
    // hnsw_rs borrows the loader of a saved index for as long as the index lives.
    let mut loader = None;
    let (triplets, stats, backend) = match cfg.knn.resolve(points.len()) {
        KnnChoice::Hnsw => {
            let cache = match &cfg.source {
                EmbeddingSource::Dir(dir) => Some(HnswCache::new(dir, &set, &excluded, cfg.hnsw)),
                EmbeddingSource::Corpus { .. } => None,
            };
            let index = cache
                .as_ref()
                .and_then(|c| c.load(&mut loader, points, cfg.hnsw));
            let index = index.unwrap_or_else(|| {
                let built = HnswIndex::build(points, cfg.hnsw);
                if let Some(cache) = &cache {
                    cache.save(&built);
                }
                built
            });
            let (t, s) = mine(points, &index, &cfg.rules);
            (t, s, index.describe())
        }
        _ => {
            let index = ExactIndex::new(points, cfg.device);
            let (t, s) = mine(points, &index, &cfg.rules);
            (t, s, index.describe())
        }
    };
    let rows = triplets.iter().map(|t| {
        TripletRow::new(t, |i| {
            let s = &set.samples[labelled.origin[i]];
            (&s.path, &s.label)
        })
    });
    let summary = MineSummary {
        stats,
        backend,
        excluded: set.len() - points.len(),
        seconds: start.elapsed().as_secs_f64(),
    };
    match &cfg.out {
        None => {
            let stdout = std::io::stdout().lock();
            match triplets::write(stdout, rows) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.map_err(|source| MineError::Write {
                    path: "-".into(),
                    source,
                })?,
            }
        }
        Some(path) => write_triplet_set(path, rows, &sidecar_json(cfg, &set, &summary))?,
    }
    let _ = std::io::stdout().flush();
    Ok(summary)
}

/// Writes a triplet CSV and its sidecar (`<name>.json`): what `tripmine mine` and every
/// global training round export.
pub fn write_triplet_set(
    path: &Path,
    rows: impl Iterator<Item = TripletRow>,
    sidecar: &serde_json::Value,
) -> Result<(), MineError> {
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MineError::Write { path, source }
    };
    write_atomic(path, |w| triplets::write(w, rows)).map_err(failed(path))?;
    let json = path.with_extension("json");
    write_json(&json, sidecar).map_err(failed(&json))
}

/// The sidecar fields that describe how triplets were mined: rules, backend and counts.
pub fn rules_sidecar(
    r: &MiningRules,
    backend: &serde_json::Value,
    stats: &MineStats,
) -> serde_json::Value {
    let count = |kind| stats.per_kind.get(&kind).copied().unwrap_or(0);
    serde_json::json!({
        "tripmine_version": env!("CARGO_PKG_VERSION"),
        "margin": crate::definitions::json_f32(r.margin),
        "distance": r.distance,
        "strategy": r.strategy.to_string(),
        "positives": r.positives,
        "negatives_per_anchor": r.negatives_per_anchor,
        "negative_order": r.negative_order,
        "anchors_per_class": r.anchors_per_class,
        "search_depth": { "start": r.start_depth, "max": r.max_depth },
        "seed": r.seed,
        "backend": backend,
        "counts": {
            "triplets": stats.triplets,
            "hard": count(crate::definitions::TripletKind::Hard),
            "semihard": count(crate::definitions::TripletKind::Semihard),
            "easy": count(crate::definitions::TripletKind::Easy),
        },
        "anchors": {
            "considered": stats.anchors,
            "with_triplets": stats.anchors_with_triplets,
            "short_of_negatives": stats.anchors_short,
            "skipped": stats.skipped,
        },
    })
}

fn sidecar_json(cfg: &MineConfig, set: &EmbeddingSet, s: &MineSummary) -> serde_json::Value {
    let mut json = rules_sidecar(&cfg.rules, &s.backend, &s.stats);
    json["model"] = set.meta.model.clone();
    json["embeddings"] = serde_json::json!({ "corpus": set.meta.corpus, "count": set.len(), "dim": set.dim, "sha256": set.meta.sha256 });
    json["excluded_samples"] = s.excluded.into();
    json["wall_seconds"] = s.seconds.into();
    json
}

/// A saved HNSW index next to the embeddings (`DIR/hnsw/`), reused while the embeddings,
/// the exclusions and the build parameters are unchanged (`index.json` holds that key).
struct HnswCache {
    dir: PathBuf,
    key: serde_json::Value,
}

const HNSW_BASENAME: &str = "index";

impl HnswCache {
    fn new(
        embeddings: &Path,
        set: &EmbeddingSet,
        excluded: &HashSet<String>,
        params: HnswParams,
    ) -> Self {
        let mut excluded: Vec<&str> = excluded.iter().map(String::as_str).collect();
        excluded.sort_unstable();
        let key = serde_json::json!({
            "embeddings_sha256": set.meta.sha256,
            "excluded_sha256": store::sha256_hex(excluded.join("\n").as_bytes()),
            "m": params.m,
            "ef_construction": params.ef_construction,
        });
        HnswCache {
            dir: embeddings.join("hnsw"),
            key,
        }
    }

    fn load<'a>(
        &self,
        loader: &'a mut Option<HnswLoader>,
        points: Points<'a>,
        params: HnswParams,
    ) -> Option<HnswIndex<'a>> {
        let saved: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(self.dir.join("index.json")).ok()?).ok()?;
        if saved != self.key {
            return None;
        }
        let loader = loader.insert(HnswLoader::new(&self.dir, HNSW_BASENAME));
        match HnswIndex::load(loader, points, params) {
            Ok(index) => Some(index),
            Err(e) => {
                eprintln!(
                    "warning: rebuilding the HNSW index: the saved one in {} is unusable ({e})",
                    self.dir.display()
                );
                None
            }
        }
    }

    /// Best effort: a read-only embeddings directory only costs the next run a rebuild.
    fn save(&self, index: &HnswIndex) {
        let _ = fs::remove_file(self.dir.join("index.json"));
        let saved = index.save(&self.dir, HNSW_BASENAME).and_then(|()| {
            write_json(&self.dir.join("index.json"), &self.key).map_err(|e| e.to_string())
        });
        if let Err(e) = saved {
            eprintln!(
                "warning: could not save the HNSW index in {}: {e}",
                self.dir.display()
            );
        }
    }
}
