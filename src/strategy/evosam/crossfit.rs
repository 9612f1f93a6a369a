//! Cross-fitted validation of a small task's expert (`guard = "crossfit"`).
//!
//! Why: with a held-out split, a task of 3 images validates its expert on one image and trains it on two. One
//! image decides the epoch, whether the trained expert beats its start, and whether it beats the base; on real
//! few-image streams that single draw let experts through that ended below the base model on the test images
//! (docs/evosam-stress.md: -0.047 on a Kvasir pseudo-site, -0.016 on a prostate protocol). Cross-fitting uses
//! every image for both jobs: the task's images are cut into k folds (the tiles of one image stay together); for
//! each fold a copy of the start trains on the other folds and is scored on it after every epoch. Every image is
//! then scored once by a model that never saw it, at every epoch, and the pooled curve (mean held-out score per
//! epoch, the start at epoch 0) chooses the epoch count and whether training beats the start, from all n images
//! instead of one. The served expert then trains on all n images for the chosen number of epochs, so it also
//! learns from the image a held-out split would have set aside. The per-image held-out scores are the paired
//! values of the keep and base rules, and the start's scores (a model that never saw the task) are the chain's
//! forward-transfer evidence.
//!
//! A fold trains for as many optimiser steps as the served expert will (`fold_schedule`), not for as many passes:
//! it has fewer images per pass, and with the same passes it would judge a shorter training than the one served.
//!
//! Cost: k + 1 fits instead of one, each on n - n/k images for the task's step budget; on small tasks, where this
//! applies, that is a few seconds per task.

use super::birth::Birth;
use super::bound::paired;
use crate::data::{Case, TaskData};
use crate::model::Adapter;
use crate::strategy::StrategyCtx;
use crate::train::budget::{image_groups, Schedule};
use crate::train::select::{mean, select_epoch, Validation};
use crate::train::{fit, FitPlan, FitReport};
use crate::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How an EvoSAM expert is validated (`guard`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Guard {
    /// On the task's held-out validation part (`[train] val_fraction`).
    #[default]
    Holdout,
    /// Tasks of at most `crossfit_max_images` images are cross-fitted over all their images (module docs of
    /// `crossfit`); larger tasks use the held-out part.
    Crossfit,
}

/// What cross-fitting measured.
#[derive(Clone, Debug, PartialEq)]
pub struct CrossFit {
    /// Folds fitted.
    pub folds: usize,
    /// Mean held-out score over the task's cases at the start (index 0) and after each epoch.
    pub curve: Vec<f64>,
    /// `scores[e][i]`: case i's held-out score (cases in the order given) at epoch e (0 = the start).
    pub scores: Vec<Vec<f64>>,
    /// Optimiser steps of the fold fits.
    pub steps: usize,
}

/// The fold of each of `groups` groups: a seeded shuffle dealt round-robin into `k` folds (sizes differ by at most
/// one; every fold gets a group when `k <= groups`).
pub fn folds_of(groups: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..groups).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut fold = vec![0; groups];
    for (pos, g) in order.into_iter().enumerate() {
        fold[g] = pos % k.max(1);
    }
    fold
}

/// The schedule a fold trains under, given the task's own schedule `full` (all its cases) and the steps of one pass
/// over the fold's cases (`fold_steps_per_epoch`, as the spec's schedule of those cases has it), and for each epoch
/// of `full` (0 = before training) the fold's epoch scored in its place.
///
/// A fold has fewer cases per pass: under the spec's schedule it would take fewer optimiser steps than the expert
/// that then trains on every case (with 5 images and batches of 4, one step per pass instead of two), so its curve
/// would judge a shorter training than the one served. Measured on DRIVE <-> CHASEDB1 with 5 images per site: after
/// 8 one-step passes the folds' held-out Dice had collapsed to 0.00-0.18 (below the start in 11 of 12 tasks),
/// while the strategies that trained 8 two-step passes on CHASEDB1 scored 0.25-0.28 on its test images against
/// the base's 0.17. So a fold takes the task's steps (same count, same learning-rate schedule) in passes over its
/// own cases, and epoch e of the task is read at the fold's pass whose step count is nearest to the task's after
/// e epochs (the earlier pass on a tie).
pub fn fold_schedule(full: &Schedule, fold_steps_per_epoch: usize) -> (Schedule, Vec<usize>) {
    let spe = fold_steps_per_epoch;
    let prefix = |epochs: &[usize]| -> Vec<usize> {
        std::iter::once(0)
            .chain(epochs.iter().scan(0, |s, &n| {
                *s += n;
                Some(*s)
            }))
            .collect()
    };
    if spe == 0 {
        let none = Schedule {
            steps_per_epoch: 0,
            epochs: Vec::new(),
        };
        return (none, vec![0; full.epochs.len() + 1]);
    }
    let schedule = Schedule::of_steps(spe, full.total_steps());
    let at_fold = prefix(&schedule.epochs);
    let at = prefix(&full.epochs)
        .into_iter()
        .map(|s| {
            (0..at_fold.len())
                .min_by_key(|&e| at_fold[e].abs_diff(s))
                .unwrap_or(0)
        })
        .collect();
    (schedule, at)
}

