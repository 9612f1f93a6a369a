//! The router of an exported expert set: everything `evosam segment --experts` decides with, as plain tensors and
//! a versioned JSON description, so that PyTorch or NumPy code routes an image to the same expert.
//!
//! `router.safetensors` (f64):
//! - `matcher.weights` (D, T): the solved ridge weights; scores = h W, h = the regression feature;
//! - `matcher.projection` (in_dim, P): the fixed random projection (only when `projection_dim` > 0);
//! - `novelty.means` (T, d) and `novelty.cholesky` (d, d): the task means and the lower Cholesky factor L of the
//!   shrunk pooled covariance S = L L^T (d = D - 1: the feature without its bias);
//! - `novelty.calibration` (N,): the leave-one-out calibration scores, task after task (counts in the JSON).
//!
//! The decisions that depend on the training history (whether the chain serves earlier tasks, where a novel image
//! goes, the novelty threshold) are evaluated here once and written as values: the history they come from
//! (births, transfer evidence) is not part of the export.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::json;

use super::base::BaseModel;
use crate::strategy::evosam::ExpertSet;
use crate::{Error, Result};

/// Version of `router.json`; a reader refuses a version it does not know.
pub const ROUTER_VERSION: u32 = 1;

fn f64_tensor(v: Vec<f64>, rows: usize, cols: usize) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, (rows, cols), &Device::Cpu)?)
}

/// Write `router.json` and `router.safetensors` into `dir`. `experts` are (task, folder relative to the export
/// root) in task order; `chain` the chain's folder.
pub fn write(
    set: &ExpertSet,
    base: &BaseModel,
    experts: &[(String, String)],
    chain: Option<&str>,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let m = &set.matcher;
    let t = m.num_tasks();
    let dd = m.feature_dim();
    let p = m.config.projection_dim;
    let mut tensors: Vec<(String, Tensor)> = vec![(
        "matcher.weights".into(),
        f64_tensor(m.weights().to_vec(), dd, t)?,
    )];
    if p > 0 {
        tensors.push((
            "matcher.projection".into(),
            f64_tensor(m.projection().to_vec(), m.in_dim(), p)?,
        ));
    }
    let model = set
        .novelty_model()
        .ok_or_else(|| Error::internal("an expert set without a novelty model"))?;
    let d = dd - 1;
    let means: Vec<f64> = model
        .means()
        .iter()
        .flat_map(|mu| mu.iter().copied())
        .collect();
    let n_means = model.means().len();
    tensors.push(("novelty.means".into(), f64_tensor(means, n_means, d)?));
    let l = model.cholesky_factor();
    // nalgebra is column-major: read it row by row
    let l_rows: Vec<f64> = (0..d)
        .flat_map(|i| (0..d).map(move |j| (i, j)))
        .map(|(i, j)| l[(i, j)])
        .collect();
    tensors.push(("novelty.cholesky".into(), f64_tensor(l_rows, d, d)?));
    let cal: Vec<f64> = set.calibration.scores.iter().flatten().copied().collect();
    let n_cal = cal.len();
    tensors.push((
        "novelty.calibration".into(),
        Tensor::from_vec(cal, n_cal, &Device::Cpu)?,
    ));
    super::peft::save_tensors(&tensors, &dir.join("router.safetensors"))?;

    let nov = &set.novelty;
    let fallback =
        serde_json::to_value(nov.fallback).map_err(|e| Error::internal(e.to_string()))?;
    let routing = serde_json::to_value(set.routing).map_err(|e| Error::internal(e.to_string()))?;
    let doc = json!({
        "format": "evosam-router",
        "version": ROUTER_VERSION,
        "tensors": "router.safetensors",
        "routing_trained_with": routing,
        "base_model": {"weights": base.name, "sha256": base.sha256},
        "experts": experts.iter().enumerate().map(|(k, (task, folder))| json!({
            "index": k, "task": task, "adapter": folder,
            "chain_may_serve": set.births[k].chain_ok != Some(false),
        })).collect::<Vec<_>>(),
        "chain": chain.map(|c| json!({
            "adapter": c,
            "serves_earlier_experts": set.chain_serves(),
        })),
        "features": {
            "embedding": "the image encoder's output for the preprocessed image, (256, 64, 64)",
            "pooling": "mean over the two spatial axes in float32, then converted to float64",
            "in_dim": m.in_dim(),
            "projection_dim": p,
            "projection": "when projection_dim > 0: x = relu(pooled @ matcher.projection); else x = pooled",
            "bias": "h = x with 1.0 appended (D = len(h))",
            "dim": dd,
        },
        "matcher": {
            "weights": "matcher.weights",
            "scores": "h @ matcher.weights, one score per expert",
            "choice": "the first index of the largest score",
            "lambda": m.lambda,
            "class_balanced": m.config.class_balanced,
            "open_set_threshold": m.config.open_set_threshold,
        },
        "novelty": {
            "enabled": nov.enabled,
            "features": "x (h without its bias)",
            "score": "min over task means mu of sqrt(|L^-1 (x - mu)|^2), novelty.means and novelty.cholesky",
            "threshold": set.novelty_threshold(),
            "novel_if": "enabled and threshold is not null and score > threshold",
            "quantile": nov.quantile,
            "shrinkage": nov.shrinkage,
            "fallback": fallback,
            "novel_to": if set.novel_to_chain() { "chain" } else { "base" },
            "calibration": "novelty.calibration",
            "calibration_counts": set.calibration.scores.iter().map(Vec::len).collect::<Vec<_>>(),
        },
        "decision": [
            "k = the matcher's choice; if open_set_threshold is not null and scores[k] < open_set_threshold: \
             routed to the base model",
            "if novel_if holds: routed to novel_to (the chain or the base model) instead",
            "an image routed to expert k is decoded by the chain instead when chain.serves_earlier_experts and \
             k is not the last expert",
        ],
    });
    let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| Error::internal(e.to_string()))?;
    crate::util::write_atomic(&dir.join("router.json"), &bytes)
}
