//! Running a spec on a Slurm cluster: one job array of cells between a prepare and a finalize job, giving the same
//! results folder as `evosam run`.
//!
//! Slurm is the engine; this module is the adapter. It shells out to `sbatch`/`squeue`/`scancel` and never needs
//! `sacct` (a Slurm database many clusters lack): the cell folders on the shared file system say what finished.
//! - [`settings`]: the `[slurm]` spec table and the `evosam submit` flags (validated, flags win);
//! - [`script`]: the three job scripts (prepare, cells array, finalize) and their `sbatch` arguments;
//! - [`submit`]: planning (which cells are left), writing the scripts, submitting the chain, the submission record;
//! - [`slurm`]: the command-line tools and `squeue --json`;
//! - [`status`]: per-cell state from the cell folders (and the queue), for `evosam status`.
//!
//! Shared-file-system rules the runner follows for this to be correct with many processes on many hosts: every
//! file another process reads is written under a temporary name and renamed ([`crate::results::write_atomic`],
//! stage folders); locks carry host, pid and a heartbeat ([`crate::lock`]), never a bare PID; each cell has its own
//! lock, so two array tasks can never run the same cell.

pub mod script;
pub mod settings;
pub mod slurm;
pub mod status;
pub mod submit;

#[cfg(test)]
mod tests;

pub use settings::SlurmSettings;
pub use status::{read_status, Attempt, CellState, CellStatus};
pub use submit::{submit, Submission, SubmitOptions, Submitted};

use std::path::Path;

/// The lines finalize prints for cells that did not finish: id, why (from the cell's attempt record) and the Slurm
/// log to read. `array`: the cells array job id (None for a local run).
pub fn unfinished_report(
    dir: &Path,
    unfinished: &[(usize, String)],
    array: Option<&str>,
) -> Vec<String> {
    unfinished
        .iter()
        .map(|(index, id)| {
            let attempt: Option<Attempt> =
                std::fs::read_to_string(dir.join("cells").join(id).join(status::ATTEMPT_FILE))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok());
            let why = match &attempt {
                Some(a) if a.status == "failed" => {
                    a.error.clone().unwrap_or_else(|| "failed".into())
                }
                Some(a) if a.status == "running" => {
                    "stopped without finishing (killed, cancelled or out of time)".into()
                }
                Some(_) => "did not finish".into(),
                None => "never started".into(),
            };
            match array {
                Some(a) => format!(
                    "{id}: {why}; log: {}",
                    status::cell_log(dir, a, *index).display()
                ),
                None => format!("{id}: {why}"),
            }
        })
        .collect()
}
