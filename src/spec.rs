//! Experiment specs (TOML): parsing, preset resolution and strict validation.
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
//! [train]                    # epochs, batch_size, lr, weight_decay, max_grad_norm, augment, max_steps_per_epoch
//! [train.loss]               # dice, bce, iou weights
//! [train.prompt]             # jitter (pixels in the model frame), points (positive points per image)
//!
//! [[strategy]]               # preset = "finetune" (baselines/<preset>.toml) + overrides
//! preset = "finetune"
//! label = "finetune"         # default: the preset's label, else the preset name
//! ```
//! Data paths are relative to the spec file's folder. Precedence for `train`/`lora` settings:
//! built-in defaults < preset < the spec's `[train]`/`[model.lora]` < the `[[strategy]]` entry.

use crate::interactive::InteractiveSpec;
use crate::model::LoraConfig;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use toml::{Spanned, Table, Value};

/// A resolved, validated experiment spec.
#[derive(Clone, Debug, Serialize)]
pub struct Spec {
    /// The spec file (as given).
    pub file: PathBuf,
    /// Folder that relative data paths are resolved against.
    pub base_dir: PathBuf,
    pub experiment: ExperimentSpec,
    pub stream: StreamSpec,
    pub orders: Vec<Order>,
    pub model: ModelSpec,
    pub strategies: Vec<StrategySpec>,
    /// `[eval.interactive]`: the simulated-clinician study (None: not run).
    pub interactive: Option<InteractiveSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    pub name: String,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    #[serde(default = "default_output")]
    pub output: PathBuf,
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default)]
    pub threads: usize,
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

#[derive(Clone, Debug, Serialize)]
pub struct StreamSpec {
    pub tasks: Vec<TaskSpec>,
}

/// One task of the stream.
#[derive(Clone, Debug, Serialize)]
pub struct TaskSpec {
    pub name: String,
    pub source: SourceSpec,
    /// Line of the `[[stream.task]]` table in the spec (for messages).
    #[serde(skip)]
    pub line: usize,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum SourceSpec {
    Synthetic(crate::data::synthetic::SyntheticSpec),
    Folder(crate::data::folder::FolderSpec),
    Nifti(crate::data::nifti::NiftiSpec),
}

/// One task order: a label ("given", "reverse", "perm1", "random1", ...) and task indices.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Order {
    pub label: String,
    pub tasks: Vec<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default = "default_weights")]
    pub weights: String,
    #[serde(default = "default_true")]
    pub freeze_encoder: bool,
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    #[serde(default = "d_lr")]
    pub lr: f64,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Random left-right mirroring of training images (p = 0.5 per image and step). The mirrored images'
    /// embeddings are computed once up front, so this doubles the embedding cost of the train split.
    #[serde(default)]
    pub augment: bool,
    /// Clip the global gradient L2 norm (None = no clipping).
    #[serde(default)]
    pub max_grad_norm: Option<f64>,
    /// Stop an epoch after this many optimiser steps (0 = no limit).
    #[serde(default)]
    pub max_steps_per_epoch: usize,
    #[serde(default)]
    pub loss: LossSpec,
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LossSpec {
    #[serde(default = "d_one")]
    pub dice: f64,
    #[serde(default = "d_one")]
    pub bce: f64,
    #[serde(default = "d_one")]
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    #[serde(default = "d_jitter")]
    pub jitter: f64,
    #[serde(default)]
    pub points: usize,
}
fn d_jitter() -> f64 {
    5.0
}
impl Default for PromptSpec {
    fn default() -> Self {
        Self {
            jitter: 5.0,
            points: 0,
        }
    }
}

/// A resolved strategy entry: preset merged with the spec's settings and the entry's overrides.
#[derive(Clone, Debug, Serialize)]
pub struct StrategySpec {
    pub label: String,
    pub kind: String,
    pub preset: String,
    pub train: TrainSpec,
    pub lora: LoraConfig,
    /// Kind-specific fields (validated by [`crate::strategy::validate_params`]).
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

// ---------------------------------------------------------------- raw parsing

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    experiment: Spanned<ExperimentSpec>,
    stream: Spanned<RawStream>,
    #[serde(default)]
    model: Option<Spanned<Table>>,
    #[serde(default)]
    train: Option<Spanned<Table>>,
    #[serde(default)]
    strategy: Vec<Spanned<Table>>,
    #[serde(default)]
    eval: Option<Spanned<Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    #[serde(default)]
    task: Vec<Spanned<Table>>,
    #[serde(default)]
    orders: Option<Vec<Spanned<RawOrder>>>,
    #[serde(default)]
    random_orders: usize,
    #[serde(default)]
    order_seed: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawOrder {
    Named(String),
    Perm(Vec<String>),
}

/// Where spec errors point: the file, its text and a line helper.
pub(crate) struct SpecSource<'a> {
    pub file: String,
    pub text: &'a str,
}

