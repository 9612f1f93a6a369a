//! Running a spec on a Slurm cluster: one job array of cells between a prepare and a finalize job, giving the same
//! results folder as `evosam run`.
//!
//! Slurm is the engine; this module is the adapter. It shells out to `sbatch`/`squeue`/`scancel` and never needs
//! `sacct` (a Slurm database many clusters lack): the cell folders on the shared file system say what finished.
//! - [`SlurmSettings`] (defined with the spec, `crate::spec::SlurmSettings`): the `[slurm]` table and the
//!   `evosam submit` flags (validated, flags win);
//! - [`script`]: the three job scripts (prepare, cells array, finalize) and their `sbatch` arguments;
//! - [`submit`](mod@submit): planning (which cells are left), writing the scripts, submitting the chain, the submission record;
//! - [`slurm`]: the command-line tools and `squeue --json`;
//! - [`status`]: per-cell state from the cell folders (and the queue), for `evosam status`.
//!
//! The runner runs the jobs' parts (`crate::runner::prepare_run`, `run_one_cell`, `finalize_run`); this module
//! sits above it and is used only by the CLI.
//!
//! Shared-file-system rules the runner follows for this to be correct with many processes on many hosts: every
//! file another process reads is written under a temporary name and renamed (`write_atomic`,
//! stage folders); locks carry host, pid and a heartbeat (`crate::lock`), never a bare PID; each cell has its own
//! lock, so two array tasks can never run the same cell.

pub mod script;
pub mod slurm;
pub mod status;
pub mod submit;

#[cfg(test)]
mod tests;

pub use crate::spec::SlurmSettings;
pub use status::{read_status, CellState, CellStatus};
pub use submit::{submit, Submission, SubmitOptions, Submitted};
