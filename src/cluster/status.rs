//! `evosam status DIR`: what each cell of a run is doing, read from the cell folders (which is the truth on any
//! machine: a stage folder appears, atomically, only when the stage is complete) and, when Slurm is reachable, from
//! `squeue --json` for the jobs of the latest submission. Works the same for local runs (`evosam run`), which leave
//! no submission record.

use super::slurm::QueuedJob;
use super::submit::Submission;
use crate::lock::{self, Liveness};
pub use crate::runner::record::{stages_done, Attempt, ATTEMPT_FILE, PROGRESS_FILE};
use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One cell as `status` sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct CellStatus {
    /// The cell id (`strategy__seedN__order`).
    pub id: String,
    /// Stages whose checkpoint is committed.
    pub stages_done: usize,
    /// None when the run folder does not say how many stages a cell has.
    pub stages_total: Option<usize>,
    /// Done, running, waiting or failed.
    pub state: CellState,
    /// The last progress line the cell wrote (or the last line of its Slurm log).
    pub last: Option<String>,
}

/// Where a cell stands.
#[derive(Clone, Debug, PartialEq)]
pub enum CellState {
    /// Every stage committed.
    Done,
    /// Where it runs (host, Slurm job).
    Running(String),
    /// Queued in Slurm (the reason it waits), or not started yet.
    Waiting(String),
    /// Why (the error, or "killed").
    Failed(String),
}

impl CellState {
    /// One word for the status table (`done`, `running`, `waiting`, `failed`).
    pub fn word(&self) -> &'static str {
        match self {
            CellState::Done => "done",
            CellState::Running(_) => "running",
            CellState::Waiting(_) => "waiting",
            CellState::Failed(_) => "failed",
        }
    }
}

/// The cell list a run folder declares (`run.json` `cells`: id and number of stages; before the prepare job has
/// written it, `slurm/cells.json` from `evosam submit`), else the cell folders.
pub fn declared_cells(dir: &Path) -> Result<Vec<(String, Option<usize>)>> {
    #[derive(Deserialize)]
    struct RunCells {
        #[serde(default)]
        cells: Vec<DeclaredCell>,
    }
    #[derive(Deserialize)]
    struct DeclaredCell {
        id: String,
        stages: usize,
    }
    let rf = dir.join("run.json");
    if let Ok(text) = std::fs::read_to_string(&rf) {
        if let Ok(r) = serde_json::from_str::<RunCells>(&text) {
            if !r.cells.is_empty() {
                return Ok(r
                    .cells
                    .into_iter()
                    .map(|c| (c.id, Some(c.stages)))
                    .collect());
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("slurm").join("cells.json")) {
        if let Ok(list) = serde_json::from_str::<Vec<DeclaredCell>>(&text) {
            return Ok(list.into_iter().map(|c| (c.id, Some(c.stages))).collect());
        }
    }
    let cdir = dir.join("cells");
    let mut ids: Vec<(String, Option<usize>)> = match std::fs::read_dir(&cdir) {
        Ok(it) => it
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), None))
            .filter(|(n, _)| !n.starts_with('.'))
            .collect(),
        Err(_) if rf.is_file() => Vec::new(),
        Err(_) => {
            return Err(Error::input(format!(
                "{} is not an evosam run folder (no run.json, no cells/)",
                dir.display()
            )))
        }
    };
    ids.sort();
    Ok(ids)
}

