//! `bias_gelu(x, b) = gelu_erf(x + b)` (b broadcast over the last dimension) as one node with an analytic
//! backward pass; [`gelu`] is the same with no bias. Other devices and dtypes fall back to candle's ops.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};

use super::cpu::{cpu_ok, slices};
use super::float::{with_float, Float};
use super::par::par_rows;
use super::PAR_MIN;

/// y = gelu(x + b) with b of length = last dim of x.
struct BiasGelu;

fn bias_gelu_k<T: Float>(x: &[T], b: &[T]) -> Vec<T> {
    let c = b.len();
    let mut out = vec![T::z(); x.len()];
    par_rows(&mut out, c, PAR_MIN, |r0, o| {
        for (orow, xrow) in o.chunks_mut(c).zip(x[r0 * c..].chunks(c)) {
            for ((o, &xv), &bv) in orow.iter_mut().zip(xrow).zip(b) {
                *o = (xv + bv).gelu();
            }
        }
    });
    out
}

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = with_float!(s1.dtype(), "bias-gelu", T => {
            T::storage(bias_gelu_k(slices::<T>(s1, l1)?, slices::<T>(s2, l2)?))
        });
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gx = x.apply_op3_no_bwd(b, &g.contiguous()?, &GeluGradBias)?;
        let c = b.elem_count();
        let gb = gx.reshape(((), c))?.sum(0)?.reshape(b.shape())?;
        Ok((Some(gx), Some(gb)))
    }
}

/// g * gelu'(x + b), b broadcast over the last dimension.
struct GeluGradBias;

fn gelu_grad_bias_k<T: Float>(x: &[T], b: &[T], g: &[T]) -> Vec<T> {
    let c = b.len();
    let mut out = vec![T::z(); x.len()];
    par_rows(&mut out, c, PAR_MIN, |r0, o| {
        for ((orow, xrow), grow) in o
            .chunks_mut(c)
            .zip(x[r0 * c..].chunks(c))
            .zip(g[r0 * c..].chunks(c))
        {
            for (((o, &xv), &gv), &bv) in orow.iter_mut().zip(xrow).zip(grow).zip(b) {
                *o = gv * (xv + bv).gelu_grad();
            }
        }
    });
    out
}

impl CustomOp3 for GeluGradBias {
    fn name(&self) -> &'static str {
        "gelu-grad-bias"
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
        let out = with_float!(s1.dtype(), "gelu-grad", T => {
            T::storage(gelu_grad_bias_k(
                slices::<T>(s1, l1)?,
                slices::<T>(s2, l2)?,
                slices::<T>(s3, l3)?,
            ))
        });
        Ok((out, l1.shape().clone()))
    }
}

/// gelu_erf(x + b), b broadcast over the last dimension.
pub(crate) fn bias_gelu(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    if cpu_ok(&[x, b]) && b.rank() == 1 && x.dim(D::Minus1)? == b.dim(0)? {
        x.contiguous()?
            .apply_op2_arc(&b.contiguous()?, Arc::new(Box::new(BiasGelu)))
    } else {
        x.broadcast_add(b)?.gelu_erf()
    }
}

/// gelu_erf(x).
pub(crate) fn gelu(x: &Tensor) -> Result<Tensor> {
    let c = x.dim(D::Minus1)?;
    let zero = Tensor::zeros(c, x.dtype(), x.device())?;
    bias_gelu(x, &zero)
}
