//! Thumbnails of corpus images, fitted into square tiles. A path that is not in the corpus or
//! cannot be decoded becomes a placeholder tile that names it, so one bad row never fails a
//! whole page.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};

use super::text::{self, CHAR_W, LINE_H};
use crate::corpus::{decode_image, Sample};

pub const BACKGROUND: Rgb<u8> = Rgb([245, 245, 245]);
/// The placeholder's fill: a pale red no thumbnail letterbox uses.
pub const PLACEHOLDER: Rgb<u8> = Rgb([255, 222, 222]);
const PLACEHOLDER_INK: Rgb<u8> = Rgb([150, 0, 0]);

/// One fitted thumbnail, or a placeholder with the reason.
pub struct Tile {
    pub image: RgbImage,
    pub problem: Option<String>,
}

/// Memory the decoded thumbnails may hold before the cache starts over.
const CACHE_BYTES: usize = 64 << 20;

/// Thumbnails of one corpus at one size, shared between threads. Each path is decoded once
/// while the cache has room; a long listing empties it now and then rather than grow.
pub struct Tiles {
    files: HashMap<String, PathBuf>,
    size: u32,
    cache: Mutex<HashMap<String, Arc<Tile>>>,
    problems: Mutex<BTreeMap<String, String>>,
}

impl Tiles {
    pub fn new(samples: &[Sample], size: u32) -> Self {
        Tiles {
            files: samples
                .iter()
                .map(|s| (s.path.clone(), s.file.clone()))
                .collect(),
            size: size.max(1),
            cache: Mutex::new(HashMap::new()),
            problems: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    /// The tile of a corpus path (as the corpus names it).
    pub fn get(&self, path: &str) -> Arc<Tile> {
        if let Some(tile) = self.cache.lock().expect("tile cache").get(path) {
            return tile.clone();
        }
        let tile = Arc::new(match self.files.get(path) {
            None => self.placeholder(path, "not in the corpus"),
            Some(file) => match decode_image(file) {
                Ok(img) => Tile {
                    image: fit(&img.into_rgb8(), self.size),
                    problem: None,
                },
                Err(reason) => self.placeholder(path, &format!("unreadable: {reason}")),
            },
        });
        if let Some(why) = &tile.problem {
            self.problems
                .lock()
                .expect("tile problems")
                .insert(path.to_string(), why.clone());
        }
        let mut cache = self.cache.lock().expect("tile cache");
        let tile_bytes = (self.size as usize).pow(2) * 3;
        if (cache.len() + 1) * tile_bytes > CACHE_BYTES {
            cache.clear();
        }
        cache.insert(path.to_string(), tile.clone());
        tile
    }

    /// Every path whose tile is a placeholder so far, with the reason, sorted by path.
    pub fn problems(&self) -> Vec<(String, String)> {
        self.problems
            .lock()
            .expect("tile problems")
            .iter()
            .map(|(p, why)| (p.clone(), why.clone()))
            .collect()
    }

    /// Writes the tile of `path` as a PNG file (for HTML pages).
    pub fn save(&self, path: &str, to: &Path) -> std::io::Result<()> {
        super::write_png(to, &self.get(path).image)
    }

    fn placeholder(&self, path: &str, reason: &str) -> Tile {
        let mut image = RgbImage::from_pixel(self.size, self.size, PLACEHOLDER);
        let width = (self.size / CHAR_W).max(1) as usize;
        let mut lines = vec!["missing".to_string()];
        lines.extend(text::wrap(path, width));
        for (i, line) in lines.iter().enumerate() {
            text::draw(&mut image, 2, 2 + i as u32 * LINE_H, line, PLACEHOLDER_INK);
        }
        Tile {
            image,
            problem: Some(reason.to_string()),
        }
    }
}

/// The image scaled to fit a size×size square, centred on the background. Small images are
/// enlarged with nearest-neighbour so their pixels stay visible.
fn fit(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let scale = size as f64 / w.max(h).max(1) as f64;
    let (tw, th) = (
        ((w as f64 * scale).round() as u32).clamp(1, size),
        ((h as f64 * scale).round() as u32).clamp(1, size),
    );
    let filter = if scale >= 1.0 {
        FilterType::Nearest
    } else {
        FilterType::Triangle
    };
    let scaled = imageops::resize(img, tw, th, filter);
    let mut tile = RgbImage::from_pixel(size, size, BACKGROUND);
    imageops::replace(
        &mut tile,
        &scaled,
        ((size - tw) / 2) as i64,
        ((size - th) / 2) as i64,
    );
    tile
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitting_keeps_the_aspect_ratio_inside_the_square() {
        let wide = RgbImage::from_pixel(40, 20, Rgb([0, 0, 200]));
        let tile = fit(&wide, 80);
        assert_eq!(tile.dimensions(), (80, 80));
        assert_eq!(*tile.get_pixel(40, 40), Rgb([0, 0, 200]));
        assert_eq!(*tile.get_pixel(40, 5), BACKGROUND, "letterboxed above");
    }

    #[test]
    fn an_unknown_path_gets_a_placeholder_naming_it() {
        let tiles = Tiles::new(&[], 64);
        let tile = tiles.get("cats/gone.png");
        assert_eq!(tile.image.dimensions(), (64, 64));
        assert_eq!(*tile.image.get_pixel(63, 63), PLACEHOLDER);
        assert_eq!(
            tiles.problems(),
            [("cats/gone.png".to_string(), "not in the corpus".to_string())]
        );
    }
}
