//! Interaction metrics of one case's Dice-vs-clicks curve `dice[k]` (k = 0: the box alone, k >= 1: after the
//! k-th click; `dice.len() = max_clicks + 1`).
//!
//! - NoC@τ: the number of clicks to first reach Dice >= τ (0 when the box alone does), `max_clicks + 1` when it is
//!   never reached (the usual convention: a failure costs more than the budget, and means stay comparable).
//! - Dice@k: `dice[k]`.
//! - AUC: the area under the curve by the trapezoid rule over k = 0..max_clicks, divided by max_clicks (in [0, 1]).
//! - Time: `seconds_per_case + seconds_per_click * NoC@τ`, when the spec gives a time model.
//!
//! Their definitions, recorded in interactive.json, are the [`Recorded::Interactive`](super::Recorded) entries of
//! [`super::DEFINITIONS`].

/// NoC@τ of one curve.
pub fn noc(dice: &[f64], tau: f64) -> usize {
    dice.iter().position(|&d| d >= tau).unwrap_or(dice.len())
}

/// Normalised area under the Dice-vs-clicks curve (trapezoid rule); the single value for a curve of length 1.
pub fn auc(dice: &[f64]) -> f64 {
    match dice.len() {
        0 => f64::NAN,
        1 => dice[0],
        n => {
            let area: f64 = dice.windows(2).map(|w| 0.5 * (w[0] + w[1])).sum();
            area / (n - 1) as f64
        }
    }
}

pub use crate::spec::TimeModel;

/// The per-case summary of a curve: NoC@τ for each target, Dice@k for each report point, AUC and (with a time
/// model) seconds@τ for each target.
#[derive(Clone, Debug, PartialEq)]
pub struct CurveSummary {
    /// NoC@τ per target, in the order of `targets` (`max_clicks + 1` when never reached).
    pub noc: Vec<usize>,
    /// Dice@k per report point, in the order of `report_at` (NaN for a k past the end of the curve).
    pub dice_at: Vec<f64>,
    /// Normalised area under the curve, see [`auc`].
    pub auc: f64,
    /// Seconds to reach each target under the time model (None without one).
    pub seconds: Option<Vec<f64>>,
}

/// Summarise one Dice-vs-clicks curve: NoC@τ for each of `targets`, Dice@k for each of `report_at`, AUC, and
/// seconds@τ when a time model is given.
pub fn summarise(
    dice: &[f64],
    targets: &[f64],
    report_at: &[usize],
    time: Option<&TimeModel>,
) -> CurveSummary {
    let noc: Vec<usize> = targets.iter().map(|&t| noc(dice, t)).collect();
    CurveSummary {
        dice_at: report_at
            .iter()
            .map(|&k| dice.get(k).copied().unwrap_or(f64::NAN))
            .collect(),
        auc: auc(dice),
        seconds: time.map(|tm| noc.iter().map(|&n| tm.seconds(n)).collect()),
        noc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noc_and_auc_on_hand_computed_curves() {
        let d = [0.70, 0.78, 0.86, 0.84, 0.91];
        assert_eq!(noc(&d, 0.80), 2);
        assert_eq!(noc(&d, 0.85), 2);
        assert_eq!(noc(&d, 0.90), 4);
        assert_eq!(noc(&d, 0.95), 5, "never reached: max_clicks + 1");
        assert_eq!(noc(&d, 0.70), 0, "the box alone reaches it");
        // Trapezoids: (0.70+0.78)/2 + (0.78+0.86)/2 + (0.86+0.84)/2 + (0.84+0.91)/2 = 3.285, over 4 clicks.
        assert!((auc(&d) - 3.285 / 4.0).abs() < 1e-12);
        assert_eq!(auc(&[1.0; 11]), 1.0);
        assert_eq!(auc(&[0.5]), 0.5);
        // A curve that jumps to 1 at the first click: (0 + 1)/2 + 1 + 1 over 3.
        assert!((auc(&[0.0, 1.0, 1.0, 1.0]) - 2.5 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn summary_and_time_model() {
        let d = [0.70, 0.78, 0.86, 0.84, 0.91];
        let tm = TimeModel {
            seconds_per_case: 5.0,
            seconds_per_click: 2.5,
        };
        let s = summarise(&d, &[0.8, 0.9, 0.95], &[1, 3], Some(&tm));
        assert_eq!(s.noc, vec![2, 4, 5]);
        assert_eq!(s.dice_at, vec![0.78, 0.84]);
        assert_eq!(s.seconds, Some(vec![10.0, 15.0, 17.5]));
        assert!(summarise(&d, &[0.8], &[], None).seconds.is_none());
    }
}
