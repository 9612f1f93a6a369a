//! Accuracy matrix of one strategy: Dice per (stage, evaluated task), mean ± std over runs.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::super::analysis::HeatmapData;
use super::matrix::*;
use super::panel::*;
use super::{DrawResult, Figure};

/// The accuracy-matrix figure of one strategy.
pub struct HeatmapFigure<'a> {
    /// Its numbers.
    pub data: &'a HeatmapData,
}

impl HeatmapFigure<'_> {
    fn spec(&self) -> MatrixSpec<'static> {
        let d = self.data;
        MatrixSpec {
            row_labels: d
                .stages
                .iter()
                .map(|k| {
                    if *k == 0 {
                        "0 (zero-shot)".into()
                    } else {
                        k.to_string()
                    }
                })
                .collect(),
            col_labels: d.col_labels.clone(),
            cells: d
                .cells
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|c| {
                            c.map(|s| {
                                let mut lines = vec![format!("{:.2}", s.mean)];
                                if s.n > 1 {
                                    lines.push(format!("± {:.2}", s.std));
                                }
                                (s.mean, lines)
                            })
                        })
                        .collect()
                })
                .collect(),
            x_desc: "Evaluated task (position in the order)",
            y_desc: "Stage",
            cmap: &VIRIDIS,
            bar_label: "Dice",
        }
    }
}

impl Figure for HeatmapFigure<'_> {
    fn size(&self) -> (u32, u32) {
        matrix_size(&self.spec())
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let title = format!(
            "Accuracy matrix: {} (Dice, mean ± std over runs)",
            self.data.strategy
        );
        let main = frame(root, &title, None)?;
        draw_matrix(&main, &self.spec())
    }
}
