//! Depthwise 3x3 convolution (padding 1, stride 1 or 2) on channels-last tensors, as candle custom ops
//! with an analytic backward pass. candle's grouped conv2d is a per-group loop (slow forward, very slow
//! backward); this kernel walks each output pixel once and vectorises over channels.
//!
//! Layouts: input `(B, H, W, C)`, weight `(9, C)` (tap-major: `w[ky*3+kx][c]`), output `(B, Ho, Wo, C)`
//! with `Ho = (H - 1) / stride + 1`. On devices other than the CPU a slower path made of shifted
//! multiply-adds is used (same numbers, differentiable through candle's own ops).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType, D};

use super::cpu::{cpu_ok, slices};
use super::float::{with_float, Float};
use super::par::{par_rows, par_sum_rows, parts};

/// Below this many output elements a kernel runs on the calling thread.
const PAR_MIN: usize = 1 << 14;

fn out_dim(n: usize, stride: usize) -> usize {
    (n - 1) / stride + 1
}

/// The (up to) three input rows that output row `oy` reads (`None` above and below the map), `row(iy)` giving
/// input row `iy`.
#[inline(always)]
pub(crate) fn input_rows<'a, T>(
    oy: usize,
    stride: usize,
    h: usize,
    row: impl Fn(usize) -> &'a [T],
) -> [Option<&'a [T]>; 3] {
    std::array::from_fn(|ky| {
        let iy = (oy * stride + ky) as isize - 1;
        (iy >= 0 && iy < h as isize).then(|| row(iy as usize))
    })
}

/// One output row: `orow[ox] += sum over taps of rows[ky][ox * stride + kx - 1] * w[ky * 3 + kx]`, per channel
/// (`c` of them, `w` tap-major `(9, c)`), taps outside the map skipped, in the order ky, then kx.
#[inline(always)]
pub(crate) fn row_kernel<T: WithDType>(
    orow: &mut [T],
    rows: &[Option<&[T]>; 3],
    w: &[T],
    c: usize,
    stride: usize,
) {
    let wo = orow.len() / c;
    for ox in 0..wo {
        let o = &mut orow[ox * c..(ox + 1) * c];
        for (ky, xrow) in rows.iter().enumerate() {
            let Some(xrow) = xrow else { continue };
            let wd = xrow.len() / c;
            for kx in 0..3 {
                let ix = (ox * stride + kx) as isize - 1;
                if ix < 0 || ix >= wd as isize {
                    continue;
                }
                let xi = &xrow[ix as usize * c..(ix as usize + 1) * c];
                let wk = &w[(ky * 3 + kx) * c..(ky * 3 + kx + 1) * c];
                for ((o, &xv), &wv) in o.iter_mut().zip(xi).zip(wk) {
                    *o += xv * wv;
                }
            }
        }
    }
}

fn fwd_kernel<T: WithDType>(
    x: &[T],
    w: &[T],
    b: usize,
    h: usize,
    wd: usize,
    c: usize,
    stride: usize,
) -> Vec<T> {
    let (ho, wo) = (out_dim(h, stride), out_dim(wd, stride));
    let mut out = vec![T::zero(); b * ho * wo * c];
    par_rows(&mut out, wo * c, PAR_MIN, |row0, chunk| {
        for (r, orow) in chunk.chunks_mut(wo * c).enumerate() {
            let row = row0 + r;
            let (bi, oy) = (row / ho, row % ho);
            let rows = input_rows(oy, stride, h, |iy| &x[(bi * h + iy) * wd * c..][..wd * c]);
            row_kernel(orow, &rows, w, c, stride);
        }
    });
    out
}

/// grad_x[b, iy, ix, c] = sum over taps of grad_y[b, oy, ox, c] * w[tap, c] with iy = oy*s + ky - 1.
#[allow(clippy::too_many_arguments)]
fn bwd_input_kernel<T: WithDType>(
    g: &[T],
    w: &[T],
    b: usize,
    h: usize,
    wd: usize,
    c: usize,
    stride: usize,
) -> Vec<T> {
    let (ho, wo) = (out_dim(h, stride), out_dim(wd, stride));
    let mut out = vec![T::zero(); b * h * wd * c];
    par_rows(&mut out, wd * c, PAR_MIN, |row0, chunk| {
        for (r, irow) in chunk.chunks_mut(wd * c).enumerate() {
            let row = row0 + r;
            let (bi, iy) = (row / h, row % h);
            for ky in 0..3 {
                let t = iy as isize + 1 - ky as isize;
                if t < 0 || t % stride as isize != 0 {
                    continue;
                }
                let oy = (t / stride as isize) as usize;
                if oy >= ho {
                    continue;
                }
                let grow = &g[(bi * ho + oy) * wo * c..][..wo * c];
                for ix in 0..wd {
                    let o = &mut irow[ix * c..(ix + 1) * c];
                    for kx in 0..3 {
                        let t = ix as isize + 1 - kx as isize;
                        if t < 0 || t % stride as isize != 0 {
                            continue;
                        }
                        let ox = (t / stride as isize) as usize;
                        if ox >= wo {
                            continue;
                        }
                        let gi = &grow[ox * c..(ox + 1) * c];
                        let wk = &w[(ky * 3 + kx) * c..(ky * 3 + kx + 1) * c];
                        for ((o, &gv), &wv) in o.iter_mut().zip(gi).zip(wk) {
                            *o += gv * wv;
                        }
                    }
                }
            }
        }
    });
    out
}

