//! Listing a corpus: an ImageFolder tree or a CSV manifest (`path,label[,split]`).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::{Corpus, CorpusError, Problem, Sample, SourceKind};

/// Opens a corpus: a directory is an ImageFolder tree, a file is a CSV manifest.
pub fn open(path: &Path) -> Result<Corpus, CorpusError> {
    let meta = fs::metadata(path).map_err(|_| CorpusError::Missing(path.to_path_buf()))?;
    let (kind, mut samples, mut problems) = if meta.is_dir() {
        let (s, p) = list_image_folder(path)?;
        (SourceKind::ImageFolder, s, p)
    } else {
        let (s, p) = read_manifest(path)?;
        (SourceKind::Manifest, s, p)
    };
    samples.sort_by(|a, b| a.path.cmp(&b.path));
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    if samples.is_empty() {
        return Err(CorpusError::Empty(path.to_path_buf()));
    }
    Ok(Corpus {
        source: path.to_path_buf(),
        kind,
        samples,
        problems,
    })
}

fn list_image_folder(root: &Path) -> Result<(Vec<Sample>, Vec<Problem>), CorpusError> {
    let mut samples = Vec::new();
    let mut problems = Vec::new();
    let mut files = Vec::new();
    walk(root, &mut files)?;
    for file in files {
        let rel = file.strip_prefix(root).expect("walk stays under root");
        let path = rel.to_string_lossy().replace('\\', "/");
        let mut parts = rel.components();
        let label = parts
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        match label {
            Some(label) if parts.next().is_some() => samples.push(Sample {
                path,
                file,
                label,
                split: String::new(),
            }),
            _ => problems.push(Problem {
                path,
                reason: "no label: file lies directly under the corpus root".into(),
            }),
        }
    }
    Ok((samples, problems))
}

/// Every non-hidden file below `dir`; symlinked directories are followed, each real folder
/// once (a link back to a folder above would otherwise be walked round and round).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CorpusError> {
    walk_once(dir, out, &mut HashSet::new())
}

fn walk_once(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut HashSet<PathBuf>,
) -> Result<(), CorpusError> {
    let io = |source| CorpusError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if !seen.insert(fs::canonicalize(dir).map_err(io)?) {
        return Ok(());
    }
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            walk_once(&path, out, seen)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn read_manifest(manifest: &Path) -> Result<(Vec<Sample>, Vec<Problem>), CorpusError> {
    let err = |message: String| CorpusError::Manifest {
        path: manifest.to_path_buf(),
        message,
    };
    let base = manifest.parent().unwrap_or(Path::new("."));
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(manifest)
        .map_err(|e| err(e.to_string()))?;
    let header = reader.headers().map_err(|e| err(e.to_string()))?.clone();
    let column = |name: &str| header.iter().position(|h| h == name);
    let (Some(path_col), Some(label_col)) = (column("path"), column("label")) else {
        return Err(err(format!(
            "header is {:?}; expected `path,label[,split]`",
            header.iter().collect::<Vec<_>>().join(",")
        )));
    };
    let split_col = column("split");
    let mut samples = Vec::new();
    let mut problems = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let line = row + 2;
        let record = record.map_err(|e| err(format!("line {line}: {e}")))?;
        let get = |col: usize| record.get(col).unwrap_or("").to_string();
        let (path, label) = (get(path_col), get(label_col));
        let split = split_col.map(get).unwrap_or_default();
        if path.is_empty() {
            return Err(err(format!("line {line}: empty path")));
        }
        let file = base.join(&path);
        if label.is_empty() {
            problems.push(Problem {
                path,
                reason: format!("empty label (manifest line {line})"),
            });
        } else if !file.is_file() {
            problems.push(Problem {
                path,
                reason: format!("missing file {} (manifest line {line})", file.display()),
            });
        } else {
            samples.push(Sample {
                path,
                file,
                label,
                split,
            });
        }
    }
    Ok((samples, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_back_to_a_parent_folder_is_walked_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::create_dir_all(&a).unwrap();
        fs::write(a.join("x.png"), b"x").unwrap();
        std::os::unix::fs::symlink("..", a.join("up")).unwrap();
        let mut files = Vec::new();
        walk(dir.path(), &mut files).unwrap();
        assert_eq!(
            files,
            [a.join("x.png")],
            "the loop a/up -> .. is not walked round"
        );
    }

    #[test]
    fn manifest_with_wrong_header_names_the_expected_columns() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.csv");
        fs::write(&m, "file,class\na.png,x\n").unwrap();
        let e = open(&m).unwrap_err().to_string();
        assert!(e.contains("path,label"), "{e}");
        assert!(e.contains("m.csv"), "{e}");
    }

    #[test]
    fn manifest_rows_with_missing_file_or_empty_label_become_problems() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.png"), b"x").unwrap();
        fs::write(dir.path().join("b.png"), b"x").unwrap();
        let m = dir.path().join("m.csv");
        fs::write(
            &m,
            "path,label,split\na.png,cat,train\ngone.png,cat,\nb.png,,test\n",
        )
        .unwrap();
        let c = open(&m).unwrap();
        assert_eq!(c.samples.len(), 1);
        assert_eq!(c.samples[0].split, "train");
        let reasons: Vec<_> = c
            .problems
            .iter()
            .map(|p| (&p.path[..], &p.reason[..]))
            .collect();
        assert!(reasons[0].0 == "b.png" && reasons[0].1.starts_with("empty label"));
        assert!(reasons[1].0 == "gone.png" && reasons[1].1.starts_with("missing file"));
    }

    #[test]
    fn image_folder_labels_by_first_directory_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("dog/nested")).unwrap();
        fs::create_dir_all(dir.path().join("cat")).unwrap();
        for f in [
            "dog/nested/b.png",
            "dog/a.png",
            "cat/z.png",
            "stray.png",
            "cat/.hidden",
        ] {
            fs::write(dir.path().join(f), b"x").unwrap();
        }
        let c = open(dir.path()).unwrap();
        let got: Vec<_> = c
            .samples
            .iter()
            .map(|s| (&s.path[..], &s.label[..]))
            .collect();
        assert_eq!(
            got,
            [
                ("cat/z.png", "cat"),
                ("dog/a.png", "dog"),
                ("dog/nested/b.png", "dog")
            ]
        );
        assert_eq!(c.problems.len(), 1);
        assert_eq!(c.problems[0].path, "stray.png");
    }

    #[test]
    fn empty_corpus_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(open(dir.path()), Err(CorpusError::Empty(_))));
    }
}