impl SpecSource<'_> {
    pub fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::Spec {
            file: self.file.clone(),
            msg: msg.into(),
        }
    }

    pub fn err_at(&self, offset: usize, msg: impl std::fmt::Display) -> Error {
        let line = self.line_of(offset);
        let text = self.text.lines().nth(line - 1).unwrap_or("").trim_end();
        self.err(format!("line {line}: {msg}\n  {line} | {text}"))
    }

    /// Error for a sub-table deserialised without spans: find the key named in the message inside the
    /// table's span, else point at the table's header.
    pub fn err_in_table(
        &self,
        span: std::ops::Range<usize>,
        what: &str,
        msg: impl std::fmt::Display,
    ) -> Error {
        let msg = msg.to_string();
        let msg = msg.trim_end().to_string();
        // the key named in backticks, or for type errors the offending value's literal
        let key = msg.split('`').nth(1).map(|k| (k.to_string(), false));
        let lit = msg
            .strip_prefix("invalid type: string ")
            .and_then(|r| r.rfind(", expected").map(|i| r[..i].to_string()))
            .map(|v| (v, true));
        let key = if msg.starts_with("invalid type: string ") {
            lit
        } else if msg.starts_with("invalid") {
            key.map(|(k, _)| (k, true))
        } else {
            key
        };
        if let Some((key, is_value)) = key {
            let key = key.as_str();
            let start = self.line_start(span.start);
            // the table's own header (if the span starts on one) bounds the search: stop at the next header that
            // is not one of its sub-tables
            let first = self.text[start..].lines().next().unwrap_or("").trim();
            let own = header_name(first);
            let mut off = start;
            for (n, l) in self.text[start..].split_inclusive('\n').enumerate() {
                let t = l.trim_start();
                if n > 0 {
                    if let Some(h) = header_name(t.trim_end()) {
                        match &own {
                            Some(o) if h.starts_with(&format!("{o}.")) => {}
                            _ => break,
                        }
                    }
                }
                let hit = if is_value {
                    t.split_once('=').map(|(_, v)| {
                        let v = v.trim_start();
                        v.starts_with(key)
                            || v.trim_start_matches('[').trim_start().starts_with(key)
                    }) == Some(true)
                } else {
                    t.starts_with(key) && t[key.len()..].trim_start().starts_with(['=', '.'])
                };
                if hit {
                    return self.err_at(off, format!("{what}: {msg}"));
                }
                off += l.len();
            }
        }
        self.err_at(span.start, format!("{what}: {msg}"))
    }

    fn line_start(&self, offset: usize) -> usize {
        let o = offset.min(self.text.len());
        self.text[..o].rfind('\n').map(|i| i + 1).unwrap_or(0)
    }

    fn toml_err(&self, e: &toml::de::Error) -> Error {
        match e.span() {
            Some(s) => self.err_at(s.start, e.message()),
            None => self.err(e.message().to_string()),
        }
    }
}

