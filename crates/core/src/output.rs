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

/// A sibling of `target` to build a new version of it in: `.<name>.tmp-<pid>`.
/// Also sweeps the staging folders of killed runs (see [`sweep_stale`]).
pub fn staging_dir(target: &Path) -> PathBuf {
    sweep_stale(target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    target.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Removes staging folders of `target` (`.<name>.tmp-<pid>`, `.<name>.old-<pid>`) left by
/// processes that no longer run (killed mid-write); best effort.
pub fn sweep_stale(target: &Path) {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let name = name.to_string_lossy();
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let pid = [".tmp-", ".old-"].iter().find_map(|kind| {
            file.strip_prefix(&format!(".{name}{kind}"))
                .and_then(|p| p.parse::<u32>().ok())
        });
        if let Some(pid) = pid {
            if pid != std::process::id() && !alive(pid) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Removes `.tmp-<pid>-<name>` siblings of `path` whose process is gone; best effort.
fn sweep_stale_files(path: &Path, name: &str) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let suffix = format!("-{name}");
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let pid = file
            .strip_prefix(".tmp-")
            .and_then(|rest| rest.strip_suffix(&suffix))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !alive(pid) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(unix)]
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn alive(_: u32) -> bool {
    true
}

/// True when `dir` exists, is not empty and lacks `marker`: not an output set of ours, so it
/// must not be replaced.
pub fn is_foreign(dir: &Path, marker: &str) -> bool {
    match fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some() && !dir.join(marker).exists(),
        Err(_) => dir.exists(),
    }
}

/// Installs the finished directory `staging` as `target` in one step: the old set (if any) and
/// the new one are exchanged atomically (Linux `renameat2(RENAME_EXCHANGE)`), then the old one
/// is deleted. A reader of `target` sees the complete old set or the complete new one, even if
/// the process is killed at any point. Elsewhere the old set is moved aside first (a reader
/// may then briefly find no set, never a mixed one).
pub fn publish_dir(staging: &Path, target: &Path) -> io::Result<()> {
    if !target.exists() {
        return fs::rename(staging, target);
    }
    if exchange(staging, target).is_err() {
        let aside = target.with_file_name(format!(
            ".{}.old-{}",
            target.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&aside);
        fs::rename(target, &aside)?;
        if let Err(e) = fs::rename(staging, target) {
            // Put the old set back: a failed publish must not leave the target missing.
            let _ = fs::rename(&aside, target);
            return Err(e);
        }
        crash_point("publish:swapped");
        return fs::remove_dir_all(&aside);
    }
    crash_point("publish:swapped");
    // `staging` now holds the old set.
    fs::remove_dir_all(staging)
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in path"))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Test hook for crash consistency: when the environment variable `TRIPMINE_CRASH_AT` names
/// this point, the process kills itself with SIGKILL here (as `kill -9` would), leaving
/// whatever is on disk at that moment. The tests in `tests/crash.rs` use it.
pub fn crash_point(name: &str) {
    if std::env::var_os("TRIPMINE_CRASH_AT").is_some_and(|v| v == name) {
        #[cfg(unix)]
        // SAFETY: sending a signal to our own process has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}

/// A writer that hashes (SHA-256) everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: sha2::Digest::new(),
        }
    }

    /// The hex digest of what was written so far.
    pub fn hex(&self) -> String {
        sha2::Digest::finalize(self.hasher.clone())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The temporary sibling a file is written under (`.tmp-<pid>-<name>`); the ones of `path`
/// left by processes that no longer run (killed mid-write) are removed first.
fn temporary_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    sweep_stale_files(path, &name);
    // The extension stays last: libtorch picks the file format from it.
    path.with_file_name(format!(".tmp-{}-{name}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn temporary_files_of_dead_processes_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("metrics.csv");
        // No process has pid 0x7FFF_FFF0 (above pid_max); ours is alive.
        let dead = dir
            .path()
            .join(format!(".tmp-{}-metrics.csv", 0x7FFF_FFF0u32));
        let other = dir
            .path()
            .join(format!(".tmp-{}-other.csv", 0x7FFF_FFF0u32));
        let live = dir.path().join(format!(
            ".tmp-{}-metrics.csv",
            std::os::unix::process::parent_id()
        ));
        for f in [&dead, &other, &live] {
            fs::write(f, b"partial").unwrap();
        }
        write_atomic(&target, |w| w.write_all(b"done")).unwrap();
        assert!(!dead.exists(), "a dead writer's temporary file stays");
        assert!(other.exists(), "another file's temporary was touched");
        assert!(live.exists(), "a live writer's temporary file was removed");
        assert_eq!(fs::read(&target).unwrap(), b"done");
    }

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
