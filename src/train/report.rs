//! The training report: `RUN_DIR/report.html` with loss, metric and active-fraction curves,
//! and per mining round the d(a,p) / d(a,n) histograms and a contact sheet of the hardest
//! triplets. A round is one global mining pass, or one epoch of an in-batch miner; its
//! summary (`rounds/NNN/distances.json`) is written when the round is mined, so the report
//! can be rebuilt from the run directory alone.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use plotters::style::{RGBColor, BLUE, GREEN, RED};
use serde::{Deserialize, Serialize};

use super::run_dir::{self, MetricsRow};
use super::{BatchComposition, TrainConfig, BATCHES_JSON};
use crate::corpus::Sample;
use crate::definitions::{Distance, TripletKind};
use crate::mine::Triplet;
use crate::report::plot::{self, Histogram, Legend, Series};
use crate::report::{html, sheet, write_png, Tiles};
use crate::triplets::{self, TripletRow};

pub const REPORT_HTML: &str = "report.html";
pub const ASSETS: &str = "report";
pub const DISTANCES_JSON: &str = "distances.json";
pub const THUMB: u32 = 80;
const HARDEST: usize = 8;
const BINS: usize = 40;
const COMPOSITION_ROWS: usize = 10;

/// What one mining round produced, in summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: usize,
    /// The first epoch (1-based) that trained on this round's triplets.
    pub first_epoch: usize,
    pub mining: String,
    pub triplets: usize,
    pub kinds: BTreeMap<TripletKind, usize>,
    pub d_ap: Histogram,
    pub d_an: Histogram,
    /// The hardest triplets, hardest first.
    pub hardest: Vec<TripletRow>,
}

/// Accumulates a round's record from its triplets as they are mined.
pub struct RoundRecorder {
    record: RoundRecord,
}

impl RoundRecorder {
    pub fn new(round: usize, first_epoch: usize, mining: &str, distance: Distance) -> Self {
        let top = distance.max() as f64;
        RoundRecorder {
            record: RoundRecord {
                round,
                first_epoch,
                mining: mining.to_string(),
                triplets: 0,
                kinds: BTreeMap::new(),
                d_ap: Histogram::new(0.0, top, BINS),
                d_an: Histogram::new(0.0, top, BINS),
                hardest: Vec::new(),
            },
        }
    }

    /// Adds triplets given as indices into `samples`.
    pub fn add(&mut self, mined: &[Triplet], samples: &[Sample]) {
        let r = &mut self.record;
        for t in mined {
            r.triplets += 1;
            *r.kinds.entry(t.kind).or_default() += 1;
            r.d_ap.add(t.d_ap as f64);
            r.d_an.add(t.d_an as f64);
            r.hardest.push(TripletRow::new(t, |i| {
                (samples[i].path.as_str(), samples[i].label.as_str())
            }));
            if r.hardest.len() >= 16 * HARDEST {
                keep_hardest(&mut r.hardest);
            }
        }
    }

    pub fn save(mut self, run: &Path) -> std::io::Result<RoundRecord> {
        keep_hardest(&mut self.record.hardest);
        let dir = run_dir::round_dir(run, self.record.round);
        fs::create_dir_all(&dir)?;
        crate::output::write_json(&dir.join(DISTANCES_JSON), &self.record)?;
        Ok(self.record)
    }
}

fn keep_hardest(rows: &mut Vec<TripletRow>) {
    rows.sort_by(triplets::harder_first);
    rows.dedup();
    rows.truncate(HARDEST);
}

pub fn has_record(run: &Path, round: usize) -> bool {
    run_dir::round_dir(run, round)
        .join(DISTANCES_JSON)
        .is_file()
}

/// Every round record of the run, in round order; unreadable ones are left out.
pub fn read_records(run: &Path) -> Vec<RoundRecord> {
    let Ok(entries) = fs::read_dir(run.join("rounds")) else {
        return Vec::new();
    };
    let mut records: Vec<RoundRecord> = entries
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join(DISTANCES_JSON)).ok())
        .filter_map(|text| serde_json::from_str(&text).ok())
        .collect();
    records.sort_by_key(|r| r.round);
    records
}

/// One numeric column of `metrics.csv`.
type Column = fn(&MetricsRow) -> f64;

const METRIC_COLOURS: [RGBColor; 3] = [BLUE, GREEN, RGBColor(160, 60, 200)];

