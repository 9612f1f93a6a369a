//! `evosam run SPEC [--out DIR] [--jobs N] [--resume] [--quiet]`

use crate::runner::{self, RunOptions};
use crate::spec::Spec;
use crate::strategy::Registry;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Experiment spec (TOML).
    pub spec: PathBuf,
    /// Results root; results go to DIR/<experiment name>/ (default: the spec's `output`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Cells (strategy x seed x order) to run concurrently; compute threads are shared, not multiplied.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub jobs: usize,
    /// Continue an interrupted run in the same folder (finished stages are kept).
    #[arg(long)]
    pub resume: bool,
    /// No progress output (errors are still printed).
    #[arg(long)]
    pub quiet: bool,
    /// Do not write the report (plots/, tables/) at the end; `evosam report DIR` writes it later.
    #[arg(long)]
    pub no_report: bool,
}

/// Run the spec with the built-in strategies. `set_threads` receives the run's compute thread count
/// ([`runner::threads_for`]) before any work starts: the binary sets `RAYON_NUM_THREADS` with it (the library
/// itself never changes process-wide state).
pub fn run(args: Args, set_threads: fn(usize)) -> crate::Result<()> {
    if args.jobs == 0 {
        return Err(crate::Error::input("--jobs must be at least 1"));
    }
    let registry = Registry::default();
    let spec = Spec::load(&args.spec, &registry)?;
    set_threads(runner::threads_for(&spec));
    spec.check_data()?;
    let opts = RunOptions {
        out: args.out,
        jobs: args.jobs,
        resume: args.resume,
        quiet: args.quiet,
        report: !args.no_report,
    };
    let summary = runner::run(spec, &registry, &opts)?;
    if !args.quiet {
        println!("{}", summary.dir.display());
    }
    Ok(())
}
