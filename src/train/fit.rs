//! The one training entry: [`fit`] trains what a [`FitPlan`] names, for as long as it says, calling the
//! strategy's [`TrainHooks`] on the way.
//!
//! Why a plan: a fit has a few required parts (the task, the adapter, its cases) and several optional ones
//! (a carried-over optimiser, validation cases, an own random stream, a budget other than the spec's, hooks).
//! Positional arguments made every caller spell out the options it did not use (`None, &[], 0`); a plan names
//! the ones it uses and leaves the rest at their defaults.

use super::budget::Schedule;
use super::hooks::TrainHooks;
use super::optim::{AdamW, ParamsAdamW};
use super::r#loop::{run_passes, FitCtx, FitEnv, FitStats, Passes};
use super::select::{best_epoch, mean, Validation};
use crate::data::Case;
use crate::model::Adapter;
use crate::Result;
use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// What a fit did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    /// Optimiser steps taken.
    pub steps: usize,
    /// Epochs run (fewer than the budget after early stopping).
    pub epochs_run: usize,
    /// The epoch whose weights were kept (0 = the starting point; the last epoch without validation).
    pub chosen_epoch: usize,
    /// Validation Dice of the starting point and after each epoch run (empty without validation cases).
    pub val_dice: Vec<f64>,
    /// Mean training loss of the last epoch run.
    pub last_epoch_loss: f64,
    /// The validation score of each validation case (in the plan's order) at the start and after each epoch
    /// run: the paired values behind [`FitReport::val_dice`]. Kept in memory only (not saved).
    #[serde(skip)]
    pub val_cases: Vec<Vec<f64>>,
}

impl FitReport {
    /// True when the starting point was kept.
    pub fn kept_start(&self) -> bool {
        !self.val_dice.is_empty() && self.chosen_epoch == 0
    }

    /// Validation Dice of the kept weights.
    pub fn chosen_val_dice(&self) -> Option<f64> {
        self.val_dice.get(self.chosen_epoch).copied()
    }
}

/// What one [`fit`] trains and for how long.
///
/// - **What**: `adapter`'s variables, on the task's training `cases` (plus what the hooks add to each batch),
///   with the segmentation loss (plus the hooks' extra term).
/// - **How long**: the context's `[train]` budget over `cases` (`epochs` passes, or exactly `steps` optimiser
///   steps; [`Schedule`]), unless [`FitPlan::schedule`] sets another; with validation cases, cut short after
///   `[train] patience` epochs without a better validation Dice, and the best epoch is kept.
///
/// Defaults: a fresh AdamW from `[train]` ([`ParamsAdamW::from_train`]), no validation, the context's random
/// stream, no hooks.
///
/// ```
/// use evosam::model::Adapter;
/// use evosam::{fit, Case, FitPlan, FitReport, StrategyCtx, TrainHooks};
///
/// /// A fit on `cases` that keeps its best epoch on `val`, draws its batches from its own seeded stream and calls
/// /// the strategy's hooks.
/// fn train(
///     ctx: &mut StrategyCtx,
///     adapter: &Adapter,
///     (cases, val): (&[&Case], &[&Case]),
///     hooks: &mut impl TrainHooks,
/// ) -> evosam::Result<FitReport> {
///     let plan = FitPlan::new("site-a", adapter, cases)
///         .validate_on(val, false)
///         .seed(7)
///         .hooks(hooks);
///     fit(ctx, plan)
/// }
/// ```
pub struct FitPlan<'a> {
    task: &'a str,
    adapter: &'a Adapter,
    cases: &'a [&'a Case],
    optimizer: Option<&'a mut AdamW>,
    validation: &'a [&'a Case],
    fov: bool,
    schedule: Option<Schedule>,
    patience: Option<usize>,
    seed: Option<u64>,
    hooks: Option<&'a mut (dyn TrainHooks + 'a)>,
}

impl<'a> FitPlan<'a> {
    /// Train `adapter` on `cases` of the task named `task` (the name is for progress and error messages).
    pub fn new(task: &'a str, adapter: &'a Adapter, cases: &'a [&'a Case]) -> Self {
        Self {
            task,
            adapter,
            cases,
            optimizer: None,
            validation: &[],
            fov: false,
            schedule: None,
            patience: None,
            seed: None,
            hooks: None,
        }
    }

    /// Step this optimiser (its moments carry over from earlier fits) instead of a fresh one. It must be over
    /// `adapter`'s variables.
    pub fn optimizer(mut self, opt: &'a mut AdamW) -> Self {
        self.optimizer = Some(opt);
        self
    }

    /// Score `cases` (held out, exact box prompts; inside the field of view when `fov`) before training and after
    /// every epoch; keep the best epoch and stop after `[train] patience` epochs without improvement (see
    /// [`crate::train::select`]). No cases: the last epoch is kept.
    pub fn validate_on(mut self, cases: &'a [&'a Case], fov: bool) -> Self {
        self.validation = cases;
        self.fov = fov;
        self
    }

    /// Train for this schedule instead of the one `[train]` gives for the task's cases.
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = Some(schedule);
        self
    }

    /// Stop after this many epochs without a better validation score instead of `[train] patience` (0 = run the
    /// whole schedule: every epoch is scored, as a cross-fitted curve needs).
    pub fn patience(mut self, patience: usize) -> Self {
        self.patience = Some(patience);
        self
    }

    /// Draw shuffles, jitter and clicks from a stream seeded with `seed` instead of the context's (which is left
    /// as it was): two fits from the same seed see the same batches whatever ran before them.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Call these hooks (extra loss, extra batch items, epoch and task ends; see [`TrainHooks`]). The plan now
    /// lives no longer than the borrow of the hooks.
    pub fn hooks<'b, H: TrainHooks + 'b>(self, hooks: &'b mut H) -> FitPlan<'b>
    where
        'a: 'b,
    {
        FitPlan {
            task: self.task,
            adapter: self.adapter,
            cases: self.cases,
            optimizer: self.optimizer,
            validation: self.validation,
            fov: self.fov,
            schedule: self.schedule,
            patience: self.patience,
            seed: self.seed,
            hooks: Some(hooks),
        }
    }
}

