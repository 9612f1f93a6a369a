//! Fused element-wise kernels with analytic backward passes, multi-threaded on the CPU:
//! `bias_gelu(x, b) = gelu_erf(x + b)` (b broadcast over the last dimension).
//!
//! f32 uses a branch-free erf (Abramowitz-Stegun 7.1.26, |error| < 1.5e-7) built on a polynomial
//! exp, which the compiler vectorises; f64 uses libm's exact erf (so finite-difference tests see a
//! consistent function). Other devices/dtypes fall back to candle's ops.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;

pub(crate) fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// Run `f(offset, chunk)` over chunks of `out` (multiples of `row`) on several threads.
pub(crate) fn par_chunks<T: Send>(out: &mut [T], row: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let nt = threads();
    if nt <= 1 || out.len() < 1 << 15 {
        f(0, out);
        return;
    }
    let rows = out.len() / row;
    let per = rows.div_ceil(nt) * row;
    std::thread::scope(|s| {
        for (i, c) in out.chunks_mut(per).enumerate() {
            let f = &f;
            s.spawn(move || f(i * per, c));
        }
    });
}

#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    // exp(x) = 2^n * exp(r), |r| <= ln2/2; degree-6 Taylor/minimax polynomial.
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest with the 1.5 * 2^23 trick (vectorises, unlike `f32::round`).
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    let bits = ((n as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// Sum of a slice with eight independent accumulators (vectorises).
#[inline(always)]
pub(crate) fn sum8(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ch = a.chunks_exact(8);
    let rest = ch.remainder();
    for x in ch {
        for l in 0..8 {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Dot product with eight independent accumulators (vectorises).
#[inline(always)]
pub(crate) fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let s = x.signum();
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_8) * t - 0.284_496_72) * t
            + 0.254_829_6)
            * t
            * exp_f32(-a * a);
    s * y
}

#[inline(always)]
pub(crate) fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * FRAC_1_SQRT_2))
}

#[inline(always)]
pub(crate) fn gelu_grad_f32(x: f32) -> f32 {
    0.5 * (1.0 + erf_f32(x * FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * exp_f32(-0.5 * x * x)
}

pub(crate) fn gelu_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))
}

pub(crate) fn gelu_grad_f64(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))
        + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

pub(crate) fn slices<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("fused op: input must be contiguous"),
    }
}

/// y = gelu(x + b) with b of length = last dim of x.
struct BiasGelu;

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
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let c = l2.shape().elem_count();
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (x, b) = (slices::<f32>(s1, l1)?, slices::<f32>(s2, l2)?);
                let mut out = vec![0f32; x.len()];
                par_chunks(&mut out, c, |off, o| {
                    simd(|| {
                        for (orow, xrow) in o.chunks_mut(c).zip(x[off..].chunks(c)) {
                            for ((o, &xv), &bv) in orow.iter_mut().zip(xrow).zip(b) {
                                *o = gelu_f32(xv + bv);
                            }
                        }
                    })
                });
                CpuStorage::F32(out)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (x, b) = (slices::<f64>(s1, l1)?, slices::<f64>(s2, l2)?);
                let out: Vec<f64> = x
                    .chunks(c)
                    .flat_map(|row| row.iter().zip(b).map(|(&xv, &bv)| gelu_f64(xv + bv)))
                    .collect();
                CpuStorage::F64(out)
            }
            _ => candle_core::bail!("bias-gelu: f32/f64 only"),
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gx = x.apply_op3_no_bwd(b, &g.contiguous()?, &GeluGradBias)?;
        let c = b.elem_count();
        let gb = gx.reshape(((), c))?.sum(0)?.reshape(b.shape())?;
        Ok((Some(gx), Some(gb)))
    }
}

/// g * gelu'(x + b), b broadcast over the last dimension.
struct GeluGradBias;

