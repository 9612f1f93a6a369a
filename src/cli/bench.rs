//! `evosam bench`: speed and memory on this machine, one measuring module per subcommand.
//! - `model` ([`model`]): LiteMedSAM's forward passes and training steps, optionally next to PyTorch;
//! - `scale` ([`scale`], [`experts`], [`matcher`]): how an EvoSAM cell's (and `joint`'s) cost grows with the
//!   number of tasks, inference with the number of experts, and the matcher's fit and solve;
//! - `jobs` ([`jobs`]): decoder train steps per second with N concurrent cells (what `--jobs N` buys);
//! - [`common`]: medians, timing, memory, the compute pool and Markdown tables, for all of them.

pub mod common;
pub mod experts;
pub mod jobs;
pub mod matcher;
pub mod model;
pub mod scale;

use common::thread_count;
use evosam::Result;

/// `evosam bench`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to measure.
    #[command(subcommand)]
    pub what: What,
}

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// LiteMedSAM speed and memory on this machine.
    Model(model::ModelArgs),
    /// Cost vs number of tasks (EvoSAM and joint cells), inference vs number of experts, matcher fit and solve.
    Scale(scale::ScaleArgs),
    /// Decoder train steps per second with 1, 2, ... concurrent cells.
    Jobs(jobs::JobsArgs),
}

impl What {
    /// The compute thread count the benchmark asks for (`--threads`, 0 = all cores).
    pub fn thread_count(&self) -> usize {
        thread_count(match self {
            What::Model(a) => a.threads,
            What::Scale(a) => a.threads,
            What::Jobs(a) => a.threads,
        })
    }
}

/// Run `evosam bench`.
pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Model(a) => model::run(a),
        What::Scale(a) => scale::run(a),
        What::Jobs(a) => jobs::run(a),
    }
}
