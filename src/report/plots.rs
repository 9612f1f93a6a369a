//! Figures (plotters), each written as SVG and as PNG from the same drawing code.
//!
//! Text is drawn with the DejaVu Sans font the crate carries (assets/fonts), registered with plotters'
//! ab_glyph backend, so figures render on machines without system fonts. Every strategy has one colour
//! and one marker in every figure (see [`strategy_style`]). Legends sit in their own row below the panels.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use super::analysis::{
    ConfusionData, CurveSeries, GrowthSeries, HeatmapData, MetricBar, KNOWN_STRATEGIES, METRICS,
};
use crate::{Error, Result};

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Register the bundled font with plotters (once per process).
pub fn ensure_font() -> Result<()> {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok =
        *OK.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::internal(
            "the bundled font assets/fonts/DejaVuSans.ttf could not be loaded",
        ))
    }
}

/// Marker shapes, cycled over strategies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    Circle,
    Triangle,
    Square,
    Diamond,
    Cross,
}

const MARKERS: [Marker; 5] = [
    Marker::Circle,
    Marker::Triangle,
    Marker::Square,
    Marker::Diamond,
    Marker::Cross,
];

/// Colour-blind-friendly palette (Okabe-Ito, then further distinct colours).
const PALETTE: [(u8, u8, u8); 14] = [
    (213, 94, 0),    // evosam: vermillion
    (230, 159, 0),   // evosam-oracle: orange
    (120, 120, 120), // zeroshot: grey
    (0, 114, 178),   // finetune: blue
    (0, 158, 115),   // ewc: bluish green
    (86, 180, 233),  // online-ewc: sky blue
    (204, 121, 167), // replay: reddish purple
    (117, 112, 179), // lwf: purple
    (0, 0, 0),       // joint: black
    (166, 118, 29),
    (27, 158, 119),
    (231, 41, 138),
    (102, 166, 30),
    (140, 86, 75),
];

/// The colour and marker of a strategy: fixed for the known strategies, and for others assigned by
/// their position among the other strategies of this report (sorted by name).
pub fn strategy_style(name: &str, all: &[String]) -> (RGBColor, Marker) {
    let idx = match KNOWN_STRATEGIES.iter().position(|k| *k == name) {
        Some(i) => i,
        None => {
            let mut others: Vec<&String> = all
                .iter()
                .filter(|s| !KNOWN_STRATEGIES.contains(&s.as_str()))
                .collect();
            others.sort();
            KNOWN_STRATEGIES.len() + others.iter().position(|s| s.as_str() == name).unwrap_or(0)
        }
    };
    let (r, g, b) = PALETTE[idx % PALETTE.len()];
    (RGBColor(r, g, b), MARKERS[idx % MARKERS.len()])
}

type Dr = std::result::Result<(), String>;

fn de<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A figure that can be drawn on any plotters backend.
pub trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Dr;
}

/// Write `dir/stem.svg` and `dir/stem.png`.
pub fn save<F: Figure>(fig: &F, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    ensure_font()?;
    let size = fig.size();
    let svg = dir.join(format!("{stem}.svg"));
    let png = dir.join(format!("{stem}.png"));
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        fig.draw(&root)
            .and_then(|_| root.present().map_err(de))
            .map_err(|e| Error::internal(format!("{}: drawing failed: {e}", svg.display())))?;
    }
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        fig.draw(&root)
            .and_then(|_| root.present().map_err(de))
            .map_err(|e| Error::internal(format!("{}: drawing failed: {e}", png.display())))?;
    }
    set_png_dpi(&png, PNG_DPI)?;
    Ok(vec![svg, png])
}

/// Resolution recorded in the PNG files (pHYs chunk); figures are about 2400 px wide, i.e. 8 inches.
pub const PNG_DPI: f64 = 300.0;

