//! Panel set-up shared by the figures: the frame (title row, legend row), the grid of panels, one chart
//! builder and one mesh style for every Cartesian panel, tick labels, and the line panel with mean ± std bands.

use std::ops::Range;

use plotters::chart::MeshStyle;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::style::*;
use super::{de, DrawResult};

/// White background, a title row, and (optionally) a legend row at the bottom; returns the panel area.
pub(super) fn frame<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    legend: Option<(&[String], &[String], bool)>,
) -> std::result::Result<DrawingArea<DB, Shift>, String> {
    root.fill(&WHITE).map_err(de)?;
    let (w, h) = root.dim_in_pixel();
    let (top, rest) = root.split_vertically(TITLE_H);
    top.draw_text(
        title,
        &centered(FS_TITLE),
        (w as i32 / 2, TITLE_H as i32 / 2 + 4),
    )
    .map_err(de)?;
    match legend {
        Some((names, all, lines)) => {
            let lh = legend_height(names, w);
            let (main, leg) = rest.split_vertically(h - TITLE_H - lh);
            draw_legend(&leg, names, all, lines)?;
            Ok(main)
        }
        None => Ok(rest),
    }
}

pub(super) fn grid_dims(n: usize, max_cols: usize) -> (usize, usize) {
    let cols = n.clamp(1, max_cols);
    (n.div_ceil(cols).max(1), cols)
}

pub(super) fn int_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{}", x.round() as i64)
    } else {
        String::new()
    }
}

pub(super) fn si_label(v: &f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{}", *v as i64)
    } else {
        format!("{v:.2}")
    }
}

/// One line of a line panel, in plot coordinates (values may already be log-transformed).
pub(super) struct Line<'a> {
    name: &'a str,
    x: Vec<f64>,
    y: Vec<f64>,
    /// Lower and upper edge of the shaded band (mean ± std).
    lo: Vec<f64>,
    hi: Vec<f64>,
}

impl<'a> Line<'a> {
    pub(super) fn mean_std(name: &'a str, stages: &[i64], mean: &[f64], std: &[f64]) -> Self {
        Line {
            name,
            x: stages.iter().map(|k| *k as f64).collect(),
            y: mean.to_vec(),
            lo: mean.iter().zip(std).map(|(m, s)| m - s).collect(),
            hi: mean.iter().zip(std).map(|(m, s)| m + s).collect(),
        }
    }

    /// log10 of the values; non-positive means are left out, band edges clipped at `floor`.
    pub(super) fn log10(
        name: &'a str,
        stages: &[i64],
        mean: &[f64],
        std: &[f64],
        floor: f64,
    ) -> Self {
        let mut l = Line {
            name,
            x: vec![],
            y: vec![],
            lo: vec![],
            hi: vec![],
        };
        for ((k, m), s) in stages.iter().zip(mean).zip(std) {
            if *m > 0.0 {
                l.x.push(*k as f64);
                l.y.push(m.log10());
                l.lo.push(if m - s > 0.0 {
                    (m - s).log10().max(floor)
                } else {
                    floor
                });
                l.hi.push((m + s).log10());
            }
        }
        l
    }
}

/// Log axis when positive values span more than two orders of magnitude.
pub(super) fn log_scale_wanted(pmin: f64, pmax: f64) -> bool {
    pmin.is_finite() && pmin > 0.0 && pmax / pmin > 100.0
}

/// Tick label on a log10 axis: only at integer exponents.
pub(super) fn pow10_label(y: &f64) -> String {
    if (y - y.round()).abs() < 1e-6 {
        si_label(&10f64.powi(y.round() as i32))
    } else {
        String::new()
    }
}

/// Tick label without a negative zero, with decimals suited to the axis step.
pub(super) fn tick_label(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// A 2-D panel chart in the house style: caption, margins, label areas of the given sizes.
pub(super) fn panel_chart<'a, DB: DrawingBackend>(
    panel: &'a DrawingArea<DB, Shift>,
    caption: &str,
    x_label_area: u32,
    x: Range<f64>,
    y: Range<f64>,
) -> std::result::Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String>
{
    ChartBuilder::on(panel)
        .caption(caption, (FAMILY, FS_PANEL))
        .margin(24)
        .margin_right(44)
        .x_label_area_size(x_label_area)
        .y_label_area_size(130)
        .build_cartesian_2d(x, y)
        .map_err(de)
}

