//! `wd * soft-Dice + wb * BCE-with-logits` over (B, ...) logits as one graph node with an analytic backward
//! pass: the segmentation loss of every training step, which on a full 256x256 batch otherwise costs a dozen
//! candle nodes and their gradient buffers. Same numbers as [`super::loss::soft_dice_loss`] and
//! [`super::loss::stable_bce_with_logits`] (checked by `train::loss`'s finite-difference test).

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use crate::model::kernels::cpu::{cpu_ok, new_tensor, read, slices};
use crate::model::kernels::float::Float;
use crate::model::kernels::par::par_rows;

/// wd * mean_b(1 - dice_b) + wb * mean(BCE-with-logits) over (B, ...) logits and targets.
struct DiceBce {
    wd: f64,
    wb: f64,
    nb: usize,
}

impl DiceBce {
    /// Per-sample (sum p y, sum p, sum y, sum bce) for sample rows of `n` values.
    fn sums<T: Float>(&self, x: &[T], y: &[T]) -> Vec<[f64; 4]> {
        let n = x.len() / self.nb;
        let mut out = vec![[0f64; 4]; self.nb];
        let one = T::from_f64(1.0);
        par_rows(&mut out, 1, 0, |b0, ch| {
            for (i, o) in ch.iter_mut().enumerate() {
                let b = b0 + i;
                let (xs, ys) = (&x[b * n..(b + 1) * n], &y[b * n..(b + 1) * n]);
                let (mut i_, mut ps, mut ysum, mut bce) = (T::z(), T::z(), T::z(), 0f64);
                for (xc, yc) in xs.chunks(1024).zip(ys.chunks(1024)) {
                    let mut bc = T::z();
                    for (&xv, &yv) in xc.iter().zip(yc) {
                        let e = (T::z() - xv.abs_()).exp_(); // exp(-|x|)
                        let p = if xv >= T::z() {
                            one / (one + e)
                        } else {
                            e / (one + e)
                        };
                        i_ += p * yv;
                        ps += p;
                        ysum += yv;
                        let relu = if xv > T::z() { xv } else { T::z() };
                        bc += relu - xv * yv + (one + e).ln_();
                    }
                    bce += bc.to_f64();
                }
                *o = [i_.to_f64(), ps.to_f64(), ysum.to_f64(), bce];
            }
        });
        out
    }

    fn fwd<T: Float>(&self, x: &[T], y: &[T]) -> T {
        let sums = self.sums(x, y);
        let (nb, nt) = (self.nb as f64, x.len() as f64);
        let mut dice = 0.0;
        let mut bce = 0.0;
        for [i, p, ys, b] in sums {
            dice += 1.0 - (2.0 * i + 1e-6) / (p + ys + 1e-6);
            bce += b;
        }
        T::from_f64(self.wd * dice / nb + self.wb * bce / nt)
    }

    fn bwd_k<T: Float>(&self, x: &[T], y: &[T], g: f64) -> Vec<T> {
        let sums = self.sums(x, y);
        let n = x.len() / self.nb;
        let (nb, nt) = (self.nb as f64, x.len() as f64);
        let one = T::from_f64(1.0);
        // gx = a_b p' (2 y U - (2I + eps)) + c (p - y), per sample b.
        let coef: Vec<(T, T, T)> = sums
            .iter()
            .map(|&[i, p, ys, _]| {
                let u = p + ys + 1e-6;
                let a = -g * self.wd / nb / (u * u);
                (
                    T::from_f64(a),
                    T::from_f64(2.0 * u),
                    T::from_f64(2.0 * i + 1e-6),
                )
            })
            .collect();
        let c = T::from_f64(g * self.wb / nt);
        let mut gx = vec![T::z(); x.len()];
        par_rows(&mut gx, n, 0, |b0, ch| {
            for (bi, gr) in ch.chunks_exact_mut(n).enumerate() {
                let b = b0 + bi;
                let (a, u2, i2) = coef[b];
                let (xs, ys) = (&x[b * n..(b + 1) * n], &y[b * n..(b + 1) * n]);
                for ((o, &xv), &yv) in gr.iter_mut().zip(xs).zip(ys) {
                    let e = (T::z() - xv.abs_()).exp_();
                    let p = if xv >= T::z() {
                        one / (one + e)
                    } else {
                        e / (one + e)
                    };
                    *o = a * p * (one - p) * (yv * u2 - i2) + c * (p - yv);
                }
            }
        });
        gx
    }
}

impl CustomOp2 for DiceBce {
    fn name(&self) -> &'static str {
        "fused-dice-bce"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(vec![
                self.fwd(slices::<f32>(s1, l1)?, slices::<f32>(s2, l2)?)
            ]),
            CpuStorage::F64(_) => CpuStorage::F64(vec![
                self.fwd(slices::<f64>(s1, l1)?, slices::<f64>(s2, l2)?)
            ]),
            _ => bail!("fused dice-bce: f32/f64 only"),
        };
        Ok((s, Shape::from(())))
    }
    fn bwd(
        &self,
        x: &Tensor,
        y: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gv = g.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let gx = match x.dtype() {
            DType::F32 => read::<f32, _>(x, |xs| {
                read::<f32, _>(y, |ys| new_tensor(self.bwd_k(xs, ys, gv), x.shape()))
            })?,
            _ => read::<f64, _>(x, |xs| {
                read::<f64, _>(y, |ys| new_tensor(self.bwd_k(xs, ys, gv), x.shape()))
            })?,
        };
        Ok((Some(gx), None))
    }
}

/// `wd * soft-Dice loss + wb * BCE-with-logits` (both as in `train::loss`) as one node, on CPU
/// f32/f64; `None` when it does not apply (other devices/dtypes, shape mismatch).
pub(crate) fn dice_bce(x: &Tensor, y: &Tensor, wd: f64, wb: f64) -> Result<Option<Tensor>> {
    let y = y.to_dtype(x.dtype())?;
    if !cpu_ok(&[x, &y]) || x.dims() != y.dims() || x.rank() == 0 {
        return Ok(None);
    }
    let nb = x.dim(0)?;
    Ok(Some(x.contiguous()?.apply_op2_arc(
        &y.contiguous()?.detach(),
        Arc::new(Box::new(DiceBce { wd, wb, nb })),
    )?))
}
