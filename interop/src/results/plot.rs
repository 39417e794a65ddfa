//! The SVG figures (plotters, SVG backend only: text is SVG `<text>`).

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
pub use plotters::style::RGBColor;
use std::path::Path;

/// One line of a line chart: its legend name, its points, its colour.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
    /// Mark each point with a dot (few points), or draw the line only.
    pub dots: bool,
}

/// A step function through `points` (each value holds until the next
/// point): what a trace of changes looks like.
pub fn steps(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut v = Vec::with_capacity(points.len() * 2);
    for (i, &(x, y)) in points.iter().enumerate() {
        if i > 0 {
            v.push((x, points[i - 1].1));
        }
        v.push((x, y));
    }
    v
}

/// Axes and title of a line chart.
pub struct Axes<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
    /// A subtitle line under the title (mode, date …).
    pub note: &'a str,
}

pub const BLUE_: RGBColor = RGBColor(31, 119, 180);
pub const ORANGE: RGBColor = RGBColor(255, 127, 14);
pub const GREY: RGBColor = RGBColor(150, 150, 150);

fn err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

/// Upper end of an axis: the largest value plus 8 %, at least `floor`.
fn top(vals: impl Iterator<Item = f64>, floor: f64) -> f64 {
    vals.filter(|v| v.is_finite()).fold(floor, f64::max) * 1.08
}

fn draw_lines<'a>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    series: &[Series],
) -> Result<(), String> {
    for s in series {
        let c = s.color;
        chart
            .draw_series(LineSeries::new(s.points.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        if s.dots {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// A line chart of `series` with linear axes from 0.
pub fn lines(path: &Path, axes: &Axes<'_>, series: &[Series]) -> Result<(), String> {
    let x1 = top(
        series.iter().flat_map(|s| s.points.iter().map(|p| p.0)),
        1e-9,
    ) / 1.08;
    let y1 = top(
        series.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
        1e-9,
    );
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (head, body) = root.split_vertically(56);
    head.draw(&Text::new(
        axes.title.to_owned(),
        (12, 8),
        ("sans-serif", 20).into_font(),
    ))
    .map_err(err)?;
    head.draw(&Text::new(
        axes.note.to_owned(),
        (12, 34),
        ("sans-serif", 13).into_font().color(&GREY),
    ))
    .map_err(err)?;
    let mut chart = ChartBuilder::on(&body)
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..x1, 0f64..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(axes.x)
        .y_desc(axes.y)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    draw_lines(&mut chart, series)?;
    root.present().map_err(err)
}

/// One bar of [`bars_log`]: its label, its value (None: no bar, e.g. the
/// cell stayed on the relay), a note after the bar, its colour.
pub struct Bar {
    pub label: String,
    pub value: Option<f64>,
    pub note: String,
    pub color: RGBColor,
}

/// Horizontal bars on a logarithmic x axis, one per row, labels on the left;
/// `legend` names the colours.
pub fn bars_log(
    path: &Path,
    axes: &Axes<'_>,
    bars: &[Bar],
    legend: &[(&str, RGBColor)],
) -> Result<(), String> {
    let n = bars.len().max(1);
    // Room on the right for the note after the longest bar.
    let x1 = top(bars.iter().filter_map(|b| b.value), 10.0) * 20.0;
    let x0 = 0.1f64;
    let height = 120 + 26 * n as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (head, body) = root.split_vertically(56);
    head.draw(&Text::new(
        axes.title.to_owned(),
        (12, 8),
        ("sans-serif", 20).into_font(),
    ))
    .map_err(err)?;
    head.draw(&Text::new(
        axes.note.to_owned(),
        (12, 34),
        ("sans-serif", 13).into_font().color(&GREY),
    ))
    .map_err(err)?;
    let labels: Vec<String> = bars.iter().rev().map(|b| b.label.clone()).collect();
    let mut chart = ChartBuilder::on(&body)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(380)
        .build_cartesian_2d((x0..x1).log_scale(), (0..n).into_segmented())
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc(axes.x)
        .draw()
        .map_err(err)?;
    // The first bar at the top.
    for (i, b) in bars.iter().rev().enumerate() {
        let end = b.value.map_or(x0, |v| v.max(x0));
        if b.value.is_some() {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [
                        (x0, SegmentValue::Exact(i)),
                        (end, SegmentValue::Exact(i + 1)),
                    ],
                    b.color.mix(0.85).filled(),
                )))
                .map_err(err)?;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                b.note.clone(),
                (end * 1.15, SegmentValue::CenterOf(i)),
                ("sans-serif", 12).into_font(),
            )))
            .map_err(err)?;
    }
    for (k, (name, c)) in legend.iter().enumerate() {
        let x = 700 + 100 * k as i32;
        let c = *c;
        head.draw(&Rectangle::new([(x, 36), (x + 14, 48)], c.filled()))
            .map_err(err)?;
        head.draw(&Text::new(
            (*name).to_owned(),
            (x + 18, 35),
            ("sans-serif", 13).into_font(),
        ))
        .map_err(err)?;
    }
    root.present().map_err(err)
}
