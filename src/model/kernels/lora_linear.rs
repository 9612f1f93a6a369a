//! Fused LoRA linear layer: `act(x W^T + b + scale (x A^T) B^T)` as one graph node, with W and b frozen
//! constants and only A, B (and x when it needs one) receiving gradients.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use super::cpu::{cpu_ok, lock, slices, stash};
use super::float::{with_float, Float};
use super::linear::{act_grad, epilogue, gemm_xwt, out_shape};
use super::matmul::matmul;

/// `act(x W^T + b + scale (x A^T) B^T)` with W, b frozen: the node's inputs are x, A and B.
struct LoraOp {
    w: Tensor,
    b: Tensor,
    scale: f64,
    in_dim: usize,
    out_dim: usize,
    rank: usize,
    out_shape: Shape,
    act: bool,
    pre: Mutex<Option<Tensor>>,
    h: Mutex<Option<Tensor>>,
}

impl LoraOp {
    fn fwd<T: Float>(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<CpuStorage> {
        let rows = lx.shape().elem_count() / self.in_dim;
        let (ws, wl) = self.w.storage_and_layout();
        let Storage::Cpu(ws) = &*ws else {
            bail!("fused lora: CPU only")
        };
        let y = gemm_xwt(sx, lx, ws, wl, rows, self.in_dim, self.out_dim)?;
        let h = gemm_xwt(sx, lx, sa, la, rows, self.in_dim, self.rank)?;
        let hl = Layout::contiguous((rows, self.rank));
        let t = gemm_xwt(&h, &hl, sb, lb, rows, self.rank, self.out_dim)?;
        let mut y = T::take(y)?;
        let (bs, bl) = self.b.storage_and_layout();
        let Storage::Cpu(bs) = &*bs else {
            bail!("fused lora: CPU only")
        };
        let b = slices::<T>(bs, bl)?;
        let extra = (T::cpu_storage_as_slice(&t)?, T::from_f64(self.scale));
        if let Some(pre) = epilogue(&mut y, b, Some(extra), self.act, true) {
            stash(&self.pre, pre, (rows, self.out_dim))?;
        }
        stash(&self.h, T::take(h)?, (rows, self.rank))?;
        Ok(T::storage(y))
    }
}

impl CustomOp3 for LoraOp {
    fn name(&self) -> &'static str {
        "fused-lora-linear"
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
        let s = with_float!(s1.dtype(), "fused lora", T => self.fwd::<T>(s1, l1, s2, l2, s3, l3)?);
        Ok((s, self.out_shape.clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        bm: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let rows = x.elem_count() / self.in_dim;
        let gz = act_grad(&self.pre, g, rows, self.out_dim)?;
        let (a, bm) = (a.detach(), bm.detach());
        let gzb = matmul(&gz, &bm)?; // (rows, r)
        let h = lock(&self.h)?
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("fused lora: no forward".into()))?;
        let x2 = x.detach().reshape((rows, self.in_dim))?;
        let ga = (matmul(&gzb.t()?, &x2)? * self.scale)?;
        let gb = (matmul(&gz.t()?, &h)? * self.scale)?;
        let gx = if x.track_op() {
            let gx = (matmul(&gz, &self.w)? + (matmul(&gzb, &a)? * self.scale)?)?;
            Some(gx.reshape(x.shape())?)
        } else {
            None
        };
        Ok((gx, Some(ga), Some(gb)))
    }
}

/// [`linear`] plus a LoRA term `scale (x A^T) B^T` (A: (r, in), B: (out, r)). Fused when W and b
/// are frozen (no gradient needed for them).
pub(crate) fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    bm: &Tensor,
    scale: f64,
    act: bool,
) -> Result<Tensor> {
    let (out_dim, in_dim) = w.dims2()?;
    let rank = a.dim(0)?;
    let shape = out_shape(x, in_dim, out_dim)?;
    let frozen = !w.track_op() && !b.is_some_and(|b| b.track_op());
    let zero;
    let bias = match b {
        Some(b) => b,
        None => {
            zero = Tensor::zeros(out_dim, w.dtype(), w.device())?;
            &zero
        }
    };
    if !frozen || !cpu_ok(&[x, w, bias, a, bm]) || bias.rank() != 1 {
        let rows = x.elem_count() / in_dim;
        let x2 = x.reshape((rows, in_dim))?;
        let y = matmul(&x2, &w.t()?)?.broadcast_add(bias)?;
        let low = matmul(&matmul(&x2, &a.t()?)?, &bm.t()?)?;
        let y = (y + (low * scale)?)?;
        let y = if act { y.gelu_erf()? } else { y };
        return y.reshape(shape);
    }
    let op = LoraOp {
        w: w.contiguous()?,
        b: bias.contiguous()?,
        scale,
        in_dim,
        out_dim,
        rank,
        out_shape: shape,
        act,
        pre: Mutex::new(None),
        h: Mutex::new(None),
    };
    x.contiguous()?
        .apply_op3_arc(&a.contiguous()?, &bm.contiguous()?, Arc::new(Box::new(op)))
}