impl candle_core::CustomOp3 for GeluGradBias {
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
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let c = l2.shape().elem_count();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (x, b, g) = (
                    slices::<f32>(s1, l1)?,
                    slices::<f32>(s2, l2)?,
                    slices::<f32>(s3, l3)?,
                );
                let mut out = vec![0f32; x.len()];
                par_chunks(&mut out, c, |off, o| {
                    simd(|| {
                        for ((orow, xrow), grow) in o
                            .chunks_mut(c)
                            .zip(x[off..].chunks(c))
                            .zip(g[off..].chunks(c))
                        {
                            for (((o, &xv), &gv), &bv) in orow.iter_mut().zip(xrow).zip(grow).zip(b)
                            {
                                *o = gv * gelu_grad_f32(xv + bv);
                            }
                        }
                    })
                });
                CpuStorage::F32(out)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (x, b, g) = (
                    slices::<f64>(s1, l1)?,
                    slices::<f64>(s2, l2)?,
                    slices::<f64>(s3, l3)?,
                );
                let out: Vec<f64> = x
                    .chunks(c)
                    .zip(g.chunks(c))
                    .flat_map(|(xr, gr)| {
                        xr.iter()
                            .zip(gr)
                            .zip(b)
                            .map(|((&xv, &gv), &bv)| gv * gelu_grad_f64(xv + bv))
                    })
                    .collect();
                CpuStorage::F64(out)
            }
            _ => candle_core::bail!("gelu-grad: f32/f64 only"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// gelu_erf(x + b), b broadcast over the last dimension.
pub fn bias_gelu(x: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && b.dtype() == x.dtype()
        && b.rank() == 1
        && x.dim(D::Minus1)? == b.dim(0)?
    {
        x.contiguous()?
            .apply_op2_arc(&b.contiguous()?, std::sync::Arc::new(Box::new(BiasGelu)))
    } else {
        x.broadcast_add(b)?.gelu_erf()
    }
}

/// gelu_erf(x).
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    let c = x.dim(D::Minus1)?;
    let zero = Tensor::zeros(c, x.dtype(), x.device())?;
    bias_gelu(x, &zero)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fast_gelu_matches_exact() {
        let xs: Vec<f32> = (-2000..2000)
            .map(|i| i as f32 * 0.005)
            .chain([-30.0, -90.0, 50.0, 100.0])
            .collect();
        let mut worst: f32 = 0.0;
        for &x in &xs {
            let exact = gelu_f64(x as f64) as f32;
            worst = worst.max((gelu_f32(x) - exact).abs());
            let ge = gelu_grad_f64(x as f64) as f32;
            assert!((gelu_grad_f32(x) - ge).abs() < 1e-6, "grad at {x}");
        }
        eprintln!("max f32 gelu error {worst:.2e}");
        assert!(worst < 1e-6, "max gelu error {worst}");
    }

    #[test]
    fn bias_gelu_backward_matches_candle() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f64, 2.0, (3, 5, 7), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f64, 1.0, 7, &dev)?)?;
        let y1 = bias_gelu(x.as_tensor(), b.as_tensor())?;
        let y2 = x.as_tensor().broadcast_add(b.as_tensor())?.gelu_erf()?;
        let r = Tensor::randn(0f64, 1.0, y1.shape(), &dev)?;
        assert!((&y1 - &y2)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
        let g1 = (&y1 * &r)?.sum_all()?.backward()?;
        let g2 = (&y2 * &r)?.sum_all()?.backward()?;
        for v in [&x, &b] {
            let d = (g1.get(v).unwrap() - g2.get(v).unwrap())?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            eprintln!("bias_gelu gradient max abs diff {d:.2e}");
            // candle's GeluErf backward uses the truncated constant 0.398942 for 1/sqrt(2 pi).
            assert!(d < 1e-5, "{d}");
        }
        Ok(())
    }
}

/// Layer norm over the last dimension: y = (x - mean) * rstd * w + b.
struct LayerNormOp {
    eps: f64,
}

#[inline(always)]
fn ln_rows_f32(x: &[f32], w: &[f32], b: &[f32], c: usize, eps: f32, out: &mut [f32], off: usize) {
    for (orow, xrow) in out.chunks_mut(c).zip(x[off..].chunks(c)) {
        let mean = sum8(xrow) / c as f32;
        // Centre into the output row first, then the variance is a vectorised dot product.
        for (o, &xv) in orow.iter_mut().zip(xrow) {
            *o = xv - mean;
        }
        let var = dot8(orow, orow) / c as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        for ((o, &wv), &bv) in orow.iter_mut().zip(w).zip(b) {
            *o = *o * rstd * wv + bv;
        }
    }
}

