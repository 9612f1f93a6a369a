//! Forgetting curves: Dice per task against training stage, one panel per task.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::super::analysis::CurveSeries;
use super::task_lines::{TaskLine, TaskLines};
use super::{DrawResult, Figure};
use crate::metrics::Metric;

/// The forgetting-curves figure: one panel per task, one line per strategy.
pub struct CurvesFigure<'a> {
    /// The curves.
    pub curves: &'a [CurveSeries],
    /// Tasks in panel order.
    pub tasks: &'a [String],
    /// All strategies of the report (their order fixes colours and markers).
    pub strategies: &'a [String],
    /// The per-case metric of the curves.
    pub metric: crate::metrics::Metric,
}

impl CurvesFigure<'_> {
    fn lines(&self) -> TaskLines<'_> {
        TaskLines {
            title: match self.metric {
                Metric::Dice => "Dice per task against training stage (mean ± std over seeds and orders)",
                Metric::Nsd => "NSD per task against training stage (mean ± std over seeds and orders)",
                Metric::Hd95 => {
                    "HD95 per task against training stage (mean ± std over seeds and orders; lower is better)"
                }
            },
            x_desc: super::panel::STAGE_AXIS,
            y_desc: match self.metric {
                Metric::Hd95 => "HD95 (mm or px)",
                m => m.label(),
            },
            unit_range: self.metric.higher_is_better(),
            lines: self.curves.iter().map(TaskLine::of_stages).collect(),
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