/// Cross-fit `start` on `cases` (see the module docs): `k` folds (at most one per image group, at least 2), each
/// trained from a copy of `start` for the task's step budget (`fold_schedule`), without early stopping, with
/// batches drawn from a stream seeded by `seed` and the fold. `start` is not changed.
pub fn run(
    ctx: &mut StrategyCtx,
    task: &str,
    start: &Adapter,
    (cases, fov): (&[&Case], bool),
    k: usize,
    seed: u64,
) -> Result<CrossFit> {
    let (group, n_groups) = image_groups(cases.iter().copied());
    let k = k.min(n_groups).max(2);
    let fold_of_group = folds_of(n_groups, k, seed);
    let full = Schedule::new(&ctx.spec.train, cases.len());
    let mut per_case: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut steps = 0;
    for f in 0..k {
        let (held, train): (Vec<usize>, Vec<usize>) =
            (0..cases.len()).partition(|&i| fold_of_group[group[i]] == f);
        let held_cases: Vec<&Case> = held.iter().map(|&i| cases[i]).collect();
        let train_cases: Vec<&Case> = train.iter().map(|&i| cases[i]).collect();
        if held_cases.is_empty() || train_cases.is_empty() {
            continue;
        }
        let a = start.deep_clone()?;
        let fold_spe = Schedule::new(&ctx.spec.train, train_cases.len()).steps_per_epoch;
        let (schedule, at) = fold_schedule(&full, fold_spe);
        let plan = FitPlan::new(task, &a, &train_cases)
            .validate_on(&held_cases, fov)
            .schedule(schedule)
            .patience(0)
            .seed(seed ^ (0xf01d_0000 + f as u64));
        let r = fit(ctx, plan)?;
        steps += r.steps;
        for (j, &i) in held.iter().enumerate() {
            per_case[i] = at
                .iter()
                .map_while(|&e| r.val_cases.get(e).map(|s| s[j]))
                .collect();
        }
    }
    Ok(pool(per_case, k, steps))
}

/// The curve and the per-epoch scores from each case's held-out series (folds of a steps budget may run different
/// numbers of epochs: the common ones are kept).
fn pool(per_case: Vec<Vec<f64>>, folds: usize, steps: usize) -> CrossFit {
    let epochs = per_case.iter().map(Vec::len).min().unwrap_or(0);
    let scores: Vec<Vec<f64>> = (0..epochs)
        .map(|e| per_case.iter().map(|s| s[e]).collect())
        .collect();
    let curve = scores
        .iter()
        .map(|s| s.iter().sum::<f64>() / s.len() as f64)
        .collect();
    CrossFit {
        folds,
        curve,
        scores,
        steps,
    }
}

