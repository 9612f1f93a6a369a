//! The run's record: `manifest.json` (spec, versions, machine, cells, timings) and the metrics summary printed
//! at the end.

use super::cell::STEPS_KEY;
use super::plan::{spec_fingerprint, stream_view};
use super::pool::Outcome;
use super::shared::{RunOptions, Shared};
use super::timing::RunTimes;
use crate::results::ExtraRow;
use crate::util::write_atomic;
use crate::{Error, Result};
use std::path::Path;

/// One line per cell: ACC, BWT, FWT, forgetting.
pub(super) fn print_metrics(rows: &[crate::results::MetricsRow]) {
    let f = |v: Option<f64>| {
        v.map(|v| format!("{v:+.4}"))
            .unwrap_or_else(|| "    -  ".into())
    };
    for r in rows {
        println!(
            "{} seed {} order {}: ACC {:.4} BWT {} FWT {} forgetting {}",
            r.strategy,
            r.seed,
            r.order,
            r.acc,
            f(Some(r.bwt)),
            f(r.fwt),
            f(Some(r.forgetting))
        );
    }
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// What the manifest records about this run besides the spec and the data.
pub(super) struct RunRecord<'a> {
    /// RFC 3339 start of the first run in this folder.
    pub started: &'a str,
    /// Whether this run resumed an earlier one.
    pub resumed: bool,
    /// The run's flags.
    pub opts: &'a RunOptions,
    /// Compute threads.
    pub threads: usize,
    /// Every cell's outcome, in canonical order.
    pub outcomes: &'a [Outcome],
    /// Every committed stage's extras (for the steps per stage).
    pub extras: &'a [ExtraRow],
    /// Where the time went.
    pub times: &'a RunTimes,
}

pub(super) fn write_manifest(sh: &Shared, dir: &Path, run: &RunRecord) -> Result<()> {
    let RunRecord {
        started,
        resumed,
        opts,
        threads,
        outcomes,
        extras,
        times,
    } = *run;
    // The spec as recorded since the first release: each task's source in its typed form (defaults filled in).
    let mut spec_json =
        serde_json::to_value(&sh.spec).map_err(|e| Error::internal(e.to_string()))?;
    spec_json["stream"] =
        serde_json::to_value(stream_view(&sh.spec)?).map_err(|e| Error::internal(e.to_string()))?;
    let hostname = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    // Optimiser steps per stage of each cell (from the stages' extras, so resumed stages count too).
    let steps_of = |id: &str| -> Vec<u64> {
        let mut v: Vec<(i64, u64)> = extras
            .iter()
            .filter(|e| {
                e.key == STEPS_KEY && format!("{}__seed{}__{}", e.strategy, e.seed, e.order) == id
            })
            .map(|e| (e.stage, e.value as u64))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, n)| n).collect()
    };
    let cells: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            let steps = steps_of(&o.id);
            let total: u64 = steps.iter().sum();
            let mut j = serde_json::json!({"id": o.id, "status": "ok", "wall_s": o.wall_s,
                "steps": total, "steps_per_stage": steps, "times": o.times.stages});
            if let Err(e) = &o.result {
                j["status"] = "failed".into();
                j["error"] = e.as_str().into();
            }
            j
        })
        .collect();
    let defs: serde_json::Map<String, serde_json::Value> =
        crate::metrics::definitions(crate::metrics::Recorded::Manifest)
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
    // per task: its split sizes and, with `unpaired = "skip"`, the images left out
    let mut tasks = Vec::new();
    for (t, ts) in sh.tasks.iter().zip(&sh.spec.stream.tasks) {
        let mut j = task_json(t);
        let skipped = crate::data::skipped_inputs(&sh.spec, ts)?;
        if !skipped.is_empty() {
            j["skipped"] = serde_json::json!(skipped
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>());
            j["skipped_count"] = serde_json::json!(skipped.len());
        }
        tasks.push(j);
    }
    let m = serde_json::json!({
        "experiment": sh.spec.experiment.name,
        "spec_file": sh.spec.file.display().to_string(),
        "spec": spec_json,
        "spec_fingerprint": spec_fingerprint(&sh.spec),
        "crate_version": env!("CARGO_PKG_VERSION"),
        "git_commit": git_commit(),
        "weights": {"name": sh.spec.model.weights, "sha256": sh.sha},
        "machine": {
            "hostname": hostname,
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "threads": threads,
            "device": sh.spec.experiment.device,
            "cpu_model": crate::model::isa::cpu_model(),
            "cpu_features": crate::model::isa::cpu_features(),
        },
        // The kernels' arithmetic: portable (each product's terms in one fixed order, so the tables are the same
        // bits on any x86-64 CPU and thread count); `isa` is the instruction set that ran them (EVOSAM_ISA or the
        // widest the CPU has), which does not change a number.
        "numerics": {"mode": crate::model::isa::Numerics::active().name(), "isa": crate::model::isa::Isa::active().name()},
        "jobs": opts.jobs.max(1),
        "started": started,
        "finished": chrono::Utc::now().to_rfc3339(),
        "resumed": resumed,
        "tasks": tasks,
        "cells": cells,
        "embeddings": {"count": sh.store.len(), "wall_s": times.embeddings_s, "on_disk": sh.store.is_on_disk()},
        "timings": times,
        "metrics": defs,
    });
    let s = serde_json::to_vec_pretty(&m).map_err(|e| Error::internal(e.to_string()))?;
    write_atomic(&dir.join("manifest.json"), &s)
}

/// A task's counts; for a tiled task also its tiling: train and test counts are tiles, `test_images` the images
/// scored (its `tile` settings are in the recorded spec's source).
fn task_json(t: &crate::data::TaskData) -> serde_json::Value {
    let mut v = serde_json::json!({"name": t.name, "train": t.train.len(), "test": t.test.len()});
    if !t.test_images.is_empty() {
        let images = |cs: &[crate::data::Case]| {
            cs.iter()
                .filter_map(|c| c.tile.as_ref().map(|x| x.image_id.as_str()))
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        };
        v["tiled"] = serde_json::json!({
            "train_images": images(&t.train),
            "train_tiles": t.train.len(),
            "test_images": t.test_images.len(),
            "test_tiles": t.test.len(),
        });
    }
    if !t.test_volumes.is_empty() {
        // the intensity clipping is in the recorded spec's source (`intensity.clip`)
        v["volumes"] = serde_json::json!(t
            .test_volumes
            .iter()
            .map(|x| serde_json::json!({
                "id": x.id,
                "slices_rows_cols": x.dims,
                "spacing_mm": x.spacing,
                "prompted_slices": x.slices.len(),
            }))
            .collect::<Vec<_>>());
    }
    v["scoring"] = serde_json::json!(t.scoring);
    v
}
