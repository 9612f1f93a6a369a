//! Summary statistics, the paired Wilcoxon signed-rank test, and the rank statistics of a comparison across
//! experiments: average ranks, the Friedman test and the Nemenyi critical difference (Demsar 2006).

use serde::Serialize;

/// Mean and sample standard deviation (denominator n-1; 0 when n = 1). `None` for no values.
pub fn mean_std(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Some((mean, 0.0));
    }
    let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
    Some((mean, (ss / (n - 1) as f64).sqrt()))
}

/// Mean, sample std (n-1) and count.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n - 1; 0 for one value).
    pub std: f64,
    /// Number of (finite) values.
    pub n: usize,
}

impl Stat {
    /// Statistics of the finite values (NaN/inf are left out; `n` counts the values used).
    pub fn of(values: &[f64]) -> Option<Stat> {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let values = finite.as_slice();
        mean_std(values).map(|(mean, std)| Stat {
            mean,
            std,
            n: values.len(),
        })
    }
}

/// How the p-value was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum WilcoxonMethod {
    /// Exact null distribution of W+ (n <= 25 non-zero differences, no ties among |d|).
    Exact,
    /// Normal approximation with tie correction of the variance and continuity correction.
    Normal,
}

/// Result of a two-sided paired Wilcoxon signed-rank test.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Wilcoxon {
    /// Number of pairs given.
    pub n_pairs: usize,
    /// Non-zero differences used (zero differences are dropped: Wilcoxon's method).
    pub n_used: usize,
    /// Sum of ranks of positive differences (x > y).
    pub w_plus: f64,
    /// Sum of ranks of negative differences.
    pub w_minus: f64,
    /// Test statistic min(W+, W-) (as scipy.stats.wilcoxon reports it for two-sided tests).
    pub statistic: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// Exact distribution or normal approximation.
    pub method: WilcoxonMethod,
}

/// Largest number of non-zero differences for which the exact distribution is used.
pub const EXACT_MAX_N: usize = 25;

/// Two-sided paired Wilcoxon signed-rank test of x against y (differences d = x - y).
/// Zero differences are dropped (Wilcoxon's method). Exact null distribution for n <= 25 without ties,
/// otherwise the normal approximation with tie-corrected variance and continuity correction.
/// Returns `None` when no non-zero difference is left (or the inputs differ in length / are not finite).
pub fn wilcoxon_signed_rank(x: &[f64], y: &[f64]) -> Option<Wilcoxon> {
    if x.len() != y.len() {
        return None;
    }
    let mut d: Vec<f64> = Vec::with_capacity(x.len());
    for (a, b) in x.iter().zip(y) {
        let v = a - b;
        if !v.is_finite() {
            return None;
        }
        if v != 0.0 {
            d.push(v);
        }
    }
    let n = d.len();
    if n == 0 {
        return None;
    }
    // Average ranks of |d|.
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&i, &j| d[i].abs().total_cmp(&d[j].abs()));
    let mut ranks = vec![0.0; n];
    let mut tie_sizes: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && d[idx[j]].abs() == d[idx[i]].abs() {
            j += 1;
        }
        let avg = (i + 1 + j) as f64 / 2.0; // mean of ranks i+1..=j
        for &k in &idx[i..j] {
            ranks[k] = avg;
        }
        if j - i > 1 {
            tie_sizes.push(j - i);
        }
        i = j;
    }
    // "+ 0.0" turns the -0.0 that an empty f64 sum yields into 0.0.
    let w_plus: f64 = (0..n)
        .filter(|&k| d[k] > 0.0)
        .map(|k| ranks[k])
        .sum::<f64>()
        + 0.0;
    let w_minus: f64 = (0..n)
        .filter(|&k| d[k] < 0.0)
        .map(|k| ranks[k])
        .sum::<f64>()
        + 0.0;
    let t = w_plus.min(w_minus);
    let (p, method) = if n <= EXACT_MAX_N && tie_sizes.is_empty() {
        (exact_two_sided(n, t), WilcoxonMethod::Exact)
    } else {
        let nf = n as f64;
        let mean = nf * (nf + 1.0) / 4.0;
        let tie: f64 = tie_sizes
            .iter()
            .map(|&t| (t * t * t - t) as f64)
            .sum::<f64>();
        let var = nf * (nf + 1.0) * (2.0 * nf + 1.0) / 24.0 - tie / 48.0;
        let p = if var <= 0.0 {
            1.0
        } else {
            let diff = t - mean;
            let cc = if diff > 0.0 {
                0.5
            } else if diff < 0.0 {
                -0.5
            } else {
                0.0
            };
            let z = (diff - cc) / var.sqrt();
            // Two-sided: 2 * (1 - Phi(|z|)) = erfc(|z| / sqrt(2)).
            libm::erfc(z.abs() / std::f64::consts::SQRT_2)
        };
        (p.min(1.0), WilcoxonMethod::Normal)
    };
    Some(Wilcoxon {
        n_pairs: x.len(),
        n_used: n,
        w_plus,
        w_minus,
        statistic: t,
        p_value: p,
        method,
    })
}