/// `[a.b]` or `[[a.b]]` -> "a.b"; None when the line is not a table header.
fn header_name(line: &str) -> Option<String> {
    let l = line.split('#').next().unwrap_or("").trim();
    let inner = l
        .strip_prefix("[[")
        .and_then(|x| x.strip_suffix("]]"))
        .or_else(|| l.strip_prefix('[').and_then(|x| x.strip_suffix(']')))?;
    Some(inner.trim().to_string())
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

fn take_table(
    t: &mut Table,
    key: &str,
    src: &SpecSource,
    span: std::ops::Range<usize>,
    what: &str,
) -> Result<Table> {
    match t.remove(key) {
        None => Ok(Table::new()),
        Some(Value::Table(x)) => Ok(x),
        Some(v) => Err(src.err_in_table(
            span,
            what,
            format!("`{key}` must be a table, found {}", v.type_str()),
        )),
    }
}

impl Spec {
    /// Read and validate a spec file (does not touch data files; see [`Spec::check_data`]).
    pub fn from_file(path: &Path) -> Result<Spec> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base_dir = if base_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base_dir
        };
        Self::from_str_at(&text, path, &base_dir)
    }

    /// Parse spec text; `file` names it in messages, `base_dir` resolves relative paths and presets.
    pub fn from_str_at(text: &str, file: &Path, base_dir: &Path) -> Result<Spec> {
        let src = SpecSource {
            file: file.display().to_string(),
            text,
        };
        let raw: RawSpec = toml::from_str(text).map_err(|e| src.toml_err(&e))?;

        // [experiment]
        let exp_span = raw.experiment.span();
        let experiment = raw.experiment.into_inner();
        if experiment.name.trim().is_empty()
            || experiment.name.contains(['/', '\\'])
            || experiment.name.starts_with('.')
        {
            return Err(src.err_in_table(
                exp_span.clone(),
                "[experiment]",
                format!(
                    "`name` = {:?} must be a non-empty folder name",
                    experiment.name
                ),
            ));
        }
        if experiment.seeds.is_empty() {
            return Err(src.err_in_table(exp_span.clone(), "[experiment]", "`seeds` is empty"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &experiment.seeds {
            if !seen.insert(*s) {
                return Err(src.err_in_table(
                    exp_span.clone(),
                    "[experiment]",
                    format!("`seeds` repeats {s}"),
                ));
            }
        }
        parse_device(&experiment.device).map_err(|m| {
            src.err_in_table(exp_span.clone(), "[experiment]", format!("`device`: {m}"))
        })?;

        // [stream]
        let stream_span = raw.stream.span();
        let rs = raw.stream.into_inner();
        if rs.task.is_empty() {
            return Err(src.err_at(stream_span.start, "[stream] has no [[stream.task]] entries"));
        }
        let mut tasks = Vec::new();
        for (i, t) in rs.task.into_iter().enumerate() {
            let span = t.span();
            tasks.push(parse_task(&src, i, span, t.into_inner())?);
        }
        for i in 0..tasks.len() {
            for j in 0..i {
                if tasks[i].name == tasks[j].name {
                    return Err(src.err(format!(
                        "line {}: [[stream.task]] name {:?} is used twice (first on line {})",
                        tasks[i].line, tasks[i].name, tasks[j].line
                    )));
                }
            }
        }
        let orders = resolve_orders(
            &src,
            &tasks,
            rs.orders,
            rs.random_orders,
            rs.order_seed,
            stream_span,
        )?;

        // [model]
        let (mut model_tbl, model_span) = match raw.model {
            Some(m) => {
                let span = m.span();
                (m.into_inner(), span)
            }
            None => (Table::new(), 0..0),
        };
        let spec_lora = take_table(&mut model_tbl, "lora", &src, model_span.clone(), "[model]")?;
        let model: ModelSpec =
            Value::Table(model_tbl)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    src.err_in_table(model_span.clone(), "[model]", e.message())
                })?;
        if model.weights.trim().is_empty() {
            return Err(src.err_in_table(model_span.clone(), "[model]", "`weights` is empty"));
        }
        // check the spec-level lora alone, so its errors point at [model.lora]
        let mut l = default_lora();
        merge_tables(&mut l, &spec_lora);
        let _: LoraConfig = Value::Table(l).try_into().map_err(|e: toml::de::Error| {
            src.err_in_table(model_span.clone(), "[model.lora]", e.message())
        })?;

        // [train]
        let (spec_train, train_span) = match raw.train {
            Some(t) => {
                let span = t.span();
                (t.into_inner(), span)
            }
            None => (Table::new(), 0..0),
        };
        let _: TrainSpec =
            Value::Table(spec_train.clone())
                .try_into()
                .map_err(|e: toml::de::Error| {
                    src.err_in_table(train_span.clone(), "[train]", e.message())
                })?;

        // [eval]
        let interactive = match raw.eval {
            None => None,
            Some(e) => {
                let span = e.span();
                let mut t = e.into_inner();
                let it = t.remove("interactive");
                if let Some(k) = t.keys().next() {
                    return Err(src.err_in_table(
                        span,
                        "[eval]",
                        format!("unknown key `{k}` (known: interactive)"),
                    ));
                }
                match it {
                    None => None,
                    Some(Value::Table(it)) => Some(
                        InteractiveSpec::from_table(it)
                            .map_err(|m| src.err_in_table(span, "[eval.interactive]", m))?,
                    ),
                    Some(v) => {
                        return Err(src.err_in_table(
                            span,
                            "[eval]",
                            format!("`interactive` must be a table, found {}", v.type_str()),
                        ))
                    }
                }
            }
        };

        // [[strategy]]
        if raw.strategy.is_empty() {
            return Err(src.err("no [[strategy]] entries: add at least one, e.g. [[strategy]] preset = \"zeroshot\""));
        }
        let mut strategies: Vec<StrategySpec> = Vec::new();
        for (i, s) in raw.strategy.into_iter().enumerate() {
            let span = s.span();
            let st = resolve_strategy(
                &src,
                base_dir,
                i,
                span.clone(),
                s.into_inner(),
                &spec_train,
                &spec_lora,
            )?;
            if let Some(prev) = strategies.iter().find(|p| p.label == st.label) {
                return Err(src.err_at(
                    span.start,
                    format!(
                        "[[strategy]] label {:?} is used twice (preset {:?}); give one a `label`",
                        st.label, prev.preset
                    ),
                ));
            }
            strategies.push(st);
        }

        Ok(Spec {
            file: file.to_path_buf(),
            base_dir: base_dir.to_path_buf(),
            experiment,
            stream: StreamSpec { tasks },
            orders,
            model,
            strategies,
            interactive,
        })
    }

    /// Check every data source (files exist, pairs match, splits non-empty) without decoding images.
    /// Returns one line per task describing what was found.
    pub fn check_data(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for t in &self.stream.tasks {
            let (ntr, nte) = crate::data::plan_counts(self, t)?;
            out.push(format!(
                "{}: {} train, {} test ({})",
                t.name,
                ntr,
                nte,
                source_kind(&t.source)
            ));
        }
        Ok(out)
    }

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

pub fn source_kind(s: &SourceSpec) -> &'static str {
    match s {
        SourceSpec::Synthetic(_) => "synthetic",
        SourceSpec::Folder(_) => "folder",
        SourceSpec::Nifti(_) => "nifti",
    }
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

fn parse_task(
    src: &SpecSource,
    i: usize,
    span: std::ops::Range<usize>,
    mut t: Table,
) -> Result<TaskSpec> {
    let line = src.line_of(span.start);
    let what = format!("[[stream.task]] #{}", i + 1);
    let name = match t.remove("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(v) => {
            return Err(src.err_in_table(
                span,
                &what,
                format!("`name` must be a non-empty string, found {}", v.type_str()),
            ))
        }
        None => return Err(src.err_at(span.start, format!("{what}: missing key `name`"))),
    };
    if name.contains([',', '"', '\n']) {
        return Err(src.err_in_table(
            span,
            &what,
            format!("`name` {name:?} may not contain commas, quotes or newlines"),
        ));
    }
    let what = format!("{what} ({name})");
    let kind = match t.remove("source") {
        Some(Value::String(s)) => s,
        Some(v) => {
            return Err(src.err_in_table(
                span,
                &what,
                format!("`source` must be a string, found {}", v.type_str()),
            ))
        }
        None => {
            return Err(src.err_at(
                span.start,
                format!(
                    "{what}: missing key `source` (one of \"synthetic\", \"folder\", \"nifti\")"
                ),
            ))
        }
    };
    let v = Value::Table(t);
    let map = |e: toml::de::Error| src.err_in_table(span.clone(), &what, e.message());
    let source = match kind.as_str() {
        "synthetic" => SourceSpec::Synthetic(v.try_into().map_err(map)?),
        "folder" => SourceSpec::Folder(v.try_into().map_err(map)?),
        "nifti" => SourceSpec::Nifti(v.try_into().map_err(map)?),
        other => {
            return Err(src.err_in_table(
                span,
                &what,
                format!(
                    "`source` = {other:?} is unknown: use \"synthetic\", \"folder\" or \"nifti\""
                ),
            ))
        }
    };
    let ts = TaskSpec { name, source, line };
    crate::data::validate_source(&ts).map_err(|m| src.err_in_table(span, &what, m))?;
    Ok(ts)
}

