//! Experiment specs (TOML): plain serde types, parsing, preset resolution and strict validation.
//!
//! This module is the bottom layer of the runner: it knows no data source and no strategy. A task's source and
//! a strategy's kind-specific keys are stored as TOML tables and checked through a [`Catalog`] (implemented by
//! `strategy::Registry`, which asks the data layer about sources), so the arrows point one way:
//! spec <- data, strategy <- runner.
//!
//! Files: `mod.rs` the types, `parse.rs` the document walk, `presets.rs` presets and the strategy merge,
//! `streams.rs` task orders, `diag.rs` key-path diagnostics.
//!
//! A spec has five parts (every key is optional unless marked *required*):
//!
//! ```toml
//! [experiment]
//! name = "quickstart"        # required; results go to OUT/<name>/
//! seeds = [0, 1]             # default [0]
//! output = "results"         # default "results" (relative to the working directory)
//! device = "cpu"             # "cpu" or "cuda:N"
//! threads = 0                # compute threads in all (0 = all cores)
//! cache = "path"             # embedding cache folder (default $EVOSAM_HOME/embeddings)
//!
//! [stream]
//! orders = ["given"]         # "given", "reverse" and/or explicit permutations (lists of task names)
//! random_orders = 0          # n extra random permutations ("random1", ...)
//! order_seed = 0
//! [[stream.task]]            # one per task, in the given order; see `SourceSpec` for the sources
//! name = "vessels-a"
//! source = "synthetic"       # synthetic | folder | nifti
//! ...
//!
//! [model]
//! weights = "lite_medsam"    # "lite_medsam" (verified cache/download), "random-tiny" (tests) or a file path
//! freeze_encoder = true
//! seed = 0                   # initialisation seed of "random-tiny"
//! [model.lora]               # rank, alpha, targets (module path substrings)
//!
//! [train]                    # epochs | steps, batch_size, lr, weight_decay, max_grad_norm, augment,
//!                            # max_steps_per_epoch, val_fraction, patience, warmup
//! [train.loss]               # dice, bce, iou weights
//! [train.prompt]             # jitter (pixels in the model frame), points (positive points per image),
//!                            # clicks, click_prob, click_source (simulated clicks, see train::clicks)
//!
//! [[strategy]]               # preset = "finetune" (baselines/<preset>.toml) + overrides
//! preset = "finetune"
//! label = "finetune"         # default: the preset's label, else the preset name
//!
//! [slurm]                    # optional, for `evosam submit` (see `SlurmSettings`): partition, time,
//!                            # cpus_per_task, mem, gpus_per_task, account, qos, max_parallel, sbatch_args
//! ```
//! Data paths are relative to the spec file's folder. Precedence for `train`/`lora` settings:
//! built-in defaults < preset < the spec's `[train]`/`[model.lora]` < the `[[strategy]]` entry.

mod diag;
mod interactive;
mod parse;
mod presets;
pub mod reference;
pub mod schema;
mod schema_parts;
mod slurm;
mod streams;
#[cfg(test)]
mod tests;
mod tile;

pub use diag::{from_table, from_value, Diag, KeyPath, Seg};
pub use interactive::{InteractiveSpec, StudyStages, TimeModel};
pub use presets::find_preset;
pub use slurm::{SettingError, SlurmSettings};
pub use tile::{TilePrompt, TileSpec};

use crate::model::LoraConfig;
use crate::Error;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// What the spec parser asks about the parts it does not know: data sources and strategy kinds. Implemented by
/// `strategy::Registry` (built-ins plus whatever a user registered); the spec layer only sees this trait.
pub trait Catalog {
    /// Data-source kinds, for messages ("synthetic", "folder", "nifti").
    fn source_kinds(&self) -> Vec<String>;
    /// Check a task's source table (without `name` and `source`): keys, types, ranges. Files are not touched.
    /// Called only with a kind from [`Catalog::source_kinds`].
    fn check_source(&self, kind: &str, params: &Table) -> Result<(), Diag>;
    /// The text of a built-in preset (`baselines/<name>.toml`), if there is one.
    fn builtin_preset(&self, name: &str) -> Option<String>;
    /// Names of the built-in presets, for messages.
    fn preset_names(&self) -> Vec<String>;
    /// Check a strategy's kind-specific keys (the merged preset table without kind/label/train/lora). An
    /// unknown kind is a [`Diag`] at `kind`.
    fn check_strategy(&self, kind: &str, params: &Table) -> Result<(), Diag>;
    /// JSON Schemas of the source kinds' tables (without `name` and `source`), for [`schema::spec_schema`].
    /// Default: none (the schema then knows no source keys).
    fn source_schemas(
        &self,
        _gen: &mut schemars::SchemaGenerator,
    ) -> Vec<(String, schemars::Schema)> {
        Vec::new()
    }
    /// JSON Schemas of the strategy kinds' own keys (what [`Catalog::check_strategy`] reads), for
    /// [`schema::spec_schema`] and [`schema::preset_schema`]. Default: none.
    fn strategy_schemas(
        &self,
        _gen: &mut schemars::SchemaGenerator,
    ) -> Vec<(String, schemars::Schema)> {
        Vec::new()
    }
}

