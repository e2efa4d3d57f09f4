//! An embeddings directory: `embeddings.npy` (float32 N×D), `samples.csv`
//! (`index,path,label,split`), `embeddings.json` (how they were made) and `skipped.csv`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::corpus::{Problem, PROBLEM_HEADER};
use crate::definitions::Distance;
use crate::npy;
use std::io::Write;

use crate::output::{
    crash_point, is_foreign, publish_dir, staging_dir, write_atomic, write_csv, write_json,
};

pub const EMBEDDINGS_NPY: &str = "embeddings.npy";
pub const SAMPLES_CSV: &str = "samples.csv";
pub const EMBEDDINGS_JSON: &str = "embeddings.json";
pub const SKIPPED_CSV: &str = "skipped.csv";
const SAMPLES_HEADER: [&str; 4] = ["index", "path", "label", "split"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRow {
    pub index: usize,
    pub path: String,
    pub label: String,
    pub split: String,
}

/// `embeddings.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingsMeta {
    pub tripmine_version: String,
    pub corpus: String,
    pub count: usize,
    pub dim: usize,
    pub distance: Distance,
    pub normalised: bool,
    /// Files listed in `skipped.csv`.
    pub skipped: usize,
    /// Where the weights came from: a checkpoint path, or the random initialisation's seed.
    pub model: serde_json::Value,
    /// SHA-256 of `embeddings.npy`: index caches and mined triplets refer to it, and reading
    /// the directory checks it.
    pub sha256: String,
    /// SHA-256 of `samples.csv` (checked on reading when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_sha256: Option<String>,
    /// The absolute folder the sample paths are relative to (an ImageFolder root, or the
    /// manifest's folder), so exclusions from another listing of the same files can match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus_root: Option<String>,
}

/// Where a set of embeddings was read from and what reading it changed.
#[derive(Debug, Clone, Serialize)]
pub struct LoadInfo {
    pub npy: PathBuf,
    pub labels: PathBuf,
    /// `embeddings.json` when there was one (tripmine's own directory).
    pub metadata: Option<PathBuf>,
    pub dtype: String,
    pub fortran_order: bool,
    /// Rows were L2-normalised on reading (`--normalise`).
    pub normalised_on_load: bool,
}

/// Embeddings in memory: row `i` of `data` belongs to `samples[i]`.
#[derive(Debug, Clone)]
pub struct EmbeddingSet {
    pub dim: usize,
    pub data: Vec<f32>,
    pub samples: Vec<SampleRow>,
    pub meta: EmbeddingsMeta,
    /// `None` for embeddings computed in this process.
    pub loaded: Option<LoadInfo>,
}

impl EmbeddingSet {
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows whose sample passes `keep`, renumbered in order.
    pub fn retain(self, keep: impl Fn(&SampleRow) -> bool) -> EmbeddingSet {
        let mut data = Vec::new();
        let mut samples = Vec::new();
        for (i, sample) in self.samples.into_iter().enumerate() {
            if keep(&sample) {
                data.extend_from_slice(&self.data[i * self.dim..(i + 1) * self.dim]);
                samples.push(SampleRow {
                    index: samples.len(),
                    ..sample
                });
            }
        }
        EmbeddingSet {
            dim: self.dim,
            meta: EmbeddingsMeta {
                count: samples.len(),
                ..self.meta
            },
            data,
            samples,
            loaded: self.loaded,
        }
    }

    /// What outputs record about these embeddings.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "corpus": self.meta.corpus,
            "count": self.len(),
            "dim": self.dim,
            "sha256": self.meta.sha256,
            "loaded": self.loaded,
        })
    }
}

/// The `checkpoint` an `embeddings.json` records for a freshly initialised network.
pub const NO_CHECKPOINT: &str = "none (freshly initialised)";

/// One line about the model of an `embeddings.json` `model` record: the checkpoint it was
/// loaded from, or how a fresh network was initialised.
pub fn model_summary(record: &serde_json::Value) -> String {
    let origin = record["origin"].as_str().unwrap_or("unknown model");
    match record["checkpoint"].as_str() {
        Some(dir) if dir != NO_CHECKPOINT => format!("checkpoint {dir}"),
        _ => origin.to_string(),
    }
}

