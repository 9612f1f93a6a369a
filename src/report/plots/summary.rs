//! Continual-learning metrics (ACC, BWT, FWT, forgetting) as bars per strategy, one panel per metric.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::super::analysis::{MetricBar, METRICS};
use super::panel::*;
use super::style::*;
use super::{de, DrawResult, Figure};

/// Font size, rotation and label-area height for the strategy names under the bars. The slot per
/// bar is estimated from the panel width (half the figure, less the y-label area and margins).
pub(super) fn bar_label_layout(names: &[String]) -> (u32, bool, u32) {
    let slot = (W / 2 - 130 - 68) / names.len().max(1) as u32;
    let widest = |fs| names.iter().map(|n| text_width(n, fs)).max().unwrap_or(1);
    if widest(FS_TICK) + 12 <= slot {
        return (FS_TICK, false, 60);
    }
    let fs = ((FS_TICK as f64) * (slot.saturating_sub(12)) as f64 / widest(FS_TICK) as f64).floor()
        as u32;
    if fs >= 24 {
        return (fs, false, 60);
    }
    (FS_TICK, true, widest(FS_TICK) + 30)
}

/// The chart of a bar panel (strategy index on x).
type BarChart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Bars `(strategy index, mean, std)` in the strategies' colours, with a std error bar where std > 0.
pub(super) fn draw_bars<DB: DrawingBackend>(
    chart: &mut BarChart<'_, DB>,
    stats: &[(usize, f64, f64)],
    names: &[String],
    strategies: &[String],
) -> DrawResult {
    for (i, m, s) in stats {
        let (c, _) = strategy_style(&names[*i], strategies);
        let x = *i as f64;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x - 0.34, 0.0), (x + 0.34, *m)],
                c.filled(),
            )))
            .map_err(de)?;
        if *s > 0.0 {
            let eb = BLACK.stroke_width(4);
            chart
                .draw_series([
                    PathElement::new(vec![(x, m - s), (x, m + s)], eb),
                    PathElement::new(vec![(x - 0.12, m - s), (x + 0.12, m - s)], eb),
                    PathElement::new(vec![(x - 0.12, m + s), (x + 0.12, m + s)], eb),
                ])
                .map_err(de)?;
        }
    }
    Ok(())
}

/// The strategy names under the bars (at y = `y_base`), laid out by [`bar_label_layout`].
pub(super) fn draw_bar_labels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &BarChart<'_, DB>,
    names: &[String],
    y_base: f64,
) -> DrawResult {
    let (fs, rotated, _) = bar_label_layout(names);
    for (i, n) in names.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64, y_base));
        if rotated {
            let st = font(fs)
                .pos(Pos::new(HPos::Right, VPos::Center))
                .transform(FontTransform::Rotate270);
            root.draw_text(n, &st, (x, y + 10)).map_err(de)?;
        } else {
            root.draw_text(
                n,
                &font(fs).pos(Pos::new(HPos::Center, VPos::Top)),
                (x, y + 8),
            )
            .map_err(de)?;
        }
    }
    Ok(())
}

/// The summary-metrics figure: one bar panel per metric.
pub struct SummaryFigure<'a> {
    /// The bars.
    pub bars: &'a [MetricBar],
    /// All strategies of the report.
    pub strategies: &'a [String],
}

impl SummaryFigure<'_> {
    fn names(&self) -> Vec<String> {
        present(self.strategies, |s| {
            self.bars.iter().any(|b| b.strategy == s)
        })
    }
}

impl Figure for SummaryFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let names = self.names();
        (
            W,
            TITLE_H + 2 * (700 + bar_label_layout(&names).2) + legend_height(&names, W),
        )
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let names = self.names();
        let main = frame(
            root,
            "Continual-learning metrics per strategy (mean ± std over seeds and orders)",
            Some((&names, self.strategies, false)),
        )?;
        let panels = main.split_evenly((2, 2));
        let ns = names.len().max(1);
        for (metric, panel) in METRICS.iter().zip(panels.iter()) {
            let vals: Vec<(usize, &MetricBar)> = names
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    self.bars
                        .iter()
                        .find(|b| &b.strategy == s && b.metric == *metric)
                        .map(|b| (i, b))
                })
                .collect();
            let stats: Vec<(usize, f64, f64)> = vals
                .iter()
                .filter_map(|(i, b)| b.stat.map(|s| (*i, s.mean, s.std)))
                .collect();
            let lo = stats.iter().map(|s| s.1 - s.2).fold(0.0f64, f64::min);
            let hi = stats.iter().map(|s| s.1 + s.2).fold(0.0f64, f64::max);
            let pad = ((hi - lo) * 0.08).max(0.02);
            let (lo, hi) = (
                if lo < 0.0 { lo - pad } else { 0.0 },
                if hi > 0.0 { hi + pad } else { pad },
            );
            let dec = (-((hi - lo) / 6.0).log10().floor()).clamp(0.0, 6.0) as usize;
            let caption = match *metric {
                "Forgetting" => "Forgetting (lower is better)".to_string(),
                m => format!("{m} (higher is better)"),
            };
            let mut chart = panel_chart(
                panel,
                &caption,
                bar_label_layout(&names).2,
                -0.6f64..(ns as f64 - 0.4),
                lo..hi,
            )?;
            panel_mesh(&mut chart)
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(6)
                .y_label_formatter(&|y| tick_label(*y, dec))
                .y_desc(*metric)
                .draw()
                .map_err(de)?;
            if stats.is_empty() {
                let c = chart.backend_coord(&((ns as f64 - 1.0) / 2.0, (lo + hi) / 2.0));
                root.draw_text("n/a (no values)", &centered(FS_DESC), c)
                    .map_err(de)?;
                continue;
            }
            if stats.iter().all(|s| s.1 == 0.0 && s.2 == 0.0) {
                // Zero-height bars are invisible: say so.
                let c = chart.backend_coord(&((ns as f64 - 1.0) / 2.0, (lo + hi) / 2.0));
                root.draw_text("all values are 0", &centered(FS_DESC), c)
                    .map_err(de)?;
            }
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(-0.6, 0.0), (ns as f64 - 0.4, 0.0)],
                    BLACK.stroke_width(2),
                )))
                .map_err(de)?;
            draw_bars(&mut chart, &stats, &names, self.strategies)?;
            // Strategy names under the axis: horizontal when they fit, else vertical.
            draw_bar_labels(root, &chart, &names, lo)?;
        }
        Ok(())
    }
}