/// CRC-32 (IEEE, as PNG uses it) of `bytes`.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Insert (or replace) the pHYs chunk of a PNG file so that viewers and LaTeX see `dpi`.
pub fn set_png_dpi(path: &Path, dpi: f64) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    const SIG: [u8; 8] = [137, 80, 78, 71, 13, 10, 26, 10];
    if bytes.len() < 33 || bytes[..8] != SIG || &bytes[12..16] != b"IHDR" {
        return Err(Error::internal(format!(
            "{}: not a PNG file",
            path.display()
        )));
    }
    let ppm = (dpi / 0.0254).round() as u32;
    let mut chunk = Vec::with_capacity(21);
    chunk.extend_from_slice(&9u32.to_be_bytes());
    let mut body = b"pHYs".to_vec();
    body.extend_from_slice(&ppm.to_be_bytes());
    body.extend_from_slice(&ppm.to_be_bytes());
    body.push(1); // unit: metre
    chunk.extend_from_slice(&body);
    chunk.extend_from_slice(&crc32(&body).to_be_bytes());
    // Copy chunks, dropping any existing pHYs and inserting ours right after IHDR.
    let mut out = bytes[..8].to_vec();
    let mut pos = 8;
    while pos + 12 <= bytes.len() {
        let len = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
            as usize;
        let end = pos + 12 + len;
        if end > bytes.len() {
            return Err(Error::internal(format!(
                "{}: truncated PNG chunk",
                path.display()
            )));
        }
        let kind = &bytes[pos + 4..pos + 8];
        if kind != b"pHYs" {
            out.extend_from_slice(&bytes[pos..end]);
        }
        if kind == b"IHDR" {
            out.extend_from_slice(&chunk);
        }
        pos = end;
    }
    std::fs::write(path, out).map_err(|e| Error::io(path, e))
}

// ---------------------------------------------------------------- shared drawing helpers

const W: u32 = 2400;
const TITLE_H: u32 = 100;
const FS_TITLE: u32 = 52;
const FS_PANEL: u32 = 42;
const FS_DESC: u32 = 36;
const FS_TICK: u32 = 30;
const FS_LEGEND: u32 = 38;
const FS_CELL: u32 = 32;
const LINE_W: u32 = 5;
const MARKER_S: i32 = 11;

fn font(size: u32) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font()).color(&BLACK)
}

fn centered(size: u32) -> TextStyle<'static> {
    font(size).pos(Pos::new(HPos::Center, VPos::Center))
}

fn text_width(text: &str, size: u32) -> u32 {
    (FAMILY, size)
        .into_font()
        .box_size(text)
        .map(|(w, _)| w)
        .unwrap_or((text.len() as u32) * size / 2)
}

/// Draw one marker centred at `at` (area coordinates).
fn draw_marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    m: Marker,
    at: (i32, i32),
    s: i32,
    c: RGBColor,
) -> Dr {
    let fill = c.filled();
    match m {
        Marker::Circle => area.draw(&Circle::new(at, s, fill)),
        Marker::Triangle => area.draw(&TriangleMarker::new(at, s + 2, fill)),
        Marker::Square => area.draw(&Rectangle::new(
            [(at.0 - s + 1, at.1 - s + 1), (at.0 + s - 1, at.1 + s - 1)],
            fill,
        )),
        Marker::Diamond => {
            let k = s + 2;
            area.draw(&Polygon::new(
                vec![
                    (at.0, at.1 - k),
                    (at.0 + k, at.1),
                    (at.0, at.1 + k),
                    (at.0 - k, at.1),
                ],
                fill,
            ))
        }
        Marker::Cross => area.draw(&Cross::new(at, s, c.stroke_width(5))),
    }
    .map_err(de)
}

/// Legend entries laid out in centred rows; returns the rows of indices.
fn legend_rows(labels: &[String], width: u32) -> Vec<Vec<usize>> {
    let mut rows: Vec<Vec<usize>> = vec![vec![]];
    let mut used = 0u32;
    for (i, l) in labels.iter().enumerate() {
        let w = legend_entry_w(l);
        if used + w > width.saturating_sub(80) && !rows.last().map(|r| r.is_empty()).unwrap_or(true)
        {
            rows.push(vec![]);
            used = 0;
        }
        if let Some(r) = rows.last_mut() {
            r.push(i);
        }
        used += w;
    }
    rows
}

fn legend_entry_w(label: &str) -> u32 {
    90 + 16 + text_width(label, FS_LEGEND) + 56
}

const LEGEND_ROW_H: u32 = 64;

fn legend_height(labels: &[String], width: u32) -> u32 {
    legend_rows(labels, width).len() as u32 * LEGEND_ROW_H + 30
}

