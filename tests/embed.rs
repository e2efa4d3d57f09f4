//! `tripmine embed` end to end on the bundled fixtures.

mod common;

use std::fs;
use std::process::Command;

use common::*;
use tripmine::corpus::Preprocess;
use tripmine::model::{Embedder, ModelSpec};
use tripmine::npy;

#[test]
fn embeddings_match_samples_are_unit_norm_and_numpy_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("emb");
    embed_fixtures(&out, 1);
    let (rows, dim, data) =
        npy::read_f32_matrix(&fs::read(out.join("embeddings.npy")).unwrap()).unwrap();
    let samples = read_csv(&out.join("samples.csv"));
    assert_eq!((rows, dim), (samples.len(), 32));
    assert_eq!(rows, 12 * 24);
    for (i, row) in data.chunks(dim).enumerate() {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "row {i} norm {norm}");
        assert_eq!(samples[i][0].parse::<usize>().unwrap(), i);
    }
    assert_eq!(&samples[0][1], "checker/checker_00.png");
    assert_eq!(&samples[0][2], "checker");
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("embeddings.json")).unwrap()).unwrap();
    assert_eq!(meta["count"], rows);
    assert_eq!(meta["distance"], "euclidean");
    assert!(meta["model"]["origin"]
        .as_str()
        .unwrap()
        .contains("random initialisation (seed 1)"));
    let check = Command::new(python())
        .args([
            "-c",
            "import numpy,sys; a=numpy.load(sys.argv[1]); print(a.dtype, a.shape)",
        ])
        .arg(out.join("embeddings.npy"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        format!("float32 ({rows}, {dim})")
    );
}

#[test]
fn same_seed_gives_identical_bytes_and_another_seed_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let read = |name: &str| fs::read(dir.path().join(name).join("embeddings.npy")).unwrap();
    embed_fixtures(&dir.path().join("a"), 5);
    embed_fixtures(&dir.path().join("b"), 5);
    embed_fixtures(&dir.path().join("c"), 6);
    assert!(read("a") == read("b"), "same seed, different embeddings");
    assert!(read("a") != read("c"), "the seed had no effect");
}

#[test]
fn manifest_and_image_folder_give_the_same_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    embed_fixtures(&dir.path().join("folder"), 3);
    let manifest = fixtures().join("manifest.csv");
    let out = dir.path().join("manifest");
    ok(&[
        "embed",
        "--corpus",
        s(&manifest),
        "--out",
        s(&out),
        "--dim",
        "32",
        "--input-size",
        "32",
        "--seed",
        "3",
    ]);
    let a = fs::read(dir.path().join("folder/embeddings.npy")).unwrap();
    let b = fs::read(out.join("embeddings.npy")).unwrap();
    assert!(a == b, "manifest and folder embeddings differ");
    let samples = read_csv(&out.join("samples.csv"));
    assert_eq!(&samples[0][1], "corpus/checker/checker_00.png");
    assert_eq!(&samples[0][3], "train");
}

#[test]
fn broken_corpus_embeds_valid_images_and_lists_every_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("emb");
    let broken = fixtures().join("broken");
    let (code, stdout, stderr) = tripmine(&[
        "embed",
        "--corpus",
        s(&broken),
        "--out",
        s(&out),
        "--dim",
        "8",
        "--input-size",
        "16",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("skipped 6 file(s)"), "{stdout}");
    assert!(stderr.contains("\"lonely\" has a single image"), "{stderr}");
    let kept = read_csv(&out.join("samples.csv"));
    assert_eq!(kept.len(), 7);
    let skipped: Vec<(String, String)> = read_csv(&out.join("skipped.csv"))
        .iter()
        .map(|r| (r[0].to_string(), r[1].to_string()))
        .collect();
    let reason = |path: &str| {
        skipped
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, r)| r.clone())
            .unwrap_or_default()
    };
    assert!(
        reason("disc/empty.png").starts_with("empty file"),
        "{skipped:?}"
    );
    assert!(
        reason("disc/truncated.png").starts_with("corrupt or truncated Png"),
        "{skipped:?}"
    );
    assert!(
        reason("square/notes.png").starts_with("not an image"),
        "{skipped:?}"
    );
    assert!(
        reason("square/picture.qoi").starts_with("unsupported format Qoi"),
        "{skipped:?}"
    );
    assert!(
        reason("square/corrupt.jpg").starts_with("corrupt or truncated Jpeg"),
        "{skipped:?}"
    );
    assert!(reason("stray.png").starts_with("no label"), "{skipped:?}");
    assert_eq!(skipped.len(), 6);

    let strict_out = dir.path().join("strict");
    let (code, _, stderr) = tripmine(&[
        "embed",
        "--corpus",
        s(&broken),
        "--out",
        s(&strict_out),
        "--dim",
        "8",
        "--input-size",
        "16",
        "--strict",
    ]);
    assert_eq!(code, 2);
    for (path, _) in &skipped {
        assert!(
            stderr.contains(path.as_str()),
            "--strict did not name {path}: {stderr}"
        );
    }
    assert!(!strict_out.exists(), "--strict wrote output");
}

