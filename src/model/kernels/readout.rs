//! The mask read-out of the decoder as one node: per-image dot products of rows with a (B, c) matrix.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::cpu::{cpu_ok, new_tensor, read, slices};
use super::float::{axpy, dot, with_float, Float};
use super::par::par_rows;
use super::PAR_MIN;

/// out[b, m] = x[b, m, :] . hyper[b, :].
struct HyperDot {
    nb: usize,
    c: usize,
}

impl HyperDot {
    fn fwd<T: Float>(&self, x: &[T], hy: &[T]) -> Vec<T> {
        let m = x.len() / (self.nb * self.c);
        let c = self.c;
        let mut out = vec![T::z(); self.nb * m];
        par_rows(&mut out, 1, PAR_MIN, |r0, ch| {
            for (i, o) in ch.iter_mut().enumerate() {
                let r = r0 + i;
                let b = r / m;
                *o = dot(&x[r * c..(r + 1) * c], &hy[b * c..(b + 1) * c]);
            }
        });
        out
    }

    fn bwd_k<T: Float>(&self, x: &[T], hy: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
        let m = x.len() / (self.nb * self.c);
        let c = self.c;
        let mut gx = vec![T::z(); x.len()];
        let parts = par_rows(&mut gx, c, PAR_MIN, |r0, ch| {
            let mut gh = vec![T::z(); self.nb * c];
            for (i, row) in ch.chunks_exact_mut(c).enumerate() {
                let r = r0 + i;
                let b = r / m;
                let gv = g[r];
                for (o, &h) in row.iter_mut().zip(&hy[b * c..(b + 1) * c]) {
                    *o = gv * h;
                }
                axpy(&mut gh[b * c..(b + 1) * c], gv, &x[r * c..(r + 1) * c]);
            }
            gh
        });
        let mut gh = vec![T::z(); self.nb * c];
        for p in parts {
            for (a, v) in gh.iter_mut().zip(p) {
                *a += v;
            }
        }
        (gx, gh)
    }
}

impl CustomOp2 for HyperDot {
    fn name(&self) -> &'static str {
        "fused-hyper-dot"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let m = l1.shape().elem_count() / (self.nb * self.c);
        let s = with_float!(s1.dtype(), "fused hyper-dot", T => {
            T::storage(self.fwd(slices::<T>(s1, l1)?, slices::<T>(s2, l2)?))
        });
        Ok((s, Shape::from((self.nb, m))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        hy: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        fn run<T: Float>(
            op: &HyperDot,
            x: &Tensor,
            hy: &Tensor,
            g: &Tensor,
        ) -> Result<(Tensor, Tensor)> {
            read::<T, _>(x, |xs| {
                read::<T, _>(hy, |hs| {
                    read::<T, _>(g, |gs| {
                        let (gx, gh) = op.bwd_k(xs, hs, gs);
                        Ok((new_tensor(gx, x.shape())?, new_tensor(gh, hy.shape())?))
                    })
                })
            })
        }
        let (gx, gh) = with_float!(x.dtype(), "fused hyper-dot", T => run::<T>(self, x, hy, g)?);
        Ok((x.track_op().then_some(gx), hy.track_op().then_some(gh)))
    }
}

/// x read as (B, M, c) rows (any shape of that size), hyper (B, c) -> (B, M) row-by-row dots.
pub(crate) fn hyper_dot(x: &Tensor, hyper: &Tensor) -> Result<Tensor> {
    let (nb, c) = hyper.dims2()?;
    if !x.elem_count().is_multiple_of(nb * c) {
        bail!("hyper_dot: {:?} vs hyper {:?}", x.dims(), hyper.dims())
    }
    let m = x.elem_count() / (nb * c);
    if !cpu_ok(&[x, hyper]) {
        return x
            .reshape((nb, m, c))?
            .matmul(&hyper.unsqueeze(2)?)?
            .reshape((nb, m));
    }
    x.contiguous()?
        .apply_op2_arc(&hyper.contiguous()?, Arc::new(Box::new(HyperDot { nb, c })))
}