/// Where embeddings are read from.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbeddingsInput {
    /// tripmine's own directory, or any directory with `embeddings.npy` + `samples.csv`.
    Dir(PathBuf),
    /// An `.npy` file and a CSV naming its rows in order (`path,label[,split]`, or `label`).
    Files { npy: PathBuf, labels: PathBuf },
    /// A shard directory (`manifest.json`, `tripmine.write_shards`), read whole.
    Shards(PathBuf),
}

impl EmbeddingsInput {
    /// From `--embeddings PATH [--labels CSV]`: a directory, or an `.npy` file with its labels.
    pub fn from_args(embeddings: &Path, labels: Option<&Path>) -> Result<Self, String> {
        match (embeddings.is_dir(), labels) {
            (true, None) if crate::shards::is_shard_dir(embeddings) => {
                Ok(EmbeddingsInput::Shards(embeddings.to_path_buf()))
            }
            (true, None) => Ok(EmbeddingsInput::Dir(embeddings.to_path_buf())),
            (true, Some(labels)) => Ok(EmbeddingsInput::Files {
                npy: embeddings.join(EMBEDDINGS_NPY),
                labels: labels.to_path_buf(),
            }),
            (false, Some(labels)) => Ok(EmbeddingsInput::Files {
                npy: embeddings.to_path_buf(),
                labels: labels.to_path_buf(),
            }),
            (false, None) if embeddings.exists() => Err(format!(
                "--embeddings {} is a file: give the CSV that names its rows with --labels \
                 (columns path,label[,split], or label), or pass a directory holding \
                 {EMBEDDINGS_NPY} and {SAMPLES_CSV}",
                embeddings.display()
            )),
            (false, None) => Err(format!(
                "--embeddings {} does not exist",
                embeddings.display()
            )),
        }
    }

