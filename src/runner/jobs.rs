//! A run in three parts, each its own process: what the jobs of `evosam submit` run (`crate::cluster`).
//! - [`prepare_run`] claims the folder and computes every frozen embedding into the on-disk cache;
//! - [`run_one_cell`] runs one cell (many at once, on many hosts, each holding only its cell's lock);
//! - [`finalize_run`] collects the cells and ends exactly as [`super::run`] does (same tables, manifest, report).
//!
//! Together they write the same files as `run`: the cells' stages are the same bits whatever process computed
//! them (seeds derive from the cell, not from the process), and the tables are built from the stage folders.

use super::plan::{RunFile, RunFolder};
use super::record::{stages_done, Attempt};
use super::timing::RunTimes;
use super::{
    banner, cells_of, compute_pool, finish, run_cells, run_dir, setup, shared_of, spec_fingerprint,
    threads_for, Outcome, Reporter, RunOptions, RunSummary,
};
use crate::spec::Spec;
use crate::strategy::Registry;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The Slurm *prepare* job: claim (or resume) the folder, fetch the weights, load and check the data and compute
/// every frozen embedding into the on-disk cache, so that the cell jobs only read it. Returns the run folder.
pub fn prepare_run(spec: Spec, opts: &RunOptions) -> Result<PathBuf> {
    let started = chrono::Utc::now().to_rfc3339();
    let threads = threads_for(&spec);
    // (the prepare job gets no registry: a spec of kinds registered elsewhere keeps no resolved form)
    let resolved = super::resolved_spec(&spec, &Registry::default()).ok();
    let folder = RunFolder::open(&spec, run_dir(&spec, opts), &started, true, resolved)?;
    let n = cells_of(&spec).len();
    let reporter = Reporter::new(opts.quiet, n);
    let pool = compute_pool(threads)?;
    let prep =
        match pool.install(|| setup::prepare(&spec, &reporter, &banner(&spec, n, 1, threads))) {
            Ok(p) => p,
            Err(e) => {
                folder.abandon();
                return Err(e);
            }
        };
    reporter.info(&format!(
        "prepared {}: {} embeddings in {:.1} s",
        folder.dir.display(),
        prep.store.len(),
        prep.embeddings_s
    ));
    Ok(folder.dir.clone())
}

/// One cell (a Slurm array task, or by hand), resuming after its last complete stage. The folder must be this
/// spec's run (the prepare job makes it; made here when missing, for use by hand).
pub fn run_one_cell(spec: Spec, registry: &Registry, opts: &RunOptions, id: &str) -> Result<()> {
    let started = chrono::Utc::now().to_rfc3339();
    let threads = threads_for(&spec);
    let dir = run_dir(&spec, opts);
    let run_file = dir.join("run.json");
    if run_file.is_file() {
        RunFile::read(&run_file)?.check(&dir, &spec_fingerprint(&spec))?;
    } else {
        drop(RunFolder::open(
            &spec,
            dir.clone(),
            &started,
            true,
            super::resolved_spec(&spec, registry).ok(),
        )?);
    }
    let cells = cells_of(&spec);
    let Some(cell) = cells.iter().find(|c| c.id == id).cloned() else {
        let ids: Vec<&str> = cells.iter().map(|c| c.id.as_str()).collect();
        return Err(Error::input(format!(
            "--cell {id:?} is not a cell of this spec; its cells are: {}",
            ids.join(", ")
        )));
    };
    let reporter = Reporter::new(opts.quiet, 1).with_progress_files(&dir);
    let pool = compute_pool(threads)?;
    let prep =
        pool.install(|| setup::prepare(&spec, &reporter, &banner(&spec, cells.len(), 1, threads)))?;
    let shared = shared_of(spec, registry, prep, &dir, reporter);
    let outcomes = run_cells(&shared, std::slice::from_ref(&cell), 1, &pool)?;
    match outcomes.into_iter().next().map(|o| o.result) {
        Some(Err(e)) => Err(Error::internal(format!("cell {id} failed: {e}"))),
        _ => Ok(()),
    }
}

/// The Slurm *finalize* job: collect the cells into the tables, manifest and report exactly as `run` does.
/// A cell that did not finish is a failure, named with why (its attempt record) and, through `log_of` (cell
/// index -> path), its log. Runs on the CPU whatever the spec's device: it trains nothing.
pub fn finalize_run(
    spec: Spec,
    registry: &Registry,
    opts: &RunOptions,
    log_of: Option<&dyn Fn(usize) -> PathBuf>,
) -> Result<RunSummary> {
    let started = chrono::Utc::now().to_rfc3339();
    let threads = threads_for(&spec);
    let dir = run_dir(&spec, opts);
    if !dir.join("run.json").is_file() {
        return Err(Error::input(format!(
            "{}: no run to finalize (the prepare job did not run or failed; its log is in {})",
            dir.display(),
            dir.join("slurm").join("logs").display()
        )));
    }
    let t0 = std::time::Instant::now();
    let folder = RunFolder::open(&spec, dir.clone(), &started, true, None)?;
    let cells = cells_of(&spec);
    let reporter = Reporter::new(opts.quiet, cells.len());
    let mut cpu = spec.clone();
    cpu.experiment.device = "cpu".into();
    let prep = setup::prepare(&cpu, &reporter, &banner(&spec, cells.len(), 1, threads))?;
    // the cells ran in other processes: their times come from their attempt records
    let mut times = RunTimes::after_setup(t0, prep.embeddings_s);
    let outcomes: Vec<Outcome> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let cdir = dir.join("cells").join(&c.id);
            let attempt = Attempt::read(&cdir);
            let wall_s = attempt.as_ref().and_then(|a| a.wall_s).unwrap_or(0.0);
            let times = attempt
                .as_ref()
                .and_then(|a| a.times.clone())
                .unwrap_or_default();
            let result = if stages_done(&cdir) > spec.orders[c.order].tasks.len() {
                Ok(())
            } else {
                Err(unfinished(
                    attempt.as_ref(),
                    log_of.map(|f| f(i)).as_deref(),
                ))
            };
            Outcome {
                id: c.id.clone(),
                result,
                wall_s,
                times,
            }
        })
        .collect();
    times.cells_wall_s = outcomes.iter().map(|o| o.wall_s).sum();
    let shared = shared_of(spec, registry, prep, &dir, reporter);
    finish(
        &shared,
        folder,
        &cells,
        &outcomes,
        opts,
        threads,
        (t0, times),
    )
}

/// "why; log: PATH".
fn unfinished(attempt: Option<&Attempt>, log: Option<&Path>) -> String {
    let why = Attempt::why_unfinished(attempt);
    match log {
        Some(l) => format!("{why}; log: {}", l.display()),
        None => why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_cells_say_why_and_where_the_log_is() {
        let mut a = Attempt::start();
        assert_eq!(unfinished(None, None), "never started");
        assert_eq!(
            unfinished(Some(&a), Some(Path::new("/x/cells_7_3.out"))),
            "stopped without finishing (killed, cancelled or out of time); log: /x/cells_7_3.out"
        );
        a.status = "failed".into();
        a.error = Some("non-finite loss: stage 2".into());
        assert_eq!(unfinished(Some(&a), None), "non-finite loss: stage 2");
    }
}