fn resolve_orders(
    src: &SpecSource,
    tasks: &[TaskSpec],
    orders: Option<Vec<Spanned<RawOrder>>>,
    n_random: usize,
    order_seed: u64,
    stream_span: std::ops::Range<usize>,
) -> Result<Vec<Order>> {
    let n = tasks.len();
    let mut out: Vec<Order> = Vec::new();
    let mut n_perm = 0;
    let given: Vec<usize> = (0..n).collect();
    let raw = orders.unwrap_or_default();
    if raw.is_empty() && n_random == 0 {
        out.push(Order {
            label: "given".into(),
            tasks: given.clone(),
        });
    }
    for o in raw {
        let span = o.span();
        match o.into_inner() {
            RawOrder::Named(s) if s == "given" => out.push(Order {
                label: "given".into(),
                tasks: given.clone(),
            }),
            RawOrder::Named(s) if s == "reverse" => out.push(Order {
                label: "reverse".into(),
                tasks: given.iter().rev().copied().collect(),
            }),
            RawOrder::Named(s) => {
                return Err(src.err_at(
                    span.start,
                    format!(
                    "[stream] orders: {s:?} is not \"given\", \"reverse\" or a list of task names"
                ),
                ))
            }
            RawOrder::Perm(names) => {
                let mut idx = Vec::new();
                for nm in &names {
                    match tasks.iter().position(|t| &t.name == nm) {
                        Some(p) if !idx.contains(&p) => idx.push(p),
                        Some(_) => {
                            return Err(src.err_at(
                                span.start,
                                format!("[stream] orders: task {nm:?} appears twice"),
                            ))
                        }
                        None => {
                            return Err(src.err_at(
                                span.start,
                                format!(
                                    "[stream] orders: unknown task {nm:?} (tasks: {})",
                                    task_list(tasks)
                                ),
                            ))
                        }
                    }
                }
                if idx.len() != n {
                    return Err(src.err_at(
                        span.start,
                        format!(
                            "[stream] orders: a permutation must list all {n} tasks ({})",
                            task_list(tasks)
                        ),
                    ));
                }
                n_perm += 1;
                out.push(Order {
                    label: format!("perm{n_perm}"),
                    tasks: idx,
                });
            }
        }
    }
    if n_random > 0 {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(order_seed);
        for k in 1..=n_random {
            let mut p = given.clone();
            p.shuffle(&mut rng);
            out.push(Order {
                label: format!("random{k}"),
                tasks: p,
            });
        }
    }
    for i in 0..out.len() {
        for j in 0..i {
            if out[i].label == out[j].label {
                return Err(src.err_at(
                    stream_span.start,
                    format!("[stream] orders: {:?} is listed twice", out[i].label),
                ));
            }
        }
    }
    Ok(out)
}

