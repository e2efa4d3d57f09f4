//! `--exclude` matches files, not spellings: an audit of the fixture manifest
//! (`corpus/disc/disc_00.png`) excludes the same images from embeddings of the ImageFolder
//! beside it (`disc/disc_00.png`); lists that match nothing or only part of their rows warn.

mod common;

use std::collections::HashSet;
use std::fs;

use common::*;

#[test]
fn an_exclude_list_from_a_manifest_audit_excludes_the_same_images_from_an_image_folder_mine() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let manifest = fixtures().join("manifest.csv");
    let folder = fixtures().join("corpus");
    let (emb_m, emb_f) = (d.join("emb_m"), d.join("emb_f"));
    for (corpus, out) in [(&manifest, &emb_m), (&folder, &emb_f)] {
        ok(&[
            "embed",
            "--corpus",
            s(corpus),
            "--out",
            s(out),
            "--dim",
            "16",
            "--input-size",
            "32",
            "--seed",
            "5",
        ]);
    }
    // A fresh network and a loose outlier threshold (z ≥ 0: about half of each class) flag
    // plenty of samples.
    let audit = d.join("audit");
    ok(&[
        "audit",
        "--corpus",
        s(&manifest),
        "--embeddings",
        s(&emb_m),
        "--out",
        s(&audit),
        "--outlier-z",
        "0",
    ]);
    let exclude = audit.join("exclude.csv");
    let listed: HashSet<String> = read_csv(&exclude)
        .iter()
        .map(|r| r[0].to_string())
        .collect();
    assert!(listed.len() >= 10, "only {} flagged", listed.len());
    assert!(listed.iter().all(|p| p.starts_with("corpus/")));

    let t = d.join("t.csv");
    let (code, _, stderr) = tripmine(&[
        "mine",
        "--embeddings",
        s(&emb_f),
        "--out",
        s(&t),
        "--strategy",
        "violating",
        "--exclude",
        s(&exclude),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let sidecar: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(t.with_extension("json")).unwrap()).unwrap();
    assert_eq!(sidecar["excluded_samples"], listed.len());
    for row in tripmine::triplets::read(&t).unwrap() {
        for p in [&row.anchor, &row.positive, &row.negative] {
            assert!(
                !listed.contains(&format!("corpus/{p}")),
                "{p} is excluded but appears in a triplet"
            );
        }
    }

    // A hand-written list: relative to the embeddings' corpus, `./` and `\` normalised; rows
    // that match nothing are reported.
    let list = d.join("mine.csv");
    fs::write(
        &list,
        "path\n./disc/disc_00.png\ndisc\\disc_01.png\nno/such.png\n",
    )
    .unwrap();
    let (code, _, stderr) = tripmine(&[
        "mine",
        "--embeddings",
        s(&emb_f),
        "--out",
        s(&t),
        "--exclude",
        s(&list),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("only 2 of the 3 paths") && stderr.contains("no/such.png"),
        "{stderr}"
    );
    let sidecar: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(t.with_extension("json")).unwrap()).unwrap();
    assert_eq!(sidecar["excluded_samples"], 2);
    fs::write(&list, "path\nelsewhere/a.png\nelsewhere/b.png\n").unwrap();
    let (code, _, stderr) = tripmine(&[
        "mine",
        "--embeddings",
        s(&emb_f),
        "--out",
        s(&t),
        "--exclude",
        s(&list),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("NONE of the 2 paths"), "{stderr}");

    // `train --exclude` is the same exclusion: the manifest audit's list keeps those images
    // of the ImageFolder out of a global round, and a list that matches nothing is warned of.
    let run = d.join("run");
    let (code, _, stderr) = tripmine(&[
        "train",
        "--corpus",
        s(&folder),
        "--out",
        s(&run),
        "--mining",
        "global",
        "--epochs",
        "1",
        "--dim",
        "16",
        "--input-size",
        "32",
        "--exclude",
        s(&exclude),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let trained: HashSet<String> = read_csv(&run.join("rounds/000/triplets.csv"))
        .iter()
        .flat_map(|r| [r[0].to_string(), r[1].to_string(), r[2].to_string()])
        .collect();
    assert!(!trained.is_empty());
    for p in &listed {
        let in_folder = p.strip_prefix("corpus/").unwrap();
        assert!(
            !trained.contains(in_folder),
            "{p} is excluded but trained on"
        );
    }
    let (code, _, stderr) = tripmine(&[
        "train",
        "--corpus",
        s(&folder),
        "--out",
        s(&d.join("run2")),
        "--epochs",
        "1",
        "--dim",
        "16",
        "--input-size",
        "32",
        "--exclude",
        s(&list),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("NONE of the 2 paths"), "{stderr}");
}
