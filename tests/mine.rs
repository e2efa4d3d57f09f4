//! `tripmine mine` end to end: definitions hold for every exported triplet, recomputed from
//! `embeddings.npy`; determinism; exclusion; HNSW against exact; bad embeddings directories.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use common::*;
use tripmine::definitions::{Distance, TripletKind};
use tripmine::triplets::{self, TripletRow};

/// Every exported triplet satisfies its kind under the sidecar's distance and margin.
fn check_definitions(emb: &Path, csv: &Path) -> Vec<TripletRow> {
    let set = tripmine::store::read(emb).unwrap();
    let index: HashMap<&str, usize> = set
        .samples
        .iter()
        .map(|s| (s.path.as_str(), s.index))
        .collect();
    let sidecar: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(csv.with_extension("json")).unwrap()).unwrap();
    let margin = sidecar["margin"].as_f64().unwrap() as f32;
    let distance: Distance = serde_json::from_value(sidecar["distance"].clone()).unwrap();
    let rows = triplets::read(csv).unwrap();
    for r in &rows {
        let (a, p, n) = (
            index[r.anchor.as_str()],
            index[r.positive.as_str()],
            index[r.negative.as_str()],
        );
        assert_ne!(a, p, "self-positive {r:?}");
        assert_eq!(
            set.samples[a].label, set.samples[p].label,
            "positive of another label {r:?}"
        );
        assert_ne!(
            set.samples[a].label, set.samples[n].label,
            "negative of the same label {r:?}"
        );
        assert_eq!(
            (r.anchor_label.as_str(), r.negative_label.as_str()),
            (set.samples[a].label.as_str(), set.samples[n].label.as_str())
        );
        let d_ap = distance.between(set.row(a), set.row(p));
        let d_an = distance.between(set.row(a), set.row(n));
        assert!(
            (d_ap - r.d_ap).abs() < 1e-5 && (d_an - r.d_an).abs() < 1e-5,
            "{r:?} vs {d_ap} {d_an}"
        );
        assert_eq!(TripletKind::classify(d_ap, d_an, margin), r.kind, "{r:?}");
    }
    rows
}

#[test]
fn every_kind_and_distance_satisfies_its_definition() {
    let dir = tempfile::tempdir().unwrap();
    let emb = dir.path().join("emb");
    embed_fixtures(&emb, 2);
    for (strategy, distance, positives) in [
        ("hard", "euclidean", "hardest"),
        ("semihard", "sqeuclidean", "random"),
        ("easy", "cosine", "easiest"),
        ("semihard=0.5,hard=0.3,easy=0.2", "euclidean", "all"),
        ("violating", "cosine", "hardest"),
    ] {
        let out = dir
            .path()
            .join(format!("{}.csv", strategy.replace([',', '=', '.'], "_")));
        let stdout = ok(&[
            "mine",
            "--embeddings",
            s(&emb),
            "--out",
            s(&out),
            "--strategy",
            strategy,
            "--distance",
            distance,
            "--positives",
            positives,
            "--negatives-per-anchor",
            "3",
            "--knn",
            "exact",
            "--margin",
            "0.1",
        ]);
        assert!(stdout.starts_with("mined "), "{stdout}");
        let rows = check_definitions(&emb, &out);
        assert!(!rows.is_empty(), "{strategy}: no triplets");
        let kinds: HashSet<TripletKind> = rows.iter().map(|r| r.kind).collect();
        match strategy {
            "hard" => assert_eq!(kinds, HashSet::from([TripletKind::Hard])),
            "semihard" => assert_eq!(kinds, HashSet::from([TripletKind::Semihard])),
            "easy" => assert_eq!(kinds, HashSet::from([TripletKind::Easy])),
            "violating" => assert!(!kinds.contains(&TripletKind::Easy)),
            _ => assert_eq!(kinds.len(), 3, "a three-way mix produced only {kinds:?}"),
        }
        let sidecar: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(out.with_extension("json")).unwrap()).unwrap();
        assert_eq!(sidecar["counts"]["triplets"], rows.len());
        assert_eq!(sidecar["distance"], distance);
        assert_eq!(sidecar["embeddings"]["sha256"].as_str().unwrap().len(), 64);
    }
}

