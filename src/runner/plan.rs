//! The plan of a run: its cells (strategy x seed x order), the spec fingerprint `--resume` checks, and the
//! ownership of the results folder (fresh, or resumed with the same fingerprint).

use crate::data::SourceSpec;
use crate::results::FolderLock;
use crate::spec::{ModelSpec, Order, Spec, StrategySpec};
use crate::util::write_atomic;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// One unit of work.
#[derive(Clone, Debug)]
pub struct Cell {
    /// Index into `Spec::strategies`.
    pub strategy: usize,
    /// Experiment seed.
    pub seed: u64,
    /// Index into `Spec::orders`.
    pub order: usize,
    /// `<label>__seed<seed>__<order label>`: the folder name under `cells/`.
    pub id: String,
}

/// All cells of a spec, in the canonical order (strategy, seed, order).
pub fn cells_of(spec: &Spec) -> Vec<Cell> {
    let mut out = Vec::new();
    for (si, s) in spec.strategies.iter().enumerate() {
        for &seed in &spec.experiment.seeds {
            for (oi, o) in spec.orders.iter().enumerate() {
                out.push(Cell {
                    strategy: si,
                    seed,
                    order: oi,
                    id: format!("{}__seed{seed}__{}", s.label, o.label),
                });
            }
        }
    }
    out
}

/// One task as the fingerprint and the manifest record it: its name and typed source (defaults filled in).
#[derive(Serialize)]
pub(crate) struct TaskView<'a> {
    name: &'a str,
    source: SourceSpec,
}

/// The stream as the fingerprint and the manifest record it.
#[derive(Serialize)]
pub(crate) struct StreamView<'a> {
    tasks: Vec<TaskView<'a>>,
}

/// The spec's stream with every source read into its typed form.
pub(crate) fn stream_view(spec: &Spec) -> Result<StreamView<'_>> {
    let tasks = spec
        .stream
        .tasks
        .iter()
        .map(|t| {
            Ok(TaskView {
                name: &t.name,
                source: SourceSpec::of(spec, t)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(StreamView { tasks })
}

/// What `--resume` checks: everything that changes results.
#[derive(Serialize)]
struct Fingerprinted<'a> {
    stream: StreamView<'a>,
    orders: &'a [Order],
    model: &'a ModelSpec,
    strategies: &'a [StrategySpec],
    seeds: &'a [u64],
    /// `[eval] nsd_tolerance_mm` when not the default (so specs without it keep their fingerprint).
    #[serde(skip_serializing_if = "Option::is_none")]
    nsd_tolerance_mm: Option<f64>,
}

/// sha256 of everything that changes results (tasks and their sources, orders, model, strategies, seeds).
pub fn spec_fingerprint(spec: &Spec) -> String {
    let stream = match stream_view(spec) {
        Ok(s) => s,
        // cannot happen for a parsed spec; an unreadable source still gets a stable, distinct fingerprint
        Err(e) => return hex::encode(Sha256::digest(e.to_string().as_bytes())),
    };
    let f = Fingerprinted {
        stream,
        orders: &spec.orders,
        model: &spec.model,
        strategies: &spec.strategies,
        seeds: &spec.experiment.seeds,
        nsd_tolerance_mm: (spec.eval.nsd_tolerance_mm != crate::spec::DEFAULT_NSD_TOLERANCE_MM)
            .then_some(spec.eval.nsd_tolerance_mm),
    };
    let s = serde_json::to_string(&f).unwrap_or_default();
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// `run.json`: what `--resume` (and `evosam submit`) check, and the cell list `evosam status` reads.
#[derive(Serialize, Deserialize)]
pub(super) struct RunFile {
    pub fingerprint: String,
    pub started: String,
    /// Every cell and its number of stages (absent in folders of older versions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cells: Vec<RunFileCell>,
    /// The spec as it ran (`runner::resolved_spec`, what `evosam validate --resolved` prints): presets merged,
    /// defaults filled in, paths absolute. Informative only: `--resume` compares the fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct RunFileCell {
    pub id: String,
    pub stages: usize,
}

impl RunFile {
    /// Read `run.json`.
    pub fn read(path: &Path) -> Result<RunFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::input(format!("{}: not an evosam run file: {e}", path.display())))
    }

    /// Refuse a folder started with another spec.
    pub fn check(&self, dir: &Path, fingerprint: &str) -> Result<()> {
        if self.fingerprint != fingerprint {
            return Err(Error::input(format!(
                "{}: the spec changed since this run started (tasks, orders, model, strategies or seeds differ); \
                 use another --out or restore the spec",
                dir.display()
            )));
        }
        Ok(())
    }
}

fn is_empty_dir(d: &Path) -> bool {
    match std::fs::read_dir(d) {
        Ok(mut it) => it.all(|e| e.map(|e| e.file_name() == ".lock").unwrap_or(false)),
        Err(_) => true,
    }
}

/// The results folder of a run, locked for this process.
pub(super) struct RunFolder {
    /// `OUT/<experiment name>/`.
    pub dir: PathBuf,
    /// `run.json` (fingerprint and first start).
    pub run_file: PathBuf,
    /// When the run first started (an earlier start when resumed).
    pub first_start: String,
    /// True when continuing an earlier run.
    pub resumed: bool,
    /// Held until the run ends.
    pub lock: FolderLock,
}

impl RunFolder {
    /// Claim the folder: a fresh run needs a new or empty folder; `resume` needs a matching fingerprint.
    pub fn open(
        spec: &Spec,
        dir: PathBuf,
        started: &str,
        resume: bool,
        resolved: Option<serde_json::Value>,
    ) -> Result<RunFolder> {
        let fingerprint = spec_fingerprint(spec);
        if dir.exists() && !is_empty_dir(&dir) && !resume {
            return Err(Error::input(format!(
                "results folder {} already exists: pass --resume to continue it, or --out DIR for another folder",
                dir.display()
            )));
        }
        let lock = FolderLock::acquire(&dir)?;
        let run_file = dir.join("run.json");
        let mut first_start = started.to_string();
        let resumed = run_file.is_file();
        if resumed {
            let rf = RunFile::read(&run_file)?;
            rf.check(&dir, &fingerprint)?;
            first_start = rf.started;
        } else {
            let rf = RunFile {
                fingerprint,
                started: started.to_string(),
                cells: cells_of(spec)
                    .into_iter()
                    .map(|c| RunFileCell {
                        stages: spec.orders[c.order].tasks.len() + 1,
                        id: c.id,
                    })
                    .collect(),
                // the results root this run really uses (`--out` overrides the spec's `output`)
                spec: resolved.map(|mut v| {
                    if let (Some(e), Some(root)) = (v.get_mut("experiment"), dir.parent()) {
                        e["output"] = std::path::absolute(root)
                            .unwrap_or_else(|_| root.to_path_buf())
                            .display()
                            .to_string()
                            .into();
                    }
                    v
                }),
            };
            write_atomic(
                &run_file,
                serde_json::to_string_pretty(&rf)
                    .unwrap_or_default()
                    .as_bytes(),
            )?;
        }
        Ok(RunFolder {
            dir,
            run_file,
            first_start,
            resumed,
            lock,
        })
    }

    /// Undo a fresh run's claim after a failure before the first cell (a resumed folder is left alone).
    pub fn abandon(self) {
        if !self.resumed {
            let _ = std::fs::remove_file(&self.run_file);
            drop(self.lock);
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}
