//! Paired differences and a one-sided confidence bound of their mean (a leaf: the chain gate and the keep rules
//! use it).

/// A one-sided 90% confidence bound (Student t) of the mean of paired differences: the lower bound, or the upper
/// one with `upper`. None with fewer than two values.
pub fn mean_bound(v: &[f64], upper: bool) -> Option<f64> {
    let n = v.len();
    if n < 2 {
        return None;
    }
    let m = v.iter().sum::<f64>() / n as f64;
    let sd = (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64).sqrt();
    use statrs::distribution::ContinuousCDF;
    let t = statrs::distribution::StudentsT::new(0.0, 1.0, (n - 1) as f64)
        .ok()?
        .inverse_cdf(0.9);
    let half = t * sd / (n as f64).sqrt();
    Some(if upper { m + half } else { m - half })
}

/// Per-item differences `a - b` (the paired values of two models scored on the same images).
pub fn paired(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}
