//! Charts as SVG with plotters. SVG text is laid out by the browser, so no font is needed here.

use std::ops::Range;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

const SIZE: (u32, u32) = (640, 360);

/// A named line of (x, y) points; non-finite points are left out.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    pub colour: RGBColor,
}

/// Where a line chart's legend goes: away from where the lines are expected to end.
#[derive(Debug, Clone, Copy)]
pub enum Legend {
    Upper,
    Lower,
}

/// Counts of values in equal-width bins over [lo, hi]; values outside fall in the end bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub lo: f64,
    pub hi: f64,
    pub counts: Vec<u64>,
}

impl Histogram {
    pub fn new(lo: f64, hi: f64, bins: usize) -> Self {
        Histogram {
            lo,
            hi,
            counts: vec![0; bins.max(1)],
        }
    }

    pub fn add(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        let bins = self.counts.len();
        let at = ((value - self.lo) / (self.hi - self.lo) * bins as f64).floor();
        self.counts[(at.max(0.0) as usize).min(bins - 1)] += 1;
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn bin_width(&self) -> f64 {
        (self.hi - self.lo) / self.counts.len() as f64
    }
}

pub fn line_chart(
    path: &Path,
    title: &str,
    x: &str,
    y: &str,
    legend: Legend,
    series: &[Series],
) -> std::io::Result<()> {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().filter(finite).copied())
        .collect();
    let x_range = padded(all.iter().map(|p| p.0), false);
    let mut y_range = padded(all.iter().map(|p| p.1), true);
    if let Legend::Upper = legend {
        // Head room, so the legend box sits above the lines rather than on them.
        y_range.end += 0.25 * (y_range.end - y_range.start);
    }
    let mut svg = String::new();
    let frame = Frame {
        title,
        x,
        y,
        legend,
        x_range,
        y_range,
    };
    draw_lines(&mut svg, &frame, series).map_err(std::io::Error::other)?;
    write_svg(path, &svg)
}

struct Frame<'a> {
    title: &'a str,
    x: &'a str,
    y: &'a str,
    legend: Legend,
    x_range: Range<f64>,
    y_range: Range<f64>,
}

