//! Interactive study: mean Dice against the number of simulated clicks, one panel per task.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::panel::*;
use super::style::*;
use super::{DrawResult, Figure};
use crate::report::interactive::ClickCurve;

/// The Dice-vs-clicks figure: one panel per task, one line per strategy (mean ± std over runs).
pub struct ClicksFigure<'a> {
    /// The curves.
    pub curves: &'a [ClickCurve],
    /// Tasks in panel order.
    pub tasks: &'a [String],
    /// All strategies of the report (their order fixes colours and markers).
    pub strategies: &'a [String],
}

impl ClicksFigure<'_> {
    fn panel_tasks(&self) -> Vec<&String> {
        self.tasks
            .iter()
            .filter(|t| self.curves.iter().any(|c| &c.task == *t))
            .collect()
    }
    fn legend_names(&self) -> Vec<String> {
        present(self.strategies, |s| {
            self.curves.iter().any(|c| c.strategy == s)
        })
    }
}

impl Figure for ClicksFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let (rows, _) = grid_dims(self.panel_tasks().len(), 3);
        (
            W,
            TITLE_H + rows as u32 * 720 + legend_height(&self.legend_names(), W),
        )
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let names = self.legend_names();
        let main = frame(
            root,
            "Dice against simulated clicks (mean ± std over seeds and orders)",
            Some((&names, self.strategies, true)),
        )?;
        let tasks = self.panel_tasks();
        let panels = main.split_evenly(grid_dims(tasks.len(), 3));
        let lo = self
            .curves
            .iter()
            .flat_map(|c| c.mean.iter().zip(c.std.iter()).map(|(m, s)| m - s))
            .fold(0.0f64, f64::min)
            .max(-0.05);
        for (task, panel) in tasks.iter().zip(panels.iter()) {
            let clicks: Vec<Vec<i64>> = names
                .iter()
                .filter_map(|s| {
                    self.curves
                        .iter()
                        .find(|c| &c.strategy == s && &c.task == *task)
                })
                .map(|c| (0..c.mean.len() as i64).collect())
                .collect();
            let series: Vec<Line> = names
                .iter()
                .filter_map(|s| {
                    self.curves
                        .iter()
                        .find(|c| &c.strategy == s && &c.task == *task)
                })
                .zip(&clicks)
                .map(|(c, k)| Line::mean_std(&c.strategy, k, &c.mean, &c.std))
                .collect();
            line_panel_x(
                root,
                panel,
                task,
                "Clicks after the box (0 = box only)",
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
