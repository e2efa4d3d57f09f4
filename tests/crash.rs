//! Output sets stay consistent as sets when the process is killed with SIGKILL (`kill -9`) at
//! several points (the `TRIPMINE_CRASH_AT` hook in `output::crash_point`): an embeddings
//! folder, a triplet CSV with its sidecar, an audit folder. A reader finds the complete old set
//! or the complete new one; a mixed triplet pair is refused, never read.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

/// Runs tripmine with `TRIPMINE_CRASH_AT=point`; asserts that it died of SIGKILL.
fn killed_at(point: &str, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_tripmine"))
        .args(args)
        .args(["--threads", "2"])
        .env("TRIPMINE_CRASH_AT", point)
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{point}: not killed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file of a folder (not in sub-folders) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(Result::unwrap)
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn embed_args<'a>(out: &'a str, seed: &'a str) -> Vec<&'a str> {
    let corpus = fixtures().join("corpus");
    let corpus: &'static str = Box::leak(corpus.to_str().unwrap().to_string().into_boxed_str());
    vec![
        "embed",
        "--corpus",
        corpus,
        "--out",
        out,
        "--dim",
        "16",
        "--input-size",
        "32",
        "--seed",
        seed,
    ]
}

#[test]
fn killed_runs_leave_the_old_set_or_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let emb = d.join("emb");

    // Embeddings folder: seed 1 is the old set, seed 2 the new one.
    ok(&embed_args(s(&emb), "1"));
    let old = snapshot(&emb);
    killed_at("embed:staged", &embed_args(s(&emb), "2"));
    assert_eq!(snapshot(&emb), old, "killed before the swap: the old set");
    tripmine::store::read(&emb).unwrap();
    killed_at("publish:swapped", &embed_args(s(&emb), "2"));
    let new = snapshot(&emb);
    assert_ne!(new["embeddings.npy"], old["embeddings.npy"]);
    assert_eq!(new.len(), old.len());
    tripmine::store::read(&emb).expect("killed after the swap: the complete new set");
    let leftovers: Vec<_> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".emb."))
        .collect();
    assert!(!leftovers.is_empty(), "a killed run cannot clean up");
    // The next run sweeps the staging folders of dead processes.
    ok(&embed_args(s(&emb), "2"));
    let leftovers: Vec<_> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".emb."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Triplet CSV + sidecar: the old pair, then a run killed between the two renames.
    let t = d.join("t.csv");
    let mine = |strategy: &'static str| {
        vec![
            "mine",
            "--embeddings",
            s(&emb),
            "--out",
            s(&t),
            "--strategy",
            strategy,
        ]
    };
    ok(&mine("semihard"));
    let old_rows = tripmine::triplets::read(&t).unwrap();
    killed_at("mine:csv-written", &mine("violating"));
    let err = tripmine::triplets::read(&t).expect_err("a new CSV with the old sidecar");
    assert!(err.contains("t.json") && err.contains("sidecar"), "{err}");
    let sheets = d.join("sheets");
    let corpus = fixtures().join("corpus");
    let (code, _, stderr) = tripmine(&["view", s(&t), "--corpus", s(&corpus), "--out", s(&sheets)]);
    assert_eq!(code, 2, "{stderr}");
    ok(&mine("violating"));
    let new_rows = tripmine::triplets::read(&t).unwrap();
    assert_ne!(old_rows, new_rows);

    // Audit folder: old audit, then re-runs with other thresholds killed at three points.
    let audit = d.join("audit");
    let audit_args = |outlier_z: &'static str| {
        let corpus: &'static str = Box::leak(s(&corpus).to_string().into_boxed_str());
        let emb: &'static str = Box::leak(s(&emb).to_string().into_boxed_str());
        let out: &'static str = Box::leak(s(&audit).to_string().into_boxed_str());
        vec![
            "audit",
            "--corpus",
            corpus,
            "--embeddings",
            emb,
            "--out",
            out,
            "--outlier-z",
            outlier_z,
        ]
    };
    ok(&audit_args("1000"));
    let old = snapshot(&audit);
    assert_consistent(&audit);
    for point in ["audit:half-staged", "audit:staged"] {
        killed_at(point, &audit_args("0"));
        assert_eq!(snapshot(&audit), old, "killed at {point}: the old set");
    }
    killed_at("publish:swapped", &audit_args("0.9"));
    let new = snapshot(&audit);
    assert_ne!(new["exclude.csv"], old["exclude.csv"], "thresholds changed");
    assert_consistent(&audit);

    // A failed re-run (its corpus does not hold the embeddings' files) leaves the set intact.
    let mut bad = audit_args("0");
    let manifest: &'static str = Box::leak(
        s(&fixtures().join("planted.csv"))
            .to_string()
            .into_boxed_str(),
    );
    bad[2] = manifest;
    let (code, _, stderr) = tripmine(&bad);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(snapshot(&audit), new);

    // An exclude.csv that is not the audit's own is refused by mine.
    fs::write(
        audit.join("exclude.csv"),
        "path,reason\nstar/star_00.png,outlier\n",
    )
    .unwrap();
    let (code, _, stderr) = tripmine(&[
        "mine",
        "--embeddings",
        s(&emb),
        "--out",
        s(&t),
        "--exclude",
        s(&audit.join("exclude.csv")),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("audit.json"), "{stderr}");
}

/// Every CSV of an audit folder has the hash its audit.json records.
fn assert_consistent(audit: &Path) {
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(audit.join("audit.json")).unwrap()).unwrap();
    let files = json["files"]
        .as_object()
        .expect("audit.json lists its files");
    assert_eq!(files.len(), tripmine::audit::CSV_FILES.len());
    for (name, sha) in files {
        let actual = tripmine::store::sha256_hex(&fs::read(audit.join(name)).unwrap());
        assert_eq!(sha.as_str().unwrap(), actual, "{name} is not of this audit");
    }
    assert!(audit.join("report.html").exists());
}
