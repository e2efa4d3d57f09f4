//! Decoding one image file into the network's input: channels, size and normalisation.

use std::fs;
use std::path::Path;

use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageReader};
use serde::{Deserialize, Serialize};

/// How an image becomes a network input. Stored in `model.json` so that a checkpoint is always
/// fed the way it was trained. Every image is first turned upright by its EXIF orientation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Square input side in pixels.
    pub input_size: u32,
    /// 1 (grey) or 3 (RGB).
    pub channels: u32,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// How a non-square image becomes square. Checkpoints written before this field existed
    /// stretched, so that is what a missing field means.
    #[serde(default = "Resize::legacy")]
    pub resize: Resize,
}

/// How an image is brought to the square input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Shorter side to the input size, then the centre square (aspect ratio kept, as
    /// torchvision's Resize + CenterCrop do for pretrained networks).
    CentreCrop,
    /// Both sides to the input size (distorts a non-square image).
    Stretch,
}

impl Resize {
    fn legacy() -> Self {
        Resize::Stretch
    }
}

/// ImageNet's per-channel mean and standard deviation (RGB), which ImageNet-pretrained
/// networks expect.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Preprocess {
    /// ImageNet statistics for RGB, mid-grey for one channel.
    pub fn standard(input_size: u32, channels: u32) -> Self {
        let (mean, std) = if channels == 1 {
            (vec![0.5], vec![0.25])
        } else {
            (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec())
        };
        Preprocess {
            input_size,
            channels,
            mean,
            std,
            resize: Resize::CentreCrop,
        }
    }

    /// Values per decoded image (C × H × W).
    pub fn len(&self) -> usize {
        (self.channels * self.input_size * self.input_size) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resized, channel-converted bytes of a decoded image in HWC order: the compact form
    /// (a quarter of the network input's size) in which decoded images are kept.
    pub fn pixels(&self, img: &DynamicImage) -> Vec<u8> {
        let s = self.input_size;
        let resized = match self.resize {
            Resize::CentreCrop => img.resize_to_fill(s, s, FilterType::Triangle),
            Resize::Stretch => img.resize_exact(s, s, FilterType::Triangle),
        };
        if self.channels == 1 {
            resized.into_luma8().into_raw()
        } else {
            resized.into_rgb8().into_raw()
        }
    }

    /// The network input value of every (channel, byte) pair, channel-major: the one
    /// definition of the normalisation, looked up rather than recomputed per pixel.
    fn value_table(&self) -> Vec<f32> {
        (0..self.channels as usize)
            .flat_map(|ch| {
                (0..=255u8).map(move |v| (v as f32 / 255.0 - self.mean[ch]) / self.std[ch])
            })
            .collect()
    }

    /// Normalised network input values of images given as concatenated HWC bytes from
    /// [`Preprocess::pixels`], in the same (channels-last) order; the network crate views them
    /// as N × C × S × S.
    pub fn input_values(&self, pixels: &[u8]) -> Vec<f32> {
        let table = self.value_table();
        let c = self.channels as usize;
        pixels
            .iter()
            .enumerate()
            .map(|(i, &v)| table[(i % c) * 256 + v as usize])
            .collect()
    }
}

/// Images above this many pixels are refused before any pixel is decoded: a decompression bomb
/// (a small file claiming 50,000 × 50,000) would otherwise allocate gigabytes. 100 megapixels
/// is a 400 MB RGBA buffer, beyond any photo a corpus holds.
pub const MAX_PIXELS: u64 = 100_000_000;
/// Longer side over shorter side above which an image cannot be resized to a square input
/// meaningfully (a 1 × 100,000 strip would keep one column of its pixels).
pub const MAX_ASPECT: u64 = 64;

/// Why an image of `width` × `height` is refused before decoding, if it is.
fn refuse_dimensions(width: u32, height: u32) -> Option<String> {
    let (w, h) = (u64::from(width), u64::from(height));
    if w == 0 || h == 0 {
        return Some(format!(
            "{width} × {height} pixels: an image with no pixels"
        ));
    }
    if w * h > MAX_PIXELS {
        return Some(format!(
            "{width} × {height} pixels is over the {MAX_PIXELS}-pixel limit (a decompression bomb or a scan too large to embed)"
        ));
    }
    if w.max(h) > MAX_ASPECT * w.min(h) {
        return Some(format!(
            "{width} × {height} pixels: longer than {MAX_ASPECT} times its width, too elongated to resize to a square input"
        ));
    }
    None
}

