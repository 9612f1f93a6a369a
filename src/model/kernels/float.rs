//! The one float trait of the kernels ([`Float`], for f32 and f64) and the scalar functions behind it.
//!
//! f32 uses a branch-free erf (Abramowitz-Stegun 7.1.26, |error| < 1.5e-7) built on a polynomial exp, which the
//! compiler vectorises; f64 uses libm's exact erf, so that the finite-difference gradient tests (run in f64) see
//! one consistent function.

use candle_core::{bail, CpuStorage, Result, WithDType};

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// The float operations the kernels need: f32 with the fast vectorisable GELU and exp, f64 exact.
pub(crate) trait Float: WithDType {
    /// Erf GELU, `0.5 x (1 + erf(x / sqrt 2))`.
    fn gelu(self) -> Self;
    /// Derivative of [`Float::gelu`].
    fn gelu_grad(self) -> Self;
    /// `e^x` (f32: polynomial, vectorises).
    fn exp_(self) -> Self;
    /// `self * b + c` with one rounding (an FMA instruction where the caller is compiled with FMA, else libm's
    /// correctly rounded `fma`: the same bits either way).
    fn mul_add_(self, b: Self, c: Self) -> Self;
    /// Square root.
    fn sqrt_(self) -> Self;
    /// Absolute value.
    fn abs_(self) -> Self;
    /// Natural logarithm.
    fn ln_(self) -> Self;
    /// The values of a storage of this type, by value.
    fn take(s: CpuStorage) -> Result<Vec<Self>>;
    /// A storage holding `v` (the inverse of [`Float::take`]).
    fn storage(v: Vec<Self>) -> CpuStorage;
    /// Zero.
    #[inline(always)]
    fn z() -> Self {
        Self::from_f64(0.0)
    }
}

/// `Float` for one float type: its storage variant and its GELU, GELU' and exp kernels.
macro_rules! impl_float {
    ($t:ty, $variant:ident, $gelu:path, $gelu_grad:path, $exp:expr) => {
        impl Float for $t {
            fn take(s: CpuStorage) -> Result<Vec<Self>> {
                match s {
                    CpuStorage::$variant(v) => Ok(v),
                    _ => bail!(concat!("fused op: expected ", stringify!($t))),
                }
            }
            fn storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
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
            fn mul_add_(self, b: Self, c: Self) -> Self {
                self.mul_add(b, c)
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

impl_float!(f32, F32, gelu_f32, gelu_grad_f32, exp_f32);
impl_float!(f64, F64, gelu_f64, gelu_grad_f64, f64::exp);

#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    // exp(x) = 2^n * exp(r), |r| <= ln2/2; degree-6 Taylor/minimax polynomial.
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest with the 1.5 * 2^23 trick (vectorises, unlike `f32::round`).
    let k = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = k - 12_582_912.0;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    // 2^n from the bits of k = 1.5 * 2^23 + n (they are 0x4B40_0000 + n): integer lanes, where `n as i32` (a
    // saturating conversion) would be done one lane at a time.
    let bits = k.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23;
    p * f32::from_bits(bits)
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
fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * FRAC_1_SQRT_2))
}

#[inline(always)]
fn gelu_grad_f32(x: f32) -> f32 {
    0.5 * (1.0 + erf_f32(x * FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * exp_f32(-0.5 * x * x)
}

fn gelu_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))
}

fn gelu_grad_f64(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))
        + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// The kernels' one dtype dispatch: evaluates `$body` with the type alias `$T` bound to the float type of
/// `$dtype` (f32 or f64), so a kernel generic over [`Float`] is written once and called once; any other dtype
/// is an error naming the op `$op`. Wrap a `Vec<T>` result with [`Float::storage`].
macro_rules! with_float {
    ($dtype:expr, $op:expr, $T:ident => $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $T = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $T = f64;
                $body
            }
            dt => candle_core::bail!("{}: f32/f64 only, not {:?}", $op, dt),
        }
    };
}
pub(crate) use with_float;

/// Dot product with eight independent accumulators (vectorises); the summation order is fixed.
#[inline(always)]
pub(crate) fn dot<T: Float>(a: &[T], b: &[T]) -> T {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
