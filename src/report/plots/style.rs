//! The house style shared by every figure: the bundled font, one colour and marker per strategy, text sizes,
//! markers and the legend row.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use super::super::analysis::KNOWN_STRATEGIES;
use super::{de, DrawResult};
use crate::{Error, Result};

pub(super) static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
pub(super) const FAMILY: &str = "sans-serif";

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
    /// Filled circle.
    Circle,
    /// Filled triangle.
    Triangle,
    /// Filled square.
    Square,
    /// Filled diamond.
    Diamond,
    /// Cross.
    Cross,
}

pub(super) const MARKERS: [Marker; 5] = [
    Marker::Circle,
    Marker::Triangle,
    Marker::Square,
    Marker::Diamond,
    Marker::Cross,
];

/// Colour-blind-friendly palette (Okabe-Ito, then further distinct colours).
pub(super) const PALETTE: [(u8, u8, u8); 14] = [
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

pub(super) const W: u32 = 2400;
pub(super) const TITLE_H: u32 = 100;
pub(super) const FS_TITLE: u32 = 52;
pub(super) const FS_PANEL: u32 = 42;
pub(super) const FS_DESC: u32 = 36;
pub(super) const FS_TICK: u32 = 30;
pub(super) const FS_LEGEND: u32 = 38;
pub(super) const FS_CELL: u32 = 32;
pub(super) const LINE_W: u32 = 5;
pub(super) const MARKER_S: i32 = 11;

pub(super) fn font(size: u32) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font()).color(&BLACK)
}

pub(super) fn centered(size: u32) -> TextStyle<'static> {
    font(size).pos(Pos::new(HPos::Center, VPos::Center))
}

pub(super) fn text_width(text: &str, size: u32) -> u32 {
    (FAMILY, size)
        .into_font()
        .box_size(text)
        .map(|(w, _)| w)
        .unwrap_or((text.len() as u32) * size / 2)
}

/// Draw one marker centred at `at` (area coordinates).
pub(super) fn draw_marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    m: Marker,
    at: (i32, i32),
    s: i32,
    c: RGBColor,
) -> DrawResult {
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
pub(super) fn legend_rows(labels: &[String], width: u32) -> Vec<Vec<usize>> {
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

pub(super) fn legend_entry_w(label: &str) -> u32 {
    90 + 16 + text_width(label, FS_LEGEND) + 56
}

pub(super) const LEGEND_ROW_H: u32 = 64;

pub(super) fn legend_height(labels: &[String], width: u32) -> u32 {
    legend_rows(labels, width).len() as u32 * LEGEND_ROW_H + 30
}

/// Draw the legend (line sample + marker + name per strategy) in its own area.
pub(super) fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    strategies: &[String],
    all: &[String],
    lines: bool,
) -> DrawResult {
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