/// Decodes `file` by content (not extension) and turns it upright by its EXIF orientation (a
/// phone photo stored sideways is seen as it was taken). Dimensions are checked from the header
/// before any pixel is decoded ([`MAX_PIXELS`], [`MAX_ASPECT`]). The error is the reason
/// written to `skipped.csv`.
pub fn decode_image(file: &Path) -> Result<DynamicImage, String> {
    let meta = fs::metadata(file).map_err(|e| format!("unreadable: {e}"))?;
    if meta.len() == 0 {
        return Err("empty file (0 bytes)".into());
    }
    let mut head = [0u8; 64];
    let read = fs::File::open(file)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .map_err(|e| format!("unreadable: {e}"))?;
    // By content only: a file's extension does not make it an image.
    let Ok(format) = image::guess_format(&head[..read]) else {
        return Err("not an image (content matches no known image format)".into());
    };
    let mut reader = ImageReader::open(file).map_err(|e| format!("unreadable: {e}"))?;
    reader.set_format(format);
    let failed = |e: ImageError| match e {
        ImageError::Unsupported(u) => format!("unsupported format {format:?}: {u}"),
        ImageError::IoError(io) => format!("corrupt or truncated {format:?} image: {io}"),
        other => format!("corrupt or truncated {format:?} image: {other}"),
    };
    let mut decoder = reader.into_decoder().map_err(failed)?;
    let (width, height) = decoder.dimensions();
    if let Some(reason) = refuse_dimensions(width, height) {
        return Err(reason);
    }
    // A malformed EXIF block costs the rotation, not the image.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(failed)?;
    img.apply_orientation(orientation);
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_get_distinct_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            fs::write(&p, bytes).unwrap();
            p
        };
        let empty = write("e.png", b"");
        let text = write("t.png", b"hello, I am text");
        let qoi = write("q.qoi", b"qoif\0\0\0\x02\0\0\0\x02\x03\x00rest");
        assert!(decode_image(&empty).unwrap_err().starts_with("empty file"));
        assert!(decode_image(&text).unwrap_err().starts_with("not an image"));
        assert!(decode_image(&qoi)
            .unwrap_err()
            .starts_with("unsupported format"));
        assert!(decode_image(&dir.path().join("none.png"))
            .unwrap_err()
            .starts_with("unreadable"));
    }

    /// CRC-32 (PNG's), to forge a valid header.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn a_decompression_bomb_and_a_strip_are_refused_from_their_headers() {
        let dir = tempfile::tempdir().unwrap();
        // A 71-byte PNG claiming 50,000 × 50,000 pixels (2.5 gigapixels).
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(50_000u32.to_be_bytes());
        ihdr.extend(50_000u32.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(13u32.to_be_bytes());
        png.extend(&ihdr);
        png.extend(crc32(&ihdr).to_be_bytes());
        // The start of a compressed stream: the header is read, never a pixel.
        let idat = b"IDAT\x78\x9c";
        png.extend(2u32.to_be_bytes());
        png.extend(idat);
        png.extend(crc32(idat).to_be_bytes());
        png.extend(0u32.to_be_bytes());
        png.extend(b"IEND");
        png.extend(crc32(b"IEND").to_be_bytes());
        let bomb = dir.path().join("bomb.png");
        fs::write(&bomb, &png).unwrap();
        let reason = decode_image(&bomb).unwrap_err();
        assert!(reason.contains("50000 × 50000 pixels is over"), "{reason}");
        let strip = dir.path().join("strip.png");
        image::GrayImage::new(1, 100_000).save(&strip).unwrap();
        let reason = decode_image(&strip).unwrap_err();
        assert!(reason.contains("too elongated"), "{reason}");
        let fine = dir.path().join("fine.png");
        image::GrayImage::new(64, 48).save(&fine).unwrap();
        assert!(decode_image(&fine).is_ok());
    }

    #[test]
    fn input_values_are_normalised_per_channel_in_pixel_order() {
        let mut rgb = image::RgbImage::new(2, 1);
        rgb.put_pixel(0, 0, image::Rgb([255, 0, 51]));
        rgb.put_pixel(1, 0, image::Rgb([0, 255, 102]));
        let p = Preprocess {
            input_size: 2,
            channels: 3,
            mean: vec![0.0, 0.5, 0.0],
            std: vec![1.0, 0.5, 2.0],
            resize: Resize::Stretch,
        };
        let bytes = p.pixels(&DynamicImage::ImageRgb8(rgb));
        assert_eq!(bytes.len(), p.len());
        let x = p.input_values(&bytes);
        // Row 0 of the 2×2 stretch: (255, 0, 51) then (0, 255, 102), channels innermost.
        let want = [1.0, -1.0, 0.1, 0.0, 1.0, 0.2];
        for (got, want) in x[..6].iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{x:?}");
        }
    }
}
