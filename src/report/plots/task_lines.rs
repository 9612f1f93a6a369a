//! The shared shape of the per-task line figures (forgetting curves, Dice against clicks): one panel per task,
//! one mean ± std line per strategy, on an integer x axis.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::panel::*;
use super::style::*;
use super::{DrawResult, Figure};

/// One strategy's curve on one task.
pub(super) struct TaskLine<'a> {
    pub strategy: &'a str,
    pub task: &'a str,
    pub x: Vec<i64>,
    pub mean: &'a [f64],
    pub std: &'a [f64],
}

/// A figure of [`TaskLine`]s: one panel per task (in `tasks` order, tasks without a line left out).
pub(super) struct TaskLines<'a> {
    pub title: &'a str,
    pub x_desc: &'a str,
    /// The y axis: its label and whether it is a [0, 1] score (else it spans the data, from 0).
    pub y_desc: &'a str,
    pub unit_range: bool,
    pub lines: Vec<TaskLine<'a>>,
    pub tasks: &'a [String],
    pub strategies: &'a [String],
}

impl TaskLines<'_> {
    fn panel_tasks(&self) -> Vec<&String> {
        self.tasks
            .iter()
            .filter(|t| self.lines.iter().any(|c| c.task == t.as_str()))
            .collect()
    }
    fn legend_names(&self) -> Vec<String> {
        present(self.strategies, |s| {
            self.lines.iter().any(|c| c.strategy == s)
        })
    }
}

impl Figure for TaskLines<'_> {
    fn size(&self) -> (u32, u32) {
        let (rows, _) = grid_dims(self.panel_tasks().len(), 3);
        (
            W,
            TITLE_H + rows as u32 * 720 + legend_height(&self.legend_names(), W),
        )
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let names = self.legend_names();
        let main = frame(root, self.title, Some((&names, self.strategies, true)))?;
        let tasks = self.panel_tasks();
        let panels = main.split_evenly(grid_dims(tasks.len(), 3));
        // Dice lies in [0, 1]; bands are clipped to the plotting area.
        let lo = self
            .lines
            .iter()
            .flat_map(|c| c.mean.iter().zip(c.std.iter()).map(|(m, s)| m - s))
            .fold(0.0f64, f64::min)
            .max(-0.05);
        let hi = if self.unit_range {
            1.02
        } else {
            self.lines
                .iter()
                .flat_map(|c| c.mean.iter().zip(c.std.iter()).map(|(m, s)| m + s))
                .filter(|v| v.is_finite())
                .fold(1.0f64, f64::max)
                * 1.05
        };
        for (task, panel) in tasks.iter().zip(panels.iter()) {
            let series: Vec<Line> = names
                .iter()
                .filter_map(|s| {
                    self.lines
                        .iter()
                        .find(|c| c.strategy == s && c.task == task.as_str())
                })
                .map(|c| Line::mean_std(c.strategy, &c.x, c.mean, c.std))
                .collect();
            line_panel_x(
                root,
                panel,
                task,
                self.x_desc,
                self.y_desc,
                &series,
                (lo.min(0.0), hi),
                self.strategies,
                &|y| format!("{y:.1}"),
            )?;
        }
        Ok(())
    }
}