/// The mesh of a [`panel_chart`] in the house style (tick and description fonts, a faint grid); callers add
/// their labels and descriptions and draw it.
pub(super) fn panel_mesh<'a, 'b, DB: DrawingBackend>(
    chart: &'b mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
) -> MeshStyle<'a, 'b, RangedCoordf64, RangedCoordf64, DB> {
    let mut mesh = chart.configure_mesh();
    mesh.label_style((FAMILY, FS_TICK))
        .axis_desc_style((FAMILY, FS_DESC))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12));
    mesh
}

/// The strategies (in display order) that some item satisfies `has`: the legend entries of a figure.
pub(super) fn present(strategies: &[String], has: impl Fn(&str) -> bool) -> Vec<String> {
    strategies.iter().filter(|s| has(s)).cloned().collect()
}

/// The x axis description of a panel over training stages.
pub(super) const STAGE_AXIS: &str = "Training stage (0 = before training)";

/// A line panel: one line per series with a shaded mean ± std band and markers, on an integer x axis (training
/// stages, [`STAGE_AXIS`], or e.g. clicks).
pub(super) struct LinePanel<'a> {
    /// Panel title.
    pub caption: &'a str,
    /// x axis description.
    pub x_desc: &'a str,
    /// y axis description.
    pub y_desc: &'a str,
    /// The lines, drawn in this order.
    pub series: &'a [Line<'a>],
    /// Shown y values (markers outside are not drawn).
    pub y_range: (f64, f64),
    /// y tick labels.
    pub y_fmt: &'a dyn Fn(&f64) -> String,
}

impl LinePanel<'_> {
    /// Draw into `panel` of `root`, each line in its strategy's style among the report's strategies `all`.
    pub(super) fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        panel: &DrawingArea<DB, Shift>,
        all: &[String],
    ) -> DrawResult {
        let LinePanel {
            caption,
            x_desc,
            y_desc,
            series,
            y_range,
            y_fmt,
        } = *self;
        let max_stage = series
            .iter()
            .flat_map(|s| s.x.iter())
            .fold(1.0f64, |a, b| a.max(*b));
        let min_stage = series
            .iter()
            .flat_map(|s| s.x.iter())
            .fold(0.0f64, |a, b| a.min(*b));
        let mut chart = panel_chart(
            panel,
            caption,
            96,
            (min_stage - 0.25)..(max_stage + 0.25),
            y_range.0..y_range.1,
        )?;
        panel_mesh(&mut chart)
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_labels(((max_stage - min_stage).round() as usize + 1).min(12))
            .x_label_formatter(&int_label)
            .y_labels(8)
            .y_label_formatter(y_fmt)
            .draw()
            .map_err(de)?;
        // Bands first so that every line stays visible on top of all bands.
        for l in series {
            let (c, _) = strategy_style(l.name, all);
            if l.x.len() > 1 && l.lo.iter().zip(&l.hi).any(|(a, b)| b > a) {
                let mut poly: Vec<(f64, f64)> =
                    l.x.iter().zip(&l.hi).map(|(x, y)| (*x, *y)).collect();
                poly.extend(l.x.iter().zip(&l.lo).rev().map(|(x, y)| (*x, *y)));
                chart
                    .draw_series(std::iter::once(Polygon::new(poly, c.mix(0.16).filled())))
                    .map_err(de)?;
            }
        }
        for l in series {
            let (c, m) = strategy_style(l.name, all);
            let pts: Vec<(f64, f64)> = l.x.iter().zip(&l.y).map(|(x, y)| (*x, *y)).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(LINE_W)))
                .map_err(de)?;
            for p in pts {
                if p.1 >= y_range.0 && p.1 <= y_range.1 {
                    draw_marker(root, m, chart.backend_coord(&p), MARKER_S, c)?;
                }
            }
        }
        Ok(())
    }
}
