//! Routing confusion of one strategy at the final stage: which expert each true task was routed to.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::super::analysis::ConfusionData;
use super::matrix::*;
use super::panel::*;
use super::{DrawResult, Figure};

/// The routing-confusion figure of one strategy.
pub struct ConfusionFigure<'a> {
    /// Its numbers.
    pub data: &'a ConfusionData,
}

impl ConfusionFigure<'_> {
    fn spec(&self) -> MatrixSpec<'static> {
        let d = self.data;
        MatrixSpec {
            row_labels: d.true_labels.clone(),
            col_labels: d.routed_labels.clone(),
            cells: d
                .counts
                .iter()
                .zip(d.fractions.iter())
                .map(|(cr, fr)| {
                    cr.iter()
                        .zip(fr.iter())
                        .map(|(c, f)| Some((*f, vec![format!("{f:.2}"), format!("n={c}")])))
                        .collect()
                })
                .collect(),
            x_desc: "Routed to (expert)",
            y_desc: "True task",
            cmap: &BLUES,
            bar_label: "Fraction of the true task's cases",
            ticks: unit_ticks(),
        }
    }
}

impl Figure for ConfusionFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let (w, h) = matrix_size(&self.spec());
        (w.max(1500), h)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let title = format!(
            "Routing confusion at the final stage: {}",
            self.data.strategy
        );
        let main = frame(root, &title, None)?;
        draw_matrix(&main, &self.spec())
    }
}

// ---------------------------------------------------------------- summary bars
