//! The experiment runner: loads the model and data, computes each image's frozen-encoder embedding once, runs
//! every cell (strategy x seed x order) through the stream with per-stage checkpoints, and writes the results
//! tables.
//!
//! Results folder layout (`OUT/<experiment name>/`):
//! - `scores.parquet`, `scores.csv`, `matrix.csv`, `metrics.csv`, `extras.csv`, `manifest.json` (the contract);
//! - `run.json`: the spec fingerprint, checked by `--resume`;
//! - `cells/<label>__seed<seed>__<order>/stage_<k>/`: `scores.json`, `extras.json`, `state/` (the strategy's
//!   `save_state`, only the latest stage keeps it) and `done`. A stage folder is written under a temporary name
//!   and renamed when complete, so a kill at any moment leaves either a whole stage or none.
//!
//! Reproducibility: a cell's strategy is initialised from a seed derived from (seed, label, order) and each stage's
//! RNG from (seed, label, order, stage), so a resumed cell replays exactly what an uninterrupted one does.
//!
//! Files, one job each: `plan.rs` (cells, fingerprint, folder ownership), `setup.rs` (device, model, data,
//! embeddings, thread count), `cell.rs` (one cell's stages under the cell's lock), `checkpoint.rs` (stage folders committed
//! atomically, the walk over committed stages), `pool.rs` (the compute pool and the worker threads that run cells
//! `jobs` at a time),
//! `record.rs` (a cell's attempt record and progress line), `jobs.rs` (prepare / one cell / finalize as separate
//! processes, for `evosam submit`), `eval.rs` (scoring a stage), `progress.rs` (bars or lines), `manifest.rs`
//! (manifest.json and the printed summary), `timing.rs` (where the time went). Only `cluster` (Slurm) and the CLI
//! import the runner.

mod cell;
mod check;
mod checkpoint;
mod eval;
mod jobs;
mod manifest;
mod plan;
mod pool;
mod progress;
pub mod record;
pub mod resolved;
mod setup;
mod shared;
mod study;
pub mod timing;

pub use check::check_model;
pub use eval::{case_dice, EVAL_BATCH};
pub use jobs::{finalize_run, prepare_run, run_one_cell};

pub use cell::STEPS_KEY;
pub use plan::{cells_of, spec_fingerprint, Cell};
pub use pool::compute_pool;
pub use progress::Reporter;
pub use resolved::{resolved_spec, resolved_toml};
pub use setup::{cuda_hint, device_of, load_model, open_device, threads_for};
pub use shared::RunOptions;

use crate::results;
use crate::spec::Spec;
use crate::strategy::Registry;
use crate::{Error, Result};
use checkpoint::{collect, collect_optional, SLICE_SCORES_FILE};
use plan::RunFolder;
use pool::{run_cells, Outcome};
use shared::Shared;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use timing::{Laps, RunTimes};

/// What a finished run reports.
#[derive(Debug)]
pub struct RunSummary {
    /// The results folder (`<out>/<experiment name>/`).
    pub dir: PathBuf,
    /// Number of cells of the spec.
    pub cells: usize,
    /// (cell id, error) of the cells that failed.
    pub failed: Vec<(String, String)>,
}

