//! Embeddings from outside tripmine: the embedding guide's PyTorch snippet, run with the venv's torch and
//! numpy, writes a folder that `mine`, `audit`, `eval` and `view` read; other dtypes, layouts
//! and unnormalised rows are converted or refused clearly; provenance and crafted headers.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

/// The Python lines under the embedding guide's `pytorch-snippet` marker.
fn guide_snippet() -> String {
    let readme = fs::read_to_string(repo().join("docs/guides/embed.md")).unwrap();
    let at = readme
        .find("<!-- pytorch-snippet")
        .expect("docs/guides/embed.md marks the snippet");
    let block = &readme[at..];
    let start = block.find("```python\n").unwrap() + "```python\n".len();
    let end = start + block[start..].find("\n```").unwrap();
    let snippet = block[start..end].to_string();
    assert_eq!(snippet.lines().count(), 3, "the guide promises three lines");
    snippet
}

/// Runs the guide's snippet on a small "model" (a linear map of noisy one-hot class codes) over
/// the fixture manifest's rows, in `dir`; also writes variants of the same vectors. Returns
/// numpy's P@1 of the vectors (the oracle for `tripmine eval`).
fn write_external(dir: &Path) -> f64 {
    let script = format!(
        "import csv, os, sys, numpy, torch\n\
         os.chdir(sys.argv[1])\n\
         os.makedirs('emb', exist_ok=True)\n\
         rows = list(csv.DictReader(open(sys.argv[2])))\n\
         paths = [r['path'] for r in rows]\n\
         labels = [r['label'] for r in rows]\n\
         names = sorted(set(labels))\n\
         torch.manual_seed(0)\n\
         codes = torch.nn.functional.one_hot(torch.tensor([names.index(l) for l in labels]), len(names)).float()\n\
         images = codes + 0.3 * torch.randn(codes.shape)\n\
         model = torch.nn.Linear(len(names), 16)\n\
         {}\n\
         raw = model(images).detach()\n\
         numpy.save('raw64.npy', raw.double().numpy())\n\
         numpy.save('half_fortran.npy', numpy.asfortranarray(emb.detach().numpy().astype(numpy.float16)))\n\
         numpy.save('ints.npy', numpy.zeros((len(paths), 4), dtype=numpy.int32))\n\
         csv.writer(open('labels.csv', 'w', newline='')).writerows([('label', 'split'), *[(l, r['split']) for l, r in zip(labels, rows)]])\n\
         e = numpy.load('emb/embeddings.npy').astype(numpy.float64)\n\
         sims = e @ e.T\n\
         numpy.fill_diagonal(sims, -numpy.inf)\n\
         nearest = sims.argmax(axis=1)\n\
         print(numpy.mean([labels[i] == labels[j] for i, j in enumerate(nearest)]))\n",
        guide_snippet()
    );
    let made = Command::new(python())
        .args(["-c", &script])
        .arg(dir)
        .arg(fixtures().join("manifest.csv"))
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&made.stderr)
    );
    String::from_utf8_lossy(&made.stdout)
        .trim()
        .parse()
        .unwrap()
}

fn sidecar(csv: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(csv.with_extension("json")).unwrap()).unwrap()
}

#[test]
fn pytorch_embeddings_are_mined_audited_evaluated_and_viewed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let numpy_p1 = write_external(d);
    let emb = d.join("emb");
    assert!(!emb.join("embeddings.json").exists());
    let manifest = fixtures().join("manifest.csv");

    let t = d.join("t.csv");
    ok(&["mine", "--embeddings", s(&emb), "--out", s(&t)]);
    let rows = tripmine::triplets::read(&t).unwrap();
    assert!(rows.len() > 200, "{} triplets", rows.len());
    assert!(rows.iter().all(|r| r.anchor.starts_with("corpus/")));
    let json = sidecar(&t);
    assert_eq!(json["embeddings"]["count"], 288);
    assert_eq!(json["embeddings"]["loaded"]["dtype"], "<f4");
    assert_eq!(json["embeddings"]["loaded"]["normalised_on_load"], false);

    // Retrieval on these vectors agrees with numpy's brute-force nearest neighbour.
    let out = ok(&["eval", "--embeddings", s(&emb), "--json"]);
    let m: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let p1 = m["p_at_1"].as_f64().unwrap();
    assert!((p1 - numpy_p1).abs() < 1e-9, "P@1 {p1}, numpy {numpy_p1}");
    assert!(p1 > 0.5, "the clusters are visible: P@1 {p1}");
    assert_eq!(m["queries"], 288);

    let audit = d.join("audit");
    ok(&[
        "audit",
        "--corpus",
        s(&manifest),
        "--embeddings",
        s(&emb),
        "--out",
        s(&audit),
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(audit.join("audit.json")).unwrap()).unwrap();
    assert_eq!(report["samples"], 288);

    let sheets = d.join("sheets");
    ok(&[
        "view",
        s(&t),
        "--corpus",
        s(&manifest),
        "--out",
        s(&sheets),
        "--limit",
        "10",
    ]);
    assert!(sheets.join("index.html").exists());
}

