//! A calibrated novelty score for EvoSAM's router: is an image from a domain no expert has been trained on?
//!
//! Score: the Mahalanobis distance of an image's matcher feature `x` (the regression feature without its bias) to
//! the nearest task mean, under the pooled within-task covariance,
//! `score(x) = min_t sqrt((x - mu_t)^T S^-1 (x - mu_t))`. Everything comes from the matcher's running sums
//! (`n_t`, `s_t = sum x`, `G_t = sum x x^T`): `mu_t = s_t / n_t`, the within-task scatter
//! `W = sum_t (G_t - n_t mu_t mu_t^T)` and `Sigma = W / (N - T)`; no image or feature is stored.
//! With a few images per task in 256 dimensions `Sigma` is singular, so it is shrunk towards a scaled identity:
//! `S = (1 - a) Sigma + a (tr(Sigma) / d) I` with `a = shrinkage`.
//!
//! Calibration: in-sample distances are biased low (a feature helped estimate its own mean and covariance), so
//! when a task is added each of its training features is scored leave-one-out (its task's sums without it).
//! These scalars are kept (one per training image); the threshold is a finite-sample upper bound at level
//! `quantile` ([`Calibration::threshold`]: split-conformal with enough scores, a Student-t prediction bound on
//! the log scores with few). An image scoring above it is judged novel and goes to the base model or the chain
//! ([`Fallback`]). The scores of earlier tasks were computed under the covariance of
//! their time; refitting them would need their features, which are not kept.

use crate::{Error, Result};
use nalgebra::{Cholesky, DMatrix, DVector, Dyn};
use serde::{Deserialize, Serialize};

/// `[novelty]` of the evosam preset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoveltyConfig {
    /// Route images judged novel to the base model (the score is computed and reported either way).
    #[serde(default)]
    pub enabled: bool,
    /// Quantile of the leave-one-out training scores used as the threshold.
    #[serde(default = "d_quantile")]
    pub quantile: f64,
    /// Shrinkage of the pooled covariance towards a scaled identity, in [0, 1].
    #[serde(default = "d_shrinkage")]
    pub shrinkage: f64,
    /// Where an image judged novel goes (`fallback = "base" | "chain" | "auto"`).
    #[serde(default)]
    pub fallback: Fallback,
}

/// Where EvoSAM sends an image its novelty detector judges unlike every seen task.
///
/// Why not always the base model: with a handful of images per task the detector also flags images of *seen*
/// tasks (a threshold from 2-3 images per task is rough), and on a stream whose tasks share knowledge the chain,
/// trained through every task so far, is far better on them than the base. Which of the two serves an image of a
/// domain not trained yet is exactly what the chain's forward-transfer evidence measures: before training on each
/// new task, the chain and the base model were scored on that task's held-out images.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// The frozen base model (the paper's open-set rule).
    #[default]
    Base,
    /// The chain's newest state (`init = "previous"`; the base model where there is no chain).
    Chain,
    /// The chain when the stream has shown forward transfer (the chain, before training on each new task, beat the
    /// base model on that task's held-out images: the same evidence as `serve_chain = "auto"`), else the base
    /// model.
    Auto,
}

fn d_quantile() -> f64 {
    0.99
}
fn d_shrinkage() -> f64 {
    0.5
}

impl Default for NoveltyConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            quantile: d_quantile(),
            shrinkage: d_shrinkage(),
            fallback: Fallback::Base,
        }
    }
}

impl NoveltyConfig {
    /// Range checks; the message names the key.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !(0.0..=1.0).contains(&self.quantile) {
            return Err(format!("`quantile` = {} must be in [0, 1]", self.quantile));
        }
        if !(0.0..=1.0).contains(&self.shrinkage) {
            return Err(format!(
                "`shrinkage` = {} must be in [0, 1]",
                self.shrinkage
            ));
        }
        Ok(())
    }
}

/// Running sums of one task over features of dimension d (no bias).
#[derive(Clone, Debug)]
pub struct Sums {
    /// Number of features summed.
    pub n: usize,
    /// d x d, row-major.
    pub g: Vec<f64>,
    /// Sum of the features, d values.
    pub s: Vec<f64>,
}

impl Sums {
    /// Sums of a set of features (tests, calibration).
    pub fn of(feats: &[Vec<f64>], d: usize) -> Self {
        let mut g = vec![0.0; d * d];
        let mut s = vec![0.0; d];
        for x in feats {
            for i in 0..d {
                s[i] += x[i];
                for j in 0..d {
                    g[i * d + j] += x[i] * x[j];
                }
            }
        }
        Self {
            n: feats.len(),
            g,
            s,
        }
    }