/// Run a spec end to end, building strategies from `registry`. Returns an error (after writing the tables of
/// the cells that finished) when any cell failed. The compute thread count is the caller's to set (see
/// [`threads_for`]); this function changes no process-wide state.
pub fn run(spec: Spec, registry: &Registry, opts: &RunOptions) -> Result<RunSummary> {
    let t0 = std::time::Instant::now();
    let started = chrono::Utc::now().to_rfc3339();
    let threads = threads_for(&spec);
    let resolved = resolved_spec(&spec, registry).ok();
    let folder = RunFolder::open(&spec, run_dir(&spec, opts), &started, opts.resume, resolved)?;
    let cells = cells_of(&spec);
    let reporter = Reporter::new(opts.quiet, cells.len()).with_progress_files(&folder.dir);
    let banner = banner(&spec, cells.len(), opts.jobs.max(1), threads);
    // Everything before the first cell; a fresh run that fails here leaves no folder behind.
    let pool = compute_pool(threads)?;
    let prep = match pool.install(|| setup::prepare(&spec, &reporter, &banner)) {
        Ok(p) => p,
        Err(e) => {
            folder.abandon();
            return Err(e);
        }
    };
    let mut times = RunTimes::after_setup(t0, prep.embeddings_s);
    let shared = shared_of(spec, registry, prep, &folder.dir, reporter);
    let t_cells = std::time::Instant::now();
    let outcomes = run_cells(&shared, &cells, opts.jobs.max(1), &pool)?;
    times.cells_wall_s = t_cells.elapsed().as_secs_f64();
    shared.reporter.finish();
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

/// Cells to run at once when the caller does not say: 2 when the run is on the CPU with at least 2 compute
/// threads and has at least 2 cells, else 1. Cells share one compute pool, so a second cell does not multiply the
/// threads: it fills the cores while the first is in the serial parts of its step (the prompt tokens' small
/// products, the optimiser, evaluation bookkeeping). `evosam bench jobs` measures what this buys on a machine.
/// The tables are the same whatever the number of jobs.
pub fn default_jobs(spec: &Spec) -> usize {
    let cpu = matches!(crate::spec::parse_device(&spec.experiment.device), Ok(None));
    if cpu && threads_for(spec) >= 2 && cells_of(spec).len() >= 2 {
        2
    } else {
        1
    }
}

/// `<out>/<experiment name>/`.
fn run_dir(spec: &Spec, opts: &RunOptions) -> PathBuf {
    opts.out
        .clone()
        .unwrap_or_else(|| spec.experiment.output.clone())
        .join(&spec.experiment.name)
}

fn banner(spec: &Spec, n_cells: usize, jobs: usize, threads: usize) -> String {
    format!(
        "{}: {} tasks, {} strategies x {} seeds x {} orders = {} cells, {} jobs, {threads} threads",
        spec.experiment.name,
        spec.stream.tasks.len(),
        spec.strategies.len(),
        spec.experiment.seeds.len(),
        spec.orders.len(),
        n_cells,
        jobs
    )
}

fn shared_of(
    spec: Spec,
    registry: &Registry,
    prep: setup::Prepared,
    dir: &Path,
    reporter: Reporter,
) -> Arc<Shared> {
    Arc::new(Shared {
        spec,
        registry: registry.clone(),
        model: prep.model,
        sha: prep.sha,
        tasks: prep.tasks,
        store: prep.store,
        dir: dir.to_path_buf(),
        device: prep.device,
        reporter,
    })
}

/// After the cells: the tables of every committed stage, the report, then the manifest (with where the time went,
/// also printed), or an error naming the cells that failed (with the tables of the others and the manifest
/// written). `run` and the Slurm finalize job end here; `clock` is the run's start and its times so far.
fn finish(
    shared: &Shared,
    folder: RunFolder,
    cells: &[Cell],
    outcomes: &[Outcome],
    opts: &RunOptions,
    threads: usize,
    clock: (std::time::Instant, RunTimes),
) -> Result<RunSummary> {
    let (t0, mut times) = clock;
    times.add_cells(outcomes.iter().map(|o| &o.times));
    let mut laps = Laps::start();
    let dir = folder.dir.clone();
    // Collect every stage written (also the completed stages of failed cells), in canonical order.
    let (scores, extras) = collect(shared, cells)?;
    let metrics = results::write_tables(&dir, &scores, &extras, shared.spec.stream.tasks.len())?;
    let slices: Vec<results::ScoreRow> = collect_optional(shared, cells, SLICE_SCORES_FILE)?;
    if !slices.is_empty() {
        results::write_slice_scores(&dir, &slices)?;
    }
    if let Some(ispec) = &shared.spec.interactive {
        let clicks: Vec<crate::interactive::rows::ClickRow> =
            collect_optional(shared, cells, study::CLICKS_FILE)?;
        crate::interactive::rows::write_tables(&dir, &clicks, ispec)?;
    }
    times.tables_s = laps.lap();
    if !opts.quiet {
        manifest::print_metrics(&metrics);
    }
    let failed = failures(outcomes);
    if failed.is_empty() && opts.report {
        write_report(&dir, &shared.reporter, crate::metrics::Metric::Dice);
        // volume tasks: the boundary metric the field reports beside Dice, in its own folder
        if shared.tasks.iter().any(|t| !t.test_volumes.is_empty()) {
            write_report(&dir, &shared.reporter, crate::metrics::Metric::Nsd);
        }
        times.report_s = Some(laps.lap());
    }
    times.total_s = t0.elapsed().as_secs_f64();
    times.peak_rss_mb = timing::peak_rss_mb();
    let run = manifest::RunRecord {
        started: &folder.first_start,
        resumed: folder.resumed,
        opts,
        threads,
        outcomes,
        extras: &extras,
        times: &times,
    };
    manifest::write_manifest(shared, &dir, &run)?;
    drop(folder);
    shared.reporter.info(&times.lines(opts.jobs.max(1)));
    if !failed.is_empty() {
        let list: Vec<String> = failed
            .iter()
            .map(|(id, e)| format!("  {id}: {e}"))
            .collect();
        return Err(Error::internal(format!(
            "{} of {} cells failed (tables hold the others, in {}):\n{}",
            failed.len(),
            cells.len(),
            dir.display(),
            list.join("\n")
        )));
    }
    shared
        .reporter
        .info(&format!("results in {}", dir.display()));
    Ok(RunSummary {
        dir,
        cells: cells.len(),
        failed,
    })
}

fn failures(outcomes: &[Outcome]) -> Vec<(String, String)> {
    outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().map(|e| (o.id.clone(), e.clone())))
        .collect()
}

