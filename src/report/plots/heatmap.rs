//! Accuracy matrix of one strategy: Dice per (stage, evaluated task), mean ± std over runs.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::super::analysis::HeatmapData;
use super::matrix::*;
use super::panel::*;
use super::style::{text_width, FS_TITLE};
use super::{DrawResult, Figure};

/// The accuracy-matrix figure of one strategy.
pub struct HeatmapFigure<'a> {
    /// Its numbers.
    pub data: &'a HeatmapData,
    /// The per-case metric of the cells.
    pub metric: crate::metrics::Metric,
}

impl HeatmapFigure<'_> {
    fn spec(&self) -> MatrixSpec<'static> {
        let d = self.data;
        // a [0, 1] score is its own colour; a distance (HD95) is scaled by the largest mean, reversed so that
        // better is the same colour as a high Dice
        let vmax = d
            .cells
            .iter()
            .flatten()
            .flatten()
            .map(|s| s.mean)
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let higher = self.metric.higher_is_better();
        let colour = move |v: f64| if higher { v } else { 1.0 - v / vmax };
        let ticks = if higher {
            unit_ticks()
        } else {
            vec![
                (1.0, "0".to_string()),
                (0.5, format!("{:.1}", vmax / 2.0)),
                (0.0, format!("{vmax:.1}")),
            ]
        };
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
                                (colour(s.mean), lines)
                            })
                        })
                        .collect()
                })
                .collect(),
            x_desc: "Evaluated task (position in the order)",
            y_desc: "Stage",
            cmap: &VIRIDIS,
            bar_label: self.metric.label(),
            ticks: ticks.clone(),
        }
    }
}

impl HeatmapFigure<'_> {
    fn title(&self) -> String {
        format!(
            "Accuracy matrix: {} ({}, mean ± std over runs)",
            self.data.strategy,
            self.metric.label()
        )
    }
}

impl Figure for HeatmapFigure<'_> {
    fn size(&self) -> (u32, u32) {
        // wide enough for the title (a two-task matrix is narrower than its title)
        let (w, h) = matrix_size(&self.spec());
        (w.max(text_width(&self.title(), FS_TITLE) + 80), h)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let title = self.title();
        let main = frame(root, &title, None)?;
        draw_matrix(&main, &self.spec())
    }
}