/// Draw the legend (line sample + marker + name per strategy) in its own area.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    strategies: &[String],
    all: &[String],
    lines: bool,
) -> Dr {
    let (w, _) = area.dim_in_pixel();
    let rows = legend_rows(strategies, w);
    for (r, row) in rows.iter().enumerate() {
        let total: u32 = row.iter().map(|&i| legend_entry_w(&strategies[i])).sum();
        let mut x = (w.saturating_sub(total) / 2) as i32;
        let y = 15 + r as i32 * LEGEND_ROW_H as i32 + LEGEND_ROW_H as i32 / 2;
        for &i in row {
            let name = &strategies[i];
            let (c, m) = strategy_style(name, all);
            if lines {
                area.draw(&PathElement::new(
                    vec![(x, y), (x + 90, y)],
                    c.stroke_width(LINE_W),
                ))
                .map_err(de)?;
                draw_marker(area, m, (x + 45, y), MARKER_S, c)?;
            } else {
                area.draw(&Rectangle::new(
                    [(x + 20, y - 22), (x + 70, y + 22)],
                    c.filled(),
                ))
                .map_err(de)?;
            }
            area.draw_text(
                name,
                &font(FS_LEGEND).pos(Pos::new(HPos::Left, VPos::Center)),
                (x + 106, y),
            )
            .map_err(de)?;
            x += legend_entry_w(name) as i32;
        }
    }
    Ok(())
}

/// White background, a title row, and (optionally) a legend row at the bottom; returns the panel area.
fn frame<DB: DrawingBackend>(
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

fn grid_dims(n: usize, max_cols: usize) -> (usize, usize) {
    let cols = n.clamp(1, max_cols);
    (n.div_ceil(cols).max(1), cols)
}

fn int_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{}", x.round() as i64)
    } else {
        String::new()
    }
}

fn si_label(v: &f64) -> String {
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
struct Line<'a> {
    name: &'a str,
    x: Vec<f64>,
    y: Vec<f64>,
    /// Lower and upper edge of the shaded band (mean ± std).
    lo: Vec<f64>,
    hi: Vec<f64>,
}

impl<'a> Line<'a> {
    fn mean_std(name: &'a str, stages: &[i64], mean: &[f64], std: &[f64]) -> Self {
        Line {
            name,
            x: stages.iter().map(|k| *k as f64).collect(),
            y: mean.to_vec(),
            lo: mean.iter().zip(std).map(|(m, s)| m - s).collect(),
            hi: mean.iter().zip(std).map(|(m, s)| m + s).collect(),
        }
    }

