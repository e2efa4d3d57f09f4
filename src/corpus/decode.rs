//! Decoding one image file into the network's input: channels, size and normalisation.

use std::fs;
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageError, ImageReader};
use serde::{Deserialize, Serialize};

/// How an image becomes a network input. Stored in `model.json` so that a checkpoint is always
/// fed the way it was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Square input side in pixels.
    pub input_size: u32,
    /// 1 (grey) or 3 (RGB).
    pub channels: u32,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Preprocess {
    /// ImageNet statistics for RGB, mid-grey for one channel.
    pub fn standard(input_size: u32, channels: u32) -> Self {
        let (mean, std) = if channels == 1 {
            (vec![0.5], vec![0.25])
        } else {
            (vec![0.485, 0.456, 0.406], vec![0.229, 0.224, 0.225])
        };
        Preprocess {
            input_size,
            channels,
            mean,
            std,
        }
    }

    /// Values per decoded image (C × H × W).
    pub fn len(&self) -> usize {
        (self.channels * self.input_size * self.input_size) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resized, channel-converted, normalised CHW values of a decoded image.
    pub fn apply(&self, img: &DynamicImage) -> Vec<f32> {
        let s = self.input_size;
        let resized = img.resize_exact(s, s, FilterType::Triangle);
        let plane = (s * s) as usize;
        let mut out = vec![0f32; self.len()];
        let raw: Vec<u8> = if self.channels == 1 {
            resized.into_luma8().into_raw()
        } else {
            resized.into_rgb8().into_raw()
        };
        let c = self.channels as usize;
        for (i, px) in raw.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                out[ch * plane + i] = (v as f32 / 255.0 - self.mean[ch]) / self.std[ch];
            }
        }
        out
    }
}

/// Decodes `file` by content (not extension). The error is the reason written to `skipped.csv`.
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
    reader.decode().map_err(|e| match e {
        ImageError::Unsupported(u) => format!("unsupported format {format:?}: {u}"),
        ImageError::IoError(io) => format!("corrupt or truncated {format:?} image: {io}"),
        other => format!("corrupt or truncated {format:?} image: {other}"),
    })
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

    #[test]
    fn apply_normalises_into_chw_planes() {
        let img =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(4, 4, image::Rgb([255, 0, 0])));
        let p = Preprocess {
            input_size: 2,
            channels: 3,
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
        };
        let v = p.apply(&img);
        assert_eq!(
            v,
            [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
    }
}