fn last_line(path: &Path) -> Option<String> {
    // the tail of a log is enough; logs of long runs can be large
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let s = String::from_utf8_lossy(&buf);
    // progress bars redraw with \r: the text after the last one is what a terminal shows
    s.lines()
        .rev()
        .map(|l| l.rsplit('\r').next().unwrap_or(l).trim())
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// The Slurm log of cell `index` in array job `array` (`slurm/logs/cells_<array>_<index>.out`).
pub fn cell_log(dir: &Path, array: &str, index: usize) -> PathBuf {
    dir.join("slurm")
        .join("logs")
        .join(format!("cells_{array}_{index}.out"))
}

/// The status of every cell of the run in `dir`. `queue`: `squeue` records when Slurm is reachable.
pub fn read_status(
    dir: &Path,
    submission: Option<&Submission>,
    queue: Option<&[QueuedJob]>,
) -> Result<Vec<CellStatus>> {
    let cells = declared_cells(dir)?;
    // a finished run's manifest has each cell's outcome (older run folders say nothing else about it)
    let manifest: Vec<(String, String, Option<String>)> =
        std::fs::read_to_string(dir.join("manifest.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|m| m.get("cells").and_then(|c| c.as_array()).cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|c| {
                let s = |k: &str| c.get(k).and_then(|v| v.as_str()).map(str::to_string);
                Some((s("id")?, s("status")?, s("error")))
            })
            .collect();
    let mut out = Vec::with_capacity(cells.len());
    for (index, (id, total)) in cells.into_iter().enumerate() {
        let cdir = dir.join("cells").join(&id);
        let done = stages_done(&cdir);
        let attempt = Attempt::read(&cdir);
        let log = submission
            .and_then(|s| s.cells.as_deref().map(|a| (a, s)))
            .filter(|(_, s)| s.todo.contains(&index))
            .map(|(a, _)| cell_log(dir, a, index));
        let last = std::fs::read_to_string(cdir.join(PROGRESS_FILE))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| log.as_deref().and_then(last_line));
        let array = submission
            .and_then(|s| s.cells.as_deref())
            .and_then(|a| a.parse::<u64>().ok());
        let queued = array.and_then(|a| queue?.iter().find(|j| j.covers(a, index)));
        let lock = lock::inspect(&cdir.join(".lock"));
        let in_manifest = manifest.iter().find(|(m, _, _)| m == &id);
        let complete = total.is_some_and(|t| done >= t)
            || attempt.as_ref().is_some_and(|a| a.status == "ok")
            || (attempt.is_none() && in_manifest.is_some_and(|(_, s, _)| s == "ok"));
        let state = if complete {
            CellState::Done
        } else if let Some((h, Liveness::Alive)) = &lock {
            CellState::Running(match &h.slurm_job {
                Some(j) => format!("{} job {j}", h.host),
                None => format!("{} pid {}", h.host, h.pid),
            })
        } else if let Some(q) = queued {
            if q.state == "PENDING" {
                CellState::Waiting(format!("queued: {}", q.reason))
            } else {
                CellState::Running(format!(
                    "Slurm job {}_{index}, {}",
                    array.unwrap_or_default(),
                    q.state.to_lowercase()
                ))
            }
        } else {
            match &attempt {
                Some(a) if a.status == "failed" => {
                    CellState::Failed(a.error.clone().unwrap_or_else(|| "failed".into()))
                }
                Some(a) if a.status == "running" => CellState::Failed(format!(
                    "stopped without finishing (killed, cancelled or out of time; started {} on {})",
                    a.started, a.host
                )),
                _ => match in_manifest {
                    Some((_, st, err)) if st == "failed" => {
                        CellState::Failed(err.clone().unwrap_or_else(|| "failed".into()))
                    }
                    _ if done > 0 => CellState::Waiting("stopped; resume to continue".into()),
                    _ => CellState::Waiting("not started".into()),
                },
            }
        };
        out.push(CellStatus {
            id,
            stages_done: done,
            stages_total: total,
            state,
            last,
        });
    }
    Ok(out)
}

