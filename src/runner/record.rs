//! What a cell's folder says about it besides its stages, for `evosam status` and the Slurm finalize job:
//! `attempt.json` (the latest attempt: where, when, ok or failed and why) and `progress.txt` (its latest progress
//! line). Both are replaced whole (written under a temporary name and renamed), so a reader on another host never
//! sees half a file.

use crate::util::write_atomic;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file name of a cell's latest attempt record.
pub const ATTEMPT_FILE: &str = "attempt.json";
/// The file name of a cell's last progress line.
pub const PROGRESS_FILE: &str = "progress.txt";

/// Written by each process that runs a cell, at its start and end: the record of the latest attempt, so a failed
/// or killed cell can be told apart from one never started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    /// Host the attempt ran on.
    pub host: String,
    /// Process id of the attempt on `host`.
    pub pid: u32,
    /// `JOBID` or `ARRAYJOB_TASK` when it ran under Slurm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job: Option<String>,
    /// RFC 3339 start time (UTC, whole seconds).
    pub started: String,
    /// "running", "ok" or "failed". "running" in a cell that no process holds means it was killed.
    pub status: String,
    /// RFC 3339 end time, once the attempt ended (ok or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// Wall-clock seconds from start to end, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<f64>,
    /// The error message of a failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the attempt's time went, per stage it ran, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<super::timing::CellTimes>,
}

impl Attempt {
    /// A new attempt by this process, "running".
    pub fn start() -> Self {
        Attempt {
            host: crate::lock::hostname(),
            pid: std::process::id(),
            slurm_job: crate::lock::slurm_job(),
            started: now(),
            status: "running".into(),
            finished: None,
            wall_s: None,
            error: None,
            times: None,
        }
    }

    /// The cell's latest attempt, if it has one.
    pub fn read(cell_dir: &Path) -> Option<Attempt> {
        std::fs::read_to_string(cell_dir.join(ATTEMPT_FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    }

    /// Replace the cell's `attempt.json` with this record (atomically).
    pub fn write(&self, cell_dir: &Path) -> Result<()> {
        let s = serde_json::to_vec(self).map_err(|e| Error::internal(e.to_string()))?;
        write_atomic(&cell_dir.join(ATTEMPT_FILE), &s)
    }

    /// Why a cell whose latest attempt this is did not finish.
    pub fn why_unfinished(a: Option<&Attempt>) -> String {
        match a {
            Some(a) if a.status == "failed" => a.error.clone().unwrap_or_else(|| "failed".into()),
            Some(a) if a.status == "running" => {
                "stopped without finishing (killed, cancelled or out of time)".into()
            }
            Some(_) => "did not finish".into(),
            None => "never started".into(),
        }
    }
}

/// Now, as RFC 3339 in whole seconds (UTC).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Complete stages of a cell: stage_0, stage_1, ... each with its `done` marker, counted until the first gap.
pub fn stages_done(cell_dir: &Path) -> usize {
    (0..)
        .take_while(|k| cell_dir.join(format!("stage_{k}")).join("done").is_file())
        .count()
}

/// Replace a cell's progress line (best effort: a temporary file renamed into place, not synced; progress is
/// not worth a disk flush per epoch).
pub fn write_progress(cell_dir: &Path, line: &str) {
    if std::fs::create_dir_all(cell_dir).is_err() {
        return;
    }
    let tmp = cell_dir.join(format!(".progress.{}.tmp", std::process::id()));
    if std::fs::write(&tmp, format!("{line}\n")).is_ok() {
        let _ = std::fs::rename(&tmp, cell_dir.join(PROGRESS_FILE));
    }
}
