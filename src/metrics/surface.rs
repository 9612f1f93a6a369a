//! Overlap and boundary metrics of one case on a grid with physical spacing: Dice, normalised surface Dice
//! (NSD) and the 95th-percentile Hausdorff distance (HD95), in 2-D (images) or 3-D (volumes).
//!
//! Definitions (the ones of MONAI's `compute_surface_dice` / `compute_hausdorff_distance` on voxel borders):
//! - the **border** of a mask: its foreground voxels with at least one background neighbour along an axis (the
//!   4- or 6-neighbourhood), voxels outside the grid counting as background;
//! - `d(a, B)`: Euclidean distance in physical units (mm, or pixels with unit spacing) from the centre of border
//!   voxel `a` to the nearest border voxel of the other mask, from an exact distance transform with the grid's
//!   spacing;
//! - **NSD** at tolerance `tau` = (#{a in border(P): d(a, border(G)) <= tau} + #{b in border(G): d(b, border(P))
//!   <= tau}) / (|border(P)| + |border(G)|);
//! - **HD95** = max(p95 of d(border(P) -> border(G)), p95 of d(border(G) -> border(P))), percentiles with linear
//!   interpolation (NumPy's default);
//! - empty masks: both empty gives Dice 1, NSD 1, HD95 0; exactly one empty gives Dice 0, NSD 0 and HD95 = the
//!   grid's diagonal (the largest distance on it), so that every case has a finite value to average.
//!
//! The module is a leaf (plain slices in, numbers out; percentiles from `util::quantile_in_place`); [`super`] turns predictions into these calls.

/// Dice, NSD and HD95 of one case.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CaseScores {
    /// 2|P∩G| / (|P| + |G|).
    pub dice: f64,
    /// Normalised surface Dice at the tolerance asked for.
    pub nsd: f64,
    /// 95th-percentile Hausdorff distance (physical units of the spacing).
    pub hd95: f64,
}

/// Scores of a prediction against a ground truth on a grid of `dims` (row-major, last axis fastest; 1 to 3
/// axes) with `spacing` per axis, NSD at tolerance `tau` (same unit as the spacing).
pub fn case_scores(
    pred: &[bool],
    gt: &[bool],
    dims: &[usize],
    spacing: &[f64],
    tau: f64,
) -> CaseScores {
    debug_assert_eq!(pred.len(), dims.iter().product::<usize>());
    debug_assert_eq!(gt.len(), pred.len());
    debug_assert_eq!(dims.len(), spacing.len());
    let (mut inter, mut np, mut ng) = (0usize, 0usize, 0usize);
    for (&p, &g) in pred.iter().zip(gt) {
        inter += (p && g) as usize;
        np += p as usize;
        ng += g as usize;
    }
    if np + ng == 0 {
        return CaseScores {
            dice: 1.0,
            nsd: 1.0,
            hd95: 0.0,
        };
    }
    let dice = 2.0 * inter as f64 / (np + ng) as f64;
    if np == 0 || ng == 0 {
        let diag = dims
            .iter()
            .zip(spacing)
            .map(|(&n, &s)| (n as f64 * s).powi(2))
            .sum::<f64>()
            .sqrt();
        return CaseScores {
            dice,
            nsd: 0.0,
            hd95: diag,
        };
    }
    // distances only involve border voxels of both masks: the union's bounding box gives the same values
    let (bdims, [p, g]) = crop_to_union(dims, [pred, gt]);
    let (bp, bg) = (border(&p, &bdims), border(&g, &bdims));
    let dp = directed(&bp, &bg, &bdims, spacing);
    let dg = directed(&bg, &bp, &bdims, spacing);
    let within = |d: &[f64]| d.iter().filter(|&&x| x <= tau).count();
    let nsd = (within(&dp) + within(&dg)) as f64 / (dp.len() + dg.len()) as f64;
    let p95 = |mut d: Vec<f64>| crate::util::quantile_in_place(&mut d, 0.95).unwrap_or(0.0);
    let hd95 = p95(dp).max(p95(dg));
    CaseScores { dice, nsd, hd95 }
}

