//! Where a run's time went: per stage of each cell (training, evaluation, interactive study, checkpoint) and for
//! the run as a whole (setup, embeddings, cells, tables, report). Recorded in `manifest.json` (`timings`, and
//! `times` per cell), in each cell's `attempt.json` (so the Slurm finalize job can add them up) and printed at the
//! end of a run. Never in the results tables, which stay bit-identical across runs and resumes.

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Seconds one stage of a cell spent in each part (this process; a resumed stage is not counted again).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimes {
    /// Stage number (0 = before any training).
    pub stage: usize,
    /// `train_task` (the optimiser steps, validation, and what the strategy does after them, e.g. the matcher).
    pub train_s: f64,
    /// Scoring every test case of every task of the order.
    pub eval_s: f64,
    /// The interactive study (`[eval.interactive]`), 0 without one.
    pub study_s: f64,
    /// Writing the stage folder (scores, extras, the strategy's state).
    pub checkpoint_s: f64,
}

/// The stages one process ran of a cell, in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CellTimes {
    /// One entry per stage run.
    pub stages: Vec<StageTimes>,
}

impl CellTimes {
    /// The parts summed over the stages (`stage` is the number of stages).
    pub fn total(&self) -> StageTimes {
        let mut t = StageTimes {
            stage: self.stages.len(),
            ..Default::default()
        };
        for s in &self.stages {
            t.train_s += s.train_s;
            t.eval_s += s.eval_s;
            t.study_s += s.study_s;
            t.checkpoint_s += s.checkpoint_s;
        }
        t
    }
}

/// A stopwatch for consecutive parts of a run: each `lap` returns the seconds since the previous one.
pub(super) struct Laps(Instant);

impl Laps {
    pub(super) fn start() -> Self {
        Laps(Instant::now())
    }

    pub(super) fn lap(&mut self) -> f64 {
        let now = Instant::now();
        let s = now.duration_since(self.0).as_secs_f64();
        self.0 = now;
        s
    }
}

/// The run's breakdown (`manifest.json`'s `timings`). The stage parts are summed over the cells' stages run by
/// this run (cell-seconds: with `--jobs N` up to N times `cells_wall_s`).
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct RunTimes {
    /// Device, model, data (everything before the embeddings).
    pub setup_s: f64,
    /// Computing or reading every frozen embedding.
    pub embeddings_s: f64,
    /// Wall time of the cells (all jobs; in the Slurm finalize job, the sum of the cells' attempts).
    pub cells_wall_s: f64,
    /// Stages run (all cells).
    pub stages: usize,
    /// Training, all stages run.
    pub train_s: f64,
    /// Evaluation, all stages run.
    pub eval_s: f64,
    /// Interactive study, all stages run.
    pub study_s: f64,
    /// Writing stage folders, all stages run.
    pub checkpoint_s: f64,
    /// Collecting the stages and writing the results tables.
    pub tables_s: f64,
    /// Writing the report (plots, tables); None when not written.
    pub report_s: Option<f64>,
    /// From the start of the run to the manifest.
    pub total_s: f64,
    /// Peak resident set size of this process so far, MiB (Linux; None elsewhere).
    pub peak_rss_mb: Option<f64>,
}

/// Peak resident set size of this process in MiB (`VmHWM`, Linux), if known.
pub fn peak_rss_mb() -> Option<f64> {
    proc_status_mb("VmHWM:")
}

/// A `/proc/self/status` memory line in MiB (Linux), if known.
pub fn proc_status_mb(key: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

impl RunTimes {
    /// The breakdown once setup and the embeddings are done: setup is everything since `t0` but the embeddings.
    pub(super) fn after_setup(t0: std::time::Instant, embeddings_s: f64) -> Self {
        Self {
            embeddings_s,
            setup_s: (t0.elapsed().as_secs_f64() - embeddings_s).max(0.0),
            ..Default::default()
        }
    }

    /// Sum the cells' records.
    pub(super) fn add_cells<'a>(&mut self, cells: impl IntoIterator<Item = &'a CellTimes>) {
        for c in cells {
            let t = c.total();
            self.train_s += t.train_s;
            self.eval_s += t.eval_s;
            self.study_s += t.study_s;
            self.checkpoint_s += t.checkpoint_s;
            self.stages += t.stage;
        }
    }

    /// The breakdown in two lines, for the end of a run.
    pub(super) fn lines(&self, jobs: usize) -> String {
        let report = self
            .report_s
            .map(|r| format!(", report {r:.1} s"))
            .unwrap_or_default();
        let peak = self
            .peak_rss_mb
            .map(|m| format!("; peak RSS {m:.0} MiB"))
            .unwrap_or_default();
        let study = if self.study_s > 0.0 {
            format!(", interactive study {:.1} s", self.study_s)
        } else {
            String::new()
        };
        format!(
            "time: {:.1} s in all: setup {:.1} s, embeddings {:.1} s, cells {:.1} s, results tables {:.1} s{report}{peak}\n\
             time in the cells ({} stages, {jobs} job(s), cell-seconds): training {:.1} s, evaluation {:.1} s{study}, \
             checkpoints {:.1} s",
            self.total_s,
            self.setup_s,
            self.embeddings_s,
            self.cells_wall_s,
            self.tables_s,
            self.stages,
            self.train_s,
            self.eval_s,
            self.checkpoint_s
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_times_add_up_and_print() {
        let c = CellTimes {
            stages: vec![
                StageTimes {
                    stage: 0,
                    train_s: 0.0,
                    eval_s: 1.0,
                    study_s: 0.0,
                    checkpoint_s: 0.25,
                },
                StageTimes {
                    stage: 1,
                    train_s: 4.0,
                    eval_s: 2.0,
                    study_s: 0.5,
                    checkpoint_s: 0.25,
                },
            ],
        };
        let t = c.total();
        assert_eq!(
            (t.stage, t.train_s, t.eval_s, t.study_s),
            (2, 4.0, 3.0, 0.5)
        );
        let mut r = RunTimes {
            total_s: 20.0,
            ..Default::default()
        };
        r.add_cells([&c, &c]);
        assert_eq!((r.stages, r.train_s, r.checkpoint_s), (4, 8.0, 1.0));
        let s = r.lines(2);
        assert!(
            s.contains("training 8.0 s, evaluation 6.0 s, interactive study 1.0 s"),
            "{s}"
        );
        assert!(!s.contains("report"), "{s}");
        r.report_s = Some(3.0);
        assert!(r.lines(1).contains("report 3.0 s"));
    }
}
