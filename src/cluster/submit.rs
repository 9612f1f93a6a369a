//! `evosam submit`: plan the jobs of a spec, write their scripts into `DIR/<experiment>/slurm/`, and submit the
//! chain prepare -> cells (array, `afterok`) -> finalize (`afterany`) with `sbatch --parsable`.
//!
//! Resuming is submitting again: the cell folders say which cells are complete, and only the others go into the
//! new array (their array indices stay their positions in the spec's cell list, so log names keep meaning the
//! same cell). A spec whose results-relevant parts changed is refused, as `evosam run --resume` refuses it.

use super::script::{self, Job, JobPlan, Scripts};
use super::slurm;
use super::status::stages_done;
use crate::lock::{self, Liveness};
use crate::spec::SlurmSettings;
use crate::spec::Spec;
use crate::util::write_atomic;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One `evosam submit` that reached Slurm, as recorded in `slurm/submissions.json` (oldest first).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Submission {
    /// When it was submitted (RFC 3339, UTC).
    pub submitted: String,
    /// Job ids; `prepare` and `cells` are absent when every cell had already finished.
    pub prepare: Option<String>,
    /// The cells array job's id.
    pub cells: Option<String>,
    /// The finalize job's id.
    pub finalize: Option<String>,
    /// Array indices (positions in the spec's cell list) submitted.
    pub todo: Vec<usize>,
    /// The `--array` value.
    pub array: String,
}

/// `slurm/submissions.json` of a run folder.
pub fn submissions_file(dir: &Path) -> PathBuf {
    dir.join("slurm").join("submissions.json")
}

/// Every recorded submission of the run in `dir` (none for a local run).
pub fn read_submissions(dir: &Path) -> Result<Vec<Submission>> {
    let p = submissions_file(dir);
    match std::fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| {
            Error::input(format!(
                "{}: not an evosam submission record: {e}",
                p.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(&p, e)),
    }
}

/// What `submit` is asked to do.
#[derive(Clone, Debug, Default)]
pub struct SubmitOptions {
    /// Results root (default: the spec's `output`).
    pub out: Option<PathBuf>,
    /// Settings from the command line; they override the spec's `[slurm]` table.
    pub flags: SlurmSettings,
    /// Write and print the scripts, submit nothing.
    pub dry_run: bool,
    /// The evosam binary the jobs run (default: this one).
    pub exe: Option<PathBuf>,
}

/// What `submit` did.
#[derive(Debug)]
pub struct Submitted {
    /// The plan the scripts were rendered from.
    pub plan: JobPlan,
    /// The three scripts as written into `slurm/`.
    pub scripts: Scripts,
    /// The submission as shell lines (`PREPARE=$(sbatch --parsable ...)` ...), also written to `slurm/submit.sh`.
    pub commands: Vec<String>,
    /// None for a dry run.
    pub submission: Option<Submission>,
    /// Cells already complete (not submitted again).
    pub finished: usize,
}

/// The flag a settings key comes from, for messages.
fn flag_of(key: &str) -> String {
    match key {
        "sbatch_args" => "--sbatch-arg".into(),
        k => format!("--{}", k.replace('_', "-")),
    }
}

/// The results-relevant fingerprint a run folder was started with (`run.json`), if any.
fn folder_fingerprint(dir: &Path) -> Result<Option<String>> {
    #[derive(Deserialize)]
    struct Fp {
        fingerprint: String,
    }
    let p = dir.join("run.json");
    match std::fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str::<Fp>(&t)
            .map(|f| Some(f.fingerprint))
            .map_err(|e| Error::input(format!("{}: not an evosam run file: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&p, e)),
    }
}

/// Plan the submission: settings, absolute paths, the cells still to run. Checks the folder (changed spec, a
/// local run holding it) but writes nothing.
pub fn plan(spec: &Spec, opts: &SubmitOptions) -> Result<JobPlan> {
    opts.flags
        .validate()
        .map_err(|e| Error::input(format!("{}: {}", flag_of(e.key), e.msg)))?;
    let settings = spec.slurm.merged_with(&opts.flags);
    let exe = match &opts.exe {
        Some(e) => script::absolute(e)?,
        None => std::env::current_exe()
            .map_err(|e| Error::internal(format!("cannot find the evosam binary: {e}")))?,
    };
    let out = script::absolute(opts.out.as_ref().unwrap_or(&spec.experiment.output))?;
    let spec_path = script::absolute(&spec.file)?;
    let dir = out.join(&spec.experiment.name);
    match folder_fingerprint(&dir)? {
        Some(fp) if fp != crate::runner::spec_fingerprint(spec) => {
            return Err(Error::input(format!(
                "{}: the spec changed since this run started (tasks, orders, model, strategies or seeds differ); \
                 use another --out or restore the spec",
                dir.display()
            )))
        }
        Some(_) => {}
        None => {
            // not a run yet: it must be new or hold only what an earlier submit (or dry run) wrote
            if let Ok(it) = std::fs::read_dir(&dir) {
                let other: Vec<String> = it
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "slurm" && n != ".lock" && n != "cells")
                    .collect();
                if !other.is_empty() {
                    return Err(Error::input(format!(
                        "results folder {} exists and is not an evosam run (it holds {}); use another --out",
                        dir.display(),
                        other.join(", ")
                    )));
                }
            }
        }
    }
    if let Some((h, Liveness::Alive)) = lock::inspect(&dir.join(".lock")) {
        return Err(Error::input(format!(
            "{} is in use by {}; wait for it or use another --out",
            dir.display(),
            h.describe()
        )));
    }
    let all = crate::runner::cells_of(spec);
    let todo: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            let stages = spec.orders[c.order].tasks.len() + 1;
            stages_done(&dir.join("cells").join(&c.id)) < stages
        })
        .map(|(i, _)| i)
        .collect();
    Ok(JobPlan {
        exe,
        spec: spec_path,
        out,
        experiment: spec.experiment.name.clone(),
        stages: all
            .iter()
            .map(|c| spec.orders[c.order].tasks.len() + 1)
            .collect(),
        cells: all.into_iter().map(|c| c.id).collect(),
        todo,
        settings,
    })
}

