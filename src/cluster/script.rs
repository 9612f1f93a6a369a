//! The three job scripts of a submission, as text. Everything a job needs is in its script (resources as
//! `#SBATCH` lines, absolute paths, the cell list), so a person can read, edit and `sbatch` them by hand; only the
//! job ids of the chain are given on the `sbatch` command line, because they exist only after submission.
//!
//! Quoting: the script body is bash, and every path is single-quoted (`'...'`, with `'\''` for a quote inside), so
//! spaces and shell characters are safe. `#SBATCH` lines are not read by bash but by `sbatch`, which accepts a
//! double-quoted value; paths with a double quote or a control character are refused there.

use crate::spec::SlurmSettings;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// What the scripts are generated from.
#[derive(Clone, Debug)]
pub struct JobPlan {
    /// The evosam binary the jobs run (absolute; on a cluster it must be on the shared file system).
    pub exe: PathBuf,
    /// The spec (absolute).
    pub spec: PathBuf,
    /// The results root given as `--out` (absolute); the run folder is `out/<experiment>`.
    pub out: PathBuf,
    /// The spec's experiment name (the run folder's name).
    pub experiment: String,
    /// Every cell id of the spec, in the canonical order (the array index of a cell is its position here).
    pub cells: Vec<String>,
    /// The number of stages of each cell (tasks of its order + the zero-shot stage), parallel to `cells`.
    pub stages: Vec<usize>,
    /// Indices (into `cells`) of the cells to run: all of them on a first submission, the unfinished ones on a
    /// resubmission.
    pub todo: Vec<usize>,
    /// Resources and options: the spec's `[slurm]` table overridden by the command line.
    pub settings: SlurmSettings,
}

/// The rendered scripts.
#[derive(Clone, Debug, PartialEq)]
pub struct Scripts {
    /// The prepare job (validation, weights, every frozen embedding).
    pub prepare: String,
    /// The array job, one task per cell.
    pub cells: String,
    /// The finalize job (tables and report from the finished cells).
    pub finalize: String,
}

/// Which job of the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// Validate, fetch weights, fill the embedding cache.
    Prepare,
    /// The array of cells.
    Cells,
    /// Collect tables, write the report.
    Finalize,
}

impl Job {
    /// The job's name in file names and job names.
    pub fn name(self) -> &'static str {
        match self {
            Job::Prepare => "prepare",
            Job::Cells => "cells",
            Job::Finalize => "finalize",
        }
    }
}

impl JobPlan {
    /// `out/<experiment>`.
    pub fn run_dir(&self) -> PathBuf {
        self.out.join(&self.experiment)
    }

    /// `out/<experiment>/slurm`: scripts, logs and the submission record.
    pub fn slurm_dir(&self) -> PathBuf {
        self.run_dir().join("slurm")
    }

    /// `out/<experiment>/slurm/<job>.sh`.
    pub fn script_path(&self, job: Job) -> PathBuf {
        self.slurm_dir().join(format!("{}.sh", job.name()))
    }

    /// The log pattern Slurm fills in (`%j` job id; `%A_%a` array job id and task index).
    pub fn log_pattern(&self, job: Job) -> PathBuf {
        let name = match job {
            Job::Cells => "cells_%A_%a.out".to_string(),
            j => format!("{}_%j.out", j.name()),
        };
        self.slurm_dir().join("logs").join(name)
    }

    /// The `--array` value: the todo indices as ranges, `%K` when `max_parallel` is set.
    pub fn array_spec(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut idx = self.todo.clone();
        idx.sort_unstable();
        idx.dedup();
        let mut i = 0;
        while i < idx.len() {
            let start = idx[i];
            while i + 1 < idx.len() && idx[i + 1] == idx[i] + 1 {
                i += 1;
            }
            parts.push(if idx[i] == start {
                start.to_string()
            } else {
                format!("{start}-{}", idx[i])
            });
            i += 1;
        }
        let mut s = parts.join(",");
        if let Some(k) = self.settings.max_parallel {
            s.push_str(&format!("%{k}"));
        }
        s
    }

