//! Elastic weight consolidation: diagonal Fisher information and the quadratic penalty.
//!
//! Fisher: the empirical diagonal Fisher of the segmentation loss on a finished task's training data,
//! `F = mean_i (d loss_i / d theta)^2`, one sample at a time. Penalty: `(lambda / 2) sum_k F_k (theta - theta*_k)^2`.
//! Plain EWC keeps one (F, theta*) pair per finished task and sums their penalties; online EWC keeps a single pair,
//! `F* = gamma F*_old + F_new`, anchored at the latest parameters.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::spec::Diag;
use crate::Result;

/// Diagonal Fisher of `loss(i)` for i in 0..n, w.r.t. `vars` (same order, same shapes).
pub fn diagonal_fisher<F>(vars: &[Var], n: usize, mut loss: F) -> Result<Vec<Tensor>>
where
    F: FnMut(usize) -> Result<Tensor>,
{
    let mut acc: Vec<Tensor> = vars
        .iter()
        .map(|v| v.zeros_like())
        .collect::<candle_core::Result<_>>()?;
    for i in 0..n {
        let l = loss(i)?;
        let grads = l.backward()?;
        for (a, v) in acc.iter_mut().zip(vars) {
            if let Some(g) = grads.get(v.as_tensor()) {
                *a = (&*a + g.sqr()?)?;
            }
        }
    }
    let scale = 1.0 / n.max(1) as f64;
    Ok(acc
        .into_iter()
        .map(|a| a.affine(scale, 0.0))
        .collect::<candle_core::Result<_>>()?)
}

/// `(lambda / 2) * sum F (theta - anchor)^2` as a differentiable scalar.
pub fn ewc_penalty(
    vars: &[Var],
    fisher: &[Tensor],
    anchor: &[Tensor],
    lambda: f64,
) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for ((v, f), a) in vars.iter().zip(fisher).zip(anchor) {
        let d = v.as_tensor().sub(a)?;
        let term = (d.sqr()? * f)?.sum_all()?;
        total = Some(match total {
            None => term,
            Some(t) => (t + term)?,
        });
    }
    let total = match total {
        Some(t) => t,
        None => Tensor::new(0f32, &candle_core::Device::Cpu)?,
    };
    Ok(total.affine(lambda / 2.0, 0.0)?)
}

/// One consolidated (Fisher, anchor) pair.
#[derive(Clone, Debug)]
pub struct Consolidated {
    pub(crate) fisher: Vec<Tensor>,
    pub(crate) anchor: Vec<Tensor>,
}

/// EWC memory across tasks: a list of pairs (plain EWC) or a single running pair (online EWC, `gamma` set).
#[derive(Clone, Debug, Default)]
pub struct EwcMemory {
    pub(crate) gamma: Option<f64>,
    pub(crate) pairs: Vec<Consolidated>,
}

/// Serialisable settings shared by `ewc` and `online-ewc`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EwcSettings {
    /// Penalty strength lambda in (lambda/2) sum F (theta - theta*)^2.
    pub lambda: f64,
    /// Online EWC's decay of the old Fisher; None for plain EWC.
    pub gamma: Option<f64>,
}

impl EwcMemory {
    /// An empty memory: online EWC (one running pair) when `gamma` is set, plain EWC (a pair per task) otherwise.
    pub fn new(gamma: Option<f64>) -> Self {
        Self {
            gamma,
            pairs: Vec::new(),
        }
    }

    /// Record a finished task's Fisher with the current parameters as anchor.
    ///
    /// The anchor is a detached copy: `Tensor::copy` alone keeps a backprop edge to the variable, through which
    /// the penalty's gradient cancelled exactly (d/dθ of (θ - copy(θ))² is zero), so the penalty did nothing in
    /// the process that consolidated and acted only after a resume had read the anchor back from disk.
    pub fn consolidate(&mut self, fisher: Vec<Tensor>, vars: &[Var]) -> Result<()> {
        let anchor: Vec<Tensor> = vars
            .iter()
            .map(|v| Ok(v.as_tensor().copy()?.detach()))
            .collect::<Result<_>>()?;
        let fisher: Vec<Tensor> = fisher.into_iter().map(|f| f.detach()).collect();
        match (self.gamma, self.pairs.pop()) {
            (Some(gamma), Some(old)) => {
                let fisher = old
                    .fisher
                    .iter()
                    .zip(&fisher)
                    .map(|(o, n)| o.affine(gamma, 0.0)?.add(n))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                self.pairs.push(Consolidated { fisher, anchor });
            }
            (_, old) => {
                if let Some(o) = old {
                    self.pairs.push(o);
                }
                self.pairs.push(Consolidated { fisher, anchor });
            }
        }
        Ok(())
    }