/// A resolved, validated experiment spec.
#[derive(Clone, Debug, Serialize)]
pub struct Spec {
    /// The spec file (as given).
    pub file: PathBuf,
    /// Folder that relative data paths are resolved against.
    pub base_dir: PathBuf,
    /// `[experiment]`: name, seeds, output, device, threads, cache.
    pub experiment: ExperimentSpec,
    /// `[stream]`: the tasks in the given order.
    pub stream: StreamSpec,
    /// The task orders to run (resolved from `[stream] orders` and `random_orders`).
    pub orders: Vec<Order>,
    /// `[model]`: base weights and encoder freezing.
    pub model: ModelSpec,
    /// `[[strategy]]` entries, presets resolved and merged.
    pub strategies: Vec<StrategySpec>,
    /// `[eval]`: NSD tolerance and saved predictions.
    #[serde(skip_serializing_if = "EvalSettings::is_default")]
    pub eval: EvalSettings,
    /// `[eval.interactive]`: the simulated-clinician study (None: not run).
    pub interactive: Option<InteractiveSpec>,
    /// The optional `[slurm]` table: defaults for `evosam submit` (its flags override them). Not part of the
    /// results: resubmitting with other resources resumes the same run.
    #[serde(skip_serializing_if = "SlurmSettings::is_empty")]
    pub slurm: SlurmSettings,
}

/// `[eval] nsd_tolerance_mm` when the spec does not set it.
pub const DEFAULT_NSD_TOLERANCE_MM: f64 = 2.0;

/// `[eval]`'s own keys.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalSettings {
    /// NSD tolerance, in mm for volumes and folder tasks with `spacing`, else pixels (default 2).
    pub nsd_tolerance_mm: f64,
    /// Write each final-stage prediction volume of a NIfTI task as NIfTI under `predictions/` of the run.
    pub save_predictions: bool,
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings {
            nsd_tolerance_mm: DEFAULT_NSD_TOLERANCE_MM,
            save_predictions: false,
        }
    }
}

impl EvalSettings {
    /// The defaults (kept out of the serialised spec, so older fingerprints hold).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// `[experiment]`.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// Results go to `<output>/<name>/`.
    pub name: String,
    /// Experiment seeds (one cell per strategy x seed x order).
    #[serde(default = "default_seeds")]
    #[schemars(length(min = 1), extend("uniqueItems" = true))]
    pub seeds: Vec<u64>,
    /// Results root.
    #[serde(default = "default_output")]
    pub output: PathBuf,
    /// "cpu" or "cuda:N".
    #[serde(default = "default_device")]
    #[schemars(regex(pattern = r"^(cpu|cuda(:[0-9]+)?)$"))]
    pub device: String,
    /// Compute threads in all (0 = all cores). The library only reads it: the `evosam` binary applies it
    /// before anything runs (see `cli::run`).
    #[serde(default)]
    pub threads: usize,
    /// Embedding cache folder (default `$EVOSAM_HOME/embeddings`).
    #[serde(default)]
    pub cache: Option<PathBuf>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}
fn default_output() -> PathBuf {
    PathBuf::from("results")
}
fn default_device() -> String {
    "cpu".into()
}

/// `[stream]`: the tasks, in the spec's order.
#[derive(Clone, Debug, Serialize)]
pub struct StreamSpec {
    /// One entry per `[[stream.task]]`.
    pub tasks: Vec<TaskSpec>,
}

/// One task of the stream.
#[derive(Clone, Debug, Serialize)]
pub struct TaskSpec {
    /// Task name (unique in the spec).
    pub name: String,
    /// The data source's kind (`source = "synthetic"`) and its other keys, already checked by the data layer
    /// through [`Catalog::check_source`]; `data::SourceSpec::of` reads them into the source's own type.
    pub source: SourceTable,
    /// Line of the `[[stream.task]]` table in the spec (for messages).
    #[serde(skip)]
    pub line: usize,
}

/// A task's data source as written: the kind and the remaining keys. The spec layer does not know the sources;
/// it stores their tables and lets the [`Catalog`] check them.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SourceTable {
    /// The `source` key: "synthetic", "folder", "nifti".
    pub kind: String,
    /// The task table without `name` and `source`.
    pub params: Table,
}

