//! Continual-learning metrics from an accuracy matrix.
//!
//! `r[k][j]` is the mean Dice at stage `k` (0 = before any training, k = after training the k-th task of the
//! order) on the `j`-th task of the order (0-based columns here; the contract's formulas are 1-based):
//! - ACC = `mean_j R[T][j]`
//! - BWT = `mean_{j<T} (R[T][j] - R[j][j])`
//! - FWT = `mean_{j>=2} (R[j-1][j] - R[0][j])`        (null when T = 1)
//! - forgetting = `mean_{j<T} (max_{j<=l<T} R[l][j] - R[T][j])`
//!
//! With T = 1, BWT and forgetting are 0 and FWT is None.

pub mod clicks;
pub mod surface;

use crate::data::{self, Case, Scoring};
use crate::{Error, Result};
use candle_core::{DType, Tensor};

/// Where a definition is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// manifest.json: the per-case scores, the accuracy matrix and the per-run metrics.
    Manifest,
    /// interactive.json: the interactive study's per-case curve metrics ([`clicks`]).
    Interactive,
}

/// Human-readable definitions of every metric the crate records, each with the file it is recorded in
/// ([`definitions`]).
pub const DEFINITIONS: &[(Recorded, &str, &str)] = &[
    (Recorded::Manifest, "dice", "2|P∩G|/(|P|+|G|) at original resolution, P = sigmoid(logits) > 0.5; 1 if both empty, 0 if only one is"),
    (Recorded::Manifest, "R[k][j]", "mean dice over the test cases of the j-th task of the order after training k tasks (k = 0: zero-shot)"),
    (Recorded::Manifest, "acc", "mean_j R[T][j]"),
    (Recorded::Manifest, "bwt", "mean_{j<T} (R[T][j] - R[j][j])"),
    (Recorded::Manifest, "fwt", "mean_{j>=2} (R[j-1][j] - R[0][j]); null when T = 1"),
    (Recorded::Manifest, "forgetting", "mean_{j<T} (max_{j<=l<T} R[l][j] - R[T][j])"),
    (Recorded::Manifest, "nsd", "normalised surface Dice at tolerance tau (`[eval] nsd_tolerance_mm`, default 2; mm for volumes and for folder tasks with `spacing`, else pixels): (#{border(P) within tau of border(G)} + #{border(G) within tau of border(P)}) / (|border(P)| + |border(G)|); border = foreground voxels with a background or outside 4/6-neighbour; both empty 1, one empty 0"),
    (Recorded::Manifest, "hd95", "95th-percentile Hausdorff distance in mm (pixels without spacing): max of the two directed 95th percentiles (linear interpolation) of border-to-border distances; both empty 0, one empty the grid's diagonal; lower is better"),
    (Recorded::Manifest, "volume case", "a NIfTI task's test case is a volume: every slice with foreground in the label is predicted with the box of its label, the predictions (background elsewhere) are stacked and Dice, NSD and HD95 are computed in 3-D with the voxel spacing"),
    (Recorded::Manifest, "lower-is-better metrics", "for `evosam report --metric hd95`: BWT = mean_{j<T} (R[j][j] - R[T][j]), FWT = mean_{j>=2} (R[0][j] - R[j-1][j]), forgetting = mean_{j<T} (R[T][j] - min_{j<=l<T} R[l][j]): positive BWT/FWT improve, positive forgetting loses"),
    (Recorded::Manifest, "matcher_acc", "fraction of final-stage test cases routed to their own task's expert (routing strategies)"),
    (Recorded::Manifest, "route_seen_own", "extras.csv, per stage k >= 1 (routing strategies): fraction of the test cases of the tasks trained so far (positions 1..k) routed to their own task's expert"),
    (Recorded::Manifest, "route_seen_base", "extras.csv, per stage k >= 1: fraction of the test cases of the tasks trained so far sent to the base model"),
    (Recorded::Manifest, "route_seen_chain", "extras.csv, per stage k >= 1: fraction of the test cases of the tasks trained so far judged novel and sent to the chain (routed_to = \"chain\")"),
    (Recorded::Manifest, "route_new_base", "extras.csv, per stage k < T: fraction of the test cases of the tasks not trained yet (positions k+1..T) sent to the base model"),
    (Recorded::Interactive, "click 0", "the box prompt alone (the regular evaluation); click k: box + the first k simulated clicks"),
    (Recorded::Interactive, "noc@t", "clicks to first reach dice >= t (0 if the box alone does); max_clicks + 1 if never"),
    (Recorded::Interactive, "dice@k", "dice after k clicks"),
    (Recorded::Interactive, "auc", "trapezoid area under dice vs clicks over 0..max_clicks, divided by max_clicks"),
    (Recorded::Interactive, "seconds@t", "seconds_per_case + seconds_per_click * noc@t (spec's time model)"),
];

