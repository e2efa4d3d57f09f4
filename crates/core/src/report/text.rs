//! Text drawn into images with an 8×8 bitmap font, so contact sheets need no system fonts.

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

/// Glyph cell width and the height of one text line, in pixels.
pub const CHAR_W: u32 = 8;
pub const LINE_H: u32 = 12;

/// Draws `text` with its top-left corner at (x, y), clipped to the image; characters outside
/// the font's Latin and Greek sets are drawn as '?'.
pub fn draw(img: &mut RgbImage, x: u32, y: u32, text: &str, colour: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::LATIN_FONTS.get(ch))
            .or_else(|| font8x8::GREEK_FONTS.get(ch))
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        let left = x + i as u32 * CHAR_W;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8u32 {
                let (px, py) = (left + col, y + row as u32);
                if bits >> col & 1 == 1 && px < img.width() && py < img.height() {
                    img.put_pixel(px, py, colour);
                }
            }
        }
    }
}

/// `text` cut to at most `max` characters, with '~' marking the cut. Paths keep their end,
/// where the file name is; labels keep their start.
pub fn fit(text: &str, max: usize, keep_end: bool) -> String {
    let n = text.chars().count();
    if n <= max {
        return text.to_string();
    }
    if max == 0 {
        return String::new();
    }
    if keep_end {
        let tail: String = text.chars().skip(n - (max - 1)).collect();
        format!("~{tail}")
    } else {
        let head: String = text.chars().take(max - 1).collect();
        format!("{head}~")
    }
}

/// `text` broken into lines of at most `width` characters (hard wrap: paths have no spaces).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(width.max(1))
        .map(|c| c.iter().collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitting_keeps_the_informative_end() {
        assert_eq!(fit("cat", 5, false), "cat");
        assert_eq!(fit("long-label", 5, false), "long~");
        assert_eq!(fit("dir/sub/img.png", 8, true), "~img.png");
        assert_eq!(wrap("abcdefg", 3), ["abc", "def", "g"]);
    }

    #[test]
    fn drawing_marks_pixels_inside_the_glyph_cells_only() {
        let mut img = RgbImage::new(40, 10);
        draw(&mut img, 0, 0, "Hé", Rgb([255, 255, 255]));
        let lit: Vec<(u32, u32)> = img
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0 != [0, 0, 0])
            .map(|(x, y, _)| (x, y))
            .collect();
        assert!(lit.iter().any(|&(x, _)| x < 8), "H drawn");
        assert!(lit.iter().any(|&(x, _)| (8..16).contains(&x)), "é drawn");
        assert!(lit.iter().all(|&(x, y)| x < 16 && y < 8));
    }
}