/// One task order: a label ("given", "reverse", "perm1", "random1", ...) and task indices.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Order {
    /// "given", "reverse", "`perm<k>`" or "`random<k>`".
    pub label: String,
    /// Indices into [`StreamSpec::tasks`], in training order.
    pub tasks: Vec<usize>,
}

/// `[model]` (without `lora`, which is merged into each strategy).
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// "lite_medsam" (verified cache/download), "random-tiny" (tests) or a file path.
    #[serde(default = "default_weights")]
    pub weights: String,
    /// Keep the image encoder frozen (embeddings computed once and cached).
    #[serde(default = "default_true")]
    pub freeze_encoder: bool,
    /// Initialisation seed of "random-tiny".
    #[serde(default)]
    pub seed: u64,
}

fn default_weights() -> String {
    "lite_medsam".into()
}
fn default_true() -> bool {
    true
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            weights: default_weights(),
            freeze_encoder: true,
            seed: 0,
        }
    }
}

/// Training settings shared by the strategies (each strategy may override them).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Passes over the task's training cases.
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    /// Images per optimiser step.
    #[serde(default = "d_batch")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    /// AdamW learning rate.
    #[serde(default = "d_lr")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub lr: f64,
    /// AdamW decoupled weight decay.
    #[serde(default = "d_wd")]
    #[schemars(range(min = 0.0))]
    pub weight_decay: f64,
    /// Random left-right mirroring of training images (p = 0.5 per image and step). The mirrored images'
    /// embeddings are computed once up front, so this doubles the embedding cost of the train split.
    #[serde(default)]
    pub augment: bool,
    /// Clip the global gradient L2 norm (None = no clipping).
    #[serde(default)]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_grad_norm: Option<f64>,
    /// Stop an epoch after this many optimiser steps (0 = no limit).
    #[serde(default)]
    pub max_steps_per_epoch: usize,
    /// Optimiser steps per task, counted exactly, instead of `epochs` (0 = use `epochs`). Gives every strategy
    /// the same number of updates per task whatever it trains on (see [`crate::train::budget`]).
    #[serde(default)]
    pub steps: usize,
    /// Seeded held-out fraction of each task's training images used for model selection (0 = none). The split
    /// depends on (seed, task) only, so every strategy of a spec sees the same one.
    #[serde(default)]
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 0.9))]
    pub val_fraction: f64,
    /// With validation: stop after this many epochs without a better validation Dice (0 = run the whole budget;
    /// the best epoch is kept either way).
    #[serde(default)]
    pub patience: usize,
    /// Linear learning-rate warmup over this fraction of each task's optimiser steps (0 = none): the rate rises
    /// from `lr / n` to `lr` over the first n = ceil(warmup x steps) steps of every task. Why: with fresh AdamW
    /// moments the first full-size steps knock a decoder adapter far off (validation Dice of vessel adapters fell
    /// to ~0 for a few epochs before recovering), and a short budget may end before it recovers.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    #[schemars(range(min = 0.0, max = 1.0), extend("default" = 0.0))]
    pub warmup: f64,
    /// Loss term weights.
    #[serde(default)]
    pub loss: LossSpec,
    /// Training prompts.
    #[serde(default)]
    pub prompt: PromptSpec,
}

fn d_epochs() -> usize {
    3
}
fn d_batch() -> usize {
    4
}
fn d_lr() -> f64 {
    1e-3
}
fn d_wd() -> f64 {
    1e-2
}

impl Default for TrainSpec {
    fn default() -> Self {
        toml::Value::Table(Table::new())
            .try_into()
            .expect("defaults")
    }
}

/// Weights of the segmentation loss terms.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LossSpec {
    /// Soft Dice loss weight.
    #[serde(default = "d_one")]
    #[schemars(range(min = 0.0))]
    pub dice: f64,
    /// Binary cross-entropy weight.
    #[serde(default = "d_one")]
    #[schemars(range(min = 0.0))]
    pub bce: f64,
    /// IoU-prediction MSE weight.
    #[serde(default = "d_one")]
    #[schemars(range(min = 0.0))]
    pub iou: f64,
}
fn d_one() -> f64 {
    1.0
}
impl Default for LossSpec {
    fn default() -> Self {
        Self {
            dice: 1.0,
            bce: 1.0,
            iou: 1.0,
        }
    }
}

