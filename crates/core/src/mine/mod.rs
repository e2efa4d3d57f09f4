//! Global triplet mining: load (or compute) embeddings, drop excluded samples, build the
//! neighbour index, run the miner, write the triplet CSV and its JSON sidecar.

pub mod blocks;
mod miner;
mod rules;
mod sharded;

pub use crate::definitions::Triplet;
pub use miner::{mine, mine_anchors, MineStats};
pub use rules::{MiningRules, NegativeOrder, PositiveRule, Selection, Strategy};

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::embeddings::{EmbeddingsFrom, Network, SourceError};
use crate::knn::{
    Backend, HnswIndex, HnswLoader, HnswParams, KnnChoice, KnnConfig, NeighbourIndex, Points,
};
use crate::output::{crash_point, write_atomic, write_json, HashingWriter};
use crate::store::{self, EmbeddingSet, EmbeddingsInput, StoreError};
use crate::triplets::{self, TripletRow};

/// `tripmine mine`, validated.
#[derive(Debug, Clone)]
pub struct MineConfig {
    pub source: EmbeddingsFrom,
    /// `None` writes the CSV to stdout (and no sidecar).
    pub out: Option<PathBuf>,
    pub rules: MiningRules,
    pub knn: KnnConfig,
    pub exclude: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum MineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("exclude list {path}: {message}")]
    Exclude { path: PathBuf, message: String },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl crate::exit::Classify for MineError {
    fn is_input_error(&self) -> bool {
        match self {
            MineError::Exclude { .. } => true,
            MineError::Store(e) => e.is_input_error(),
            MineError::Source(e) => e.is_input_error(),
            MineError::Write { .. } => false,
        }
    }
}

pub struct MineSummary {
    pub stats: MineStats,
    pub backend: serde_json::Value,
    pub excluded: usize,
    pub seconds: f64,
    /// Things the user should know (an exclude list that matched nothing, ...).
    pub warnings: Vec<String>,
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
        let (names, ids) = crate::corpus::label_ids(set.samples.iter().map(|s| s.label.as_str()));
        let origin: Vec<usize> = (0..set.len())
            .filter(|&i| !excluded.contains(&set.samples[i].path))
            .collect();
        Labelled {
            data: origin
                .iter()
                .flat_map(|&i| set.row(i).iter().copied())
                .collect(),
            dim: set.dim,
            labels: origin.iter().map(|&i| ids[i]).collect(),
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

/// An exclude list: its rows, and the folder they are relative to when it is an audit's
/// `exclude.csv` (the `corpus_root` in the `audit.json` beside it).
#[derive(Debug, Clone)]
pub struct ExcludeList {
    pub path: PathBuf,
    pub rows: Vec<String>,
    pub root: Option<PathBuf>,
}

impl ExcludeList {
    /// Reads the list; an audit's list must be the one its `audit.json` was written with.
    pub fn read(path: &Path) -> Result<Self, MineError> {
        let bad = |message: String| MineError::Exclude {
            path: path.to_path_buf(),
            message,
        };
        let bytes = fs::read(path).map_err(|e| bad(e.to_string()))?;
        let audit_json = path.with_file_name("audit.json");
        let audit: Option<serde_json::Value> = fs::read_to_string(&audit_json)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let recorded = audit.as_ref().and_then(|a| {
            a["files"][name.as_deref().unwrap_or_default()]
                .as_str()
                .map(String::from)
        });
        if let Some(recorded) = recorded {
            let actual = store::sha256_hex(&bytes);
            if recorded != actual {
                return Err(bad(format!(
                    "{} records SHA-256 {recorded} for it, the file has {actual}: it is not \
                     the list that audit wrote. Re-run `tripmine audit`",
                    audit_json.display()
                )));
            }
        }
        let root = audit
            .as_ref()
            .and_then(|a| a["corpus_root"].as_str().map(PathBuf::from));
        let rows = parse_exclude(&bytes).map_err(bad)?;
        Ok(ExcludeList {
            path: path.to_path_buf(),
            rows,
            root,
        })
    }

    /// The samples of `set` this list names, compared as absolute paths when both the list and
    /// the embeddings know their corpus folder (so an audit of a manifest excludes the same
    /// files from an ImageFolder's embeddings), else as normalised relative paths. Also
    /// returns a warning when some rows match no sample.
    pub fn matching(&self, set: &EmbeddingSet) -> (HashSet<String>, Option<String>) {
        self.matching_paths(
            set.samples.iter().map(|s| s.path.as_str()),
            set.meta.corpus_root.as_deref().map(Path::new),
        )
    }

    /// [`ExcludeList::matching`] for sample paths relative to `set_root` (a corpus, or the
    /// corpus feature rows were computed from): what `mine` and `train` both use.
    pub fn matching_paths<'a>(
        &self,
        paths: impl Iterator<Item = &'a str>,
        set_root: Option<&Path>,
    ) -> (HashSet<String>, Option<String>) {
        use crate::corpus::normal_path;
        let absolute = set_root.is_some() && self.root.is_some();
        let key = |root: Option<&Path>, p: &str| normal_path(root.filter(|_| absolute), p);
        let by_key: BTreeMap<String, &str> = paths.map(|p| (key(set_root, p), p)).collect();
        let mut matched = HashSet::new();
        let mut unmatched = Vec::new();
        for row in &self.rows {
            match by_key.get(&key(self.root.as_deref(), row)) {
                Some(p) => {
                    matched.insert(p.to_string());
                }
                None => unmatched.push(row.as_str()),
            }
        }
        let warning = (!unmatched.is_empty() && !self.rows.is_empty()).then(|| {
            let how = if unmatched.len() == self.rows.len() {
                format!("NONE of the {} paths", self.rows.len())
            } else {
                format!(
                    "only {} of the {} paths",
                    self.rows.len() - unmatched.len(),
                    self.rows.len()
                )
            };
            format!(
                "exclude list {}: {how} match a sample (e.g. {:?} does not); \
                 is it from another corpus? Paths are compared {}",
                self.path.display(),
                unmatched[0],
                if absolute {
                    "as files under each corpus folder"
                } else {
                    "as written, relative to the corpus"
                }
            )
        });
        (matched, warning)
    }
}

/// The `path` column of an exclude list.
pub fn parse_exclude(bytes: &[u8]) -> Result<Vec<String>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let col = reader
        .headers()
        .map_err(|e| e.to_string())?
        .iter()
        .position(|h| h == "path")
        .ok_or("no `path` column (an exclude list is a CSV with a path column, like an audit's exclude.csv)")?;
    reader
        .records()
        .enumerate()
        .map(|(i, r)| {
            r.map(|r| r.get(col).unwrap_or("").to_string())
                .map_err(|e| format!("line {}: {e}", i + 2))
        })
        .filter(|r| r.as_ref().map_or(true, |p| !p.is_empty()))
        .collect()
}

