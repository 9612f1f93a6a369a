//! Interactive study: NoC@τ per strategy as bars (mean ± std over runs), one panel per target τ.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::panel::*;
use super::style::*;
use super::summary::{bar_label_layout, draw_bar_labels, draw_bars};
use super::{de, DrawResult, Figure};
use crate::report::interactive::NocBar;

/// The NoC figure: one bar panel per target.
pub struct NocFigure<'a> {
    /// The bars.
    pub bars: &'a [NocBar],
    /// The targets τ in panel order.
    pub targets: &'a [f64],
    /// max_clicks + 1: the value of a case that never reaches τ (drawn as a dashed line).
    pub never: usize,
    /// All strategies of the report.
    pub strategies: &'a [String],
}

impl NocFigure<'_> {
    fn names(&self) -> Vec<String> {
        present(self.strategies, |s| {
            self.bars.iter().any(|b| b.strategy == s)
        })
    }
}

impl Figure for NocFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let names = self.names();
        let (rows, _) = grid_dims(self.targets.len(), 2);
        (
            W,
            TITLE_H + rows as u32 * (700 + bar_label_layout(&names).2) + legend_height(&names, W),
        )
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let names = self.names();
        let main = frame(
            root,
            &format!(
                "Clicks to reach Dice ≥ τ (NoC@τ, lower is better; {} = never within the budget)",
                self.never
            ),
            Some((&names, self.strategies, false)),
        )?;
        let panels = main.split_evenly(grid_dims(self.targets.len(), 2));
        let ns = names.len().max(1);
        let hi = self.never as f64 + 0.6;
        for (t, panel) in self.targets.iter().zip(panels.iter()) {
            let stats: Vec<(usize, f64, f64)> = names
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    self.bars
                        .iter()
                        .find(|b| &b.strategy == s && b.target == *t)
                        .map(|b| (i, b.stat.mean, b.stat.std))
                })
                .collect();
            let mut chart = panel_chart(
                panel,
                &format!("NoC@{t}"),
                bar_label_layout(&names).2,
                -0.6f64..(ns as f64 - 0.4),
                0.0..hi,
            )?;
            panel_mesh(&mut chart)
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(6)
                .y_label_formatter(&|y| tick_label(*y, 0))
                .y_desc("Clicks")
                .draw()
                .map_err(de)?;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![
                        (-0.6, self.never as f64),
                        (ns as f64 - 0.4, self.never as f64),
                    ],
                    BLACK.mix(0.5).stroke_width(2),
                )))
                .map_err(de)?;
            draw_bars(&mut chart, &stats, &names, self.strategies)?;
            draw_bar_labels(root, &chart, &names, 0.0)?;
        }
        Ok(())
    }
}
