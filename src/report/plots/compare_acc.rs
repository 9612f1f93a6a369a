//! The comparison's ACC curves: one panel per experiment, ACC over the tasks trained so far against stage, one line
//! per strategy (a strategy an experiment lacks has no line there).

use plotters::coord::Shift;
use plotters::prelude::*;

use super::super::analysis::CurveSeries;
use super::task_lines::{TaskLine, TaskLines};
use super::{DrawResult, Figure};

/// ACC against stage, one panel per experiment.
pub struct CompareAccFigure<'a> {
    /// The curves; `task` holds the experiment label.
    pub curves: &'a [CurveSeries],
    /// Experiment labels in panel order.
    pub experiments: &'a [String],
    /// All strategies of the comparison (their order fixes colours and markers).
    pub strategies: &'a [String],
    /// The per-case metric of ACC.
    pub metric: crate::metrics::Metric,
}

impl CompareAccFigure<'_> {
    fn lines(&self) -> TaskLines<'_> {
        TaskLines {
            title: if self.metric.higher_is_better() {
                "ACC (mean over the tasks trained so far) against stage, per experiment (mean ± std over runs)"
            } else {
                "ACC (mean over the tasks trained so far; lower is better) against stage, per experiment"
            },
            x_desc: "Training stage (tasks trained)",
            y_desc: self.metric.label(),
            unit_range: self.metric.higher_is_better(),
            lines: self.curves.iter().map(TaskLine::of_stages).collect(),
            tasks: self.experiments,
            strategies: self.strategies,
        }
    }
}

impl Figure for CompareAccFigure<'_> {
    fn size(&self) -> (u32, u32) {
        self.lines().size()
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        self.lines().draw(root)
    }
}