/// Rewrites the report from the metrics so far and the saved round records.
pub fn write(
    run: &Path,
    cfg: &TrainConfig,
    rows: &[MetricsRow],
    best_epoch: usize,
    tiles: &Tiles,
) -> std::io::Result<()> {
    let assets = run.join(ASSETS);
    fs::create_dir_all(&assets)?;
    let trained: Vec<&MetricsRow> = rows.iter().filter(|r| r.epoch > 0).collect();
    let curve = |f: Column, rows: &[&MetricsRow]| -> Vec<(f64, f64)> {
        rows.iter().map(|r| (r.epoch as f64, f(r))).collect()
    };
    plot::line_chart(
        &assets.join("loss.svg"),
        "Training loss (mean over active triplets)",
        "epoch",
        "loss",
        Legend::Upper,
        &[Series {
            name: "loss",
            points: curve(|r| r.loss, &trained),
            colour: RED,
        }],
    )?;
    let all: Vec<&MetricsRow> = rows.iter().collect();
    let metrics: [(&str, Column); 3] = [
        ("P@1", |r| r.p_at_1),
        ("R-Precision", |r| r.r_precision),
        ("MAP@R", |r| r.map_at_r),
    ];
    let series: Vec<Series> = metrics
        .iter()
        .zip(METRIC_COLOURS)
        .map(|(&(name, f), colour)| Series {
            name,
            points: curve(f, &all),
            colour,
        })
        .collect();
    plot::line_chart(
        &assets.join("metrics.svg"),
        "Validation retrieval (epoch 0: before training)",
        "epoch",
        "value",
        Legend::Lower,
        &series,
    )?;
    plot::line_chart(
        &assets.join("active.svg"),
        "Active triplets (non-zero loss)",
        "epoch",
        "fraction",
        Legend::Lower,
        &[Series {
            name: "active fraction",
            points: curve(|r| r.active_fraction, &trained),
            colour: BLUE,
        }],
    )?;
    let records = read_records(run);
    for record in &records {
        let stem = format!("round-{:03}", record.round);
        let sheet_path = assets.join(format!("{stem}-hardest.png"));
        // A round never changes once recorded, so its pictures are drawn once; the sheet is
        // written last, so its presence means both are there.
        if sheet_path.is_file() {
            continue;
        }
        plot::histogram_chart(
            &assets.join(format!("{stem}-distances.svg")),
            &format!(
                "Round {} (epoch {}): distances of mined triplets",
                record.round, record.first_epoch
            ),
            &format!("{} distance", cfg.loss.distance.name()),
            &[
                ("d(a,p)", &record.d_ap, BLUE),
                ("d(a,n)", &record.d_an, RED),
            ],
        )?;
        let numbered: Vec<(usize, &TripletRow)> = record
            .hardest
            .iter()
            .enumerate()
            .map(|(i, r)| (i + 1, r))
            .collect();
        let title = format!(
            "round {}: the {} hardest of {} triplets",
            record.round,
            numbered.len(),
            record.triplets
        );
        write_png(
            &sheet_path,
            &sheet::render(&numbered, &title, cfg.loss.margin, tiles),
        )?;
    }
    html::write(
        &run.join(REPORT_HTML),
        &page(run, cfg, rows, best_epoch, &records),
    )
}

/// Which classes met in the round's batches, when its regime composes batches from the graph.
fn composition_section(run: &Path, round: usize) -> String {
    let path = run_dir::round_dir(run, round).join(BATCHES_JSON);
    let Some(c) = fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str::<BatchComposition>(&text).ok())
    else {
        return String::new();
    };
    let rows: Vec<Vec<String>> = c
        .pairs
        .iter()
        .take(COMPOSITION_ROWS)
        .map(|(a, b, n)| vec![a.clone(), b.clone(), n.to_string()])
        .collect();
    format!(
        "<p>{} batches composed at {} level from {} refresh(es) of the neighbour graph; {:.0}% of the class pairs that met are graph neighbours. The pairs that met most:</p>\n{}",
        c.batches,
        html::escape(&c.level),
        c.refreshes,
        100.0 * c.neighbour_pair_share,
        html::table(&["class", "class", "batches together"], &rows)
    )
}

fn page(
    run: &Path,
    cfg: &TrainConfig,
    rows: &[MetricsRow],
    best_epoch: usize,
    records: &[RoundRecord],
) -> String {
    let done = rows.last().map_or(0, |r| r.epoch);
    let facts = vec![
        vec!["corpus".into(), cfg.corpus.display().to_string()],
        vec!["mining".into(), cfg.mining.name()],
        vec![
            "margin".into(),
            format!(
                "{} ({} distance)",
                cfg.loss.margin,
                cfg.loss.distance.name()
            ),
        ],
        vec!["epochs".into(), format!("{done} of {}", cfg.epochs)],
        vec!["best epoch".into(), best_epoch.to_string()],
    ];
    let mut body = html::table(&[], &facts);
    body += "<h2>Curves</h2>\n";
    for (file, alt) in [
        ("loss.svg", "training loss per epoch"),
        ("metrics.svg", "validation metrics per epoch"),
        ("active.svg", "fraction of active triplets per epoch"),
    ] {
        body +=
            &format!("<img src=\"{ASSETS}/{file}\" width=\"640\" height=\"360\" alt=\"{alt}\">\n");
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.epoch.to_string(),
                format!("{:.4}", r.loss),
                format!("{:.3}", r.active_fraction),
                r.triplets.to_string(),
                format!("{:.4}", r.p_at_1),
                format!("{:.4}", r.r_precision),
                format!("{:.4}", r.map_at_r),
                format!("{:.2e}", r.lr),
                format!("{:.1}", r.seconds),
            ]
        })
        .collect();
    body += &html::table(
        &[
            "epoch",
            "loss",
            "active",
            "triplets",
            "P@1",
            "R-Precision",
            "MAP@R",
            "lr",
            "seconds",
        ],
        &table,
    );
    body += "<h2>Mining rounds</h2>\n";
    if records.is_empty() {
        body += "<p class=\"muted\">No round recorded yet.</p>\n";
    }
    for r in records {
        let stem = format!("round-{:03}", r.round);
        body += &format!(
            "<h3>Round {} (from epoch {}, {}): {} triplets</h3>\n<p>{}</p>\n\
<img src=\"{ASSETS}/{stem}-distances.svg\" width=\"640\" height=\"360\" loading=\"lazy\" alt=\"distance histograms of round {}\">\n\
<p><img src=\"{ASSETS}/{stem}-hardest.png\" loading=\"lazy\" alt=\"hardest triplets of round {}\"></p>\n",
            r.round,
            r.first_epoch,
            html::escape(&r.mining),
            r.triplets,
            html::kind_counts(&r.kinds),
            r.round,
            r.round
        );
        body += &composition_section(run, r.round);
    }
    html::page(&format!("Training run {}", run.display()), "", &body)
}