    /// The total penalty over all stored pairs (None before the first consolidation).
    pub fn penalty(&self, vars: &[Var], lambda: f64) -> Result<Option<Tensor>> {
        let mut total: Option<Tensor> = None;
        for p in &self.pairs {
            let t = ewc_penalty(vars, &p.fisher, &p.anchor, lambda)?;
            total = Some(match total {
                None => t,
                Some(a) => (a + t)?,
            });
        }
        Ok(total)
    }

    /// Flatten to named tensors for a safetensors checkpoint.
    pub fn to_named(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (k, p) in self.pairs.iter().enumerate() {
            for (i, t) in p.fisher.iter().enumerate() {
                out.push((format!("pair{k}.fisher.{i}"), t.clone()));
            }
            for (i, t) in p.anchor.iter().enumerate() {
                out.push((format!("pair{k}.anchor.{i}"), t.clone()));
            }
        }
        out
    }

    /// Write the memory as one safetensors file ([`EwcMemory::to_named`]'s names).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let map: std::collections::HashMap<String, Tensor> = self.to_named().into_iter().collect();
        candle_core::safetensors::save(&map, path)
            .map_err(|e| crate::Error::internal(format!("{}: {e}", path.display())))
    }

    /// Read a memory written by [`EwcMemory::save`] onto `device`. The error names the file; the caller decides
    /// whether a bad file is bad input (an expert folder) or an internal failure (a run's own checkpoint).
    pub fn load(
        path: &std::path::Path,
        gamma: Option<f64>,
        device: &candle_core::Device,
    ) -> std::result::Result<Self, String> {
        let map = candle_core::safetensors::load(path, device)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let n_vars = map
            .keys()
            .filter(|k| k.starts_with("pair0.fisher."))
            .count();
        Self::from_named(gamma, n_vars, |k| map.get(k).cloned())
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Rebuild from `to_named` output (n_vars tensors per half-pair).
    pub fn from_named(
        gamma: Option<f64>,
        n_vars: usize,
        get: impl Fn(&str) -> Option<Tensor>,
    ) -> Result<Self> {
        let mut pairs = Vec::new();
        for k in 0.. {
            if get(&format!("pair{k}.fisher.0")).is_none() {
                break;
            }
            let mut fisher = Vec::new();
            let mut anchor = Vec::new();
            for i in 0..n_vars {
                let f = get(&format!("pair{k}.fisher.{i}"));
                let a = get(&format!("pair{k}.anchor.{i}"));
                match (f, a) {
                    (Some(f), Some(a)) => {
                        fisher.push(f);
                        anchor.push(a);
                    }
                    _ => {
                        return Err(crate::Error::internal(format!(
                            "ewc checkpoint: pair {k} tensor {i} missing"
                        )))
                    }
                }
            }
            pairs.push(Consolidated { fisher, anchor });
        }
        Ok(Self { gamma, pairs })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The `ewc` strategy kind (presets `ewc` and `online-ewc`).

use super::single::{SingleAdapter, SingleKind};
use super::StrategyCtx;
use crate::data::{Case, TaskData};
use crate::model::Adapter;
use crate::train::loss::{seg_loss, LossWeights};
use crate::train::{FitEnv, TrainBatch, TrainHooks};
use std::collections::BTreeMap;
use std::path::Path;

/// The kind-specific keys of an `ewc` preset (`ewc`, `online-ewc`).
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Penalty strength lambda in (lambda/2) sum F (theta - theta*)^2.
    #[serde(default = "default_lambda")]
    pub lambda: f64,
    /// Online EWC: a single (F*, theta*) pair, F* = gamma F*_old + F_new.
    #[serde(default)]
    pub online: bool,
    /// Decay of the old Fisher in online EWC (1 = plain sum).
    #[serde(default)]
    pub gamma: Option<f64>,
    /// Training cases used for the Fisher of a finished task (0 = all).
    #[serde(default)]
    pub fisher_samples: usize,
    /// Fresh AdamW moments at each task (default) or carried over.
    #[serde(default = "super::finetune::yes")]
    pub reset_optimizer: bool,
}

fn default_lambda() -> f64 {
    1000.0
}

impl Params {
    /// Ranges and the `gamma`/`online` pairing.
    pub fn check(self) -> std::result::Result<Self, Diag> {
        if !(self.lambda >= 0.0 && self.lambda.is_finite()) {
            return Err(Diag::at(
                "lambda",
                format!("`lambda` = {} must be a finite number >= 0", self.lambda),
            ));
        }
        match (self.online, self.gamma) {
            (false, Some(_)) => Err(Diag::at(
                "gamma",
                "`gamma` is only used with `online = true`",
            )),
            (_, Some(g)) if !(0.0..=1.0).contains(&g) => Err(Diag::at(
                "gamma",
                format!("`gamma` = {g} must be in [0, 1]"),
            )),
            _ => Ok(self),
        }
    }
}

/// The `ewc` strategy kind: one adapter fine-tuned task after task with the EWC penalty of the finished tasks.
pub struct Ewc {
    /// The preset's settings.
    pub params: Params,
    memory: EwcMemory,
}

const EWC_FILE: &str = "ewc.safetensors";

impl Ewc {
    /// An EWC with an empty memory; online (gamma defaulting to 1) when `params.online` is set.
    pub fn new(params: Params) -> Self {
        let gamma = params.online.then(|| params.gamma.unwrap_or(1.0));
        Self {
            memory: EwcMemory::new(gamma),
            params,
        }
    }
}

/// Diagonal Fisher of the segmentation loss over `cases`, one case at a time, with exact ground-truth box prompts.
pub fn task_fisher(env: &FitEnv, adapter: &Adapter, cases: &[&Case]) -> Result<Vec<Tensor>> {
    let t = &env.train.loss;
    let w = LossWeights {
        dice: t.dice,
        bce: t.bce,
        iou: t.iou,
    };
    let vars = adapter.vars();
    diagonal_fisher(&vars, cases.len(), |i| {
        let c = [cases[i]];
        let emb = super::embed_with(env.model, env.embeddings, &c, Some(adapter))?;
        let prompts = crate::train::r#loop::eval_prompts(&c, env.device)?;
        let out = env.model.decode(&emb, &prompts, Some(adapter))?;
        seg_loss(&out, &c[0].mask.unsqueeze(0)?, &w)
    })
}

/// EWC as training hooks: the penalty of `memory` is added to every step's loss, and when the task ends its
/// Fisher (on `fisher_samples` of its training cases drawn with the fit's random stream, 0 = all) is
/// consolidated into `memory` with the kept weights as anchor.
pub struct EwcHooks<'m> {
    /// The finished tasks' (Fisher, anchor) pairs.
    pub memory: &'m mut EwcMemory,
    /// Penalty strength lambda.
    pub lambda: f64,
    /// Training cases of the finished task used for its Fisher (0 = all).
    pub fisher_samples: usize,
}

