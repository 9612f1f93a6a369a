//! Box plots of the study: one panel per measure, one group of boxes per annotator and pooled ("all"), one box
//! per model (whiskers: min and max; box: quartiles; line: median).

use plotters::coord::Shift;
use plotters::prelude::*;

use super::analysis::{BoxStat, StudyReport, MEASURES};
use crate::report::plots::{DrawResult, Figure};

const MODEL_COLOURS: [RGBColor; 2] = [RGBColor(213, 94, 0), RGBColor(120, 120, 120)];

/// The study's box plots.
pub struct StudyFigure<'a> {
    /// The numbers.
    pub report: &'a StudyReport,
}

fn de<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

impl Figure for StudyFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1800, 700)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let r = self.report;
        root.fill(&WHITE).map_err(de)?;
        let (title, rest) = root.split_vertically(60);
        title
            .titled(
                &format!(
                    "Annotation study: {} (per annotator and pooled; {} accepted cases)",
                    r.models.join(" vs "),
                    r.n_rows
                ),
                ("sans-serif", 28),
            )
            .map_err(de)?;
        let (body, legend) = rest.split_vertically(590);
        let panels = body.split_evenly((1, MEASURES.len()));
        let ng = r.groups.len();
        let nm = r.models.len().max(1);
        for ((key, name), panel) in MEASURES.iter().zip(panels.iter()) {
            let stats: Vec<Vec<Option<BoxStat>>> = r
                .groups
                .iter()
                .map(|g| {
                    r.values[g]
                        .iter()
                        .map(|by| BoxStat::of(&by[*key]))
                        .collect()
                })
                .collect();
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for b in stats.iter().flatten().flatten() {
                lo = lo.min(b.min);
                hi = hi.max(b.max);
            }
            if !lo.is_finite() {
                (lo, hi) = (0.0, 1.0);
            }
            let pad = ((hi - lo) * 0.08).max(0.05);
            let groups = r.groups.clone();
            let mut chart = ChartBuilder::on(panel)
                .caption(*name, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(-0.5f64..(ng as f64 - 0.5), (lo - pad)..(hi + pad))
                .map_err(de)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(ng.max(2) * 4 + 1)
                .x_label_formatter(&|x| {
                    let k = x.round();
                    if (x - k).abs() < 1e-6 && k >= 0.0 && (k as usize) < groups.len() {
                        groups[k as usize].clone()
                    } else {
                        String::new()
                    }
                })
                .label_style(("sans-serif", 16))
                .draw()
                .map_err(de)?;
            let width = 0.7 / nm as f64;
            for (gi, per_model) in stats.iter().enumerate() {
                for (mi, b) in per_model.iter().enumerate() {
                    let Some(b) = b else { continue };
                    let c = MODEL_COLOURS[mi % 2];
                    let x0 = gi as f64 - 0.35 + mi as f64 * width + width * 0.1;
                    let x1 = x0 + width * 0.8;
                    let xm = (x0 + x1) / 2.0;
                    chart
                        .draw_series([
                            Rectangle::new([(x0, b.q1), (x1, b.q3)], c.mix(0.35).filled()),
                            Rectangle::new([(x0, b.q1), (x1, b.q3)], c.stroke_width(2)),
                        ])
                        .map_err(de)?;
                    chart
                        .draw_series([
                            PathElement::new(
                                vec![(x0, b.median), (x1, b.median)],
                                BLACK.stroke_width(3),
                            ),
                            PathElement::new(vec![(xm, b.q3), (xm, b.max)], c.stroke_width(2)),
                            PathElement::new(vec![(xm, b.q1), (xm, b.min)], c.stroke_width(2)),
                            PathElement::new(
                                vec![(x0 + width * 0.2, b.max), (x1 - width * 0.2, b.max)],
                                c.stroke_width(2),
                            ),
                            PathElement::new(
                                vec![(x0 + width * 0.2, b.min), (x1 - width * 0.2, b.min)],
                                c.stroke_width(2),
                            ),
                        ])
                        .map_err(de)?;
                }
            }
        }
        let w = legend.dim_in_pixel().0 as i32;
        for (mi, m) in r.models.iter().enumerate() {
            let x = w / 2 - 200 + mi as i32 * 260;
            legend
                .draw(&Rectangle::new(
                    [(x, 12), (x + 30, 34)],
                    MODEL_COLOURS[mi % 2].mix(0.6).filled(),
                ))
                .map_err(de)?;
            legend
                .draw(&Text::new(m.clone(), (x + 40, 12), ("sans-serif", 20)))
                .map_err(de)?;
        }
        Ok(())
    }
}