/// Exact two-sided p-value: 2 * P(W+ <= t) under H0 (capped at 1), W+ = sum of a random subset of 1..=n.
fn exact_two_sided(n: usize, t: f64) -> f64 {
    let max = n * (n + 1) / 2;
    // counts[s] = number of subsets of {1..k} with sum s.
    let mut counts = vec![0f64; max + 1];
    counts[0] = 1.0;
    for k in 1..=n {
        for s in (k..=max).rev() {
            counts[s] += counts[s - k];
        }
    }
    let total = 2f64.powi(n as i32);
    let t_floor = t.floor() as usize; // without ties t is an integer
    let cdf: f64 = counts[..=t_floor.min(max)].iter().sum::<f64>() / total;
    (2.0 * cdf).min(1.0)
}

/// Ranks of `values` (1 = best), ties sharing the mean of the ranks they span (as `scipy.stats.rankdata`).
/// `higher_is_better` picks the direction. Non-finite values rank last (ties among themselves).
pub fn ranks(values: &[f64], higher_is_better: bool) -> Vec<f64> {
    let key = |v: f64| {
        let v = if higher_is_better { -v } else { v };
        if v.is_finite() {
            v
        } else {
            f64::INFINITY
        }
    };
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| key(values[a]).total_cmp(&key(values[b])));
    let mut out = vec![0.0; values.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i + 1;
        while j < idx.len() && key(values[idx[j]]) == key(values[idx[i]]) {
            j += 1;
        }
        for &k in &idx[i..j] {
            out[k] = (i + 1 + j) as f64 / 2.0;
        }
        i = j;
    }
    out
}

/// The Friedman test of k treatments over N blocks, from the ranks within each block.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Friedman {
    /// Blocks (experiments).
    pub n_blocks: usize,
    /// Treatments (strategies).
    pub k: usize,
    /// Average rank of each treatment over the blocks (1 = best), in the input's column order.
    pub avg_ranks: Vec<f64>,
    /// The chi-square statistic, corrected for ties (as `scipy.stats.friedmanchisquare`).
    pub statistic: f64,
    /// Degrees of freedom, k - 1.
    pub df: usize,
    /// Upper tail of the chi-square distribution with `df` degrees of freedom at `statistic`.
    pub p_value: f64,
}