#[test]
fn other_dtypes_layouts_and_unnormalised_rows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_external(d);
    let labels = d.join("labels.csv");
    let t = d.join("t.csv");
    let mine = |npy: &str, extra: &[&str]| {
        let npy = d.join(npy);
        let mut args = vec![
            "mine",
            "--embeddings",
            s(&npy),
            "--labels",
            s(&labels),
            "--out",
            s(&t),
        ];
        args.extend(extra);
        tripmine(&args)
    };
    // float64, not unit length: refused with the way out named, then normalised and recorded.
    let (code, _, stderr) = mine("raw64.npy", &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("row 0") && stderr.contains("--normalise"),
        "{stderr}"
    );
    let (code, _, stderr) = mine("raw64.npy", &["--normalise"]);
    assert_eq!(code, 0, "{stderr}");
    let json = sidecar(&t);
    assert_eq!(json["embeddings"]["loaded"]["dtype"], "<f8");
    assert_eq!(json["embeddings"]["loaded"]["normalised_on_load"], true);
    // A labels CSV without paths names rows by number.
    let rows = tripmine::triplets::read(&t).unwrap();
    assert!(rows.iter().all(|r| r.anchor.parse::<usize>().is_ok()));

    // float16 in Fortran order: transposed and converted (half precision needs --normalise).
    let (code, _, stderr) = mine("half_fortran.npy", &["--normalise"]);
    assert_eq!(code, 0, "{stderr}");
    let json = sidecar(&t);
    assert_eq!(json["embeddings"]["loaded"]["dtype"], "<f2");
    assert_eq!(json["embeddings"]["loaded"]["fortran_order"], true);
    // Same vectors as the float32 ones, so the same P@1 as the folder's.
    let half = ok(&[
        "eval",
        "--embeddings",
        s(&d.join("half_fortran.npy")),
        "--labels",
        s(&labels),
        "--normalise",
        "--json",
    ]);
    let full = ok(&["eval", "--embeddings", s(&d.join("emb")), "--json"]);
    let p1 = |t: &str| {
        serde_json::from_str::<serde_json::Value>(t.trim()).unwrap()["p_at_1"]
            .as_f64()
            .unwrap()
    };
    assert!((p1(&half) - p1(&full)).abs() < 0.02, "{half} vs {full}");

    // --split filters on the labels' split column.
    let out = ok(&[
        "eval",
        "--embeddings",
        s(&d.join("raw64.npy")),
        "--labels",
        s(&labels),
        "--normalise",
        "--split",
        "test",
        "--json",
    ]);
    let m: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(m["queries"], 72, "6 test images in each of 12 classes");

    // Integers, a missing --labels, and a row count that disagrees: exit 2, named.
    let (code, _, stderr) = mine("ints.npy", &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("ints.npy") && stderr.contains("<i4"),
        "{stderr}"
    );
    let npy = d.join("raw64.npy");
    let (code, _, stderr) = tripmine(&["mine", "--embeddings", s(&npy), "--out", s(&t)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--labels"), "{stderr}");
    fs::write(&labels, "label\na\nb\n").unwrap();
    let (code, _, stderr) = mine("raw64.npy", &["--normalise"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("288 rows") && stderr.contains("2 samples"),
        "{stderr}"
    );
}

/// One cause per message: the old message said `writing X` three times.
fn assert_each_once(stderr: &str, pieces: &[&str]) {
    for p in pieces {
        assert_eq!(stderr.matches(p).count(), 1, "{p:?} not once in: {stderr}");
    }
}

#[test]
fn a_replaced_npy_is_refused_naming_both_files_and_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let emb = dir.path().join("emb");
    synthetic_embeddings(&emb, 4, 5, 8, 0.2, 1);
    let t = dir.path().join("t.csv");
    ok(&["mine", "--embeddings", s(&emb), "--out", s(&t)]);

    // Rows reversed, as an interrupted or reordered re-embed would leave them.
    let npy = emb.join("embeddings.npy");
    let before = fs::read(&npy).unwrap();
    let m = tripmine::npy::read_matrix(&before).unwrap();
    let reversed: Vec<f32> = m.data.chunks(m.cols).rev().flatten().copied().collect();
    let after = tripmine::store::npy_bytes(m.rows, m.cols, &reversed);
    fs::write(&npy, &after).unwrap();
    let (code, _, stderr) = tripmine(&["mine", "--embeddings", s(&emb), "--out", s(&t)]);
    assert_eq!(code, 2, "{stderr}");
    let old = tripmine::store::sha256_hex(&before);
    let new = tripmine::store::sha256_hex(&after);
    for piece in ["embeddings.npy", "embeddings.json", &old, &new] {
        assert!(stderr.contains(piece), "{piece} missing: {stderr}");
    }
    // The same through audit and eval.
    let (code, _, stderr) = tripmine(&["eval", "--embeddings", s(&emb)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&new), "{stderr}");

    // samples.csv edited after embedding: refused too.
    fs::write(&npy, &before).unwrap();
    let samples = emb.join("samples.csv");
    let text = fs::read_to_string(&samples).unwrap();
    fs::write(&samples, text.replace("c0000,", "c0001,")).unwrap();
    let (code, _, stderr) = tripmine(&["mine", "--embeddings", s(&emb), "--out", s(&t)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("samples.csv"), "{stderr}");

    // Without embeddings.json the folder is plain external embeddings.
    fs::write(&samples, text).unwrap();
    fs::remove_file(emb.join("embeddings.json")).unwrap();
    ok(&["mine", "--embeddings", s(&emb), "--out", s(&t)]);

    // An unwritable --out: the path and the OS error each appear once.
    let (code, _, stderr) = tripmine(&["mine", "--embeddings", s(&emb), "--out", "no/such/t.csv"]);
    assert_eq!(code, 1, "{stderr}");
    assert_each_once(&stderr, &["no/such/t.csv", "os error 2"]);
}

#[test]
fn a_crafted_npy_header_is_exit_2_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let emb = dir.path().join("emb");
    fs::create_dir_all(&emb).unwrap();
    let t = dir.path().join("t.csv");
    fs::write(emb.join("samples.csv"), "path,label\na.png,x\nb.png,y\n").unwrap();
    let cases: [(&str, &str); 4] = [
        ("(18446744073709551615, 18446744073709551615)", "too large"),
        ("(4611686018427387904, 4)", "too large"),
        ("(2, 2, 2)", "2 dimensions"),
        ("(2, x)", "bad shape"),
    ];
    for (shape, expected) in cases {
        let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend([0u8; 16]);
        fs::write(emb.join("embeddings.npy"), &bytes).unwrap();
        let (code, _, stderr) = tripmine(&["mine", "--embeddings", s(&emb), "--out", s(&t)]);
        assert_eq!(code, 2, "{shape}: {stderr}");
        assert!(
            stderr.contains(expected) && stderr.contains("embeddings.npy"),
            "{shape}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_replaced_backbone_is_refused_when_its_checkpoint_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let pt = dir.path().join("trunk.pt");
    let save = |channels: u32| {
        let script = format!(
            "import torch,sys\n\
             m=torch.nn.Sequential(torch.nn.Conv2d(3,{channels},3,padding=1),torch.nn.ReLU())\n\
             torch.jit.script(m).save(sys.argv[1])\n"
        );
        run_python(&script, &pt);
    };
    save(12);
    let pre = tripmine::corpus::Preprocess::standard(32, 3);
    let spec = tripmine::model::ModelSpec::backbone(
        &pt,
        pre,
        16,
        0,
        tripmine::model::TrunkMode::Frozen,
        false,
    )
    .unwrap();
    let ckpt = dir.path().join("ckpt");
    tripmine::model::Embedder::init(spec, tch::Device::Cpu)
        .unwrap()
        .save(&ckpt)
        .unwrap();
    let corpus = fixtures().join("corpus");
    let out = dir.path().join("emb");
    let embed = || {
        tripmine(&[
            "embed",
            "--corpus",
            s(&corpus),
            "--model",
            s(&ckpt),
            "--out",
            s(&out),
        ])
    };
    let (code, _, stderr) = embed();
    assert_eq!(code, 0, "{stderr}");
    let recorded = tripmine::store::sha256_hex(&fs::read(&pt).unwrap());
    save(12); // a fresh initialisation: same shape, other weights
    let actual = tripmine::store::sha256_hex(&fs::read(&pt).unwrap());
    assert_ne!(recorded, actual);
    let (code, _, stderr) = embed();
    assert_eq!(code, 2, "{stderr}");
    for piece in ["trunk.pt", &recorded, &actual, "replaced"] {
        assert!(stderr.contains(piece), "{piece} missing: {stderr}");
    }
}
