//! The critical-difference diagram (Demsar 2006): average ranks on one axis (best on the left), each strategy's
//! name joined to its rank, a bar of length CD, and thick bars joining groups whose ranks differ by less than CD
//! (not significantly different by the Nemenyi test).

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::style::*;
use super::{de, DrawResult, Figure};

/// Strategies' average ranks and the critical difference.
pub struct CdFigure<'a> {
    /// Strategy names, with `ranks` (1 = best).
    pub strategies: &'a [String],
    /// Average rank of each strategy.
    pub ranks: &'a [f64],
    /// The Nemenyi critical difference.
    pub cd: f64,
    /// Experiments the ranks are over.
    pub n_experiments: usize,
    /// Every strategy of the report (fixes the colours).
    pub all: &'a [String],
}

/// The maximal groups of consecutive strategies (by rank) whose rank span is below `cd`, as index ranges into
/// the sorted order; single strategies are not groups.
pub fn cliques(sorted_ranks: &[f64], cd: f64) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for i in 0..sorted_ranks.len() {
        let mut j = i;
        while j + 1 < sorted_ranks.len() && sorted_ranks[j + 1] - sorted_ranks[i] < cd {
            j += 1;
        }
        if j > i && !out.iter().any(|&(a, b)| a <= i && j <= b) {
            out.push((i, j));
        }
    }
    out
}

const ROW_H: i32 = 56;

impl CdFigure<'_> {
    fn order(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.ranks.len()).collect();
        idx.sort_by(|&a, &b| self.ranks[a].total_cmp(&self.ranks[b]));
        idx
    }
}

impl Figure for CdFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let half = self.strategies.len().div_ceil(2) as u32;
        let groups = cliques(
            &self
                .order()
                .iter()
                .map(|&i| self.ranks[i])
                .collect::<Vec<_>>(),
            self.cd,
        )
        .len();
        (W, TITLE_H + 290 + groups as u32 * 18 + half * ROW_H as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        root.fill(&WHITE).map_err(de)?;
        let (w, _) = root.dim_in_pixel();
        let title = format!(
            "Average ACC rank over {} experiments; Nemenyi critical difference CD = {:.2} (alpha = 0.05)",
            self.n_experiments, self.cd
        );
        root.draw_text(
            &title,
            &centered(FS_TITLE),
            (w as i32 / 2, TITLE_H as i32 / 2 + 4),
        )
        .map_err(de)?;
        let k = self.strategies.len().max(2);
        let (x0, x1) = (520i32, w as i32 - 520);
        let x_of = |r: f64| x0 + ((r - 1.0) / (k as f64 - 1.0) * (x1 - x0) as f64).round() as i32;
        let axis_y = TITLE_H as i32 + 200;
        let black = BLACK.stroke_width(4);
        // the CD bar above the axis, from rank 1
        let cd_y = TITLE_H as i32 + 60;
        root.draw(&PathElement::new(
            vec![(x_of(1.0), cd_y), (x_of(1.0 + self.cd), cd_y)],
            black,
        ))
        .map_err(de)?;
        for r in [1.0, 1.0 + self.cd] {
            root.draw(&PathElement::new(
                vec![(x_of(r), cd_y - 12), (x_of(r), cd_y + 12)],
                black,
            ))
            .map_err(de)?;
        }
        root.draw_text(
            &format!("CD = {:.2}", self.cd),
            &font(FS_TICK).pos(Pos::new(HPos::Left, VPos::Center)),
            (x_of(1.0 + self.cd) + 20, cd_y),
        )
        .map_err(de)?;
        // the rank axis with integer ticks
        root.draw(&PathElement::new(vec![(x0, axis_y), (x1, axis_y)], black))
            .map_err(de)?;
        for r in 1..=k {
            let x = x_of(r as f64);
            root.draw(&PathElement::new(
                vec![(x, axis_y - 16), (x, axis_y)],
                black,
            ))
            .map_err(de)?;
            root.draw_text(
                &r.to_string(),
                &font(FS_TICK).pos(Pos::new(HPos::Center, VPos::Bottom)),
                (x, axis_y - 22),
            )
            .map_err(de)?;
        }
        // groups not significantly different, as thick bars just under the axis
        let order = self.order();
        let sorted: Vec<f64> = order.iter().map(|&i| self.ranks[i]).collect();
        let groups = cliques(&sorted, self.cd);
        for (g, &(a, b)) in groups.iter().enumerate() {
            let y = axis_y + 26 + g as i32 * 18;
            root.draw(&PathElement::new(
                vec![(x_of(sorted[a]) - 8, y), (x_of(sorted[b]) + 8, y)],
                BLACK.stroke_width(9),
            ))
            .map_err(de)?;
        }
        // names: the better half to the left, the rest to the right
        let half = order.len().div_ceil(2);
        let top = axis_y + 40 + groups.len() as i32 * 18;
        for (pos, &i) in order.iter().enumerate() {
            let (c, m) = strategy_style(&self.strategies[i], self.all);
            let x = x_of(self.ranks[i]);
            let (row, left) = if pos < half {
                (pos, true)
            } else {
                (order.len() - 1 - pos, false)
            };
            let y = top + 30 + row as i32 * ROW_H;
            let x_end = if left { x0 - 30 } else { x1 + 30 };
            root.draw(&PathElement::new(
                vec![(x, axis_y), (x, y), (x_end, y)],
                c.stroke_width(3),
            ))
            .map_err(de)?;
            draw_marker(root, m, (x, axis_y), MARKER_S, c)?;
            let label = format!("{} ({:.2})", self.strategies[i], self.ranks[i]);
            let style = if left {
                font(FS_LEGEND).pos(Pos::new(HPos::Right, VPos::Center))
            } else {
                font(FS_LEGEND).pos(Pos::new(HPos::Left, VPos::Center))
            };
            root.draw_text(&label, &style, (x_end + if left { -12 } else { 12 }, y))
                .map_err(de)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::cliques;

    #[test]
    fn cliques_are_maximal_runs_within_cd() {
        // ranks 1.2, 2.3, 3.2, 3.3 with CD 2.097: {1.2, 2.3, 3.2} span 2.0 < CD; 3.3 - 1.2 = 2.1 >= CD;
        // {2.3, 3.2, 3.3} is a second group
        assert_eq!(cliques(&[1.2, 2.3, 3.2, 3.3], 2.097), vec![(0, 2), (1, 3)]);
        assert_eq!(cliques(&[1.0, 2.0, 3.0], 0.5), vec![]);
        assert_eq!(cliques(&[1.0, 1.1, 3.0], 0.5), vec![(0, 1)]);
    }
}
