//! `tripmine view`: contact sheets of any triplet CSV, as PNG pages and static HTML pages that
//! link them (`index.html`, `page-NNN.html`). Paths are resolved through the corpus listing;
//! a path it does not have becomes a placeholder tile, never an error.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::corpus::{self, CorpusError};
use crate::definitions::{triplet_loss, TripletKind, DEFAULT_MARGIN};
use crate::report::{html, sheet, write_png, Tiles};
use crate::rng::Rng;
use crate::triplets::{self, TripletRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    /// Smallest d(a,n) − d(a,p) first.
    Hardest,
    /// A seeded shuffle: an unbiased look at what was mined.
    Random,
    /// By anchor label, hardest first within each.
    Label,
}

impl SortOrder {
    pub fn name(self) -> &'static str {
        match self {
            SortOrder::Hardest => "hardest",
            SortOrder::Random => "random",
            SortOrder::Label => "label",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ViewConfig {
    pub triplets: PathBuf,
    pub corpus: PathBuf,
    pub out: PathBuf,
    pub per_page: usize,
    pub sort: SortOrder,
    pub limit: Option<usize>,
    pub thumb: u32,
    pub seed: u64,
    /// The margin shown with each row; `None` reads the CSV's sidecar JSON, else the default.
    pub margin: Option<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("{0}")]
    Triplets(String),
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error("refusing to write into {0}: it is not empty and holds no index.html of an earlier `tripmine view`; choose another --out or empty it")]
    Foreign(PathBuf),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl crate::exit::Classify for ViewError {
    fn is_input_error(&self) -> bool {
        !matches!(self, ViewError::Write { .. })
    }
}

pub struct ViewSummary {
    pub rows: usize,
    pub shown: usize,
    pub pages: usize,
    pub margin: f32,
    /// Paths drawn as placeholders, with the reason.
    pub missing: Vec<(String, String)>,
    pub index: PathBuf,
}

pub const INDEX: &str = "index.html";

pub fn page_png(n: usize) -> String {
    format!("page-{n:03}.png")
}

pub fn page_html(n: usize) -> String {
    format!("page-{n:03}.html")
}

pub fn run(cfg: &ViewConfig) -> Result<ViewSummary, ViewError> {
    // Pages of an earlier view are replaced; anything else in --out is not ours to overwrite.
    if crate::output::is_foreign(&cfg.out, INDEX) {
        return Err(ViewError::Foreign(cfg.out.clone()));
    }
    let mut rows = triplets::read(&cfg.triplets).map_err(ViewError::Triplets)?;
    let corpus = corpus::open(&cfg.corpus)?;
    let margin = cfg
        .margin
        .or_else(|| sidecar_margin(&cfg.triplets))
        .unwrap_or(DEFAULT_MARGIN);
    let total = rows.len();
    sort(&mut rows, cfg.sort, cfg.seed);
    rows.truncate(cfg.limit.unwrap_or(usize::MAX));
    let tiles = Tiles::new(&corpus.samples, cfg.thumb);
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ViewError::Write { path, source }
    };
    fs::create_dir_all(&cfg.out).map_err(write_err(&cfg.out))?;
    let per_page = cfg.per_page.max(1);
    let numbered: Vec<(usize, &TripletRow)> =
        rows.iter().enumerate().map(|(i, r)| (i + 1, r)).collect();
    let chunks: Vec<&[(usize, &TripletRow)]> = numbered.chunks(per_page).collect();
    let pages = chunks.len();
    let name = cfg
        .triplets
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let bar = crate::progress::bar(pages as u64, "pages");
    chunks.par_iter().enumerate().try_for_each(|(i, chunk)| {
        let n = i + 1;
        let title = format!(
            "{name}: page {n}/{pages}, triplets {}-{} of {} (by {})",
            chunk[0].0,
            chunk[chunk.len() - 1].0,
            rows.len(),
            cfg.sort.name()
        );
        let img = sheet::render(chunk, &title, margin, &tiles);
        let png = cfg.out.join(page_png(n));
        write_png(&png, &img).map_err(write_err(&png))?;
        let page = cfg.out.join(page_html(n));
        html::write(
            &page,
            &page_body(chunk, n, pages, &title, margin, img.dimensions()),
        )
        .map_err(write_err(&page))?;
        bar.inc(1);
        Ok::<(), ViewError>(())
    })?;
    bar.finish_and_clear();
    remove_stale_pages(&cfg.out, pages);
    let missing = tiles.problems();
    let index = cfg.out.join(INDEX);
    let body = index_body(cfg, &rows, total, pages, margin, &missing);
    let title = format!("Triplets of {name}");
    let nav = html::pager(0, pages, page_html, (INDEX, "index"));
    html::write(&index, &html::page(&title, &nav, &body)).map_err(write_err(&index))?;
    Ok(ViewSummary {
        rows: total,
        shown: rows.len(),
        pages,
        margin,
        missing,
        index,
    })
}

