//! Generates the bundled fixture corpora, deterministically (`make fixtures`):
//! `corpus/` (12 shape classes × 24 images, 32×32 RGB, varied position, scale, rotation,
//! colour, clutter and noise), `manifest.csv` (the same corpus as a manifest with splits),
//! `broken/` (valid images plus one file of each bad kind) and `planted.csv` + `planted/` (the
//! corpus with known defects for the audit: see `PLANTED_*`).

use std::f32::consts::PI;
use std::fs;
use std::path::Path;

use image::{Rgb, RgbImage};
use tripmine::rng::Rng;

const SIDE: u32 = 32;
const PER_CLASS: usize = 24;
const CLASSES: [&str; 12] = [
    "disc", "square", "triangle", "plus", "ring", "stripes", "checker", "cross", "halfdisc", "ell",
    "twodots", "star",
];

/// Whether shape-space point (u, v), roughly in [-1, 1]², lies inside the class's shape.
fn inside(class: usize, u: f32, v: f32) -> bool {
    let r = (u * u + v * v).sqrt();
    match class {
        0 => r < 0.55,
        1 => u.abs() < 0.5 && v.abs() < 0.5,
        2 => v > -0.45 && v < 0.55 && u.abs() < (0.55 - v) * 0.6,
        3 => (u.abs() < 0.17 && v.abs() < 0.6) || (v.abs() < 0.17 && u.abs() < 0.6),
        4 => r > 0.35 && r < 0.6,
        5 => u.abs() < 0.6 && v.abs() < 0.6 && ((v + 1.0) * 4.0).floor() as i32 % 2 == 0,
        6 => {
            u.abs() < 0.6
                && v.abs() < 0.6
                && (((u + 1.0) * 3.0).floor() as i32 + ((v + 1.0) * 3.0).floor() as i32) % 2 == 0
        }
        7 => ((u - v).abs() < 0.2 || (u + v).abs() < 0.2) && r < 0.7,
        8 => r < 0.6 && v > 0.0,
        9 => {
            (u > -0.5 && u < -0.2 && v.abs() < 0.55)
                || (v > 0.25 && v < 0.55 && u > -0.5 && u < 0.5)
        }
        10 => {
            ((u - 0.35).powi(2) + v * v).sqrt() < 0.25 || ((u + 0.35).powi(2) + v * v).sqrt() < 0.25
        }
        _ => r < 0.3 + 0.25 * (5.0 * v.atan2(u)).cos(),
    }
}

fn random_colour(rng: &mut Rng, lo: f64, hi: f64) -> [f32; 3] {
    [0, 1, 2].map(|_| (lo + (hi - lo) * rng.next_f64()) as f32)
}

