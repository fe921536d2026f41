//! The `--plots` charts: one line with markers per contender against N,
//! N on a log scale, written as SVG by `plotters` (its SVG backend only,
//! without the `ttf` feature: text is `<text>` elements, laid out with
//! plotters' estimate of glyph widths, so no font file is read here and
//! the viewer draws the text in its own sans-serif).

use std::path::Path;

use anyhow::{bail, Result};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// One contender's line.
pub struct Series {
    pub label: String,
    /// Its colour, the same in every chart: an index into [`COLOURS`].
    pub colour: usize,
    /// (N, value), N ascending.
    pub points: Vec<(f64, f64)>,
}

/// One chart.
pub struct Chart<'a> {
    pub title: &'a str,
    /// The y axis label, with its unit.
    pub y_desc: &'a str,
    /// A log scale on y too (for values that span orders of magnitude).
    pub log_y: bool,
    pub series: &'a [Series],
}

/// Colour-blind safe (Okabe and Ito): grey, blue, vermilion, green.
pub const COLOURS: [RGBColor; 4] = [
    RGBColor(110, 110, 110),
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
];

const SIZE: (u32, u32) = (800, 500);

/// Writes `chart` to `path` as SVG.
pub fn write(path: &Path, chart: &Chart) -> Result<()> {
    let points = || chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 || x0 <= 0.0 {
        bail!("{}: nothing to plot", chart.title);
    }
    // a margin around the markers (a quarter of a decade on log axes);
    // the ticks of x are the Ns measured
    let mut ns: Vec<f64> = points().map(|p| p.0).collect();
    ns.sort_by(f64::total_cmp);
    ns.dedup();
    let x = ((x0 / 1.8)..(x1 * 1.8)).log_scale().with_key_points(ns);
    if chart.log_y {
        let y0 = if y0 > 0.0 { y0 } else { y1.max(1.0) / 1000.0 };
        let y = (y0 / 1.8)..(y1.max(y0) * 1.8);
        let ticks = one_two_five(&y);
        draw(path, chart, x, y.log_scale().with_key_points(ticks))
    } else {
        // room above the lines for the legend
        draw(path, chart, x, 0.0..(y1.max(0.0) * 1.3).max(1.0))
    }
}

/// 1, 2, 5, 10, 20, 50... within `r`: the ticks of a log axis.
fn one_two_five(r: &std::ops::Range<f64>) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(r.start.log10().floor());
    while decade <= r.end {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if r.contains(&v) {
                out.push(v);
            }
        }
        decade *= 10.0;
    }
    out
}

/// A tick label: no trailing zeros (10, 1.2, 0.05), thousands separated
/// from 10,000 on.
fn label(v: f64) -> String {
    if v >= 10_000.0 {
        let digits = format!("{v:.0}");
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        return out;
    }
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

fn draw<X, Y>(path: &Path, chart: &Chart, x: X, y: Y) -> Result<()>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut c = ChartBuilder::on(&root)
        .caption(chart.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x, y)?;
    c.configure_mesh()
        .x_desc("N, vassals (log scale)")
        .y_desc(chart.y_desc)
        .x_label_formatter(&|v| label(*v))
        .y_label_formatter(&|v| label(*v))
        .max_light_lines(1)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    for s in chart.series {
        let colour = COLOURS[s.colour % COLOURS.len()];
        c.draw_series(LineSeries::new(
            s.points.iter().copied(),
            colour.stroke_width(2),
        ))?
        .label(s.label.as_str())
        .legend(move |(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new(vec![(-8, 0), (12, 0)], colour.stroke_width(2))
                + Circle::new((2, 0), 4, colour.filled())
        });
        c.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series() -> Vec<Series> {
        vec![
            Series {
                label: "imperium".into(),
                colour: 1,
                points: vec![(100.0, 90.0), (1000.0, 800.0), (10000.0, 8900.0)],
            },
            Series {
                label: "uWSGI (freq 3)".into(),
                colour: 2,
                points: vec![(100.0, 300.0), (10000.0, 88000.0)],
            },
        ]
    }

    #[test]
    fn writes_svg_with_lines_labels_and_legend() {
        let dir = tempfile::tempdir().unwrap();
        for log_y in [false, true] {
            let path = dir.path().join("c.svg");
            let s = series();
            write(
                &path,
                &Chart {
                    title: "cold start",
                    y_desc: "ms",
                    log_y,
                    series: &s,
                },
            )
            .unwrap();
            let svg = std::fs::read_to_string(&path).unwrap();
            assert!(svg.starts_with("<svg"), "{svg:.80}");
            assert!(svg.trim_end().ends_with("</svg>"));
            for text in ["cold start", "ms", "N, vassals (log scale)", "imperium"] {
                assert!(svg.contains(&format!("\n{text}\n</text>")), "no {text:?}");
            }
            // uWSGI's line, in its colour
            assert!(svg.contains("<polyline") && svg.contains("#D55E00"));
        }
    }

    #[test]
    fn ticks_and_labels() {
        assert_eq!(
            one_two_five(&(30.0..600.0)),
            vec![50.0, 100.0, 200.0, 500.0]
        );
        assert_eq!(label(10.0), "10");
        assert_eq!(label(1.2), "1.2");
        assert_eq!(label(0.0), "0");
        assert_eq!(label(5000.0), "5000");
        assert_eq!(label(10000.0), "10,000");
        assert_eq!(label(100_000.0), "100,000");
    }

    #[test]
    fn refuses_an_empty_chart() {
        let dir = tempfile::tempdir().unwrap();
        let chart = Chart {
            title: "empty",
            y_desc: "ms",
            log_y: false,
            series: &[],
        };
        assert!(write(&dir.path().join("e.svg"), &chart).is_err());
    }
}