/// The (name, definition) pairs of [`DEFINITIONS`] recorded in `file`, in their order.
pub fn definitions(file: Recorded) -> impl Iterator<Item = (&'static str, &'static str)> {
    DEFINITIONS
        .iter()
        .filter(move |d| d.0 == file)
        .map(|d| (d.1, d.2))
}

/// Per-stage routing shares of one stage's test cases (the `route_*` keys of [`DEFINITIONS`]), from each case's
/// position in the order (1-based), its task and where it was routed (`None`: the strategy does not route; then
/// nothing is returned). `stage` is the number of tasks trained.
pub fn routing_shares<'a>(
    cases: impl IntoIterator<Item = (usize, &'a str, Option<&'a str>)>,
    stage: usize,
) -> Vec<(&'static str, f64)> {
    let (mut seen, mut own, mut seen_base, mut seen_chain) = (0usize, 0usize, 0usize, 0usize);
    let (mut new, mut new_base) = (0usize, 0usize);
    for (pos, task, to) in cases {
        let Some(to) = to else { return Vec::new() };
        if pos <= stage {
            seen += 1;
            own += usize::from(to == task);
            seen_base += usize::from(to == "base");
            seen_chain += usize::from(to == "chain");
        } else {
            new += 1;
            new_base += usize::from(to == "base");
        }
    }
    let share = |a: usize, n: usize| a as f64 / n as f64;
    let mut out = Vec::new();
    if stage >= 1 && seen > 0 {
        out.push(("route_seen_own", share(own, seen)));
        out.push(("route_seen_base", share(seen_base, seen)));
        out.push(("route_seen_chain", share(seen_chain, seen)));
    }
    if new > 0 {
        out.push(("route_new_base", share(new_base, new)));
    }
    out
}

/// The continual-learning metrics of one run (see the module docs for the formulas).
#[derive(Clone, Debug, PartialEq)]
pub struct ClMetrics {
    /// Average accuracy after the last task.
    pub acc: f64,
    /// Backward transfer.
    pub bwt: f64,
    /// Forward transfer (None with one task).
    pub fwt: Option<f64>,
    /// Average forgetting.
    pub forgetting: f64,
}

