//! Portable matrix products on plain slices: every product of the crate on the CPU (the fused kernels, the
//! layers' matmuls through [`super::matmul`]) ends here, so a run's numbers do not depend on the CPU it runs on.
//!
//! Why our own: the `gemm` crate behind candle's CPU matmul picks its microkernel (AVX-512, AVX2, scalar) and
//! its cache blocking from the CPU at run time, and its blocking over the inner dimension splits each sum into
//! partial sums whose size follows the cache sizes. The same spec then gives other tables on another machine.
//!
//! The rule that makes the result portable: every output element is `sum_k a[i][k] * b[k][j]`, accumulated from
//! zero in increasing `k` with one fused multiply-add per term (one rounding, whatever the vector width: see
//! [`super::tile`]), then `dst = scale * sum` (or `dst + scale * sum`). Nothing else of the computation can
//! change an output bit: the register tile (`MR` x `NR`, chosen per instruction set for speed), the vector
//! width (each lane is one output column), the packing, the blocking of k (a block continues from the stored
//! sum, which is the same as not stopping), and the split of rows over threads only decide which elements are
//! computed together and where, never the order of one element's terms. So the scalar, AVX2 and AVX-512 paths
//! and any thread count give the same bits (tested below and by `tests/portable.rs`). On a CPU without FMA the
//! scalar path calls libm's correctly rounded `fma`: the same bits, slowly.

use candle_core::DType;
use rayon::prelude::*;

use super::float::Float;
use super::tile::{self, ASrc, BSrc, Tile};
use crate::model::isa::{Isa, Numerics};

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
        m,
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
    let isa = Isa::active();
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == DType::F32 && isa != Isa::Scalar {
        // SAFETY: T is f32 (checked just above), so the casts reinterpret f32 slices as themselves.
        let (p32, d32) = unsafe { (p.cast::<f32>(), cast_mut::<T, f32>(dst)) };
        return match isa {
            Isa::Avx512 => drive::<f32, tile::Avx512>(&p32, d32, isa),
            _ => drive::<f32, tile::Avx2>(&p32, d32, isa),
        };
    }
    drive::<T, tile::Plain>(&p, dst, isa)
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
    m: usize,
    n: usize,
    k: usize,
    ld: usize,
    acc: bool,
    a: Mat<'a, T>,
    b: Mat<'a, T>,
    scale: T,
    threads: usize,
}

/// Rows of the output one task computes (a multiple of every tile's `MR`: 4, 6, 8).
const MC: usize = 48;
/// Terms of k per block: a block of packed B (`KC` x n) stays in the L2 cache while the row blocks sweep it.
const KC: usize = 256;

/// Reinterpret a slice of `T` as `U` (same type, checked by the caller through `DType`).
///
/// # Safety
/// `T` and `U` must be the same type.
#[cfg(target_arch = "x86_64")]
unsafe fn cast<T, U>(s: &[T]) -> &[U] {
    std::slice::from_raw_parts(s.as_ptr() as *const U, s.len())
}

/// # Safety
/// As [`cast`].
#[cfg(target_arch = "x86_64")]
unsafe fn cast_mut<T, U>(s: &mut [T]) -> &mut [U] {
    std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut U, s.len())
}

impl<'a, T> Problem<'a, T> {
    /// The same problem over `U` (the same type as `T`).
    ///
    /// # Safety
    /// `T` and `U` must be the same type.
    #[cfg(target_arch = "x86_64")]
    unsafe fn cast<U: Copy>(&self) -> Problem<'a, U>
    where
        T: Copy,
    {
        let mat = |m: &Mat<'a, T>| Mat {
            data: cast::<T, U>(m.data),
            rs: m.rs,
            cs: m.cs,
        };
        Problem {
            m: self.m,
            n: self.n,
            k: self.k,
            ld: self.ld,
            acc: self.acc,
            a: mat(&self.a),
            b: mat(&self.b),
            scale: *(&self.scale as *const T as *const U),
            threads: self.threads,
        }
    }
}