#[test]
fn same_seed_same_csv_and_excluded_samples_never_appear() {
    let dir = tempfile::tempdir().unwrap();
    let emb = dir.path().join("emb");
    embed_fixtures(&emb, 3);
    let args = |out: &Path| {
        vec![
            "mine".to_string(),
            "--embeddings".into(),
            s(&emb).into(),
            "--out".into(),
            s(out).into(),
            "--positives".into(),
            "random".into(),
            "--negative-order".into(),
            "random".into(),
            "--negatives-per-anchor".into(),
            "4".into(),
            "--strategy".into(),
            "semihard=0.5,easy=0.5".into(),
            "--seed".into(),
            "11".into(),
        ]
    };
    let run = |out: &Path, extra: &[&str]| {
        let mut a = args(out);
        a.extend(extra.iter().map(|s| s.to_string()));
        ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
        fs::read(out).unwrap()
    };
    let first = run(&dir.path().join("a.csv"), &[]);
    assert!(
        first == run(&dir.path().join("b.csv"), &[]),
        "same seed, different triplets"
    );

    let excluded: Vec<String> = triplets::read(&dir.path().join("a.csv"))
        .unwrap()
        .iter()
        .take(40)
        .map(|r| r.negative.clone())
        .collect();
    let exclude = dir.path().join("exclude.csv");
    fs::write(
        &exclude,
        format!(
            "path,reason\n{}\n",
            excluded
                .iter()
                .map(|p| format!("{p},test"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    )
    .unwrap();
    let out = dir.path().join("c.csv");
    run(&out, &["--exclude", s(&exclude)]);
    let excluded: HashSet<String> = excluded.into_iter().collect();
    let rows = check_definitions(&emb, &out);
    for r in rows {
        for p in [&r.anchor, &r.positive, &r.negative] {
            assert!(!excluded.contains(p), "excluded {p} appears in {r:?}");
        }
    }
}

#[test]
fn mining_from_corpus_and_model_matches_mining_its_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let spec =
        tripmine::model::ModelSpec::resnet(tripmine::corpus::Preprocess::standard(32, 3), 32, 9);
    tripmine::model::Embedder::init(spec, tch::Device::Cpu)
        .unwrap()
        .save(&dir.path().join("ckpt"))
        .unwrap();
    let corpus = fixtures().join("corpus");
    let ckpt = dir.path().join("ckpt");
    let emb = dir.path().join("emb");
    ok(&[
        "embed",
        "--corpus",
        s(&corpus),
        "--model",
        s(&ckpt),
        "--out",
        s(&emb),
    ]);
    ok(&[
        "mine",
        "--embeddings",
        s(&emb),
        "--out",
        s(&dir.path().join("a.csv")),
    ]);
    ok(&[
        "mine",
        "--corpus",
        s(&corpus),
        "--model",
        s(&ckpt),
        "--out",
        s(&dir.path().join("b.csv")),
    ]);
    assert_eq!(
        fs::read(dir.path().join("a.csv")).unwrap(),
        fs::read(dir.path().join("b.csv")).unwrap()
    );
    let (code, stdout, _) = tripmine(&["mine", "--embeddings", s(&emb), "--out", "-"]);
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with("anchor,positive,negative,anchor_label,negative_label,d_ap,d_an,kind\n"),
        "{stdout}"
    );
}

/// Fraction of the exact backend's (anchor, negative) semi-hard pairs that `backend` (`--knn`)
/// also found.
fn recall_of(backend: &str, emb: &Path, dir: &Path, extra: &[&str]) -> f64 {
    let pairs = |backend: &str| -> HashSet<(String, String)> {
        let out = dir.join(format!("{backend}.csv"));
        let mut args = vec![
            "mine",
            "--embeddings",
            s(emb),
            "--out",
            s(&out),
            "--knn",
            backend,
            "--negatives-per-anchor",
            "5",
        ];
        args.extend_from_slice(extra);
        ok(&args);
        triplets::read(&out)
            .unwrap()
            .into_iter()
            .map(|r| (r.anchor, r.negative))
            .collect()
    };
    let exact = pairs("exact");
    let approximate = pairs(backend);
    assert!(
        exact.len() > 100,
        "too few semi-hard triplets to measure ({})",
        exact.len()
    );
    exact.intersection(&approximate).count() as f64 / exact.len() as f64
}

#[test]
fn hnsw_finds_the_exact_semihard_negatives_on_fixtures_and_20k_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let emb = dir.path().join("fixtures");
    embed_fixtures(&emb, 4);
    let recall = recall_of("hnsw", &emb, dir.path(), &[]);
    eprintln!("fixtures: HNSW recall of exact semi-hard negatives {recall:.4}");
    assert!(recall >= 0.95, "fixtures recall {recall}");

    // The index saved next to the embeddings is reused while they are unchanged.
    let index_origin = |out: &Path| -> String {
        ok(&[
            "mine",
            "--embeddings",
            s(&emb),
            "--out",
            s(out),
            "--knn",
            "hnsw",
            "--negatives-per-anchor",
            "5",
        ]);
        let sidecar: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(out.with_extension("json")).unwrap()).unwrap();
        sidecar["backend"]["index"].as_str().unwrap().to_string()
    };
    assert_eq!(index_origin(&dir.path().join("again.csv")), "loaded");
    assert_eq!(
        fs::read(dir.path().join("again.csv")).unwrap(),
        fs::read(dir.path().join("hnsw.csv")).unwrap()
    );
    embed_fixtures(&emb, 5);
    assert_eq!(index_origin(&dir.path().join("changed.csv")), "built");

    let synth = dir.path().join("synthetic");
    synthetic_embeddings(&synth, 1000, 20, 128, 0.9, 7);
    let recall = recall_of("hnsw", &synth, dir.path(), &["--anchors-per-class", "2"]);
    eprintln!("20k clusters: HNSW recall of exact semi-hard negatives {recall:.4}");
    assert!(recall >= 0.95, "20k recall {recall}");
}