/// `network` embeds `--corpus` with `--model`; without it only files can be mined.
pub fn run(cfg: &MineConfig, network: Option<&dyn Network>) -> Result<MineSummary, MineError> {
    if let (
        EmbeddingsFrom::Files {
            input: EmbeddingsInput::Shards(dir),
            normalise,
        },
        None,
        KnnChoice::Auto | KnnChoice::Exact | KnnChoice::Classes,
    ) = (&cfg.source, &cfg.exclude, cfg.knn.choice)
    {
        return sharded::run(dir, *normalise, cfg);
    }
    let start = Instant::now();
    let set = cfg.source.load(network, None)?.set;
    let mut warnings = Vec::new();
    let excluded = match &cfg.exclude {
        Some(path) => {
            let (matched, warning) = ExcludeList::read(path)?.matching(&set);
            warnings.extend(warning);
            matched
        }
        None => HashSet::new(),
    };
    let labelled = Labelled::from_set(&set, &excluded);
    let points = labelled.points();
    // hnsw_rs borrows the loader of a saved index for as long as the index lives.
    let mut loader = None;
    let (choice, reason) = cfg.knn.resolve(points);
    let cache = match (&cfg.source, choice) {
        (
            EmbeddingsFrom::Files {
                input: EmbeddingsInput::Dir(dir),
                normalise: false,
            },
            KnnChoice::Hnsw,
        ) => Some(HnswCache::new(dir, &set, &excluded, cfg.knn.hnsw)),
        _ => None,
    };
    let index = match cache
        .as_ref()
        .and_then(|c| c.load(&mut loader, points, cfg.knn.hnsw))
    {
        Some(loaded) => Backend::Hnsw(loaded),
        None => {
            let built = crate::knn::build_as(points, choice, &cfg.knn);
            if let (Some(cache), Backend::Hnsw(index)) = (&cache, &built) {
                cache.save(index);
            }
            built
        }
    };
    let (triplets, stats) = mine(points, &index, &cfg.rules);
    let mut backend = index.describe();
    backend["chosen"] = reason.into();
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
        warnings,
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
        Some(path) => write_triplet_set(path, rows, sidecar_json(cfg, &set, &summary))?,
    }
    let _ = std::io::stdout().flush();
    Ok(summary)
}

/// Writes a triplet CSV and its sidecar (`<name>.json`): what `tripmine mine` and every
/// global training round export. The pair is consistent as a set: the sidecar (written
/// second) records the CSV's hash, and readers refuse a CSV whose sidecar names another hash.
pub fn write_triplet_set(
    path: &Path,
    rows: impl Iterator<Item = TripletRow>,
    mut sidecar: serde_json::Value,
) -> Result<(), MineError> {
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MineError::Write { path, source }
    };
    let mut csv_sha256 = String::new();
    write_atomic(path, |w| {
        let mut hashing = HashingWriter::new(w);
        triplets::write(&mut hashing, rows)?;
        csv_sha256 = hashing.hex();
        Ok(())
    })
    .map_err(failed(path))?;
    crash_point("mine:csv-written");
    sidecar["csv_sha256"] = csv_sha256.into();
    let json = triplets::sidecar_path(path).expect("--out was checked not to end in .json");
    write_json(&json, &sidecar).map_err(failed(&json))
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
        "skip_nearest": r.skip_nearest,
        "negative_floor": crate::definitions::json_f32(r.negative_floor),
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
    json["embeddings"] = set.describe();
    json["excluded_samples"] = s.excluded.into();
    json["exclude_list"] = serde_json::json!(cfg.exclude);
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