    /// log10 of the values; non-positive means are left out, band edges clipped at `floor`.
    fn log10(name: &'a str, stages: &[i64], mean: &[f64], std: &[f64], floor: f64) -> Self {
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
fn log_scale_wanted(pmin: f64, pmax: f64) -> bool {
    pmin.is_finite() && pmin > 0.0 && pmax / pmin > 100.0
}

/// Tick label on a log10 axis: only at integer exponents.
fn pow10_label(y: &f64) -> String {
    if (y - y.round()).abs() < 1e-6 {
        si_label(&10f64.powi(y.round() as i32))
    } else {
        String::new()
    }
}

/// Tick label without a negative zero, with decimals suited to the axis step.
fn tick_label(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// A line per series with a shaded mean ± std band and markers, on a stage axis.
#[allow(clippy::too_many_arguments)]
fn line_panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panel: &DrawingArea<DB, Shift>,
    caption: &str,
    y_desc: &str,
    series: &[Line],
    y_range: (f64, f64),
    all: &[String],
    y_fmt: &dyn Fn(&f64) -> String,
) -> Dr {
    let max_stage = series
        .iter()
        .flat_map(|s| s.x.iter())
        .fold(1.0f64, |a, b| a.max(*b));
    let min_stage = series
        .iter()
        .flat_map(|s| s.x.iter())
        .fold(0.0f64, |a, b| a.min(*b));
    let mut chart = ChartBuilder::on(panel)
        .caption(caption, (FAMILY, FS_PANEL))
        .margin(24)
        .margin_right(44)
        .x_label_area_size(96)
        .y_label_area_size(130)
        .build_cartesian_2d((min_stage - 0.25)..(max_stage + 0.25), y_range.0..y_range.1)
        .map_err(de)?;
    chart
        .configure_mesh()
        .x_desc("Training stage (0 = before training)")
        .y_desc(y_desc)
        .x_labels(((max_stage - min_stage).round() as usize + 1).min(12))
        .x_label_formatter(&int_label)
        .y_labels(8)
        .y_label_formatter(y_fmt)
        .label_style((FAMILY, FS_TICK))
        .axis_desc_style((FAMILY, FS_DESC))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(de)?;
    // Bands first so that every line stays visible on top of all bands.
    for l in series {
        let (c, _) = strategy_style(l.name, all);
        if l.x.len() > 1 && l.lo.iter().zip(&l.hi).any(|(a, b)| b > a) {
            let mut poly: Vec<(f64, f64)> = l.x.iter().zip(&l.hi).map(|(x, y)| (*x, *y)).collect();
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

// ---------------------------------------------------------------- forgetting curves

pub struct CurvesFigure<'a> {
    pub curves: &'a [CurveSeries],
    pub tasks: &'a [String],
    pub strategies: &'a [String],
}

impl CurvesFigure<'_> {
    fn panel_tasks(&self) -> Vec<&String> {
        self.tasks
            .iter()
            .filter(|t| self.curves.iter().any(|c| &c.task == *t))
            .collect()
    }
    fn legend_names(&self) -> Vec<String> {
        self.strategies
            .iter()
            .filter(|s| self.curves.iter().any(|c| &&c.strategy == s))
            .cloned()
            .collect()
    }
}

impl Figure for CurvesFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let (rows, _) = grid_dims(self.panel_tasks().len(), 3);
        (
            W,
            TITLE_H + rows as u32 * 720 + legend_height(&self.legend_names(), W),
        )
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Dr {
        let names = self.legend_names();
        let main = frame(
            root,
            "Dice per task against training stage (mean ± std over seeds and orders)",
            Some((&names, self.strategies, true)),
        )?;
        let tasks = self.panel_tasks();
        let panels = main.split_evenly(grid_dims(tasks.len(), 3));
        // Dice lies in [0, 1]; bands are clipped to the plotting area.
        let lo = self
            .curves
            .iter()
            .flat_map(|c| c.mean.iter().zip(c.std.iter()).map(|(m, s)| m - s))
            .fold(0.0f64, f64::min)
            .max(-0.05);
        for (task, panel) in tasks.iter().zip(panels.iter()) {
            let series: Vec<Line> = names
                .iter()
                .filter_map(|s| {
                    self.curves
                        .iter()
                        .find(|c| &c.strategy == s && &c.task == *task)
                })
                .map(|c| Line::mean_std(&c.strategy, &c.stages, &c.mean, &c.std))
                .collect();
            line_panel(
                root,
                panel,
                task,
                "Dice",
                &series,
                (lo.min(0.0), 1.02),
                self.strategies,
                &|y| format!("{y:.1}"),
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- matrices (heatmaps, confusion)

fn lerp_map(stops: &[(f64, (u8, u8, u8))], v: f64) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    for w in stops.windows(2) {
        let (a, ca) = w[0];
        let (b, cb) = w[1];
        if v <= b {
            let t = if b > a { (v - a) / (b - a) } else { 0.0 };
            let f = |x: u8, y: u8| (x as f64 + t * (y as f64 - x as f64)).round() as u8;
            return RGBColor(f(ca.0, cb.0), f(ca.1, cb.1), f(ca.2, cb.2));
        }
    }
    let c = stops[stops.len() - 1].1;
    RGBColor(c.0, c.1, c.2)
}

/// matplotlib's viridis at nine stops.
const VIRIDIS: [(f64, (u8, u8, u8)); 9] = [
    (0.0, (68, 1, 84)),
    (0.125, (71, 44, 122)),
    (0.25, (59, 81, 139)),
    (0.375, (44, 113, 142)),
    (0.5, (33, 144, 141)),
    (0.625, (39, 173, 129)),
    (0.75, (92, 200, 99)),
    (0.875, (170, 220, 50)),
    (1.0, (253, 231, 37)),
];
/// matplotlib's Blues at five stops.
const BLUES: [(f64, (u8, u8, u8)); 5] = [
    (0.0, (247, 251, 255)),
    (0.25, (198, 219, 239)),
    (0.5, (107, 174, 214)),
    (0.75, (33, 113, 181)),
    (1.0, (8, 48, 107)),
];

fn text_on(c: &RGBColor) -> RGBColor {
    let l = 0.299 * c.0 as f64 + 0.587 * c.1 as f64 + 0.114 * c.2 as f64;
    if l < 140.0 {
        WHITE
    } else {
        BLACK
    }
}

/// Colour value in [0, 1] and the text lines of one matrix cell.
type CellContent = (f64, Vec<String>);

/// A labelled grid of coloured cells with text, plus a colour bar.
struct MatrixSpec<'a> {
    row_labels: Vec<String>,
    col_labels: Vec<String>,
    /// (value for the colour in [0,1], text lines) per cell; None = empty cell.
    cells: Vec<Vec<Option<CellContent>>>,
    x_desc: &'a str,
    y_desc: &'a str,
    cmap: &'a [(f64, (u8, u8, u8))],
    bar_label: &'a str,
}

const CELL_W_MIN: u32 = 250;
const CELL_W_MAX: u32 = 460;

/// Cell width: wide enough for the column labels at tick size, within limits.
fn cell_w(spec: &MatrixSpec) -> u32 {
    let widest = spec
        .col_labels
        .iter()
        .map(|l| text_width(l, FS_TICK + 4))
        .max()
        .unwrap_or(0);
    (widest + 24).clamp(CELL_W_MIN, CELL_W_MAX)
}
const CELL_H: u32 = 130;
const MAT_LEFT: u32 = 60; // room for the rotated y description

fn matrix_row_label_w(spec: &MatrixSpec) -> u32 {
    spec.row_labels
        .iter()
        .map(|l| text_width(l, FS_TICK + 4))
        .max()
        .unwrap_or(0)
        + 30
}

fn matrix_col_font(spec: &MatrixSpec) -> u32 {
    // Shrink column labels that would not fit their cell.
    let widest = spec
        .col_labels
        .iter()
        .map(|l| text_width(l, FS_TICK + 4))
        .max()
        .unwrap_or(0);
    let cw = cell_w(spec);
    if widest + 16 <= cw {
        FS_TICK + 4
    } else {
        (((FS_TICK + 4) as f64) * (cw - 16) as f64 / widest as f64)
            .floor()
            .max(16.0) as u32
    }
}

fn matrix_size(spec: &MatrixSpec) -> (u32, u32) {
    let w = MAT_LEFT
        + matrix_row_label_w(spec)
        + spec.col_labels.len() as u32 * cell_w(spec)
        + 60
        + 200;
    let h = TITLE_H + 30 + spec.row_labels.len() as u32 * CELL_H + 70 + 80 + 40;
    (w.max(1000), h.max(700))
}

fn draw_matrix<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, spec: &MatrixSpec) -> Dr {
    let rl = matrix_row_label_w(spec);
    let (aw, _) = area.dim_in_pixel();
    let grid_w = spec.col_labels.len() as u32 * cell_w(spec);
    let x0 =
        (MAT_LEFT + rl) as i32 + ((aw.saturating_sub(MAT_LEFT + rl + grid_w + 260)) / 2) as i32;
    let y0 = 30i32;
    let (cw, ch) = (cell_w(spec) as i32, CELL_H as i32);
    for (i, row) in spec.cells.iter().enumerate() {
        for (j, cell) in row.iter().enumerate() {
            let (x, y) = (x0 + j as i32 * cw, y0 + i as i32 * ch);
            match cell {
                Some((v, lines)) => {
                    let c = lerp_map(spec.cmap, *v);
                    area.draw(&Rectangle::new([(x, y), (x + cw, y + ch)], c.filled()))
                        .map_err(de)?;
                    let tc = text_on(&c);
                    let n = lines.len() as i32;
                    for (k, line) in lines.iter().enumerate() {
                        let fs = if k == 0 { FS_CELL + 4 } else { FS_CELL - 6 };
                        let yy = y + ch / 2 + (k as i32 * 2 - (n - 1)) * 22;
                        area.draw_text(line, &centered(fs).color(&tc), (x + cw / 2, yy))
                            .map_err(de)?;
                    }
                }
                None => {
                    area.draw(&Rectangle::new(
                        [(x, y), (x + cw, y + ch)],
                        RGBColor(235, 235, 235).filled(),
                    ))
                    .map_err(de)?;
                    area.draw_text("–", &centered(FS_CELL), (x + cw / 2, y + ch / 2))
                        .map_err(de)?;
                }
            }
            area.draw(&Rectangle::new(
                [(x, y), (x + cw, y + ch)],
                WHITE.stroke_width(2),
            ))
            .map_err(de)?;
        }
    }
    let nrows = spec.row_labels.len() as i32;
    for (i, l) in spec.row_labels.iter().enumerate() {
        area.draw_text(
            l,
            &font(FS_TICK + 4).pos(Pos::new(HPos::Right, VPos::Center)),
            (x0 - 14, y0 + i as i32 * ch + ch / 2),
        )
        .map_err(de)?;
    }
    let cf = matrix_col_font(spec);
    for (j, l) in spec.col_labels.iter().enumerate() {
        area.draw_text(
            l,
            &font(cf).pos(Pos::new(HPos::Center, VPos::Top)),
            (x0 + j as i32 * cw + cw / 2, y0 + nrows * ch + 14),
        )
        .map_err(de)?;
    }
    let gw = spec.col_labels.len() as i32 * cw;
    area.draw_text(
        spec.x_desc,
        &font(FS_DESC).pos(Pos::new(HPos::Center, VPos::Top)),
        (x0 + gw / 2, y0 + nrows * ch + 14 + cf as i32 + 26),
    )
    .map_err(de)?;
    area.draw_text(
        spec.y_desc,
        &font(FS_DESC)
            .pos(Pos::new(HPos::Center, VPos::Center))
            .transform(FontTransform::Rotate270),
        (x0 - rl as i32 - 20, y0 + nrows * ch / 2),
    )
    .map_err(de)?;
    // Colour bar.
    let bx = x0 + gw + 50;
    let bh = (nrows * ch).max(200);
    let steps = 100;
    for s in 0..steps {
        let v = 1.0 - s as f64 / steps as f64;
        let ya = y0 + (s * bh) / steps;
        let yb = y0 + ((s + 1) * bh) / steps;
        area.draw(&Rectangle::new(
            [(bx, ya), (bx + 40, yb + 1)],
            lerp_map(spec.cmap, v).filled(),
        ))
        .map_err(de)?;
    }
    area.draw(&Rectangle::new(
        [(bx, y0), (bx + 40, y0 + bh)],
        BLACK.stroke_width(1),
    ))
    .map_err(de)?;
    for (v, t) in [(1.0, "1.0"), (0.5, "0.5"), (0.0, "0.0")] {
        let y = y0 + ((1.0 - v) * bh as f64) as i32;
        area.draw(&PathElement::new(
            vec![(bx + 40, y), (bx + 50, y)],
            BLACK.stroke_width(2),
        ))
        .map_err(de)?;
        area.draw_text(
            t,
            &font(FS_TICK).pos(Pos::new(HPos::Left, VPos::Center)),
            (bx + 56, y),
        )
        .map_err(de)?;
    }
    area.draw_text(
        spec.bar_label,
        &font(FS_TICK)
            .pos(Pos::new(HPos::Center, VPos::Center))
            .transform(FontTransform::Rotate90),
        (bx + 150, y0 + bh / 2),
    )
    .map_err(de)?;
    Ok(())
}

pub struct HeatmapFigure<'a> {
    pub data: &'a HeatmapData,
}

impl HeatmapFigure<'_> {
    fn spec(&self) -> MatrixSpec<'static> {
        let d = self.data;
        MatrixSpec {
            row_labels: d
                .stages
                .iter()
                .map(|k| {
                    if *k == 0 {
                        "0 (zero-shot)".into()
                    } else {
                        k.to_string()
                    }
                })
                .collect(),
            col_labels: d.col_labels.clone(),
            cells: d
                .cells
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|c| {
                            c.map(|s| {
                                let mut lines = vec![format!("{:.2}", s.mean)];
                                if s.n > 1 {
                                    lines.push(format!("± {:.2}", s.std));
                                }
                                (s.mean, lines)
                            })
                        })
                        .collect()
                })
                .collect(),
            x_desc: "Evaluated task (position in the order)",
            y_desc: "Stage",
            cmap: &VIRIDIS,
            bar_label: "Dice",
        }
    }
}

