//! The register tiles of the portable gemm ([`super::gemm`]): `acc[r][c] (+)= sum_k a[k][r] * b[k][c]` over a
//! packed `MR`-row panel of A and `NR`-column panel of B.
//!
//! Every tile computes each element the same way: from zero (or the value it stored after the previous block of
//! k), one fused multiply-add per term, in increasing k. One FMA rounds once whether it is a 16-lane AVX-512
//! instruction, an 8-lane AVX2 one or the scalar `mul_add`, so the three give the same bits; only how many
//! elements are computed at once differs.

use super::float::Float;

/// Where a tile reads A: row `r` (clamped to the last real row, so a partial tile reads valid memory and its extra
/// rows are discarded) at `ptr + r * rs`, term `kk` at `+ kk * cs`. A is never packed: a tile broadcasts one value
/// of A at a time, which costs the same at any stride.
#[derive(Clone, Copy)]
pub(crate) struct ASrc<T> {
    pub ptr: *const T,
    pub rs: usize,
    pub cs: usize,
    /// Real rows (>= 1) from `ptr`.
    pub rows: usize,
}

/// Where a tile reads B: term `kk`'s `NR` values at `ptr + kk * ld` (a packed panel, `ld = NR`, or B itself).
#[derive(Clone, Copy)]
pub(crate) struct BSrc<T> {
    pub ptr: *const T,
    pub ld: usize,
}

/// A register tile: `MR` x `NR` accumulators.
pub(crate) trait Tile<T> {
    /// Rows of A per tile.
    const MR: usize;
    /// Columns of B per tile.
    const NR: usize;
    /// `acc` (`MR` x `NR`, row-major) = (`first` ? 0 : `acc`) + the `kc` terms of `a` and `b`, in increasing k.
    ///
    /// # Safety
    /// `a` and `b` are valid for `kc` terms (and `MR` rows, `NR` columns); `acc` holds `MR * NR` values; the CPU has
    /// the tile's instruction set.
    unsafe fn tile(kc: usize, a: ASrc<T>, b: BSrc<T>, acc: &mut [T], first: bool);
}

/// The row pointers of a tile's A.
#[inline(always)]
unsafe fn rows<T, const MR: usize>(a: ASrc<T>) -> [*const T; MR] {
    std::array::from_fn(|r| a.ptr.add(r.min(a.rows - 1) * a.rs))
}

/// Plain Rust, any float type: `mul_add` per element.
pub(crate) struct Plain;

impl<T: Float> Tile<T> for Plain {
    const MR: usize = 4;
    const NR: usize = 8;
    #[inline(always)]
    unsafe fn tile(kc: usize, a: ASrc<T>, b: BSrc<T>, acc: &mut [T], first: bool) {
        let ar = rows::<T, 4>(a);
        let mut c = [[T::z(); 8]; 4];
        if !first {
            for (r, row) in c.iter_mut().enumerate() {
                row.copy_from_slice(&acc[r * 8..r * 8 + 8]);
            }
        }
        for kk in 0..kc {
            let bk = std::slice::from_raw_parts(b.ptr.add(kk * b.ld), 8);
            for (row, p) in c.iter_mut().zip(ar) {
                let av = *p.add(kk * a.cs);
                for (cv, &bv) in row.iter_mut().zip(bk) {
                    *cv = av.mul_add_(bv, *cv);
                }
            }
        }
        for (r, row) in c.iter().enumerate() {
            acc[r * 8..r * 8 + 8].copy_from_slice(row);
        }
    }
}

/// AVX-512F, f32: 8 rows x 32 columns (16 zmm accumulators).
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Tile<f32> for Avx512 {
    const MR: usize = 8;
    const NR: usize = 32;
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn tile(kc: usize, a: ASrc<f32>, b: BSrc<f32>, acc: &mut [f32], first: bool) {
        use std::arch::x86_64::*;
        assert!(acc.len() >= 256);
        let ar = rows::<f32, 8>(a);
        let o = acc.as_mut_ptr();
        let mut c = [[_mm512_setzero_ps(); 2]; 8];
        if !first {
            for (r, row) in c.iter_mut().enumerate() {
                row[0] = _mm512_loadu_ps(o.add(r * 32));
                row[1] = _mm512_loadu_ps(o.add(r * 32 + 16));
            }
        }
        for kk in 0..kc {
            let bk = b.ptr.add(kk * b.ld);
            let b0 = _mm512_loadu_ps(bk);
            let b1 = _mm512_loadu_ps(bk.add(16));
            let ak = kk * a.cs;
            for (row, p) in c.iter_mut().zip(ar) {
                let av = _mm512_set1_ps(*p.add(ak));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
        }
        for (r, row) in c.iter().enumerate() {
            _mm512_storeu_ps(o.add(r * 32), row[0]);
            _mm512_storeu_ps(o.add(r * 32 + 16), row[1]);
        }
    }
}

/// AVX2 + FMA, f32: 6 rows x 16 columns (12 ymm accumulators).
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Tile<f32> for Avx2 {
    const MR: usize = 6;
    const NR: usize = 16;
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile(kc: usize, a: ASrc<f32>, b: BSrc<f32>, acc: &mut [f32], first: bool) {
        use std::arch::x86_64::*;
        assert!(acc.len() >= 96);
        let ar = rows::<f32, 6>(a);
        let o = acc.as_mut_ptr();
        let mut c = [[_mm256_setzero_ps(); 2]; 6];
        if !first {
            for (r, row) in c.iter_mut().enumerate() {
                row[0] = _mm256_loadu_ps(o.add(r * 16));
                row[1] = _mm256_loadu_ps(o.add(r * 16 + 8));
            }
        }
        for kk in 0..kc {
            let bk = b.ptr.add(kk * b.ld);
            let b0 = _mm256_loadu_ps(bk);
            let b1 = _mm256_loadu_ps(bk.add(8));
            let ak = kk * a.cs;
            for (row, p) in c.iter_mut().zip(ar) {
                let av = _mm256_broadcast_ss(&*p.add(ak));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
        }
        for (r, row) in c.iter().enumerate() {
            _mm256_storeu_ps(o.add(r * 16), row[0]);
            _mm256_storeu_ps(o.add(r * 16 + 8), row[1]);
        }
    }
}
