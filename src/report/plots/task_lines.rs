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

impl<'a> TaskLine<'a> {
    /// The line of one stage curve (forgetting curves, the comparison's ACC curves).
    pub fn of_stages(c: &'a super::super::analysis::CurveSeries) -> Self {
        Self {
            strategy: &c.strategy,
            task: &c.task,
            x: c.stages.clone(),
            mean: &c.mean,
            std: &c.std,
        }
    }
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
        // The y range: a [0, 1] score from 0 to 1, zoomed onto the data when every band lies above 0.5 (scores that
        // differ in the second decimal, e.g. prostate Dice around 0.93, would otherwise be one line); a distance
        // from 0 to the data's top. Bands are clipped to the plotting area.
        let (dmin, dmax) = self
            .lines
            .iter()
            .flat_map(|c| {
                c.mean
                    .iter()
                    .zip(c.std.iter())
                    .flat_map(|(m, s)| [m - s, m + s])
            })
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        let (lo, hi) = if !dmin.is_finite() {
            (0.0, 1.02)
        } else if self.unit_range && dmin > 0.5 {
            let pad = (0.1 * (dmax - dmin)).max(0.01);
            ((dmin - pad).max(0.0), (dmax + pad).min(1.02))
        } else if self.unit_range {
            (dmin.clamp(-0.05, 0.0), 1.02)
        } else {
            (0.0, dmax.max(1.0) * 1.05)
        };
        let decimals = if hi - lo < 0.3 { 2 } else { 1 };
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
            LinePanel {
                caption: task,
                x_desc: self.x_desc,
                y_desc: self.y_desc,
                series: &series,
                y_range: (lo, hi),
                y_fmt: &|y| format!("{y:.decimals$}"),
            }
            .draw(root, panel, self.strategies)?;
        }
        Ok(())
    }
}
