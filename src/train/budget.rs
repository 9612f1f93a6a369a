//! Training budgets that mean the same for every strategy, and the held-out validation split.
//!
//! A task's budget is either `epochs` passes over its training cases or, with `[train] steps = N`, exactly `N`
//! optimiser steps (the last pass is cut short). Steps are counted over the task's own batches: replay's memory
//! cases ride along in the same steps, and a joint learner with more data per task takes the same number of steps
//! as a fine-tuner, so a spec can give every strategy the same number of updates per task.
//!
//! The validation part (`[train] val_fraction`) is drawn per (experiment seed, task name) only, not per strategy
//! or order: every strategy of a cell row trains on the same images and selects its epoch on the same held-out
//! ones, so the comparison stays fair.

use crate::data::{Case, TaskData};
use crate::spec::TrainSpec;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// How many steps each pass ("epoch") of one task's training takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Steps of a full pass (batches of `batch_size`, capped by `max_steps_per_epoch`).
    pub steps_per_epoch: usize,
    /// Steps of each pass in order; their sum is the task's budget.
    pub epochs: Vec<usize>,
}

impl Schedule {
    /// The schedule of a task with `n_cases` training cases.
    pub fn new(train: &TrainSpec, n_cases: usize) -> Self {
        let bs = train.batch_size.max(1);
        let mut spe = n_cases.div_ceil(bs);
        if train.max_steps_per_epoch > 0 {
            spe = spe.min(train.max_steps_per_epoch);
        }
        if spe > 0 && train.steps > 0 {
            return Self::of_steps(spe, train.steps);
        }
        Self {
            steps_per_epoch: spe,
            epochs: if spe == 0 {
                Vec::new()
            } else {
                vec![spe; train.epochs]
            },
        }
    }

    /// `steps` optimiser steps in passes of `steps_per_epoch` (the last one shorter when they do not divide).
    pub fn of_steps(steps_per_epoch: usize, steps: usize) -> Self {
        let spe = steps_per_epoch.max(1);
        let mut epochs = vec![spe; steps / spe];
        if !steps.is_multiple_of(spe) {
            epochs.push(steps % spe);
        }
        Self {
            steps_per_epoch: spe,
            epochs,
        }
    }

    /// Total optimiser steps of the task.
    pub fn total_steps(&self) -> usize {
        self.epochs.iter().sum()
    }
}

/// Learning-rate factor of step `step` (0-based, counted within the task) under a linear warmup over the first
/// ceil(`warmup` x `total`) steps: (step + 1) / n during the warmup, 1 after it (and always 1 without warmup).
pub fn warmup_factor(warmup: f64, total: usize, step: usize) -> f64 {
    let n = (warmup * total as f64).ceil() as usize;
    if n == 0 || step >= n {
        1.0
    } else {
        (step + 1) as f64 / n as f64
    }
}

/// Number of validation cases for a task with `n` training cases: round(n * fraction), at least 1 when the
/// fraction is positive, and always leaving at least one case to train on.
pub fn n_validation(n: usize, fraction: f64) -> usize {
    if fraction <= 0.0 || n < 2 {
        return 0;
    }
    ((n as f64 * fraction).round() as usize).clamp(1, n - 1)
}

/// Move a seeded `fraction` of each task's training cases into its `val` part. The draw depends on the
/// experiment seed and the task's name only (see the module docs). The fraction counts images: the tiles of one
/// image (a tiled task) go to the same side.
pub fn split_validation(tasks: &[TaskData], seed: u64, fraction: f64) -> Vec<TaskData> {
    tasks
        .iter()
        .map(|t| {
            let mut t = t.clone();
            let (group_of, n_groups) = image_groups(&t.train);
            let n_val = n_validation(n_groups, fraction);
            if n_val == 0 {
                return t;
            }
            let s = crate::util::derive_seed(&["validation", &seed.to_string(), &t.name]);
            let mut idx: Vec<usize> = (0..n_groups).collect();
            idx.shuffle(&mut ChaCha8Rng::seed_from_u64(s));
            let mut val_idx = idx[..n_val].to_vec();
            val_idx.sort_unstable();
            let all = std::mem::take(&mut t.train);
            for (c, g) in all.into_iter().zip(group_of) {
                if val_idx.binary_search(&g).is_ok() {
                    t.val.push(c);
                } else {
                    t.train.push(c);
                }
            }
            t
        })
        .collect()
}