fn draw_lines(svg: &mut String, f: &Frame, series: &[Series]) -> Result<(), String> {
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(f.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(f.x_range.clone(), f.y_range.clone())
        .map_err(|e| e.to_string())?;
    // Epochs are whole numbers: at most one tick per unit.
    let x_ticks = ((f.x_range.end - f.x_range.start).floor() as usize + 1).clamp(2, 10);
    chart
        .configure_mesh()
        .x_desc(f.x)
        .y_desc(f.y)
        .x_labels(x_ticks)
        .x_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for s in series {
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .copied()
            .collect();
        let colour = s.colour;
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(|e| e.to_string())?;
    }
    let position = match f.legend {
        Legend::Upper => SeriesLabelPosition::UpperRight,
        Legend::Lower => SeriesLabelPosition::LowerRight,
    };
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Overlaid histograms sharing one bin layout (the first one's).
pub fn histogram_chart(
    path: &Path,
    title: &str,
    x: &str,
    layers: &[(&str, &Histogram, RGBColor)],
) -> std::io::Result<()> {
    let mut svg = String::new();
    draw_histograms(&mut svg, title, x, layers).map_err(std::io::Error::other)?;
    write_svg(path, &svg)
}

fn draw_histograms(
    svg: &mut String,
    title: &str,
    x: &str,
    layers: &[(&str, &Histogram, RGBColor)],
) -> Result<(), String> {
    let (lo, hi) = layers.first().map_or((0.0, 1.0), |l| (l.1.lo, l.1.hi));
    let top = layers
        .iter()
        .flat_map(|l| l.1.counts.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(lo..hi, 0.0..top * 1.08)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x)
        .y_desc("triplets")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for &(name, hist, colour) in layers {
        let w = hist.bin_width();
        chart
            .draw_series(hist.counts.iter().enumerate().map(|(i, &c)| {
                let left = hist.lo + i as f64 * w;
                Rectangle::new(
                    [(left, 0.0), (left + w, c as f64)],
                    colour.mix(0.45).filled(),
                )
            }))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.mix(0.45).filled())
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// One bar of a [`bar_chart`]: a mean with its standard deviation (0 for a single run).
pub struct Bar<'a> {
    pub name: &'a str,
    pub mean: f64,
    pub sd: f64,
    /// Drawn in the accent colour (tripmine's own contenders).
    pub ours: bool,
}

/// Horizontal bars with ± sd whiskers, one per contender, in the given order, each named
/// beside its bar: the benchmark pages' charts.
pub fn bar_chart(path: &Path, title: &str, x: &str, bars: &[Bar]) -> std::io::Result<()> {
    let mut svg = String::new();
    draw_bars(&mut svg, title, x, bars).map_err(std::io::Error::other)?;
    write_svg(path, &svg)
}

fn draw_bars(svg: &mut String, title: &str, x: &str, bars: &[Bar]) -> Result<(), String> {
    let height = 70 + 34 * bars.len() as u32;
    let root = SVGBackend::with_string(svg, (SIZE.0 + 160, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let hi = bars
        .iter()
        .map(|b| b.mean + b.sd)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    // Room on the right for the names.
    let x_range = 0.0..(hi * 1.6).max(1e-9);
    let n = bars.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(8)
        .build_cartesian_2d(x_range, 0.0..n)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x)
        .disable_y_mesh()
        .disable_y_axis()
        .draw()
        .map_err(|e| e.to_string())?;
    let accent = RGBColor(31, 119, 180);
    let other = RGBColor(170, 170, 170);
    for (i, b) in bars.iter().enumerate() {
        // The first bar at the top.
        let y = n - 1.0 - i as f64;
        let colour = if b.ours { accent } else { other };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y + 0.2), (b.mean, y + 0.8)],
                colour.filled(),
            )))
            .map_err(|e| e.to_string())?;
        if b.sd > 0.0 {
            let whisker = [(b.mean - b.sd, y + 0.5), (b.mean + b.sd, y + 0.5)];
            chart
                .draw_series(std::iter::once(PathElement::new(
                    whisker.to_vec(),
                    BLACK.stroke_width(2),
                )))
                .map_err(|e| e.to_string())?;
        }
        let label = if b.sd > 0.0 {
            format!("{} {:.4} ± {:.4}", b.name, b.mean, b.sd)
        } else {
            format!("{} {:.4}", b.name, b.mean)
        };
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (b.mean + b.sd.max(0.0) + hi * 0.02, y + 0.62),
                ("sans-serif", 13),
            )))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// The span of `values` with a little room; a single value or none still gives a range.
fn padded(values: impl Iterator<Item = f64>, from_zero: bool) -> Range<f64> {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    if from_zero && lo > 0.0 {
        lo = 0.0;
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    let room = (hi - lo) * 0.05;
    (lo - if from_zero && lo == 0.0 { 0.0 } else { room })..(hi + room)
}

fn write_svg(path: &Path, svg: &str) -> std::io::Result<()> {
    use std::io::Write;
    crate::output::write_atomic(path, |w| w.write_all(svg.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_chart_names_every_bar_with_its_figures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bars.svg");
        let bars = [
            Bar {
                name: "ours",
                mean: 0.3835,
                sd: 0.007,
                ours: true,
            },
            Bar {
                name: "theirs",
                mean: 0.2885,
                sd: 0.0,
                ours: false,
            },
        ];
        bar_chart(&path, "MAP@R", "test MAP@R", &bars).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") || svg.contains("<svg"));
        assert!(
            svg.contains("ours 0.3835 ± 0.0070") && svg.contains("theirs 0.2885"),
            "{svg}"
        );
    }

    #[test]
    fn histogram_bins_clamp_the_ends() {
        let mut h = Histogram::new(0.0, 2.0, 4);
        for v in [0.1, 0.6, 1.99, 2.0, 5.0, -1.0, f64::NAN] {
            h.add(v);
        }
        assert_eq!(h.counts, [2, 1, 0, 3]);
        assert_eq!(h.total(), 6);
    }

    #[test]
    fn charts_are_svg_with_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let s = Series {
            name: "MAP@R",
            points: vec![(0.0, 0.1), (1.0, f64::NAN), (2.0, 0.3)],
            colour: BLUE,
        };
        line_chart(&path, "metrics", "epoch", "value", Legend::Lower, &[s]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("MAP@R") && svg.contains("epoch"));
        let mut h = Histogram::new(0.0, 2.0, 10);
        h.add(0.5);
        histogram_chart(&path, "d", "distance", &[("d(a,p)", &h, RED)]).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("d(a,p)"));
    }
}
