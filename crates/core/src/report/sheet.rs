//! Contact sheets: one row per triplet (anchor | positive | negative), each tile captioned
//! with its label and file name, and the row's distances, margin and kind beside it.

use image::{imageops, Rgb, RgbImage};

use super::text::{self, CHAR_W, LINE_H};
use super::tiles::Tiles;
use crate::definitions::{triplet_loss, TripletKind};
use crate::triplets::TripletRow;

const PAD: u32 = 8;
const INFO_CHARS: u32 = 22;
const PAPER: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([40, 40, 40]);
const RULE: Rgb<u8> = Rgb([220, 220, 220]);
const FRAME: u32 = 3;

/// Pixel geometry of a sheet; everything follows from the thumbnail size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SheetLayout {
    pub thumb: u32,
}

impl SheetLayout {
    /// Title line and column heads.
    pub const HEADER: u32 = PAD + 2 * LINE_H + PAD;
    /// Label and file name under each tile.
    pub const CAPTION: u32 = 2 * LINE_H;
    pub const INFO_WIDTH: u32 = INFO_CHARS * CHAR_W;

    pub fn row_height(self) -> u32 {
        self.thumb + Self::CAPTION + PAD
    }

    pub fn width(self) -> u32 {
        PAD + 3 * (self.thumb + PAD) + Self::INFO_WIDTH + PAD
    }

    pub fn height(self, rows: usize) -> u32 {
        Self::HEADER + rows as u32 * self.row_height() + PAD
    }

    /// Top-left corner of tile `column` (0 anchor, 1 positive, 2 negative) in row `row`.
    pub fn tile_origin(self, row: usize, column: u32) -> (u32, u32) {
        (
            PAD + column * (self.thumb + PAD),
            Self::HEADER + row as u32 * self.row_height(),
        )
    }
}

pub fn kind_colour(kind: TripletKind) -> Rgb<u8> {
    match kind {
        TripletKind::Hard => Rgb([200, 30, 30]),
        TripletKind::Semihard => Rgb([215, 130, 0]),
        TripletKind::Easy => Rgb([30, 140, 60]),
    }
}

/// Renders `rows` (each with its 1-based number in the whole listing) as one sheet.
pub fn render(rows: &[(usize, &TripletRow)], title: &str, margin: f32, tiles: &Tiles) -> RgbImage {
    let layout = SheetLayout {
        thumb: tiles.size(),
    };
    let mut img = RgbImage::from_pixel(layout.width(), layout.height(rows.len()), PAPER);
    let chars = (layout.width() - 2 * PAD) / CHAR_W;
    text::draw(
        &mut img,
        PAD,
        PAD,
        &text::fit(title, chars as usize, false),
        INK,
    );
    let heads = ["anchor", "positive", "negative"];
    for (column, head) in heads.iter().enumerate() {
        let (x, _) = layout.tile_origin(0, column as u32);
        text::draw(&mut img, x, PAD + LINE_H, head, INK);
    }
    let info_x = layout.tile_origin(0, 3).0;
    text::draw(&mut img, info_x, PAD + LINE_H, "distances", INK);
    let caption_chars = (layout.thumb / CHAR_W) as usize;
    for (r, (number, row)) in rows.iter().enumerate() {
        let (_, top) = layout.tile_origin(r, 0);
        if r > 0 {
            for x in PAD..layout.width() - PAD {
                img.put_pixel(x, top - PAD / 2, RULE);
            }
        }
        let cells = [
            (&row.anchor, &row.anchor_label),
            (&row.positive, &row.anchor_label),
            (&row.negative, &row.negative_label),
        ];
        for (column, (path, label)) in cells.iter().enumerate() {
            let (x, y) = layout.tile_origin(r, column as u32);
            imageops::replace(&mut img, &tiles.get(path).image, x as i64, y as i64);
            let below = y + layout.thumb + 2;
            text::draw(
                &mut img,
                x,
                below,
                &text::fit(label, caption_chars, false),
                INK,
            );
            let name = path.rsplit('/').next().unwrap_or(path);
            text::draw(
                &mut img,
                x,
                below + LINE_H,
                &text::fit(name, caption_chars, true),
                INK,
            );
        }
        let (nx, ny) = layout.tile_origin(r, 2);
        frame(&mut img, nx, ny, layout.thumb, kind_colour(row.kind));
        let info = [
            format!("#{number} {}", row.kind.name()),
            format!("d(a,p) {:.4}", row.d_ap),
            format!("d(a,n) {:.4}", row.d_an),
            format!("d(a,n)-d(a,p) {:.4}", row.d_an - row.d_ap),
            format!("margin {margin}"),
            format!("loss {:.4}", triplet_loss(row.d_ap, row.d_an, margin)),
        ];
        for (i, line) in info.iter().enumerate() {
            let colour = if i == 0 { kind_colour(row.kind) } else { INK };
            text::draw(&mut img, info_x, top + i as u32 * LINE_H, line, colour);
        }
    }
    img
}

/// A border drawn over the edge of a tile.
fn frame(img: &mut RgbImage, x: u32, y: u32, size: u32, colour: Rgb<u8>) {
    for i in 0..size {
        for w in 0..FRAME.min(size) {
            for (px, py) in [
                (x + i, y + w),
                (x + i, y + size - 1 - w),
                (x + w, y + i),
                (x + size - 1 - w, y + i),
            ] {
                img.put_pixel(px, py, colour);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tiles::PLACEHOLDER;

    fn row(kind: TripletKind) -> TripletRow {
        TripletRow {
            anchor: "a/1.png".into(),
            positive: "a/2.png".into(),
            negative: "b/1.png".into(),
            anchor_label: "a".into(),
            negative_label: "b".into(),
            d_ap: 0.5,
            d_an: 0.6,
            kind,
        }
    }

    #[test]
    fn the_sheet_has_the_layout_size_and_a_framed_negative() {
        let tiles = Tiles::new(&[], 48);
        let rows = [row(TripletKind::Hard), row(TripletKind::Easy)];
        let numbered: Vec<(usize, &TripletRow)> = rows.iter().enumerate().collect();
        let img = render(&numbered, "test", 0.2, &tiles);
        let layout = SheetLayout { thumb: 48 };
        assert_eq!(img.dimensions(), (layout.width(), layout.height(2)));
        let (x, y) = layout.tile_origin(1, 2);
        assert_eq!(*img.get_pixel(x, y), kind_colour(TripletKind::Easy));
        let (ax, ay) = layout.tile_origin(0, 0);
        assert_eq!(
            *img.get_pixel(ax + 47, ay + 47),
            PLACEHOLDER,
            "unknown path"
        );
    }
}
