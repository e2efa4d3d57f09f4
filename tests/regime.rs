//! Whole-corpus regimes over feature rows (issue 19): fresh global rounds, periods in steps,
//! `--mining auto`, and the false-negative guard of `tripmine mine`.

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// 40 classes of 5 unit rows in 16-d: few per class, as SOP has.
fn few_per_class(dir: &Path) -> std::path::PathBuf {
    let rows = dir.join("rows");
    synthetic_embeddings(&rows, 40, 5, 16, 0.7, 4);
    rows
}

fn config(run: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(run.join("config.json")).unwrap()).unwrap()
}

/// Steps completed after each epoch, from metrics.csv (the untrained row first).
fn steps_by_epoch(run: &Path) -> Vec<u64> {
    read_csv(&run.join("metrics.csv"))
        .iter()
        .map(|r| r[1].parse().unwrap())
        .collect()
}

fn round_triplets(run: &Path, round: usize) -> Vec<String> {
    read_csv(&run.join(format!("rounds/{round:03}/triplets.csv")))
        .iter()
        .map(|r| format!("{},{},{}", &r[0], &r[1], &r[2]))
        .collect()
}

fn train_rows(rows: &Path, run: &Path, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--embeddings",
        s(rows),
        "--out",
        s(run),
        "--dim",
        "8",
        "--val-samples",
        "0",
        "--seed",
        "1",
    ];
    args.extend(extra);
    ok(&args);
}

/// Over feature rows, every global round embeds the split through the current head: the
/// round mined at the start of epoch 2 is exactly what `tripmine mine` finds over the rows
/// embedded by the head after epoch 1 (a constant learning rate makes a 1-epoch run's head
/// that head), and differs from the first round's. Rounds inside an epoch (every 3 steps)
/// fill the steps the epoch announced, so both epochs have the same number.
#[test]
fn global_rounds_over_feature_rows_follow_the_current_head() {
    let dir = tempfile::tempdir().unwrap();
    let rows = few_per_class(dir.path());
    let run = |name: &str, epochs: &str, every: &str| {
        let run = dir.path().join(name);
        train_rows(
            &rows,
            &run,
            &[
                "--mining",
                "global",
                "--positives",
                "hardest",
                "--strategy",
                "semihard",
                "--remine-every",
                every,
                "--epochs",
                epochs,
                "--lr",
                "0.05",
                "--schedule",
                "constant",
                "--warmup-epochs",
                "0",
            ],
        );
        run
    };
    let one = run("one", "1", "1");
    let two = run("two", "2", "1");
    let emb = dir.path().join("after-one");
    ok(&[
        "embed",
        "--model",
        s(&one.join("last")),
        "--embeddings",
        s(&rows),
        "--out",
        s(&emb),
    ]);
    let mined = dir.path().join("mined.csv");
    ok(&[
        "mine",
        "--embeddings",
        s(&emb),
        "--out",
        s(&mined),
        "--positives",
        "hardest",
        "--strategy",
        "semihard",
    ]);
    let rows_of = |path: &Path| -> Vec<String> {
        read_csv(path)
            .iter()
            .map(|r| format!("{},{},{}", &r[0], &r[1], &r[2]))
            .collect()
    };
    assert_eq!(round_triplets(&two, 1), rows_of(&mined));
    assert_ne!(round_triplets(&two, 0), round_triplets(&two, 1));

    let often = run("often", "2", "3steps");
    assert!(often.join("rounds/002/triplets.csv").is_file());
    let steps = steps_by_epoch(&often);
    assert_eq!(
        steps[2],
        2 * steps[1],
        "epochs of unequal length: {steps:?}"
    );
    let sidecar: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(often.join("rounds/001/triplets.json")).unwrap())
            .unwrap();
    assert_eq!(sidecar["round"], 1);
}