/// Friedman test on `table[block][treatment]` (every block has every treatment), ranking within each block
/// with [`ranks`] (`higher_is_better`). chi2 = 12 / (N k (k+1)) * sum_j R_j^2 - 3 N (k+1) with R_j the rank sums,
/// divided by the tie correction 1 - sum (t^3 - t) / (N k (k^2 - 1)); p from the chi-square tail with k - 1 degrees
/// of freedom. `None` for fewer than 2 blocks or 2 treatments, ragged or non-finite input.
pub fn friedman(table: &[Vec<f64>], higher_is_better: bool) -> Option<Friedman> {
    use statrs::distribution::{ChiSquared, ContinuousCDF};
    let n = table.len();
    let k = table.first().map(|r| r.len()).unwrap_or(0);
    if n < 2
        || k < 2
        || table
            .iter()
            .any(|r| r.len() != k || r.iter().any(|v| !v.is_finite()))
    {
        return None;
    }
    let mut rank_sums = vec![0.0; k];
    let mut ties = 0.0;
    for row in table {
        let r = ranks(row, higher_is_better);
        for (s, v) in rank_sums.iter_mut().zip(&r) {
            *s += v;
        }
        // tie groups: equal ranks within the block
        let mut sorted = r.clone();
        sorted.sort_by(f64::total_cmp);
        let mut i = 0;
        while i < k {
            let mut j = i + 1;
            while j < k && sorted[j] == sorted[i] {
                j += 1;
            }
            let t = (j - i) as f64;
            ties += t * t * t - t;
            i = j;
        }
    }
    let (nf, kf) = (n as f64, k as f64);
    let ssq: f64 = rank_sums.iter().map(|r| r * r).sum();
    let raw = 12.0 / (nf * kf * (kf + 1.0)) * ssq - 3.0 * nf * (kf + 1.0);
    let c = 1.0 - ties / (nf * kf * (kf * kf - 1.0));
    // every block all tied: no evidence either way
    let statistic = if c > 0.0 { raw / c } else { 0.0 };
    let p_value = ChiSquared::new(kf - 1.0).ok()?.sf(statistic);
    Some(Friedman {
        n_blocks: n,
        k,
        avg_ranks: rank_sums.iter().map(|r| r / nf).collect(),
        statistic,
        df: k - 1,
        p_value,
    })
}

