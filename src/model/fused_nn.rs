//! Fused CPU layers with hand-written backward passes, for training steps that run thousands of
//! times (the mask decoder on cached embeddings).
//!
//! candle's autograd costs, for every node of the graph, a zero-filled gradient buffer plus an add
//! on top of the op's own backward work, and its matmul backward always computes both operand
//! gradients (even for frozen weights or constant inputs). On the decoder's 4 x 4096 x 256 image
//! tokens that overhead dominated the step. Each op here is one graph node and computes only the
//! gradients that some variable needs (`track_op`):
//! - [`linear`]: `act(x W^T + b)` (act: identity or erf-GELU), any leading dims or explicit rows;
//! - [`lora_linear`]: the same plus `scale (x A^T) B^T` with W and b frozen constants (A, B train);
//! - [`attention`]: multi-head scaled-dot-product attention on token-major (B, n, C) tensors
//!   (heads split/merged inside, softmax recomputed in the backward pass);
//! - [`ln_act`]: layer norm over rows of `w.len()` values, optionally followed by GELU, with a
//!   one-pass backward (x, w and b gradients together);
//! - [`hyper_dot`]: per-image dot products of rows with a (B, c) matrix (the mask read-out).
//!
//! All work on contiguous CPU f32/f64 tensors; anything else falls back to candle's ops.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor,
    WithDType, D,
};

use super::fused::{
    exp_f32, gelu_f32, gelu_f64, gelu_grad_f32, gelu_grad_f64, simd, slices, threads,
};

/// The float operations the kernels need (f32 with the fast vectorisable GELU, f64 exact).
pub(crate) trait Fl: WithDType {
    fn gelu(self) -> Self;
    fn gelu_grad(self) -> Self;
    fn exp_(self) -> Self;
    fn sqrt_(self) -> Self;
    fn abs_(self) -> Self;
    /// The values of a storage of this type, by value.
    fn take(s: CpuStorage) -> Result<Vec<Self>>;
    fn ln_(self) -> Self;
    #[inline(always)]
    fn z() -> Self {
        Self::from_f64(0.0)
    }
}

/// `Fl` for one float type: its storage variant and its GELU, GELU' and exp kernels.
macro_rules! impl_fl {
    ($t:ty, $variant:ident, $gelu:path, $gelu_grad:path, $exp:expr) => {
        impl Fl for $t {
            fn take(s: CpuStorage) -> Result<Vec<Self>> {
                match s {
                    CpuStorage::$variant(v) => Ok(v),
                    _ => bail!(concat!("fused op: expected ", stringify!($t))),
                }
            }
            #[inline(always)]
            fn gelu(self) -> Self {
                $gelu(self)
            }
            #[inline(always)]
            fn gelu_grad(self) -> Self {
                $gelu_grad(self)
            }
            #[inline(always)]
            fn exp_(self) -> Self {
                ($exp)(self)
            }
            #[inline(always)]
            fn sqrt_(self) -> Self {
                self.sqrt()
            }
            #[inline(always)]
            fn abs_(self) -> Self {
                self.abs()
            }
            #[inline(always)]
            fn ln_(self) -> Self {
                self.ln()
            }
        }
    };
}

impl_fl!(f32, F32, gelu_f32, gelu_grad_f32, exp_f32);
impl_fl!(f64, F64, gelu_f64, gelu_grad_f64, f64::exp);