#[test]
fn auto_searches_the_nearest_classes_of_many_class_corpora_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let synth = dir.path().join("synthetic");
    synthetic_embeddings(&synth, 1000, 20, 128, 0.9, 7);
    let extra = ["--anchors-per-class", "2", "--candidate-classes", "100"];
    let recall = recall_of("auto", &synth, dir.path(), &extra);
    eprintln!(
        "20k clusters: recall of exact semi-hard negatives in the 100 nearest classes {recall:.4}"
    );
    assert!(recall >= 0.95, "20k recall {recall}");
    let sidecar: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("auto.json")).unwrap()).unwrap();
    assert_eq!(sidecar["backend"]["backend"], "classes", "{sidecar}");
    let chosen = sidecar["backend"]["chosen"].as_str().unwrap();
    assert!(
        chosen.starts_with("auto: 100 candidate classes of 1000"),
        "{chosen}"
    );

    // Too few classes to prune: auto stays exact.
    let few = dir.path().join("few.csv");
    ok(&[
        "mine",
        "--embeddings",
        s(&synth),
        "--out",
        s(&few),
        "--anchors-per-class",
        "2",
    ]);
    let sidecar: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(few.with_extension("json")).unwrap()).unwrap();
    assert_eq!(sidecar["backend"]["backend"], "exact", "{sidecar}");
}

#[test]
fn corrupt_or_mismatched_embeddings_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    synthetic_embeddings(&good, 4, 5, 8, 0.5, 1);
    let variant = |name: &str, edit: &dyn Fn(&Path)| {
        let d = dir.path().join(name);
        fs::create_dir(&d).unwrap();
        // Without embeddings.json (whose hashes would refuse any edit first, see
        // tests/interop.rs) the contents themselves are validated.
        for f in ["embeddings.npy", "samples.csv"] {
            fs::copy(good.join(f), d.join(f)).unwrap();
        }
        edit(&d);
        let (code, _, stderr) = tripmine(&[
            "mine",
            "--embeddings",
            s(&d),
            "--out",
            s(&dir.path().join("t.csv")),
        ]);
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    };
    let e = variant("rows", &|d| {
        let text = fs::read_to_string(d.join("samples.csv")).unwrap();
        fs::write(
            d.join("samples.csv"),
            text.lines().take(10).collect::<Vec<_>>().join("\n"),
        )
        .unwrap();
    });
    assert!(e.contains("20 rows but samples.csv names 9 samples"), "{e}");
    let e = variant("nan", &|d| {
        let mut b = fs::read(d.join("embeddings.npy")).unwrap();
        let at = b.len() - 4;
        b[at..].copy_from_slice(&f32::NAN.to_le_bytes());
        fs::write(d.join("embeddings.npy"), b).unwrap();
    });
    assert!(e.contains("row 19") && e.contains("NaN"), "{e}");
    let e = variant("dtype", &|d| {
        let mut b = fs::read(d.join("embeddings.npy")).unwrap();
        let at = b.windows(3).position(|w| w == b"<f4").unwrap();
        b[at + 1] = b'i';
        fs::write(d.join("embeddings.npy"), b).unwrap();
    });
    assert!(e.contains("<i4") && e.contains("float32"), "{e}");
    assert!(!dir.path().join("t.csv").exists());
}

