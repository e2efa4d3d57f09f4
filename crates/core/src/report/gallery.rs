//! A paginated gallery of findings: a summary page plus, per section, numbered pages of items,
//! each item a short description and thumbnails with captions. Thumbnails are small PNG files
//! beside the pages, written once per sample, so large corpora stay quick to open.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use rayon::prelude::*;

use super::{html, Tiles};

/// One thumbnail of an item: a corpus path and the lines under it.
pub struct Member {
    pub path: String,
    pub caption: Vec<String>,
}

/// One finding: a heading, lines of explanation and the images it concerns.
pub struct Item {
    pub heading: String,
    pub lines: Vec<String>,
    pub members: Vec<Member>,
}

pub struct Section {
    /// File-name stem of the section's pages.
    pub id: &'static str,
    pub title: &'static str,
    /// What the section lists and how it is ordered.
    pub about: String,
    pub items: Vec<Item>,
}

pub struct Table {
    pub heading: String,
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

pub struct Gallery<'a> {
    pub title: String,
    /// Facts shown on the summary page as a two-column table.
    pub facts: Vec<(String, String)>,
    /// Tables shown after the sections on the summary page.
    pub tables: Vec<Table>,
    pub sections: Vec<Section>,
    pub per_page: usize,
    pub tiles: &'a Tiles,
}

pub const ASSETS: &str = "report";

impl Gallery<'_> {
    /// Writes `dir/<index>` and the folder `dir/report/` (pages and thumbnails). The folder is
    /// built under a temporary name and swapped in whole, then the summary page is written.
    pub fn write(&self, dir: &Path, index: &str) -> std::io::Result<()> {
        let assets = dir.join(ASSETS);
        let staging = crate::output::staging_dir(&assets);
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(staging.join("thumbs"))?;
        let result = self.write_assets(&staging, index);
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
            return result;
        }
        crate::output::publish_dir(&staging, &assets)?;
        html::write(&dir.join(index), &self.summary_page())
    }

    fn write_assets(&self, staging: &Path, index: &str) -> std::io::Result<()> {
        let paths: BTreeSet<&str> = self
            .sections
            .iter()
            .flat_map(|s| &s.items)
            .flat_map(|i| &i.members)
            .map(|m| m.path.as_str())
            .collect();
        let paths: Vec<&str> = paths.into_iter().collect();
        let bar = crate::progress::bar(paths.len() as u64, "thumbnails");
        paths.par_iter().try_for_each(|p| {
            bar.inc(1);
            self.tiles.save(p, &staging.join(thumb(p)))
        })?;
        bar.finish_and_clear();
        for section in &self.sections {
            let chunks: Vec<&[Item]> = section.items.chunks(self.per_page.max(1)).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let page = self.section_page(section, chunk, i + 1, chunks.len(), index);
                html::write(&staging.join(page_name(section.id, i + 1)), &page)?;
            }
        }
        Ok(())
    }

    fn summary_page(&self) -> String {
        let facts: Vec<Vec<String>> = self
            .facts
            .iter()
            .map(|(k, v)| vec![k.clone(), v.clone()])
            .collect();
        let mut body = html::table(&[], &facts);
        for s in &self.sections {
            body += &format!(
                "<h2>{} ({})</h2>\n<p>{}</p>\n",
                html::escape(s.title),
                s.items.len(),
                html::escape(&s.about)
            );
            if s.items.is_empty() {
                body += "<p class=\"muted\">Nothing found.</p>\n";
                continue;
            }
            let pages = s.items.len().div_ceil(self.per_page.max(1));
            let links: Vec<String> = (1..=pages)
                .map(|n| {
                    format!(
                        "<a href=\"{}\">{n}</a>",
                        html::href(&format!("{ASSETS}/{}", page_name(s.id, n)))
                    )
                })
                .collect();
            body += &format!("<p>Pages: {}</p>\n", links.join(" "));
            // The worst few inline, so the summary alone already shows what matters most.
            for item in s.items.iter().take(3) {
                body += &item_html(item, self.tiles.size(), ASSETS);
            }
        }
        for t in &self.tables {
            body += &format!(
                "<h2>{}</h2>\n{}\n",
                html::escape(&t.heading),
                html::table(&t.header, &t.rows)
            );
        }
        html::page(&self.title, "", &body)
    }

    fn section_page(
        &self,
        s: &Section,
        items: &[Item],
        n: usize,
        pages: usize,
        index: &str,
    ) -> String {
        let nav = html::pager(
            n,
            pages,
            |k| page_name(s.id, k),
            (&format!("../{index}"), "summary"),
        );
        let mut body = format!("<p>{}</p>\n", html::escape(&s.about));
        for item in items {
            body += &item_html(item, self.tiles.size(), ".");
        }
        html::page(&format!("{}: page {n} of {pages}", s.title), &nav, &body)
    }
}

pub fn page_name(section: &str, n: usize) -> String {
    format!("{section}-{n:03}.html")
}

/// The thumbnail file of a corpus path, relative to the assets folder: a hash, so any path
/// (spaces, unicode, deep folders) maps to one flat, safe file name.
pub fn thumb(path: &str) -> String {
    format!(
        "thumbs/{}.png",
        &crate::store::sha256_hex(path.as_bytes())[..20]
    )
}

fn item_html(item: &Item, size: u32, assets: &str) -> String {
    let lines: Vec<String> = item.lines.iter().map(|l| html::escape(l)).collect();
    let figures: String = item
        .members
        .iter()
        .map(|m| {
            html::figure(
                &format!("{assets}/{}", thumb(&m.path)),
                size,
                &m.path,
                &m.caption,
            )
        })
        .collect();
    format!(
        "<div class=\"item\"><div class=\"what\"><b>{}</b><br>{}</div>{figures}</div>\n",
        html::escape(&item.heading),
        lines.join("<br>")
    )
}
