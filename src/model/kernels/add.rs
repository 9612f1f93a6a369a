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

/// `b` is added to each of `a`'s `b.len()`-element blocks (once when the shapes agree, once per batch entry when
/// `b` has a leading 1).
struct Add;

impl Add {
    /// `row`: the last dimension (the blocks are whole rows of it).
    fn fwd<T: Float>(a: &[T], b: &[T], row: usize) -> Vec<T> {
        let brows = b.len() / row;
        let mut out = vec![T::z(); a.len()];
        par_rows(&mut out, row, PAR_MIN, |r0, ch| {
            for ((o, x), r) in ch
                .chunks_exact_mut(row)
                .zip(a[r0 * row..].chunks_exact(row))
                .zip(r0..)
            {
                let y = &b[(r % brows) * row..(r % brows + 1) * row];
                for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                    *o = x + y;
                }
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
            let row = l1.dims().last().copied().unwrap_or(1).max(1);
            T::storage(Self::fwd(slices::<T>(s1, l1)?, slices::<T>(s2, l2)?, row))
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
        let gb = if b.track_op() {
            Some(if b.dims() == a.dims() {
                g.clone()
            } else {
                g.sum_keepdim(0)?
            })
        } else {
            None
        };
        Ok((a.track_op().then(|| g.clone()), gb))
    }
}

/// `a + b` for tensors of one shape, or `b` of `a`'s shape with a leading 1 (one for the whole batch); the
/// gradient goes only to the sides that track one.
pub(crate) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let batch =
        a.rank() > 1 && b.rank() == a.rank() && b.dim(0)? == 1 && a.dims()[1..] == b.dims()[1..];
    if !cpu_ok(&[a, b]) || !(a.dims() == b.dims() || batch) {
        return a.broadcast_add(b);
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, Add)
}
