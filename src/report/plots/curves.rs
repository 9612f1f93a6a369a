//! Forgetting curves: Dice per task against training stage, one panel per task.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::super::analysis::CurveSeries;
use super::task_lines::{TaskLine, TaskLines};
use super::{DrawResult, Figure};

/// The forgetting-curves figure: one panel per task, one line per strategy.
pub struct CurvesFigure<'a> {
    /// The curves.
    pub curves: &'a [CurveSeries],
    /// Tasks in panel order.
    pub tasks: &'a [String],
    /// All strategies of the report (their order fixes colours and markers).
    pub strategies: &'a [String],
}

impl CurvesFigure<'_> {
    fn lines(&self) -> TaskLines<'_> {
        TaskLines {
            title: "Dice per task against training stage (mean ± std over seeds and orders)",
            x_desc: "Training stage (0 = before training)",
            lines: self
                .curves
                .iter()
                .map(|c| TaskLine {
                    strategy: &c.strategy,
                    task: &c.task,
                    x: c.stages.clone(),
                    mean: &c.mean,
                    std: &c.std,
                })
                .collect(),
            tasks: self.tasks,
            strategies: self.strategies,
        }
    }
}

impl Figure for CurvesFigure<'_> {
    fn size(&self) -> (u32, u32) {
        self.lines().size()
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        self.lines().draw(root)
    }
}