impl Figure for HeatmapFigure<'_> {
    fn size(&self) -> (u32, u32) {
        matrix_size(&self.spec())
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Dr {
        let title = format!(
            "Accuracy matrix: {} (Dice, mean ± std over runs)",
            self.data.strategy
        );
        let main = frame(root, &title, None)?;
        draw_matrix(&main, &self.spec())
    }
}

pub struct ConfusionFigure<'a> {
    pub data: &'a ConfusionData,
}

impl ConfusionFigure<'_> {
    fn spec(&self) -> MatrixSpec<'static> {
        let d = self.data;
        MatrixSpec {
            row_labels: d.true_labels.clone(),
            col_labels: d.routed_labels.clone(),
            cells: d
                .counts
                .iter()
                .zip(d.fractions.iter())
                .map(|(cr, fr)| {
                    cr.iter()
                        .zip(fr.iter())
                        .map(|(c, f)| Some((*f, vec![format!("{f:.2}"), format!("n={c}")])))
                        .collect()
                })
                .collect(),
            x_desc: "Routed to (expert)",
            y_desc: "True task",
            cmap: &BLUES,
            bar_label: "Fraction of the true task's cases",
        }
    }
}

impl Figure for ConfusionFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let (w, h) = matrix_size(&self.spec());
        (w.max(1500), h)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Dr {
        let title = format!(
            "Routing confusion at the final stage: {}",
            self.data.strategy
        );
        let main = frame(root, &title, None)?;
        draw_matrix(&main, &self.spec())
    }
}

