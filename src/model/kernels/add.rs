//! Element-wise sum of two same-shape tensors whose backward pass hands the gradient only to the inputs that
//! track one. candle's own `add` accumulates a gradient for both sides, so adding a constant (the decoder's
//! positional encoding to its image tokens, or a residual to frozen image tokens) cost a zero-filled buffer and
//! an add of image size per use in every training step.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::cpu::{cpu_ok, slices};
use super::float::{with_float, Float};
use super::par::par_rows;
use super::PAR_MIN;

struct Add;

impl Add {
    fn fwd<T: Float>(a: &[T], b: &[T]) -> Vec<T> {
        let mut out = vec![T::z(); a.len()];
        par_rows(&mut out, 1, PAR_MIN, |r0, ch| {
            for ((o, &x), &y) in ch.iter_mut().zip(&a[r0..]).zip(&b[r0..]) {
                *o = x + y;
            }
        });
        out
    }
}

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "fused-add"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = with_float!(s1.dtype(), "fused add", T => {
            T::storage(Self::fwd(slices::<T>(s1, l1)?, slices::<T>(s2, l2)?))
        });
        Ok((s, l1.shape().clone()))
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((
            a.track_op().then(|| g.clone()),
            b.track_op().then(|| g.clone()),
        ))
    }
}

/// `a + b` for tensors of one shape; the gradient goes only to the sides that track one.
pub(crate) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !cpu_ok(&[a, b]) || a.dims() != b.dims() {
        return a.broadcast_add(b);
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, Add)
}