#[test]
fn inputs_that_cannot_work_are_refused_at_once_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let emb = dir.path().join("emb");
    synthetic_embeddings(&emb, 6, 8, 16, 0.1, 1);
    let out = dir.path().join("t.csv");
    let refused = |extra: &[&str], expected: &str| {
        let mut args = vec!["mine", "--embeddings", s(&emb), "--out", s(&out)];
        args.extend(extra);
        let started = std::time::Instant::now();
        let (code, _, stderr) = tripmine(&args);
        assert_eq!(code, 2, "{extra:?}: {stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{extra:?} was not refused at once"
        );
        assert!(!out.exists(), "{extra:?} wrote {}", out.display());
    };
    refused(
        &["--negatives-per-anchor", "1000000000000"],
        "--max-search-depth",
    );
    refused(
        &["--knn", "classes", "--candidate-classes", "0"],
        "--candidate-classes",
    );
    refused(&["--batch-size", "0"], "--batch-size");
    refused(&["--max-search-depth", "0"], "--max-search-depth");
    // A candidate count beyond the classes means every class (it once overflowed).
    ok(&[
        "mine",
        "--embeddings",
        s(&emb),
        "--out",
        s(&out),
        "--knn",
        "classes",
        "--candidate-classes",
        "18446744073709551615",
    ]);
    let sidecar = fs::read_to_string(dir.path().join("t.json")).unwrap();
    assert!(sidecar.contains("\"candidate_classes\": 6"), "{sidecar}");
    fs::remove_file(&out).unwrap();

    // A labels CSV naming one path on every row would make triplets of one file three times.
    let npy = emb.join("embeddings.npy");
    let labels = dir.path().join("labels.csv");
    let rows: String = (0..48).map(|i| format!("same.png,c{}\n", i % 6)).collect();
    fs::write(&labels, format!("path,label\n{rows}")).unwrap();
    let (code, _, stderr) = tripmine(&[
        "mine",
        "--embeddings",
        s(&npy),
        "--labels",
        s(&labels),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("same.png") && stderr.contains("more than one row"),
        "{stderr}"
    );
}

#[test]
fn a_triplet_csv_and_its_sidecar_never_share_a_name_and_always_match() {
    let dir = tempfile::tempdir().unwrap();
    let emb = dir.path().join("emb");
    synthetic_embeddings(&emb, 6, 8, 16, 0.1, 1);
    let json_out = dir.path().join("x.json");
    let (code, _, stderr) = tripmine(&["mine", "--embeddings", s(&emb), "--out", s(&json_out)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(".json"), "{stderr}");
    assert!(!json_out.exists());

    // Without an extension the sidecar is t.json, and a CSV replaced later is caught.
    let bare = dir.path().join("t");
    ok(&["mine", "--embeddings", s(&emb), "--out", s(&bare)]);
    assert!(dir.path().join("t.json").is_file());
    assert!(triplets::read(&bare).is_ok());
    let mut text = fs::read_to_string(&bare).unwrap();
    text.push('\n'); // any change to the bytes
    fs::write(&bare, text).unwrap();
    let e = triplets::read(&bare).unwrap_err();
    assert!(e.contains("does not belong to its sidecar"), "{e}");

    // eval --split matches split values in any letter case, as train does.
    let labels = dir.path().join("labels.csv");
    let rows: String = read_csv(&emb.join("samples.csv"))
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "{},{},{}\n",
                &r[1],
                &r[2],
                if i % 2 == 0 { "Test" } else { "Train" }
            )
        })
        .collect();
    fs::write(&labels, format!("path,label,split\n{rows}")).unwrap();
    let npy = emb.join("embeddings.npy");
    let stdout = ok(&[
        "eval",
        "--embeddings",
        s(&npy),
        "--labels",
        s(&labels),
        "--split",
        "test",
        "--json",
    ]);
    let queries = serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["queries"]
        .as_u64()
        .unwrap();
    assert_eq!(queries, 24, "the 24 rows marked Test: {stdout}");
}

