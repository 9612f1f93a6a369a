//! Interactive study: mean Dice against the number of simulated clicks, one panel per task.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::task_lines::{TaskLine, TaskLines};
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
    fn lines(&self) -> TaskLines<'_> {
        TaskLines {
            title: "Dice against simulated clicks (mean ± std over seeds and orders)",
            x_desc: "Clicks after the box (0 = box only)",
            y_desc: "Dice",
            unit_range: true,
            lines: self
                .curves
                .iter()
                .map(|c| TaskLine {
                    strategy: &c.strategy,
                    task: &c.task,
                    x: (0..c.mean.len() as i64).collect(),
                    mean: &c.mean,
                    std: &c.std,
                })
                .collect(),
            tasks: self.tasks,
            strategies: self.strategies,
        }
    }
}

impl Figure for ClicksFigure<'_> {
    fn size(&self) -> (u32, u32) {
        self.lines().size()
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        self.lines().draw(root)
    }
}