// ---------------------------------------------------------------- summary bars

/// Font size, rotation and label-area height for the strategy names under the bars. The slot per
/// bar is estimated from the panel width (half the figure, less the y-label area and margins).
fn bar_label_layout(names: &[String]) -> (u32, bool, u32) {
    let slot = (W / 2 - 130 - 68) / names.len().max(1) as u32;
    let widest = |fs| names.iter().map(|n| text_width(n, fs)).max().unwrap_or(1);
    if widest(FS_TICK) + 12 <= slot {
        return (FS_TICK, false, 60);
    }
    let fs = ((FS_TICK as f64) * (slot.saturating_sub(12)) as f64 / widest(FS_TICK) as f64).floor()
        as u32;
    if fs >= 24 {
        return (fs, false, 60);
    }
    (FS_TICK, true, widest(FS_TICK) + 30)
}

pub struct SummaryFigure<'a> {
    pub bars: &'a [MetricBar],
    pub strategies: &'a [String],
}

impl SummaryFigure<'_> {
    fn names(&self) -> Vec<String> {
        self.strategies
            .iter()
            .filter(|s| self.bars.iter().any(|b| &&b.strategy == s))
            .cloned()
            .collect()
    }
}

impl Figure for SummaryFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let names = self.names();
        (
            W,
            TITLE_H + 2 * (700 + bar_label_layout(&names).2) + legend_height(&names, W),
        )
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Dr {
        let names = self.names();
        let main = frame(
            root,
            "Continual-learning metrics per strategy (mean ± std over seeds and orders)",
            Some((&names, self.strategies, false)),
        )?;
        let panels = main.split_evenly((2, 2));
        let ns = names.len().max(1);
        for (metric, panel) in METRICS.iter().zip(panels.iter()) {
            let vals: Vec<(usize, &MetricBar)> = names
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    self.bars
                        .iter()
                        .find(|b| &b.strategy == s && b.metric == *metric)
                        .map(|b| (i, b))
                })
                .collect();
            let stats: Vec<(usize, f64, f64)> = vals
                .iter()
                .filter_map(|(i, b)| b.stat.map(|s| (*i, s.mean, s.std)))
                .collect();
            let lo = stats.iter().map(|s| s.1 - s.2).fold(0.0f64, f64::min);
            let hi = stats.iter().map(|s| s.1 + s.2).fold(0.0f64, f64::max);
            let pad = ((hi - lo) * 0.08).max(0.02);
            let (lo, hi) = (
                if lo < 0.0 { lo - pad } else { 0.0 },
                if hi > 0.0 { hi + pad } else { pad },
            );
            let dec = (-((hi - lo) / 6.0).log10().floor()).clamp(0.0, 6.0) as usize;
            let caption = match *metric {
                "Forgetting" => "Forgetting (lower is better)".to_string(),
                m => format!("{m} (higher is better)"),
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(&caption, (FAMILY, FS_PANEL))
                .margin(24)
                .margin_right(44)
                .x_label_area_size(bar_label_layout(&names).2)
                .y_label_area_size(130)
                .build_cartesian_2d(-0.6f64..(ns as f64 - 0.4), lo..hi)
                .map_err(de)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(6)
                .y_label_formatter(&|y| tick_label(*y, dec))
                .y_desc(*metric)
                .label_style((FAMILY, FS_TICK))
                .axis_desc_style((FAMILY, FS_DESC))
                .light_line_style(WHITE.mix(0.0))
                .bold_line_style(BLACK.mix(0.12))
                .draw()
                .map_err(de)?;
            if stats.is_empty() {
                let c = chart.backend_coord(&((ns as f64 - 1.0) / 2.0, (lo + hi) / 2.0));
                root.draw_text("n/a (no values)", &centered(FS_DESC), c)
                    .map_err(de)?;
                continue;
            }
            if stats.iter().all(|s| s.1 == 0.0 && s.2 == 0.0) {
                // Zero-height bars are invisible: say so.
                let c = chart.backend_coord(&((ns as f64 - 1.0) / 2.0, (lo + hi) / 2.0));
                root.draw_text("all values are 0", &centered(FS_DESC), c)
                    .map_err(de)?;
            }
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(-0.6, 0.0), (ns as f64 - 0.4, 0.0)],
                    BLACK.stroke_width(2),
                )))
                .map_err(de)?;
            for (i, m, s) in &stats {
                let (c, _) = strategy_style(&names[*i], self.strategies);
                let x = *i as f64;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x - 0.34, 0.0), (x + 0.34, *m)],
                        c.filled(),
                    )))
                    .map_err(de)?;
                if *s > 0.0 {
                    let eb = BLACK.stroke_width(4);
                    chart
                        .draw_series([
                            PathElement::new(vec![(x, m - s), (x, m + s)], eb),
                            PathElement::new(vec![(x - 0.12, m - s), (x + 0.12, m - s)], eb),
                            PathElement::new(vec![(x - 0.12, m + s), (x + 0.12, m + s)], eb),
                        ])
                        .map_err(de)?;
                }
            }
            // Strategy names under the axis: horizontal when they fit, else vertical.
            let (fs, rotated, _) = bar_label_layout(&names);
            for (i, n) in names.iter().enumerate() {
                let (x, y) = chart.backend_coord(&(i as f64, lo));
                if rotated {
                    let st = font(fs)
                        .pos(Pos::new(HPos::Right, VPos::Center))
                        .transform(FontTransform::Rotate270);
                    root.draw_text(n, &st, (x, y + 10)).map_err(de)?;
                } else {
                    root.draw_text(
                        n,
                        &font(fs).pos(Pos::new(HPos::Center, VPos::Top)),
                        (x, y + 8),
                    )
                    .map_err(de)?;
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- parameter growth

pub struct GrowthFigure<'a> {
    pub growth: &'a [GrowthSeries],
    pub strategies: &'a [String],
}

impl GrowthFigure<'_> {
    fn keys(&self) -> Vec<&'static str> {
        super::analysis::GROWTH_KEYS
            .iter()
            .copied()
            .filter(|k| self.growth.iter().any(|g| g.key == *k))
            .collect()
    }
    fn names(&self) -> Vec<String> {
        self.strategies
            .iter()
            .filter(|s| self.growth.iter().any(|g| &&g.strategy == s))
            .cloned()
            .collect()
    }
}

