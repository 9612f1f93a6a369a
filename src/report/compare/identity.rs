//! Which experiment a results folder belongs to: its experiment name and spec fingerprint, as the runner records
//! them in `manifest.json` (the fingerprint also in `run.json`). Folders of one experiment (parts run on other
//! machines, or with `--only`) share both and are merged; folders that differ in either are different experiments.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{Error, Result};

/// What tells experiments apart, as far as a folder records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExperimentId {
    /// `[experiment] name` from `manifest.json` (None: not recorded, e.g. a run still in progress).
    pub name: Option<String>,
    /// The spec fingerprint (`manifest.json` `spec_fingerprint`, else `run.json` `fingerprint`), when recorded.
    pub fingerprint: Option<String>,
}

impl ExperimentId {
    /// Neither name nor fingerprint recorded (a folder not written by `evosam run`).
    pub fn is_unknown(&self) -> bool {
        self.name.is_none() && self.fingerprint.is_none()
    }

    /// Could be the same experiment: name and fingerprint agree wherever both folders record them.
    pub fn compatible(&self, other: &ExperimentId) -> bool {
        let agree = |a: &Option<String>, b: &Option<String>| match (a, b) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        agree(&self.name, &other.name) && agree(&self.fingerprint, &other.fingerprint)
    }

    /// Fill in what `other` records and this one does not.
    fn absorb(&mut self, other: &ExperimentId) {
        if self.name.is_none() {
            self.name = other.name.clone();
        }
        if self.fingerprint.is_none() {
            self.fingerprint = other.fingerprint.clone();
        }
    }
}

/// The folders of one experiment, in the order given.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Experiment {
    /// Its name and fingerprint (what its folders record).
    pub id: ExperimentId,
    /// The name shown in tables and figures: the experiment name (else the first folder's name), with the
    /// fingerprint's first 8 characters when another experiment of the same name is compared.
    pub label: String,
    /// Its results folders (merged as parts of one experiment).
    pub run_dirs: Vec<PathBuf>,
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::input(format!("{}: not valid JSON: {e}", path.display())))
}

/// The experiment a results folder belongs to, as far as it records it.
pub fn experiment_of(dir: &Path) -> Result<ExperimentId> {
    if !dir.is_dir() {
        return Err(Error::input(format!(
            "{}: results folder not found",
            dir.display()
        )));
    }
    let manifest = read_json(&dir.join("manifest.json"))?;
    let run = read_json(&dir.join("run.json"))?;
    let field = |v: &Option<serde_json::Value>, k: &str| {
        v.as_ref()
            .and_then(|v| v.get(k))
            .and_then(|x| x.as_str())
            .map(str::to_string)
    };
    Ok(ExperimentId {
        name: field(&manifest, "experiment"),
        fingerprint: field(&manifest, "spec_fingerprint").or_else(|| field(&run, "fingerprint")),
    })
}

fn folder_name(dir: &Path) -> String {
    dir.canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Group folders by experiment, in order of first appearance: a folder joins the first experiment it is
/// compatible with ([`ExperimentId::compatible`]); a folder that records nothing is an experiment of its own,
/// labelled by its folder name.
pub fn group_experiments(dirs: &[PathBuf]) -> Result<Vec<Experiment>> {
    let mut out: Vec<Experiment> = Vec::new();
    for d in dirs {
        let id = experiment_of(d)?;
        let found = if id.is_unknown() {
            None
        } else {
            out.iter_mut()
                .find(|e| !e.id.is_unknown() && e.id.compatible(&id))
        };
        match found {
            Some(e) => {
                e.id.absorb(&id);
                e.run_dirs.push(d.clone());
            }
            None => out.push(Experiment {
                label: String::new(),
                id,
                run_dirs: vec![d.clone()],
            }),
        }
    }
    for e in &mut out {
        e.label =
            e.id.name
                .clone()
                .unwrap_or_else(|| folder_name(&e.run_dirs[0]));
    }
    let labels: Vec<String> = out.iter().map(|e| e.label.clone()).collect();
    for e in &mut out {
        if labels.iter().filter(|n| **n == e.label).count() > 1 {
            let fp = e.id.fingerprint.as_deref().unwrap_or("no fingerprint");
            e.label = format!("{} ({})", e.label, &fp[..fp.len().min(8)]);
        }
    }
    Ok(out)
}

/// Refuse folders of different experiments where one experiment is expected (`evosam report` without
/// `--compare`); folders that record no experiment are not checked (their rows are still checked when merged).
pub fn check_one_experiment(dirs: &[PathBuf]) -> Result<()> {
    let recorded: Vec<PathBuf> = dirs
        .iter()
        .filter(|d| experiment_of(d).map(|id| !id.is_unknown()).unwrap_or(false))
        .cloned()
        .collect();
    let experiments = group_experiments(&recorded)?;
    if experiments.len() > 1 {
        return Err(mixed_experiments_error(&experiments));
    }
    Ok(())
}

/// The error for several experiments given where one is expected (`evosam report` without `--compare`).
pub fn mixed_experiments_error(experiments: &[Experiment]) -> Error {
    let list: Vec<String> = experiments
        .iter()
        .map(|e| {
            format!(
                "{} ({})",
                e.label,
                e.run_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    Error::input(format!(
        "these results folders hold {} different experiments: {}; folders are merged only as parts of one \
         experiment (same experiment name and spec fingerprint). To compare experiments side by side, add \
         --compare: evosam report DIR... --compare --out DIR",
        experiments.len(),
        list.join("; ")
    ))
}