impl TrainHooks for EwcHooks<'_> {
    fn extra_loss(&self, _env: &FitEnv, batch: &TrainBatch) -> Result<Option<Tensor>> {
        self.memory.penalty(&batch.adapter.vars(), self.lambda)
    }

    fn after_task(&mut self, env: &mut FitEnv, adapter: &Adapter, cases: &[&Case]) -> Result<()> {
        let n = match self.fisher_samples {
            0 => cases.len(),
            k => k.min(cases.len()),
        };
        let subset: Vec<&Case> = if n < cases.len() {
            rand::seq::index::sample(&mut *env.rng, cases.len(), n)
                .into_iter()
                .map(|i| cases[i])
                .collect()
        } else {
            cases.to_vec()
        };
        let fisher = task_fisher(env, adapter, &subset)?;
        self.memory.consolidate(fisher, &adapter.vars())
    }
}

impl SingleKind for Ewc {
    fn train(
        &mut self,
        core: &mut SingleAdapter,
        ctx: &mut StrategyCtx,
        _task_index: usize,
        task: &TaskData,
    ) -> Result<()> {
        if self.params.reset_optimizer {
            core.reset_optimizer();
        }
        let cases: Vec<&Case> = task.train.iter().collect();
        let mut hooks = EwcHooks {
            memory: &mut self.memory,
            lambda: self.params.lambda,
            fisher_samples: self.params.fisher_samples,
        };
        core.fit(ctx, &task.name, &cases, &mut hooks)?;
        Ok(())
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.memory.save(&dir.join(EWC_FILE))
    }

