//! Shard directories (format in docs/formats.md): a `manifest.json` and, per shard, `.npy`
//! rows, `.labels.npy` label codes, `.rows.npy` corpus rows and optionally `.paths.csv`.
//! Written here ([`write`]: `tripmine embed --shard-rows`, `tripmine.write_shards`), placed by
//! label, and read here into corpus order, every file checked against the SHA-256 the
//! manifest records.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::npy;
use crate::store::{row_fix, sha256_hex, RowCheck, RowProblem};

pub const MANIFEST: &str = "manifest.json";
const FORMAT: &str = "tripmine-shards";
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub rows: usize,
    pub dim: usize,
    pub labels: Vec<String>,
    pub paths: bool,
    pub shards: Vec<ShardEntry>,
    /// Where the rows came from (`tripmine embed`'s model record), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ShardEntry {
    pub name: String,
    pub rows: usize,
    /// Codes `[first, end)` of the classes this shard holds whole.
    pub labels: [usize; 2],
    pub sha256: std::collections::BTreeMap<String, String>,
}

/// Rows to write as a shard directory: row `i` of `data` has `labels[i]` (and `paths[i]`).
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub dim: usize,
    pub labels: &'a [String],
    pub paths: Option<&'a [String]>,
    pub model: Option<serde_json::Value>,
}