#[test]
fn thread_count_and_gemm_kernel_do_not_change_the_triplets() {
    // Tiles are cut by thread count (1: 256-row blocks; 2: half the rows each) and the portable
    // kernel sums in another order: the exported triplets must not depend on either.
    let dir = tempfile::tempdir().unwrap();
    let emb = dir.path().join("emb");
    synthetic_embeddings(&emb, 100, 30, 32, 0.6, 5);
    let mine = |name: &str, threads: &str, kernel: Option<&str>| {
        let out = dir.path().join(name);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tripmine"));
        cmd.args(["mine", "--embeddings", s(&emb), "--out", s(&out)])
            .args([
                "--strategy",
                "semihard=0.5,hard=0.5",
                "--negatives-per-anchor",
                "3",
            ])
            .args(["--knn", "exact", "--threads", threads]);
        if let Some(kernel) = kernel {
            cmd.env("TRIPMINE_GEMM", kernel);
        }
        let done = cmd.output().unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        fs::read(out).unwrap()
    };
    let one = mine("one.csv", "1", None);
    assert!(one.len() > 10_000, "a real workload");
    assert!(
        one == mine("two.csv", "2", None),
        "--threads 1 and 2 differ"
    );
    assert!(
        one == mine("portable.csv", "2", Some("portable")),
        "the portable kernel differs"
    );
}

