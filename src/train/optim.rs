//! AdamW (decoupled weight decay, as PyTorch's `torch.optim.AdamW`) with state that can be saved
//! and restored (first/second moments and the step count), optional gradient-norm clipping.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, Layout, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// AdamW's hyper-parameters (PyTorch's names and defaults, except the learning rate).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamsAdamW {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first-moment estimate.
    pub beta1: f64,
    /// Decay of the second-moment estimate.
    pub beta2: f64,
    /// Added to the square root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay (multiplied by the learning rate).
    pub weight_decay: f64,
    /// Clip the global gradient L2 norm to this value (None: no clipping).
    pub max_grad_norm: Option<f64>,
}

impl Default for ParamsAdamW {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: None,
        }
    }
}

impl ParamsAdamW {
    /// The settings of a spec's `[train]` table (`lr`, `weight_decay`, `max_grad_norm`; PyTorch's betas and eps).
    pub fn from_train(train: &crate::spec::TrainSpec) -> Self {
        Self {
            lr: train.lr,
            weight_decay: train.weight_decay,
            max_grad_norm: train.max_grad_norm,
            ..Default::default()
        }
    }
}

struct Slot {
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// The optimiser over a fixed list of variables.
pub struct AdamW {
    slots: Vec<Slot>,
    /// Its hyper-parameters (the learning rate may change between steps).
    pub params: ParamsAdamW,
    step: usize,
}

impl AdamW {
    /// An optimiser for `vars` with zero moments and step 0.
    pub fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|var| {
                let m = var.zeros_like()?;
                let v = var.zeros_like()?;
                Ok(Slot { var, m, v })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            slots,
            params,
            step: 0,
        })
    }

    /// Steps taken so far (restored by a load).
    pub fn step_count(&self) -> usize {
        self.step
    }
    /// The current learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.params.lr
    }
    /// Change the learning rate for the following steps (schedules).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }
    /// The variables this optimiser updates, in order.
    pub fn vars(&self) -> Vec<Var> {
        self.slots.iter().map(|s| s.var.clone()).collect()
    }

    /// Global L2 norm of the gradients of this optimiser's variables.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0.0;
        for s in &self.slots {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                sq += g
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?;
            }
        }
        Ok(sq.sqrt())
    }

    /// One update. Variables without a gradient are left untouched (moments included).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let clip = match self.params.max_grad_norm {
            Some(mx) => {
                let n = self.grad_norm(grads)?;
                if !n.is_finite() {
                    return Err(Error::NonFinite(format!("gradient norm {n}")));
                }
                if n > mx {
                    mx / (n + 1e-12)
                } else {
                    1.0
                }
            }
            None => 1.0,
        };
        self.step += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.step as i32);
        let bc2 = 1.0 - p.beta2.powi(self.step as i32);
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            // Gradients of variables are not detached by candle: they can reference this step's
            // graph, and moments built from them would keep every step's graph alive.
            let g = g.detach();
            let theta = s.var.as_tensor();
            if fused_ok(theta, &g, &s.m, &s.v) {
                let mom = |beta, square| MomentOp { beta, clip, square };
                s.m.inplace_op2(&g, &mom(p.beta1, false))?;
                s.v.inplace_op2(&g, &mom(p.beta2, true))?;
                let op = ParamOp {
                    decay: 1.0 - p.lr * p.weight_decay,
                    lr: p.lr,
                    eps: p.eps,
                    bc1,
                    bc2,
                };
                theta.inplace_op3(&s.m, &s.v, &op)?;
                continue;
            }
            let g = if clip != 1.0 { (g * clip)? } else { g };
            let m = ((&s.m * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            let v = ((&s.v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let upd = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + p.eps)?)?;
            let new = ((theta * (1.0 - p.lr * p.weight_decay))? - (upd * p.lr)?)?;
            s.var.set(&new)?;
            s.m = m;
            s.v = v;
        }
        Ok(())
    }

    /// Save moments, step count and hyper-parameters (safetensors + JSON metadata).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut ts: Vec<(String, Tensor)> = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            ts.push((format!("m.{i}"), s.m.to_device(&Device::Cpu)?));
            ts.push((format!("v.{i}"), s.v.to_device(&Device::Cpu)?));
        }
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "evosam-adamw-v1".to_string());
        meta.insert("step".to_string(), self.step.to_string());
        meta.insert("n_vars".to_string(), self.slots.len().to_string());
        meta.insert(
            "params".to_string(),
            serde_json::to_string(&self.params).map_err(|e| Error::internal(e.to_string()))?,
        );
        safetensors::serialize_to_file(ts.iter().map(|(n, t)| (n.as_str(), t)), Some(meta), path)
            .map_err(|e| {
                Error::internal(format!("{}: writing optimiser state: {e}", path.display()))
            })
    }

    /// Restore state saved by [`save`](Self::save) into an optimiser over the same variables.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |m: String| Error::input(format!("{}: {m}", path.display()));
        let (_, md) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let meta = md.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some("evosam-adamw-v1") {
            return Err(bad("not an evosam AdamW state".into()));
        }
        let n: usize = meta
            .get("n_vars")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad `n_vars`".into()))?;
        if n != self.slots.len() {
            return Err(bad(format!(
                "state for {n} variables, optimiser has {}",
                self.slots.len()
            )));
        }
        let step: usize = meta
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad `step`".into()))?;
        let params: ParamsAdamW = meta
            .get("params")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| bad("bad `params`".into()))?;
        let dev = self
            .slots
            .first()
            .map(|s| s.var.device().clone())
            .unwrap_or(Device::Cpu);
        let ts =
            candle_core::safetensors::load_buffer(&bytes, &dev).map_err(|e| bad(e.to_string()))?;
        let mut new = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            let m = ts
                .get(&format!("m.{i}"))
                .ok_or_else(|| bad(format!("`m.{i}` missing")))?;
            let v = ts
                .get(&format!("v.{i}"))
                .ok_or_else(|| bad(format!("`v.{i}` missing")))?;
            if m.dims() != s.var.dims() || v.dims() != s.var.dims() {
                return Err(bad(format!(
                    "variable {i}: shape {:?} vs {:?}",
                    m.dims(),
                    s.var.dims()
                )));
            }
            new.push((m.to_dtype(s.var.dtype())?, v.to_dtype(s.var.dtype())?));
        }
        for (s, (m, v)) in self.slots.iter_mut().zip(new) {
            s.m = m;
            s.v = v;
        }
        self.step = step;
        self.params = params;
        Ok(())
    }
}