/// Writes `rows` as a shard directory at `dir` (staged beside it, then swapped in whole),
/// classes in label order, a shard closed once it holds `shard_rows` rows. A directory that
/// holds something else is refused.
pub fn write(dir: &Path, rows: &Rows, shard_rows: usize) -> Result<Manifest, String> {
    let n = rows.labels.len();
    if n == 0 || rows.dim == 0 || rows.data.len() != n * rows.dim {
        return Err(format!(
            "{} rows of {} values and {n} labels do not make shards",
            rows.data.len() / rows.dim.max(1),
            rows.dim
        ));
    }
    if rows.paths.is_some_and(|p| p.len() != n) {
        return Err(format!(
            "{} paths for {n} rows",
            rows.paths.map_or(0, |p| p.len())
        ));
    }
    if shard_rows == 0 {
        return Err("shard rows must be at least 1".into());
    }
    if crate::output::is_foreign(dir, MANIFEST) {
        return Err(format!(
            "{}: exists and is not a shard directory (no {MANIFEST}); not replaced",
            dir.display()
        ));
    }
    let mut names: Vec<&str> = rows.labels.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    let code = |l: &str| names.binary_search(&l).expect("every label is named") as i64;
    let codes: Vec<i64> = rows.labels.iter().map(|l| code(l)).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| codes[i]);
    let staging = dir.with_file_name(format!(
        ".{}.writing-{}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    let mut shards = Vec::new();
    let mut start = 0;
    while start < n {
        // Whole classes until the shard holds `shard_rows` rows.
        let mut end = start;
        while end < n && (end - start < shard_rows || codes[order[end]] == codes[order[end - 1]]) {
            end += 1;
        }
        let members = &order[start..end];
        let name = format!("shard-{:05}", shards.len());
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let mut npy = Vec::new();
        let data: Vec<f32> = members
            .iter()
            .flat_map(|&i| rows.data[i * rows.dim..(i + 1) * rows.dim].iter().copied())
            .collect();
        npy::write_f32_matrix(&mut npy, members.len(), rows.dim, &data).expect("in memory");
        files.push((format!("{name}.npy"), npy));
        let mut labels = Vec::new();
        let member_codes: Vec<i64> = members.iter().map(|&i| codes[i]).collect();
        npy::write_i64_vector(&mut labels, &member_codes).expect("in memory");
        files.push((format!("{name}.labels.npy"), labels));
        let mut ids = Vec::new();
        let member_rows: Vec<i64> = members.iter().map(|&i| i as i64).collect();
        npy::write_i64_vector(&mut ids, &member_rows).expect("in memory");
        files.push((format!("{name}.rows.npy"), ids));
        if let Some(paths) = rows.paths {
            let mut w = csv::Writer::from_writer(Vec::new());
            let written = w.write_record(["path"]).and_then(|()| {
                members
                    .iter()
                    .try_for_each(|&i| w.write_record([&paths[i]]))
            });
            written.map_err(|e| e.to_string())?;
            files.push((
                format!("{name}.paths.csv"),
                w.into_inner().map_err(|e| e.to_string())?,
            ));
        }
        let mut sha256 = std::collections::BTreeMap::new();
        for (file, bytes) in &files {
            let path = staging.join(file);
            fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            sha256.insert(file.clone(), sha256_hex(bytes));
        }
        shards.push(ShardEntry {
            name,
            rows: members.len(),
            labels: [
                member_codes[0] as usize,
                *member_codes.last().expect("a shard has rows") as usize + 1,
            ],
            sha256,
        });
        start = end;
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        rows: n,
        dim: rows.dim,
        labels: names.iter().map(|s| s.to_string()).collect(),
        paths: rows.paths.is_some(),
        shards,
        model: rows.model.clone(),
    };
    let mut json = serde_json::to_value(&manifest).expect("manifest serialises");
    json["placement"] = "label".into();
    let text = serde_json::to_string_pretty(&json).expect("manifest serialises");
    let path = staging.join(MANIFEST);
    fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::output::publish_dir(&staging, dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(manifest)
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
    /// Reorders the rows so that each class is one run, in corpus order within it (as the
    /// writer places them; a shard written elsewhere may not be).
    pub fn group_by_class(&mut self, dim: usize) {
        if !self.codes.windows(2).any(|w| w[0] > w[1]) {
            return;
        }
        let mut order: Vec<usize> = (0..self.codes.len()).collect();
        order.sort_by_key(|&i| (self.codes[i], self.rows[i]));
        self.data = order
            .iter()
            .flat_map(|&i| &self.data[i * dim..(i + 1) * dim])
            .copied()
            .collect();
        self.codes = order.iter().map(|&i| self.codes[i]).collect();
        self.rows = order.iter().map(|&i| self.rows[i]).collect();
        if let Some(paths) = &self.paths {
            self.paths = Some(order.iter().map(|&i| paths[i].clone()).collect());
        }
    }

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

/// How much [`load_shard`] checks of what the manifest records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Every file's SHA-256 (a first reading).
    Sha256,
    /// Every file's size and modification time against those of the `Sha256` reading, for a
    /// shard read again in the same run (hashing gigabytes once per pass would dominate).
    Unchanged,
}

/// What a shard's files looked like when they were hashed: each one's size and mtime.
pub type Stamp = Vec<(u64, Option<std::time::SystemTime>)>;

/// The stamp of `shard`'s files now.
pub fn stamp(dir: &Path, shard: &ShardEntry) -> Stamp {
    shard
        .sha256
        .keys()
        .map(|file| match fs::metadata(dir.join(file)) {
            Ok(m) => (m.len(), m.modified().ok()),
            Err(_) => (u64::MAX, None),
        })
        .collect()
}

/// One shard of `dir`, each file checked against the manifest's SHA-256 (or, with
/// `Verify::Unchanged`, against `seen`, the stamp of its hashed reading) and its rows against
/// `check` (fixed where it allows).
pub fn load_shard(
    dir: &Path,
    manifest: &Manifest,
    shard: &ShardEntry,
    check: RowCheck,
    verify: Verify,
    seen: Option<&Stamp>,
) -> Result<Shard, String> {
    let at = |suffix: &str| dir.join(format!("{}{suffix}", shard.name));
    let bad = |suffix: &str, e: String| format!("{}: {e}", at(suffix).display());
    if verify == Verify::Unchanged && seen != Some(&stamp(dir, shard)) {
        return Err(bad(
            "",
            "changed on disk while it was being mined (size or modification time); run again"
                .into(),
        ));
    }
    let read_file = |suffix: &str| -> Result<Vec<u8>, String> {
        let file = format!("{}{suffix}", shard.name);
        let bytes = fs::read(at(suffix)).map_err(|e| bad(suffix, e.to_string()))?;
        match shard.sha256.get(&file) {
            Some(_) if verify == Verify::Unchanged => Ok(bytes),
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
        let shard = load_shard(
            dir,
            &manifest,
            entry,
            RowCheck::AsTheyAre,
            Verify::Sha256,
            None,
        )?;
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
