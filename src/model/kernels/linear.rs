//! Fused linear layer, `act(x W^T + b)` as one graph node (act: identity or erf-GELU), and the pieces the LoRA
//! variant ([`super::lora_linear`]) shares with it: the gemm call, the bias/activation epilogue, the activation
//! gradient and the bias gradient (column sums).

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::cpu::{cpu_ok, lock, new_tensor, read, slices, stash};
use super::float::{with_float, Float};
use super::matmul::{matmul, mm};
use super::par::{par_rows, par_sum_rows, parts};
use super::PAR_MIN;

/// Column sums of a (rows, c) matrix given as a flat slice.
fn colsum<T: Float>(x: &[T], c: usize) -> Vec<T> {
    let rows = x.len() / c;
    let nt = parts(x.len(), rows, PAR_MIN);
    let part = |lo: usize, hi: usize| {
        let mut acc = vec![T::z(); c];
        for r in x[lo * c..hi * c].chunks_exact(c) {
            for (a, &v) in acc.iter_mut().zip(r) {
                *a += v;
            }
        }
        acc
    };
    par_sum_rows(rows, nt, c, part)
}

fn colsum_t(t: &Tensor, c: usize) -> Result<Tensor> {
    with_float!(t.dtype(), "fused linear", T => read::<T, _>(t, |x| new_tensor(colsum(x, c), c)))
}

/// x (rows x k, flat at `lx`) times w^T (w: (n, k) at `lw`) on the CPU gemm.
pub(super) fn gemm_xwt(
    sx: &CpuStorage,
    lx: &Layout,
    sw: &CpuStorage,
    lw: &Layout,
    rows: usize,
    k: usize,
    n: usize,
) -> Result<CpuStorage> {
    let (xo, _) = lx
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused linear: x not contiguous".into()))?;
    let (wo, _) = lw
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused linear: w not contiguous".into()))?;
    let xl = Layout::contiguous_with_offset((rows, k), xo);
    let wl = Layout::contiguous_with_offset((n, k), wo).transpose(0, 1)?;
    mm(sx, sw, (1, rows, n, k), &xl, &wl)
}

#[inline(always)]
fn epilogue_rows<T: Float>(ch: &mut [T], r0: usize, b: &[T], extra: Option<(&[T], T)>) {
    let n = b.len();
    match extra {
        Some((t, s)) => {
            let t = &t[r0 * n..r0 * n + ch.len()];
            for (yr, tr) in ch.chunks_exact_mut(n).zip(t.chunks_exact(n)) {
                for ((y, &bv), &tv) in yr.iter_mut().zip(b).zip(tr) {
                    *y += bv + s * tv;
                }
            }
        }
        None => {
            for yr in ch.chunks_exact_mut(n) {
                for (y, &bv) in yr.iter_mut().zip(b) {
                    *y += bv;
                }
            }
        }
    }
}

#[inline(always)]
fn gelu_inplace<T: Float>(ch: &mut [T]) {
    for v in ch.iter_mut() {
        *v = v.gelu();
    }
}

#[inline(always)]
fn mul_gelu_grad<T: Float>(ch: &mut [T], p: &[T]) {
    for (o, &pv) in ch.iter_mut().zip(p) {
        *o *= pv.gelu_grad();
    }
}

/// y <- act(y + b + scale * t) row by row: bias (+ extra term), then the activation; returns the pre-activation values when `keep` (a backward pass may
/// follow), so inference skips the copy.
pub(super) fn epilogue<T: Float>(
    y: &mut [T],
    b: &[T],
    extra: Option<(&[T], T)>,
    act: bool,
    keep: bool,
) -> Option<Vec<T>> {
    let n = b.len();
    par_rows(y, n, PAR_MIN, |r0, ch| epilogue_rows(ch, r0, b, extra));
    if !act {
        return None;
    }
    if !keep {
        par_rows(y, n, PAR_MIN, |_, ch| gelu_inplace(ch));
        return None;
    }
    let pre = y.to_vec();
    par_rows(y, n, PAR_MIN, |_, ch| gelu_inplace(ch));
    Some(pre)
}