impl Figure for GrowthFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (W, TITLE_H + 820 + legend_height(&self.names(), W))
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Dr {
        let names = self.names();
        let main = frame(
            root,
            "Parameter growth against tasks (mean ± std over runs)",
            Some((&names, self.strategies, true)),
        )?;
        let keys = self.keys();
        let panels = main.split_evenly((1, keys.len().max(1)));
        for (key, panel) in keys.iter().zip(panels.iter()) {
            let found: Vec<&GrowthSeries> = names
                .iter()
                .filter_map(|s| {
                    self.growth
                        .iter()
                        .find(|g| &g.strategy == s && g.key == *key)
                })
                .collect();
            let (caption, desc) = match *key {
                "trainable_params" => ("Trainable parameters (total)", "Parameters"),
                _ => ("Number of experts", "Experts"),
            };
            let pos: Vec<f64> = found
                .iter()
                .flat_map(|g| g.mean.iter().copied())
                .filter(|v| *v > 0.0)
                .collect();
            let pmin = pos.iter().copied().fold(f64::INFINITY, f64::min);
            let pmax = found
                .iter()
                .flat_map(|g| g.mean.iter().zip(&g.std).map(|(m, s)| m + s))
                .fold(0.0f64, f64::max);
            if log_scale_wanted(pmin, pmax) {
                // Values spanning orders of magnitude: log10 axis; zero values are not drawn.
                let (lo, hi) = ((pmin / 2.0).log10().floor(), (pmax * 2.0).log10());
                let series: Vec<Line> = found
                    .iter()
                    .map(|g| Line::log10(&g.strategy, &g.stages, &g.mean, &g.std, lo))
                    .collect();
                let cap = format!("{caption}, log scale (zeros not shown)");
                line_panel(
                    root,
                    panel,
                    &cap,
                    desc,
                    &series,
                    (lo, hi),
                    self.strategies,
                    &pow10_label,
                )?;
            } else {
                let hi = if pmax > 0.0 { pmax * 1.08 } else { 1.0 };
                let series: Vec<Line> = found
                    .iter()
                    .map(|g| Line::mean_std(&g.strategy, &g.stages, &g.mean, &g.std))
                    .collect();
                let fmt: &dyn Fn(&f64) -> String = if *key == "n_experts" {
                    &int_label
                } else {
                    &si_label
                };
                line_panel(
                    root,
                    panel,
                    caption,
                    desc,
                    &series,
                    (0.0, hi),
                    self.strategies,
                    fmt,
                )?;
            }
        }
        Ok(())
    }
}

/// File-name-safe version of a strategy name.
pub fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
