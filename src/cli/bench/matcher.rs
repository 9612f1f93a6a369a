//! The ridge matcher's cost vs number of tasks: teaching it one task (`add_task`: the task's running sums,
//! O(n d²) for n features of dimension d, then a re-solve) and the solve alone (`refit`: Cholesky of the d x d
//! system, O(d³ + d² T)), on synthetic pooled features of LiteMedSAM's width (256, plus the bias).

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::common::{median, time_it};
use evosam::strategy::matcher::{MatcherConfig, RidgeMatcher};
use evosam::Result;

/// Width of LiteMedSAM's pooled embedding (the matcher's input).
pub const EMBED_DIM: usize = 256;

/// The matcher's figures after T tasks.
#[derive(Clone, Copy, Debug)]
pub struct MatcherFigures {
    /// Regression feature dimension d (projection or input, plus the bias).
    pub dim: usize,
    /// Median seconds of one `add_task` (sums + re-solve) over the T tasks.
    pub add_task_s: f64,
    /// Median seconds of the solve alone with T tasks.
    pub solve_s: f64,
    /// Bytes of state (sums, weights, projection) after T tasks.
    pub state_bytes: usize,
}

/// `n` pooled features of `dim` values of task `t`: a task-specific mean plus noise (deterministic from `seed`).
pub fn task_features(t: usize, n: usize, dim: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut mean_rng = ChaCha8Rng::seed_from_u64(seed ^ (t as u64).wrapping_mul(0x9e37_79b9));
    let mean: Vec<f64> = (0..dim).map(|_| mean_rng.random_range(-1.0..1.0)).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1) ^ ((t as u64) << 20));
    (0..n)
        .map(|_| {
            mean.iter()
                .map(|m| m + 0.1 * rng.random_range(-1.0..1.0))
                .collect()
        })
        .collect()
}

/// The `evosam` preset's matcher settings, with `projection_dim`.
pub fn preset_config(projection_dim: usize) -> MatcherConfig {
    MatcherConfig {
        lambda: 1e-3,
        class_balanced: true,
        projection_dim,
        ..Default::default()
    }
}

/// Teach a fresh matcher `tasks` tasks of `per_task` features each, timing every `add_task`, then time the solve.
pub fn measure(
    tasks: usize,
    per_task: usize,
    projection_dim: usize,
    reps: usize,
) -> Result<MatcherFigures> {
    let mut m = RidgeMatcher::new(EMBED_DIM, preset_config(projection_dim))?;
    let mut adds = Vec::new();
    for t in 0..tasks {
        let f = task_features(t, per_task, EMBED_DIM, 7);
        let t0 = Instant::now();
        m.add_task(&format!("task{t}"), &f)?;
        adds.push(t0.elapsed().as_secs_f64());
    }
    let solve_s = time_it(reps, || m.refit())?;
    Ok(MatcherFigures {
        dim: m.feature_dim(),
        add_task_s: median(adds),
        solve_s,
        state_bytes: m.num_stored_values() * std::mem::size_of::<f64>(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_matcher_grows_by_one_task_of_sums_per_task() {
        let a = super::measure(2, 4, 0, 1).unwrap();
        let b = super::measure(4, 4, 0, 1).unwrap();
        assert_eq!(a.dim, super::EMBED_DIM + 1);
        // per task: d x d sums and d sums, plus one column of weights
        let per_task = (a.dim * a.dim + a.dim + a.dim) * 8;
        assert_eq!(b.state_bytes - a.state_bytes, 2 * per_task);
        assert!(a.add_task_s > 0.0 && a.solve_s > 0.0);
    }
}