/// Both masks cropped to the bounding box of their union (which is not empty).
fn crop_to_union(dims: &[usize], masks: [&[bool]; 2]) -> (Vec<usize>, [Vec<bool>; 2]) {
    let n = dims.len();
    let mut lo = dims.to_vec();
    let mut hi = vec![0usize; n];
    let mut idx = vec![0usize; n];
    for (i, (&a, &b)) in masks[0].iter().zip(masks[1]).enumerate() {
        if a || b {
            unravel(i, dims, &mut idx);
            for a in 0..n {
                lo[a] = lo[a].min(idx[a]);
                hi[a] = hi[a].max(idx[a]);
            }
        }
    }
    let bdims: Vec<usize> = (0..n).map(|a| hi[a] - lo[a] + 1).collect();
    let total: usize = bdims.iter().product();
    let (mut p, mut g) = (Vec::with_capacity(total), Vec::with_capacity(total));
    let mut bidx = vec![0usize; n];
    for j in 0..total {
        unravel(j, &bdims, &mut bidx);
        let i = bidx
            .iter()
            .zip(&lo)
            .zip(dims)
            .fold(0, |acc, ((&b, &l), &d)| acc * d + b + l);
        p.push(masks[0][i]);
        g.push(masks[1][i]);
    }
    (bdims, [p, g])
}

fn unravel(mut i: usize, dims: &[usize], idx: &mut [usize]) {
    for a in (0..dims.len()).rev() {
        idx[a] = i % dims[a];
        i /= dims[a];
    }
}

fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for a in (0..dims.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * dims[a + 1];
    }
    s
}

/// Foreground voxels with a background (or outside) neighbour along some axis.
pub fn border(mask: &[bool], dims: &[usize]) -> Vec<bool> {
    let st = strides(dims);
    let mut idx = vec![0usize; dims.len()];
    (0..mask.len())
        .map(|i| {
            if !mask[i] {
                return false;
            }
            unravel(i, dims, &mut idx);
            (0..dims.len()).any(|a| {
                idx[a] == 0 || idx[a] + 1 == dims[a] || !mask[i - st[a]] || !mask[i + st[a]]
            })
        })
        .collect()
}

/// Distance from every `from` voxel to the nearest `to` voxel (in `from`'s row-major order).
fn directed(from: &[bool], to: &[bool], dims: &[usize], spacing: &[f64]) -> Vec<f64> {
    let d2 = distance_sq(to, dims, spacing);
    from.iter()
        .zip(&d2)
        .filter(|(&f, _)| f)
        .map(|(_, &d)| d.sqrt())
        .collect()
}

/// Exact squared Euclidean distance from every voxel to the nearest `feature` voxel (infinite when there is
/// none), with `spacing` per axis: Felzenszwalb and Huttenlocher's separable lower-envelope algorithm, one
/// pass per axis.
pub fn distance_sq(feature: &[bool], dims: &[usize], spacing: &[f64]) -> Vec<f64> {
    let mut f: Vec<f64> = feature
        .iter()
        .map(|&x| if x { 0.0 } else { f64::INFINITY })
        .collect();
    let st = strides(dims);
    let total = f.len();
    let mut line = Vec::new();
    let mut out = Vec::new();
    let (mut v, mut z) = (Vec::new(), Vec::new());
    for a in 0..dims.len() {
        let (n, s) = (dims[a], st[a]);
        // every line along axis a starts at an index whose a-th coordinate is 0
        for start in 0..total {
            if (start / s) % n != 0 {
                continue;
            }
            line.clear();
            line.extend((0..n).map(|k| f[start + k * s]));
            out.resize(n, 0.0);
            envelope(&line, spacing[a], &mut out, &mut v, &mut z);
            for k in 0..n {
                f[start + k * s] = out[k];
            }
        }
    }
    f
}

/// One axis of the distance transform: out[q] = min_p ((q - p) * s)^2 + f[p].
fn envelope(f: &[f64], s: f64, out: &mut [f64], v: &mut Vec<usize>, z: &mut Vec<f64>) {
    v.clear();
    z.clear();
    let x = |q: usize| q as f64 * s;
    for q in 0..f.len() {
        if !f[q].is_finite() {
            continue;
        }
        loop {
            match v.last() {
                None => {
                    v.push(q);
                    z.push(f64::NEG_INFINITY);
                    break;
                }
                Some(&p) => {
                    let cross =
                        ((f[q] + x(q) * x(q)) - (f[p] + x(p) * x(p))) / (2.0 * (x(q) - x(p)));
                    if cross <= *z.last().unwrap_or(&f64::NEG_INFINITY) {
                        v.pop();
                        z.pop();
                    } else {
                        v.push(q);
                        z.push(cross);
                        break;
                    }
                }
            }
        }
    }
    if v.is_empty() {
        out.iter_mut().for_each(|o| *o = f64::INFINITY);
        return;
    }
    let mut k = 0;
    for (q, o) in out.iter_mut().enumerate() {
        while k + 1 < v.len() && z[k + 1] < x(q) {
            k += 1;
        }
        let d = x(q) - x(v[k]);
        *o = d * d + f[v[k]];
    }
}

#[cfg(test)]
mod tests;