fn task_list(tasks: &[TaskSpec]) -> String {
    tasks
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Find a preset's TOML: a path (ending in .toml), else `baselines/<name>.toml` next to the spec or in its parent
/// folder, else the built-in copy.
pub fn find_preset(base_dir: &Path, name: &str) -> std::result::Result<(String, String), String> {
    if name.ends_with(".toml") {
        let p = if Path::new(name).is_absolute() {
            PathBuf::from(name)
        } else {
            base_dir.join(name)
        };
        return std::fs::read_to_string(&p)
            .map(|t| (p.display().to_string(), t))
            .map_err(|e| format!("preset file {}: {e}", p.display()));
    }
    if name.is_empty() || name.contains(['/', '\\', '.']) {
        return Err(format!(
            "preset {name:?} is not a preset name or a .toml path"
        ));
    }
    for dir in [
        base_dir.join("baselines"),
        base_dir.join("..").join("baselines"),
    ] {
        let p = dir.join(format!("{name}.toml"));
        if p.is_file() {
            return std::fs::read_to_string(&p)
                .map(|t| (p.display().to_string(), t))
                .map_err(|e| format!("preset file {}: {e}", p.display()));
        }
    }
    if let Some(text) = crate::strategy::builtin_preset(name) {
        return Ok((
            format!("<built-in baselines/{name}.toml>"),
            text.to_string(),
        ));
    }
    Err(format!(
        "unknown preset {name:?}: no baselines/{name}.toml next to the spec and no built-in preset (built in: {})",
        crate::strategy::BUILTIN_PRESETS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    ))
}

fn resolve_strategy(
    src: &SpecSource,
    base_dir: &Path,
    i: usize,
    span: std::ops::Range<usize>,
    mut entry: Table,
    spec_train: &Table,
    spec_lora: &Table,
) -> Result<StrategySpec> {
    let what = format!("[[strategy]] #{}", i + 1);
    let preset = match entry.remove("preset") {
        Some(Value::String(s)) => s,
        Some(v) => {
            return Err(src.err_in_table(
                span,
                &what,
                format!("`preset` must be a string, found {}", v.type_str()),
            ))
        }
        None => {
            return Err(src.err_at(
                span.start,
                format!("{what}: missing key `preset` (e.g. \"finetune\")"),
            ))
        }
    };
    let what = format!("{what} (preset {preset:?})");
    let (pfile, ptext) = find_preset(base_dir, &preset)
        .map_err(|m| src.err_at(span.start, format!("{what}: {m}")))?;
    let psrc = SpecSource {
        file: pfile.clone(),
        text: &ptext,
    };
    let mut ptable: Table = toml::from_str(&ptext).map_err(|e| psrc.toml_err(&e))?;
    // Remember which keys came from the entry, so errors point at the spec rather than the preset.
    let entry_keys: Vec<String> = entry.keys().cloned().collect();
    merge_tables(&mut ptable, &entry);

    let perr = |key: &str, msg: String| -> Error {
        if entry_keys.iter().any(|k| k == key) {
            src.err_in_table(span.clone(), &what, msg)
        } else {
            Error::Spec {
                file: pfile.clone(),
                msg: format!("{what}: {msg}"),
            }
        }
    };
    let kind = match ptable.remove("kind") {
        Some(Value::String(s)) => s,
        Some(v) => {
            return Err(perr(
                "kind",
                format!("`kind` must be a string, found {}", v.type_str()),
            ))
        }
        None => return Err(perr("kind", "missing key `kind`".into())),
    };
    let label = match ptable.remove("label") {
        Some(Value::String(s)) if !s.trim().is_empty() && !s.contains([',', '"', '\n', '/']) => s,
        Some(v) => {
            return Err(perr(
                "label",
                format!(
                    "`label` must be a plain non-empty string (no , \" / or newline), found {v}"
                ),
            ))
        }
        None => preset
            .trim_end_matches(".toml")
            .rsplit('/')
            .next()
            .unwrap_or(&preset)
            .to_string(),
    };
    // train: defaults < preset < spec [train] < entry
    let preset_train = match ptable.remove("train") {
        None => Table::new(),
        Some(Value::Table(t)) => t,
        Some(v) => {
            return Err(perr(
                "train",
                format!("`train` must be a table, found {}", v.type_str()),
            ))
        }
    };
    let preset_lora = match ptable.remove("lora") {
        None => Table::new(),
        Some(Value::Table(t)) => t,
        Some(v) => {
            return Err(perr(
                "lora",
                format!("`lora` must be a table, found {}", v.type_str()),
            ))
        }
    };
    let entry_train = match entry.get("train") {
        Some(Value::Table(t)) => t.clone(),
        _ => Table::new(),
    };
    let entry_lora = match entry.get("lora") {
        Some(Value::Table(t)) => t.clone(),
        _ => Table::new(),
    };
    // The merged preset table already holds the entry's train/lora on top of the preset's; rebuild in order.
    let mut train_t = Table::new();
    // preset_train already includes the entry's keys (merged above); strip them and reapply last
    let mut pt = preset_train.clone();
    for k in entry_train.keys() {
        pt.remove(k);
    }
    merge_tables(&mut train_t, &pt);
    merge_tables(&mut train_t, spec_train);
    merge_tables(&mut train_t, &entry_train);
    let train: TrainSpec = Value::Table(train_t)
        .try_into()
        .map_err(|e: toml::de::Error| {
            perr("train", format!("train: {}", e.message().trim_end()))
        })?;
    let mut lora_t = default_lora();
    let mut pl = preset_lora.clone();
    for k in entry_lora.keys() {
        pl.remove(k);
    }
    merge_tables(&mut lora_t, &pl);
    merge_tables(&mut lora_t, spec_lora);
    merge_tables(&mut lora_t, &entry_lora);
    let lora: LoraConfig = Value::Table(lora_t)
        .try_into()
        .map_err(|e: toml::de::Error| perr("lora", format!("lora: {}", e.message().trim_end())))?;
    validate_train(&train).map_err(|m| perr("train", m))?;
    if lora.rank == 0 || !(lora.alpha.is_finite()) || lora.targets.is_empty() {
        return Err(perr(
            "lora",
            "lora: rank must be >= 1, alpha finite and targets non-empty".into(),
        ));
    }
    let params = ptable;
    crate::strategy::validate_params(&kind, &params).map_err(|m| {
        let key = m.split('`').nth(1).unwrap_or("kind").to_string();
        perr(&key, m)
    })?;
    Ok(StrategySpec {
        label,
        kind,
        preset,
        train,
        lora,
        params,
    })
}

fn validate_train(t: &TrainSpec) -> std::result::Result<(), String> {
    if t.batch_size == 0 {
        return Err("train: `batch_size` must be >= 1".into());
    }
    if !(t.lr.is_finite() && t.lr > 0.0) {
        return Err(format!(
            "train: `lr` must be a positive number, found {}",
            t.lr
        ));
    }
    if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
        return Err("train: `weight_decay` must be >= 0".into());
    }
    if let Some(g) = t.max_grad_norm {
        if !(g.is_finite() && g > 0.0) {
            return Err(format!(
                "train: `max_grad_norm` must be a positive number, found {g}"
            ));
        }
    }
    if !(t.prompt.jitter.is_finite() && t.prompt.jitter >= 0.0) {
        return Err("train: `prompt.jitter` must be >= 0".into());
    }
    for (k, v) in [
        ("dice", t.loss.dice),
        ("bce", t.loss.bce),
        ("iou", t.loss.iou),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!("train: `loss.{k}` must be >= 0"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[experiment]
name = "t"
seeds = [0, 1]

[stream]
orders = ["given", "reverse", ["b", "a"]]
random_orders = 1

[[stream.task]]
name = "a"
source = "synthetic"
family = "vessels"
site = 0

[[stream.task]]
name = "b"
source = "synthetic"
family = "organs"
site = 1
train = 4
test = 2

[model]
weights = "random-tiny"
[model.lora]
rank = 2

[train]
epochs = 2
lr = 0.01

[[strategy]]
preset = "zeroshot"

[[strategy]]
preset = "finetune"
[strategy.train]
epochs = 5
"#;

    fn parse(text: &str) -> Result<Spec> {
        Spec::from_str_at(text, Path::new("spec.toml"), Path::new("/nonexistent-dir"))
    }

    fn err_of(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted a bad spec:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn good_spec_parses_and_merges() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.experiment.seeds, vec![0, 1]);
        assert_eq!(s.stream.tasks.len(), 2);
        let labels: Vec<_> = s.orders.iter().map(|o| o.label.as_str()).collect();
        assert_eq!(labels, ["given", "reverse", "perm1", "random1"]);
        assert_eq!(s.orders[1].tasks, vec![1, 0]);
        assert_eq!(s.orders[2].tasks, vec![1, 0]);
        assert_eq!(s.strategies.len(), 2);
        let ft = &s.strategies[1];
        assert_eq!(ft.kind, "finetune");
        assert_eq!(ft.label, "finetune");
        assert_eq!(ft.train.epochs, 5); // entry override
        assert_eq!(ft.train.lr, 0.01); // spec [train]
        assert_eq!(ft.lora.rank, 2); // spec [model.lora]
        assert_eq!(s.strategies[0].train.epochs, 2);
        assert_eq!(s.model.weights, "random-tiny");
    }

    fn replace(a: &str, b: &str) -> String {
        assert!(GOOD.contains(a), "{a}");
        GOOD.replacen(a, b, 1)
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = err_of(&replace("epochs = 2", "epochz = 2"));
        assert!(
            e.contains("spec.toml") && e.contains("epochz") && e.contains("line 30"),
            "{e}"
        );
        let e = err_of(&replace("seeds = [0, 1]", "seeds = [0, 1]\ncolour = 1"));
        assert!(e.contains("colour") && e.contains("line 5"), "{e}");
        // unknown key inside a task source
        let e = err_of(&replace("site = 0", "site = 0\nbrightness = 3"));
        assert!(
            e.contains("brightness") && e.contains("line 15") && e.contains("(a)"),
            "{e}"
        );
        // unknown key in a strategy override
        let e = err_of(&replace(
            "preset = \"zeroshot\"",
            "preset = \"zeroshot\"\nfoo = 1",
        ));
        assert!(e.contains("foo") && e.contains("line 35"), "{e}");
        // unknown key in [model]
        let e = err_of(&replace(
            "weights = \"random-tiny\"",
            "weights = \"random-tiny\"\nwieghts = 1",
        ));
        assert!(e.contains("wieghts"), "{e}");
    }

    #[test]
    fn wrong_types_and_missing_keys() {
        let e = err_of(&replace("epochs = 2", "epochs = \"two\""));
        assert!(e.contains("line 30") && e.contains("epochs"), "{e}");
        let e = err_of(&replace("seeds = [0, 1]", "seeds = 3"));
        assert!(e.contains("line 4"), "{e}");
        let e = err_of(&replace("name = \"t\"\n", ""));
        assert!(e.contains("name"), "{e}");
        let e = err_of(&replace(
            "source = \"synthetic\"\nfamily = \"vessels\"",
            "family = \"vessels\"",
        ));
        assert!(e.contains("source") && e.contains("line 1"), "{e}");
        let e = err_of(&replace("family = \"vessels\"", "family = \"trees\""));
        assert!(e.contains("trees"), "{e}");
        let e = err_of(&replace("source = \"synthetic\"", "source = \"dicom\""));
        assert!(e.contains("dicom"), "{e}");
        let e = err_of(&replace("rank = 2", "rank = -2"));
        assert!(e.contains("rank") || e.contains("lora"), "{e}");
    }

    #[test]
    fn bad_orders_and_strategies() {
        let e = err_of(&replace("[\"b\", \"a\"]", "[\"b\", \"c\"]"));
        assert!(e.contains("unknown task \"c\""), "{e}");
        let e = err_of(&replace("[\"b\", \"a\"]", "[\"b\"]"));
        assert!(e.contains("all 2 tasks"), "{e}");
        let e = err_of(&replace("\"reverse\",", "\"backwards\","));
        assert!(e.contains("backwards"), "{e}");
        let e = err_of(&replace("preset = \"zeroshot\"", "preset = \"nosuch\""));
        assert!(e.contains("unknown preset \"nosuch\""), "{e}");
        let e = err_of(&replace("preset = \"zeroshot\"", "preset = \"finetune\""));
        assert!(e.contains("used twice"), "{e}");
        let e = err_of(&replace("name = \"b\"", "name = \"a\""));
        assert!(e.contains("used twice"), "{e}");
        let e = err_of(&replace("seeds = [0, 1]", "seeds = []"));
        assert!(e.contains("seeds"), "{e}");
        let e = err_of(&replace("seeds = [0, 1]", "device = \"tpu\""));
        assert!(e.contains("tpu"), "{e}");
        let e =
            err_of("[experiment]\nname = \"x\"\n[stream]\n[[strategy]]\npreset = \"zeroshot\"\n");
        assert!(e.contains("no [[stream.task]]"), "{e}");
        let e = err_of("[experiment]\nname = \"x\"\n[stream]\n[[stream.task]]\nname=\"a\"\nsource=\"synthetic\"\nfamily=\"vessels\"\n");
        assert!(e.contains("no [[strategy]]"), "{e}");
        let e = err_of("this is not toml");
        assert!(e.contains("line 1"), "{e}");
        // a bad value in a strategy's train override
        let e = err_of(&replace("epochs = 5", "epochs = 5\nlr = -1.0"));
        assert!(e.contains("lr"), "{e}");
    }

    #[test]
    fn preset_files_next_to_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("baselines")).unwrap();
        std::fs::write(
            dir.path().join("baselines/myft.toml"),
            "kind = \"finetune\"\nlabel = \"ft2\"\n[train]\nepochs = 9\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("baselines/bad.toml"),
            "kind = \"finetune\"\nwhat = 1\n",
        )
        .unwrap();
        let text = GOOD
            .replace("[train]\nepochs = 2\nlr = 0.01\n", "")
            .replace("preset = \"zeroshot\"", "preset = \"myft\"");
        let s = Spec::from_str_at(&text, Path::new("spec.toml"), dir.path()).unwrap();
        assert_eq!(s.strategies[0].label, "ft2");
        assert_eq!(s.strategies[0].train.epochs, 9); // preset value (spec [train] has no epochs)
        let text = GOOD.replace("preset = \"zeroshot\"", "preset = \"bad\"");
        let e = Spec::from_str_at(&text, Path::new("spec.toml"), dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml") && e.contains("what"), "{e}");
        let text = GOOD.replace(
            "preset = \"zeroshot\"",
            "preset = \"finetune\"\nkind = \"magic\"\nlabel = \"m\"",
        );
        let e = Spec::from_str_at(&text, Path::new("spec.toml"), dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("magic") && e.contains("spec.toml"), "{e}");
    }

    #[test]
    fn env_expansion() {
        assert_eq!(expand_env("${EVOSAM_TEST_UNSET_VAR_X:-a/b}/c"), "a/b/c");
        assert_eq!(expand_env("${EVOSAM_TEST_UNSET_VAR_X}/c"), "/c");
        assert_eq!(expand_env("plain/${"), "plain/${");
        let home = std::env::var("HOME").unwrap_or_default();
        if !home.is_empty() {
            assert_eq!(expand_env("${HOME:-x}/y"), format!("{home}/y"));
        }
    }

    #[test]
    fn shipped_specs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for f in std::fs::read_dir(root.join("experiments")).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                Spec::from_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
        }
    }
}