/// Train what `plan` names (see [`FitPlan`]): the one training entry of the strategies. The adapter ends with the
/// kept epoch's weights; then the hooks' `after_task` runs. Non-finite loss stops with
/// [`crate::Error::NonFinite`] naming the strategy, task, epoch and step.
///
/// ```
/// use evosam::model::Adapter;
/// use evosam::{fit, Case, FitPlan, StrategyCtx, TaskData};
///
/// // Inside `Strategy::train_task(&mut self, ctx: &mut StrategyCtx, _k: usize, task: &TaskData)`:
/// fn train(ctx: &mut StrategyCtx, task: &TaskData, adapter: &Adapter) -> evosam::Result<usize> {
///     let cases: Vec<&Case> = task.train.iter().collect();
///     let val: Vec<&Case> = task.val.iter().collect();
///     let plan = FitPlan::new(&task.name, adapter, &cases).validate_on(&val, task.fov_eval);
///     Ok(fit(ctx, plan)?.chosen_epoch)
/// }
/// ```
pub fn fit<C: FitCtx + ?Sized>(ctx: &mut C, plan: FitPlan) -> Result<FitReport> {
    let mut env = ctx.fit_env();
    let Some(seed) = plan.seed else {
        return fit_in(&mut env, plan);
    };
    let saved = std::mem::replace(env.rng, ChaCha8Rng::seed_from_u64(seed));
    let r = fit_in(&mut env, plan);
    *env.rng = saved;
    r
}

fn fit_in(env: &mut FitEnv, plan: FitPlan) -> Result<FitReport> {
    let FitPlan {
        task,
        adapter,
        cases,
        optimizer,
        validation,
        fov,
        schedule,
        patience,
        seed: _,
        hooks,
    } = plan;
    let mut fresh;
    let opt = match optimizer {
        Some(o) => o,
        None => {
            fresh = AdamW::new(adapter.vars(), ParamsAdamW::from_train(env.train))?;
            &mut fresh
        }
    };
    let mut none = ();
    let hooks: &mut dyn TrainHooks = match hooks {
        Some(h) => h,
        None => &mut none,
    };
    let schedule = schedule.unwrap_or_else(|| Schedule::new(env.train, cases.len()));
    let passes = Passes {
        task,
        adapter,
        opt,
        cases,
        schedule: &schedule,
        hooks: &mut *hooks,
    };
    let report = if validation.is_empty() {
        let st = run_passes(env, passes, &mut |_, _| Ok(true))?;
        FitReport {
            steps: st.steps,
            epochs_run: st.epochs,
            chosen_epoch: st.epochs,
            val_dice: Vec::new(),
            last_epoch_loss: st.last_epoch_loss,
            val_cases: Vec::new(),
        }
    } else {
        let val = Validation {
            model: env.model,
            embeddings: env.embeddings,
            device: env.device,
            cases: validation,
            fov,
            clicks: env.train.prompt.clicks,
        };
        let patience = patience.unwrap_or(env.train.patience);
        selected(env, passes, &val, patience)?
    };
    hooks.after_task(env, adapter, cases)?;
    Ok(report)
}

/// The passes with validation after every epoch: the best trained epoch is kept (restored when training went
/// on past it), and training stops after `[train] patience` epochs without a better score (0 = never).
fn selected(
    env: &mut FitEnv,
    passes: Passes,
    val: &Validation,
    patience: usize,
) -> Result<FitReport> {
    let adapter = passes.adapter;
    let mut val_cases = vec![val.scores(Some(adapter))?];
    let mut val_dice = vec![mean(&val_cases[0])];
    let mut best_snap: Option<Vec<Tensor>> = None;
    let mut since_best = 0usize;
    let st: FitStats = run_passes(env, passes, &mut |epoch: usize, a: &Adapter| {
        let cases = val.scores(Some(a))?;
        val_dice.push(mean(&cases));
        val_cases.push(cases);
        if best_epoch(&val_dice, false) == Some(epoch) {
            best_snap = Some(snapshot(a)?);
            since_best = 0;
        } else {
            since_best += 1;
        }
        Ok(patience == 0 || since_best < patience)
    })?;
    let chosen = best_epoch(&val_dice, false).unwrap_or(0);
    if chosen != st.epochs {
        if let Some(s) = &best_snap {
            restore(adapter, s)?;
        }
    }
    Ok(FitReport {
        steps: st.steps,
        epochs_run: st.epochs,
        chosen_epoch: chosen,
        val_dice,
        last_epoch_loss: st.last_epoch_loss,
        val_cases,
    })
}

/// Copies of an adapter's values (to restore the best epoch).
fn snapshot(adapter: &Adapter) -> Result<Vec<Tensor>> {
    adapter
        .vars()
        .iter()
        .map(|v| Ok(v.as_tensor().copy()?))
        .collect()
}

fn restore(adapter: &Adapter, snap: &[Tensor]) -> Result<()> {
    for (v, t) in adapter.vars().iter().zip(snap) {
        v.set(t)?;
    }
    Ok(())
}
