//! One cell's life: build the strategy, resume after the last complete stage, then for every stage train,
//! evaluate and commit a checkpoint folder atomically (`checkpoint.rs`). `pool.rs` runs cells concurrently.

use super::checkpoint::{
    cell_dir, commit_stage, last_done, stage_dir, write_json, SLICE_SCORES_FILE,
};
use super::eval::{evaluate, Evaluation};
use super::plan::Cell;
use super::record::Attempt;
use super::shared::Shared;
use super::study::{study_stage, CLICKS_FILE};
use super::timing::{CellTimes, Laps, StageTimes};
use crate::data::TaskData;
use crate::interactive::rows::ClickRow;
use crate::results::ExtraRow;
use crate::spec::{Order, StrategySpec};
use crate::strategy::{BuildEnv, Progress, Strategy, StrategyCtx};
use crate::util::derive_seed;
use crate::{Error, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// extras.csv key of the optimiser steps a stage took (counted by the runner, for every strategy).
pub const STEPS_KEY: &str = "train_steps";

/// One cell under its own lock (so that two processes, on any hosts, never run the same cell), with its attempt
/// record (`attempt.json`: running, then ok or failed with the error, and the stages' times) for `evosam status`
/// and finalize.
pub(super) fn run_cell(sh: &Shared, cell: &Cell, times: &mut CellTimes) -> Result<()> {
    let cdir = cell_dir(sh, cell);
    let _lock = crate::lock::Lock::acquire(&cdir.join(".lock"), &format!("cell {}", cell.id))?;
    let t0 = Instant::now();
    let mut attempt = Attempt::start();
    attempt.write(&cdir)?;
    let r = run_cell_stages(sh, cell, times);
    attempt.times = Some(times.clone());
    attempt.status = if r.is_ok() { "ok" } else { "failed" }.into();
    attempt.finished = Some(super::record::now());
    attempt.wall_s = Some(t0.elapsed().as_secs_f64());
    attempt.error = r.as_ref().err().map(|e| e.to_string());
    attempt.write(&cdir)?;
    r
}

/// What every stage of one cell shares: the cell, its strategy entry and order, the tasks with this seed's
/// validation split, and the progress counters.
struct CellRun<'a> {
    sh: &'a Shared,
    cell: &'a Cell,
    sspec: &'a StrategySpec,
    order: &'a Order,
    tasks: Vec<TaskData>,
    /// The stage being run (read by the progress callback).
    stage_now: AtomicUsize,
    /// Every optimiser step reports progress once: counting them gives the steps each stage actually took.
    steps_taken: AtomicUsize,
}

impl CellRun<'_> {
    fn stages(&self) -> usize {
        self.order.tasks.len()
    }

    /// The context of stage `k`: its RNG is derived from (seed, label, order, stage), so a resumed cell replays
    /// exactly what an uninterrupted one does.
    fn ctx<'s>(
        &'s self,
        k: usize,
        progress: &'s (dyn Fn(Progress) + Send + Sync),
    ) -> StrategyCtx<'s> {
        let sh = self.sh;
        StrategyCtx {
            model: &sh.model,
            embeddings: &sh.store,
            base_sha256: &sh.sha,
            spec: self.sspec,
            seed: self.cell.seed,
            order_label: &self.order.label,
            tasks: &self.tasks,
            order: &self.order.tasks,
            stage: k,
            rng: ChaCha8Rng::seed_from_u64(derive_seed(&[
                "stage",
                &self.cell.seed.to_string(),
                &self.sspec.label,
                &self.order.label,
                &k.to_string(),
            ])),
            progress,
            device: &sh.device,
        }
    }

    fn progress(&self, p: Progress) {
        self.steps_taken.fetch_add(1, Ordering::Relaxed);
        let k = self.stage_now.load(Ordering::Relaxed);
        self.sh.reporter.step(&self.cell.id, k, self.stages(), &p);
    }
}

/// Train and evaluate one cell, resuming after its last complete stage; each stage run adds its times.
fn run_cell_stages(sh: &Shared, cell: &Cell, times: &mut CellTimes) -> Result<()> {
    let sspec = &sh.spec.strategies[cell.strategy];
    let order = &sh.spec.orders[cell.order];
    let n = order.tasks.len();
    let cdir = cell_dir(sh, cell);
    std::fs::create_dir_all(&cdir).map_err(|e| Error::io(&cdir, e))?;
    let init_seed = derive_seed(&["init", &cell.seed.to_string(), &sspec.label, &order.label]);
    let mut strat: Box<dyn Strategy> = sh
        .registry
        .build(sspec, &BuildEnv::new(&sh.model, &sh.sha, init_seed))?;
    let done = last_done(&cdir, n);
    let start = done.map(|k| k + 1).unwrap_or(0);
    if start > n {
        return Ok(());
    }
    let run = CellRun {
        sh,
        cell,
        sspec,
        order,
        // The validation part is drawn per (seed, task): the same for every strategy and order of this seed.
        tasks: crate::train::budget::split_validation(
            &sh.tasks,
            cell.seed,
            sspec.train.val_fraction,
        ),
        stage_now: AtomicUsize::new(0),
        steps_taken: AtomicUsize::new(0),
    };
    let progress = |p: Progress| run.progress(p);
    if let Some(k) = done.filter(|&k| k >= 1) {
        strat.load_state(&run.ctx(k, &progress), &stage_dir(&cdir, k).join("state"))?;
        sh.reporter.stage(&cell.id, k, n, "resumed from checkpoint");
    }
    for k in start..=n {
        times
            .stages
            .push(run_stage(&run, strat.as_mut(), k, &progress, &cdir)?);
    }
    Ok(())
}

