//! Talking to Slurm: shelling out to `sbatch`, `squeue` and `scancel`, as users do. (The Rust FFI crates bind an
//! old libslurm ABI; the command-line tools are stable across versions.) `sacct` is never used: it needs a Slurm
//! database that many clusters lack; the cell folders say what finished.

use crate::{Error, Result};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// The state of one job (or array task) as `squeue` reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedJob {
    /// The job id of this record (a running array task has its own).
    pub job_id: u64,
    /// The array job id (for array tasks; the job id otherwise).
    pub array_job_id: Option<u64>,
    /// The task index of a running/started array task.
    pub array_task_id: Option<u64>,
    /// For a pending array record: the indices it stands for ("2-7%2").
    pub array_task_string: Option<String>,
    /// PENDING, RUNNING, COMPLETING, ...
    pub state: String,
    /// Why it waits (Resources, Dependency, JobArrayTaskLimit, ...).
    pub reason: String,
    /// The job name (`evosam-<experiment>-prepare`, `-cells`, `-finalize`).
    pub name: String,
}

/// Job states after which a job is gone for good (squeue keeps listing them for `MinJobAge` seconds).
const TERMINAL: [&str; 10] = [
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
];

impl QueuedJob {
    /// Still queued or running (not in a final state).
    pub fn is_active(&self) -> bool {
        !self.state.split(',').any(|s| TERMINAL.contains(&s))
    }

    /// Whether this record covers array task `index` of array job `array`.
    pub fn covers(&self, array: u64, index: usize) -> bool {
        if self.array_job_id != Some(array) {
            return false;
        }
        if let Some(t) = self.array_task_id {
            return t == index as u64;
        }
        self.array_task_string
            .as_deref()
            .is_some_and(|s| index_in_array_string(s, index))
    }
}

/// Whether `index` is in an array string such as `0-3,7,9-11%2`.
pub fn index_in_array_string(s: &str, index: usize) -> bool {
    let s = s.split('%').next().unwrap_or("");
    s.split(',').any(|part| {
        let part = part.split(':').next().unwrap_or(part); // a step (`0-9:2`) is treated as the full range
        match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) => a <= index && index <= b,
                _ => false,
            },
            None => part.trim().parse::<usize>() == Ok(index),
        }
    })
}

/// A number in `squeue --json`: plain in 22.05, `{"set": bool, "infinite": bool, "number": n}` in 23.02+.
fn num(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::Object(o) => {
            if o.get("set").and_then(Value::as_bool) == Some(false) {
                None
            } else {
                o.get("number").and_then(Value::as_u64)
            }
        }
        _ => None,
    }
}

/// A string, or the first of a list of strings (`job_state` is a list in 23.02+).
fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    }
}

/// Parse `squeue --json` output (the `jobs` list; other keys are ignored).
pub fn parse_squeue_json(s: &str) -> Result<Vec<QueuedJob>> {
    let v: Value = serde_json::from_str(s)
        .map_err(|e| Error::internal(format!("squeue --json: not JSON: {e}")))?;
    let jobs = v
        .get("jobs")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::internal("squeue --json: no `jobs` list"))?;
    Ok(jobs
        .iter()
        .filter_map(|j| {
            let job_id = num(j.get("job_id"))?;
            let array_task_id = num(j.get("array_task_id"));
            let ats = text(j.get("array_task_string"));
            let array_job_id = num(j.get("array_job_id")).filter(|&a| a != 0);
            Some(QueuedJob {
                job_id,
                array_job_id,
                array_task_id,
                array_task_string: (!ats.is_empty()).then_some(ats),
                state: text(j.get("job_state")),
                reason: text(j.get("state_reason")),
                name: text(j.get("name")),
            })
        })
        .collect())
}