/// How the tiles read B: packed panels (by blocks of `KC` rows, then panels of `nr` columns: block `k0` starts at
/// `k0 * np * nr`, its panel `p` at `+ p * kc * nr`), or B itself where it is row-major (only the last, partial
/// panel packed, `k` x `nr`).
struct BPanels<'a, T> {
    b: Mat<'a, T>,
    nr: usize,
    np: usize,
    /// Row-major B read in place (its whole panels).
    direct: bool,
    /// Whole panels (direct B).
    full: usize,
    packed: Vec<T>,
}

impl<'a, T: Float> BPanels<'a, T> {
    fn new(b: Mat<'a, T>, k: usize, n: usize, nr: usize) -> Self {
        let np = n.div_ceil(nr);
        if b.cs == 1 {
            // Only the partial last panel needs copying (zero beyond column n).
            let full = n / nr;
            let nc = n - full * nr;
            let mut packed = vec![T::z(); if nc > 0 { k * nr } else { 0 }];
            if nc > 0 {
                for (kk, row) in packed.chunks_exact_mut(nr).enumerate() {
                    let s = kk * b.rs + full * nr;
                    row[..nc].copy_from_slice(&b.data[s..s + nc]);
                }
            }
            return Self {
                b,
                nr,
                np,
                direct: true,
                full,
                packed,
            };
        }
        let mut packed = vec![T::z(); k * np * nr];
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let blk = &mut packed[k0 * np * nr..(k0 + kc) * np * nr];
            for (p, panel) in blk.chunks_exact_mut(kc * nr).enumerate() {
                let j0 = p * nr;
                for c in 0..nr.min(n - j0) {
                    for kk in 0..kc {
                        panel[kk * nr + c] = b.at(k0 + kk, j0 + c);
                    }
                }
            }
        }
        Self {
            b,
            nr,
            np,
            direct: false,
            full: 0,
            packed,
        }
    }

    /// Panel `p` of the k-block starting at `k0` (`kc` terms).
    fn src(&self, k0: usize, kc: usize, p: usize) -> BSrc<T> {
        let nr = self.nr;
        if !self.direct {
            let off = k0 * self.np * nr + p * kc * nr;
            return BSrc {
                ptr: self.packed[off..].as_ptr(),
                ld: nr,
            };
        }
        if p < self.full {
            BSrc {
                ptr: self.b.data[k0 * self.b.rs + p * nr..].as_ptr(),
                ld: self.b.rs,
            }
        } else {
            BSrc {
                ptr: self.packed[k0 * nr..].as_ptr(),
                ld: nr,
            }
        }
    }
}

/// The product with tile `M`. Where B would need a transposing copy and A has few rows (fewer than terms: a handful of prompt
/// tokens against thousands of image tokens), the transposed product `C^T = B^T A^T` is computed instead: each
/// element is the same FMA chain (`fma(a, b, c) = fma(b, a, c)`), so the bits are too, and only the small side
/// is copied.
fn drive<T: Float, M: Tile<T>>(p: &Problem<'_, T>, dst: &mut [T], isa: Isa) {
    if p.b.cs != 1 && p.m < p.k && p.m * 4 <= p.n {
        let (m, n) = (p.m, p.n);
        let q = Problem {
            m: n,
            n: m,
            k: p.k,
            ld: m,
            acc: false,
            a: Mat {
                data: p.b.data,
                rs: p.b.cs,
                cs: p.b.rs,
            },
            b: Mat {
                data: p.a.data,
                rs: p.a.cs,
                cs: p.a.rs,
            },
            scale: T::from_f64(1.0),
            threads: p.threads,
        };
        let mut ct = vec![T::z(); n * m];
        drive_rows::<T, M>(&q, &mut ct, isa);
        for i in 0..m {
            let o = &mut dst[i * p.ld..i * p.ld + n];
            for (j, d) in o.iter_mut().enumerate() {
                let s = ct[j * m + i];
                *d = if p.acc { *d + p.scale * s } else { p.scale * s };
            }
        }
        return;
    }
    drive_rows::<T, M>(p, dst, isa)
}

