//! Progress display for a run: bars on a terminal, plain timestamped lines otherwise, nothing with `--quiet`.

use crate::strategy::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

enum Mode {
    Quiet,
    Lines,
    Bars {
        multi: MultiProgress,
        overall: ProgressBar,
    },
}

/// Progress for the whole run: bars on a terminal, plain lines otherwise, nothing with `--quiet`.
pub struct Reporter {
    mode: Mode,
    /// Run folder whose `cells/<id>/progress.txt` get each cell's latest progress line (for `evosam status`).
    progress_dir: Option<PathBuf>,
    bars: Mutex<HashMap<String, ProgressBar>>,
    last_line: Mutex<HashMap<String, (usize, usize)>>,
    start: Instant,
}

impl Reporter {
    /// A reporter for `n_cells` cells: silent with `quiet`, bars on a terminal, lines otherwise.
    pub fn new(quiet: bool, n_cells: usize) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(n_cells as u64));
            overall.set_style(
                ProgressStyle::with_template(
                    "cells {bar:30} {pos}/{len} [{elapsed_precise} eta {eta}] {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            Mode::Bars { multi, overall }
        } else {
            Mode::Lines
        };
        Self {
            mode,
            progress_dir: None,
            bars: Mutex::new(HashMap::new()),
            last_line: Mutex::new(HashMap::new()),
            start: Instant::now(),
        }
    }

    /// Also keep each cell's latest progress line in `dir/cells/<id>/progress.txt`.
    pub fn with_progress_files(mut self, dir: &Path) -> Self {
        self.progress_dir = Some(dir.to_path_buf());
        self
    }

    fn record(&self, id: &str, line: &str) {
        if let Some(d) = &self.progress_dir {
            super::record::write_progress(&d.join("cells").join(id), line);
        }
    }

    fn stamp(&self) -> String {
        let s = self.start.elapsed().as_secs();
        format!("[{:02}:{:02}:{:02}]", s / 3600, (s / 60) % 60, s % 60)
    }

    /// A run-level message.
    pub fn info(&self, msg: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("{} {msg}", self.stamp()),
            Mode::Bars { multi, .. } => {
                let _ = multi.println(msg);
            }
        }
    }

    fn cell_bar(&self, id: &str) -> Option<ProgressBar> {
        let Mode::Bars { multi, .. } = &self.mode else {
            return None;
        };
        let mut bars = self.bars.lock().ok()?;
        Some(
            bars.entry(id.to_string())
                .or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(1));
                    b.set_style(
                        ProgressStyle::with_template(
                            "  {prefix} {bar:20} {pos}/{len} eta {eta} {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    b.set_prefix(id.to_string());
                    b
                })
                .clone(),
        )
    }

    /// A cell entered a stage (training a task, evaluating, resumed).
    pub fn stage(&self, id: &str, stage: usize, n: usize, what: &str) {
        self.record(id, &format!("stage {stage}/{n}: {what}"));
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("{} {id}: stage {stage}/{n}: {what}", self.stamp()),
            Mode::Bars { .. } => {
                if let Some(b) = self.cell_bar(id) {
                    b.set_message(format!("stage {stage}/{n}: {what}"));
                }
            }
        }
    }

    /// One optimiser step inside a cell.
    pub fn step(&self, id: &str, stage: usize, n: usize, p: &Progress) {
        if p.step == p.steps {
            self.record(
                id,
                &format!(
                    "stage {stage}/{n} task {} epoch {}/{} loss {:.4}",
                    p.task, p.epoch, p.epochs, p.loss
                ),
            );
        }
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => {
                if p.step == p.steps {
                    if let Ok(mut l) = self.last_line.lock() {
                        if l.get(id) == Some(&(stage, p.epoch)) {
                            return;
                        }
                        l.insert(id.to_string(), (stage, p.epoch));
                    }
                    eprintln!(
                        "{} {id}: stage {stage}/{n} task {} epoch {}/{} loss {:.4}",
                        self.stamp(),
                        p.task,
                        p.epoch,
                        p.epochs,
                        p.loss
                    );
                }
            }
            Mode::Bars { .. } => {
                if let Some(b) = self.cell_bar(id) {
                    b.set_length((p.epochs * p.steps) as u64);
                    b.set_position(((p.epoch - 1) * p.steps + p.step) as u64);
                    b.set_message(format!(
                        "stage {stage}/{n} {} epoch {}/{} loss {:.4}",
                        p.task, p.epoch, p.epochs, p.loss
                    ));
                }
            }
        }
    }

    /// A cell finished (`err`: why it failed).
    pub fn cell_done(&self, id: &str, err: Option<&str>) {
        match &self.mode {
            // the final error lists failed cells
            Mode::Quiet => {}
            Mode::Lines => match err {
                None => eprintln!("{} {id}: done", self.stamp()),
                Some(e) => eprintln!("{} {id}: FAILED: {e}", self.stamp()),
            },
            Mode::Bars { multi, overall } => {
                if let Some(b) = self.bars.lock().ok().and_then(|mut m| m.remove(id)) {
                    b.finish_and_clear();
                    multi.remove(&b);
                }
                if let Some(e) = err {
                    let _ = multi.println(format!("cell {id} FAILED: {e}"));
                }
                overall.inc(1);
            }
        }
    }

    /// The run is over: close the bars.
    pub fn finish(&self) {
        if let Mode::Bars { overall, .. } = &self.mode {
            overall.finish();
        }
    }
}
