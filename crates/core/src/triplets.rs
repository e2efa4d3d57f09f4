//! The triplet CSV: one schema, read and written here, shared by `mine`, `train` and `view`.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::definitions::{Triplet, TripletKind};

pub const HEADER: [&str; 8] = [
    "anchor",
    "positive",
    "negative",
    "anchor_label",
    "negative_label",
    "d_ap",
    "d_an",
    "kind",
];

/// One row of a triplet CSV; paths are as the corpus names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TripletRow {
    pub anchor: String,
    pub positive: String,
    pub negative: String,
    pub anchor_label: String,
    pub negative_label: String,
    pub d_ap: f32,
    pub d_an: f32,
    pub kind: TripletKind,
}

impl TripletRow {
    /// The row of a mined triplet; `sample(i)` gives sample i's (path, label).
    pub fn new<'a, P: Into<String>>(t: &Triplet, sample: impl Fn(usize) -> (P, &'a str)) -> Self {
        let (anchor, anchor_label) = sample(t.anchor);
        let (negative, negative_label) = sample(t.negative);
        TripletRow {
            anchor: anchor.into(),
            positive: sample(t.positive).0.into(),
            negative: negative.into(),
            anchor_label: anchor_label.to_string(),
            negative_label: negative_label.to_string(),
            d_ap: t.d_ap,
            d_an: t.d_an,
            kind: t.kind,
        }
    }
}

/// Hardest first: the smallest d(a,n) − d(a,p), ties broken by the paths so the order is total.
pub fn harder_first(a: &TripletRow, b: &TripletRow) -> std::cmp::Ordering {
    (a.d_an - a.d_ap)
        .total_cmp(&(b.d_an - b.d_ap))
        .then_with(|| {
            (&a.anchor, &a.positive, &a.negative).cmp(&(&b.anchor, &b.positive, &b.negative))
        })
}

/// Writes rows with the header to any writer (a file or stdout).
pub fn write<W: io::Write>(w: W, rows: impl IntoIterator<Item = TripletRow>) -> io::Result<()> {
    let mut csv = csv::WriterBuilder::new().has_headers(false).from_writer(w);
    csv.write_record(HEADER)?;
    for row in rows {
        csv.serialize(row)?;
    }
    csv.flush()
}

/// The sidecar of the triplet CSV `csv`: the same name with `.json` (`t.csv` and `t` both get
/// `t.json`); `None` for a name that already ends in `.json`, which would be its own sidecar.
pub fn sidecar_path(csv: &Path) -> Option<std::path::PathBuf> {
    csv.extension()
        .is_none_or(|e| e != "json")
        .then(|| csv.with_extension("json"))
}

/// Reads a triplet CSV, checking the header; errors name the file and the line. When the
/// sidecar `<name>.json` records the CSV's SHA-256 (as `tripmine mine` writes it), the two
/// must belong together: a CSV replaced after its sidecar was written is refused.
pub fn read(path: &Path) -> Result<Vec<TripletRow>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(sidecar) = sidecar_path(path) {
        let recorded = std::fs::read_to_string(&sidecar)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["csv_sha256"].as_str().map(String::from));
        if let Some(recorded) = recorded {
            let actual = crate::store::sha256_hex(&bytes);
            if recorded != actual {
                return Err(format!(
                    "{} does not belong to its sidecar {}: the sidecar records SHA-256 \
                     {recorded}, the CSV has {actual} (an interrupted or concurrent `tripmine \
                     mine`?). Mine again, or delete the sidecar to read the CSV alone",
                    path.display(),
                    sidecar.display()
                ));
            }
        }
    }
    parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses triplet CSV text (header checked); errors name the line.
pub fn parse(bytes: &[u8]) -> Result<Vec<TripletRow>, String> {
    let mut reader = csv::Reader::from_reader(bytes);
    let header = reader.headers().map_err(|e| e.to_string())?;
    if header.iter().ne(HEADER) {
        return Err(format!(
            "header is {:?}; expected {:?}",
            header.iter().collect::<Vec<_>>().join(","),
            HEADER.join(",")
        ));
    }
    reader
        .deserialize()
        .enumerate()
        .map(|(i, r)| r.map_err(|e| format!("line {}: {e}", i + 2)))
        .collect()
}
