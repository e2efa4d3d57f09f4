//! `tripmine view` end to end: contact sheets of mined triplets, their HTML pages, missing
//! images, and (when asked for) a look at the page in headless Chromium.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use tripmine::report::tiles::PLACEHOLDER;
use tripmine::report::SheetLayout;

/// Mines the fixtures (a fresh network, semi-hard and hard) into `dir/triplets.csv`.
fn mined_triplets(dir: &Path) -> std::path::PathBuf {
    let emb = dir.join("emb");
    embed_fixtures(&emb, 5);
    let csv = dir.join("triplets.csv");
    ok(&[
        "mine",
        "--embeddings",
        s(&emb),
        "--out",
        s(&csv),
        "--strategy",
        "semihard=0.5,hard=0.5",
    ]);
    csv
}

/// `tripmine view CSV --corpus fixtures/corpus --out OUT EXTRA...`.
fn view(csv: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let corpus = fixtures().join("corpus");
    let mut args = vec!["view", s(csv), "--corpus", s(&corpus), "--out", s(out)];
    args.extend_from_slice(extra);
    tripmine(&args)
}

fn rgb(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_rgb8()
}

fn distinct_colours(img: &image::RgbImage, x: u32, y: u32, size: u32) -> usize {
    let mut colours = std::collections::HashSet::new();
    for dy in 0..size {
        for dx in 0..size {
            colours.insert(img.get_pixel(x + dx, y + dy).0);
        }
    }
    colours.len()
}

#[test]
fn sheets_have_the_layout_size_and_every_link_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let csv = mined_triplets(dir.path());
    let rows = read_csv(&csv).len();
    assert!(rows > 10, "{rows} triplets mined");
    let out = dir.path().join("view");
    let (code, stdout, stderr) = view(
        &csv,
        &out,
        &["--per-page", "4", "--limit", "10", "--thumb-size", "48"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("rendered 10 of {rows} triplets on 3 page(s)")),
        "{stdout}"
    );
    let layout = SheetLayout { thumb: 48 };
    for (page, expected_rows) in [(1, 4), (2, 4), (3, 2)] {
        let img = rgb(&out.join(format!("page-{page:03}.png")));
        assert_eq!(
            img.dimensions(),
            (layout.width(), layout.height(expected_rows)),
            "page {page}"
        );
        for row in 0..expected_rows {
            for column in 0..3 {
                let (x, y) = layout.tile_origin(row, column);
                assert_ne!(
                    *img.get_pixel(x + 24, y + 47),
                    PLACEHOLDER,
                    "page {page} row {row}"
                );
                // A real thumbnail: the fixtures' shapes on textured backgrounds.
                assert!(
                    distinct_colours(&img, x + 4, y + 4, 40) > 4,
                    "page {page} row {row} tile {column}"
                );
            }
        }
    }
    assert!(!out.join("page-004.png").exists());
    let files = linked_files(&out.join("index.html"));
    for page in 1..=3 {
        for ext in ["png", "html"] {
            let name = format!("page-{page:03}.{ext}");
            assert!(
                files.iter().any(|f| f.ends_with(&name)),
                "{name} not reachable from index.html"
            );
        }
    }

    // A shorter listing into the same folder leaves no stale page behind.
    assert_eq!(view(&csv, &out, &["--per-page", "4", "--limit", "3"]).0, 0);
    assert!(out.join("page-001.png").is_file() && !out.join("page-002.png").exists());
}

#[test]
fn a_path_missing_from_the_corpus_renders_a_placeholder_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("t.csv");
    fs::write(
        &csv,
        "anchor,positive,negative,anchor_label,negative_label,d_ap,d_an,kind\n\
         disc/disc_00.png,disc/disc_01.png,star/star_00.png,disc,star,0.5,0.9,easy\n\
         disc/disc_02.png,disc/disc_03.png,gone/ghost.png,disc,gone,0.5,0.4,hard\n",
    )
    .unwrap();
    let out = dir.path().join("view");
    let (code, stdout, stderr) = view(&csv, &out, &["--thumb-size", "64"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("rendered 2 of 2"), "{stdout}");
    assert!(
        stderr.contains("gone/ghost.png: not in the corpus"),
        "{stderr}"
    );
    let img = rgb(&out.join("page-001.png"));
    let layout = SheetLayout { thumb: 64 };
    assert_eq!(img.dimensions(), (layout.width(), layout.height(2)));
    // Hardest first: the hard row (with the ghost) is row 0; its negative is the placeholder.
    let (x, y) = layout.tile_origin(0, 2);
    assert_eq!(*img.get_pixel(x + 60, y + 60), PLACEHOLDER);
    let (x, y) = layout.tile_origin(1, 2);
    assert_ne!(*img.get_pixel(x + 60, y + 60), PLACEHOLDER);
    let index = fs::read_to_string(out.join("index.html")).unwrap();
    assert!(
        index.contains("gone/ghost.png"),
        "index names the missing file"
    );
    linked_files(&out.join("index.html"));
}