fn ln_rows_f64(x: &[f64], w: &[f64], b: &[f64], c: usize, eps: f64) -> Vec<f64> {
    let mut out = vec![0f64; x.len()];
    for (orow, xrow) in out.chunks_mut(c).zip(x.chunks(c)) {
        let mean = xrow.iter().sum::<f64>() / c as f64;
        let var = xrow.iter().map(|&v| (v - mean) * (v - mean)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((o, &xv), &wv), &bv) in orow.iter_mut().zip(xrow).zip(w).zip(b) {
            *o = (xv - mean) * rstd * wv + bv;
        }
    }
    out
}

impl candle_core::CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let c = l2.shape().elem_count();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (x, w, b) = (
                    slices::<f32>(s1, l1)?,
                    slices::<f32>(s2, l2)?,
                    slices::<f32>(s3, l3)?,
                );
                let mut out = vec![0f32; x.len()];
                let eps = self.eps as f32;
                par_chunks(&mut out, c, |off, o| {
                    simd(|| ln_rows_f32(x, w, b, c, eps, o, off))
                });
                CpuStorage::F32(out)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (x, w, b) = (
                    slices::<f64>(s1, l1)?,
                    slices::<f64>(s2, l2)?,
                    slices::<f64>(s3, l3)?,
                );
                CpuStorage::F64(ln_rows_f64(x, w, b, c, self.eps))
            }
            _ => candle_core::bail!("layer-norm: f32/f64 only"),
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = w.elem_count();
        let g = g.contiguous()?;
        // x_hat = normalised x (a layer norm with unit scale and zero shift).
        let ones = Tensor::ones(c, x.dtype(), x.device())?;
        let zeros = Tensor::zeros(c, x.dtype(), x.device())?;
        let xhat = x.apply_op3_no_bwd(&ones, &zeros, &LayerNormOp { eps: self.eps })?;
        let gw = (&g * &xhat)?.reshape(((), c))?.sum(0)?;
        let gb = g.reshape(((), c))?.sum(0)?;
        let gx = x.apply_op3_no_bwd(w, &g, &LayerNormGradX { eps: self.eps })?;
        Ok((Some(gx), Some(gw), Some(gb)))
    }
}

/// dx = rstd * (gw - mean(gw) - x_hat * mean(gw * x_hat)), with gw = g * w.
struct LayerNormGradX {
    eps: f64,
}

#[inline(always)]
fn ln_grad_rows<T: num_traits_float::Float>(
    x: &[T],
    w: &[T],
    g: &[T],
    c: usize,
    eps: T,
    out: &mut [T],
    off: usize,
) {
    let n = T::from(c).unwrap_or_else(T::one);
    for ((orow, xrow), grow) in out
        .chunks_mut(c)
        .zip(x[off..].chunks(c))
        .zip(g[off..].chunks(c))
    {
        let mean = xrow.iter().fold(T::zero(), |a, &v| a + v) / n;
        let var = xrow
            .iter()
            .fold(T::zero(), |a, &v| a + (v - mean) * (v - mean))
            / n;
        let rstd = T::one() / (var + eps).sqrt();
        let mut s1 = T::zero();
        let mut s2 = T::zero();
        for ((&xv, &wv), &gv) in xrow.iter().zip(w).zip(grow) {
            let gw = gv * wv;
            s1 = s1 + gw;
            s2 = s2 + gw * (xv - mean) * rstd;
        }
        let (m1, m2) = (s1 / n, s2 / n);
        for (((o, &xv), &wv), &gv) in orow.iter_mut().zip(xrow).zip(w).zip(grow) {
            let xh = (xv - mean) * rstd;
            *o = rstd * (gv * wv - m1 - xh * m2);
        }
    }
}

