//! `evosam status DIR`: one line per cell of a run (local or on Slurm).

use evosam::cluster::{self, slurm, submit};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run folder (OUT/<experiment name>).
    pub dir: PathBuf,
}

pub fn run(args: Args) -> evosam::Result<()> {
    let subs = submit::read_submissions(&args.dir)?;
    let latest = subs.last();
    // only ask Slurm about runs that were submitted to it
    let queue = latest.and_then(|_| slurm::squeue());
    if let Some(s) = latest {
        let id = |j: &Option<String>| j.clone().unwrap_or_else(|| "-".into());
        let mut line = format!(
            "Slurm: prepare {}, cells {} (--array={}), finalize {}",
            id(&s.prepare),
            id(&s.cells),
            s.array,
            id(&s.finalize)
        );
        match &queue {
            Some(q) => {
                let ids: Vec<u64> = [&s.prepare, &s.cells, &s.finalize]
                    .iter()
                    .filter_map(|j| j.as_deref()?.parse().ok())
                    .collect();
                let mine: Vec<String> = q
                    .iter()
                    .filter(|j| {
                        ids.contains(&j.job_id) || j.array_job_id.is_some_and(|a| ids.contains(&a))
                    })
                    .map(
                        |j| match (j.array_job_id, j.array_task_id, &j.array_task_string) {
                            (Some(a), Some(t), _) => format!("{a}_{t} {}", j.state),
                            (Some(a), None, Some(ts)) => format!("{a}_[{ts}] {}", j.state),
                            _ => format!("{} {}", j.job_id, j.state),
                        },
                    )
                    .collect();
                if mine.is_empty() {
                    line.push_str("; none queued");
                } else {
                    line.push_str(&format!("; queued: {}", mine.join(", ")));
                }
            }
            None => line.push_str("; squeue not reachable, from the cell folders only"),
        }
        println!("{line}");
    }
    let cells = cluster::read_status(&args.dir, latest, queue.as_deref())?;
    for l in cluster::status::format_status(&cells) {
        println!("{l}");
    }
    Ok(())
}
