//! Pictures and pages for people: contact sheets of triplets, thumbnail tiles, SVG charts and
//! static HTML. `view`, the audit and the trainer build their reports from these pieces.

pub mod gallery;
pub mod html;
pub mod plot;
pub mod sheet;
pub mod text;
pub mod tiles;

pub use sheet::SheetLayout;
pub use tiles::Tiles;

use std::path::Path;

use image::RgbImage;

/// Writes an image as PNG, atomically.
pub fn write_png(path: &Path, img: &RgbImage) -> std::io::Result<()> {
    crate::output::write_atomic(path, |w| {
        img.write_to(w, image::ImageFormat::Png)
            .map_err(std::io::Error::other)
    })
}
