//! Row splitting on rayon's pool, for every kernel: [`par_rows`] for outputs written row by row and
//! [`par_sum_rows`] for column reductions.
//!
//! Work runs on the rayon pool the caller is in (the global pool, sized by `RAYON_NUM_THREADS`, unless a caller
//! installs its own), the same pool candle's matmuls use, so kernels and gemm never oversubscribe the cores.
//!
//! Determinism: the number of parts is fixed before any work starts (1 below a size threshold, else [`SPLIT`],
//! at most one part per row, whatever the pool's size), parts are contiguous row ranges, and per-part results come back in
//! range order and are added in that order. A reduction therefore gives the same bits on every run and with any
//! thread count, whatever the scheduling; element-wise outputs do not depend on the split at all.

use candle_core::WithDType;
use rayon::prelude::*;

/// The number of parts work above the size threshold is split into, whatever the thread count: a reduction's
/// partial sums (and the bands a part cuts its rows into) then fall in the same places on 1 thread or 64, so the
/// result is the same bits. 16 keeps up to 16 threads busy; rayon spreads the parts over fewer.
pub(crate) const SPLIT: usize = 16;

/// How many contiguous parts `rows` rows (of `len` elements in all) are split into: 1 below `min_len` elements,
/// else [`SPLIT`], never more than one part per row. Independent of the pool's size (see [`SPLIT`]).
pub(crate) fn parts(len: usize, rows: usize, min_len: usize) -> usize {
    if len < min_len {
        1
    } else {
        SPLIT.min(rows).max(1)
    }
}

/// Run `f(first_row, chunk)` over chunks of whole rows (`row` elements each) of `out`, in parallel when `out` has
/// at least `min_len` elements; returns the per-chunk results in row order. `f` runs inside [`simd`].
pub(crate) fn par_rows<T: Send, R: Send>(
    out: &mut [T],
    row: usize,
    min_len: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync,
) -> Vec<R> {
    let row = row.max(1);
    let rows = out.len() / row;
    let nt = parts(out.len(), rows, min_len);
    // `f` is called from exactly one place, so it is inlined into the AVX2 region.
    let run = |i: usize, c: &mut [T]| simd(|| f(i, c));
    if nt <= 1 {
        return vec![run(0, out)];
    }
    let per = rows.div_ceil(nt) * row;
    out.par_chunks_mut(per)
        .enumerate()
        .map(|(i, c)| run(i * per / row, c))
        .collect()
}

/// Sum of per-range partial results: rows `0..rows` split into `nt` contiguous ranges (the last ones may be
/// empty), `part(r0, r1)` returns `len` partial sums for its range; the parts are added in range order. `part`
/// runs inside [`simd`].
pub(crate) fn par_sum_rows<T: WithDType>(
    rows: usize,
    nt: usize,
    len: usize,
    part: impl Fn(usize, usize) -> Vec<T> + Sync,
) -> Vec<T> {
    let nt = nt.max(1);
    let per = rows.div_ceil(nt).max(1);
    let range = |i: usize| ((i * per).min(rows), ((i + 1) * per).min(rows));
    let run = |i: usize| {
        let (r0, r1) = range(i);
        simd(|| part(r0, r1))
    };
    let partials: Vec<Vec<T>> = if nt == 1 {
        vec![run(0)]
    } else {
        (0..nt).into_par_iter().map(run).collect()
    };
    let mut out = vec![T::zero(); len];
    for p in partials {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// The widest vector instruction set [`simd`] and [`simd_fn!`] may use on this CPU.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) enum Wide {
    /// AVX-512F with AVX2 and FMA.
    Avx512,
    /// AVX2 and FMA.
    Avx2,
    /// Neither: the baseline build.
    Scalar,
}

/// The instruction set in use ([`crate::model::isa::Isa::active`]: `EVOSAM_ISA` where set, else detected once).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn wide() -> Wide {
    use crate::model::isa::Isa;
    match Isa::active() {
        Isa::Avx512 => Wide::Avx512,
        Isa::Avx2 => Wide::Avx2,
        Isa::Scalar => Wide::Scalar,
    }
}

/// Run `f` compiled for AVX-512, or else AVX2+FMA, when the CPU has them (the kernels it calls are inlined into
/// it). Rust never contracts `a * b + c` into an FMA and never reorders a float sum on its own, so the results are
/// the same bits whichever is used.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        match wide() {
            // SAFETY: `simd_avx512` only requires AVX-512F, AVX2 and FMA, which `wide` detected.
            Wide::Avx512 => return unsafe { simd_avx512(f) },
            // SAFETY: `simd_avx2` only requires AVX2 and FMA, which `wide` detected.
            Wide::Avx2 => return unsafe { simd_avx2(f) },
            Wide::Scalar => {}
        }
    }
    f()
}

/// `simd_fn!(fn wide = body<T: Bound>(a: A, b: B) -> R);` defines `wide`, which calls `body` (a function marked
/// `#[inline(always)]`) compiled for AVX-512, or else AVX2+FMA, when the CPU has them, like [`simd`]. For large
/// kernels: a closure passed to [`simd`] is inlined into the wide region only when the inliner finds it small.
macro_rules! simd_fn {
    ($vis:vis fn $name:ident = $imp:ident<$T:ident: $B:path>($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)?) => {
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$T: $B>($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                /// # Safety
                /// The CPU must support AVX-512F, AVX2 and FMA.
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4<$T: $B>($($a: $t),*) $(-> $r)? {
                    $imp($($a),*)
                }
                /// # Safety
                /// The CPU must support AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3<$T: $B>($($a: $t),*) $(-> $r)? {
                    $imp($($a),*)
                }
                match $crate::model::kernels::par::wide() {
                    // SAFETY: `wide` detected the features `v4` needs.
                    $crate::model::kernels::par::Wide::Avx512 => return unsafe { v4($($a),*) },
                    // SAFETY: `wide` detected the features `v3` needs.
                    $crate::model::kernels::par::Wide::Avx2 => return unsafe { v3($($a),*) },
                    $crate::model::kernels::par::Wide::Scalar => {}
                }
            }
            $imp($($a),*)
        }
    };
}
pub(crate) use simd_fn;

/// `f()` compiled with AVX-512F, AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn simd_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `f()` compiled with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn simd_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_every_row_once_in_order() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool");
        pool.install(|| {
            let mut out = vec![0usize; 7 * 5000];
            let firsts = par_rows(&mut out, 5000, 0, |r0, ch| {
                for (i, row) in ch.chunks_mut(5000).enumerate() {
                    row.fill(r0 + i);
                }
                r0
            });
            // 7 rows, at most one part per row: 7 parts of one row, on 3 threads or 1.
            assert_eq!(firsts, (0..7).collect::<Vec<_>>());
            for (r, row) in out.chunks(5000).enumerate() {
                assert!(row.iter().all(|&v| v == r));
            }
            // 5 rows in 3 parts of 2: ranges [0,2), [2,4), [4,5).
            assert_eq!(
                parts(1 << 20, 1000, 10),
                SPLIT,
                "the split follows no pool size"
            );
            let s = par_sum_rows(5, 3, 2, |r0, r1| vec![(r1 - r0) as f64, r0 as f64]);
            assert_eq!(s, vec![5.0, 6.0]);
        });
    }
}