/// The group (source image) of each case, numbered in order of first appearance (one group per case, except
/// the tiles of one image, which share one), and the number of groups.
pub fn image_groups<'c>(cases: impl IntoIterator<Item = &'c Case>) -> (Vec<usize>, usize) {
    let mut names: Vec<&str> = Vec::new();
    let group = cases
        .into_iter()
        .map(|c| {
            let g = c
                .tile
                .as_ref()
                .map_or(c.id.as_str(), |x| x.image_id.as_str());
            match names.iter().position(|&x| x == g) {
                Some(i) => i,
                None => {
                    names.push(g);
                    names.len() - 1
                }
            }
        })
        .collect();
    (group, names.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(epochs: usize, steps: usize, bs: usize, cap: usize) -> TrainSpec {
        TrainSpec {
            epochs,
            steps,
            batch_size: bs,
            max_steps_per_epoch: cap,
            ..Default::default()
        }
    }

    #[test]
    fn warmup_ramps_linearly_over_the_stated_fraction() {
        // 16 steps, warmup 0.25 -> n = 4: factors 1/4, 2/4, 3/4, 1, then 1
        let f: Vec<f64> = (0..6).map(|i| warmup_factor(0.25, 16, i)).collect();
        assert_eq!(f, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        // ceil: 0.1 of 16 steps is 2 steps
        assert_eq!(warmup_factor(0.1, 16, 0), 0.5);
        assert_eq!(warmup_factor(0.1, 16, 1), 1.0);
        // none, and a budget of zero steps
        assert_eq!(warmup_factor(0.0, 16, 0), 1.0);
        assert_eq!(warmup_factor(0.5, 0, 0), 1.0);
        // the whole budget: the last step reaches the full rate
        assert_eq!(warmup_factor(1.0, 8, 7), 1.0);
        assert_eq!(warmup_factor(1.0, 8, 0), 0.125);
    }

    #[test]
    fn steps_budget_counts_exactly() {
        // 10 cases, batch 4 -> 3 steps per pass; 7 steps = 3 + 3 + 1
        let s = Schedule::new(&spec(99, 7, 4, 0), 10);
        assert_eq!(s.steps_per_epoch, 3);
        assert_eq!(s.epochs, vec![3, 3, 1]);
        assert_eq!(s.total_steps(), 7);
        // a budget that is a multiple of the pass
        assert_eq!(Schedule::new(&spec(1, 6, 4, 0), 10).epochs, vec![3, 3]);
        // fewer steps than one pass
        assert_eq!(Schedule::new(&spec(1, 2, 4, 0), 10).epochs, vec![2]);
        // epochs when steps = 0, with the per-epoch cap
        assert_eq!(Schedule::new(&spec(4, 0, 4, 2), 10).epochs, vec![2; 4]);
        for steps in 1..40 {
            for n in 1..12 {
                assert_eq!(Schedule::new(&spec(3, steps, 4, 0), n).total_steps(), steps);
            }
        }
        assert_eq!(Schedule::new(&spec(3, 5, 4, 0), 0).total_steps(), 0);
    }

    #[test]
    fn validation_size() {
        assert_eq!(n_validation(8, 0.2), 2);
        assert_eq!(n_validation(10, 0.2), 2);
        assert_eq!(n_validation(3, 0.01), 1);
        assert_eq!(n_validation(2, 0.89), 1);
        assert_eq!(n_validation(1, 0.5), 0);
        assert_eq!(n_validation(10, 0.0), 0);
    }
}