/// grad_w[tap, c] = sum over outputs of grad_y[b, oy, ox, c] * x[b, iy, ix, c].
fn bwd_weight_kernel<T: WithDType>(
    x: &[T],
    g: &[T],
    b: usize,
    h: usize,
    wd: usize,
    c: usize,
    stride: usize,
) -> Vec<T> {
    let (ho, wo) = (out_dim(h, stride), out_dim(wd, stride));
    let rows = b * ho;
    let nt = parts(rows, rows, 0);
    let work = |r0: usize, r1: usize| {
        let mut acc = vec![T::zero(); 9 * c];
        for row in r0..r1 {
            let (bi, oy) = (row / ho, row % ho);
            let grow = &g[row * wo * c..][..wo * c];
            for ky in 0..3 {
                let iy = (oy * stride + ky) as isize - 1;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let xrow = &x[(bi * h + iy as usize) * wd * c..][..wd * c];
                for ox in 0..wo {
                    let gi = &grow[ox * c..(ox + 1) * c];
                    for kx in 0..3 {
                        let ix = (ox * stride + kx) as isize - 1;
                        if ix < 0 || ix >= wd as isize {
                            continue;
                        }
                        let xi = &xrow[ix as usize * c..(ix as usize + 1) * c];
                        let a = &mut acc[(ky * 3 + kx) * c..(ky * 3 + kx + 1) * c];
                        for ((a, &gv), &xv) in a.iter_mut().zip(gi).zip(xi) {
                            *a += gv * xv;
                        }
                    }
                }
            }
        }
        acc
    };
    par_sum_rows(rows, nt, 9 * c, work)
}

/// One kernel `$f(lhs, rhs, args..)` on two storages of one float dtype.
macro_rules! dispatch {
    ($s1:expr, $l1:expr, $s2:expr, $l2:expr, $f:ident, $($args:expr),*) => {{
        with_float!($s1.dtype(), "dwconv3x3", T => {
            let a = slices::<T>($s1, $l1)?;
            let b = slices::<T>($s2, $l2)?;
            T::storage($f(a, b, $($args),*))
        })
    }};
}

struct DwFwd {
    stride: usize,
}

impl CustomOp2 for DwFwd {
    fn name(&self) -> &'static str {
        "dwconv3x3"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, h, w, c) = l1.shape().dims4()?;
        if l2.shape().dims() != [9, c] {
            candle_core::bail!(
                "dwconv3x3: weight shape {:?}, expected (9, {c})",
                l2.shape()
            );
        }
        let s = self.stride;
        let out = dispatch!(s1, l1, s2, l2, fwd_kernel, b, h, w, c, s);
        Ok((out, Shape::from((b, out_dim(h, s), out_dim(w, s), c))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, h, wd, _) = x.dims4()?;
        let g = g.contiguous()?;
        let gx = g.apply_op2_no_bwd(
            w,
            &DwBwdInput {
                stride: self.stride,
                h,
                w: wd,
            },
        )?;
        let gw = x.apply_op2_no_bwd(
            &g,
            &DwBwdWeight {
                stride: self.stride,
            },
        )?;
        Ok((Some(gx), Some(gw)))
    }
}

struct DwBwdInput {
    stride: usize,
    h: usize,
    w: usize,
}

impl CustomOp2 for DwBwdInput {
    fn name(&self) -> &'static str {
        "dwconv3x3-bwd-input"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, _, _, c) = l1.shape().dims4()?;
        let (h, w, s) = (self.h, self.w, self.stride);
        let out = dispatch!(s1, l1, s2, l2, bwd_input_kernel, b, h, w, c, s);
        Ok((out, Shape::from((b, h, w, c))))
    }
}

struct DwBwdWeight {
    stride: usize,
}

impl CustomOp2 for DwBwdWeight {
    fn name(&self) -> &'static str {
        "dwconv3x3-bwd-weight"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, h, w, c) = l1.shape().dims4()?;
        let s = self.stride;
        let out = dispatch!(s1, l1, s2, l2, bwd_weight_kernel, b, h, w, c, s);
        Ok((out, Shape::from((9, c))))
    }
}

/// Depthwise 3x3 convolution, padding 1, on `(B, H, W, C)` with weight `(9, C)`; no bias.
pub(crate) fn dwconv3x3(x: &Tensor, w: &Tensor, stride: usize) -> candle_core::Result<Tensor> {
    if cpu_ok(&[x, w]) {
        let x = x.contiguous()?;
        let w = w.contiguous()?;
        x.apply_op2_arc(&w, std::sync::Arc::new(Box::new(DwFwd { stride })))
    } else {
        dwconv3x3_shifted(x, w, stride)
    }
}

/// Reference implementation from candle's differentiable ops (nine shifted multiply-adds).
pub(crate) fn dwconv3x3_shifted(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let (_, h, wd, c) = x.dims4()?;
    let xp = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    let mut acc: Option<Tensor> = None;
    for ky in 0..3 {
        for kx in 0..3 {
            let wk = w.narrow(0, ky * 3 + kx, 1)?.reshape((1, 1, 1, c))?;
            let term = xp.narrow(1, ky, h)?.narrow(2, kx, wd)?.broadcast_mul(&wk)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
    }
    let y = acc.expect("nine taps");
    if stride == 1 {
        return Ok(y);
    }
    // Keep every stride-th row and column.
    let (b, ho, wo) = (y.dim(0)?, out_dim(h, stride), out_dim(wd, stride));
    let y = y
        .pad_with_zeros(1, 0, ho * stride - h)?
        .pad_with_zeros(2, 0, wo * stride - wd)?;
    y.reshape((b, ho, stride, wo * stride, c))?
        .narrow(2, 0, 1)?
        .reshape((b, ho, wo, stride, c))?
        .narrow(3, 0, 1)?
        .squeeze(D::Minus2)
}