/// The queued and running jobs (finished ones, which `squeue` lists for a while, are left out), or None when
/// Slurm is not reachable here (no `squeue`, no controller).
pub fn squeue() -> Option<Vec<QueuedJob>> {
    let out = Command::new("squeue").arg("--json").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let jobs = parse_squeue_json(&String::from_utf8_lossy(&out.stdout)).ok()?;
    Some(jobs.into_iter().filter(QueuedJob::is_active).collect())
}

/// Whether any job of `ids` (job or array job ids) is still queued or running. None when Slurm is not reachable.
pub fn any_queued(ids: &[u64]) -> Option<Vec<QueuedJob>> {
    let q = squeue()?;
    Some(
        q.into_iter()
            .filter(|j| ids.contains(&j.job_id) || j.array_job_id.is_some_and(|a| ids.contains(&a)))
            .collect(),
    )
}

/// `sbatch ARGS` (ARGS must include `--parsable`): the job id it prints.
pub fn sbatch(args: &[String], cwd: &Path) -> Result<String> {
    let out = Command::new("sbatch")
        .args(args)
        .current_dir(cwd)
        .output()
        .map_err(|e| {
            Error::input(format!(
                "cannot run sbatch ({e}): is this a Slurm login node? (`--dry-run` writes the scripts without it)"
            ))
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error::input(format!(
            "sbatch {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // --parsable prints "jobid" or "jobid;cluster"
    let id = stdout.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::internal(format!(
            "sbatch printed {:?}, expected a job id",
            stdout.trim()
        )));
    }
    Ok(id)
}

/// `scancel ID...` (best effort: used to undo a half-submitted chain).
pub fn scancel(ids: &[String]) {
    if !ids.is_empty() {
        let _ = Command::new("scancel").args(ids).output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_strings() {
        assert!(index_in_array_string("2-3%2", 3));
        assert!(!index_in_array_string("2-3%2", 4));
        assert!(index_in_array_string("0,4-6,9", 5));
        assert!(index_in_array_string("0,4-6,9", 9));
        assert!(!index_in_array_string("0,4-6,9", 7));
    }

    /// Real output of `squeue --json` (Slurm 22.05.8, a 4-task array with %2: two running, two pending).
    #[test]
    fn parses_real_squeue_22_05() {
        let s = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/slurm/squeue-22.05.json"
        ))
        .unwrap();
        let q = parse_squeue_json(&s).unwrap();
        assert_eq!(q.len(), 3);
        let running: Vec<_> = q.iter().filter(|j| j.state == "RUNNING").collect();
        assert_eq!(running.len(), 2);
        assert!(q.iter().any(|j| j.covers(1, 0) && j.state == "RUNNING"));
        let pending = q.iter().find(|j| j.state == "PENDING").unwrap();
        assert_eq!(pending.reason, "JobArrayTaskLimit");
        assert!(pending.covers(1, 2) && pending.covers(1, 3) && !pending.covers(1, 1));
        assert!(!pending.covers(2, 2));
        assert!(q.iter().all(QueuedJob::is_active));
        let done = QueuedJob {
            state: "CANCELLED".into(),
            ..pending.clone()
        };
        assert!(!done.is_active());
    }

    #[test]
    fn parses_the_newer_number_objects() {
        let s = r#"{"jobs": [{"job_id": 12, "array_job_id": {"set": true, "number": 10},
            "array_task_id": {"set": true, "number": 2}, "job_state": ["RUNNING"], "state_reason": "None",
            "name": "x"},
            {"job_id": 10, "array_job_id": {"set": true, "number": 10},
             "array_task_id": {"set": false, "number": 0}, "array_task_string": "3-5",
             "job_state": ["PENDING"], "state_reason": "Priority", "name": "x"}]}"#;
        let q = parse_squeue_json(s).unwrap();
        assert!(q[0].covers(10, 2) && q[0].state == "RUNNING");
        assert!(q[1].array_task_id.is_none() && q[1].covers(10, 4));
        assert!(parse_squeue_json("{}").is_err());
    }
}