    /// These sums without one feature `x`.
    fn without(&self, x: &[f64]) -> Self {
        let d = x.len();
        let mut g = self.g.clone();
        for i in 0..d {
            for j in 0..d {
                g[i * d + j] -= x[i] * x[j];
            }
        }
        Self {
            n: self.n - 1,
            g,
            s: self.s.iter().zip(x).map(|(a, b)| a - b).collect(),
        }
    }
}

/// The pooled within-task covariance from the scatter `w` with `df` degrees of freedom (zero without any).
fn sigma_of(w: &DMatrix<f64>, df: usize) -> DMatrix<f64> {
    if df > 0 {
        w / df as f64
    } else {
        DMatrix::zeros(w.nrows(), w.ncols())
    }
}

/// Task means and the factorised shrunk pooled covariance: what scoring needs.
pub struct Model {
    means: Vec<DVector<f64>>,
    chol: Cholesky<f64, Dyn>,
}

impl Model {
    /// Fit from per-task sums (tasks with n = 0 are skipped).
    pub fn fit(tasks: &[&Sums], shrinkage: f64) -> Result<Self> {
        let d = tasks
            .first()
            .map(|t| t.s.len())
            .ok_or_else(|| Error::internal("novelty: no task"))?;
        let mut w = DMatrix::<f64>::zeros(d, d);
        let mut means = Vec::new();
        let (mut n_all, mut t_all) = (0usize, 0usize);
        for t in tasks.iter().filter(|t| t.n > 0) {
            let mu = DVector::from_iterator(d, t.s.iter().map(|v| v / t.n as f64));
            for i in 0..d {
                for j in 0..d {
                    w[(i, j)] += t.g[i * d + j] - t.n as f64 * mu[i] * mu[j];
                }
            }
            means.push(mu);
            n_all += t.n;
            t_all += 1;
        }
        if means.is_empty() {
            return Err(Error::internal("novelty: every task is empty"));
        }
        let df = n_all.saturating_sub(t_all);
        let sigma = sigma_of(&w, df);
        let tr = sigma.trace() / d as f64;
        // No spread to learn from (one image per task): plain Euclidean distance.
        let (a, scale) = if tr > 0.0 && tr.is_finite() {
            (shrinkage, tr)
        } else {
            (1.0, 1.0)
        };
        let mut s = sigma * (1.0 - a);
        for i in 0..d {
            s[(i, i)] += a * scale;
        }
        // Guard against a rounding-level negative eigenvalue when shrinkage = 0.
        for i in 0..d {
            s[(i, i)] += 1e-12 * scale;
        }
        let chol = s
            .cholesky()
            .ok_or_else(|| Error::internal("novelty: covariance is not positive definite"))?;
        Ok(Self { means, chol })
    }

    /// The task means the score measures distances to (tasks with n > 0, in training order).
    pub fn means(&self) -> &[DVector<f64>] {
        &self.means
    }

    /// The lower Cholesky factor L of the shrunk pooled covariance (S = L L^T): with it and
    /// [`Model::means`] the score is computed outside this crate (the PEFT export's router).
    pub fn cholesky_factor(&self) -> DMatrix<f64> {
        self.chol.l()
    }

    /// Distance to the nearest task mean.
    pub fn score(&self, x: &[f64]) -> f64 {
        let x = DVector::from_column_slice(x);
        self.means
            .iter()
            .map(|mu| {
                let diff = &x - mu;
                let z = self.chol.solve(&diff);
                diff.dot(&z).max(0.0).sqrt()
            })
            .fold(f64::INFINITY, f64::min)
    }
}

/// The persistent part of the detector: leave-one-out calibration scores per task (the model is rebuilt from the
/// matcher's sums).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Per task, in training order: the leave-one-out scores of its training features (the threshold is a
    /// bound over all of them together).
    pub scores: Vec<Vec<f64>>,
}

impl Calibration {
    /// Leave-one-out scores of the newest task's features `feats` (its sums are the last of `tasks`).
    pub fn add_task(&mut self, tasks: &[&Sums], feats: &[Vec<f64>], shrinkage: f64) -> Result<()> {
        let (last, rest) = tasks
            .split_last()
            .ok_or_else(|| Error::internal("novelty: no task"))?;
        let mut out = Vec::new();
        for x in feats {
            let loo = last.without(x);
            let mut all: Vec<&Sums> = rest.to_vec();
            all.push(&loo);
            // Without two features of one task there is no spread to measure distances in (the model falls back
            // to plain Euclidean units, which later scores do not share): no evidence, no calibration score.
            let df = all.iter().map(|t| t.n).sum::<usize>();
            let tasks = all.iter().filter(|t| t.n > 0).count();
            if df <= tasks {
                continue;
            }
            out.push(Model::fit(&all, shrinkage)?.score(x));
        }
        self.scores.push(out);
        Ok(())
    }