/// Whether the one-pass CPU update applies (contiguous CPU tensors of one float type).
fn fused_ok(theta: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    let dt = theta.dtype();
    theta.device().is_cpu()
        && matches!(dt, DType::F32 | DType::F64)
        && [g, m, v]
            .iter()
            .all(|t| t.dtype() == dt && t.is_contiguous() && t.dims() == theta.dims())
        && theta.is_contiguous()
}

fn contiguous<'a, T: candle_core::WithDType>(
    s: &'a [T],
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("adamw: tensor not contiguous".into()))?;
    Ok(&s[a..b])
}

fn contiguous_mut<'a, T: candle_core::WithDType>(
    s: &'a mut [T],
    l: &Layout,
) -> candle_core::Result<&'a mut [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("adamw: tensor not contiguous".into()))?;
    Ok(&mut s[a..b])
}

/// m <- beta m + (1 - beta) (clip g) (or (clip g)^2), in place.
struct MomentOp {
    beta: f64,
    clip: f64,
    square: bool,
}

impl MomentOp {
    fn run<T: candle_core::WithDType>(&self, m: &mut [T], g: &[T]) {
        let (beta, one_m, clip) = (
            T::from_f64(self.beta),
            T::from_f64(1.0 - self.beta),
            T::from_f64(self.clip),
        );
        if self.square {
            for (mv, &gv) in m.iter_mut().zip(g) {
                let gv = gv * clip;
                *mv = *mv * beta + gv * gv * one_m;
            }
        } else {
            for (mv, &gv) in m.iter_mut().zip(g) {
                *mv = *mv * beta + gv * clip * one_m;
            }
        }
    }
}

impl candle_core::InplaceOp2 for MomentOp {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        match (s1, s2) {
            (CpuStorage::F32(m), CpuStorage::F32(g)) => {
                self.run(contiguous_mut(m, l1)?, contiguous(g, l2)?)
            }
            (CpuStorage::F64(m), CpuStorage::F64(g)) => {
                self.run(contiguous_mut(m, l1)?, contiguous(g, l2)?)
            }
            _ => candle_core::bail!("adamw: f32/f64 only"),
        }
        Ok(())
    }
}

/// theta <- theta (1 - lr wd) - lr (m / bc1) / (sqrt(v / bc2) + eps), in place.
struct ParamOp {
    decay: f64,
    lr: f64,
    eps: f64,
    bc1: f64,
    bc2: f64,
}

