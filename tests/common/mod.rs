//! Helpers for the integration tests: run the real binary on the bundled fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo().join("fixtures")
}

/// Runs `tripmine` with `args` on 2 threads; returns (exit code, stdout, stderr).
pub fn tripmine(args: &[&str]) -> (i32, String, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_tripmine"))
        .args(args)
        .args(["--threads", "2"])
        .output()
        .expect("run tripmine");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs tripmine and fails the test with its stderr unless it exits 0.
pub fn ok(args: &[&str]) -> String {
    let (code, stdout, stderr) = tripmine(args);
    assert_eq!(code, 0, "tripmine {args:?} failed:\n{stderr}");
    stdout
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Embeds the fixture corpus with a small fresh network (32-d, 32 px) into `out`.
pub fn embed_fixtures(out: &Path, seed: u64) {
    ok(&[
        "embed",
        "--corpus",
        s(&fixtures().join("corpus")),
        "--out",
        s(out),
        "--dim",
        "32",
        "--input-size",
        "32",
        "--seed",
        &seed.to_string(),
    ]);
}

pub fn read_csv(path: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(path)
        .unwrap()
        .records()
        .map(Result::unwrap)
        .collect()
}

/// The project's venv Python (numpy, safetensors, torch), installed by `make`.
pub fn python() -> PathBuf {
    repo().join(".venv/bin/python")
}

/// Runs `script` in the venv's Python with `out` as its argument (`sys.argv[1]`): how tests
/// save TorchScript modules.
pub fn run_python(script: &str, out: &Path) {
    let made = std::process::Command::new(python())
        .args(["-c", script])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// Epochs a run directory's `last/` checkpoint has completed (0 before the first).
pub fn completed_epochs(run: &Path) -> usize {
    std::fs::read_to_string(run.join("last/state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["epoch"].as_u64())
        .unwrap_or(0) as usize
}

/// Writes an embeddings directory of `classes` Gaussian clusters of `per_class` unit vectors.
pub fn synthetic_embeddings(
    dir: &Path,
    classes: usize,
    per_class: usize,
    dim: usize,
    spread: f64,
    seed: u64,
) {
    use tripmine::rng::Rng;
    use tripmine::store::{self, EmbeddingsMeta, SampleRow};
    let mut rng = Rng::new(seed);
    let mut data = Vec::with_capacity(classes * per_class * dim);
    let mut samples = Vec::new();
    for c in 0..classes {
        let centre: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
        for i in 0..per_class {
            let v: Vec<f64> = centre.iter().map(|x| x + spread * rng.normal()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            data.extend(v.iter().map(|x| (x / norm) as f32));
            let index = samples.len();
            samples.push(SampleRow {
                index,
                path: format!("c{c:04}/{i:03}.png"),
                label: format!("c{c:04}"),
                split: String::new(),
            });
        }
    }
    let npy = store::npy_bytes(samples.len(), dim, &data);
    let meta = EmbeddingsMeta {
        tripmine_version: "test".into(),
        corpus: "synthetic".into(),
        count: samples.len(),
        dim,
        distance: tripmine::definitions::Distance::Euclidean,
        normalised: true,
        skipped: 0,
        model: serde_json::json!("synthetic clusters"),
        sha256: store::sha256_hex(&npy),
        samples_sha256: None,
        corpus_root: None,
    };
    store::write(dir, &npy, &samples, &[], &meta).unwrap();
}

/// Follows every `href` and `src` from the page `start`, recursively through linked pages, and
/// returns every file reached (pages included). Fails the test on a link that is absolute or
/// goes to the network, or a file that does not exist.
pub fn linked_files(start: &Path) -> std::collections::BTreeSet<PathBuf> {
    let mut seen = std::collections::BTreeSet::new();
    let mut queue = vec![start.canonicalize().expect("start page exists")];
    while let Some(page) = queue.pop() {
        if !seen.insert(page.clone()) || page.extension().is_none_or(|e| e != "html") {
            continue;
        }
        let html = std::fs::read_to_string(&page).unwrap();
        for attr in ["href=\"", "src=\""] {
            for piece in html.split(attr).skip(1) {
                let link = piece.split('"').next().unwrap();
                assert!(
                    !link.contains(':') && !link.starts_with('/'),
                    "{}: non-relative link {link}",
                    page.display()
                );
                let file = page.parent().unwrap().join(percent_decode(link));
                assert!(file.exists(), "{}: broken link {link}", page.display());
                queue.push(file.canonicalize().unwrap());
            }
        }
    }
    seen
}

fn percent_decode(link: &str) -> String {
    let bytes = link.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&link[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}
