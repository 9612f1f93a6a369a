//! EvoSAM's expert matcher: closed-form ridge regression from frozen image features onto one-hot task ids.
//!
//! Features are the global-average-pooled frozen-encoder embedding (256-d for LiteMedSAM), optionally passed
//! through a fixed random projection with ReLU, with a constant 1 appended (the bias). The matcher keeps running
//! sums only — per task `G_t = sum h h^T`, `s_t = sum h` and `n_t` — so no old image or feature is stored.
//! With task weights `w_t` (1, or `1/n_t` scaled by the mean task size when class-balanced):
//! `G = sum_t w_t G_t`, `Q[:, t] = w_t s_t` (one-hot targets), and `(G + lambda I) W = Q` is solved in f64 by
//! Cholesky. Prediction: `argmax_t (h W)_t`. Because only sums are kept, the fit after T tasks equals a batch fit on
//! all T tasks' features.

use nalgebra::DMatrix;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How the ridge penalty is chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatcherConfig {
    /// Fixed ridge penalty, used when `lambda_candidates` is empty.
    #[serde(default = "default_lambda")]
    pub lambda: f64,
    /// Candidate penalties; when non-empty, lambda is chosen on a held-out split of each new task's features
    /// (routing accuracy on the held-out part, ties broken by the larger lambda).
    #[serde(default)]
    pub lambda_candidates: Vec<f64>,
    /// Fraction of the current task's features held out to choose lambda.
    #[serde(default = "default_holdout")]
    pub holdout_fraction: f64,
    /// Random projection dimension (0 = use the pooled features directly).
    #[serde(default)]
    pub projection_dim: usize,
    /// Weight each task by the inverse of its number of samples (scaled by the mean task size).
    #[serde(default)]
    pub class_balanced: bool,
    /// Seed of the fixed random projection and of the held-out split.
    #[serde(default)]
    pub seed: u64,
    /// Open-set routing: when the best score is below this threshold, route to the base model.
    #[serde(default)]
    pub open_set_threshold: Option<f64>,
}

/// The largest random projection (`projection_dim`): a task's sums then take 128 MiB.
pub const MAX_PROJECTION_DIM: usize = 4096;

fn default_lambda() -> f64 {
    1.0
}
fn default_holdout() -> f64 {
    0.2
}

impl MatcherConfig {
    /// Range checks; the message names the key.
    pub fn check(&self) -> std::result::Result<(), String> {
        // written so that NaN fails too
        let positive = |x: f64| x > 0.0;
        if !positive(self.lambda) || self.lambda_candidates.iter().any(|&l| !positive(l)) {
            return Err("`lambda` and `lambda_candidates` must be > 0".into());
        }
        // the projection is in_dim x projection_dim and each task keeps a (projection_dim + 1)^2 sum: a huge value
        // would exhaust memory when the strategy is built, long after `validate`
        if self.projection_dim > MAX_PROJECTION_DIM {
            return Err(format!(
                "`projection_dim` = {} must be at most {MAX_PROJECTION_DIM}",
                self.projection_dim
            ));
        }
        if !(0.0..1.0).contains(&self.holdout_fraction) {
            return Err(format!(
                "`holdout_fraction` = {} must be in [0, 1)",
                self.holdout_fraction
            ));
        }
        Ok(())
    }
}

impl Default for MatcherConfig {
    fn default() -> Self {
        Self {
            lambda: default_lambda(),
            lambda_candidates: Vec::new(),
            holdout_fraction: default_holdout(),
            projection_dim: 0,
            class_balanced: false,
            seed: 0,
            open_set_threshold: None,
        }
    }
}

/// Running sums of one task's features.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TaskStats {
    name: String,
    n: usize,
    /// Row-major D x D.
    g: Vec<f64>,
    s: Vec<f64>,
}

/// The routing decision for one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Index of the chosen expert (task order of `add_task`), or None for the base model (open set).
    pub expert: Option<usize>,
    /// Best score (h W)_t.
    pub score: f64,
}

/// Ridge-regression expert matcher; see the module documentation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RidgeMatcher {
    pub(crate) config: MatcherConfig,
    in_dim: usize,
    /// Projection matrix, row-major in_dim x projection_dim (empty when projection_dim == 0).
    projection: Vec<f64>,
    tasks: Vec<TaskStats>,
    /// Solved weights, row-major D x T.
    w: Vec<f64>,
    /// The lambda used for the current solution.
    pub lambda: f64,
}

