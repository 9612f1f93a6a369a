//! `evosam run SPEC [--out DIR] [--jobs N] [--resume] [--quiet] [--no-report]`, and the parts of a run that
//! `evosam submit`'s Slurm jobs run as separate processes: `--prepare`, `--cell ID`, `--finalize`.

use evosam::runner::{self, RunOptions};
use evosam::spec::Spec;
use evosam::strategy::Registry;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Experiment spec (TOML).
    pub spec: PathBuf,
    /// Results root; results go to DIR/<experiment name>/ (default: the spec's `output`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Cells (strategy x seed x order) to run concurrently; compute threads are shared, not multiplied
    /// (default: 2 on a CPU with at least 2 threads, else 1; `evosam bench jobs` shows what more buy).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Continue an interrupted run in the same folder (finished stages are kept).
    #[arg(long)]
    pub resume: bool,
    /// No progress output (errors are still printed).
    #[arg(long)]
    pub quiet: bool,
    /// Do not write the report (plots/, tables/) at the end; `evosam report DIR` writes it later.
    #[arg(long)]
    pub no_report: bool,
    /// Run only this cell (STRATEGY__seedS__ORDER), resuming after its last finished stage: what a Slurm array
    /// task runs, and a way to debug one cell. The folder must be this spec's run (it is made if missing).
    #[arg(long, value_name = "ID", conflicts_with_all = ["prepare", "finalize", "resume"])]
    pub cell: Option<String>,
    /// Only prepare the run (folder, weights, data, embeddings into the cache): the Slurm prepare job.
    #[arg(long, conflicts_with_all = ["finalize", "resume"])]
    pub prepare: bool,
    /// Only collect the finished cells into the tables, manifest and report (the Slurm finalize job); fails,
    /// naming them, if any cell did not finish.
    #[arg(long, conflicts_with = "resume")]
    pub finalize: bool,
    /// With --finalize: the job id of the cells array, so that unfinished cells are named with their Slurm logs.
    #[arg(long, value_name = "JOBID", requires = "finalize")]
    pub slurm_array: Option<String>,
}

/// Run the spec with the built-in strategies. `set_threads` receives the run's compute thread count
/// ([`runner::threads_for`]) before any work starts: the binary sets `RAYON_NUM_THREADS` with it (the library
/// itself never changes process-wide state).
pub fn run(args: Args, set_threads: fn(usize)) -> evosam::Result<()> {
    if args.jobs == Some(0) {
        return Err(evosam::Error::input("--jobs must be at least 1"));
    }
    let registry = Registry::default();
    let spec = Spec::load(&args.spec, &registry)?;
    set_threads(runner::threads_for(&spec));
    spec.check_data()?;
    let mut opts = RunOptions::default();
    opts.out = args.out;
    opts.jobs = args.jobs.unwrap_or_else(|| runner::default_jobs(&spec));
    opts.resume = args.resume;
    opts.quiet = args.quiet;
    opts.report = !args.no_report;
    if let Some(id) = &args.cell {
        return runner::run_one_cell(spec, &registry, &opts, id);
    }
    if args.prepare {
        let dir = runner::prepare_run(spec, &opts)?;
        if !args.quiet {
            println!("{}", dir.display());
        }
        return Ok(());
    }
    let summary = if args.finalize {
        let dir = opts
            .out
            .clone()
            .unwrap_or_else(|| spec.experiment.output.clone())
            .join(&spec.experiment.name);
        let array = args.slurm_array.filter(|a| !a.is_empty());
        let log_of = |i: usize| {
            evosam::cluster::status::cell_log(&dir, array.as_deref().unwrap_or_default(), i)
        };
        let log_of: Option<&dyn Fn(usize) -> PathBuf> = array.is_some().then_some(&log_of as _);
        runner::finalize_run(spec, &registry, &opts, log_of)?
    } else {
        runner::run(spec, &registry, &opts)?
    };
    if !args.quiet {
        println!("{}", summary.dir.display());
    }
    Ok(())
}
