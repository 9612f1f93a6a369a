//! A results set re-expressed in another per-case metric (`evosam report --metric nsd|hd95`): every score's
//! value becomes that metric's, the accuracy matrix is averaged again from the scores, and ACC / BWT / FWT /
//! forgetting are recomputed from it (with the signs of a lower-is-better metric for HD95; see
//! `metrics::cl_metrics_lower_better`). Optional metrics columns (matcher accuracy, ...) are kept.

use super::{MetricsRow, ResultsSet};
use crate::metrics::{cl_metrics, cl_metrics_lower_better, Metric};
use crate::{Error, Result};

impl ResultsSet {
    /// The same results in `metric` (a clone for Dice). An input error when some score row has no value for
    /// it (results written before the column existed).
    pub fn in_metric(&self, metric: Metric) -> Result<ResultsSet> {
        let mut rs = self.clone();
        if metric == Metric::Dice {
            return Ok(rs);
        }
        for r in &mut rs.scores {
            r.dice = r.value(metric).ok_or_else(|| {
                Error::input(format!(
                    "{}: scores have no `{}` column (results of an older evosam): rerun, or report in Dice",
                    crate::data::list_paths(&self.run_dirs),
                    metric.column()
                ))
            })?;
        }
        rs.matrix = crate::results::matrix_rows(&rs.scores);
        let n_tasks = rs.matrix.iter().map(|m| m.eval_index).max().unwrap_or(0) as usize;
        let mut metrics = Vec::new();
        for old in &rs.metrics {
            let Some(full) = crate::results::run_matrix(&rs.matrix, &old.cell(), n_tasks) else {
                continue; // an incomplete run has no metrics row in Dice either
            };
            let m = if metric.higher_is_better() {
                cl_metrics(&full)?
            } else {
                cl_metrics_lower_better(&full)?
            };
            metrics.push(MetricsRow {
                acc: m.acc,
                bwt: m.bwt,
                fwt: m.fwt,
                forgetting: m.forgetting,
                ..old.clone()
            });
        }
        rs.metrics = metrics;
        Ok(rs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::ScoreRow;

    /// One run, two tasks, one case each: HD95 by hand.
    #[test]
    fn hd95_matrix_and_signs_by_hand() {
        // (stage, eval index, dice, nsd, hd95)
        let cells = [
            (0, 1, 0.5, 0.4, 10.0),
            (0, 2, 0.6, 0.5, 8.0),
            (1, 1, 0.9, 0.8, 2.0),
            (1, 2, 0.7, 0.6, 6.0),
            (2, 1, 0.8, 0.7, 5.0),
            (2, 2, 0.9, 0.9, 1.0),
        ];
        let scores = cells
            .iter()
            .map(|&(k, j, d, n, h)| ScoreRow {
                strategy: "s".into(),
                seed: 0,
                order: "given".into(),
                stage: k,
                trained_task: String::new(),
                eval_task: format!("t{j}"),
                eval_index: j,
                case: "c".into(),
                dice: d,
                nsd: Some(n),
                hd95: Some(h),
                routed_to: None,
                novelty: None,
            })
            .collect::<Vec<_>>();
        let rs = ResultsSet {
            scores,
            metrics: vec![MetricsRow {
                strategy: "s".into(),
                seed: 0,
                order: "given".into(),
                acc: 0.85,
                bwt: -0.1,
                fwt: Some(0.1),
                forgetting: 0.1,
                extra: [("matcher_acc".to_string(), Some(1.0))].into(),
            }],
            ..Default::default()
        };
        let h = rs.in_metric(Metric::Hd95).unwrap();
        let m = &h.metrics[0];
        // ACC = mean(5, 1) = 3; BWT = R[1][1] - R[2][1] = 2 - 5 = -3 (worse); FWT = R[0][2] - R[1][2] = 8 - 6 = 2
        // (better); forgetting = R[2][1] - min(R[1][1]) = 5 - 2 = 3
        assert_eq!(
            (m.acc, m.bwt, m.fwt, m.forgetting),
            (3.0, -3.0, Some(2.0), 3.0)
        );
        assert_eq!(m.extra["matcher_acc"], Some(1.0));
        assert_eq!(h.matrix.len(), 6);
        assert_eq!(h.scores[4].dice, 5.0);
        let n = rs.in_metric(Metric::Nsd).unwrap();
        // NSD: ACC = mean(0.7, 0.9); BWT = 0.7 - 0.8; FWT = 0.6 - 0.5
        let m = &n.metrics[0];
        assert!((m.acc - 0.8).abs() < 1e-12 && (m.bwt + 0.1).abs() < 1e-12);
        assert!((m.fwt.unwrap() - 0.1).abs() < 1e-12 && (m.forgetting - 0.1).abs() < 1e-12);
        // results without the column: an input error saying so
        let mut old = rs.clone();
        old.scores[0].nsd = None;
        let e = old.in_metric(Metric::Nsd).unwrap_err().to_string();
        assert!(e.contains("`nsd`"), "{e}");
        assert_eq!(rs.in_metric(Metric::Dice).unwrap().metrics, rs.metrics);
    }
}