    /// The threshold at level `q`: a score a new image of a seen task exceeds with probability at most about
    /// 1 - q. None before there is evidence (fewer than two calibration scores): nothing is novel then.
    ///
    /// - With enough scores (n >= q (n + 1)): the split-conformal threshold, the ceil(q (n + 1))-th smallest
    ///   score. For exchangeable scores this bounds the false-novel rate by 1 - q exactly, at any n.
    /// - With fewer (n < 99 at q = 0.99: every stream of a few images per task), no order statistic has that
    ///   guarantee; a quantile of 6 scores read as "the 0.99 quantile" is really their maximum, which a seen
    ///   image exceeds with probability 1/7. Then the threshold is the upper `q` prediction bound of a new score
    ///   under a log-normal model of the scores with both parameters estimated: `exp(m + t_{q, n-1} s sqrt(1 +
    ///   1/n))`, with m, s the mean and standard deviation of the log scores and t Student's quantile. The t
    ///   quantile carries the uncertainty of so few scores (t_{0.99,1} = 31.8, t_{0.99,5} = 3.36, t_{0.99,50} =
    ///   2.40), so the bound is wide when evidence is thin and tightens as it grows.
    pub fn threshold(&self, q: f64) -> Option<f64> {
        let mut all: Vec<f64> = self.scores.iter().flatten().copied().collect();
        all.retain(|v| v.is_finite() && *v > 0.0);
        let n = all.len();
        if n < 2 {
            return None;
        }
        all.sort_by(|a, b| a.total_cmp(b));
        let rank = (q * (n + 1) as f64).ceil() as usize;
        if (1..=n).contains(&rank) {
            return Some(all[rank - 1]);
        }
        let logs: Vec<f64> = all.iter().map(|v| v.ln()).collect();
        let m = logs.iter().sum::<f64>() / n as f64;
        let var = logs.iter().map(|l| (l - m) * (l - m)).sum::<f64>() / (n - 1) as f64;
        use statrs::distribution::ContinuousCDF;
        let t = statrs::distribution::StudentsT::new(0.0, 1.0, (n - 1) as f64)
            .ok()?
            .inverse_cdf(q.min(1.0 - 1e-12));
        Some((m + t * var.sqrt() * (1.0 + 1.0 / n as f64).sqrt()).exp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    fn feats(seed: u64, n: usize, d: usize, shift: f64) -> Vec<Vec<f64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                (0..d)
                    .map(|j| {
                        let z: f64 = StandardNormal.sample(&mut rng);
                        z * (1.0 + j as f64 * 0.1)
                            + if j == seed as usize % d { shift } else { 0.0 }
                    })
                    .collect()
            })
            .collect()
    }

    /// The same score computed directly from the features: means, pooled covariance, shrinkage, a dense solve.
    fn batch_score(tasks: &[Vec<Vec<f64>>], x: &[f64], a: f64) -> f64 {
        let d = x.len();
        let means: Vec<DVector<f64>> = tasks
            .iter()
            .map(|t| {
                t.iter().fold(DVector::zeros(d), |acc, f| {
                    acc + DVector::from_column_slice(f)
                }) / t.len() as f64
            })
            .collect();
        let mut sigma = DMatrix::<f64>::zeros(d, d);
        let mut n = 0;
        for (t, mu) in tasks.iter().zip(&means) {
            for f in t {
                let c = DVector::from_column_slice(f) - mu;
                sigma += &c * c.transpose();
                n += 1;
            }
        }
        sigma /= (n - tasks.len()) as f64;
        let tr = sigma.trace() / d as f64;
        let s = sigma * (1.0 - a) + DMatrix::identity(d, d) * (a * tr);
        let inv = s.try_inverse().unwrap();
        means
            .iter()
            .map(|mu| {
                let c = DVector::from_column_slice(x) - mu;
                (c.transpose() * &inv * &c)[(0, 0)].sqrt()
            })
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn score_from_sums_equals_a_batch_computation() {
        let d = 6;
        let tasks = vec![
            feats(1, 12, d, 4.0),
            feats(2, 7, d, -3.0),
            feats(3, 20, d, 2.0),
        ];
        let sums: Vec<Sums> = tasks.iter().map(|t| Sums::of(t, d)).collect();
        for a in [0.0, 0.3, 1.0] {
            let refs: Vec<&Sums> = sums.iter().collect();
            let m = Model::fit(&refs, a).unwrap();
            for x in feats(9, 5, d, 1.0) {
                let (got, want) = (m.score(&x), batch_score(&tasks, &x, a));
                assert!((got - want).abs() < 1e-9 * want.max(1.0), "{got} vs {want}");
            }
        }
        // leave-one-out calibration of the last task equals the batch score without that feature
        let refs: Vec<&Sums> = sums.iter().collect();
        let mut cal = Calibration::default();
        cal.add_task(&refs, &tasks[2], 0.3).unwrap();
        assert_eq!(cal.scores[0].len(), 20);
        for (i, x) in tasks[2].iter().enumerate() {
            let mut loo = tasks.clone();
            loo[2].remove(i);
            let want = batch_score(&loo, x, 0.3);
            assert!((cal.scores[0][i] - want).abs() < 1e-9 * want.max(1.0));
        }
    }

    #[test]
    fn a_shifted_domain_scores_above_the_threshold() {
        let d = 8;
        let tasks = [feats(1, 15, d, 0.0), feats(4, 15, d, 0.0)];
        let sums: Vec<Sums> = tasks.iter().map(|t| Sums::of(t, d)).collect();
        let refs: Vec<&Sums> = sums.iter().collect();
        let mut cal = Calibration::default();
        cal.add_task(&refs[..1], &tasks[0], 0.5).unwrap();
        cal.add_task(&refs, &tasks[1], 0.5).unwrap();
        let th = cal.threshold(0.99).unwrap();
        let m = Model::fit(&refs, 0.5).unwrap();
        // same distribution: mostly below; far away: above
        let seen = feats(7, 50, d, 0.0);
        let below = seen.iter().filter(|x| m.score(x) <= th).count();
        assert!(below >= 40, "{below}/50 below {th}");
        let far: Vec<Vec<f64>> = feats(8, 20, d, 0.0)
            .into_iter()
            .map(|x| x.iter().map(|v| v + 6.0).collect())
            .collect();
        assert!(far.iter().all(|x| m.score(x) > th));
    }

    #[test]
    fn threshold_is_conformal_with_enough_scores_and_a_t_bound_with_few() {
        let cal = |v: Vec<f64>| Calibration { scores: vec![v] };
        // 199 scores at q = 0.99: rank ceil(0.99 * 200) = 198
        let many: Vec<f64> = (1..=199).rev().map(f64::from).collect();
        assert_eq!(cal(many).threshold(0.99), Some(198.0));
        // two scores e^0 and e^1: m = 0.5, s = sqrt(0.5), t_{0.99,1} = 31.820516, sqrt(1 + 1/2)
        let want = (0.5 + 31.820_515_953_773_96 * 0.5f64.sqrt() * 1.5f64.sqrt()).exp();
        let got = cal(vec![1.0, 1f64.exp()]).threshold(0.99).unwrap();
        assert!((got / want - 1.0).abs() < 1e-9, "{got} vs {want}");
        // no evidence: none or one score
        assert_eq!(cal(vec![3.0]).threshold(0.99), None);
        assert_eq!(Calibration::default().threshold(0.99), None);
        // Coverage at n = 6 (log-normal scores): a fresh score exceeds the bound about 1% of the time, while the
        // interpolated 0.99 quantile of six scores (nearly their maximum) is exceeded about 1/7 of the time.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (mut over, mut over_q, reps) = (0, 0, 4000);
        for _ in 0..reps {
            let mut draw = || -> f64 {
                let z: f64 = StandardNormal.sample(&mut rng);
                (2.0 + 0.3 * z).exp()
            };
            let v: Vec<f64> = (0..6).map(|_| draw()).collect();
            let fresh = draw();
            over += usize::from(fresh > cal(v.clone()).threshold(0.99).unwrap());
            over_q += usize::from(fresh > crate::util::quantile(&v, 0.99).unwrap());
        }
        let (rate, rate_q) = (over as f64 / reps as f64, over_q as f64 / reps as f64);
        assert!(rate < 0.02, "{rate}");
        assert!(rate_q > 0.10, "{rate_q}");
    }

    #[test]
    fn quantile_setting_is_checked() {
        assert!(NoveltyConfig {
            quantile: 1.5,
            ..Default::default()
        }
        .check()
        .is_err());
    }
}
