//! An embeddings directory: `embeddings.npy` (float32 N×D), `samples.csv`
//! (`index,path,label,split`), `embeddings.json` (how they were made) and `skipped.csv`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::corpus::{Problem, PROBLEM_HEADER};
use crate::definitions::Distance;
use crate::npy;
use crate::output::{write_atomic, write_csv, write_json};

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
    /// SHA-256 of `embeddings.npy`: index caches and mined triplets refer to it.
    pub sha256: String,
}

/// Embeddings in memory: row `i` of `data` belongs to `samples[i]`.
#[derive(Debug, Clone)]
pub struct EmbeddingSet {
    pub dim: usize,
    pub data: Vec<f32>,
    pub samples: Vec<SampleRow>,
    pub meta: EmbeddingsMeta,
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
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("embeddings {dir}: {message}")]
    Invalid { dir: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
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

/// Writes the four files of an embeddings directory, each atomically; `embeddings.json` last,
/// so its presence means the rest is complete.
pub fn write(
    dir: &Path,
    npy_bytes: &[u8],
    samples: &[SampleRow],
    problems: &[Problem],
    meta: &EmbeddingsMeta,
) -> Result<(), StoreError> {
    let io = |path: PathBuf| move |source| StoreError::Io { path, source };
    fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    let npy_path = dir.join(EMBEDDINGS_NPY);
    write_atomic(&npy_path, |w| std::io::Write::write_all(w, npy_bytes)).map_err(io(npy_path))?;
    let samples_path = dir.join(SAMPLES_CSV);
    write_csv(&samples_path, samples, &SAMPLES_HEADER).map_err(io(samples_path))?;
    let skipped_path = dir.join(SKIPPED_CSV);
    write_csv(&skipped_path, problems, &PROBLEM_HEADER).map_err(io(skipped_path))?;
    let json_path = dir.join(EMBEDDINGS_JSON);
    write_json(&json_path, meta).map_err(io(json_path))
}

/// Reads and validates an embeddings directory: shapes agree, rows are finite and unit-norm.
pub fn read(dir: &Path) -> Result<EmbeddingSet, StoreError> {
    let bad = |message: String| StoreError::Invalid {
        dir: dir.to_path_buf(),
        message,
    };
    let json = fs::read_to_string(dir.join(EMBEDDINGS_JSON))
        .map_err(|e| bad(format!("{EMBEDDINGS_JSON}: {e}")))?;
    let meta: EmbeddingsMeta =
        serde_json::from_str(&json).map_err(|e| bad(format!("{EMBEDDINGS_JSON}: {e}")))?;
    let bytes =
        fs::read(dir.join(EMBEDDINGS_NPY)).map_err(|e| bad(format!("{EMBEDDINGS_NPY}: {e}")))?;
    let (rows, dim, data) =
        npy::read_f32_matrix(&bytes).map_err(|e| bad(format!("{EMBEDDINGS_NPY}: {e}")))?;
    let mut reader = csv::Reader::from_path(dir.join(SAMPLES_CSV))
        .map_err(|e| bad(format!("{SAMPLES_CSV}: {e}")))?;
    let samples: Vec<SampleRow> = reader
        .deserialize()
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("{SAMPLES_CSV}: {e}")))?;
    if samples.len() != rows {
        return Err(bad(format!(
            "{EMBEDDINGS_NPY} has {rows} rows but {SAMPLES_CSV} has {} samples",
            samples.len()
        )));
    }
    if let Some((i, s)) = samples.iter().enumerate().find(|(i, s)| s.index != *i) {
        return Err(bad(format!(
            "{SAMPLES_CSV} row {} has index {}; indices must be 0..N in order",
            i + 1,
            s.index
        )));
    }
    if rows == 0 || dim == 0 {
        return Err(bad(format!("{EMBEDDINGS_NPY} is empty ({rows}×{dim})")));
    }
    for (i, row) in data.chunks_exact(dim).enumerate() {
        let name = &samples[i].path;
        if row.iter().any(|v| !v.is_finite()) {
            return Err(bad(format!(
                "row {i} ({name}) holds NaN or infinite values"
            )));
        }
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if (norm - 1.0).abs() > 1e-3 {
            return Err(bad(format!(
                "row {i} ({name}) has norm {norm}; tripmine expects L2-normalised rows"
            )));
        }
    }
    Ok(EmbeddingSet {
        dim,
        data,
        samples,
        meta: EmbeddingsMeta {
            sha256: sha256_hex(&bytes),
            ..meta
        },
    })
}