/// Blocks of `MC` rows (on rayon's pool when `threads` > 1) over B's panels.
fn drive_rows<T: Float, M: Tile<T>>(p: &Problem<'_, T>, dst: &mut [T], isa: Isa) {
    let bp = BPanels::new(p.b, p.k, p.n, M::NR);
    let rows_of = |len: usize| len.div_ceil(p.ld);
    let one = |t: usize, ch: &mut [T]| {
        let rows = rows_of(ch.len());
        // SAFETY: `isa` is the active instruction set, which the CPU supports (`Isa::active`).
        unsafe { block_for::<T, M>(isa, p, &bp, t * MC, rows, ch) }
    };
    if p.threads > 1 && dst.len() > MC * p.ld {
        dst.par_chunks_mut(MC * p.ld)
            .enumerate()
            .for_each(|(t, ch)| one(t, ch));
    } else {
        for (t, ch) in dst.chunks_mut(MC * p.ld).enumerate() {
            one(t, ch);
        }
    }
}

/// [`block`] compiled for `isa` (so that the tile's intrinsics inline into it).
///
/// # Safety
/// The CPU supports `isa`.
unsafe fn block_for<T: Float, M: Tile<T>>(
    isa: Isa,
    p: &Problem<'_, T>,
    bp: &BPanels<'_, T>,
    i0: usize,
    rows: usize,
    out: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    {
        // `block` compiled once per instruction set: the same code, with the features it may use enabled.
        macro_rules! block_with {
            ($name:ident, $features:literal) => {
                #[target_feature(enable = $features)]
                unsafe fn $name<T: Float, M: Tile<T>>(
                    p: &Problem<'_, T>,
                    bp: &BPanels<'_, T>,
                    i0: usize,
                    rows: usize,
                    out: &mut [T],
                ) {
                    block::<T, M>(p, bp, i0, rows, out)
                }
            };
        }
        block_with!(v4, "avx512f,avx2,fma");
        block_with!(v3, "avx2,fma");
        // The scalar tile with hardware FMA (one lane at a time, as the ISA says; the same bits as libm's fma).
        block_with!(v1, "fma");
        match isa {
            Isa::Avx512 => return v4::<T, M>(p, bp, i0, rows, out),
            Isa::Avx2 => return v3::<T, M>(p, bp, i0, rows, out),
            Isa::Scalar if std::is_x86_feature_detected!("fma") => {
                return v1::<T, M>(p, bp, i0, rows, out)
            }
            Isa::Scalar => {}
        }
    }
    let _ = isa;
    block::<T, M>(p, bp, i0, rows, out)
}

