//! Portable matrix products on plain slices: every product of the crate on the CPU (the fused kernels, the
//! layers' matmuls through [`super::matmul`]) ends here, so a run's numbers do not depend on the CPU it runs on.
//!
//! Why our own: the `gemm` crate behind candle's CPU matmul picks its microkernel (AVX-512, AVX2, scalar) and
//! its cache blocking from the CPU at run time, and its blocking over the inner dimension splits each sum into
//! partial sums whose size follows the cache sizes. The same spec then gives other tables on another machine.
//!
//! The rule that makes the result portable: every output element is `sum_k a[i][k] * b[k][j]`, accumulated from
//! zero in increasing `k`, one rounded multiply and one rounded add per term (Rust never fuses `a * b + c` into
//! an FMA on its own), then `dst = scale * sum` (or `dst + scale * sum`). Nothing else of the computation can
//! change an output bit: the register tile (`MR` x `NR`, chosen per instruction set for speed), the vector
//! width (each lane is one output column), the packing, and the split of rows over threads only decide which
//! elements are computed together and where, never the order of one element's terms. So the scalar, AVX2 and
//! AVX-512 builds and any thread count give the same bits (tested in `kernels::tests`).

use rayon::prelude::*;

use super::float::Float;
use crate::model::isa::Numerics;
#[cfg(target_arch = "x86_64")]
use super::par::{wide, Wide};

/// A read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major matrix with rows `ld` elements apart.
    pub fn rows(data: &'a [T], ld: usize) -> Self {
        Self {
            data,
            rs: ld,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with rows `ld` elements apart (e.g. `W^T` for a weight `(out, in)`).
    pub fn t(data: &'a [T], ld: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: ld,
        }
    }
    fn fits(&self, r: usize, c: usize) -> bool {
        r == 0 || c == 0 || (r - 1) * self.rs + (c - 1) * self.cs < self.data.len()
    }
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> T
    where
        T: Copy,
    {
        self.data[i * self.rs + j * self.cs]
    }
}

/// Rows of the output one task computes (a multiple of every `MR` below, so tiles never straddle tasks).
const MC: usize = 48;

/// `dst = scale * a b` (or `dst += scale * a b` with `acc`), `a` (m x k), `b` (k x n), `dst` (m x n) row-major
/// with rows `ld` apart. `threads` > 1 splits the rows on rayon's pool (the caller's pool); the result is the same
/// bits for any `threads` and on any CPU (see the module docs).
///
/// Panics when a view is too short for its shape (a bug in the calling kernel, never bad input).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    ld: usize,
    acc: bool,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    scale: T,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        a.fits(m, k) && b.fits(k, n) && (m - 1) * ld + n <= dst.len() && n <= ld,
        "gemm: view too short for ({m} x {k}) x ({k} x {n})"
    );
    if Numerics::active() == Numerics::Fast {
        return fast(m, n, k, dst, ld, acc, a, b, scale, threads);
    }
    if k == 0 {
        // An empty sum is zero: `dst` keeps its values (acc) or becomes zero.
        if !acc {
            for i in 0..m {
                dst[i * ld..i * ld + n].fill(T::z());
            }
        }
        return;
    }
    let p = Problem {
        n,
        k,
        ld,
        acc,
        a,
        b,
        scale,
        threads,
    };
    let dst = &mut dst[..(m - 1) * ld + n];
    #[cfg(target_arch = "x86_64")]
    {
        match wide() {
            // SAFETY: `wide` detected AVX-512F, AVX2 and FMA.
            Wide::Avx512 => return unsafe { run_avx512(&p, dst) },
            // SAFETY: `wide` detected AVX2 and FMA.
            Wide::Avx2 => return unsafe { run_avx2(&p, dst) },
            Wide::Scalar => {}
        }
    }
    run::<T, 4, 8>(&p, dst)
}

/// The same product on the `gemm` crate (`EVOSAM_NUMERICS=fast`): its AVX-512 or AVX2 microkernels and cache
/// blocking follow the CPU, so the bits do too.
#[allow(clippy::too_many_arguments)]
fn fast<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    ld: usize,
    acc: bool,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    scale: T,
    threads: usize,
) {
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every element the product reads or writes lies inside the slices (checked by the caller: the last
    // element of each view is in bounds and strides are non-negative), `dst` is borrowed mutably and so cannot
    // alias `a` or `b`, and `T` is f32 or f64, types the crate supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            acc,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::from_f64(1.0),
            scale,
            false,
            false,
            false,
            par,
        )
    }
}