/// g * gelu'(pre), or g itself (as a detached contiguous (rows, n) tensor).
pub(super) fn act_grad(
    pre: &Mutex<Option<Tensor>>,
    g: &Tensor,
    rows: usize,
    n: usize,
) -> Result<Tensor> {
    let g = g.detach().contiguous()?.reshape((rows, n))?;
    let pre = lock(pre)?.clone();
    let Some(pre) = pre else {
        return Ok(g);
    };
    fn k<T: Float>(pre: &Tensor, g: &Tensor, rows: usize, n: usize) -> Result<Tensor> {
        read::<T, _>(pre, |p| {
            read::<T, _>(g, |gv| {
                let mut out = gv.to_vec();
                par_rows(&mut out, n, PAR_MIN, |r0, ch| {
                    mul_gelu_grad(ch, &p[r0 * n..r0 * n + ch.len()])
                });
                new_tensor(out, (rows, n))
            })
        })
    }
    with_float!(g.dtype(), "fused linear", T => k::<T>(&pre, &g, rows, n))
}

/// `act(x W^T + b)` as one node.
struct LinearOp {
    in_dim: usize,
    out_dim: usize,
    out_shape: Shape,
    act: bool,
    /// Some input needs a gradient: keep the pre-activation for the backward pass.
    keep: bool,
    pre: Mutex<Option<Tensor>>,
}

impl LinearOp {
    fn fwd<T: Float>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<CpuStorage> {
        let rows = l1.shape().elem_count() / self.in_dim;
        let mut y = T::take(gemm_xwt(s1, l1, s2, l2, rows, self.in_dim, self.out_dim)?)?;
        let b = slices::<T>(s3, l3)?;
        if let Some(pre) = epilogue(&mut y, b, None, self.act, self.keep) {
            stash(&self.pre, pre, (rows, self.out_dim))?;
        }
        Ok(T::storage(y))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
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
        let s =
            with_float!(s1.dtype(), "fused linear", T => self.fwd::<T>(s1, l1, s2, l2, s3, l3)?);
        Ok((s, self.out_shape.clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let rows = x.elem_count() / self.in_dim;
        let gz = act_grad(&self.pre, g, rows, self.out_dim)?;
        let gx = if x.track_op() {
            Some(matmul(&gz, &w.detach())?.reshape(x.shape())?)
        } else {
            None
        };
        let gw = if w.track_op() {
            let x2 = x.detach().reshape((rows, self.in_dim))?;
            Some(matmul(&gz.t()?, &x2)?)
        } else {
            None
        };
        let gb = if b.track_op() {
            Some(colsum_t(&gz, self.out_dim)?)
        } else {
            None
        };
        Ok((gx, gw, gb))
    }
}

pub(super) fn out_shape(x: &Tensor, in_dim: usize, out_dim: usize) -> Result<Shape> {
    let dims = x.dims();
    if dims.last() == Some(&in_dim) {
        let mut d = dims.to_vec();
        *d.last_mut().expect("rank >= 1") = out_dim;
        Ok(Shape::from(d))
    } else if x.elem_count().is_multiple_of(in_dim) {
        Ok(Shape::from((x.elem_count() / in_dim, out_dim)))
    } else {
        bail!("linear: {:?} does not split into rows of {in_dim}", dims)
    }
}

/// `act(x W^T + b)`, W: (out, in), with x's last dim = in (leading dims kept) or, otherwise, x read
/// as rows of `in` values (result (rows, out)). `act`: erf-GELU.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: bool) -> Result<Tensor> {
    let (out_dim, in_dim) = w.dims2()?;
    let shape = out_shape(x, in_dim, out_dim)?;
    let zero;
    let b = match b {
        Some(b) => b,
        None => {
            zero = Tensor::zeros(out_dim, w.dtype(), w.device())?;
            &zero
        }
    };
    if !cpu_ok(&[x, w, b]) || b.rank() != 1 {
        let rows = x.elem_count() / in_dim;
        let y = matmul(&x.reshape((rows, in_dim))?, &w.t()?)?.broadcast_add(b)?;
        let y = if act { y.gelu_erf()? } else { y };
        return y.reshape(shape);
    }
    let op = LinearOp {
        in_dim,
        out_dim,
        out_shape: shape,
        act,
        keep: x.track_op() || w.track_op() || b.track_op(),
        pre: Mutex::new(None),
    };
    x.contiguous()?
        .apply_op3_arc(&w.contiguous()?, &b.contiguous()?, Arc::new(Box::new(op)))
}
