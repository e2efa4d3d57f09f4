//! Shard directories (written by `tripmine.write_shards`; format in docs/formats.md): a
//! `manifest.json` and, per shard, `.npy` rows, `.labels.npy` label codes, `.rows.npy` corpus
//! rows and optionally `.paths.csv`. Read here into corpus order, every file checked against
//! the SHA-256 the manifest records.

use std::fs;
use std::path::Path;

use serde::Deserialize;

use crate::npy;
use crate::store::{row_fix, sha256_hex, RowCheck, RowProblem};

pub const MANIFEST: &str = "manifest.json";
const FORMAT: &str = "tripmine-shards";
const VERSION: u32 = 1;

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub rows: usize,
    pub dim: usize,
    pub labels: Vec<String>,
    pub paths: bool,
    pub shards: Vec<ShardEntry>,
}

#[derive(Debug, Deserialize)]
pub struct ShardEntry {
    pub name: String,
    pub rows: usize,
    /// Codes `[first, end)` of the classes this shard holds whole.
    pub labels: [usize; 2],
    pub sha256: std::collections::BTreeMap<String, String>,
}

/// Whether `dir` is a shard directory (holds a manifest).
pub fn is_shard_dir(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
}

/// A whole shard directory in corpus order.
pub struct Corpus {
    pub manifest: Manifest,
    /// SHA-256 of `manifest.json`, which names every file's hash.
    pub manifest_sha256: String,
    pub data: Vec<f32>,
    /// Each corpus row's path (its row number where none were recorded) and label.
    pub paths: Vec<String>,
    pub labels: Vec<String>,
}

/// One shard, read and checked.
pub struct Shard {
    pub data: Vec<f32>,
    /// Label codes (indices into `Manifest::labels`).
    pub codes: Vec<u32>,
    /// Each row's row in the corpus.
    pub rows: Vec<usize>,
    paths: Option<Vec<String>>,
}

impl Shard {
    /// Row `i`'s path, or its corpus row number where no paths were recorded.
    pub fn path(&self, i: usize) -> String {
        match &self.paths {
            Some(p) => p[i].clone(),
            None => self.rows[i].to_string(),
        }
    }
}

/// The manifest of `dir` and its SHA-256.
pub fn read_manifest(dir: &Path) -> Result<(Manifest, String), String> {
    let path = dir.join(MANIFEST);
    let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a shard manifest ({e})", path.display()))?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(format!(
            "{}: format {:?} version {}; expected {FORMAT:?} {VERSION}",
            path.display(),
            manifest.format,
            manifest.version
        ));
    }
    if manifest.rows == 0 || manifest.dim == 0 || manifest.shards.is_empty() {
        return Err(format!("{}: the shards hold no rows", path.display()));
    }
    let total: usize = manifest.shards.iter().map(|s| s.rows).sum();
    if total != manifest.rows {
        return Err(format!(
            "{}: the shards list {total} rows, the manifest says {}",
            path.display(),
            manifest.rows
        ));
    }
    Ok((manifest, sha256_hex(&bytes)))
}

