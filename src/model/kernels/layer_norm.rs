//! Fused layer norm over rows of `w.len()` values, optionally followed by erf-GELU, with a one-pass backward
//! (x, w and b gradients together); [`layer_norm_ops`] is the same from candle's differentiable ops (the
//! reference, and the fallback off the CPU).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};

use super::cpu::{cpu_ok, new_tensor, read, slices};
use super::float::{dot, with_float, Float};
use super::par::par_rows;
use super::PAR_MIN;

/// Layer norm over the last dimension from candle's basic (differentiable) ops: the reference for the fused
/// kernel.
pub(crate) fn layer_norm_ops(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?;
    xn.broadcast_mul(w)?.broadcast_add(b)
}

/// Layer norm over rows of `c` values with an optional GELU after it.
struct LnAct {
    eps: f64,
    act: bool,
}

impl LnAct {
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn fwd_rows<T: Float>(&self, x: &[T], w: &[T], b: &[T], n: T, eps: T, r0: usize, ch: &mut [T]) {
        let c = w.len();
        let x = &x[r0 * c..r0 * c + ch.len()];
        for (orow, xrow) in ch.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            let mut mean = T::z();
            for &v in xrow {
                mean += v;
            }
            mean /= n;
            for (o, &v) in orow.iter_mut().zip(xrow) {
                *o = v - mean;
            }
            let var = dot(orow, orow) / n;
            let rstd = T::from_f64(1.0) / (var + eps).sqrt_();
            for ((o, &wv), &bv) in orow.iter_mut().zip(w).zip(b) {
                *o = *o * rstd * wv + bv;
            }
            if self.act {
                for o in orow.iter_mut() {
                    *o = o.gelu();
                }
            }
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn bwd_rows<T: Float>(
        &self,
        x: &[T],
        w: &[T],
        b: &[T],
        g: &[T],
        n: T,
        eps: T,
        r0: usize,
        ch: &mut [T],
    ) -> (Vec<T>, Vec<T>) {
        let c = w.len();
        let x = &x[r0 * c..r0 * c + ch.len()];
        let g = &g[r0 * c..r0 * c + ch.len()];
        let mut gw = vec![T::z(); c];
        let mut gb = vec![T::z(); c];
        let mut xh = vec![T::z(); c];
        let mut gy = vec![T::z(); c];
        for ((orow, xrow), grow) in ch
            .chunks_exact_mut(c)
            .zip(x.chunks_exact(c))
            .zip(g.chunks_exact(c))
        {
            let mut mean = T::z();
            for &v in xrow {
                mean += v;
            }
            mean /= n;
            for (h, &v) in xh.iter_mut().zip(xrow) {
                *h = v - mean;
            }
            let var = dot(&xh, &xh) / n;
            let rstd = T::from_f64(1.0) / (var + eps).sqrt_();
            for h in xh.iter_mut() {
                *h *= rstd;
            }
            if self.act {
                for ((((gyv, &gv), &h), &wv), &bv) in gy.iter_mut().zip(grow).zip(&xh).zip(w).zip(b)
                {
                    *gyv = gv * (h * wv + bv).gelu_grad();
                }
            } else {
                gy.copy_from_slice(grow);
            }
            let (mut s1, mut s2) = (T::z(), T::z());
            for ((((gwv, gbv), &gyv), &h), &wv) in
                gw.iter_mut().zip(gb.iter_mut()).zip(&gy).zip(&xh).zip(w)
            {
                *gwv += gyv * h;
                *gbv += gyv;
                let t = gyv * wv;
                s1 += t;
                s2 += t * h;
            }
            let (m1, m2) = (s1 / n, s2 / n);
            for (((o, &gyv), &h), &wv) in orow.iter_mut().zip(&gy).zip(&xh).zip(w) {
                *o = rstd * (gyv * wv - m1 - h * m2);
            }
        }
        (gw, gb)
    }

    fn fwd<T: Float>(&self, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
        let c = w.len();
        let n = T::from_f64(c as f64);
        let eps = T::from_f64(self.eps);
        let mut out = vec![T::z(); x.len()];
        par_rows(&mut out, c, PAR_MIN, |r0, ch| {
            self.fwd_rows(x, w, b, n, eps, r0, ch)
        });
        out
    }

    /// (gx, gw, gb) in one pass.
    fn bwd_k<T: Float>(&self, x: &[T], w: &[T], b: &[T], g: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let c = w.len();
        let n = T::from_f64(c as f64);
        let eps = T::from_f64(self.eps);
        let mut gx = vec![T::z(); x.len()];
        let parts = par_rows(&mut gx, c, PAR_MIN, |r0, ch| {
            self.bwd_rows(x, w, b, g, n, eps, r0, ch)
        });
        let mut gw = vec![T::z(); c];
        let mut gb = vec![T::z(); c];
        for (pw, pb) in parts {
            for (a, v) in gw.iter_mut().zip(pw) {
                *a += v;
            }
            for (a, v) in gb.iter_mut().zip(pb) {
                *a += v;
            }
        }
        (gx, gw, gb)
    }
}

impl CustomOp3 for LnAct {
    fn name(&self) -> &'static str {
        "fused-layer-norm-act"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = with_float!(s1.dtype(), "fused layer norm", T => {
            T::storage(self.fwd(
                slices::<T>(s1, l1)?,
                slices::<T>(s2, l2)?,
                slices::<T>(s3, l3)?,
            ))
        });
        Ok((s, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        fn run<T: Float>(
            op: &LnAct,
            x: &Tensor,
            w: &Tensor,
            b: &Tensor,
            g: &Tensor,
        ) -> Result<(Tensor, Tensor, Tensor)> {
            read::<T, _>(x, |xs| {
                read::<T, _>(w, |ws| {
                    read::<T, _>(b, |bs| {
                        read::<T, _>(g, |gs| {
                            let (gx, gw, gb) = op.bwd_k(xs, ws, bs, gs);
                            Ok((
                                new_tensor(gx, x.shape())?,
                                new_tensor(gw, w.shape())?,
                                new_tensor(gb, b.shape())?,
                            ))
                        })
                    })
                })
            })
        }
        let (gx, gw, gb) =
            with_float!(x.dtype(), "fused layer norm", T => run::<T>(self, x, w, b, g)?);
        Ok((
            x.track_op().then_some(gx),
            w.track_op().then_some(gw),
            b.track_op().then_some(gb),
        ))
    }
}

/// Layer norm over consecutive rows of `w.len()` values of `x` (any shape whose size is a multiple
/// of it), then erf-GELU when `act`. The result has x's shape.
pub(crate) fn ln_act(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, act: bool) -> Result<Tensor> {
    let c = w.elem_count();
    if !cpu_ok(&[x, w, b])
        || w.rank() != 1
        || b.dims() != w.dims()
        || !x.elem_count().is_multiple_of(c)
    {
        let shape = x.shape().clone();
        let y = layer_norm_ops(&x.reshape(((), c))?, w, b, eps)?;
        let y = if act { y.gelu_erf()? } else { y };
        return y.reshape(shape);
    }
    x.contiguous()?.apply_op3_arc(
        &w.contiguous()?,
        &b.contiguous()?,
        Arc::new(Box::new(LnAct { eps, act })),
    )
}
