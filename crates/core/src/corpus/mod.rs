//! A labelled image corpus: where its samples are, what they are called and labelled, and the
//! problems found on the way (reported per file, never fatal on their own).

mod decode;
mod source;

pub use decode::{decode_image, Preprocess, Resize, IMAGENET_MEAN, IMAGENET_STD};
pub use source::open;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// Whether a sample's split column names `wanted`: letter case and surrounding blanks do not
/// matter (`Test`, `test ` and `TEST` are one split), as for `train`'s split roles.
pub fn split_matches(value: &str, wanted: &str) -> bool {
    value.trim().eq_ignore_ascii_case(wanted.trim())
}

/// One image of the corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The path as the corpus names it: relative to the ImageFolder root, or as written in the
    /// manifest. This is the name used in every output.
    pub path: String,
    /// Where the file is on disk.
    pub file: PathBuf,
    pub label: String,
    /// The manifest's split column, or empty.
    pub split: String,
}

/// A file that could not be used, and why. Written to `skipped.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Problem {
    pub path: String,
    pub reason: String,
}

pub const PROBLEM_HEADER: [&str; 2] = ["path", "reason"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    ImageFolder,
    Manifest,
}

#[derive(Debug)]
pub struct Corpus {
    pub source: PathBuf,
    pub kind: SourceKind,
    /// Sorted by `path`; a sample's position is its stable id.
    pub samples: Vec<Sample>,
    /// Entries rejected while listing (missing file, empty label, ...), before any decoding.
    pub problems: Vec<Problem>,
}

impl Corpus {
    /// Labels with exactly one sample: they can never be an anchor.
    pub fn singleton_labels(&self) -> Vec<&str> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &self.samples {
            *counts.entry(&s.label).or_default() += 1;
        }
        counts
            .into_iter()
            .filter(|&(_, n)| n == 1)
            .map(|(l, _)| l)
            .collect()
    }
}

/// The absolute folder a corpus's sample paths are relative to: the ImageFolder root, or the
/// manifest's folder. `None` when the corpus cannot be found.
pub fn root_of(corpus: &std::path::Path) -> Option<PathBuf> {
    let full = std::fs::canonicalize(corpus).ok()?;
    if full.is_dir() {
        Some(full)
    } else {
        full.parent().map(PathBuf::from)
    }
}

/// `root/path` made absolute and free of `.` and `..` without touching the file system, so
/// two listings of the same files (an ImageFolder and a manifest beside it) give one key.
pub fn normal_path(root: Option<&std::path::Path>, path: &str) -> String {
    use std::path::Component;
    let path = path.replace('\\', "/");
    let joined = match root {
        Some(root) => root.join(&path),
        None => PathBuf::from(&path),
    };
    let mut parts: Vec<String> = Vec::new();
    let mut absolute = false;
    for c in joined.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => absolute = true,
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.last().is_some_and(|p| p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..".into());
                }
            }
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
        }
    }
    format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"))
}

/// Dense label ids: the sorted distinct names, and each label's position among them.
pub fn label_ids<'a>(labels: impl Iterator<Item = &'a str> + Clone) -> (Vec<String>, Vec<u32>) {
    let mut names: Vec<&str> = labels.clone().collect();
    names.sort_unstable();
    names.dedup();
    let ids = labels
        .map(|l| names.binary_search(&l).expect("listed") as u32)
        .collect();
    (names.into_iter().map(String::from).collect(), ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_meet_across_listings() {
        let root = std::path::Path::new("/data/fixtures");
        let a = normal_path(Some(root), "corpus/disc/disc_00.png");
        let b = normal_path(Some(&root.join("corpus")), "./disc//disc_00.png");
        let c = normal_path(Some(&root.join("other")), "../corpus/disc/disc_00.png");
        assert_eq!(a, "/data/fixtures/corpus/disc/disc_00.png");
        assert_eq!((a.as_str(), a.as_str()), (b.as_str(), c.as_str()));
        assert_eq!(normal_path(None, "./x\\y.png"), "x/y.png");
        assert_eq!(normal_path(None, "../a/../b"), "../b");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("corpus {0} does not exist")]
    Missing(PathBuf),
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("corpus {0} has no usable image (an ImageFolder corpus is root/<label>/<image>)")]
    Empty(PathBuf),
}