impl RidgeMatcher {
    /// A matcher with no task for pooled features of `in_dim` values; draws the fixed projection when
    /// `config.projection_dim > 0`. Fails on `in_dim = 0` or settings out of range.
    pub fn new(in_dim: usize, config: MatcherConfig) -> Result<Self> {
        if in_dim == 0 {
            return Err(Error::input("matcher: feature dimension must be positive"));
        }
        config
            .check()
            .map_err(|e| Error::input(format!("matcher: {e}")))?;
        let projection = if config.projection_dim > 0 {
            let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x5eed_0f9a_77e5);
            let scale = 1.0 / (in_dim as f64).sqrt();
            (0..in_dim * config.projection_dim)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    z * scale
                })
                .collect()
        } else {
            Vec::new()
        };
        let lambda = config.lambda;
        Ok(Self {
            config,
            in_dim,
            projection,
            tasks: Vec::new(),
            w: Vec::new(),
            lambda,
        })
    }

    /// Length of the pooled embeddings it routes.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Dimension of the regression features (projection or input, plus the bias).
    pub fn feature_dim(&self) -> usize {
        if self.config.projection_dim > 0 {
            self.config.projection_dim + 1
        } else {
            self.in_dim + 1
        }
    }

    /// Number of tasks taught so far.
    pub fn num_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Task names in the order they were added (the expert indices of [`Route`]).
    pub fn task_names(&self) -> Vec<String> {
        self.tasks.iter().map(|t| t.name.clone()).collect()
    }

    /// Map a pooled embedding to the regression features h (projection + ReLU when configured, then bias 1).
    pub fn features(&self, pooled: &[f64]) -> Result<Vec<f64>> {
        if pooled.len() != self.in_dim {
            return Err(Error::internal(format!(
                "matcher: feature has {} values, expected {}",
                pooled.len(),
                self.in_dim
            )));
        }
        let mut h = if self.config.projection_dim > 0 {
            let p = self.config.projection_dim;
            let mut out = vec![0.0; p];
            for (i, &x) in pooled.iter().enumerate() {
                if x == 0.0 {
                    continue;
                }
                let row = &self.projection[i * p..(i + 1) * p];
                for (o, r) in out.iter_mut().zip(row) {
                    *o += x * r;
                }
            }
            out.iter_mut().for_each(|v| *v = v.max(0.0));
            out
        } else {
            pooled.to_vec()
        };
        h.push(1.0);
        Ok(h)
    }

    fn stats_of(name: &str, feats: &[Vec<f64>], d: usize) -> TaskStats {
        let mut g = vec![0.0; d * d];
        let mut s = vec![0.0; d];
        for h in feats {
            for i in 0..d {
                s[i] += h[i];
                let hi = h[i];
                if hi == 0.0 {
                    continue;
                }
                let row = &mut g[i * d..(i + 1) * d];
                for (gij, hj) in row.iter_mut().zip(h.iter()) {
                    *gij += hi * hj;
                }
            }
        }
        TaskStats {
            name: name.to_string(),
            n: feats.len(),
            g,
            s,
        }
    }

    fn task_weights(&self, tasks: &[&TaskStats]) -> Vec<f64> {
        if !self.config.class_balanced {
            return vec![1.0; tasks.len()];
        }
        let mean = tasks.iter().map(|t| t.n as f64).sum::<f64>() / tasks.len().max(1) as f64;
        tasks
            .iter()
            .map(|t| if t.n == 0 { 0.0 } else { mean / t.n as f64 })
            .collect()
    }

    /// Solve (G + lambda I) W = Q for the given task statistics; returns W (D x T, row-major).
    fn solve_for(&self, tasks: &[&TaskStats], lambda: f64) -> Result<Vec<f64>> {
        let d = self.feature_dim();
        let t = tasks.len();
        let weights = self.task_weights(tasks);
        let mut g = DMatrix::<f64>::zeros(d, d);
        let mut q = DMatrix::<f64>::zeros(d, t);
        for (k, (ts, wt)) in tasks.iter().zip(&weights).enumerate() {
            for i in 0..d {
                for j in 0..d {
                    g[(i, j)] += wt * ts.g[i * d + j];
                }
                q[(i, k)] = wt * ts.s[i];
            }
        }
        for i in 0..d {
            g[(i, i)] += lambda;
        }
        let chol = g
            .cholesky()
            .ok_or_else(|| Error::internal("matcher: G + lambda I is not positive definite"))?;
        let w = chol.solve(&q);
        let mut out = vec![0.0; d * t];
        for i in 0..d {
            for k in 0..t {
                out[i * t + k] = w[(i, k)];
            }
        }
        Ok(out)
    }

    fn scores_with(w: &[f64], t: usize, h: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; t];
        for (i, hi) in h.iter().enumerate() {
            if *hi == 0.0 {
                continue;
            }
            for (k, o) in out.iter_mut().enumerate() {
                *o += hi * w[i * t + k];
            }
        }
        out
    }

    /// Add a new task (a new one-hot column) from its pooled features and re-solve. Returns its index.
    pub fn add_task(&mut self, name: &str, pooled: &[Vec<f64>]) -> Result<usize> {
        if pooled.is_empty() {
            return Err(Error::input(format!(
                "matcher: task '{name}' has no features"
            )));
        }
        let feats = pooled
            .iter()
            .map(|p| self.features(p))
            .collect::<Result<Vec<_>>>()?;
        let d = self.feature_dim();
        self.lambda = if self.config.lambda_candidates.is_empty() || feats.len() < 2 {
            self.config.lambda
        } else {
            self.choose_lambda(name, &feats)?
        };
        self.tasks.push(Self::stats_of(name, &feats, d));
        self.refit()?;
        Ok(self.tasks.len() - 1)
    }

    /// Choose lambda on a seeded held-out split of the current task's features.
    fn choose_lambda(&self, name: &str, feats: &[Vec<f64>]) -> Result<f64> {
        use rand::seq::SliceRandom;
        let n = feats.len();
        let n_hold = ((n as f64 * self.config.holdout_fraction).round() as usize).clamp(1, n - 1);
        let mut idx: Vec<usize> = (0..n).collect();
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.config.seed.wrapping_add(self.tasks.len() as u64));
        idx.shuffle(&mut rng);
        let (hold, fit) = idx.split_at(n_hold);
        let d = self.feature_dim();
        let fit_feats: Vec<Vec<f64>> = fit.iter().map(|&i| feats[i].clone()).collect();
        let cur = Self::stats_of(name, &fit_feats, d);
        let mut all: Vec<&TaskStats> = self.tasks.iter().collect();
        all.push(&cur);
        let t = all.len();
        let target = t - 1;
        let mut best: Option<(usize, f64, f64)> = None; // (correct, -sq_err, lambda)
        for &lambda in &self.config.lambda_candidates {
            let w = self.solve_for(&all, lambda)?;
            let mut correct = 0;
            let mut sq = 0.0;
            for &i in hold {
                let s = Self::scores_with(&w, t, &feats[i]);
                if argmax(&s) == target {
                    correct += 1;
                }
                sq += s
                    .iter()
                    .enumerate()
                    .map(|(k, v)| (v - if k == target { 1.0 } else { 0.0 }).powi(2))
                    .sum::<f64>();
            }
            let cand = (correct, -sq, lambda);
            let better = match best {
                None => true,
                Some(b) => {
                    (cand.0, cand.1) > (b.0, b.1)
                        || (cand.0 == b.0 && cand.1 == b.1 && lambda > b.2)
                }
            };
            if better {
                best = Some(cand);
            }
        }
        Ok(best.map(|b| b.2).unwrap_or(self.config.lambda))
    }

    /// Re-solve W from the running sums with the current lambda.
    pub fn refit(&mut self) -> Result<()> {
        let all: Vec<&TaskStats> = self.tasks.iter().collect();
        self.w = self.solve_for(&all, self.lambda)?;
        Ok(())
    }

    /// Scores (h W) for one pooled embedding.
    pub fn scores(&self, pooled: &[f64]) -> Result<Vec<f64>> {
        if self.tasks.is_empty() {
            return Err(Error::internal("matcher: no task fitted yet"));
        }
        let h = self.features(pooled)?;
        Ok(Self::scores_with(&self.w, self.tasks.len(), &h))
    }

    /// The expert for one pooled embedding (None = base model under the open-set threshold).
    pub fn route(&self, pooled: &[f64]) -> Result<Route> {
        Ok(self.decide(&self.scores(pooled)?))
    }

    /// The routing decision from already computed scores (argmax, then the open-set threshold).
    pub fn decide(&self, s: &[f64]) -> Route {
        let k = argmax(s);
        let score = s[k];
        let expert = match self.config.open_set_threshold {
            Some(th) if score < th => None,
            _ => Some(k),
        };
        Route { expert, score }
    }

    /// Each task's running sums over the regression features without their bias coordinate (the novelty score's
    /// input, see [`super::novelty`]).
    pub fn task_sums(&self) -> Vec<super::novelty::Sums> {
        let d = self.feature_dim();
        let k = d - 1;
        self.tasks
            .iter()
            .map(|t| super::novelty::Sums {
                n: t.n,
                g: (0..k)
                    .flat_map(|i| t.g[i * d..i * d + k].iter().copied())
                    .collect(),
                s: t.s[..k].to_vec(),
            })
            .collect()
    }

    /// The regression features of a pooled embedding without the bias (the novelty score's space).
    pub fn novelty_features(&self, pooled: &[f64]) -> Result<Vec<f64>> {
        let mut h = self.features(pooled)?;
        h.pop();
        Ok(h)
    }

    /// The solved weights (D x T, row-major), for inspection and tests.
    pub fn weights(&self) -> &[f64] {
        &self.w
    }

    /// The fixed random projection (in_dim x projection_dim, row-major; empty without one): what
    /// [`RidgeMatcher::features`] multiplies a pooled embedding by, for readers outside this crate (the PEFT
    /// export's router).
    pub fn projection(&self) -> &[f64] {
        &self.projection
    }

    /// Number of f64 values the matcher stores (its memory footprint, in values).
    pub fn num_stored_values(&self) -> usize {
        self.tasks
            .iter()
            .map(|t| t.g.len() + t.s.len())
            .sum::<usize>()
            + self.w.len()
            + self.projection.len()
    }

    /// The whole state (settings, projection, per-task sums, solved weights) as JSON: `matcher.json`.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::internal(format!("matcher: serialise: {e}")))
    }

    /// Read a state written by [`RidgeMatcher::to_json`].
    pub fn from_json(s: &str) -> Result<Self> {
        let m: Self = serde_json::from_str(s)
            .map_err(|e| Error::internal(format!("matcher: parse saved state: {e}")))?;
        m.check_sizes()
            .map_err(|e| Error::input(format!("matcher: inconsistent saved state: {e}")))?;
        Ok(m)
    }

    /// The saved sizes agree with each other (a corrupt `matcher.json` must not index out of bounds later).
    fn check_sizes(&self) -> std::result::Result<(), String> {
        self.config.check()?;
        if self.in_dim == 0 {
            return Err("`in_dim` is 0".into());
        }
        let p = self.config.projection_dim;
        if self.projection.len() != if p > 0 { self.in_dim * p } else { 0 } {
            return Err(format!(
                "projection has {} values for {} x {p}",
                self.projection.len(),
                self.in_dim
            ));
        }
        let d = self.feature_dim();
        for t in &self.tasks {
            if t.g.len() != d * d || t.s.len() != d {
                return Err(format!("task {:?}: sums do not have dimension {d}", t.name));
            }
        }
        if !self.tasks.is_empty() && self.w.len() != d * self.tasks.len() {
            return Err(format!(
                "weights have {} values for {d} x {} tasks",
                self.w.len(),
                self.tasks.len()
            ));
        }
        if !(self.lambda > 0.0 && self.lambda.is_finite()) {
            return Err(format!("`lambda` = {} must be > 0", self.lambda));
        }
        Ok(())
    }
}

/// Global average pooling of a (C, H, W) embedding stored row-major: C values.
pub fn global_average_pool(emb: &[f32], c: usize) -> Result<Vec<f64>> {
    if c == 0 || !emb.len().is_multiple_of(c) {
        return Err(Error::internal(format!(
            "pool: {} values do not split into {c} channels",
            emb.len()
        )));
    }
    let hw = emb.len() / c;
    Ok((0..c)
        .map(|i| {
            emb[i * hw..(i + 1) * hw]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>()
                / hw as f64
        })
        .collect())
}

fn argmax(s: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in s.iter().enumerate() {
        if *v > s[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests;