impl super::EvoSam {
    /// Train task `task`'s expert under `guard = "crossfit"` (module docs): cross-fit from `start`, train the
    /// expert (and the chain) on all of `cases` for the pooled curve's best trained epoch, and apply the keep and
    /// base rules to the per-image held-out scores. Returns the served expert and its birth record.
    pub(super) fn train_crossfit(
        &mut self,
        ctx: &mut StrategyCtx,
        task: &TaskData,
        cases: &[&Case],
        start: Adapter,
        mut birth: Birth,
        init: u64,
    ) -> Result<(Adapter, Birth)> {
        let cv = run(
            ctx,
            &task.name,
            &start,
            (cases, task.fov_eval),
            self.params.crossfit_folds,
            init.rotate_left(41) ^ 0xc5f1,
        )?;
        // The best trained epoch of the pooled curve (none when the budget runs no epoch).
        let epochs = select_epoch(&cv.curve, false, 0.0).unwrap_or(0);
        let mut schedule = Schedule::new(&ctx.spec.train, cases.len());
        schedule.epochs.truncate(epochs);
        // The chain and the expert train on every image for that many epochs, as the holdout path trains them.
        let how = (&[][..], task.fov_eval, Some(schedule));
        let (trained, last) =
            self.fit_chain_and_expert(ctx, &task.name, &start, init, cases, how)?;
        // The keep rule on the held-out scores: the trained expert (as its folds scored at that epoch) against the
        // start, image by image.
        let evidence = self.params.crossfit_evidence;
        let margin = self.params.keep_start_margin;
        let start_cases = &cv.scores[0];
        let trained_cases = &cv.scores[epochs];
        let keep = self.params.keep_start
            && (epochs == 0
                || evidence.keep_reference(&paired(trained_cases, start_cases), margin));
        let (mut adapter, served) = if keep {
            (start, start_cases)
        } else {
            (trained, trained_cases)
        };
        // A copied start (or what trained from it) must also beat the base on every image's held-out score; the
        // start's scores against the base's are the chain's forward-transfer evidence.
        if birth.parent.is_some() {
            let sel = Validation {
                model: ctx.model,
                embeddings: ctx.embeddings,
                device: ctx.device,
                cases,
                fov: task.fov_eval,
                clicks: ctx.spec.train.prompt.clicks,
            };
            let base = sel.scores(None)?;
            birth.transfer_cases = paired(start_cases, &base);
            birth.base_val_dice = Some(mean(&base));
            if self.params.keep_start && evidence.keep_reference(&paired(served, &base), margin) {
                adapter = Adapter::new(ctx.model, &ctx.spec.lora, init)?;
                birth.kept_base = true;
            }
        }
        // The chain carries the trained weights on: it may serve this task's images later only where the same
        // evidence rule would have served those weights (measured on a real stream: a chain whose training on a
        // site had not been shown to help there opened on a forward transfer of +0.0005 and took that site from
        // 0.173 to 0.082).
        birth.chain_ok = Some(!(keep || birth.kept_base));
        birth.crossfit_folds = Some(cv.folds);
        birth.fit = Some(FitReport {
            steps: cv.steps + last.steps,
            epochs_run: epochs,
            chosen_epoch: if keep { 0 } else { epochs },
            val_dice: cv.curve,
            last_epoch_loss: last.last_epoch_loss,
            val_cases: Vec::new(),
        });
        Ok((adapter, birth))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::strategy::evosam::tests::values;
    use crate::strategy::evosam::EvoSam;
    use crate::strategy::kinds_tests::{noop, Kit};
    use crate::strategy::Strategy;
    use crate::train::select::validation_dices;

    fn evo(kit: &Kit, params: &str, edit: impl Fn(&mut crate::spec::TrainSpec)) -> EvoSam {
        let mut sp = kit.strategy_spec("evosam").clone();
        let over: toml::Table = toml::from_str(params).unwrap();
        crate::spec::merge_tables(&mut sp.params, &over);
        edit(&mut sp.train);
        let p = crate::spec::from_table(&sp.params).unwrap();
        EvoSam::new(&sp, p, &kit.model, "kit", 3).unwrap()
    }

    fn spec_of(kit: &Kit, lr: f64, epochs: usize) -> crate::spec::StrategySpec {
        let mut sp = kit.strategy_spec("evosam").clone();
        sp.train.lr = lr;
        sp.train.epochs = epochs;
        sp
    }

    #[test]
    fn every_image_is_scored_by_a_fold_that_did_not_train_on_it() {
        let kit = Kit::new(5, 3);
        let sp = spec_of(&kit, 3e-2, 3);
        let cases: Vec<&Case> = kit.tasks[0].train.iter().collect();
        let start = Adapter::new(&kit.model, &sp.lora, 11).unwrap();
        let before = values(&start);
        let seed = 99;
        let cv = run(
            &mut kit.ctx_with(&sp, 1, &noop),
            "site0",
            &start,
            (&cases, false),
            5,
            seed,
        )
        .unwrap();
        assert_eq!(cv.folds, 5);
        assert_eq!(cv.scores.len(), 4, "start + 3 epochs");
        // the start is the base model (B = 0): epoch 0 is the base's Dice on every image
        let base = validation_dices(&kit.model, &kit.store, &kit.dev, None, &cases, false).unwrap();
        assert_eq!(cv.scores[0], base);
        // leave-one-out: case i's series is what a copy trained on the four other cases scores on it
        let fold = folds_of(5, 5, seed);
        for i in [0, 3] {
            let others: Vec<&Case> = (0..5).filter(|&j| j != i).map(|j| cases[j]).collect();
            let a = start.deep_clone().unwrap();
            // the kit's batches of 2: the task takes 3 steps per pass (9 in all), a fold of 4 cases 2, so the fold
            // runs passes of 2, 2, 2, 2, 1 steps and the task's epochs 1, 2, 3 are read after its passes 1, 3, 5
            let fold_spe = Schedule::new(&sp.train, 4).steps_per_epoch;
            let (schedule, at) = fold_schedule(&Schedule::new(&sp.train, 5), fold_spe);
            assert_eq!(
                (schedule.epochs.clone(), at.clone()),
                (vec![2, 2, 2, 2, 1], vec![0, 1, 3, 5])
            );
            let plan = FitPlan::new("site0", &a, &others)
                .validate_on(&cases[i..=i], false)
                .schedule(schedule)
                .patience(0)
                .seed(seed ^ (0xf01d_0000 + fold[i] as u64));
            let r = fit(&mut kit.ctx_with(&sp, 1, &noop), plan).unwrap();
            assert_eq!(r.steps, 9, "as many steps as the task's own fit");
            let series: Vec<f64> = at.iter().map(|&e| r.val_cases[e][0]).collect();
            let got: Vec<f64> = cv.scores.iter().map(|e| e[i]).collect();
            assert_eq!(got, series, "case {i}");
        }
        // the training moved the held-out scores (a curve that could fail the checks above)
        assert!(cv.scores[3] != cv.scores[0]);
        assert_eq!(values(&start), before, "the start is not changed");
    }

    #[test]
    fn ties_keep_the_start_a_real_rate_follows_the_pooled_curve_and_large_tasks_hold_out() {
        let kit = Kit::new(5, 3);
        // no epoch changes anything: every held-out score ties with the start, which is kept (the base: B = 0)
        let sp = spec_of(&kit, 1e-12, 3);
        let mut e = evo(&kit, "guard = \"crossfit\"", |t| t.lr = 1e-12);
        e.train_task(&mut kit.ctx_with(&sp, 1, &noop), 0, &kit.tasks[0])
            .unwrap();
        let b = &e.set.births[0];
        assert_eq!(b.crossfit_folds, Some(5));
        let f = b.fit.as_ref().unwrap();
        assert_eq!(f.chosen_epoch, 0);
        assert!(f.val_dice.iter().all(|d| *d == f.val_dice[0]), "{f:?}");
        assert_eq!(e.extra_metrics()["crossfit_folds"], 5.0);
        // a real rate: the chosen epoch is the pooled curve's rule, and a trained expert is not the start
        let sp = spec_of(&kit, 3e-2, 3);
        let mut e = evo(
            &kit,
            "guard = \"crossfit\"\ncrossfit_folds = 3\ncrossfit_evidence = \"mean\"",
            |t| t.lr = 3e-2,
        );
        e.train_task(&mut kit.ctx_with(&sp, 1, &noop), 0, &kit.tasks[0])
            .unwrap();
        let b = &e.set.births[0];
        assert_eq!(b.crossfit_folds, Some(3));
        let f = b.fit.as_ref().unwrap();
        assert_eq!(f.val_dice.len(), 4);
        assert_eq!(Some(f.chosen_epoch), select_epoch(&f.val_dice, true, 0.0));
        // every image: the first expert starts from the base, so its start curve is the base on all five images
        let all: Vec<&Case> = kit.tasks[0].train.iter().collect();
        let base = validation_dices(&kit.model, &kit.store, &kit.dev, None, &all, false).unwrap();
        assert_eq!(f.val_dice[0], mean(&base));
        // a task above crossfit_max_images is validated on its held-out part as before
        let mut e = evo(
            &kit,
            "guard = \"crossfit\"\ncrossfit_max_images = 4",
            |_| {},
        );
        e.train_task(&mut kit.ctx_with(&sp, 1, &noop), 0, &kit.tasks[0])
            .unwrap();
        assert_eq!(e.set.births[0].crossfit_folds, None);
    }

    #[test]
    fn a_fold_takes_the_tasks_steps_and_is_read_at_the_nearest_pass() {
        let sched = |steps_per_epoch: usize, epochs: Vec<usize>| Schedule {
            steps_per_epoch,
            epochs,
        };
        // 5 images in batches of 4 (2 steps per pass), 8 epochs; a fold of 4 images has 1 step per pass
        let (f, at) = fold_schedule(&sched(2, vec![2; 8]), 1);
        assert_eq!(f.epochs, vec![1; 16]);
        assert_eq!(at, vec![0, 2, 4, 6, 8, 10, 12, 14, 16]);
        // the same steps per pass: the spec's own schedule
        let (f, at) = fold_schedule(&sched(1, vec![1; 3]), 1);
        assert_eq!((f.epochs, at), (vec![1; 3], vec![0, 1, 2, 3]));
        // a steps budget whose last pass is short (7 steps of 3 per pass; the fold has 2 per pass)
        let (f, at) = fold_schedule(&sched(3, vec![3, 3, 1]), 2);
        assert_eq!(f.epochs, vec![2, 2, 2, 1]);
        // task after 0, 3, 6, 7 steps; fold after 0, 2, 4, 6, 7: 3 ties between 2 and 4 (the earlier)
        assert_eq!(at, vec![0, 1, 3, 4]);
        // a fold with no step per pass (no cases): nothing to read but the start
        let (f, at) = fold_schedule(&sched(2, vec![2; 2]), 0);
        assert_eq!((f.total_steps(), at), (0, vec![0, 0, 0]));
    }

    #[test]
    fn folds_are_balanced_seeded_and_cover_every_fold() {
        for (groups, k) in [(3, 3), (5, 5), (7, 5), (12, 5), (2, 2)] {
            let f = folds_of(groups, k, 7);
            let mut sizes = vec![0; k];
            for &x in &f {
                sizes[x] += 1;
            }
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(
                *lo >= 1 && hi - lo <= 1,
                "{groups} groups, {k} folds: {sizes:?}"
            );
            assert_eq!(f, folds_of(groups, k, 7), "seeded");
        }
        // another seed deals another way (7 groups into 5 folds: 5!/... many deals; these two differ)
        assert_ne!(folds_of(7, 5, 1), folds_of(7, 5, 2));
    }

    #[test]
    fn pooled_curve_is_the_mean_held_out_score_per_epoch() {
        // three cases, one per fold; the second fold ran one epoch fewer (a steps budget): two common epochs
        let per_case = vec![vec![0.5, 0.7, 0.6], vec![0.2, 0.1], vec![0.8, 0.9, 1.0]];
        let cf = pool(per_case, 3, 12);
        assert_eq!(cf.scores, vec![vec![0.5, 0.2, 0.8], vec![0.7, 0.1, 0.9]]);
        assert!((cf.curve[0] - 0.5).abs() < 1e-15);
        assert!((cf.curve[1] - 1.7 / 3.0).abs() < 1e-15);
        assert_eq!((cf.folds, cf.steps), (3, 12));
    }

    #[test]
    fn the_chain_serves_no_task_where_cross_fitting_found_it_worse() {
        let kit = Kit::new(4, 2);
        let sp = spec_of(&kit, 1e-2, 2);
        let mut e = evo(
            &kit,
            "guard = \"crossfit\"\ninit = \"previous\"\nserve_chain = \"always\"",
            |t| t.lr = 1e-2,
        );
        for k in 0..2 {
            e.train_task(&mut kit.ctx_with(&sp, k + 1, &noop), k, &kit.tasks[k])
                .unwrap();
        }
        // cross-fitted births record the evidence, whichever way it went
        let b = &e.set.births[0];
        let f = b.fit.clone().unwrap();
        assert_eq!(
            b.chain_ok,
            Some(f.chosen_epoch > 0 && !b.kept_base),
            "{f:?}"
        );
        for (flag, serves) in [(Some(false), false), (Some(true), true), (None, true)] {
            e.set.births[0].chain_ok = flag;
            assert_eq!(e.set.chain_serves_expert(Some(0)), serves, "{flag:?}");
        }
        // the newest expert serves its own images either way
        assert!(!e.set.chain_serves_expert(Some(1)));
    }
}