/// A neighbour-graph refresh in mid-epoch recomposes the rest of the epoch into the steps
/// announced at its start: the first epoch has as many steps with a refresh every half epoch
/// as with one per epoch (both start from the same graph).
#[test]
fn fractional_refreshes_keep_the_epochs_step_count() {
    let dir = tempfile::tempdir().unwrap();
    let rows = few_per_class(dir.path());
    let steps = |every: &str| {
        let run = dir.path().join(format!("every-{every}"));
        train_rows(
            &rows,
            &run,
            &[
                "--mining",
                "neighbour-batches",
                "--remine-every",
                every,
                "--epochs",
                "2",
                "--lr",
                "0.05",
            ],
        );
        steps_by_epoch(&run)
    };
    let whole = steps("1");
    let half = steps("0.5");
    assert_eq!(whole[1], half[1], "{whole:?} against {half:?}");
    let (code, _, stderr) = tripmine(&[
        "train",
        "--embeddings",
        s(&rows),
        "--out",
        s(&dir.path().join("bad")),
        "--remine-every",
        "0steps",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--remine-every"), "{stderr}");
}

/// `--mining auto` picks from the split's shape and says why in config.json: index-guided
/// batches over feature rows with few samples per class.
#[test]
fn auto_mining_records_its_choice_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let rows = few_per_class(dir.path());
    let run = dir.path().join("auto");
    train_rows(&rows, &run, &["--epochs", "1"]);
    let cfg = config(&run);
    assert_eq!(cfg["mining"], "neighbour-batches", "{cfg}");
    let reason = cfg["mining_choice"]["reason"].as_str().unwrap();
    assert!(reason.contains("40 training classes of 5.0"), "{reason}");
    assert!(run.join("rounds/000/batches.json").is_file());
}

/// Without a split column, a corpus of many classes of 5 validates on held-out classes: every
/// epoch's validation scores queries (issue 31: one image per class scored none, reported
/// 0.0 and kept the first epoch as best/), and config.json records what validated.
#[test]
fn validation_without_a_split_column_measures_small_classes() {
    let dir = tempfile::tempdir().unwrap();
    let rows = few_per_class(dir.path());
    let run = dir.path().join("run");
    let (code, _, stderr) = tripmine(&[
        "train",
        "--embeddings",
        s(&rows),
        "--out",
        s(&run),
        "--dim",
        "8",
        "--epochs",
        "3",
        "--seed",
        "1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        config(&run)["validation"]["classes"],
        0.1,
        "{}",
        config(&run)
    );
    assert!(
        stderr.contains("validation: 20 samples of 4 classes (classes held out, unseen in training), 20 scorable queries"),
        "{stderr}"
    );
    let maps: Vec<f64> = read_csv(&run.join("metrics.csv"))
        .iter()
        .map(|r| r[7].parse().unwrap())
        .collect();
    assert_eq!(maps.len(), 4);
    assert!(maps.iter().all(|m| m.is_finite() && *m > 0.0), "{maps:?}");
}

/// `tripmine mine --skip-nearest R --negative-floor F`: no negative is among its anchor's R
/// nearest other-label samples (checked by brute force over the rows) or closer than
/// F·d(a,p); the sidecar records both.
#[test]
fn mine_guards_every_negative_against_false_negatives() {
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows");
    synthetic_embeddings(&rows, 12, 8, 16, 0.8, 9);
    let out = dir.path().join("t.csv");
    ok(&[
        "mine",
        "--embeddings",
        s(&rows),
        "--out",
        s(&out),
        "--strategy",
        "hard=0.5,semihard=0.5",
        "--negatives-per-anchor",
        "3",
        "--skip-nearest",
        "2",
        "--negative-floor",
        "0.9",
    ]);
    let bytes = fs::read(rows.join("embeddings.npy")).unwrap();
    let (n, dim, data) = tripmine::npy::read_f32_matrix(&bytes).unwrap();
    let samples = read_csv(&rows.join("samples.csv"));
    let label = |i: usize| samples[i][2].to_string();
    let index: std::collections::HashMap<String, usize> = samples
        .iter()
        .enumerate()
        .map(|(i, r)| (r[1].to_string(), i))
        .collect();
    let row = |i: usize| &data[i * dim..(i + 1) * dim];
    let dist = |a: usize, b: usize| {
        row(a)
            .iter()
            .zip(row(b))
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let triplets = read_csv(&out);
    assert!(triplets.len() > 50, "{} triplets", triplets.len());
    for t in &triplets {
        let (a, n_) = (index[&t[0]], index[&t[2]]);
        let mut others: Vec<usize> = (0..n).filter(|&j| label(j) != label(a)).collect();
        others.sort_by(|&x, &y| dist(a, x).total_cmp(&dist(a, y)));
        assert!(
            !others[..2].contains(&n_),
            "{t:?} takes a skipped neighbour"
        );
        let (d_ap, d_an): (f64, f64) = (t[5].parse().unwrap(), t[6].parse().unwrap());
        assert!(d_an >= 0.9 * d_ap - 1e-6, "{t:?} is under the floor");
    }
    let sidecar = fs::read_to_string(dir.path().join("t.json")).unwrap();
    assert!(
        sidecar.contains("\"skip_nearest\": 2") && sidecar.contains("\"negative_floor\": 0.9"),
        "{sidecar}"
    );
}

/// Every loss option and optimiser trains: over feature rows whose classes a head can pull
/// apart, the validation MAP@R after 3 epochs is above the untrained head's, for batch-all,
/// a soft margin, the distance swap, SGD and AdamW (each alone, other options at defaults).
#[test]
fn every_loss_option_and_optimiser_learns() {
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows");
    synthetic_embeddings(&rows, 20, 10, 16, 0.9, 6);
    let variants: [&[&str]; 5] = [
        &["--mining", "batch-all", "--lr", "0.02"],
        &["--soft-margin", "--lr", "0.02"],
        &["--swap", "--lr", "0.02"],
        &["--optimizer", "sgd", "--lr", "0.2"],
        &[
            "--optimizer",
            "adamw",
            "--weight-decay",
            "0.01",
            "--lr",
            "0.02",
        ],
    ];
    for (i, extra) in variants.iter().enumerate() {
        let run = dir.path().join(format!("v{i}"));
        let mut args = vec![
            "train",
            "--embeddings",
            s(&rows),
            "--out",
            s(&run),
            "--dim",
            "8",
            "--epochs",
            "3",
            "--val-samples",
            "0.3",
            "--seed",
            "2",
        ];
        args.extend_from_slice(extra);
        ok(&args);
        let m = read_csv(&run.join("metrics.csv"));
        let map = |row: &csv::StringRecord| row[7].parse::<f64>().unwrap();
        let (before, after) = (map(&m[0]), map(&m[m.len() - 1]));
        eprintln!("{extra:?}: MAP@R {before:.5} -> {after:.5}");
        assert!(
            after > before + 0.02,
            "{extra:?}: MAP@R {before} -> {after}"
        );
    }
}