    /// Render the three scripts.
    pub fn render(&self) -> Result<Scripts> {
        for p in [&self.exe, &self.spec, &self.out] {
            if !p.is_absolute() {
                return Err(Error::internal(format!(
                    "job scripts need absolute paths, got {}",
                    p.display()
                )));
            }
        }
        let common = |job: Job, compute: bool| -> Result<String> {
            let mut s = String::from("#!/bin/bash\n");
            s.push_str(&format!(
                "# evosam {} job of experiment {:?}, written by `evosam submit`.\n",
                job.name(),
                self.experiment
            ));
            s.push_str(match job {
                Job::Prepare => "# Validates the spec and data, fetches the weights and computes every frozen embedding into the\n# cache once, so that the cell jobs only read it.\n",
                Job::Cells => "# One array task per cell (strategy x seed x order); the array index is the cell's position in the\n# list below. A cell resumes after its last finished stage.\n",
                Job::Finalize => "# Collects the finished cells into the results tables and report, as `evosam run` does, and names\n# every cell that did not finish with its log; exits non-zero if any did not.\n",
            });
            s.push_str(&format!(
                "#SBATCH --job-name={}\n",
                directive_value(&format!("evosam-{}-{}", self.experiment, job.name()))?
            ));
            s.push_str(&format!(
                "#SBATCH --output={}\n",
                directive_value(&self.log_pattern(job).to_string_lossy())?
            ));
            if job == Job::Cells {
                s.push_str(&format!("#SBATCH --array={}\n", self.array_spec()));
                // if prepare fails the array can never start: cancel it, so that finalize runs and reports
                s.push_str("#SBATCH --kill-on-invalid-dep=yes\n");
            }
            for d in self.settings.directives(compute) {
                s.push_str(&format!("#SBATCH {}\n", directive_arg(&d)?));
            }
            s.push_str("set -euo pipefail\n");
            Ok(s)
        };
        let run = format!(
            "{} run {} --out {}",
            sh_quote(&self.exe.to_string_lossy()),
            sh_quote(&self.spec.to_string_lossy()),
            sh_quote(&self.out.to_string_lossy())
        );
        // compute threads follow the CPUs Slurm gave the job (candle and rayon read RAYON_NUM_THREADS)
        let threads =
            "export RAYON_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-${RAYON_NUM_THREADS:-1}}\"\n";

        let mut prepare = common(Job::Prepare, true)?;
        prepare.push_str(threads);
        prepare.push_str(&format!("exec {run} --prepare\n"));

        let mut cells = common(Job::Cells, true)?;
        cells.push_str("cells=(\n");
        for (i, c) in self.cells.iter().enumerate() {
            cells.push_str(&format!("  {}  # {i}\n", sh_quote(c)));
        }
        cells.push_str(")\n");
        cells.push_str(threads);
        cells.push_str(&format!(
            "exec {run} --cell \"${{cells[$SLURM_ARRAY_TASK_ID]}}\"\n"
        ));

        let mut finalize = common(Job::Finalize, false)?;
        finalize.push_str("# $1: the job id of the cells array (names the cells' log files)\n");
        finalize.push_str(&format!(
            "exec {run} --finalize --slurm-array \"${{1:-}}\"\n"
        ));
        Ok(Scripts {
            prepare,
            cells,
            finalize,
        })
    }

    /// The `sbatch` argument lists of the chain. `prev` is the job id this job depends on (None for prepare);
    /// the array job id is also passed to the finalize script as its argument.
    pub fn sbatch_args(&self, job: Job, prev: Option<&str>) -> Vec<String> {
        let mut a = vec!["--parsable".to_string()];
        match (job, prev) {
            (Job::Cells, Some(p)) => a.push(format!("--dependency=afterok:{p}")),
            (Job::Finalize, Some(p)) => a.push(format!("--dependency=afterany:{p}")),
            _ => {}
        }
        a.push(self.script_path(job).to_string_lossy().into_owned());
        if let (Job::Finalize, Some(p)) = (job, prev) {
            a.push(p.to_string());
        }
        a
    }
}

/// Quote for bash: `'...'`, a single quote inside written as `'\''`.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A value on an `#SBATCH` line: as is when plain, else double-quoted (sbatch's own parser, not bash, reads it).
fn directive_value(v: &str) -> Result<String> {
    if v.contains('"') || v.chars().any(|c| c.is_control()) {
        return Err(Error::input(format!(
            "{v:?}: a path or name with a double quote or a control character cannot be written into a job script"
        )));
    }
    if v.chars().any(|c| c.is_whitespace() || "'\\#".contains(c)) {
        Ok(format!("\"{v}\""))
    } else {
        Ok(v.to_string())
    }
}

/// An `--option=value` argument on an `#SBATCH` line (value quoted as needed).
fn directive_arg(a: &str) -> Result<String> {
    match a.split_once('=') {
        Some((k, v)) => Ok(format!("{k}={}", directive_value(v)?)),
        None => directive_value(a),
    }
}

/// Absolute form of `p` without touching the file system (relative paths are joined to the current directory).
pub fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| Error::io(p, e))
}
