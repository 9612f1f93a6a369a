//! `evosam submit SPEC [--out DIR] [--partition P] [--time T] [--cpus-per-task N] [--mem SIZE] [--gpus-per-task N]
//! [--account A] [--qos Q] [--max-parallel K] [--sbatch-arg ARG]... [--dry-run]`

use evosam::cluster::{self, SlurmSettings, SubmitOptions};
use evosam::spec::Spec;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Experiment spec (TOML); its optional [slurm] table gives defaults for the flags below.
    pub spec: PathBuf,
    /// Results root on a shared file system; results go to DIR/<experiment name>/ (default: the spec's `output`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Slurm partition(s).
    #[arg(long, value_name = "P")]
    pub partition: Option<String>,
    /// Time limit per job (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS).
    #[arg(long, value_name = "TIME")]
    pub time: Option<String>,
    /// CPUs per cell (and for prepare); also the cell's compute threads.
    #[arg(long, value_name = "N")]
    pub cpus_per_task: Option<u32>,
    /// Memory per job (e.g. 8G).
    #[arg(long, value_name = "SIZE")]
    pub mem: Option<String>,
    /// GPUs per cell (and for prepare).
    #[arg(long, value_name = "N")]
    pub gpus_per_task: Option<u32>,
    /// Slurm account to charge.
    #[arg(long, value_name = "A")]
    pub account: Option<String>,
    /// Slurm quality of service.
    #[arg(long, value_name = "Q")]
    pub qos: Option<String>,
    /// Run at most K cells at once.
    #[arg(long, value_name = "K")]
    pub max_parallel: Option<u32>,
    /// A further sbatch option for every job, e.g. --sbatch-arg=--constraint=a100 (repeatable).
    #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// Write and print the job scripts and the sbatch commands; submit nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: Args) -> evosam::Result<()> {
    let spec = Spec::from_file(&args.spec)?;
    // the login node must see the data the jobs will read (same shared file system)
    spec.check_data()?;
    let opts = SubmitOptions {
        out: args.out,
        flags: SlurmSettings {
            partition: args.partition,
            time: args.time,
            cpus_per_task: args.cpus_per_task,
            mem: args.mem,
            gpus_per_task: args.gpus_per_task,
            account: args.account,
            qos: args.qos,
            max_parallel: args.max_parallel,
            sbatch_args: args.sbatch_args,
        },
        dry_run: args.dry_run,
        exe: None,
    };
    let s = cluster::submit(&spec, &opts)?;
    let dir = s.plan.run_dir();
    if args.dry_run {
        for (job, text) in [
            (cluster::script::Job::Prepare, &s.scripts.prepare),
            (cluster::script::Job::Cells, &s.scripts.cells),
            (cluster::script::Job::Finalize, &s.scripts.finalize),
        ] {
            println!("==> {} <==\n{text}", s.plan.script_path(job).display());
        }
        println!("==> submit with (dry run: nothing was submitted) <==");
        for c in &s.commands {
            println!("{c}");
        }
        return Ok(());
    }
    let sub = s
        .submission
        .ok_or_else(|| evosam::Error::internal("submitted without a record"))?;
    if s.finished > 0 {
        println!(
            "{} of {} cells already finished; submitting the other {}",
            s.finished,
            s.plan.cells.len(),
            s.plan.todo.len()
        );
    }
    let id = |j: &Option<String>| j.clone().unwrap_or_else(|| "-".into());
    println!("prepare job:  {}", id(&sub.prepare));
    println!(
        "cells array:  {} ({} tasks, --array={})",
        id(&sub.cells),
        sub.todo.len(),
        sub.array
    );
    println!("finalize job: {}", id(&sub.finalize));
    println!("{}", dir.display());
    Ok(())
}