/// Metrics from a (T+1) x T matrix.
pub fn cl_metrics(r: &[Vec<f64>]) -> Result<ClMetrics> {
    let t = r
        .len()
        .checked_sub(1)
        .filter(|&t| t >= 1)
        .ok_or_else(|| Error::internal("accuracy matrix needs >= 2 rows"))?;
    if r.iter().any(|row| row.len() != t) {
        return Err(Error::internal(format!(
            "accuracy matrix must be {} x {t}",
            t + 1
        )));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let acc = mean(&r[t]);
    let (bwt, forgetting) = if t == 1 {
        (0.0, 0.0)
    } else {
        let b: Vec<f64> = (0..t - 1).map(|j| r[t][j] - r[j + 1][j]).collect();
        let f: Vec<f64> = (0..t - 1)
            .map(|j| {
                let best = (j + 1..t)
                    .map(|l| r[l][j])
                    .fold(f64::NEG_INFINITY, f64::max);
                best - r[t][j]
            })
            .collect();
        (mean(&b), mean(&f))
    };
    let fwt = if t == 1 {
        None
    } else {
        let v: Vec<f64> = (1..t).map(|j| r[j][j] - r[0][j]).collect();
        Some(mean(&v))
    };
    Ok(ClMetrics {
        acc,
        bwt,
        fwt,
        forgetting,
    })
}

/// A case's prediction at original resolution from its low-res logits (1,S,S): crop + bilinear resize to the
/// original size, threshold at 0 (sigmoid > 0.5).
pub fn case_mask(logits: &Tensor, c: &Case) -> Result<Vec<bool>> {
    let full = crate::preprocess::postprocess_logits(logits, &c.meta)?;
    let v: Vec<f32> = full.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    if v.len() != c.gt.h * c.gt.w {
        return Err(Error::internal(format!(
            "case {}: postprocessed logits have {} values, ground truth {}x{}",
            c.id,
            v.len(),
            c.gt.w,
            c.gt.h
        )));
    }
    Ok(v.iter().map(|&x| x > 0.0).collect())
}

/// Dice of one case from its low-res logits ([`case_mask`]), inside the field of view only when `fov_eval`.
pub fn case_dice(logits: &Tensor, c: &Case, fov_eval: bool) -> Result<f64> {
    let pred = case_mask(logits, c)?;
    Ok(data::dice(
        &pred,
        &c.gt,
        if fov_eval { c.fov.as_ref() } else { None },
    ))
}

/// Dice, NSD and HD95 of a 2-D prediction at original resolution; with a field of view, both masks are cut to
/// it first (so Dice equals [`data::dice`] inside the FOV).
pub fn image_scores(
    pred: &[bool],
    gt: &data::Mask2D,
    fov: Option<&data::Mask2D>,
    sc: &Scoring,
) -> surface::CaseScores {
    let inside = |i: usize| fov.is_none_or(|f| f.data[i] != 0);
    let p: Vec<bool> = (0..pred.len()).map(|i| pred[i] && inside(i)).collect();
    let g: Vec<bool> = (0..pred.len())
        .map(|i| gt.data[i] != 0 && inside(i))
        .collect();
    surface::case_scores(&p, &g, &[gt.h, gt.w], &sc.spacing, sc.nsd_tolerance)
}

/// Which per-case score a report is drawn in (`evosam report --metric`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Dice (higher is better): the runner's accuracy matrix.
    #[default]
    Dice,
    /// Normalised surface Dice (higher is better).
    Nsd,
    /// 95th-percentile Hausdorff distance in mm or pixels (lower is better).
    Hd95,
}

impl Metric {
    /// Every metric, by name.
    pub const ALL: [Metric; 3] = [Metric::Dice, Metric::Nsd, Metric::Hd95];

    /// The name of its scores column (`dice`, `nsd`, `hd95`).
    pub fn column(self) -> &'static str {
        match self {
            Metric::Dice => "dice",
            Metric::Nsd => "nsd",
            Metric::Hd95 => "hd95",
        }
    }

    /// The label in tables and figures.
    pub fn label(self) -> &'static str {
        match self {
            Metric::Dice => "Dice",
            Metric::Nsd => "NSD",
            Metric::Hd95 => "HD95",
        }
    }

    /// Direction of "better".
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::Hd95)
    }

    /// The metric named `s` (`dice`, `nsd`, `hd95`).
    pub fn parse(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.column() == s)
    }
}

