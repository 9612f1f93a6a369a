use clap::{Parser, Subcommand};

mod cli;

/// Large-block cache in front of the system allocator (see `cli/alloc.rs`): training steps free and
/// re-allocate the same large buffers every step.
#[global_allocator]
static GLOBAL: cli::alloc::BlockCache = cli::alloc::BlockCache;

/// Continual-learning experiments for medical image segmentation with EvoSAM on LiteMedSAM.
#[derive(Parser)]
#[command(name = "evosam", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Segment one image with a box prompt (optionally through a set of LoRA experts).
    Segment(cli::segment::Args),
    /// Run an experiment spec: train every strategy through the task stream and record scores.
    Run(cli::run::Args),
    /// Run an experiment spec on a Slurm cluster: prepare job, one array task per cell, finalize job.
    Submit(cli::submit::Args),
    /// Show each cell of a run folder: stages done, running / waiting / failed, last progress line.
    Status(cli::status::Args),
    /// Check an experiment spec without running it.
    Validate(cli::validate::Args),
    /// Print the JSON Schema of a spec (or a preset) for editors, or the spec reference.
    Schema(cli::schema::Args),
    /// Write a commented starter spec (from a data folder's layout, or the quickstart template).
    Init(cli::init::Args),
    /// Write plots and tables for one or more results folders.
    Report(cli::report::Args),
    /// Serve the annotation page of a study with people (box + clicks, blinded model schedule, event log).
    Annotate(cli::annotate::Args),
    /// Measure model speed and memory on this machine.
    Bench(cli::bench::Args),
    /// Write an EvoSAM expert folder as Hugging Face PEFT LoRA folders and a router, for PyTorch.
    Export(cli::export::Args),
}

/// The compute thread count of `evosam run`: candle's matmuls and rayon's global pool read
/// `RAYON_NUM_THREADS` once, when they start, so the binary sets it before any work (the library never does).
fn set_threads(n: usize) {
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version with exit 0 and usage errors with exit 2.
            e.exit();
        }
    };
    // A forced instruction set the CPU lacks (or a misspelt one) is refused before any work, not ignored.
    if let Err(e) =
        evosam::model::isa::Isa::from_env().and_then(|_| evosam::model::isa::Numerics::from_env())
    {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
    let result = match cli.command {
        Command::Segment(a) => match a.tile.clone() {
            Some(t) => cli::segment_tiled::parse_tile(&t)
                .and_then(|(size, overlap)| cli::segment_tiled::run(&a, size, overlap)),
            None => cli::segment::run(a),
        },
        Command::Run(a) => cli::run::run(a, set_threads),
        Command::Submit(a) => cli::submit::run(a),
        Command::Status(a) => cli::status::run(a),
        Command::Validate(a) => cli::validate::run(a),
        Command::Schema(a) => cli::schema::run(a),
        Command::Init(a) => cli::init::run(a),
        Command::Report(a) => cli::report::run(a),
        Command::Annotate(a) => cli::annotate::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::Bench(a) => {
            // candle's CPU matmul reads RAYON_NUM_THREADS at every call: set it before anything runs so that
            // `--threads` governs it (the library itself never sets environment variables).
            std::env::set_var("RAYON_NUM_THREADS", a.what.thread_count().to_string());
            cli::bench::run(a)
        }
    };
    if let Err(e) = result {
        let mut msg = format!("error: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!("\n  caused by: {s}"));
            src = s.source();
        }
        eprintln!("{msg}");
        std::process::exit(e.exit_code());
    }
}
