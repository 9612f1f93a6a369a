//! What the benchmarks share: thread counts, medians and timing, this process's memory, the compute pool and
//! Markdown tables.

use std::time::Instant;

use evosam::Result;

/// `threads`, or all cores when it is 0.
pub fn thread_count(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

/// The median (upper middle for an even count); NaN for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median seconds of `reps` calls of `f` (at least one), after one warm-up call.
pub fn time_it(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut ts = Vec::new();
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        f()?;
        ts.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(ts))
}

pub use evosam::runner::timing::peak_rss_mb;
use evosam::runner::timing::proc_status_mb;

/// Resident set size of this process now, in MiB (Linux), if known.
pub fn rss_mb() -> Option<f64> {
    proc_status_mb("VmRSS:")
}

/// Start a new peak-RSS measurement: the kernel resets this process's peak to its current RSS (Linux 4.0+; false
/// where it cannot, and then [`peak_rss_mb`] is the peak since the process started).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Run `f` on a rayon pool of `threads` threads, the pool `evosam run` computes in: the kernels and candle's gemm
/// run on the pool they are called from (candle's gemm also splits its work by RAYON_NUM_THREADS, which the binary
/// sets to the same number).
pub fn on_pool<T: Send>(threads: usize, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    evosam::runner::compute_pool(threads)?.install(f)
}

/// A Markdown table: a header row, its alignment row (first column left, the others right) and the rows.
pub fn markdown(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|", header.join(" | "));
    for i in 0..header.len() {
        s.push_str(if i == 0 { "---|" } else { "---:|" });
    }
    s.push('\n');
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_and_table() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert!(super::median(vec![]).is_nan());
        let t = super::markdown(&["a", "b"], &[vec!["x".into(), "1".into()]]);
        assert_eq!(t, "| a | b |\n|---|---:|\n| x | 1 |\n");
    }
}
