//! One cell's life: build the strategy, resume after the last complete stage, then for every stage train,
//! evaluate and commit a checkpoint folder atomically. Also the pool that runs cells concurrently and the
//! collection of the committed stages.

use super::eval::evaluate;
use super::plan::Cell;
use super::record::Attempt;
use super::shared::Shared;
use super::study::{study_stage, CLICKS_FILE};
use super::timing::{CellTimes, Laps, StageTimes};
use crate::results::{ExtraRow, ScoreRow};
use crate::strategy::{BuildEnv, Progress, Strategy, StrategyCtx};
use crate::util::{derive_seed, write_atomic};
use crate::{Error, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// extras.csv key of the optimiser steps a stage took (counted by the runner, for every strategy).
pub const STEPS_KEY: &str = "train_steps";

/// What one process's run of a cell gave.
#[derive(Clone, Debug)]
pub(super) struct Outcome {
    /// The cell id.
    pub id: String,
    /// Ok, or the error.
    pub result: std::result::Result<(), String>,
    /// Wall seconds of this invocation.
    pub wall_s: f64,
    /// Where they went, per stage run.
    pub times: CellTimes,
}

/// The run's compute pool: `threads` rayon threads. Everything that computes (embeddings, then every cell) runs
/// inside it: the calling thread is then one of the pool's workers, which its kernels and matmuls split work on,
/// so the serial parts of a step and the parallel ones never need more than `threads` cores (work started from a
/// thread outside the pool kept `threads + 1` threads busy, which on a small machine cost 5-10% of every step).
pub fn compute_pool(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("evosam-compute-{i}"))
        .build()
        .map_err(|e| Error::internal(format!("cannot start {threads} compute threads: {e}")))?;
    Ok(Arc::new(pool))
}

/// Run `cells`, `jobs` at a time, each inside `pool` ([`compute_pool`]; jobs share its threads).
pub(super) fn run_cells(
    shared: &Arc<Shared>,
    cells: &[Cell],
    jobs: usize,
    pool: &Arc<rayon::ThreadPool>,
) -> Result<Vec<Outcome>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(jobs)
        .build()
        .map_err(|e| Error::internal(format!("tokio runtime: {e}")))?;
    rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(jobs));
        let mut set = tokio::task::JoinSet::new();
        for (i, cell) in cells.iter().enumerate() {
            let permit = sem
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| Error::internal(e.to_string()))?;
            let sh = shared.clone();
            let cell = cell.clone();
            let pool = pool.clone();
            set.spawn_blocking(move || {
                let _permit = permit;
                let t0 = Instant::now();
                let mut times = CellTimes::default();
                // a panic is that cell's failure, not the run's
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    pool.install(|| run_cell(&sh, &cell, &mut times))
                }))
                .unwrap_or_else(|p| {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Err(Error::internal(format!("panicked: {msg}")))
                })
                .map_err(|e| e.to_string());
                sh.reporter
                    .cell_done(&cell.id, r.as_ref().err().map(|s| s.as_str()));
                let outcome = Outcome {
                    id: cell.id.clone(),
                    result: r,
                    wall_s: t0.elapsed().as_secs_f64(),
                    times,
                };
                (i, outcome)
            });
        }
        let mut out: Vec<Option<Outcome>> = vec![None; cells.len()];
        while let Some(j) = set.join_next().await {
            match j {
                Ok((i, o)) => out[i] = Some(o),
                Err(e) => return Err(Error::internal(format!("a cell panicked: {e}"))),
            }
        }
        Ok(out.into_iter().flatten().collect())
    })
}

pub(super) fn stage_dir(cdir: &Path, k: usize) -> PathBuf {
    cdir.join(format!("stage_{k}"))
}

fn cell_dir(shared: &Shared, cell: &Cell) -> PathBuf {
    shared.dir.join("cells").join(&cell.id)
}