#[test]
fn a_csv_without_the_tripmine_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("t.csv");
    fs::write(&csv, "a,b,c\n1,2,3\n").unwrap();
    let out = dir.path().join("view");
    let (code, _, stderr) = view(&csv, &out, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("t.csv") && stderr.contains("header"),
        "{stderr}"
    );
    assert!(!out.join("index.html").exists());
}

/// `--out` replaces an earlier view's pages, but a non-empty folder of something else is
/// refused, untouched (as `embed` and `audit` refuse).
#[test]
fn a_foreign_out_folder_is_refused_and_an_earlier_view_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let csv = mined_triplets(dir.path());
    let foreign = dir.path().join("photos");
    fs::create_dir_all(&foreign).unwrap();
    fs::write(foreign.join("holiday.jpg"), b"not ours").unwrap();
    let (code, _, stderr) = view(&csv, &foreign, &["--limit", "4"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("photos") && stderr.contains("not empty"),
        "{stderr}"
    );
    assert_eq!(fs::read_dir(&foreign).unwrap().count(), 1);
    let out = dir.path().join("view");
    for _ in 0..2 {
        let (code, _, stderr) = view(&csv, &out, &["--limit", "4"]);
        assert_eq!(code, 0, "{stderr}");
    }
}

/// Opens the contact-sheet index and the audit report in headless Chromium and checks the
/// screenshots show something. Runs when `TRIPMINE_CHROMIUM` names the browser, as
/// `make test BROWSER=1` (and CI) does after installing Debian's chromium.
#[test]
fn pages_render_in_headless_chromium() {
    let Some(chromium) = std::env::var_os("TRIPMINE_CHROMIUM") else {
        eprintln!("skipped: set TRIPMINE_CHROMIUM (make test BROWSER=1) to run the browser check");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let csv = mined_triplets(dir.path());
    let out = dir.path().join("view");
    let (code, _, stderr) = view(&csv, &out, &[]);
    assert_eq!(code, 0, "{stderr}");
    // The planted corpus: its copies and noise images are found without a trained model
    // (identical pixels, the pixel view), so the report has thumbnails to draw.
    let planted = fixtures().join("planted.csv");
    let planted_emb = dir.path().join("planted-emb");
    ok(&[
        "embed",
        "--corpus",
        s(&planted),
        "--out",
        s(&planted_emb),
        "--dim",
        "32",
        "--input-size",
        "32",
    ]);
    let audit = dir.path().join("audit");
    ok(&[
        "audit",
        "--corpus",
        s(&planted),
        "--embeddings",
        s(&planted_emb),
        "--out",
        s(&audit),
    ]);
    for page in [out.join("index.html"), audit.join("report.html")] {
        let shot = dir.path().join("shot.png");
        let _ = fs::remove_file(&shot);
        let status = std::process::Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1024,1400",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("profile").display()
            ))
            .arg(format!("--screenshot={}", shot.display()))
            .arg(format!("file://{}", page.canonicalize().unwrap().display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("start chromium");
        assert!(status.success(), "chromium on {}: {status}", page.display());
        let img = rgb(&shot);
        assert_eq!(img.dimensions(), (1024, 1400));
        let share = |test: fn(&[u8; 3]) -> bool| {
            img.pixels().filter(|p| test(&p.0)).count() as f64 / (1024.0 * 1400.0)
        };
        let inked = share(|c| c.iter().any(|&v| v < 200));
        // Text and tables are grey and links cover a few hundred pixels, so colour over 0.5%
        // of the page means the tiles or thumbnails drew (the fixtures are coloured shapes on
        // coloured backgrounds). A text-only report measured 4.7% drawn and 0.0% in colour.
        let colourful = share(|c| c.iter().max().unwrap() - c.iter().min().unwrap() > 60);
        eprintln!(
            "{}: {:.1}% of the screenshot is drawn, {:.1}% in colour",
            page.display(),
            100.0 * inked,
            100.0 * colourful
        );
        assert!(
            inked > 0.02,
            "{}: blank screenshot ({inked:.4})",
            page.display()
        );
        assert!(
            colourful > 0.005,
            "{}: screenshot lacks images ({colourful:.4})",
            page.display()
        );
    }
}