    fn load(&mut self, ctx: &StrategyCtx, dir: &Path) -> Result<()> {
        self.memory = EwcMemory::load(&dir.join(EWC_FILE), self.memory.gamma, ctx.device)
            .map_err(crate::Error::internal)?;
        Ok(())
    }

    fn extras(&self, m: &mut BTreeMap<String, f64>) {
        let stored: usize = self
            .memory
            .pairs
            .iter()
            .flat_map(|p| p.fisher.iter().chain(p.anchor.iter()))
            .map(|t| t.elem_count())
            .sum();
        m.insert("ewc_stored_values".into(), stored as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn linear_model() -> (Var, Var, Vec<[f64; 2]>, Vec<f64>) {
        let dev = Device::Cpu;
        let w = Var::from_vec(vec![0.5f64, -1.0], 2, &dev).unwrap();
        let b = Var::from_vec(vec![0.25f64], 1, &dev).unwrap();
        let xs = vec![[1.0, 2.0], [-0.5, 1.5], [2.0, -1.0]];
        let ts = vec![1.0, 0.0, -2.0];
        (w, b, xs, ts)
    }

    #[test]
    fn fisher_matches_hand_computation() {
        // loss_i = (w . x_i + b - t_i)^2  =>  dloss/dw = 2 r_i x_i, dloss/db = 2 r_i.
        let (w, b, xs, ts) = linear_model();
        let vars = vec![w.clone(), b.clone()];
        let fisher = diagonal_fisher(&vars, xs.len(), |i| {
            let x = Tensor::new(&xs[i], &Device::Cpu)?;
            let y = ((w.as_tensor() * x)?.sum_all()? + b.as_tensor().sum_all()?)?;
            Ok(y.affine(1.0, -ts[i])?.sqr()?)
        })
        .unwrap();
        let (wv, bv) = ([0.5, -1.0], 0.25);
        let mut fw = [0.0; 2];
        let mut fb = 0.0;
        for (x, t) in xs.iter().zip(&ts) {
            let r = wv[0] * x[0] + wv[1] * x[1] + bv - t;
            fw[0] += (2.0 * r * x[0]).powi(2) / 3.0;
            fw[1] += (2.0 * r * x[1]).powi(2) / 3.0;
            fb += (2.0 * r).powi(2) / 3.0;
        }
        let got_w = fisher[0].to_vec1::<f64>().unwrap();
        let got_b = fisher[1].to_vec1::<f64>().unwrap();
        assert!(
            (got_w[0] - fw[0]).abs() < 1e-12 && (got_w[1] - fw[1]).abs() < 1e-12,
            "{got_w:?} vs {fw:?}"
        );
        assert!((got_b[0] - fb).abs() < 1e-12);
    }

    #[test]
    fn penalty_and_its_gradient_match_hand_computation() {
        let dev = Device::Cpu;
        let theta = Var::from_vec(vec![1.0f64, 2.0, -1.0], 3, &dev).unwrap();
        let anchor = vec![Tensor::new(&[0.5f64, 2.0, 1.0], &dev).unwrap()];
        let fisher = vec![Tensor::new(&[2.0f64, 10.0, 0.25], &dev).unwrap()];
        let lambda = 3.0;
        let p = ewc_penalty(std::slice::from_ref(&theta), &fisher, &anchor, lambda).unwrap();
        // (3/2) * (2*0.25 + 10*0 + 0.25*4) = 1.5 * 1.5 = 2.25
        assert!((p.to_scalar::<f64>().unwrap() - 2.25).abs() < 1e-12);
        let g = p.backward().unwrap();
        let gt = g.get(theta.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        // d/dtheta = lambda * F * (theta - anchor) = 3 * [2*0.5, 0, 0.25*-2] = [3, 0, -1.5]
        assert_eq!(gt, vec![3.0, 0.0, -1.5]);
    }

    #[test]
    fn online_ewc_accumulates_with_gamma_plain_keeps_pairs() {
        let dev = Device::Cpu;
        let v = Var::zeros(2, DType::F64, &dev).unwrap();
        let f1 = vec![Tensor::new(&[1.0f64, 2.0], &dev).unwrap()];
        let f2 = vec![Tensor::new(&[4.0f64, 0.0], &dev).unwrap()];
        let mut online = EwcMemory::new(Some(0.5));
        online
            .consolidate(f1.clone(), std::slice::from_ref(&v))
            .unwrap();
        v.set(&Tensor::new(&[1.0f64, 1.0], &dev).unwrap()).unwrap();
        online
            .consolidate(f2.clone(), std::slice::from_ref(&v))
            .unwrap();
        assert_eq!(online.pairs.len(), 1);
        assert_eq!(
            online.pairs[0].fisher[0].to_vec1::<f64>().unwrap(),
            vec![4.5, 1.0]
        );
        assert_eq!(
            online.pairs[0].anchor[0].to_vec1::<f64>().unwrap(),
            vec![1.0, 1.0]
        );
        // The anchor is a copy: later updates of the variable do not move it.
        v.set(&Tensor::new(&[7.0f64, 7.0], &dev).unwrap()).unwrap();
        assert_eq!(
            online.pairs[0].anchor[0].to_vec1::<f64>().unwrap(),
            vec![1.0, 1.0]
        );

        // The penalty acts on the variable right after consolidation, exactly as after a restore from disk:
        // d/dθ (λ/2) F (θ - θ*)² = λ F (θ - θ*) with θ = (7, 7), θ* = (1, 1), F = (4.5, 1), λ = 2.
        let p = online
            .penalty(std::slice::from_ref(&v), 2.0)
            .unwrap()
            .unwrap();
        let g = p.backward().unwrap();
        let gv = g.get(v.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(gv, vec![2.0 * 4.5 * 6.0, 2.0 * 1.0 * 6.0]);
        let named = online.to_named();
        let back = EwcMemory::from_named(Some(0.5), 1, |k| {
            named.iter().find(|(n, _)| n == k).map(|(_, t)| t.clone())
        })
        .unwrap();
        let p2 = back
            .penalty(std::slice::from_ref(&v), 2.0)
            .unwrap()
            .unwrap();
        let g2 = p2.backward().unwrap();
        assert_eq!(
            g2.get(v.as_tensor()).unwrap().to_vec1::<f64>().unwrap(),
            gv,
            "a restored memory pulls exactly as the one in memory"
        );

        let mut plain = EwcMemory::new(None);
        plain.consolidate(f1, std::slice::from_ref(&v)).unwrap();
        plain.consolidate(f2, std::slice::from_ref(&v)).unwrap();
        assert_eq!(plain.pairs.len(), 2);
        // theta == both anchors -> zero penalty
        let p = plain
            .penalty(std::slice::from_ref(&v), 1.0)
            .unwrap()
            .unwrap();
        assert_eq!(p.to_scalar::<f64>().unwrap(), 0.0);
        let named = plain.to_named();
        let back = EwcMemory::from_named(None, 1, |k| {
            named.iter().find(|(n, _)| n == k).map(|(_, t)| t.clone())
        })
        .unwrap();
        assert_eq!(back.pairs.len(), 2);
        assert_eq!(
            back.pairs[1].fisher[0].to_vec1::<f64>().unwrap(),
            vec![4.0, 0.0]
        );
    }
}
