//! Property tests ("fuzzing" with a bounded budget) of every parser that reads a user's file:
//! the `.npy` header, `samples.csv`/labels, the corpus manifest, the triplet CSV, exclude lists,
//! `embeddings.json` and `model.json`. Each must return a value or an error, never panic.
//!
//! CI runs 256 cases per property (about a second each). Run longer with
//! `TRIPMINE_FUZZ_CASES=100000 cargo test --test parsers`. Inputs that once failed are kept in
//! `regressions()` below (and proptest records new ones under `proptest-regressions/`).

use proptest::prelude::*;
use tripmine::{corpus, mine, npy, store, triplets};

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("TRIPMINE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// A valid header, then bytes; the strategies below mutate it.
fn npy_file(header: &str, body: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(body);
    out
}

/// Header fields drawn from plausible and hostile values.
fn header_strategy() -> impl Strategy<Value = String> {
    let descr = prop_oneof![
        Just("<f4".to_string()),
        Just("<f8".to_string()),
        Just("<f2".to_string()),
        Just(">f4".to_string()),
        Just("<i4".to_string()),
        Just("|u1".to_string()),
        "[<>|=]?[a-z][0-9]{1,3}",
        ".{0,6}",
    ];
    let dim = prop_oneof![
        0u64..5,
        Just(u64::MAX),
        Just(u64::MAX / 2 + 1),
        Just(1u64 << 62),
        any::<u64>(),
    ];
    let shape = prop_oneof![
        (dim.clone(), dim.clone()).prop_map(|(a, b)| format!("({a}, {b})")),
        dim.clone().prop_map(|a| format!("({a},)")),
        (dim.clone(), dim.clone(), dim).prop_map(|(a, b, c)| format!("({a}, {b}, {c})")),
        Just("()".to_string()),
        "\\([0-9a-z, -]{0,12}\\)?",
    ];
    let fortran = prop_oneof![Just("False"), Just("True"), Just("maybe")];
    (descr, fortran, shape)
        .prop_map(|(d, f, s)| format!("{{'descr': '{d}', 'fortran_order': {f}, 'shape': {s}, }}\n"))
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn npy_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = npy::read_matrix(&bytes);
        let mut with_magic = b"\x93NUMPY".to_vec();
        with_magic.extend(&bytes);
        let _ = npy::read_matrix(&with_magic);
    }

    #[test]
    fn npy_headers_parse_or_fail_cleanly(header in header_strategy(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(m) = npy::read_matrix(&npy_file(&header, &body)) {
            // A success is self-consistent.
            prop_assert_eq!(m.data.len(), m.rows * m.cols);
        }
    }

    #[test]
    fn npy_round_trips(rows in 0usize..6, cols in 0usize..6, seed in any::<u32>()) {
        let data: Vec<f32> = (0..rows * cols).map(|i| (i as f32 + seed as f32).sin()).collect();
        let mut bytes = Vec::new();
        npy::write_f32_matrix(&mut bytes, rows, cols, &data).unwrap();
        let m = npy::read_matrix(&bytes).unwrap();
        prop_assert_eq!((m.rows, m.cols), (rows, cols));
        prop_assert_eq!(m.data, data);
    }

    #[test]
    fn csv_parsers_never_panic(text in csv_text()) {
        let bytes = text.as_bytes();
        let _ = store::parse_samples(bytes);
        let _ = triplets::parse(bytes);
        let _ = mine::parse_exclude(bytes);
    }

    #[test]
    fn json_sidecars_never_panic(text in json_text()) {
        let _ = serde_json::from_str::<store::EmbeddingsMeta>(&text);
        let _ = serde_json::from_str::<tripmine::model::ModelSpec>(&text);
    }
}

proptest! {
    // Each case writes files, so fewer of them.
    #![proptest_config(cases(32))]

    #[test]
    fn manifests_and_embedding_folders_never_panic(manifest in csv_text(), samples in csv_text(), meta in json_text()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.csv");
        std::fs::write(&path, &manifest).unwrap();
        let _ = corpus::open(&path);
        let emb = dir.path().join("emb");
        std::fs::create_dir(&emb).unwrap();
        let mut bytes = Vec::new();
        npy::write_f32_matrix(&mut bytes, 2, 2, &[1.0, 0.0, 0.0, 1.0]).unwrap();
        std::fs::write(emb.join("embeddings.npy"), &bytes).unwrap();
        std::fs::write(emb.join("samples.csv"), &samples).unwrap();
        let _ = store::read(&emb);
        std::fs::write(emb.join("embeddings.json"), &meta).unwrap();
        let _ = store::read(&emb);
    }
}

/// CSV-like text: headers the parsers know, mixed with quotes, separators and junk.
fn csv_text() -> impl Strategy<Value = String> {
    let header = prop_oneof![
        Just("path,label,split".to_string()),
        Just("index,path,label,split".to_string()),
        Just("label".to_string()),
        Just(triplets::HEADER.join(",")),
        Just("path,reason".to_string()),
        "[a-z,\"]{0,20}",
    ];
    let cell = prop_oneof![
        "[a-z0-9/._-]{0,8}",
        Just("\"".to_string()),
        Just("\"a,b\"".to_string()),
        Just("-1".to_string()),
        Just("NaN".to_string()),
        Just("1e99".to_string()),
        Just("semihard".to_string()),
        Just("..\\..\\x".to_string()),
        ".{0,4}",
    ];
    let row = proptest::collection::vec(cell, 0..10).prop_map(|c| c.join(","));
    (header, proptest::collection::vec(row, 0..6))
        .prop_map(|(h, rows)| format!("{h}\n{}", rows.join("\n")))
}

fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        Just("{}".to_string()),
        Just("{\"sha256\": 1}".to_string()),
        Just("{\"format\": \"tripmine-model-1\", \"architecture\": {\"kind\": \"resnet\", \"widths\": [-1]}}".to_string()),
        "\\{\"[a-z_]{1,10}\": (null|true|-?[0-9]{1,20}|\"[a-z]{0,5}\"|\\[\\])\\}",
    ]
}

/// Inputs that panicked or were mis-read before; each must give a clean error.
#[test]
fn regressions() {
    // Multiply overflow in the shape arithmetic (exit 101, or a silent wrap in release).
    let huge = npy_file(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, 2), }\n",
        &[0; 8],
    );
    assert!(npy::read_matrix(&huge).unwrap_err().contains("too large"));
    // A header length beyond the file.
    let mut short = b"\x93NUMPY\x02\x00".to_vec();
    short.extend(u32::MAX.to_le_bytes());
    assert!(npy::read_matrix(&short).is_err());
    // A header without fortran_order used to be read as C order.
    let no_order = npy_file("{'descr': '<f4', 'shape': (1, 1), }\n", &[0; 4]);
    assert!(npy::read_matrix(&no_order).is_err());
    // Non-UTF-8 header.
    let latin = npy_file("{'descr': '<f4'\u{ff}}\n", &[]);
    let mut latin = latin;
    let at = latin.len() - 3;
    latin[at] = 0xff;
    assert!(npy::read_matrix(&latin).is_err());
    // A samples.csv index out of order, an empty label.
    assert!(store::parse_samples(b"index,path,label,split\n1,a,x,\n").is_err());
    assert!(store::parse_samples(b"path,label\na,\n").is_err());
    // Exclude list without a path column; blank rows are ignored.
    assert!(mine::parse_exclude(b"file\na\n").is_err());
    assert_eq!(mine::parse_exclude(b"path\na\n\n").unwrap(), ["a"]);
}