/// One cell under its own lock (so that two processes, on any hosts, never run the same cell), with its attempt
/// record (`attempt.json`: running, then ok or failed with the error, and the stages' times) for `evosam status`
/// and finalize.
fn run_cell(sh: &Shared, cell: &Cell, times: &mut CellTimes) -> Result<()> {
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

/// Train and evaluate one cell, resuming after its last complete stage; each stage run adds its times.
fn run_cell_stages(sh: &Shared, cell: &Cell, times: &mut CellTimes) -> Result<()> {
    let sspec = &sh.spec.strategies[cell.strategy];
    let order = &sh.spec.orders[cell.order];
    let n = order.tasks.len();
    let cdir = cell_dir(sh, cell);
    std::fs::create_dir_all(&cdir).map_err(|e| Error::io(&cdir, e))?;
    let seed_s = cell.seed.to_string();
    let init_seed = derive_seed(&["init", &seed_s, &sspec.label, &order.label]);
    let env = BuildEnv {
        model: &sh.model,
        base_sha256: &sh.sha,
        init_seed,
    };
    let mut strat: Box<dyn Strategy> = sh.registry.build(sspec, &env)?;
    let done = (0..=n)
        .rev()
        .find(|&k| stage_dir(&cdir, k).join("done").is_file());
    let start = done.map(|k| k + 1).unwrap_or(0);
    if start > n {
        return Ok(());
    }
    let id = cell.id.clone();
    // The validation part is drawn per (seed, task): the same for every strategy and order of this seed.
    let tasks =
        crate::train::budget::split_validation(&sh.tasks, cell.seed, sspec.train.val_fraction);
    let stage_now = std::sync::atomic::AtomicUsize::new(0);
    // Every optimiser step reports progress once: counting them gives the steps each stage actually took.
    let steps_taken = std::sync::atomic::AtomicUsize::new(0);
    let progress = |p: Progress| {
        steps_taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sh.reporter.step(
            &id,
            stage_now.load(std::sync::atomic::Ordering::Relaxed),
            n,
            &p,
        )
    };
    let make_ctx = |k: usize| StrategyCtx {
        model: &sh.model,
        embeddings: &sh.store,
        base_sha256: &sh.sha,
        spec: sspec,
        seed: cell.seed,
        order_label: &order.label,
        tasks: &tasks,
        order: &order.tasks,
        stage: k,
        rng: ChaCha8Rng::seed_from_u64(derive_seed(&[
            "stage",
            &seed_s,
            &sspec.label,
            &order.label,
            &k.to_string(),
        ])),
        progress: &progress,
        device: &sh.device,
    };
    if let Some(k) = done.filter(|&k| k >= 1) {
        let ctx = make_ctx(k);
        strat.load_state(&ctx, &stage_dir(&cdir, k).join("state"))?;
        sh.reporter.stage(&cell.id, k, n, "resumed from checkpoint");
    }
    for k in start..=n {
        stage_now.store(k, std::sync::atomic::Ordering::Relaxed);
        let mut laps = Laps::start();
        let mut ctx = make_ctx(k);
        steps_taken.store(0, std::sync::atomic::Ordering::Relaxed);
        let trained = if k > 0 {
            let task = &tasks[order.tasks[k - 1]];
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
        let super::eval::Evaluation { rows, slice_rows } =
            evaluate(sh, strat.as_ref(), &ctx, cell, k, &trained)?;
        let eval_s = laps.lap();
        let clicks = study_stage(sh, strat.as_ref(), &ctx, cell, k)?;
        // a stage without a study counts no study time
        let study_s = Some(laps.lap()).filter(|_| clicks.is_some()).unwrap_or(0.0);
        let mut extra = strat.extra_metrics();
        let routed = rows.iter().map(|r| {
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
            let n = steps_taken.load(std::sync::atomic::Ordering::Relaxed);
            extra.insert(STEPS_KEY.to_string(), n as f64);
        }
        let extras: Vec<ExtraRow> = extra
            .into_iter()
            .map(|(key, value)| ExtraRow {
                strategy: sspec.label.clone(),
                seed: cell.seed as i64,
                order: order.label.clone(),
                stage: k as i64,
                key,
                value,
            })
            .collect();
        commit_stage(&cdir, k, |tmp| {
            if k > 0 {
                let sdir = tmp.join("state");
                std::fs::create_dir_all(&sdir).map_err(|e| Error::io(&sdir, e))?;
                strat.save_state(&sdir)?;
            }
            write_json(&tmp.join("scores.json"), &rows)?;
            if !slice_rows.is_empty() {
                write_json(&tmp.join(SLICE_SCORES_FILE), &slice_rows)?;
            }
            write_json(&tmp.join("extras.json"), &extras)?;
            if let Some(c) = &clicks {
                write_json(&tmp.join(CLICKS_FILE), c)?;
            }
            Ok(())
        })?;
        // only the latest state is needed to resume
        if k >= 2 {
            let old = stage_dir(&cdir, k - 1).join("state");
            if old.exists() {
                let _ = std::fs::remove_dir_all(&old);
            }
        }
        times.stages.push(StageTimes {
            stage: k,
            train_s,
            eval_s,
            study_s,
            checkpoint_s: laps.lap(),
        });
    }
    Ok(())
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let s =
        serde_json::to_vec(v).map_err(|e| Error::internal(format!("{}: {e}", path.display())))?;
    write_atomic(path, &s)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let s = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&s)
        .map_err(|e| Error::internal(format!("{}: corrupt checkpoint: {e}", path.display())))
}

/// Write a stage folder under a temporary name, mark it done, then rename it into place.
pub(super) fn commit_stage(
    cdir: &Path,
    k: usize,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let fin = stage_dir(cdir, k);
    let tmp = cdir.join(format!(".stage_{k}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    write(&tmp)?;
    write_atomic(&tmp.join("done"), b"ok\n")?;
    if fin.exists() {
        std::fs::remove_dir_all(&fin).map_err(|e| Error::io(&fin, e))?;
    }
    std::fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))?;
    // make the rename durable
    if let Ok(d) = std::fs::File::open(cdir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub(super) fn collect(sh: &Shared, cells: &[Cell]) -> Result<(Vec<ScoreRow>, Vec<ExtraRow>)> {
    let (mut scores, mut extras) = (Vec::new(), Vec::new());
    for cell in cells {
        let cdir = cell_dir(sh, cell);
        let n = sh.spec.orders[cell.order].tasks.len();
        for k in 0..=n {
            let sd = stage_dir(&cdir, k);
            if !sd.join("done").is_file() {
                break;
            }
            scores.extend(read_json::<Vec<ScoreRow>>(&sd.join("scores.json"))?);
            extras.extend(read_json::<Vec<ExtraRow>>(&sd.join("extras.json"))?);
        }
    }
    Ok((scores, extras))
}

/// A volume task's per-slice scores of one stage (`slice_scores.csv`), beside `scores.json`.
pub(super) const SLICE_SCORES_FILE: &str = "slice_scores.json";

/// Every committed stage's rows of an optional stage file (`clicks.json`, `slice_scores.json`), in canonical cell
/// order.
pub(super) fn collect_optional<T: serde::de::DeserializeOwned>(
    sh: &Shared,
    cells: &[Cell],
    file: &str,
) -> Result<Vec<T>> {
    let mut rows = Vec::new();
    for cell in cells {
        let cdir = cell_dir(sh, cell);
        let n = sh.spec.orders[cell.order].tasks.len();
        for k in 0..=n {
            let sd = stage_dir(&cdir, k);
            if !sd.join("done").is_file() {
                break;
            }
            let f = sd.join(file);
            if f.is_file() {
                rows.extend(read_json::<Vec<T>>(&f)?);
            }
        }
    }
    Ok(rows)
}