#[test]
fn bad_checkpoint_and_empty_corpus_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    fs::create_dir(&ckpt).unwrap();
    fs::write(ckpt.join("model.json"), "{\"format\": 3}").unwrap();
    let corpus = fixtures().join("corpus");
    let (code, _, stderr) = tripmine(&[
        "embed",
        "--corpus",
        s(&corpus),
        "--model",
        s(&ckpt),
        "--out",
        s(&dir.path().join("o")),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("checkpoint") && stderr.contains("model.json"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let (code, _, stderr) = tripmine(&[
        "embed",
        "--corpus",
        s(&empty),
        "--out",
        s(&dir.path().join("o")),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no usable image"), "{stderr}");
}

#[test]
fn a_saved_checkpoint_embeds_like_the_fresh_network_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ModelSpec::resnet(Preprocess::standard(32, 3), 32, 4);
    Embedder::init(spec, tch::Device::Cpu)
        .unwrap()
        .save(&dir.path().join("ckpt"))
        .unwrap();
    embed_fixtures(&dir.path().join("fresh"), 4);
    let corpus = fixtures().join("corpus");
    ok(&[
        "embed",
        "--corpus",
        s(&corpus),
        "--model",
        s(&dir.path().join("ckpt")),
        "--out",
        s(&dir.path().join("loaded")),
    ]);
    let a = fs::read(dir.path().join("fresh/embeddings.npy")).unwrap();
    let b = fs::read(dir.path().join("loaded/embeddings.npy")).unwrap();
    assert!(a == b);
    let check = Command::new(python())
        .args([
            "-c",
            "import safetensors.numpy,sys; print(len(safetensors.numpy.load_file(sys.argv[1])))",
        ])
        .arg(dir.path().join("ckpt/model.safetensors"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&check.stdout)
            .trim()
            .parse::<usize>()
            .unwrap()
            > 10,
        "{check:?}"
    );
}

#[test]
fn torchscript_backbone_with_linear_head() {
    let dir = tempfile::tempdir().unwrap();
    let pt = dir.path().join("trunk.pt");
    let script = "import torch,sys\n\
                  m=torch.nn.Sequential(torch.nn.Conv2d(3,12,3,padding=1),torch.nn.ReLU())\n\
                  torch.jit.script(m).save(sys.argv[1])\n";
    run_python(script, &pt);
    let out = dir.path().join("emb");
    let corpus = fixtures().join("corpus");
    ok(&[
        "embed",
        "--corpus",
        s(&corpus),
        "--backbone",
        s(&pt),
        "--dim",
        "16",
        "--input-size",
        "32",
        "--out",
        s(&out),
    ]);
    let (rows, dim, _) =
        npy::read_f32_matrix(&fs::read(out.join("embeddings.npy")).unwrap()).unwrap();
    assert_eq!((rows, dim), (288, 16));
    let meta = fs::read_to_string(out.join("embeddings.json")).unwrap();
    assert!(meta.contains("\"features\": 12"), "{meta}");

    fs::write(&pt, b"not torchscript").unwrap();
    let (code, _, stderr) = tripmine(&[
        "embed",
        "--corpus",
        s(&corpus),
        "--backbone",
        s(&pt),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("not a loadable TorchScript module"),
        "{stderr}"
    );
}