/// Rows `i0..i0 + rows` of the product into `out` (those rows of the destination): for each block of k, every
/// (row tile, column panel) pair, accumulating in `acc`; then the epilogue.
#[inline(always)]
fn block<T: Float, M: Tile<T>>(
    p: &Problem<'_, T>,
    bp: &BPanels<'_, T>,
    i0: usize,
    rows: usize,
    out: &mut [T],
) {
    let (k, n, ld) = (p.k, p.n, p.ld);
    let (mr, nr) = (M::MR, M::NR);
    let np = n.div_ceil(nr);
    let tiles = rows.div_ceil(mr);
    let mut acc = vec![T::z(); tiles * np * mr * nr];
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        for t in 0..tiles {
            let r0 = i0 + t * mr;
            let a = ASrc {
                ptr: p.a.data[r0 * p.a.rs + k0 * p.a.cs..].as_ptr(),
                rs: p.a.rs,
                cs: p.a.cs,
                rows: mr.min(rows - t * mr),
            };
            for pi in 0..np {
                let c = &mut acc[(t * np + pi) * mr * nr..(t * np + pi + 1) * mr * nr];
                // SAFETY: A's rows (clamped to the real ones) and B's panel hold `kc` terms inside their slices
                // (the views were checked to fit); the caller compiled this for the tile's instruction set.
                unsafe { M::tile(kc, a, bp.src(k0, kc, pi), c, k0 == 0) };
            }
        }
    }
    for i in 0..rows {
        let (t, r) = (i / mr, i % mr);
        let o = &mut out[i * ld..i * ld + n];
        for (pi, oc) in o.chunks_mut(nr).enumerate() {
            let c = &acc[(t * np + pi) * mr * nr + r * nr..][..oc.len()];
            if p.acc {
                for (d, &s) in oc.iter_mut().zip(c) {
                    *d += p.scale * s;
                }
            } else {
                for (d, &s) in oc.iter_mut().zip(c) {
                    *d = p.scale * s;
                }
            }
        }
    }
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
        drive::<f32, tile::Plain>(p, &mut d, Isa::Scalar);
        outs.push(("scalar", d));
        #[cfg(target_arch = "x86_64")]
        {
            if Isa::Avx2.supported() {
                let mut d = vec![0.5f32; len];
                drive::<f32, tile::Avx2>(p, &mut d, Isa::Avx2);
                outs.push(("avx2", d));
            }
            if Isa::Avx512.supported() {
                let mut d = vec![0.5f32; len];
                drive::<f32, tile::Avx512>(p, &mut d, Isa::Avx512);
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
                    m,
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
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + k as f64).sqrt(),
                        "{got} vs {want}"
                    );
                }
            }
        }
    }

    /// Speed against the `gemm` crate on the decoder's and encoder's typical shapes (prints GFLOP/s; asserts
    /// nothing): `cargo test --release --lib gemm_speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "micro-benchmark: prints timings, asserts nothing"]
    fn micro_bench_gemm_speed() {
        for &(m, n, k, ta, tb, th) in &[
            (16384, 256, 256, false, true, 2),
            (256, 256, 16384, true, false, 2),
            (4096, 64, 256, false, true, 2),
            (256, 1024, 64, false, true, 1),
            (49, 49, 32, false, true, 1),
            (4096, 4096, 16, false, true, 2),
        ] {
            let a = rand_vec(m * k, 1);
            let b = rand_vec(k * n, 2);
            let av = if ta { Mat::t(&a, m) } else { Mat::rows(&a, k) };
            let bv = if tb { Mat::t(&b, k) } else { Mat::rows(&b, n) };
            let mut d = vec![0f32; m * n];
            let reps = (2e9 / (2.0 * (m * n * k) as f64)).clamp(1.0, 200.0) as usize;
            let time = |f: &mut dyn FnMut()| {
                let mut v: Vec<f64> = (0..5)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        for _ in 0..reps {
                            f();
                        }
                        t.elapsed().as_secs_f64() / reps as f64
                    })
                    .collect();
                v.sort_by(f64::total_cmp);
                v[2]
            };
            let tp = time(&mut || gemm(m, n, k, &mut d, n, false, av, bv, 1.0, th));
            let tf = time(&mut || fast(m, n, k, &mut d, n, false, av, bv, 1.0, th));
            let gf = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
            eprintln!(
                "{m}x{n}x{k} (a^T {ta}, b^T {tb}, {th} thr): portable {:.1} GFLOP/s, gemm crate {:.1} GFLOP/s, ratio {:.2}",
                gf(tp),
                gf(tf),
                tp / tf
            );
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
        gemm(
            m,
            n,
            k,
            &mut d,
            n,
            false,
            Mat::rows(&a, k),
            Mat::rows(&b, n),
            1.0,
            1,
        );
        let reversed: Vec<f32> = (0..m * n)
            .map(|e| {
                let (i, j) = (e / n, e % n);
                (0..k)
                    .rev()
                    .fold(0f32, |s, kk| a[i * k + kk].mul_add(b[kk * n + j], s))
            })
            .collect();
        let forward: Vec<f32> = (0..m * n)
            .map(|e| {
                let (i, j) = (e / n, e % n);
                (0..k).fold(0f32, |s, kk| a[i * k + kk].mul_add(b[kk * n + j], s))
            })
            .collect();
        assert_eq!(
            d, forward,
            "the gemm adds its terms from k = 0 up, one FMA each"
        );
        assert_ne!(d, reversed);
    }
}