mod num_traits_float {
    /// The few float operations the layer-norm gradient needs, for f32 and f64.
    pub trait Float:
        Copy
        + std::ops::Add<Output = Self>
        + std::ops::Sub<Output = Self>
        + std::ops::Mul<Output = Self>
        + std::ops::Div<Output = Self>
    {
        fn zero() -> Self;
        fn one() -> Self;
        fn sqrt(self) -> Self;
        fn from(n: usize) -> Option<Self>;
    }
    impl Float for f32 {
        fn zero() -> Self {
            0.0
        }
        fn one() -> Self {
            1.0
        }
        fn sqrt(self) -> Self {
            f32::sqrt(self)
        }
        fn from(n: usize) -> Option<Self> {
            Some(n as f32)
        }
    }
    impl Float for f64 {
        fn zero() -> Self {
            0.0
        }
        fn one() -> Self {
            1.0
        }
        fn sqrt(self) -> Self {
            f64::sqrt(self)
        }
        fn from(n: usize) -> Option<Self> {
            Some(n as f64)
        }
    }
}

impl candle_core::CustomOp3 for LayerNormGradX {
    fn name(&self) -> &'static str {
        "layer-norm-grad-x"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let c = l2.shape().elem_count();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (x, w, g) = (
                    slices::<f32>(s1, l1)?,
                    slices::<f32>(s2, l2)?,
                    slices::<f32>(s3, l3)?,
                );
                let mut out = vec![0f32; x.len()];
                let eps = self.eps as f32;
                par_chunks(&mut out, c, |off, o| {
                    simd(|| ln_grad_rows(x, w, g, c, eps, o, off))
                });
                CpuStorage::F32(out)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (x, w, g) = (
                    slices::<f64>(s1, l1)?,
                    slices::<f64>(s2, l2)?,
                    slices::<f64>(s3, l3)?,
                );
                let mut out = vec![0f64; x.len()];
                ln_grad_rows(x, w, g, c, self.eps, &mut out, 0);
                CpuStorage::F64(out)
            }
            _ => candle_core::bail!("layer-norm-grad: f32/f64 only"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// Layer norm over the last dimension with weight and bias (fused on the CPU, differentiable).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let ok = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && w.dtype() == x.dtype()
        && b.dtype() == x.dtype()
        && w.rank() == 1
        && b.rank() == 1
        && x.dim(D::Minus1)? == w.dim(0)?;
    if ok {
        x.contiguous()?.apply_op3_arc(
            &w.contiguous()?,
            &b.contiguous()?,
            std::sync::Arc::new(Box::new(LayerNormOp { eps })),
        )
    } else {
        super::common::layer_norm_ops(x, w, b, eps)
    }
}

#[cfg(test)]
mod ln_tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_layer_norm_matches_ops_forward_and_backward() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f64, 2.0, (3, 4, 9), &dev)? + 1.5)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f64, 0.3, 9, &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f64, 0.3, 9, &dev)?)?;
        let y1 = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)?;
        let y2 = super::super::common::layer_norm_ops(
            x.as_tensor(),
            w.as_tensor(),
            b.as_tensor(),
            1e-5,
        )?;
        assert!((&y1 - &y2)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
        let r = Tensor::randn(0f64, 1.0, y1.shape(), &dev)?;
        let g1 = (&y1 * &r)?.sum_all()?.backward()?;
        let g2 = (&y2 * &r)?.sum_all()?.backward()?;
        for v in [&x, &w, &b] {
            let d = (g1.get(v).unwrap() - g2.get(v).unwrap())?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            assert!(d < 1e-10, "{d}");
        }
        let x32 = x.as_tensor().to_dtype(DType::F32)?;
        let y32 = layer_norm(
            &x32,
            &w.as_tensor().to_dtype(DType::F32)?,
            &b.as_tensor().to_dtype(DType::F32)?,
            1e-5,
        )?;
        let d = (y32.to_dtype(DType::F64)? - &y2)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert!(d < 1e-5, "{d}");
        Ok(())
    }
}

/// Run `f` compiled for AVX2+FMA when the CPU has them (the kernels it calls are inlined into it).
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected at run time.
            return unsafe { simd_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn simd_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