#[inline(always)]
fn dot<T: Fl>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::z(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = T::z();
    for v in acc {
        s += v;
    }
    for (&x, &y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[inline(always)]
fn axpy<T: Fl>(y: &mut [T], a: T, x: &[T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Run `f(first_row, chunk)` over chunks of whole rows of `out` on several threads (when `out` has
/// at least `min_len` elements); returns the per-chunk results in order.
fn par_rows<T: Send, R: Send>(
    out: &mut [T],
    row: usize,
    min_len: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync,
) -> Vec<R> {
    let rows = out.len() / row.max(1);
    let nt = if out.len() < min_len {
        1
    } else {
        threads().min(rows).max(1)
    };
    // `f` is called from exactly one place, so it is inlined into the AVX2 region.
    let run = |i: usize, c: &mut [T]| simd(|| f(i, c));
    if nt <= 1 {
        return vec![run(0, out)];
    }
    let per = rows.div_ceil(nt) * row;
    std::thread::scope(|s| {
        let hs: Vec<_> = out
            .chunks_mut(per)
            .enumerate()
            .map(|(i, c)| {
                let run = &run;
                s.spawn(move || run(i * per / row, c))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("fused kernel worker panicked"))
            .collect()
    })
}

const PAR_MIN: usize = 1 << 15;

fn cpu_ok(ts: &[&Tensor]) -> bool {
    let dt = ts[0].dtype();
    matches!(dt, DType::F32 | DType::F64)
        && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == dt)
}

/// Run `f` on the contiguous data of `t` (copied first only when not contiguous).
fn read<T: Fl, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    let Storage::Cpu(cs) = &*s else {
        bail!("fused op: CPU tensors only")
    };
    f(slices::<T>(cs, l)?)
}

fn new_tensor<T: Fl>(v: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Column sums of a (rows, c) matrix given as a flat slice.
fn colsum<T: Fl>(x: &[T], c: usize) -> Vec<T> {
    let rows = x.len() / c;
    let nt = if x.len() < PAR_MIN {
        1
    } else {
        threads().min(rows).max(1)
    };
    let part = |lo: usize, hi: usize| {
        simd(|| {
            let mut acc = vec![T::z(); c];
            for r in x[lo * c..hi * c].chunks_exact(c) {
                for (a, &v) in acc.iter_mut().zip(r) {
                    *a += v;
                }
            }
            acc
        })
    };
    super::dwconv::par_sum_rows(rows, nt, c, part)
}

fn colsum_t(t: &Tensor, c: usize) -> Result<Tensor> {
    match t.dtype() {
        DType::F32 => read::<f32, _>(t, |x| new_tensor(colsum(x, c), c)),
        DType::F64 => read::<f64, _>(t, |x| new_tensor(colsum(x, c), c)),
        dt => bail!("fused op: unsupported dtype {dt:?}"),
    }
}

/// x (rows x k, flat at `lx`) times w^T (w: (n, k) at `lw`) on the CPU gemm.
fn gemm_xwt(
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
    sx.matmul(sw, (1, rows, n, k), &xl, &wl)
}

#[inline(always)]
fn epilogue_rows<T: Fl>(ch: &mut [T], r0: usize, b: &[T], extra: Option<(&[T], T)>) {
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
fn gelu_inplace<T: Fl>(ch: &mut [T]) {
    for v in ch.iter_mut() {
        *v = v.gelu();
    }
}

#[inline(always)]
fn mul_gelu_grad<T: Fl>(ch: &mut [T], p: &[T]) {
    for (o, &pv) in ch.iter_mut().zip(p) {
        *o *= pv.gelu_grad();
    }
}

/// y <- act(y + b + scale * t) row by row; returns the pre-activation when `act`.
/// Bias (+ extra term), then the activation; returns the pre-activation values when `keep` (a backward pass may
/// follow), so inference skips the copy.
fn epilogue<T: Fl>(
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
fn act_grad(pre: &Mutex<Option<Tensor>>, g: &Tensor, rows: usize, n: usize) -> Result<Tensor> {
    let g = g.detach().contiguous()?.reshape((rows, n))?;
    let pre = pre
        .lock()
        .map_err(|_| candle_core::Error::Msg("fused op: poisoned".into()))?
        .clone();
    let Some(pre) = pre else {
        return Ok(g);
    };
    fn k<T: Fl>(pre: &Tensor, g: &Tensor, rows: usize, n: usize) -> Result<Tensor> {
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
    match g.dtype() {
        DType::F32 => k::<f32>(&pre, &g, rows, n),
        _ => k::<f64>(&pre, &g, rows, n),
    }
}

fn stash<T: Fl>(slot: &Mutex<Option<Tensor>>, v: Vec<T>, shape: (usize, usize)) -> Result<()> {
    let t = new_tensor(v, shape)?;
    *slot
        .lock()
        .map_err(|_| candle_core::Error::Msg("fused op: poisoned".into()))? = Some(t);
    Ok(())
}

fn bias_slice<'a, T: Fl>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    slices::<T>(s, l)
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
    fn fwd<T: Fl>(
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
        let b = bias_slice::<T>(s3, l3)?;
        if let Some(pre) = epilogue(&mut y, b, None, self.act, self.keep) {
            stash(&self.pre, pre, (rows, self.out_dim))?;
        }
        Ok(T::to_cpu_storage_owned(y))
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
        let s = match s1 {
            CpuStorage::F32(_) => self.fwd::<f32>(s1, l1, s2, l2, s3, l3)?,
            CpuStorage::F64(_) => self.fwd::<f64>(s1, l1, s2, l2, s3, l3)?,
            _ => bail!("fused linear: f32/f64 only"),
        };
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
            Some(gz.matmul(&w.detach())?.reshape(x.shape())?)
        } else {
            None
        };
        let gw = if w.track_op() {
            let x2 = x.detach().reshape((rows, self.in_dim))?;
            Some(gz.t()?.matmul(&x2)?)
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
    fn fwd<T: Fl>(
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
        let b = bias_slice::<T>(bs, bl)?;
        let extra = (T::cpu_storage_as_slice(&t)?, T::from_f64(self.scale));
        if let Some(pre) = epilogue(&mut y, b, Some(extra), self.act, true) {
            stash(&self.pre, pre, (rows, self.out_dim))?;
        }
        stash(&self.h, T::take(h)?, (rows, self.rank))?;
        Ok(T::to_cpu_storage_owned(y))
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
        let s = match s1 {
            CpuStorage::F32(_) => self.fwd::<f32>(s1, l1, s2, l2, s3, l3)?,
            CpuStorage::F64(_) => self.fwd::<f64>(s1, l1, s2, l2, s3, l3)?,
            _ => bail!("fused lora: f32/f64 only"),
        };
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
        let gzb = gz.matmul(&bm)?; // (rows, r)
        let h = self
            .h
            .lock()
            .map_err(|_| candle_core::Error::Msg("fused op: poisoned".into()))?
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("fused lora: no forward".into()))?;
        let x2 = x.detach().reshape((rows, self.in_dim))?;
        let ga = (gzb.t()?.matmul(&x2)? * self.scale)?;
        let gb = (gz.t()?.matmul(&h)? * self.scale)?;
        let gx = if x.track_op() {
            let gx = (gz.matmul(&self.w)? + (gzb.matmul(&a)? * self.scale)?)?;
            Some(gx.reshape(x.shape())?)
        } else {
            None
        };
        Ok((gx, Some(ga), Some(gb)))
    }
}

fn out_shape(x: &Tensor, in_dim: usize, out_dim: usize) -> Result<Shape> {
    let dims = x.dims();
    if dims.last() == Some(&in_dim) {
        let mut d = dims.to_vec();
        *d.last_mut().expect("rank >= 1") = out_dim;
        Ok(Shape::from(d))
    } else if x.elem_count() % in_dim == 0 {
        Ok(Shape::from((x.elem_count() / in_dim, out_dim)))
    } else {
        bail!("linear: {:?} does not split into rows of {in_dim}", dims)
    }
}

/// `act(x W^T + b)`, W: (out, in), with x's last dim = in (leading dims kept) or, otherwise, x read
/// as rows of `in` values (result (rows, out)). `act`: erf-GELU.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: bool) -> Result<Tensor> {
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
        let y = x
            .reshape((rows, in_dim))?
            .matmul(&w.t()?)?
            .broadcast_add(b)?;
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

/// [`linear`] plus a LoRA term `scale (x A^T) B^T` (A: (r, in), B: (out, r)). Fused when W and b
/// are frozen (no gradient needed for them).
pub fn lora_linear(
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
        let y = x2.matmul(&w.t()?)?.broadcast_add(bias)?;
        let low = x2.matmul(&a.t()?)?.matmul(&bm.t()?)?;
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

/// Multi-head attention core on token-major tensors: per head, S = Q K^T (gemm), softmax rows,
/// O = P V (gemm); the probabilities are kept for the backward pass.
struct AttnOp {
    heads: usize,
    scale: f64,
    probs: Mutex<Option<CpuStorage>>,
}

#[derive(Clone, Copy)]
struct AttnDims {
    nb: usize,
    nq: usize,
    nk: usize,
    c: usize,
}

/// A (B, rows, d) view of head `h` of a token-major (B, rows, C) tensor at `off`.
fn head_view(nb: usize, rows: usize, c: usize, d: usize, off: usize, h: usize) -> Layout {
    Layout::new(
        Shape::from((nb, rows, d)),
        vec![rows * c, c, 1],
        off + h * d,
    )
}

/// Its transpose, (B, d, rows).
fn head_view_t(nb: usize, rows: usize, c: usize, d: usize, off: usize, h: usize) -> Layout {
    Layout::new(
        Shape::from((nb, d, rows)),
        vec![rows * c, 1, c],
        off + h * d,
    )
}

fn off(l: &Layout) -> Result<usize> {
    l.contiguous_offsets()
        .map(|(a, _)| a)
        .ok_or_else(|| candle_core::Error::Msg("fused attention: not contiguous".into()))
}

/// Copy a contiguous (B, rows, d) block into head `h` of a (B, rows, C) buffer.
fn scatter_head<T: Fl>(dst: &mut [T], src: &[T], rows: usize, c: usize, d: usize, h: usize) {
    for (i, r) in src.chunks_exact(d).enumerate() {
        dst[i * c + h * d..i * c + h * d + d].copy_from_slice(r);
    }
    let _ = rows;
}

#[inline(always)]
fn softmax_rows<T: Fl>(x: &mut [T], n: usize, scale: T) {
    for row in x.chunks_exact_mut(n) {
        let mut mx = T::from_f64(f64::NEG_INFINITY);
        for v in row.iter_mut() {
            *v *= scale;
            if *v > mx {
                mx = *v;
            }
        }
        let mut sum = T::z();
        for v in row.iter_mut() {
            *v = (*v - mx).exp_();
            sum += *v;
        }
        let inv = T::from_f64(1.0) / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// dS = P * (dP - rowsum(P * dP)) * scale, in place in dP.
#[inline(always)]
fn softmax_grad_rows<T: Fl>(dp: &mut [T], p: &[T], n: usize, scale: T) {
    for (dr, pr) in dp.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
        let s = dot(dr, pr);
        for (dv, &pv) in dr.iter_mut().zip(pr) {
            *dv = pv * (*dv - s) * scale;
        }
    }
}

impl AttnOp {
    fn dims(&self, lq: &Layout, lk: &Layout) -> Result<AttnDims> {
        let (nb, nq, c) = lq.shape().dims3()?;
        let (_, nk, _) = lk.shape().dims3()?;
        Ok(AttnDims { nb, nq, nk, c })
    }

    #[allow(clippy::too_many_arguments)]
    fn fwd<T: Fl>(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
        dm: AttnDims,
    ) -> Result<Vec<T>> {
        let AttnDims { nb, nq, nk, c } = dm;
        let d = c / self.heads;
        let (qo, ko, vo) = (off(lq)?, off(lk)?, off(lv)?);
        let scale = T::from_f64(self.scale);
        let mut out = vec![T::z(); nb * nq * c];
        let mut probs: Vec<T> = Vec::with_capacity(self.heads * nb * nq * nk);
        for h in 0..self.heads {
            let s = sq.matmul(
                sk,
                (nb, nq, nk, d),
                &head_view(nb, nq, c, d, qo, h),
                &head_view_t(nb, nk, c, d, ko, h),
            )?;
            let mut p = T::take(s)?;
            par_rows(&mut p, nk, PAR_MIN, |_, ch| softmax_rows(ch, nk, scale));
            let ps = T::to_cpu_storage_owned(p);
            let o = ps.matmul(
                sv,
                (nb, nq, d, nk),
                &Layout::contiguous((nb, nq, nk)),
                &head_view(nb, nk, c, d, vo, h),
            )?;
            scatter_head(&mut out, T::cpu_storage_as_slice(&o)?, nb * nq, c, d, h);
            probs.extend_from_slice(T::cpu_storage_as_slice(&ps)?);
        }
        *self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("fused op: poisoned".into()))? =
            Some(T::to_cpu_storage_owned(probs));
        Ok(out)
    }

    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn bwd_k<T: Fl>(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
        dm: AttnDims,
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let AttnDims { nb, nq, nk, c } = dm;
        let d = c / self.heads;
        let (qo, ko, vo, go) = (off(lq)?, off(lk)?, off(lv)?, off(lg)?);
        let scale = T::from_f64(self.scale);
        let guard = self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("fused op: poisoned".into()))?;
        let probs = guard
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("fused attention: no forward".into()))?;
        let all_p = T::cpu_storage_as_slice(probs)?;
        let mut dq = vec![T::z(); nb * nq * c];
        let mut dk = vec![T::z(); nb * nk * c];
        let mut dv = vec![T::z(); nb * nk * c];
        let per = nb * nq * nk;
        for h in 0..self.heads {
            let p = &all_p[h * per..(h + 1) * per];
            let ph = h * per;
            // dP = dO V^T
            let dps = sg.matmul(
                sv,
                (nb, nq, nk, d),
                &head_view(nb, nq, c, d, go, h),
                &head_view_t(nb, nk, c, d, vo, h),
            )?;
            let mut ds = T::take(dps)?;
            par_rows(&mut ds, nk, PAR_MIN, |r0, ch| {
                softmax_grad_rows(ch, &p[r0 * nk..r0 * nk + ch.len()], nk, scale)
            });
            let dss = T::to_cpu_storage_owned(ds);
            let ds_l = Layout::contiguous((nb, nq, nk));
            let ds_t = Layout::new(Shape::from((nb, nk, nq)), vec![nq * nk, 1, nk], 0);
            let gq = dss.matmul(sk, (nb, nq, d, nk), &ds_l, &head_view(nb, nk, c, d, ko, h))?;
            scatter_head(&mut dq, T::cpu_storage_as_slice(&gq)?, nb * nq, c, d, h);
            let gk = dss.matmul(sq, (nb, nk, d, nq), &ds_t, &head_view(nb, nq, c, d, qo, h))?;
            scatter_head(&mut dk, T::cpu_storage_as_slice(&gk)?, nb * nk, c, d, h);
            let p_t = Layout::new(Shape::from((nb, nk, nq)), vec![nq * nk, 1, nk], ph);
            let gv = probs.matmul(sg, (nb, nk, d, nq), &p_t, &head_view(nb, nq, c, d, go, h))?;
            scatter_head(&mut dv, T::cpu_storage_as_slice(&gv)?, nb * nk, c, d, h);
        }
        Ok((dq, dk, dv))
    }
}

impl CustomOp3 for AttnOp {
    fn name(&self) -> &'static str {
        "fused-attention"
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
        let dm = self.dims(l1, l2)?;
        let s = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(self.fwd::<f32>(s1, l1, s2, l2, s3, l3, dm)?),
            CpuStorage::F64(_) => CpuStorage::F64(self.fwd::<f64>(s1, l1, s2, l2, s3, l3, dm)?),
            _ => bail!("fused attention: f32/f64 only"),
        };
        Ok((s, l1.shape().clone()))
    }
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = self.dims(q.layout(), k.layout())?;
        let g = g.contiguous()?;
        let (qs, lq) = q.storage_and_layout();
        let (ks, lk) = k.storage_and_layout();
        let (vs, lv) = v.storage_and_layout();
        let (gs, lg) = g.storage_and_layout();
        let (Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs), Storage::Cpu(gs)) =
            (&*qs, &*ks, &*vs, &*gs)
        else {
            bail!("fused attention: CPU only")
        };
        let (dq, dk, dv) = match q.dtype() {
            DType::F32 => {
                let (a, b, c) = self.bwd_k::<f32>(qs, lq, ks, lk, vs, lv, gs, lg, dm)?;
                (
                    new_tensor(a, q.shape())?,
                    new_tensor(b, k.shape())?,
                    new_tensor(c, v.shape())?,
                )
            }
            _ => {
                let (a, b, c) = self.bwd_k::<f64>(qs, lq, ks, lk, vs, lv, gs, lg, dm)?;
                (
                    new_tensor(a, q.shape())?,
                    new_tensor(b, k.shape())?,
                    new_tensor(c, v.shape())?,
                )
            }
        };
        Ok((
            q.track_op().then_some(dq),
            k.track_op().then_some(dk),
            v.track_op().then_some(dv),
        ))
    }
}

/// softmax(q_h k_h^T / sqrt(d)) v_h for every head h, on q (B, nq, C), k and v (B, nk, C); the
/// result (B, nq, C) has the heads concatenated along C (as SAM's `_recombine_heads`).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, nq, c) = q.dims3()?;
    let d = c / heads;
    let scale = 1.0 / (d as f64).sqrt();
    if !cpu_ok(&[q, k, v]) || k.dims3()?.2 != c || v.dims() != k.dims() {
        let split = |x: &Tensor| -> Result<Tensor> {
            let (b, n, c) = x.dims3()?;
            x.reshape((b, n, heads, c / heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (qh, kh, vh) = (split(q)?, split(k)?, split(v)?);
        let attn = (qh.matmul(&kh.t()?)? * scale)?;
        let attn = candle_nn::ops::softmax(&attn, D::Minus1)?;
        return attn
            .matmul(&vh)?
            .transpose(1, 2)?
            .reshape((b, nq, heads * d));
    }
    q.contiguous()?.apply_op3_arc(
        &k.contiguous()?,
        &v.contiguous()?,
        Arc::new(Box::new(AttnOp {
            heads,
            scale,
            probs: Mutex::new(None),
        })),
    )
}

/// Layer norm over rows of `c` values with an optional GELU after it.
struct LnAct {
    eps: f64,
    act: bool,
}

impl LnAct {
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn fwd_rows<T: Fl>(&self, x: &[T], w: &[T], b: &[T], n: T, eps: T, r0: usize, ch: &mut [T]) {
        let c = w.len();
        let x = &x[r0 * c..r0 * c + ch.len()];
        for (orow, xrow) in ch.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            let mut mean = T::z();
            for &v in xrow {
                mean += v;
            }
            mean = mean / n;
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
    fn bwd_rows<T: Fl>(
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
            mean = mean / n;
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

    fn fwd<T: Fl>(&self, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
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
    fn bwd_k<T: Fl>(&self, x: &[T], w: &[T], b: &[T], g: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
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
        let s = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(self.fwd(
                slices::<f32>(s1, l1)?,
                slices::<f32>(s2, l2)?,
                slices::<f32>(s3, l3)?,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(self.fwd(
                slices::<f64>(s1, l1)?,
                slices::<f64>(s2, l2)?,
                slices::<f64>(s3, l3)?,
            )),
            _ => bail!("fused layer norm: f32/f64 only"),
        };
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
        fn run<T: Fl>(
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
        let (gx, gw, gb) = match x.dtype() {
            DType::F32 => run::<f32>(self, x, w, b, g)?,
            _ => run::<f64>(self, x, w, b, g)?,
        };
        Ok((
            x.track_op().then_some(gx),
            w.track_op().then_some(gw),
            b.track_op().then_some(gb),
        ))
    }
}

/// Layer norm over consecutive rows of `w.len()` values of `x` (any shape whose size is a multiple
/// of it), then erf-GELU when `act`. The result has x's shape.
pub fn ln_act(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, act: bool) -> Result<Tensor> {
    let c = w.elem_count();
    if !cpu_ok(&[x, w, b]) || w.rank() != 1 || b.dims() != w.dims() || x.elem_count() % c != 0 {
        let shape = x.shape().clone();
        let y = super::common::layer_norm_ops(&x.reshape(((), c))?, w, b, eps)?;
        let y = if act { y.gelu_erf()? } else { y };
        return y.reshape(shape);
    }
    x.contiguous()?.apply_op3_arc(
        &w.contiguous()?,
        &b.contiguous()?,
        Arc::new(Box::new(LnAct { eps, act })),
    )
}

/// out[b, m] = x[b, m, :] . hyper[b, :].
struct HyperDot {
    nb: usize,
    c: usize,
}

impl HyperDot {
    fn fwd<T: Fl>(&self, x: &[T], hy: &[T]) -> Vec<T> {
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

    fn bwd_k<T: Fl>(&self, x: &[T], hy: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
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
        let s = match s1 {
            CpuStorage::F32(_) => {
                CpuStorage::F32(self.fwd(slices::<f32>(s1, l1)?, slices::<f32>(s2, l2)?))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(self.fwd(slices::<f64>(s1, l1)?, slices::<f64>(s2, l2)?))
            }
            _ => bail!("fused hyper-dot: f32/f64 only"),
        };
        Ok((s, Shape::from((self.nb, m))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        hy: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        fn run<T: Fl>(
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
        let (gx, gh) = match x.dtype() {
            DType::F32 => run::<f32>(self, x, hy, g)?,
            _ => run::<f64>(self, x, hy, g)?,
        };
        Ok((x.track_op().then_some(gx), hy.track_op().then_some(gh)))
    }
}

/// x read as (B, M, c) rows (any shape of that size), hyper (B, c) -> (B, M) row-by-row dots.
pub fn hyper_dot(x: &Tensor, hyper: &Tensor) -> Result<Tensor> {
    let (nb, c) = hyper.dims2()?;
    if x.elem_count() % (nb * c) != 0 {
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

/// wd * mean_b(1 - dice_b) + wb * mean(BCE-with-logits) over (B, ...) logits and targets.
struct DiceBce {
    wd: f64,
    wb: f64,
    nb: usize,
}

impl DiceBce {
    /// Per-sample (sum p y, sum p, sum y, sum bce) for sample rows of `n` values.
    fn sums<T: Fl>(&self, x: &[T], y: &[T]) -> Vec<[f64; 4]> {
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

    fn fwd<T: Fl>(&self, x: &[T], y: &[T]) -> T {
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

    fn bwd_k<T: Fl>(&self, x: &[T], y: &[T], g: f64) -> Vec<T> {
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
pub fn dice_bce(x: &Tensor, y: &Tensor, wd: f64, wb: f64) -> Result<Option<Tensor>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn var(shape: &[usize], seed: u64) -> Var {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// Forward values and the gradients of sum(y * r) agree between the fused op and candle's ops.
    fn check(vars: &[&Var], fused: &dyn Fn() -> Tensor, reference: &dyn Fn() -> Tensor) {
        let (y1, y2) = (fused(), reference());
        assert_eq!(y1.dims(), y2.dims());
        let d = (&y1 - &y2).unwrap().abs().unwrap().max_all().unwrap();
        eprintln!("forward max abs diff {:.2e}", d.to_scalar::<f64>().unwrap());
        assert!(d.to_scalar::<f64>().unwrap() < 1e-10, "forward {d}");
        let r = Tensor::randn(0f64, 1.0, y1.shape(), &Device::Cpu).unwrap();
        let g1 = (&y1 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            let a = g1.get(v.as_tensor()).expect("fused gradient");
            let b = g2.get(v.as_tensor()).expect("reference gradient");
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            eprintln!(
                "var {i}: gradient max abs diff {:.2e}",
                d.to_scalar::<f64>().unwrap()
            );
            // candle's GeluErf backward uses 0.398942 for 1/sqrt(2 pi).
            assert!(d.to_scalar::<f64>().unwrap() < 1e-5, "var {i}: {d}");
        }
    }

    fn candle_linear(x: &Tensor, w: &Tensor, b: &Tensor, act: bool) -> Tensor {
        let (o, i) = w.dims2().unwrap();
        let y = x
            .reshape(((), i))
            .unwrap()
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(b)
            .unwrap();
        let y = if act { y.gelu_erf().unwrap() } else { y };
        if x.dims().last() == Some(&i) {
            let mut d = x.dims().to_vec();
            *d.last_mut().unwrap() = o;
            y.reshape(d).unwrap()
        } else {
            y
        }
    }

    #[test]
    fn linear_matches_candle() {
        let (x, w, b) = (var(&[2, 5, 6], 1), var(&[4, 6], 2), var(&[4], 3));
        for act in [false, true] {
            check(
                &[&x, &w, &b],
                &|| linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), act).unwrap(),
                &|| candle_linear(x.as_tensor(), w.as_tensor(), b.as_tensor(), act),
            );
        }
        // x read as rows of 3 values.
        let w3 = var(&[4, 3], 4);
        check(
            &[&x, &w3, &b],
            &|| linear(x.as_tensor(), w3.as_tensor(), Some(b.as_tensor()), true).unwrap(),
            &|| candle_linear(x.as_tensor(), w3.as_tensor(), b.as_tensor(), true),
        );
    }

    #[test]
    fn lora_linear_matches_candle() {
        let (x, a, bm) = (var(&[2, 5, 6], 5), var(&[2, 6], 6), var(&[4, 2], 7));
        let (w, b) = (var(&[4, 6], 8), var(&[4], 9));
        let (w, b) = (w.as_tensor().detach(), b.as_tensor().detach());
        for act in [false, true] {
            check(
                &[&x, &a, &bm],
                &|| {
                    lora_linear(
                        x.as_tensor(),
                        &w,
                        Some(&b),
                        a.as_tensor(),
                        bm.as_tensor(),
                        1.5,
                        act,
                    )
                    .unwrap()
                },
                &|| {
                    let low = x
                        .as_tensor()
                        .matmul(
                            &a.as_tensor()
                                .t()
                                .unwrap()
                                .unsqueeze(0)
                                .unwrap()
                                .repeat((2, 1, 1))
                                .unwrap(),
                        )
                        .unwrap()
                        .matmul(
                            &bm.as_tensor()
                                .t()
                                .unwrap()
                                .unsqueeze(0)
                                .unwrap()
                                .repeat((2, 1, 1))
                                .unwrap(),
                        )
                        .unwrap();
                    let y = (candle_linear(x.as_tensor(), &w, &b, false) + (low * 1.5).unwrap())
                        .unwrap();
                    if act {
                        y.gelu_erf().unwrap()
                    } else {
                        y
                    }
                },
            );
        }
    }

    #[test]
    fn attention_matches_candle() {
        for (nq, nk) in [(3, 9), (9, 3)] {
            let (q, k, v) = (
                var(&[2, nq, 8], 10),
                var(&[2, nk, 8], 11),
                var(&[2, nk, 8], 12),
            );
            check(
                &[&q, &k, &v],
                &|| attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), 2).unwrap(),
                &|| {
                    let split = |x: &Tensor| {
                        let (b, n, _) = x.dims3().unwrap();
                        x.reshape((b, n, 2, 4))
                            .unwrap()
                            .transpose(1, 2)
                            .unwrap()
                            .contiguous()
                            .unwrap()
                    };
                    let (qh, kh, vh) = (
                        split(q.as_tensor()),
                        split(k.as_tensor()),
                        split(v.as_tensor()),
                    );
                    let s = (qh.matmul(&kh.t().unwrap()).unwrap() * 0.5).unwrap();
                    let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
                    p.matmul(&vh)
                        .unwrap()
                        .transpose(1, 2)
                        .unwrap()
                        .reshape((2, nq, 8))
                        .unwrap()
                },
            );
        }
        // The same tensor as query, key and value (self-attention).
        let x = var(&[2, 5, 8], 13);
        let y1 = attention(x.as_tensor(), x.as_tensor(), x.as_tensor(), 2).unwrap();
        let g = y1.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(x.as_tensor()).is_some());
    }

    #[test]
    fn ln_act_matches_candle() {
        let (x, w, b) = (var(&[3, 2, 8], 14), var(&[4], 15), var(&[4], 16));
        for act in [false, true] {
            check(
                &[&x, &w, &b],
                &|| ln_act(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-6, act).unwrap(),
                &|| {
                    let y = super::super::common::layer_norm_ops(
                        &x.as_tensor().reshape(((), 4)).unwrap(),
                        w.as_tensor(),
                        b.as_tensor(),
                        1e-6,
                    )
                    .unwrap();
                    let y = if act { y.gelu_erf().unwrap() } else { y };
                    y.reshape((3, 2, 8)).unwrap()
                },
            );
        }
    }

    #[test]
    fn hyper_dot_matches_candle() {
        let (x, h) = (var(&[2, 6, 4], 17), var(&[2, 4], 18));
        check(
            &[&x, &h],
            &|| hyper_dot(x.as_tensor(), h.as_tensor()).unwrap(),
            &|| {
                x.as_tensor()
                    .matmul(&h.as_tensor().unsqueeze(2).unwrap())
                    .unwrap()
                    .squeeze(2)
                    .unwrap()
            },
        );
    }
}