/// [`cl_metrics`] for a metric where lower is better (HD95): ACC is the mean final value, and the signs follow
/// the direction so that a positive BWT or FWT is still an improvement and a positive forgetting still a loss:
/// BWT = `mean_{j<T} (R[j][j] - R[T][j])`, FWT = `mean_{j>=2} (R[0][j] - R[j-1][j])`, forgetting =
/// `mean_{j<T} (R[T][j] - min_{j<=l<T} R[l][j])`.
pub fn cl_metrics_lower_better(r: &[Vec<f64>]) -> Result<ClMetrics> {
    let neg: Vec<Vec<f64>> = r
        .iter()
        .map(|row| row.iter().map(|v| -v).collect())
        .collect();
    let m = cl_metrics(&neg)?;
    Ok(ClMetrics { acc: -m.acc, ..m })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_three_tasks() {
        // rows: stage 0..3, columns: task 1..3 of the order
        let r = vec![
            vec![0.50, 0.40, 0.30],
            vec![0.90, 0.45, 0.20],
            vec![0.70, 0.85, 0.35],
            vec![0.60, 0.80, 0.95],
        ];
        let m = cl_metrics(&r).unwrap();
        // ACC = (0.60 + 0.80 + 0.95) / 3
        assert!((m.acc - 2.35 / 3.0).abs() < 1e-12);
        // BWT = ((0.60 - 0.90) + (0.80 - 0.85)) / 2 = -0.175
        assert!((m.bwt + 0.175).abs() < 1e-12);
        // FWT = ((R1[2] - R0[2]) + (R2[3] - R0[3])) / 2 = ((0.45-0.40) + (0.35-0.30)) / 2 = 0.05
        assert!((m.fwt.unwrap() - 0.05).abs() < 1e-12);
        // forgetting: task1 max(0.90, 0.70) - 0.60 = 0.30; task2 max(0.85) - 0.80 = 0.05 -> 0.175
        assert!((m.forgetting - 0.175).abs() < 1e-12);
    }

    #[test]
    fn forgetting_uses_the_best_earlier_stage() {
        // task 1 peaks at stage 2 (after training task 2): BWT uses R[1][1], forgetting the max
        let r = vec![
            vec![0.1, 0.1, 0.1],
            vec![0.5, 0.2, 0.1],
            vec![0.8, 0.9, 0.1],
            vec![0.4, 0.9, 0.9],
        ];
        let m = cl_metrics(&r).unwrap();
        assert!((m.bwt - ((0.4 - 0.5) + (0.9 - 0.9)) / 2.0).abs() < 1e-12);
        assert!((m.forgetting - ((0.8 - 0.4) + 0.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn single_task_and_bad_shapes() {
        let m = cl_metrics(&[vec![0.3], vec![0.7]]).unwrap();
        assert_eq!(
            m,
            ClMetrics {
                acc: 0.7,
                bwt: 0.0,
                fwt: None,
                forgetting: 0.0
            }
        );
        assert!(cl_metrics(&[vec![0.3]]).is_err());
        assert!(cl_metrics(&[vec![0.3, 0.2], vec![0.1]]).is_err());
    }

    #[test]
    fn routing_shares_by_hand() {
        // stage 2 of 3 tasks: a, b seen (4 cases), c new (2 cases)
        let cases = [
            (1, "a", Some("a")),
            (1, "a", Some("base")),
            (2, "b", Some("chain")),
            (2, "b", Some("b")),
            (3, "c", Some("base")),
            (3, "c", Some("b")),
        ];
        let got = routing_shares(cases, 2);
        assert_eq!(
            got,
            vec![
                ("route_seen_own", 0.5),
                ("route_seen_base", 0.25),
                ("route_seen_chain", 0.25),
                ("route_new_base", 0.5),
            ]
        );
        // stage 0: every task is new; a strategy that does not route gives nothing
        assert_eq!(
            routing_shares(cases, 0),
            vec![("route_new_base", 2.0 / 6.0)]
        );
        assert!(routing_shares([(1, "a", None)], 1).is_empty());
    }
}