fn draw(class: usize, rng: &mut Rng) -> RgbImage {
    // Rotation stays within ±30° so that "plus" and "cross" remain different classes.
    let angle = (rng.next_f64() as f32 - 0.5) * PI / 3.0;
    let scale = 0.45 + 0.35 * rng.next_f64() as f32;
    let (cx, cy) = (
        0.3 * (rng.next_f64() as f32 - 0.5),
        0.3 * (rng.next_f64() as f32 - 0.5),
    );
    let dark_background = rng.next_f64() < 0.5;
    let (bg, fg) = if dark_background {
        (random_colour(rng, 0.0, 0.35), random_colour(rng, 0.55, 1.0))
    } else {
        (random_colour(rng, 0.65, 1.0), random_colour(rng, 0.0, 0.45))
    };
    let clutter: Vec<([f32; 4], [f32; 3])> = (0..3)
        .map(|_| {
            let x = rng.next_f64() as f32 * 2.0 - 1.0;
            let y = rng.next_f64() as f32 * 2.0 - 1.0;
            ([x, y, x + 0.15, y + 0.15], random_colour(rng, 0.0, 1.0))
        })
        .collect();
    let (sin, cos) = angle.sin_cos();
    RgbImage::from_fn(SIDE, SIDE, |px, py| {
        let x = (px as f32 + 0.5) / SIDE as f32 * 2.0 - 1.0;
        let y = (py as f32 + 0.5) / SIDE as f32 * 2.0 - 1.0;
        let (dx, dy) = ((x - cx) / scale, (y - cy) / scale);
        let (u, v) = (cos * dx + sin * dy, -sin * dx + cos * dy);
        let mut c = if inside(class, u, v) { fg } else { bg };
        for (b, colour) in &clutter {
            if x > b[0] && x < b[2] && y > b[1] && y < b[3] {
                c = *colour;
            }
        }
        let noise = 0.06 * rng.normal() as f32;
        Rgb(c.map(|v| ((v + noise).clamp(0.0, 1.0) * 255.0).round() as u8))
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args().nth(1).unwrap_or_else(|| "fixtures".into());
    let root = Path::new(&root);
    fs::create_dir_all(root)?;
    let corpus = root.join("corpus");
    let _ = fs::remove_dir_all(&corpus);
    let mut manifest = csv::Writer::from_path(root.join("manifest.csv"))?;
    manifest.write_record(["path", "label", "split"])?;
    for (class, name) in CLASSES.iter().enumerate() {
        fs::create_dir_all(corpus.join(name))?;
        for i in 0..PER_CLASS {
            let mut rng = Rng::for_item(2026, (class * 1000 + i) as u64);
            let file = format!("{name}/{name}_{i:02}.png");
            draw(class, &mut rng).save(corpus.join(&file))?;
            let split = if i < PER_CLASS * 3 / 4 {
                "train"
            } else {
                "test"
            };
            manifest.write_record([&format!("corpus/{file}"), *name, split])?;
        }
    }
    manifest.flush()?;

    let broken = root.join("broken");
    let _ = fs::remove_dir_all(&broken);
    for (class, name) in [(0, "disc"), (1, "square")] {
        fs::create_dir_all(broken.join(name))?;
        for i in 0..3 {
            draw(class, &mut Rng::for_item(99, (class * 10 + i) as u64))
                .save(broken.join(format!("{name}/ok_{i}.png")))?;
        }
    }
    fs::create_dir_all(broken.join("lonely"))?;
    draw(4, &mut Rng::new(5)).save(broken.join("lonely/only.png"))?;
    let png = fs::read(broken.join("disc/ok_0.png"))?;
    fs::write(broken.join("disc/empty.png"), b"")?;
    fs::write(broken.join("disc/truncated.png"), &png[..png.len() / 2])?;
    fs::write(
        broken.join("square/notes.png"),
        b"these are notes, not pixels\n",
    )?;
    // A QOI header: recognised by the image crate, but tripmine is built without QOI support.
    fs::write(
        broken.join("square/picture.qoi"),
        b"qoif\0\0\0\x08\0\0\0\x08\x03\x00\xfe\x10\x20\x30",
    )?;
    fs::write(
        broken.join("square/corrupt.jpg"),
        b"\xff\xd8\xff\xe0\0\x10JFIF\0garbage garbage garbage",
    )?;
    fs::write(broken.join("stray.png"), &png)?;
    write_planted(root)?;
    println!(
        "wrote {}: corpus/, manifest.csv, broken/, planted.csv and planted/",
        root.display()
    );
    Ok(())
}

/// Byte-identical copies: (source in corpus/, new path, label, split).
const PLANTED_COPIES: [(&str, &str, &str, &str); 3] = [
    (
        "disc/disc_00.png",
        "planted/copies/disc_00_again.png",
        "disc",
        "train",
    ),
    (
        "star/star_03.png",
        "planted/conflict/star_03.png",
        "ring",
        "train",
    ),
    (
        "square/square_05.png",
        "planted/leak/square_05.png",
        "square",
        "test",
    ),
];

/// Corpus images listed under a wrong label: (path in corpus/, wrong label).
const PLANTED_MISLABELS: [(&str, &str); 6] = [
    ("ring/ring_07.png", "triangle"),
    ("plus/plus_02.png", "twodots"),
    ("checker/checker_11.png", "disc"),
    ("ell/ell_04.png", "stripes"),
    ("halfdisc/halfdisc_09.png", "cross"),
    ("triangle/triangle_14.png", "star"),
];

/// `planted.csv`: the fixture corpus (18 train, 6 test per class) with exact copies inside a
/// class, a copy under another label, a copy across splits, relabelled images and three
/// off-distribution noise images. The audit tests assert that each is found.
fn write_planted(root: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let planted = root.join("planted");
    let _ = fs::remove_dir_all(&planted);
    let mut rows: Vec<[String; 3]> = Vec::new();
    for name in CLASSES {
        for i in 0..PER_CLASS {
            let file = format!("{name}/{name}_{i:02}.png");
            let label = PLANTED_MISLABELS
                .iter()
                .find(|(p, _)| *p == file)
                .map_or(name, |(_, wrong)| *wrong);
            let split = if i < PER_CLASS * 3 / 4 {
                "train"
            } else {
                "test"
            };
            rows.push([
                format!("corpus/{file}"),
                label.to_string(),
                split.to_string(),
            ]);
        }
    }
    for (source, copy, label, split) in PLANTED_COPIES {
        let target = root.join(copy);
        fs::create_dir_all(target.parent().expect("has a folder"))?;
        fs::copy(root.join("corpus").join(source), &target)?;
        rows.push([copy.to_string(), label.to_string(), split.to_string()]);
    }
    fs::create_dir_all(planted.join("odd"))?;
    for i in 0..3 {
        let mut rng = Rng::for_item(4242, i);
        let img = RgbImage::from_fn(SIDE, SIDE, |_, _| {
            Rgb([0, 1, 2].map(|_| rng.below(256) as u8))
        });
        let path = format!("planted/odd/noise_{i}.png");
        img.save(root.join(&path))?;
        rows.push([path, "disc".to_string(), "train".to_string()]);
    }
    let mut manifest = csv::Writer::from_path(root.join("planted.csv"))?;
    manifest.write_record(["path", "label", "split"])?;
    for row in rows {
        manifest.write_record(&row)?;
    }
    manifest.flush()?;
    Ok(())
}
