//! Atomic output: every file is written under a temporary name and renamed into place,
//! so an interrupted run never leaves a half-written result behind.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes `path` by calling `fill` on a buffered writer to a sibling temporary file, then
/// renames it over `path`. On error the temporary file is removed and `path` is untouched.
pub fn write_atomic<F>(path: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> io::Result<()>,
{
    let tmp = temporary_name(path);
    let result = (|| {
        let mut writer = BufWriter::new(File::create(&tmp)?);
        fill(&mut writer)?;
        writer.flush()?;
        writer.get_ref().sync_all()?;
        drop(writer);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

/// Serialises `rows` as a CSV with a header (from the row type) and writes it atomically.
pub fn write_csv<T: serde::Serialize>(path: &Path, rows: &[T], header: &[&str]) -> io::Result<()> {
    write_atomic(path, |w| {
        let mut csv = csv::WriterBuilder::new().has_headers(false).from_writer(w);
        csv.write_record(header)?;
        for row in rows {
            csv.serialize(row)?;
        }
        csv.flush()
    })
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value)?;
        w.write_all(b"\n")
    })
}

/// Writes a file produced by someone else (e.g. libtorch) atomically: `produce` writes the
/// given temporary path, which is then renamed to `path`.
pub fn produce_atomic<F, E>(path: &Path, produce: F) -> Result<(), E>
where
    F: FnOnce(&Path) -> Result<(), E>,
    E: From<io::Error>,
{
    let tmp = temporary_name(path);
    match produce(&tmp) {
        Ok(()) => fs::rename(&tmp, path).map_err(E::from),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn temporary_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The extension stays last: libtorch picks the file format from it.
    path.with_file_name(format!(".tmp-{}-{name}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_no_file_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        write_atomic(&path, |w| w.write_all(b"first")).unwrap();
        let err = write_atomic(&path, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("interrupted"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temporary file left behind"
        );
    }
}