#[test]
fn every_subcommand_refuses_a_count_of_zero_instead_of_clamping_it() {
    let dir = tempfile::tempdir().unwrap();
    let emb = dir.path().join("emb");
    synthetic_embeddings(&emb, 6, 8, 16, 0.1, 1);
    let corpus = fixtures().join("manifest.csv");
    let out = dir.path().join("out");
    for (args, option) in [
        (
            vec!["eval", "--embeddings", s(&emb), "--batch-size", "0"],
            "--batch-size",
        ),
        (
            vec![
                "audit",
                "--corpus",
                s(&corpus),
                "--embeddings",
                s(&emb),
                "--out",
                s(&out),
                "--batch-size",
                "0",
            ],
            "--batch-size",
        ),
        (
            vec![
                "audit",
                "--corpus",
                s(&corpus),
                "--embeddings",
                s(&emb),
                "--out",
                s(&out),
                "--k",
                "0",
            ],
            "--k",
        ),
        (
            vec![
                "train",
                "--corpus",
                s(&corpus),
                "--out",
                s(&out),
                "--negatives-per-anchor",
                "0",
            ],
            "--negatives-per-anchor",
        ),
    ] {
        let (code, _, stderr) = tripmine(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(option), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

/// Every numeric option outside its range is refused before any work, naming the option and
/// its rule (negative numbers included: they are values, not flags), with exit status 2.
#[test]
fn numeric_options_out_of_range_are_refused_by_name() {
    let corpus = fixtures().join("manifest.csv");
    let c = s(&corpus);
    let cases: [(&[&str], &str); 9] = [
        (
            &[
                "mine",
                "--embeddings",
                "x",
                "--out",
                "y",
                "--margin",
                "-0.5",
            ],
            "--margin -0.5: must be",
        ),
        (
            &[
                "mine",
                "--embeddings",
                "x",
                "--out",
                "y",
                "--negative-floor",
                "nan",
            ],
            "--negative-floor NaN: must be",
        ),
        (
            &[
                "audit",
                "--corpus",
                c,
                "--embeddings",
                "x",
                "--out",
                "y",
                "--outlier-z",
                "-1",
            ],
            "--outlier-z -1: must be",
        ),
        (
            &[
                "audit",
                "--corpus",
                c,
                "--embeddings",
                "x",
                "--out",
                "y",
                "--mislabel-probability",
                "2",
            ],
            "--mislabel-probability 2: must be a number in [0, 1]",
        ),
        (
            &["train", "--corpus", c, "--out", "y", "--lr", "-1"],
            "--lr -1: must be a finite number above 0",
        ),
        (
            &["train", "--corpus", c, "--out", "y", "--momentum", "nan"],
            "--momentum NaN: must be a number in [0, 1)",
        ),
        (
            &[
                "train",
                "--corpus",
                c,
                "--out",
                "y",
                "--warmup-epochs",
                "inf",
            ],
            "--warmup-epochs inf: must be",
        ),
        (
            &[
                "train",
                "--corpus",
                c,
                "--out",
                "y",
                "--weight-decay",
                "-0.1",
            ],
            "--weight-decay -0.1: must be",
        ),
        (
            &[
                "train",
                "--corpus",
                c,
                "--out",
                "y",
                "--random-classes",
                "3",
            ],
            "--random-classes 3: must be",
        ),
    ];
    for (args, message) in cases {
        let (code, _, stderr) = tripmine(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// `embed --shard-rows` writes a shard directory that `mine` streams out of core: the same
/// triplets, row for row, as mining the embeddings directory of the same network in memory.
#[test]
fn a_sharded_corpus_mined_out_of_core_gives_the_in_memory_triplets() {
    let dir = tempfile::tempdir().unwrap();
    let (emb, shards) = (dir.path().join("emb"), dir.path().join("shards"));
    embed_fixtures(&emb, 3);
    let corpus = fixtures().join("corpus");
    ok(&[
        "embed",
        "--corpus",
        s(&corpus),
        "--out",
        s(&shards),
        "--dim",
        "32",
        "--input-size",
        "32",
        "--seed",
        "3",
        "--shard-rows",
        "20",
    ]);
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(shards.join("manifest.json")).unwrap()).unwrap();
    assert!(
        manifest["shards"].as_array().unwrap().len() > 1,
        "{manifest}"
    );
    let (in_memory, out_of_core) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
    let args = [
        "--strategy",
        "semihard=0.5,hard=0.5",
        "--negatives-per-anchor",
        "3",
    ];
    ok(&[
        &["mine", "--embeddings", s(&emb), "--out", s(&in_memory)][..],
        &args,
    ]
    .concat());
    let summary = ok(&[
        &["mine", "--embeddings", s(&shards), "--out", s(&out_of_core)][..],
        &args,
    ]
    .concat());
    assert!(
        summary.contains("out of core over") && summary.contains("peak memory"),
        "{summary}"
    );
    assert_eq!(read_csv(&in_memory), read_csv(&out_of_core));
    assert!(!read_csv(&in_memory).is_empty());
    // The classes path over shards (each anchor block picks its classes from every class's
    // mean and radius, then meets only the shards that hold them) gives the in-memory
    // classes path's triplets, the false-negative guard's rows included.
    let classes = [
        "--knn",
        "classes",
        "--candidate-classes",
        "2",
        "--skip-nearest",
        "1",
        "--strategy",
        "semihard",
    ];
    ok(&[
        &["mine", "--embeddings", s(&emb), "--out", s(&in_memory)][..],
        &classes,
    ]
    .concat());
    let summary = ok(&[
        &["mine", "--embeddings", s(&shards), "--out", s(&out_of_core)][..],
        &classes,
    ]
    .concat());
    assert!(summary.contains("classes out of core over"), "{summary}");
    assert_eq!(read_csv(&in_memory), read_csv(&out_of_core));
    assert!(!read_csv(&in_memory).is_empty());
    let sidecar: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("b.json")).unwrap()).unwrap();
    assert_eq!(sidecar["backend"]["candidate_classes"], 2, "{sidecar}");
    // A shard changed after it was written is refused by name (exit 2).
    let shard = shards.join("shard-00001.npy");
    let mut bytes = fs::read(&shard).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    fs::write(&shard, bytes).unwrap();
    let (code, _, err) = tripmine(&["mine", "--embeddings", s(&shards), "--out", s(&out_of_core)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("shard-00001.npy: SHA-256 differs"), "{err}");
}