/// The report of a complete run in `metric` (Dice: in the run folder; others in `report-<metric>/`). A failure
/// here is a warning: the results are complete and safe, only the derived figures are missing.
fn write_report(dir: &std::path::Path, reporter: &Reporter, metric: crate::metrics::Metric) {
    let out = if metric == crate::metrics::Metric::Dice {
        dir.to_path_buf()
    } else {
        dir.join(format!("report-{}", metric.column()))
    };
    match crate::report::write_report_in(std::slice::from_ref(&dir.to_path_buf()), &out, metric) {
        Ok(r) => {
            reporter.info(&format!(
                "report ({}): {} files in {} and {}",
                metric.label(),
                r.files.len(),
                out.join("plots").display(),
                out.join("tables").display()
            ));
            for n in &r.notes {
                reporter.info(&format!("report: {n}"));
            }
        }
        Err(e) => eprintln!(
            "warning: the report could not be written ({e}); the results are complete, retry with \
             `evosam report {}`",
            dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::checkpoint::{commit_stage, stage_dir};
    use super::*;
    use crate::util::derive_seed;
    use std::path::Path;

    #[test]
    fn seeds_and_cells_are_stable() {
        assert_eq!(derive_seed(&["a", "b"]), derive_seed(&["a", "b"]));
        assert_ne!(derive_seed(&["a", "b"]), derive_seed(&["ab", ""]));
        let text = "[experiment]\nname = \"x\"\nseeds = [1, 2]\n[stream]\norders = [\"given\", \"reverse\"]\n\
                    [[stream.task]]\nname = \"a\"\nsource = \"synthetic\"\nfamily = \"vessels\"\n\
                    [[stream.task]]\nname = \"b\"\nsource = \"synthetic\"\nfamily = \"organs\"\n\
                    [[strategy]]\npreset = \"zeroshot\"\n[[strategy]]\npreset = \"finetune\"\n";
        let spec = Spec::from_str_at(text, Path::new("s.toml"), Path::new(".")).unwrap();
        let c = cells_of(&spec);
        assert_eq!(c.len(), 8);
        assert_eq!(c[0].id, "zeroshot__seed1__given");
        assert_eq!(c[3].id, "zeroshot__seed2__reverse");
        assert_eq!(c[7].id, "finetune__seed2__reverse");
        let fp = spec_fingerprint(&spec);
        let spec2 = Spec::from_str_at(
            &text.replace("seeds = [1, 2]", "seeds = [1, 3]"),
            Path::new("s.toml"),
            Path::new("."),
        )
        .unwrap();
        assert_ne!(fp, spec_fingerprint(&spec2));
    }

    #[test]
    fn stage_commit_is_all_or_nothing() {
        let d = tempfile::tempdir().unwrap();
        // a failing writer leaves no stage folder
        let r = commit_stage(d.path(), 1, |tmp| {
            std::fs::write(tmp.join("scores.json"), "[]").unwrap();
            Err(Error::internal("boom"))
        });
        assert!(r.is_err());
        assert!(!stage_dir(d.path(), 1).exists());
        commit_stage(d.path(), 1, |tmp| {
            std::fs::write(tmp.join("scores.json"), "[]").map_err(|e| Error::io(tmp, e))
        })
        .unwrap();
        assert!(stage_dir(d.path(), 1).join("done").is_file());
        assert!(stage_dir(d.path(), 1).join("scores.json").is_file());
    }
}
