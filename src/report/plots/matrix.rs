//! The labelled matrix of coloured cells with a colour bar, shared by the accuracy heatmaps and the routing
//! confusion.

use plotters::coord::Shift;
use plotters::prelude::*;

use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::style::*;
use super::{de, DrawResult};

pub(super) fn lerp_map(stops: &[(f64, (u8, u8, u8))], v: f64) -> RGBColor {
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
pub(super) const VIRIDIS: [(f64, (u8, u8, u8)); 9] = [
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
pub(super) const BLUES: [(f64, (u8, u8, u8)); 5] = [
    (0.0, (247, 251, 255)),
    (0.25, (198, 219, 239)),
    (0.5, (107, 174, 214)),
    (0.75, (33, 113, 181)),
    (1.0, (8, 48, 107)),
];

pub(super) fn text_on(c: &RGBColor) -> RGBColor {
    let l = 0.299 * c.0 as f64 + 0.587 * c.1 as f64 + 0.114 * c.2 as f64;
    if l < 140.0 {
        WHITE
    } else {
        BLACK
    }
}

/// Colour value in [0, 1] and the text lines of one matrix cell.
pub(super) type CellContent = (f64, Vec<String>);

/// A labelled grid of coloured cells with text, plus a colour bar.
pub(super) struct MatrixSpec<'a> {
    pub(super) row_labels: Vec<String>,
    pub(super) col_labels: Vec<String>,
    /// (value for the colour in [0,1], text lines) per cell; None = empty cell.
    pub(super) cells: Vec<Vec<Option<CellContent>>>,
    pub(super) x_desc: &'a str,
    pub(super) y_desc: &'a str,
    pub(super) cmap: &'a [(f64, (u8, u8, u8))],
    pub(super) bar_label: &'a str,
    /// Colour-bar ticks: (position in [0, 1], label).
    pub(super) ticks: Vec<(f64, String)>,
}

/// Ticks of a [0, 1] colour bar.
pub(super) fn unit_ticks() -> Vec<(f64, String)> {
    [(1.0, "1.0"), (0.5, "0.5"), (0.0, "0.0")]
        .map(|(v, t)| (v, t.to_string()))
        .to_vec()
}

pub(super) const CELL_W_MIN: u32 = 250;
pub(super) const CELL_W_MAX: u32 = 460;

/// Cell width: wide enough for the column labels at tick size, within limits.
pub(super) fn cell_w(spec: &MatrixSpec) -> u32 {
    let widest = spec
        .col_labels
        .iter()
        .map(|l| text_width(l, FS_TICK + 4))
        .max()
        .unwrap_or(0);
    (widest + 24).clamp(CELL_W_MIN, CELL_W_MAX)
}
pub(super) const CELL_H: u32 = 130;
pub(super) const MAT_LEFT: u32 = 60; // room for the rotated y description

pub(super) fn matrix_row_label_w(spec: &MatrixSpec) -> u32 {
    spec.row_labels
        .iter()
        .map(|l| text_width(l, FS_TICK + 4))
        .max()
        .unwrap_or(0)
        + 30
}

pub(super) fn matrix_col_font(spec: &MatrixSpec) -> u32 {
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

pub(super) fn matrix_size(spec: &MatrixSpec) -> (u32, u32) {
    let w = MAT_LEFT
        + matrix_row_label_w(spec)
        + spec.col_labels.len() as u32 * cell_w(spec)
        + 60
        + 200;
    let h = TITLE_H + 30 + spec.row_labels.len() as u32 * CELL_H + 70 + 80 + 40;
    (w.max(1000), h.max(700))
}

pub(super) fn draw_matrix<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    spec: &MatrixSpec,
) -> DrawResult {
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
    for (v, t) in spec.ticks.iter().map(|(v, t)| (*v, t.as_str())) {
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