pub fn sort(rows: &mut [TripletRow], order: SortOrder, seed: u64) {
    match order {
        SortOrder::Hardest => rows.sort_by(triplets::harder_first),
        SortOrder::Label => rows.sort_by(|a, b| {
            a.anchor_label
                .cmp(&b.anchor_label)
                .then_with(|| triplets::harder_first(a, b))
        }),
        SortOrder::Random => {
            // Shuffle a canonical order, so the same seed gives the same pages for any row order.
            rows.sort_by(triplets::harder_first);
            Rng::new(seed).shuffle(rows);
        }
    }
}

fn sidecar_margin(csv: &Path) -> Option<f32> {
    let text = fs::read_to_string(crate::triplets::sidecar_path(csv)?).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("margin")?.as_f64().map(|m| m as f32)
}

fn page_body(
    chunk: &[(usize, &TripletRow)],
    n: usize,
    pages: usize,
    title: &str,
    margin: f32,
    (w, h): (u32, u32),
) -> String {
    let table_rows: Vec<Vec<String>> = chunk
        .iter()
        .map(|(i, r)| {
            vec![
                i.to_string(),
                r.kind.name().to_string(),
                r.anchor.clone(),
                r.positive.clone(),
                r.anchor_label.clone(),
                r.negative.clone(),
                r.negative_label.clone(),
                format!("{:.4}", r.d_ap),
                format!("{:.4}", r.d_an),
                format!("{:.4}", triplet_loss(r.d_ap, r.d_an, margin)),
            ]
        })
        .collect();
    let body = format!(
        "<p><img src=\"{}\" width=\"{w}\" height=\"{h}\" alt=\"contact sheet page {n}\"></p>\n{}",
        html::href(&page_png(n)),
        html::table(
            &[
                "#",
                "kind",
                "anchor",
                "positive",
                "label",
                "negative",
                "negative label",
                "d(a,p)",
                "d(a,n)",
                "loss"
            ],
            &table_rows
        )
    );
    html::page(
        title,
        &html::pager(n, pages, page_html, (INDEX, "index")),
        &body,
    )
}

fn index_body(
    cfg: &ViewConfig,
    rows: &[TripletRow],
    total: usize,
    pages: usize,
    margin: f32,
    missing: &[(String, String)],
) -> String {
    let mut kinds: BTreeMap<TripletKind, usize> = BTreeMap::new();
    for r in rows {
        *kinds.entry(r.kind).or_default() += 1;
    }

    let mut body = format!(
        "<p>{} of {total} triplets from <code>{}</code>, sorted by {}, {} per page; corpus <code>{}</code>; margin {margin}.</p>\n<p>{}</p>\n",
        rows.len(),
        html::escape(&cfg.triplets.display().to_string()),
        cfg.sort.name(),
        cfg.per_page.max(1),
        html::escape(&cfg.corpus.display().to_string()),
        html::kind_counts(&kinds),
    );
    if !missing.is_empty() {
        body += &format!(
            "<h2>{} image(s) drawn as placeholders</h2>\n{}",
            missing.len(),
            html::table(
                &["path", "problem"],
                &missing
                    .iter()
                    .map(|(p, why)| vec![p.clone(), why.clone()])
                    .collect::<Vec<_>>()
            )
        );
    }
    if pages > 0 {
        body += &format!(
            "<h2>Page 1</h2>\n<p><a href=\"{}\"><img src=\"{}\" alt=\"contact sheet page 1\"></a></p>\n",
            html::href(&page_html(1)),
            html::href(&page_png(1)),
        );
    } else {
        body += "<p>The CSV has no triplets.</p>";
    }
    body
}

/// Pages of an earlier, longer listing would otherwise still be linked from nowhere.
fn remove_stale_pages(dir: &Path, pages: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let number = name
            .strip_prefix("page-")
            .and_then(|rest| {
                rest.strip_suffix(".png")
                    .or_else(|| rest.strip_suffix(".html"))
            })
            .and_then(|n| n.parse::<usize>().ok());
        if number.is_some_and(|n| n > pages) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(anchor: &str, label: &str, d_ap: f32, d_an: f32) -> TripletRow {
        TripletRow {
            anchor: anchor.into(),
            positive: "p".into(),
            negative: "n".into(),
            anchor_label: label.into(),
            negative_label: "x".into(),
            d_ap,
            d_an,
            kind: TripletKind::classify(d_ap, d_an, 0.2),
        }
    }

    #[test]
    fn orders_put_the_hardest_first_and_random_is_seeded() {
        let rows = vec![
            row("a", "b", 0.5, 0.9),
            row("b", "a", 0.5, 0.4),
            row("c", "b", 0.5, 0.6),
        ];
        let anchors = |rs: &[TripletRow]| rs.iter().map(|r| r.anchor.clone()).collect::<Vec<_>>();
        let mut hardest = rows.clone();
        sort(&mut hardest, SortOrder::Hardest, 0);
        assert_eq!(anchors(&hardest), ["b", "c", "a"]);
        let mut by_label = rows.clone();
        sort(&mut by_label, SortOrder::Label, 0);
        assert_eq!(anchors(&by_label), ["b", "c", "a"]);
        let (mut r1, mut r2) = (rows.clone(), rows.clone());
        r2.reverse();
        sort(&mut r1, SortOrder::Random, 3);
        sort(&mut r2, SortOrder::Random, 3);
        assert_eq!(r1, r2);
    }
}
