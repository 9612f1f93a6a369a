//! Parameter growth (trainable parameters, number of experts) against tasks.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::super::analysis::{GrowthSeries, GROWTH_KEYS};
use super::panel::*;
use super::style::*;
use super::{DrawResult, Figure};

/// The parameter-growth figure: one panel per growth key.
pub struct GrowthFigure<'a> {
    /// The series.
    pub growth: &'a [GrowthSeries],
    /// All strategies of the report.
    pub strategies: &'a [String],
}

impl GrowthFigure<'_> {
    fn keys(&self) -> Vec<&'static str> {
        GROWTH_KEYS
            .iter()
            .copied()
            .filter(|k| self.growth.iter().any(|g| g.key == *k))
            .collect()
    }
    fn names(&self) -> Vec<String> {
        present(self.strategies, |s| {
            self.growth.iter().any(|g| g.strategy == s)
        })
    }
}

impl Figure for GrowthFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (W, TITLE_H + 820 + legend_height(&self.names(), W))
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let names = self.names();
        let main = frame(
            root,
            "Parameter growth against tasks (mean ± std over runs)",
            Some((&names, self.strategies, true)),
        )?;
        let keys = self.keys();
        let panels = main.split_evenly((1, keys.len().max(1)));
        for (key, panel) in keys.iter().zip(panels.iter()) {
            let found: Vec<&GrowthSeries> = names
                .iter()
                .filter_map(|s| {
                    self.growth
                        .iter()
                        .find(|g| &g.strategy == s && g.key == *key)
                })
                .collect();
            let (caption, desc) = match *key {
                "trainable_params" => ("Trainable parameters (total)", "Parameters"),
                _ => ("Number of experts", "Experts"),
            };
            let pos: Vec<f64> = found
                .iter()
                .flat_map(|g| g.mean.iter().copied())
                .filter(|v| *v > 0.0)
                .collect();
            let pmin = pos.iter().copied().fold(f64::INFINITY, f64::min);
            let pmax = found
                .iter()
                .flat_map(|g| g.mean.iter().zip(&g.std).map(|(m, s)| m + s))
                .fold(0.0f64, f64::max);
            if log_scale_wanted(pmin, pmax) {
                // Values spanning orders of magnitude: log10 axis; zero values are not drawn.
                let (lo, hi) = ((pmin / 2.0).log10().floor(), (pmax * 2.0).log10());
                let series: Vec<Line> = found
                    .iter()
                    .map(|g| Line::log10(&g.strategy, &g.stages, &g.mean, &g.std, lo))
                    .collect();
                let cap = format!("{caption}, log scale (zeros not shown)");
                LinePanel {
                    caption: &cap,
                    x_desc: STAGE_AXIS,
                    y_desc: desc,
                    series: &series,
                    y_range: (lo, hi),
                    y_fmt: &pow10_label,
                }
                .draw(root, panel, self.strategies)?;
            } else {
                let hi = if pmax > 0.0 { pmax * 1.08 } else { 1.0 };
                let series: Vec<Line> = found
                    .iter()
                    .map(|g| Line::mean_std(&g.strategy, &g.stages, &g.mean, &g.std))
                    .collect();
                let fmt: &dyn Fn(&f64) -> String = if *key == "n_experts" {
                    &int_label
                } else {
                    &si_label
                };
                LinePanel {
                    caption,
                    x_desc: STAGE_AXIS,
                    y_desc: desc,
                    series: &series,
                    y_range: (0.0, hi),
                    y_fmt: fmt,
                }
                .draw(root, panel, self.strategies)?;
            }
        }
        Ok(())
    }
}