/// One shard of `dir`, each file checked against the manifest's SHA-256 and its rows against
/// `check` (fixed where it allows).
pub fn load_shard(
    dir: &Path,
    manifest: &Manifest,
    shard: &ShardEntry,
    check: RowCheck,
) -> Result<Shard, String> {
    let at = |suffix: &str| dir.join(format!("{}{suffix}", shard.name));
    let bad = |suffix: &str, e: String| format!("{}: {e}", at(suffix).display());
    let read_file = |suffix: &str| -> Result<Vec<u8>, String> {
        let file = format!("{}{suffix}", shard.name);
        let bytes = fs::read(at(suffix)).map_err(|e| bad(suffix, e.to_string()))?;
        match shard.sha256.get(&file) {
            Some(recorded) if *recorded == sha256_hex(&bytes) => Ok(bytes),
            Some(_) => Err(bad(
                suffix,
                "SHA-256 differs from the manifest's; the shard was changed after it was written"
                    .into(),
            )),
            None => Err(bad(suffix, format!("not listed in {MANIFEST}"))),
        }
    };
    let dim = manifest.dim;
    let mut matrix = npy::read_matrix(&read_file(".npy")?).map_err(|e| bad(".npy", e))?;
    let codes =
        npy::read_i64_vector(&read_file(".labels.npy")?).map_err(|e| bad(".labels.npy", e))?;
    let rows = npy::read_i64_vector(&read_file(".rows.npy")?).map_err(|e| bad(".rows.npy", e))?;
    if matrix.rows != shard.rows
        || matrix.cols != dim
        || codes.len() != shard.rows
        || rows.len() != shard.rows
    {
        return Err(bad(
            "",
            format!(
                "holds {}×{} rows, {} labels and {} row ids; the manifest says {}×{dim}",
                matrix.rows,
                matrix.cols,
                codes.len(),
                rows.len(),
                shard.rows
            ),
        ));
    }
    let paths = if manifest.paths {
        let bytes = read_file(".paths.csv")?;
        let mut reader = csv::Reader::from_reader(&bytes[..]);
        let list = reader
            .records()
            .map(|r| r.map(|r| r.get(0).unwrap_or("").to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(".paths.csv", e.to_string()))?;
        if list.len() != shard.rows {
            return Err(bad(
                ".paths.csv",
                format!("{} paths for {} rows", list.len(), shard.rows),
            ));
        }
        Some(list)
    } else {
        None
    };
    let [first, end] = shard.labels;
    let codes = codes
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            usize::try_from(c)
                .ok()
                .filter(|c| (first..end).contains(c) && *c < manifest.labels.len())
                .map(|c| c as u32)
                .ok_or_else(|| {
                    bad(
                        ".labels.npy",
                        format!("entry {i} is outside the shard's classes {first}..{end}"),
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    let rows = rows
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            usize::try_from(r)
                .ok()
                .filter(|&r| r < manifest.rows)
                .ok_or_else(|| {
                    bad(
                        ".rows.npy",
                        format!("entry {i} is not a row of 0..{}", manifest.rows),
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    for (i, row) in matrix.data.chunks_exact_mut(dim).enumerate() {
        match row_fix(row, check) {
            Ok(None) => {}
            Ok(Some(norm)) => row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32),
            Err(RowProblem::NotFinite) => {
                return Err(bad(".npy", format!("row {i} holds NaN or infinite values")))
            }
            Err(RowProblem::Zero) => {
                return Err(bad(
                    ".npy",
                    format!("row {i} is all zeros and has no direction"),
                ))
            }
            Err(RowProblem::NotUnit(norm)) => {
                return Err(bad(
                    ".npy",
                    format!(
                        "row {i} has norm {norm:.6}; tripmine expects L2-normalised rows (pass \
                         --normalise to divide every row by its norm)"
                    ),
                ))
            }
        }
    }
    Ok(Shard {
        data: matrix.data,
        codes,
        rows,
        paths,
    })
}

/// Reads every shard of `dir` as it is (rows checked by the reader); errors name the file
/// and what is wrong with it.
pub fn read(dir: &Path) -> Result<Corpus, String> {
    let (manifest, manifest_sha256) = read_manifest(dir)?;
    let (n, dim) = (manifest.rows, manifest.dim);
    let mut data = vec![0f32; n.checked_mul(dim).ok_or("manifest rows × dim overflow")?];
    let mut paths: Vec<Option<String>> = vec![None; n];
    let mut labels = vec![String::new(); n];
    for entry in &manifest.shards {
        let shard = load_shard(dir, &manifest, entry, RowCheck::AsTheyAre)?;
        for (i, &row) in shard.rows.iter().enumerate() {
            if paths[row].is_some() {
                return Err(format!(
                    "{}: corpus row {row} is in two shards",
                    dir.join(format!("{}.rows.npy", entry.name)).display()
                ));
            }
            data[row * dim..(row + 1) * dim].copy_from_slice(&shard.data[i * dim..(i + 1) * dim]);
            labels[row] = manifest.labels[shard.codes[i] as usize].clone();
            paths[row] = Some(shard.path(i));
        }
    }
    let paths: Vec<String> = paths
        .into_iter()
        .enumerate()
        .map(|(r, p)| {
            p.ok_or_else(|| {
                format!(
                    "{}: no shard holds corpus row {r}",
                    dir.join(MANIFEST).display()
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Corpus {
        manifest,
        manifest_sha256,
        data,
        paths,
        labels,
    })
}