/// The submission as shell lines (what `--dry-run` prints and `slurm/submit.sh` holds).
pub fn commands(plan: &JobPlan) -> Vec<String> {
    let line = |var: Option<&str>, job: Job, prev: Option<&str>| {
        // job ids are shell variables here: double-quote those arguments so that they expand
        let args: Vec<String> = plan
            .sbatch_args(job, prev)
            .iter()
            .map(|a| {
                if a.contains('$') {
                    format!("\"{a}\"")
                } else {
                    script::sh_quote(a)
                }
            })
            .collect();
        let cmd = format!("sbatch {}", args.join(" "));
        match var {
            Some(v) => format!("{v}=$({cmd})"),
            None => cmd,
        }
    };
    if plan.todo.is_empty() {
        return vec![line(None, Job::Finalize, None)];
    }
    vec![
        line(Some("PREPARE"), Job::Prepare, None),
        line(Some("CELLS"), Job::Cells, Some("$PREPARE")),
        line(Some("FINALIZE"), Job::Finalize, Some("$CELLS")),
        "echo \"prepare $PREPARE, cells $CELLS, finalize $FINALIZE\"".into(),
    ]
}

/// Write the scripts and (unless a dry run) submit the chain.
pub fn submit(spec: &Spec, opts: &SubmitOptions) -> Result<Submitted> {
    let plan = plan(spec, opts)?;
    let dir = plan.run_dir();
    let previous = read_submissions(&dir)?;
    if !opts.dry_run {
        // a second chain over the same cells would race the first one
        let ids: Vec<u64> = previous
            .iter()
            .flat_map(|s| [&s.prepare, &s.cells, &s.finalize])
            .filter_map(|j| j.as_deref()?.parse().ok())
            .collect();
        if let Some(q) = slurm::any_queued(&ids).filter(|q| !q.is_empty()) {
            let mut live: Vec<String> = q
                .iter()
                .map(|j| j.array_job_id.unwrap_or(j.job_id).to_string())
                .collect();
            live.dedup();
            return Err(Error::input(format!(
                "jobs {} of an earlier submission into {} are still queued or running; wait for them (`evosam \
                 status {}`) or `scancel` them, then submit again",
                live.join(", "),
                dir.display(),
                dir.display()
            )));
        }
    }
    let scripts = plan.render()?;
    std::fs::create_dir_all(plan.slurm_dir().join("logs"))
        .map_err(|e| Error::io(plan.slurm_dir().join("logs"), e))?;
    for (job, text) in [
        (Job::Prepare, &scripts.prepare),
        (Job::Cells, &scripts.cells),
        (Job::Finalize, &scripts.finalize),
    ] {
        write_atomic(&plan.script_path(job), text.as_bytes())?;
    }
    // the cell list, for `evosam status` before the prepare job has written run.json
    let list: Vec<serde_json::Value> = plan
        .cells
        .iter()
        .zip(&plan.stages)
        .map(|(id, n)| serde_json::json!({"id": id, "stages": n}))
        .collect();
    write_atomic(
        &plan.slurm_dir().join("cells.json"),
        &serde_json::to_vec_pretty(&list).map_err(|e| Error::internal(e.to_string()))?,
    )?;
    let commands = commands(&plan);
    let mut sh = String::from(
        "#!/bin/bash\n# How `evosam submit` submitted the jobs (run it by hand to do the same).\nset -euo pipefail\n",
    );
    sh.push_str(&commands.join("\n"));
    sh.push('\n');
    write_atomic(&plan.slurm_dir().join("submit.sh"), sh.as_bytes())?;
    let finished = plan.cells.len() - plan.todo.len();
    if opts.dry_run {
        return Ok(Submitted {
            plan,
            scripts,
            commands,
            submission: None,
            finished,
        });
    }

    let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    let mut ids: Vec<String> = Vec::new();
    let mut chain = || -> Result<(Option<String>, Option<String>, String)> {
        if plan.todo.is_empty() {
            let f = slurm::sbatch(&plan.sbatch_args(Job::Finalize, None), &cwd)?;
            return Ok((None, None, f));
        }
        let p = slurm::sbatch(&plan.sbatch_args(Job::Prepare, None), &cwd)?;
        ids.push(p.clone());
        let c = slurm::sbatch(&plan.sbatch_args(Job::Cells, Some(&p)), &cwd)?;
        ids.push(c.clone());
        let f = slurm::sbatch(&plan.sbatch_args(Job::Finalize, Some(&c)), &cwd)?;
        Ok((Some(p), Some(c), f))
    };
    let (prepare, cells, finalize) = match chain() {
        Ok(x) => x,
        Err(e) => {
            // leave no half chain behind
            slurm::scancel(&ids);
            return Err(e);
        }
    };
    let sub = Submission {
        submitted: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        prepare,
        cells,
        finalize: Some(finalize),
        todo: plan.todo.clone(),
        array: plan.array_spec(),
    };
    let mut all = previous;
    all.push(sub.clone());
    let text = serde_json::to_vec_pretty(&all).map_err(|e| Error::internal(e.to_string()))?;
    write_atomic(&submissions_file(&dir), &text)?;
    Ok(Submitted {
        plan,
        scripts,
        commands,
        submission: Some(sub),
        finished,
    })
}