    /// The directory or the `.npy` file, for messages and caches.
    pub fn path(&self) -> &Path {
        match self {
            EmbeddingsInput::Dir(dir) | EmbeddingsInput::Shards(dir) => dir,
            EmbeddingsInput::Files { npy, .. } => npy,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("embeddings {dir}: {message}")]
    Invalid { dir: PathBuf, message: String },
    #[error(
        "{file} does not match {json}: {json} records SHA-256 {recorded}, the file has {actual}. \
         It was replaced or rewritten after embedding (an interrupted run?); embed again, or \
         delete {json} to use the file as external embeddings"
    )]
    Provenance {
        file: PathBuf,
        json: PathBuf,
        recorded: String,
        actual: String,
    },
    #[error(
        "refusing to replace {0}: it is not empty and is not an embeddings directory; choose \
         another --out or empty it"
    )]
    NotOurs(PathBuf),
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl crate::exit::Classify for StoreError {
    fn is_input_error(&self) -> bool {
        !matches!(self, StoreError::Io { .. })
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The bytes of `embeddings.npy` for `data`, so the caller can hash exactly what is written.
pub fn npy_bytes(rows: usize, dim: usize, data: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(128 + data.len() * 4);
    npy::write_f32_matrix(&mut bytes, rows, dim, data).expect("writing to memory");
    bytes
}

/// Writes an embeddings directory as one set: the four files are staged in a sibling
/// directory and swapped in whole (see [`publish_dir`]), so a reader never meets new vectors
/// with old sample names. `embeddings.json` records the hashes of `embeddings.npy` and
/// `samples.csv`.
pub fn write(
    dir: &Path,
    npy_bytes: &[u8],
    samples: &[SampleRow],
    problems: &[Problem],
    meta: &EmbeddingsMeta,
) -> Result<(), StoreError> {
    let io = |path: PathBuf| move |source| StoreError::Io { path, source };
    let mut samples_csv = Vec::new();
    {
        let mut w = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(&mut samples_csv);
        w.write_record(SAMPLES_HEADER)
            .and_then(|()| samples.iter().try_for_each(|s| w.serialize(s)))
            .map_err(std::io::Error::from)
            .and_then(|()| w.flush())
            .map_err(io(dir.join(SAMPLES_CSV)))?;
    }
    let meta = EmbeddingsMeta {
        sha256: sha256_hex(npy_bytes),
        samples_sha256: Some(sha256_hex(&samples_csv)),
        ..meta.clone()
    };
    if is_foreign(dir, EMBEDDINGS_JSON) {
        return Err(StoreError::NotOurs(dir.to_path_buf()));
    }
    let staging = staging_dir(dir);
    let result = (|| {
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).map_err(io(staging.clone()))?;
        let file = |name: &str| staging.join(name);
        write_atomic(&file(EMBEDDINGS_NPY), |w| w.write_all(npy_bytes))
            .map_err(io(dir.join(EMBEDDINGS_NPY)))?;
        write_atomic(&file(SAMPLES_CSV), |w| w.write_all(&samples_csv))
            .map_err(io(dir.join(SAMPLES_CSV)))?;
        write_csv(&file(SKIPPED_CSV), problems, &PROBLEM_HEADER)
            .map_err(io(dir.join(SKIPPED_CSV)))?;
        write_json(&file(EMBEDDINGS_JSON), &meta).map_err(io(dir.join(EMBEDDINGS_JSON)))?;
        crash_point("embed:staged");
        publish_dir(&staging, dir).map_err(io(dir.to_path_buf()))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// Reads tripmine's own embeddings directory (or any directory with `embeddings.npy` and
/// `samples.csv`) with unit-norm rows required.
pub fn read(dir: &Path) -> Result<EmbeddingSet, StoreError> {
    open(&EmbeddingsInput::Dir(dir.to_path_buf()), false)
}

/// Reads and validates embeddings from anywhere: shapes agree, rows are finite and unit-norm
/// (or are normalised here when `normalise`), and when `embeddings.json` is present the
/// `.npy` (and `samples.csv`) must be the files it was written with.
pub fn open(input: &EmbeddingsInput, normalise: bool) -> Result<EmbeddingSet, StoreError> {
    let rows = if normalise {
        RowCheck::Normalise
    } else {
        RowCheck::UnitLength
    };
    open_rows(input, rows)
}

/// A row this close to unit length is unit as float32 writes it (a few ulps of rounding).
const UNIT_AS_WRITTEN: f64 = 1e-5;

/// What is asked of the rows of an array being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowCheck {
    /// Unit length (within 1e-3; such rows are renormalised exactly), else refused.
    UnitLength,
    /// Divided by their norm (`--normalise`); an all-zero row is refused.
    Normalise,
    /// Finite, otherwise as they are: features for a head to train on (`train --embeddings`).
    AsTheyAre,
}

/// Why a row cannot be used under a [`RowCheck`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowProblem {
    NotFinite,
    /// All zeros: no direction to normalise.
    Zero,
    /// Not unit length (its norm), and normalising was not asked for.
    NotUnit(f64),
}

/// What `check` makes of one row: `None` to keep it bit for bit, or the norm to divide it by.
/// Nearly-unit rows are made unit too (d(x, x) of a row of norm 1.001 is far from 0, and the
/// classes path's bounds assume unit rows); rows already unit to float precision, as
/// tripmine's own, are kept as they are. The one definition for files and for the Python API.
pub fn row_fix(row: &[f32], check: RowCheck) -> Result<Option<f64>, RowProblem> {
    if row.iter().any(|v| !v.is_finite()) {
        return Err(RowProblem::NotFinite);
    }
    let norm = row
        .iter()
        .map(|v| (*v as f64) * (*v as f64))
        .sum::<f64>()
        .sqrt();
    match check {
        RowCheck::AsTheyAre => Ok(None),
        RowCheck::Normalise if norm < 1e-12 => Err(RowProblem::Zero),
        RowCheck::UnitLength if (norm - 1.0).abs() > 1e-3 => Err(RowProblem::NotUnit(norm)),
        RowCheck::UnitLength if (norm - 1.0).abs() <= UNIT_AS_WRITTEN => Ok(None),
        _ => Ok(Some(norm)),
    }
}

/// [`open`] with the row check spelled out.
pub fn open_rows(input: &EmbeddingsInput, check: RowCheck) -> Result<EmbeddingSet, StoreError> {
    if let EmbeddingsInput::Shards(dir) = input {
        return open_shards(dir, check);
    }
    let (dir, npy_path, labels_path, json_path) = match input {
        EmbeddingsInput::Dir(dir) => (
            dir.clone(),
            dir.join(EMBEDDINGS_NPY),
            dir.join(SAMPLES_CSV),
            Some(dir.join(EMBEDDINGS_JSON)).filter(|p| p.exists()),
        ),
        EmbeddingsInput::Shards(_) => unreachable!("read above"),
        EmbeddingsInput::Files { npy, labels } => {
            let json = npy.with_file_name(EMBEDDINGS_JSON);
            let own = npy.file_name().is_some_and(|n| n == EMBEDDINGS_NPY) && json.exists();
            (
                npy.clone(),
                npy.clone(),
                labels.clone(),
                own.then_some(json),
            )
        }
    };
    let bad = |message: String| StoreError::Invalid {
        dir: dir.clone(),
        message,
    };
    let name = |p: &Path| -> String {
        match input {
            EmbeddingsInput::Dir(_) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            EmbeddingsInput::Files { .. } | EmbeddingsInput::Shards(_) => p.display().to_string(),
        }
    };
    let bytes = fs::read(&npy_path).map_err(|e| bad(format!("{}: {e}", name(&npy_path))))?;
    let actual = sha256_hex(&bytes);
    let meta = match &json_path {
        Some(json_path) => {
            let json = fs::read_to_string(json_path)
                .map_err(|e| bad(format!("{}: {e}", name(json_path))))?;
            let meta: EmbeddingsMeta = serde_json::from_str(&json).map_err(|e| {
                bad(format!(
                    "{} is not tripmine's embeddings metadata ({e}); delete it to read the \
                     directory as external embeddings",
                    name(json_path)
                ))
            })?;
            if meta.sha256 != actual {
                return Err(StoreError::Provenance {
                    file: npy_path.clone(),
                    json: json_path.clone(),
                    recorded: meta.sha256,
                    actual,
                });
            }
            meta
        }
        None => EmbeddingsMeta {
            tripmine_version: String::new(),
            corpus: String::new(),
            count: 0,
            dim: 0,
            distance: Distance::Euclidean,
            normalised: false,
            skipped: 0,
            model: serde_json::json!({
                "origin": format!("external embeddings ({})", npy_path.display()),
            }),
            sha256: actual,
            samples_sha256: None,
            corpus_root: None,
        },
    };
    let matrix = npy::read_matrix(&bytes).map_err(|e| bad(format!("{}: {e}", name(&npy_path))))?;
    let (rows, dim, data) = (matrix.rows, matrix.cols, matrix.data);
    let labels_bytes = fs::read(&labels_path).map_err(|e| {
        let hint = match input {
            EmbeddingsInput::Dir(_) if e.kind() == std::io::ErrorKind::NotFound => format!(
                "; write {SAMPLES_CSV} (path,label[,split], one row per array row) beside \
                 {EMBEDDINGS_NPY}, or name such a CSV with --labels"
            ),
            _ => String::new(),
        };
        bad(format!("{}: {e}{hint}", name(&labels_path)))
    })?;
    if let (Some(json_path), Some(recorded)) = (&json_path, &meta.samples_sha256) {
        let actual = sha256_hex(&labels_bytes);
        if labels_path.file_name().is_some_and(|n| n == SAMPLES_CSV) && *recorded != actual {
            return Err(StoreError::Provenance {
                file: labels_path.clone(),
                json: json_path.clone(),
                recorded: recorded.clone(),
                actual,
            });
        }
    }
    let samples =
        parse_samples(&labels_bytes).map_err(|e| bad(format!("{}: {e}", name(&labels_path))))?;
    let mut seen = std::collections::HashSet::with_capacity(samples.len());
    if let Some(dup) = samples.iter().find(|s| !seen.insert(s.path.as_str())) {
        return Err(bad(format!(
            "{} names {:?} on more than one row; each row must be a distinct sample (a \
             triplet of one file three times teaches nothing)",
            name(&labels_path),
            dup.path
        )));
    }
    if samples.len() != rows {
        return Err(bad(format!(
            "{} has {rows} rows but {} names {} samples; row i of the array must belong to \
             row i of the CSV",
            name(&npy_path),
            name(&labels_path),
            samples.len()
        )));
    }
    if rows == 0 || dim == 0 {
        return Err(bad(format!("{} is empty ({rows}×{dim})", name(&npy_path))));
    }
    if json_path.is_some() && (meta.count != rows || meta.dim != dim) {
        return Err(bad(format!(
            "{EMBEDDINGS_JSON} records {}×{} but {} is {rows}×{dim}",
            meta.count,
            meta.dim,
            name(&npy_path)
        )));
    }
    let loaded = LoadInfo {
        npy: npy_path,
        labels: labels_path,
        metadata: json_path,
        dtype: matrix.dtype,
        fortran_order: matrix.fortran_order,
        normalised_on_load: check == RowCheck::Normalise,
    };
    checked_rows(data, dim, samples, meta, loaded, check, bad)
}

/// A shard directory read whole, in corpus order (every file checked against its manifest).
fn open_shards(dir: &Path, check: RowCheck) -> Result<EmbeddingSet, StoreError> {
    let bad = |message: String| StoreError::Invalid {
        dir: dir.to_path_buf(),
        message,
    };
    let corpus = crate::shards::read(dir).map_err(bad)?;
    if corpus.manifest.rows == 0 || corpus.manifest.dim == 0 {
        return Err(bad("the shards hold no rows".into()));
    }
    let samples = corpus
        .paths
        .into_iter()
        .zip(corpus.labels)
        .enumerate()
        .map(|(index, (path, label))| SampleRow {
            index,
            path,
            label,
            split: String::new(),
        })
        .collect();
    let manifest = dir.join(crate::shards::MANIFEST);
    let meta = EmbeddingsMeta {
        tripmine_version: String::new(),
        corpus: String::new(),
        count: corpus.manifest.rows,
        dim: corpus.manifest.dim,
        distance: Distance::Euclidean,
        normalised: false,
        skipped: 0,
        model: serde_json::json!({
            "origin": format!("sharded embeddings ({})", dir.display()),
        }),
        sha256: corpus.manifest_sha256,
        samples_sha256: None,
        corpus_root: None,
    };
    let loaded = LoadInfo {
        npy: manifest.clone(),
        labels: manifest,
        metadata: None,
        dtype: "<f4".into(),
        fortran_order: false,
        normalised_on_load: check == RowCheck::Normalise,
    };
    checked_rows(
        corpus.data,
        corpus.manifest.dim,
        samples,
        meta,
        loaded,
        check,
        bad,
    )
}

/// The set, once each row passed `check` (fixed where it allows).
fn checked_rows(
    mut data: Vec<f32>,
    dim: usize,
    samples: Vec<SampleRow>,
    meta: EmbeddingsMeta,
    loaded: LoadInfo,
    check: RowCheck,
    bad: impl Fn(String) -> StoreError,
) -> Result<EmbeddingSet, StoreError> {
    let rows = samples.len();
    for (i, row) in data.chunks_exact_mut(dim).enumerate() {
        let sample = &samples[i].path;
        match row_fix(row, check) {
            Ok(None) => {}
            Ok(Some(norm)) => row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32),
            Err(RowProblem::NotFinite) => {
                return Err(bad(format!(
                    "row {i} ({sample}) holds NaN or infinite values{}",
                    if loaded.dtype.ends_with("f4") {
                        ""
                    } else {
                        " (after conversion to float32)"
                    }
                )));
            }
            Err(RowProblem::Zero) => {
                return Err(bad(format!(
                    "row {i} ({sample}) is all zeros and has no direction to normalise"
                )));
            }
            Err(RowProblem::NotUnit(norm)) => {
                return Err(bad(format!(
                    "row {i} ({sample}) has norm {norm:.6}; tripmine expects L2-normalised rows. \
                     Pass --normalise to divide every row by its norm (distances then compare \
                     directions only, as cosine similarity does)"
                )));
            }
        }
    }
    let meta = EmbeddingsMeta {
        count: rows,
        dim,
        normalised: check != RowCheck::AsTheyAre,
        ..meta
    };
    Ok(EmbeddingSet {
        dim,
        data,
        samples,
        loaded: Some(loaded),
        meta,
    })
}

/// The rows of `samples.csv` (`index,path,label,split`) or of any CSV with a `label` column
/// and optionally `path`, `split` and `index` (which must then count 0..N); a row without a
/// path is named by its number.
pub fn parse_samples(bytes: &[u8]) -> Result<Vec<SampleRow>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let header = reader.headers().map_err(|e| e.to_string())?.clone();
    let column = |name: &str| header.iter().position(|h| h == name);
    let Some(label_col) = column("label") else {
        return Err(format!(
            "header is {:?}; expected path,label[,split] (or index,path,label,split)",
            header.iter().collect::<Vec<_>>().join(",")
        ));
    };
    let (path_col, split_col, index_col) = (column("path"), column("split"), column("index"));
    let mut samples = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| format!("line {}: {e}", i + 2))?;
        let get = |c: Option<usize>| c.and_then(|c| record.get(c)).unwrap_or("");
        if let Some(c) = index_col {
            let index = record.get(c).unwrap_or("");
            if index.parse::<usize>().ok() != Some(i) {
                return Err(format!(
                    "line {} has index {index:?}; indices must be 0..N in order",
                    i + 2
                ));
            }
        }
        let label = get(Some(label_col));
        if label.is_empty() {
            return Err(format!("line {}: empty label", i + 2));
        }
        let path = match get(path_col) {
            "" => i.to_string(),
            p => p.to_string(),
        };
        samples.push(SampleRow {
            index: i,
            path,
            label: label.to_string(),
            split: get(split_col).to_string(),
        });
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearly_unit_rows_are_made_unit_and_unit_rows_kept_bit_for_bit() {
        let unit: Vec<f32> = vec![0.6, 0.8, 0.0];
        assert_eq!(row_fix(&unit, RowCheck::UnitLength), Ok(None));
        let near: Vec<f32> = unit.iter().map(|v| v * 1.0008).collect();
        let norm = row_fix(&near, RowCheck::UnitLength)
            .unwrap()
            .expect("a row of norm 1.0008 is renormalised");
        let fixed: Vec<f32> = near.iter().map(|v| (*v as f64 / norm) as f32).collect();
        let length: f64 = fixed
            .iter()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((length - 1.0).abs() < 1e-6, "{length}");
        let far: Vec<f32> = unit.iter().map(|v| v * 1.01).collect();
        assert!(matches!(
            row_fix(&far, RowCheck::UnitLength),
            Err(RowProblem::NotUnit(n)) if (n - 1.01).abs() < 1e-6
        ));
        assert!(row_fix(&far, RowCheck::Normalise).unwrap().is_some());
        assert_eq!(
            row_fix(&[0.0, 0.0], RowCheck::Normalise),
            Err(RowProblem::Zero)
        );
        assert_eq!(
            row_fix(&[f32::NAN, 1.0], RowCheck::AsTheyAre),
            Err(RowProblem::NotFinite)
        );
        assert_eq!(row_fix(&[3.0, 4.0], RowCheck::AsTheyAre), Ok(None));
    }

    #[test]
    fn retain_keeps_the_chosen_rows_in_order_and_renumbers_them() {
        let set = EmbeddingSet {
            dim: 2,
            data: vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0],
            samples: ["a", "b", "c"]
                .iter()
                .enumerate()
                .map(|(index, p)| SampleRow {
                    index,
                    path: p.to_string(),
                    label: "x".into(),
                    split: if *p == "b" { "test" } else { "train" }.into(),
                })
                .collect(),
            meta: serde_json::from_value(serde_json::json!({
                "tripmine_version": "0", "corpus": "c", "count": 3, "dim": 2,
                "distance": "euclidean", "normalised": true, "skipped": 0,
                "model": {}, "sha256": "", "samples_sha256": null, "corpus_root": null
            }))
            .unwrap(),
            loaded: None,
        };
        let kept = set.retain(|s| s.split == "train");
        assert_eq!(kept.data, vec![1.0, 0.0, -1.0, 0.0]);
        let names: Vec<_> = kept
            .samples
            .iter()
            .map(|s| (s.index, s.path.as_str()))
            .collect();
        assert_eq!(names, [(0, "a"), (1, "c")]);
        assert_eq!(kept.meta.count, 2);
    }
}
