//! Shard directories (written by `tripmine.write_shards`; format in docs/formats.md): a
//! `manifest.json` and, per shard, `.npy` rows, `.labels.npy` label codes, `.rows.npy` corpus
//! rows and optionally `.paths.csv`. Read here into corpus order, every file checked against
//! the SHA-256 the manifest records.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::npy;
use crate::store::sha256_hex;

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

/// Reads every shard of `dir`; errors name the file and what is wrong with it.
pub fn read(dir: &Path) -> Result<Corpus, String> {
    let at = |file: &str| dir.join(file);
    let name = |p: &PathBuf| p.display().to_string();
    let manifest_path = at(MANIFEST);
    let manifest_bytes =
        fs::read(&manifest_path).map_err(|e| format!("{}: {e}", name(&manifest_path)))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| format!("{}: not a shard manifest ({e})", name(&manifest_path)))?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(format!(
            "{}: format {:?} version {}; expected {FORMAT:?} {VERSION}",
            name(&manifest_path),
            manifest.format,
            manifest.version
        ));
    }
    let (n, dim) = (manifest.rows, manifest.dim);
    let mut data = vec![0f32; n.checked_mul(dim).ok_or("manifest rows × dim overflow")?];
    let mut paths: Vec<Option<String>> = vec![None; n];
    let mut labels = vec![String::new(); n];
    for shard in &manifest.shards {
        let read_file = |suffix: &str| -> Result<Vec<u8>, String> {
            let file = format!("{}{suffix}", shard.name);
            let path = at(&file);
            let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", name(&path)))?;
            match shard.sha256.get(&file) {
                Some(recorded) if *recorded == sha256_hex(&bytes) => Ok(bytes),
                Some(_) => Err(format!(
                    "{}: SHA-256 differs from the manifest's; the shard was changed after it \
                     was written",
                    name(&path)
                )),
                None => Err(format!("{}: not listed in {MANIFEST}", name(&path))),
            }
        };
        let bad = |suffix: &str, e: String| {
            format!("{}: {e}", name(&at(&format!("{}{suffix}", shard.name))))
        };
        let matrix = npy::read_matrix(&read_file(".npy")?).map_err(|e| bad(".npy", e))?;
        let codes =
            npy::read_i64_vector(&read_file(".labels.npy")?).map_err(|e| bad(".labels.npy", e))?;
        let rows =
            npy::read_i64_vector(&read_file(".rows.npy")?).map_err(|e| bad(".rows.npy", e))?;
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
        let recorded: Option<Vec<String>> = if manifest.paths {
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
        for (i, (&code, &row)) in codes.iter().zip(&rows).enumerate() {
            let row = usize::try_from(row)
                .ok()
                .filter(|&r| r < n && paths[r].is_none());
            let Some(row) = row else {
                return Err(bad(
                    ".rows.npy",
                    format!("entry {i} is out of 0..{n} or names a row twice"),
                ));
            };
            let code = usize::try_from(code)
                .ok()
                .filter(|c| (first..end).contains(c) && *c < manifest.labels.len());
            let Some(code) = code else {
                return Err(bad(
                    ".labels.npy",
                    format!("entry {i} is outside the shard's classes {first}..{end}"),
                ));
            };
            data[row * dim..(row + 1) * dim].copy_from_slice(&matrix.data[i * dim..(i + 1) * dim]);
            labels[row] = manifest.labels[code].clone();
            paths[row] = Some(
                recorded
                    .as_ref()
                    .map_or_else(|| row.to_string(), |p| p[i].clone()),
            );
        }
    }
    let paths: Vec<String> = paths
        .into_iter()
        .enumerate()
        .map(|(r, p)| {
            p.ok_or_else(|| format!("{}: no shard holds corpus row {r}", name(&manifest_path)))
        })
        .collect::<Result<_, _>>()?;
    Ok(Corpus {
        manifest,
        manifest_sha256: sha256_hex(&manifest_bytes),
        data,
        paths,
        labels,
    })
}