/// Training prompts: a box from the ground-truth mask, each side moved by a seeded uniform offset in
/// [-jitter, jitter] pixels of the model frame, plus `points` positive points sampled inside the mask.
/// Evaluation always uses the exact box (no jitter, no points).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    /// Box jitter in pixels of the model frame.
    #[serde(default = "d_jitter")]
    #[schemars(range(min = 0.0))]
    pub jitter: f64,
    /// Positive points per image.
    #[serde(default)]
    pub points: usize,
    /// Simulated clicks: at most this many per image, in a batch that gets clicks (0: never; see
    /// `train::clicks`). Teaches an adapter to use the clicks of the interactive study.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(max = 64), extend("default" = 0))]
    pub clicks: usize,
    /// Probability that a training batch gets clicks (when `clicks > 0`).
    #[serde(
        default = "d_click_prob",
        skip_serializing_if = "is_default_click_prob"
    )]
    #[schemars(range(min = 0.0, max = 1.0), extend("default" = 0.5))]
    pub click_prob: f64,
    /// Where clicks go: on the errors of the adapter's own box-only prediction (`"errors"`, as the simulated
    /// user of the study clicks) or anywhere on the mask (`"mask"`: foreground / background inside the box).
    #[serde(default, skip_serializing_if = "ClickSource::is_default")]
    #[schemars(extend("default" = "errors"))]
    pub click_source: ClickSource,
}

/// Where training clicks are placed (`[train.prompt] click_source`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ClickSource {
    /// On the errors of the adapter's own box-only prediction (one extra decoder pass per clicked batch).
    #[default]
    Errors,
    /// Uniformly on foreground pixels (positive) or background pixels inside the box (negative).
    Mask,
}

impl ClickSource {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}
fn d_jitter() -> f64 {
    5.0
}
fn d_click_prob() -> f64 {
    0.5
}
fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}
fn is_zero(v: &usize) -> bool {
    *v == 0
}
fn is_default_click_prob(v: &f64) -> bool {
    *v == d_click_prob()
}
impl Default for PromptSpec {
    fn default() -> Self {
        Self {
            jitter: 5.0,
            points: 0,
            clicks: 0,
            click_prob: d_click_prob(),
            click_source: ClickSource::default(),
        }
    }
}

/// A resolved strategy entry: preset merged with the spec's settings and the entry's overrides.
#[derive(Clone, Debug, Serialize)]
pub struct StrategySpec {
    /// Unique label: the `strategy` column of every table.
    pub label: String,
    /// Strategy kind (a name in the strategy registry).
    pub kind: String,
    /// Preset it was resolved from.
    pub preset: String,
    /// Training settings after merging.
    pub train: TrainSpec,
    /// LoRA settings after merging.
    pub lora: LoraConfig,
    /// Kind-specific fields (checked by the registry through [`Catalog::check_strategy`]).
    pub params: Table,
}

/// Default LoRA settings: rank 4 on the mask decoder's attention and MLP layers.
pub fn default_lora() -> Table {
    let mut t = Table::new();
    t.insert("rank".into(), Value::Integer(4));
    t.insert("alpha".into(), Value::Float(4.0));
    t.insert(
        "targets".into(),
        Value::Array(vec![Value::String("mask_decoder".into())]),
    );
    t
}

impl Spec {
    /// Resolve a data path from the spec against the spec's folder.
    /// `${NAME}` and `${NAME:-default}` expand from the environment (e.g. `${EVOSAM_SHARED_DATA:-../../shared/data}`).
    pub fn resolve_path(&self, p: &Path) -> PathBuf {
        let p = PathBuf::from(expand_env(&p.to_string_lossy()));
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }

    /// Task names in the spec's order.
    pub fn task_names(&self) -> Vec<String> {
        self.stream.tasks.iter().map(|t| t.name.clone()).collect()
    }

    /// An error about this spec's file.
    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::Spec {
            file: self.file.display().to_string(),
            msg: msg.into(),
        }
    }
}

/// Expand `${NAME}` and `${NAME:-default}` (an unset or empty variable takes the default, or "").
pub fn expand_env(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(j) => {
                let inner = &after[..j];
                let (name, default) = match inner.find(":-") {
                    Some(k) => (&inner[..k], &inner[k + 2..]),
                    None => (inner, ""),
                };
                match std::env::var(name) {
                    Ok(v) if !v.is_empty() => out.push_str(&v),
                    _ => out.push_str(default),
                }
                rest = &after[j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parse "cpu" or "cuda:N" (returns the CUDA ordinal).
pub fn parse_device(d: &str) -> std::result::Result<Option<usize>, String> {
    if d == "cpu" {
        return Ok(None);
    }
    if let Some(n) = d.strip_prefix("cuda:") {
        return n
            .parse::<usize>()
            .map(Some)
            .map_err(|_| format!("{d:?} is not cpu or cuda:N"));
    }
    if d == "cuda" {
        return Ok(Some(0));
    }
    Err(format!("{d:?} is not \"cpu\" or \"cuda:N\""))
}

/// Deep-merge `over` into `base` (tables merge key by key; other values replace).
pub fn merge_tables(base: &mut Table, over: &Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge_tables(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}