impl candle_core::InplaceOp3 for ParamOp {
    fn name(&self) -> &'static str {
        "adamw-param"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (i1, i2) = (1.0 / self.bc1, 1.0 / self.bc2);
        match (s1, s2, s3) {
            (CpuStorage::F32(t), CpuStorage::F32(m), CpuStorage::F32(v)) => {
                let (decay, lr, eps, i1, i2) = (
                    self.decay as f32,
                    self.lr as f32,
                    self.eps as f32,
                    i1 as f32,
                    i2 as f32,
                );
                let (m, v) = (contiguous(m, l2)?, contiguous(v, l3)?);
                for ((t, &mv), &vv) in contiguous_mut(t, l1)?.iter_mut().zip(m).zip(v) {
                    *t = *t * decay - lr * (mv * i1) / ((vv * i2).sqrt() + eps);
                }
            }
            (CpuStorage::F64(t), CpuStorage::F64(m), CpuStorage::F64(v)) => {
                let (m, v) = (contiguous(m, l2)?, contiguous(v, l3)?);
                for ((t, &mv), &vv) in contiguous_mut(t, l1)?.iter_mut().zip(m).zip(v) {
                    *t = *t * self.decay - self.lr * (mv * i1) / ((vv * i2).sqrt() + self.eps);
                }
            }
            _ => candle_core::bail!("adamw: f32/f64 only"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quad_grads(x: &Var) -> GradStore {
        // f(x) = sum((x - 3)^2)
        (x.as_tensor() - 3.0)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    #[test]
    fn matches_pytorch_adamw_formula_and_resumes_exactly() {
        let dev = Device::Cpu;
        let p = ParamsAdamW {
            lr: 0.1,
            weight_decay: 0.1,
            ..Default::default()
        };
        let x = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0], &dev).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![x.clone()], p).unwrap();
        opt.step(&quad_grads(&x)).unwrap();
        // Hand computation of step 1: g = 2(x-3); mhat = g, vhat = g^2 -> update = sign(g) (eps tiny).
        let got: Vec<f64> = x.as_tensor().to_vec1().unwrap();
        let want = [
            1.0 * (1.0 - 0.01) - 0.1 * (-4.0 / (4.0 + 1e-8)),
            -2.0 * (1.0 - 0.01) - 0.1 * (-10.0 / (10.0 + 1e-8)),
        ];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{got:?} vs {want:?}");
        }
        // Save after 3 steps, continue 2 more; a restored copy must land on the same values.
        opt.step(&quad_grads(&x)).unwrap();
        opt.step(&quad_grads(&x)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("opt.safetensors");
        opt.save(&f).unwrap();
        let x2 = Var::from_tensor(&x.as_tensor().copy().unwrap()).unwrap();
        for _ in 0..2 {
            opt.step(&quad_grads(&x)).unwrap();
        }
        let mut opt2 = AdamW::new(vec![x2.clone()], ParamsAdamW::default()).unwrap();
        opt2.load(&f).unwrap();
        assert_eq!(opt2.step_count(), 3);
        for _ in 0..2 {
            opt2.step(&quad_grads(&x2)).unwrap();
        }
        let a: Vec<f64> = x.as_tensor().to_vec1().unwrap();
        let b: Vec<f64> = x2.as_tensor().to_vec1().unwrap();
        assert_eq!(a, b);
        // A fresh optimiser (no moments) would differ.
        let x3 = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0], &dev).unwrap()).unwrap();
        let mut o3 = AdamW::new(vec![x3.clone()], p).unwrap();
        o3.step(&quad_grads(&x3)).unwrap();
        assert!(AdamW::new(vec![x3], p)
            .unwrap()
            .load(&dir.path().join("missing"))
            .is_err());
    }

    #[test]
    fn clipping_limits_the_update_input() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::new(&[100.0f64], &dev).unwrap()).unwrap();
        let mut opt = AdamW::new(
            vec![x.clone()],
            ParamsAdamW {
                max_grad_norm: Some(1.0),
                ..Default::default()
            },
        )
        .unwrap();
        let g = quad_grads(&x);
        assert!((opt.grad_norm(&g).unwrap() - 194.0).abs() < 1e-9);
        opt.step(&g).unwrap();
        assert!(x.as_tensor().to_vec1::<f64>().unwrap()[0] < 100.0);
    }
}