/// The lines `evosam status` prints: one per cell, then a summary.
pub fn format_status(cells: &[CellStatus]) -> Vec<String> {
    let w = cells.iter().map(|c| c.id.len()).max().unwrap_or(0);
    let mut lines: Vec<String> = cells
        .iter()
        .map(|c| {
            let stages = match c.stages_total {
                Some(t) => format!("{}/{t}", c.stages_done),
                None => format!("{}/?", c.stages_done),
            };
            let detail = match &c.state {
                CellState::Done => String::new(),
                CellState::Running(s) | CellState::Waiting(s) | CellState::Failed(s) => {
                    format!(" ({s})")
                }
            };
            let mut l = format!(
                "{:w$}  {stages:>5} stages  {}{detail}",
                c.id,
                c.state.word()
            );
            if let (Some(last), false) = (&c.last, c.state == CellState::Done) {
                l.push_str(&format!("  | {last}"));
            }
            l
        })
        .collect();
    let count = |s: &str| cells.iter().filter(|c| c.state.word() == s).count();
    lines.push(format!(
        "{} cells: {} done, {} running, {} waiting, {} failed",
        cells.len(),
        count("done"),
        count("running"),
        count("waiting"),
        count("failed")
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::write_atomic;

    fn stage(dir: &Path, id: &str, k: usize) {
        write_atomic(
            &dir.join("cells")
                .join(id)
                .join(format!("stage_{k}"))
                .join("done"),
            b"ok\n",
        )
        .unwrap();
    }

    #[test]
    fn states_from_cell_folders_and_queue() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let ids = [
            "a__seed0__given",
            "b__seed0__given",
            "c__seed0__given",
            "d__seed0__given",
            "e__seed0__given",
        ];
        let cells: Vec<_> = ids
            .iter()
            .map(|i| serde_json::json!({"id": i, "stages": 3}))
            .collect();
        write_atomic(
            &dir.join("run.json"),
            serde_json::to_string(
                &serde_json::json!({"fingerprint": "x", "started": "t", "cells": cells}),
            )
            .unwrap()
            .as_bytes(),
        )
        .unwrap();
        // a: complete; b: 1 stage, killed while running; c: failed with an error; d: queued; e: never started
        for k in 0..3 {
            stage(dir, ids[0], k);
        }
        stage(dir, ids[1], 0);
        let attempt = |status: &str, error: Option<&str>| Attempt {
            host: "node7".into(),
            pid: 1,
            slurm_job: Some("40_1".into()),
            started: "2026-01-01T00:00:00Z".into(),
            status: status.into(),
            finished: None,
            wall_s: None,
            error: error.map(str::to_string),
            times: None,
        };
        let put = |id: &str, a: &Attempt| {
            write_atomic(
                &dir.join("cells").join(id).join(ATTEMPT_FILE),
                &serde_json::to_vec(a).unwrap(),
            )
            .unwrap()
        };
        put(ids[1], &attempt("running", None));
        write_atomic(
            &dir.join("cells").join(ids[1]).join(PROGRESS_FILE),
            b"stage 1/2 task t1 epoch 2/4 loss 0.5\n",
        )
        .unwrap();
        put(ids[2], &attempt("failed", Some("non-finite loss: stage 1")));
        let sub = Submission {
            submitted: "t".into(),
            prepare: Some("39".into()),
            cells: Some("40".into()),
            finalize: Some("41".into()),
            todo: vec![0, 1, 2, 3, 4],
            array: "0-4".into(),
        };
        let q = vec![QueuedJob {
            job_id: 40,
            array_job_id: Some(40),
            array_task_id: None,
            array_task_string: Some("3-4%2".into()),
            state: "PENDING".into(),
            reason: "JobArrayTaskLimit".into(),
            name: "x".into(),
        }];
        let st = read_status(dir, Some(&sub), Some(&q)).unwrap();
        let words: Vec<_> = st.iter().map(|c| c.state.word()).collect();
        assert_eq!(words, ["done", "failed", "failed", "waiting", "waiting"]);
        assert_eq!((st[0].stages_done, st[0].stages_total), (3, Some(3)));
        assert_eq!(st[1].stages_done, 1);
        assert!(st[1].last.as_deref().unwrap().contains("epoch 2/4"));
        assert_eq!(
            st[3].state,
            CellState::Waiting("queued: JobArrayTaskLimit".into())
        );
        let lines = format_status(&st);
        assert_eq!(lines.len(), 6);
        assert!(
            lines[1].contains("1/3 stages  failed (stopped without finishing"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("non-finite loss"), "{}", lines[2]);
        assert_eq!(lines[5], "5 cells: 1 done, 0 running, 2 waiting, 2 failed");
        // without a queue, d falls back to its folder: not started
        let st = read_status(dir, Some(&sub), None).unwrap();
        assert_eq!(st[3].state, CellState::Waiting("not started".into()));
        // a live lock means running, whatever the queue says
        let _l = crate::lock::Lock::acquire(&dir.join("cells").join(ids[4]).join(".lock"), "cell")
            .unwrap();
        let st = read_status(dir, Some(&sub), Some(&q)).unwrap();
        assert_eq!(st[4].state.word(), "running");
    }

    #[test]
    fn local_runs_without_run_json_cells_list_the_folders() {
        let d = tempfile::tempdir().unwrap();
        stage(d.path(), "x__seed0__given", 0);
        stage(d.path(), "x__seed0__given", 1);
        let st = read_status(d.path(), None, None).unwrap();
        assert_eq!(st.len(), 1);
        assert_eq!((st[0].stages_done, st[0].stages_total), (2, None));
        assert!(format_status(&st)[0].contains("2/? stages"));
        assert!(read_status(&d.path().join("nope"), None, None).is_err());
        assert_eq!(
            st[0].state,
            CellState::Waiting("stopped; resume to continue".into())
        );
        // an older finished run: its manifest says which cells finished
        write_atomic(
            &d.path().join("manifest.json"),
            br#"{"cells": [{"id": "x__seed0__given", "status": "ok", "wall_s": 1.0}]}"#,
        )
        .unwrap();
        assert_eq!(
            read_status(d.path(), None, None).unwrap()[0].state,
            CellState::Done
        );
    }
}
