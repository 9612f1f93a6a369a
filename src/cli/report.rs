//! `evosam report RUN_DIR [RUN_DIR ...] [--out DIR] [--compare]`: plots and tables for one or more results folders
//! of one experiment, or (`--compare`) one comparison table across several experiments.

use std::path::PathBuf;

use evosam::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Results folder(s) written by `evosam run`, or one study folder of `evosam annotate`. Several folders are merged (e.g. parts of one
    /// experiment run on different machines).
    #[arg(required = true, value_name = "RUN_DIR")]
    pub run_dirs: Vec<PathBuf>,
    /// Output folder for plots/ and tables/ (default: the run folder; required with several folders).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Compare different experiments (told apart by experiment name and spec fingerprint; folders of one
    /// experiment are still merged): one table with a column group per experiment, a mean over experiments,
    /// average ranks with a Friedman test, an ACC figure per experiment and, from 3 experiments on, a
    /// critical-difference figure. Requires --out.
    #[arg(long)]
    pub compare: bool,
    /// The per-case metric of the matrix, curves and tables: dice, nsd (normalised surface Dice) or hd95 (mm;
    /// lower is better). Another metric than Dice defaults to writing into `<run>/report-<metric>/`.
    #[arg(long, value_name = "METRIC", default_value = "dice", value_parser = ["dice", "nsd", "hd95"])]
    pub metric: String,
}

/// Write the report and list the files written.
pub fn run(args: Args) -> evosam::Result<()> {
    let metric = evosam::metrics::Metric::parse(&args.metric)
        .ok_or_else(|| Error::input(format!("--metric {}: use dice, nsd or hd95", args.metric)))?;
    if args.compare {
        let out = args.out.as_ref().ok_or_else(|| {
            Error::input("--compare: choose where the comparison goes with --out DIR")
        })?;
        let summary = evosam::report::compare::write_compare_report(&args.run_dirs, out, metric)?;
        print_summary(&summary);
        return Ok(());
    }
    let out =
        match (&args.out, args.run_dirs.as_slice()) {
            (Some(o), _) => o.clone(),
            (None, [one]) if metric == evosam::metrics::Metric::Dice => one.clone(),
            (None, [one]) => one.join(format!("report-{}", metric.column())),
            (None, _) => return Err(Error::input(
                "several results folders given: choose where the merged report goes with --out DIR",
            )),
        };
    if let [one] = args.run_dirs.as_slice() {
        if evosam::report::study::is_study(one) {
            let s = evosam::report::study::write_study_report(one, &out)?;
            for n in &s.notes {
                eprintln!("note: {n}");
            }
            println!("wrote {} files under {}", s.files.len(), out.display());
            for f in &s.files {
                println!("  {}", f.display());
            }
            return Ok(());
        }
    }
    let summary = evosam::report::write_report_in(&args.run_dirs, &out, metric)?;
    print_summary(&summary);
    Ok(())
}

fn print_summary(summary: &evosam::report::ReportSummary) {
    for n in &summary.notes {
        eprintln!("note: {n}");
    }
    println!(
        "wrote {} files under {}",
        summary.files.len(),
        summary.out_dir.display()
    );
    for f in &summary.files {
        println!("  {}", f.display());
    }
}