/// CDF of the studentized range of `k` independent standard normals (infinite degrees of freedom):
/// P(R <= q) = k * integral phi(z) (Phi(z) - Phi(z - q))^(k-1) dz, by Simpson's rule on [-9, 9 + q].
fn studentized_range_cdf(q: f64, k: usize) -> f64 {
    let phi = |z: f64| (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let cdf = |z: f64| 0.5 * libm::erfc(-z / std::f64::consts::SQRT_2);
    let (a, b, m) = (-9.0, 9.0 + q, 4000);
    let h = (b - a) / m as f64;
    let f = |z: f64| phi(z) * (cdf(z) - cdf(z - q)).max(0.0).powi(k as i32 - 1);
    let mut s = f(a) + f(b);
    for i in 1..m {
        s += f(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    (k as f64 * s * h / 3.0).min(1.0)
}

/// The Nemenyi test's critical value q_alpha = (upper alpha quantile of the studentized range of k normals) / sqrt(2),
/// Demsar (2006), Table 5a (e.g. 2.343 for k = 3, 3.164 for k = 10 at alpha = 0.05); found by bisection.
pub fn nemenyi_q(k: usize, alpha: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 12.0);
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if studentized_range_cdf(mid, k) < 1.0 - alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi) / std::f64::consts::SQRT_2
}

/// The Nemenyi critical difference of average ranks, CD = q_alpha * sqrt(k (k+1) / (6 N)) for k treatments over
/// N blocks (Demsar 2006): two treatments whose average ranks differ by at least CD differ significantly.
pub fn nemenyi_cd(k: usize, n_blocks: usize, alpha: f64) -> f64 {
    let (kf, nf) = (k as f64, n_blocks as f64);
    nemenyi_q(k, alpha) * (kf * (kf + 1.0) / (6.0 * nf)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_sample() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!((m - 2.5).abs() < 1e-15);
        // sum of squares 5, / 3
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(mean_std(&[0.7]), Some((0.7, 0.0)));
        assert_eq!(mean_std(&[]), None);
    }

    // Reference values from scipy 1.17.1 (pip install scipy), computed with
    //   from scipy.stats import wilcoxon
    //   wilcoxon(x, y, zero_method="wilcox", alternative="two-sided", method=M, correction=True)
    // with M = "exact" for the tie-free small cases and M = "approx" otherwise.
    // The printed (statistic, pvalue) pairs are pasted below.

    #[test]
    fn exact_small_example_matches_scipy() {
        // Differences 1..=10 with signs -,+,-,+,+,+,+,+,+,+ (hand check: W- = 1 + 3 = 4).
        let x = [9.0, 2.0, 7.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        let y = [10.0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let w = wilcoxon_signed_rank(&x, &y).unwrap();
        assert_eq!(w.method, WilcoxonMethod::Exact);
        assert_eq!(w.n_used, 10);
        assert_eq!(w.w_minus, 4.0);
        assert_eq!(w.w_plus, 51.0);
        assert_eq!(w.statistic, 4.0);
        // Hand count: subsets of 1..10 with sum <= 4: {}, {1}, {2}, {3}, {4}, {1,2}, {1,3} = 7.
        // p = 2 * 7 / 1024.
        assert!((w.p_value - 14.0 / 1024.0).abs() < 1e-15);
        assert!((w.p_value - SCIPY_EXACT_P).abs() < 1e-12);
    }

    // scipy: wilcoxon([9,2,7,4,5,6,7,8,9,10],[10,0,10,0,0,0,0,0,0,0], method="exact") -> (4.0, 0.013671875)
    const SCIPY_EXACT_P: f64 = 0.013671875;

    #[test]
    fn zero_differences_dropped() {
        // Same as above plus three zero differences: identical result (Wilcoxon's method).
        let mut x = vec![9.0, 2.0, 7.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        let mut y = vec![10.0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        x.extend([0.5, 0.5, 0.25]);
        y.extend([0.5, 0.5, 0.25]);
        let w = wilcoxon_signed_rank(&x, &y).unwrap();
        assert_eq!(w.n_pairs, 13);
        assert_eq!(w.n_used, 10);
        assert!((w.p_value - SCIPY_EXACT_P).abs() < 1e-12);
        assert!(wilcoxon_signed_rank(&[1.0, 2.0], &[1.0, 2.0]).is_none());
    }

    #[test]
    fn normal_approximation_with_ties_matches_scipy() {
        // Differences with ties: [1,1,2,-2,3,3,3,-4,5,6,7,-1]
        let d = [
            1.0, 1.0, 2.0, -2.0, 3.0, 3.0, 3.0, -4.0, 5.0, 6.0, 7.0, -1.0,
        ];
        let zeros = vec![0.0; d.len()];
        let w = wilcoxon_signed_rank(&d, &zeros).unwrap();
        assert_eq!(w.method, WilcoxonMethod::Normal);
        // Hand ranks: |1|x3 -> 2, |2|x2 -> 4.5, |3|x3 -> 7, 4 -> 9, 5 -> 10, 6 -> 11, 7 -> 12.
        // W- = 2 + 4.5 + 9 = 15.5, W+ = 78 - 15.5 = 62.5.
        assert_eq!(w.w_minus, 15.5);
        assert_eq!(w.w_plus, 62.5);
        assert!((w.statistic - SCIPY_TIES_STAT).abs() < 1e-12);
        assert!((w.p_value - SCIPY_TIES_P).abs() < 1e-9, "{}", w.p_value);
    }

    // scipy: wilcoxon([1,1,2,-2,3,3,3,-4,5,6,7,-1], method="approx", correction=True)
    const SCIPY_TIES_STAT: f64 = 15.5;
    const SCIPY_TIES_P: f64 = 0.070211063906259;

    #[test]
    fn large_n_uses_normal_approximation() {
        // n = 30 distinct differences 1..=30, the first 8 negative.
        let d: Vec<f64> = (1..=30)
            .map(|k| if k <= 8 { -(k as f64) } else { k as f64 })
            .collect();
        let zeros = vec![0.0; d.len()];
        let w = wilcoxon_signed_rank(&d, &zeros).unwrap();
        assert_eq!(w.method, WilcoxonMethod::Normal);
        assert_eq!(w.w_minus, 36.0);
        assert!((w.p_value - SCIPY_LARGE_P).abs() < 1e-9, "{}", w.p_value);
    }

    // scipy: wilcoxon(d, method="approx", correction=True) for d = [-1..-8, 9..30]
    const SCIPY_LARGE_P: f64 = 5.544688150746612e-05;

    #[test]
    fn exact_fractional_differences_match_scipy() {
        // scipy 1.17.1: wilcoxon([0.3,-0.1,0.25,0.05,0.4,-0.2,0.15], method="exact") -> (6.0, 0.21875)
        let d = [0.3, -0.1, 0.25, 0.05, 0.4, -0.2, 0.15];
        let w = wilcoxon_signed_rank(&d, &[0.0; 7]).unwrap();
        assert_eq!(w.method, WilcoxonMethod::Exact);
        assert_eq!(w.statistic, 6.0);
        assert!((w.p_value - 0.21875).abs() < 1e-12);
    }

    // The fixed table of the rank tests: 5 blocks (experiments) x 4 treatments (strategies), with ties in blocks
    // 2 (0.80, 0.80) and 5 (0.77, 0.77). Reference: scipy 1.17.1,
    //   t = np.array(TABLE); r = [rankdata(-row) for row in t]; np.mean(r, axis=0)  -> [1.2, 2.3, 3.2, 3.3]
    //   friedmanchisquare(*t.T) -> (8.937499999999998, 0.030133503572178515)
    // Hand check: rank sums 6, 11.5, 16, 16.5; 12/(5*4*5) * 696.5 - 3*5*5 = 8.58; ties 2 x (2^3 - 2) = 12,
    // correction 1 - 12/(5*4*15) = 0.96; 8.58 / 0.96 = 8.9375.
    const TABLE: [[f64; 4]; 5] = [
        [0.80, 0.75, 0.70, 0.72],
        [0.85, 0.80, 0.80, 0.60],
        [0.78, 0.79, 0.65, 0.66],
        [0.90, 0.70, 0.72, 0.71],
        [0.88, 0.81, 0.77, 0.77],
    ];

    #[test]
    fn ranks_share_ties_like_rankdata() {
        assert_eq!(ranks(&[0.85, 0.80, 0.80, 0.60], true), [1.0, 2.5, 2.5, 4.0]);
        assert_eq!(
            ranks(&[0.85, 0.80, 0.80, 0.60], false),
            [4.0, 2.5, 2.5, 1.0]
        );
        assert_eq!(ranks(&[f64::NAN, 0.5, 0.7], true), [3.0, 2.0, 1.0]);
    }

    #[test]
    fn friedman_matches_scipy_and_hand_computation() {
        let t: Vec<Vec<f64>> = TABLE.iter().map(|r| r.to_vec()).collect();
        let f = friedman(&t, true).unwrap();
        assert_eq!((f.n_blocks, f.k, f.df), (5, 4, 3));
        for (a, b) in f.avg_ranks.iter().zip([1.2, 2.3, 3.2, 3.3]) {
            assert!((a - b).abs() < 1e-12, "{:?}", f.avg_ranks);
        }
        assert!((f.statistic - 8.9375).abs() < 1e-12, "{}", f.statistic);
        assert!(
            (f.p_value - 0.030133503572178515).abs() < 1e-9,
            "{}",
            f.p_value
        );
        assert!(friedman(&t[..1], true).is_none());
        assert!(friedman(&[vec![1.0, 2.0], vec![1.0]], true).is_none());
    }

    #[test]
    fn nemenyi_critical_values_match_scipy_studentized_range() {
        // scipy 1.17.1: studentized_range.ppf(0.95, k, np.inf) / np.sqrt(2) (Demsar 2006, Table 5a, to 3 decimals)
        let scipy = [
            (2, 1.9599639845400534),
            (3, 2.343700586378409),
            (4, 2.569031772546482),
            (5, 2.7277743708703763),
            (6, 2.8497054196100016),
            (7, 2.9483200175296744),
            (8, 3.030878449614413),
            (9, 3.1017303413033805),
            (10, 3.163683577053373),
            (20, 3.5437991315177815),
        ];
        for (k, q) in scipy {
            assert!(
                (nemenyi_q(k, 0.05) - q).abs() < 1e-6,
                "k={k}: {}",
                nemenyi_q(k, 0.05)
            );
        }
        // CD for the table above: 2.569031772546482 * sqrt(4 * 5 / (6 * 5)) (hand)
        let cd = nemenyi_cd(4, 5, 0.05);
        assert!((cd - 2.569031772546482 * (20.0f64 / 30.0).sqrt()).abs() < 1e-6);
    }
}