/// One product's operands and options (everything but the destination).
struct Problem<'a, T> {
    n: usize,
    k: usize,
    ld: usize,
    acc: bool,
    a: Mat<'a, T>,
    b: Mat<'a, T>,
    scale: T,
    threads: usize,
}

/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_avx512<T: Float>(p: &Problem<'_, T>, dst: &mut [T]) {
    run::<T, 6, 32>(p, dst)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<T: Float>(p: &Problem<'_, T>, dst: &mut [T]) {
    run::<T, 4, 16>(p, dst)
}

/// Pack `b` into panels of `NR` columns, each `k` rows of `NR` values (zero beyond column `n`).
#[inline(always)]
fn pack_b<T: Float, const NR: usize>(b: Mat<'_, T>, k: usize, n: usize) -> Vec<T> {
    let panels = n.div_ceil(NR);
    let mut bp = vec![T::z(); panels * k * NR];
    for (p, panel) in bp.chunks_exact_mut(k * NR).enumerate() {
        let j0 = p * NR;
        let nc = NR.min(n - j0);
        if b.cs == 1 {
            for (kk, row) in panel.chunks_exact_mut(NR).enumerate() {
                let s = kk * b.rs + j0;
                row[..nc].copy_from_slice(&b.data[s..s + nc]);
            }
        } else {
            for c in 0..nc {
                for kk in 0..k {
                    panel[kk * NR + c] = b.at(kk, j0 + c);
                }
            }
        }
    }
    bp
}

#[inline(always)]
fn run<T: Float, const MR: usize, const NR: usize>(p: &Problem<'_, T>, dst: &mut [T]) {
    let bp = pack_b::<T, NR>(p.b, p.k, p.n);
    let rows_of = |len: usize| len.div_ceil(p.ld);
    if p.threads > 1 && dst.len() > MC * p.ld {
        dst.par_chunks_mut(MC * p.ld)
            .enumerate()
            .for_each(|(t, ch)| block::<T, MR, NR>(p, &bp, t * MC, rows_of(ch.len()), ch));
    } else {
        for (t, ch) in dst.chunks_mut(MC * p.ld).enumerate() {
            block::<T, MR, NR>(p, &bp, t * MC, rows_of(ch.len()), ch);
        }
    }
}

/// Rows `i0..i0 + rows` of the product into `out` (those rows of the destination).
#[inline(always)]
fn block<T: Float, const MR: usize, const NR: usize>(
    p: &Problem<'_, T>,
    bp: &[T],
    i0: usize,
    rows: usize,
    out: &mut [T],
) {
    let (k, n, ld) = (p.k, p.n, p.ld);
    let mut ap = vec![T::z(); MR * k];
    let mut tile = [[T::z(); NR]; MR];
    for r0 in (0..rows).step_by(MR) {
        let mr = MR.min(rows - r0);
        for (kk, col) in ap.chunks_exact_mut(MR).enumerate() {
            for (r, v) in col.iter_mut().enumerate() {
                *v = if r < mr {
                    p.a.at(i0 + r0 + r, kk)
                } else {
                    T::z()
                };
            }
        }
        for (pi, panel) in bp.chunks_exact(k * NR).enumerate() {
            micro::<T, MR, NR>(&ap, panel, &mut tile);
            let j0 = pi * NR;
            let nc = NR.min(n - j0);
            for (r, t) in tile.iter().enumerate().take(mr) {
                let o = &mut out[(r0 + r) * ld + j0..(r0 + r) * ld + j0 + nc];
                if p.acc {
                    for (d, &s) in o.iter_mut().zip(t) {
                        *d += p.scale * s;
                    }
                } else {
                    for (d, &s) in o.iter_mut().zip(t) {
                        *d = p.scale * s;
                    }
                }
            }
        }
    }
}

/// `tile[r][c] = sum_k ap[k][r] * bp[k][c]`, from zero, in increasing k: the one place a product's terms are
/// added (each `c` is a lane of its own, so the vector width never changes the order).
#[inline(always)]
fn micro<T: Float, const MR: usize, const NR: usize>(ap: &[T], bp: &[T], tile: &mut [[T; NR]; MR]) {
    let mut c = [[T::z(); NR]; MR];
    for (a, b) in ap.chunks_exact(MR).zip(bp.chunks_exact(NR)) {
        // Fixed-length views: the loops below unroll into register tiles with no bounds checks.
        let (Ok(a), Ok(b)) = (<&[T; MR]>::try_from(a), <&[T; NR]>::try_from(b)) else {
            unreachable!("chunks_exact gives whole chunks")
        };
        for r in 0..MR {
            let av = a[r];
            for j in 0..NR {
                c[r][j] = c[r][j] + av * b[j];
            }
        }
    }
    *tile = c;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// The product by every tile shape the instruction sets use, into one output each.
    fn every_isa(p: &Problem<'_, f32>, m: usize) -> Vec<(&'static str, Vec<f32>)> {
        let len = (m - 1) * p.ld + p.n;
        let mut outs = Vec::new();
        let mut d = vec![0.5f32; len];
        run::<f32, 4, 8>(p, &mut d);
        outs.push(("scalar", d));
        #[cfg(target_arch = "x86_64")]
        {
            use crate::model::isa::Isa;
            if Isa::Avx2.supported() {
                let mut d = vec![0.5f32; len];
                // SAFETY: AVX2 and FMA were detected.
                unsafe { run_avx2(p, &mut d) };
                outs.push(("avx2", d));
            }
            if Isa::Avx512.supported() {
                let mut d = vec![0.5f32; len];
                // SAFETY: AVX-512F, AVX2 and FMA were detected.
                unsafe { run_avx512(p, &mut d) };
                outs.push(("avx512", d));
            }
        }
        outs
    }

    /// Every instruction set's tiles and any thread count give the same bits, and the value is the product
    /// (against an f64 reference), for odd sizes, transposed views, accumulation and a scale.
    #[test]
    fn same_bits_on_every_isa_and_thread_count() {
        for &(m, n, k, ta, tb, acc) in &[
            (1, 1, 1, false, false, false),
            (7, 33, 5, false, true, false),
            (50, 17, 300, true, false, true),
            (97, 70, 64, true, true, false),
            (3, 200, 1000, false, false, true),
        ] {
            let a = rand_vec(m * k, 1);
            let b = rand_vec(k * n, 2);
            let ld = n + 3;
            let av = if ta { Mat::t(&a, m) } else { Mat::rows(&a, k) };
            let bv = if tb { Mat::t(&b, k) } else { Mat::rows(&b, n) };
            let mut results = Vec::new();
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let p = Problem {
                    n,
                    k,
                    ld,
                    acc,
                    a: av,
                    b: bv,
                    scale: 0.75,
                    threads,
                };
                results.extend(pool.install(|| every_isa(&p, m)));
            }
            let first = &results[0].1;
            for (name, r) in &results {
                let same = r.iter().zip(first).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{name} differs for {m}x{n}x{k}");
            }
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k)
                        .map(|kk| av.at(i, kk) as f64 * bv.at(kk, j) as f64)
                        .sum();
                    let want = if acc { 0.5 } else { 0.0 } + 0.75 * s;
                    let got = first[i * ld + j] as f64;
                    assert!((got - want).abs() < 1e-4 * (1.0 + k as f64).sqrt(), "{got} vs {want}");
                }
            }
        }
    }

    /// The summation order is part of the contract: adding the terms in another order (here: from the last k)
    /// changes some bits, which is what this test (and the golden tables) would catch.
    #[test]
    fn order_of_terms_is_visible_in_the_bits() {
        let (m, n, k) = (8, 8, 512);
        let a = rand_vec(m * k, 3);
        let b = rand_vec(k * n, 4);
        let mut d = vec![0f32; m * n];
        gemm(m, n, k, &mut d, n, false, Mat::rows(&a, k), Mat::rows(&b, n), 1.0, 1);
        let reversed: Vec<f32> = (0..m * n)
            .map(|e| {
                let (i, j) = (e / n, e % n);
                (0..k).rev().fold(0f32, |s, kk| s + a[i * k + kk] * b[kk * n + j])
            })
            .collect();
        let forward: Vec<f32> = (0..m * n)
            .map(|e| {
                let (i, j) = (e / n, e % n);
                (0..k).fold(0f32, |s, kk| s + a[i * k + kk] * b[kk * n + j])
            })
            .collect();
        assert_eq!(d, forward, "the gemm adds its terms from k = 0 up");
        assert_ne!(d, reversed);
    }
}