/// Stage `k` of a cell: train its task (none at stage 0), evaluate every task, run the click study when the spec
/// has one, and commit the stage folder (the state only the latest stage keeps).
fn run_stage(
    run: &CellRun,
    strat: &mut dyn Strategy,
    k: usize,
    progress: &(dyn Fn(Progress) + Send + Sync),
    cdir: &Path,
) -> Result<StageTimes> {
    let (sh, cell, n) = (run.sh, run.cell, run.stages());
    run.stage_now.store(k, Ordering::Relaxed);
    let mut laps = Laps::start();
    let mut ctx = run.ctx(k, progress);
    run.steps_taken.store(0, Ordering::Relaxed);
    let trained = if k > 0 {
        let task = &run.tasks[run.order.tasks[k - 1]];
        sh.reporter
            .stage(&cell.id, k, n, &format!("training {}", task.name));
        strat.train_task(&mut ctx, k - 1, task)?;
        task.name.clone()
    } else {
        String::new()
    };
    // stage 0 trains nothing (what it spent building the context goes to no part)
    let train_s = Some(laps.lap()).filter(|_| k > 0).unwrap_or(0.0);
    sh.reporter.stage(&cell.id, k, n, "evaluating");
    let eval = evaluate(sh, &*strat, &ctx, cell, k, &trained)?;
    let eval_s = laps.lap();
    let clicks = study_stage(sh, &*strat, &ctx, cell, k)?;
    // a stage without a study counts no study time
    let study_s = Some(laps.lap()).filter(|_| clicks.is_some()).unwrap_or(0.0);
    let extras = stage_extras(run, &*strat, k, &eval);
    save_stage(cdir, k, &*strat, &eval, &extras, clicks.as_ref())?;
    Ok(StageTimes {
        stage: k,
        train_s,
        eval_s,
        study_s,
        checkpoint_s: laps.lap(),
    })
}

/// The stage's extras rows: the strategy's own metrics, the routing shares of its predictions and the optimiser
/// steps the stage took.
fn stage_extras(run: &CellRun, strat: &dyn Strategy, k: usize, eval: &Evaluation) -> Vec<ExtraRow> {
    let mut extra = strat.extra_metrics();
    let routed = eval.rows.iter().map(|r| {
        (
            r.eval_index as usize,
            r.eval_task.as_str(),
            r.routed_to.as_deref(),
        )
    });
    for (key, v) in crate::metrics::routing_shares(routed, k) {
        extra.insert(key.to_string(), v);
    }
    if k > 0 {
        let steps = run.steps_taken.load(Ordering::Relaxed);
        extra.insert(STEPS_KEY.to_string(), steps as f64);
    }
    extra
        .into_iter()
        .map(|(key, value)| ExtraRow {
            strategy: run.sspec.label.clone(),
            seed: run.cell.seed as i64,
            order: run.order.label.clone(),
            stage: k as i64,
            key,
            value,
        })
        .collect()
}

/// Commit stage `k`'s folder (state, scores, extras, clicks) and drop the previous stage's state: only the latest
/// is needed to resume.
fn save_stage(
    cdir: &Path,
    k: usize,
    strat: &dyn Strategy,
    eval: &Evaluation,
    extras: &[ExtraRow],
    clicks: Option<&Vec<ClickRow>>,
) -> Result<()> {
    commit_stage(cdir, k, |tmp| {
        if k > 0 {
            let sdir = tmp.join("state");
            std::fs::create_dir_all(&sdir).map_err(|e| Error::io(&sdir, e))?;
            strat.save_state(&sdir)?;
        }
        write_json(&tmp.join("scores.json"), &eval.rows)?;
        if !eval.slice_rows.is_empty() {
            write_json(&tmp.join(SLICE_SCORES_FILE), &eval.slice_rows)?;
        }
        write_json(&tmp.join("extras.json"), &extras)?;
        if let Some(c) = clicks {
            write_json(&tmp.join(CLICKS_FILE), c)?;
        }
        Ok(())
    })?;
    if k >= 2 {
        let old = stage_dir(cdir, k - 1).join("state");
        if old.exists() {
            let _ = std::fs::remove_dir_all(&old);
        }
    }
    Ok(())
}
