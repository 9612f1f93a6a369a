//! The document walk: raw TOML -> [`Spec`]. Every error names the file and points at the line of the key at
//! fault (through [`SpecSource::err_diag`]); data sources and strategy kinds are checked through the
//! [`Catalog`].

use super::diag::{from_table, from_value, Diag, Seg, SpecSource};
use super::presets::{resolve_strategy, EntryContext};
use super::streams::{resolve_orders, RawOrder};
use super::{
    default_lora, merge_tables, parse_device, Catalog, ExperimentSpec, InteractiveSpec, ModelSpec,
    Order, SourceTable, Spec, StrategySpec, StreamSpec, TaskSpec, TrainSpec,
};
use crate::model::LoraConfig;
use crate::{Error, Result};
use serde::Deserialize;
use std::path::Path;
use std::path::PathBuf;
use toml::{Spanned, Table, Value};

/// The spec as written (the tables the parser reads typed, the rest raw); also the root of the JSON Schema
/// (`super::schema`), whose raw tables are filled in from the catalog.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "evosam experiment spec")]
pub(super) struct RawSpec {
    /// Name, seeds, output folder, device and threads of the experiment.
    #[schemars(with = "ExperimentSpec")]
    experiment: Spanned<ExperimentSpec>,
    /// The tasks, in the given order, and the task orders to run.
    #[schemars(with = "RawStream")]
    stream: Spanned<RawStream>,
    /// The base model and the LoRA settings of every strategy.
    #[serde(default)]
    #[schemars(with = "Option<super::schema_parts::ModelTable>")]
    model: Option<Spanned<Table>>,
    /// Training settings of every strategy (a preset or a [[strategy]] entry may override them).
    #[serde(default)]
    #[schemars(with = "Option<TrainSpec>")]
    train: Option<Spanned<Table>>,
    /// The strategies to compare: a preset each, with overrides.
    #[serde(default)]
    #[schemars(with = "Vec<super::schema_parts::StrategyTable>", length(min = 1))]
    strategy: Vec<Spanned<Table>>,
    /// Evaluation settings and the interactive study.
    #[serde(default)]
    #[schemars(with = "Option<RawEval>")]
    eval: Option<Spanned<Table>>,
    /// Defaults for `evosam submit` (its flags override them); not part of the results.
    #[serde(default)]
    #[schemars(with = "Option<super::SlurmSettings>")]
    slurm: Option<Spanned<super::SlurmSettings>>,
}

/// `[eval]`: the surface-metric tolerance, saved predictions and the interactive study.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawEval {
    /// NSD tolerance, in mm for volumes and folder tasks with `spacing`, else pixels.
    #[serde(default)]
    #[schemars(default = "default_nsd", range(min = 0.0))]
    nsd_tolerance_mm: Option<f64>,
    /// Write each final-stage prediction volume of a NIfTI task as NIfTI under `predictions/` of the run.
    #[serde(default)]
    save_predictions: bool,
    /// The simulated-clinician study (README, "Interactive study"); not run without this table.
    #[serde(default)]
    #[schemars(with = "Option<InteractiveSpec>")]
    interactive: Option<Table>,
}

fn default_nsd() -> f64 {
    super::DEFAULT_NSD_TOLERANCE_MM
}

/// `[stream]`: the tasks and the task orders.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawStream {
    /// One table per task, in the given order (at least one).
    #[serde(default)]
    #[schemars(with = "Vec<super::schema_parts::TaskTable>", length(min = 1))]
    task: Vec<Spanned<Table>>,
    /// Task orders to run: "given", "reverse" and/or explicit permutations (lists of every task name). Default:
    /// ["given"] (none when `random_orders` is set).
    #[serde(default)]
    #[schemars(with = "Option<Vec<RawOrder>>", example = ["given", "reverse"])]
    orders: Option<Vec<Spanned<RawOrder>>>,
    /// Extra seeded random permutations of the tasks ("random1", ...).
    #[serde(default)]
    random_orders: usize,
    /// Seed of the random orders.
    #[serde(default)]
    order_seed: u64,
}

impl Spec {
    /// Read and validate a spec file against a catalog (does not touch data files; see `Spec::check_data`).
    pub fn load(path: &Path, catalog: &dyn Catalog) -> crate::Result<Spec> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| not_utf8(path, &e))?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base_dir = if base_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base_dir
        };
        Self::parse(&text, path, &base_dir, catalog)
    }

    /// Parse spec text; `file` names it in messages, `base_dir` resolves relative paths and presets.
    pub fn parse(
        text: &str,
        file: &Path,
        base_dir: &Path,
        catalog: &dyn Catalog,
    ) -> crate::Result<Spec> {
        parse(text, file, base_dir, catalog)
    }
}

/// A spec that is not UTF-8 text is bad input (exit 2), named with the line and byte of the first bad sequence.
fn not_utf8(path: &Path, e: &std::string::FromUtf8Error) -> Error {
    let at = e.utf8_error().valid_up_to();
    let bytes = e.as_bytes();
    let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
    Error::Spec {
        file: path.display().to_string(),
        msg: format!(
            "line {line}: not UTF-8 text (invalid byte 0x{:02x} at offset {at}); save the spec as UTF-8",
            bytes[at]
        ),
    }
}

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

pub(super) fn parse(
    text: &str,
    file: &Path,
    base_dir: &Path,
    catalog: &dyn Catalog,
) -> Result<Spec> {
    let src = SpecSource {
        file: file.display().to_string(),
        text,
    };
    let raw: RawSpec = toml::from_str(text).map_err(|e| src.toml_err(&e))?;
    let experiment = parse_experiment(&src, raw.experiment)?;
    let (tasks, orders) = parse_stream(&src, catalog, raw.stream)?;
    let (model, spec_lora) = parse_model(&src, raw.model)?;
    let spec_train = parse_train(&src, raw.train)?;
    let (eval, interactive) = parse_eval(&src, raw.eval)?;
    let defaults = (&spec_train, &spec_lora);
    let strategies = parse_strategies(&src, catalog, base_dir, raw.strategy, defaults)?;
    let slurm = parse_slurm(&src, raw.slurm)?;
    Ok(Spec {
        file: file.to_path_buf(),
        base_dir: base_dir.to_path_buf(),
        experiment,
        stream: StreamSpec { tasks },
        orders,
        model,
        strategies,
        eval,
        interactive,
        slurm,
    })
}

/// `[stream]`: its tasks (each checked by its source through the catalog; names unique) and the orders.
fn parse_stream(
    src: &SpecSource,
    catalog: &dyn Catalog,
    stream: Spanned<RawStream>,
) -> Result<(Vec<TaskSpec>, Vec<Order>)> {
    let stream_span = stream.span();
    let rs = stream.into_inner();
    if rs.task.is_empty() {
        return Err(src.err_at(stream_span.start, "[stream] has no [[stream.task]] entries"));
    }
    let mut tasks = Vec::new();
    for (i, t) in rs.task.into_iter().enumerate() {
        let span = t.span();
        tasks.push(parse_task(src, catalog, i, span, t.into_inner())?);
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
        src,
        &tasks,
        rs.orders,
        rs.random_orders,
        rs.order_seed,
        stream_span,
    )?;
    Ok((tasks, orders))
}

/// `[model]` without its `lora` table, and the spec-level `[model.lora]` table (merged into each strategy later;
/// checked alone here, so that its errors point at `[model.lora]`).
fn parse_model(src: &SpecSource, raw: Option<Spanned<Table>>) -> Result<(ModelSpec, Table)> {
    let (mut model_tbl, model_start) = match raw {
        Some(m) => {
            let start = m.span().start;
            (m.into_inner(), start)
        }
        None => (Table::new(), 0),
    };
    let here = [key("model")];
    let spec_lora = match model_tbl.remove("lora") {
        None => Table::new(),
        Some(Value::Table(x)) => x,
        Some(v) => {
            let d = Diag::at(
                "lora",
                format!("`lora` must be a table, found {}", v.type_str()),
            );
            return Err(src.err_diag(&here, model_start, "[model]", &d));
        }
    };
    let model: ModelSpec =
        from_table(&model_tbl).map_err(|d| src.err_diag(&here, model_start, "[model]", &d))?;
    if model.weights.trim().is_empty() {
        let d = Diag::at("weights", "`weights` is empty");
        return Err(src.err_diag(&here, model_start, "[model]", &d));
    }
    let mut l = default_lora();
    merge_tables(&mut l, &spec_lora);
    let lora_err = |d: Diag| {
        src.err_diag(
            &[key("model"), key("lora")],
            model_start,
            "[model.lora]",
            &d,
        )
    };
    let lora: LoraConfig = from_value(Value::Table(l)).map_err(lora_err)?;
    super::presets::validate_lora(&lora).map_err(lora_err)?;
    Ok((model, spec_lora))
}

/// The spec's own `[train]` table (merged into each strategy later), with its ranges checked and reported at
/// `[train]` (an entry or preset may still override them).
fn parse_train(src: &SpecSource, raw: Option<Spanned<Table>>) -> Result<Table> {
    let (spec_train, train_start) = match raw {
        Some(t) => {
            let start = t.span().start;
            (t.into_inner(), start)
        }
        None => (Table::new(), 0),
    };
    let train_err = |d: Diag| src.err_diag(&[key("train")], train_start, "[train]", &d);
    let train: TrainSpec = from_table(&spec_train).map_err(train_err)?;
    super::presets::validate_train(&train).map_err(train_err)?;
    Ok(spec_train)
}

/// `[[strategy]]` entries, each resolved against its preset and the spec's `[train]` / `[model.lora]`
/// (`defaults`); labels unique.
fn parse_strategies(
    src: &SpecSource,
    catalog: &dyn Catalog,
    base_dir: &Path,
    raw: Vec<Spanned<Table>>,
    defaults: (&Table, &Table),
) -> Result<Vec<StrategySpec>> {
    if raw.is_empty() {
        return Err(src.err(
            "no [[strategy]] entries: add at least one, e.g. [[strategy]] preset = \"zeroshot\"",
        ));
    }
    let (spec_train, spec_lora) = defaults;
    let cx = EntryContext {
        src,
        catalog,
        base_dir,
        spec_train,
        spec_lora,
    };
    let mut strategies: Vec<StrategySpec> = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let span = s.span();
        let st = resolve_strategy(&cx, i, span.clone(), s.into_inner())?;
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
    Ok(strategies)
}

/// `[slurm]`: the job settings `evosam submit` uses, checked with their key.
fn parse_slurm(
    src: &SpecSource,
    raw: Option<Spanned<super::SlurmSettings>>,
) -> Result<super::SlurmSettings> {
    let Some(s) = raw else {
        return Ok(super::SlurmSettings::default());
    };
    let span = s.span();
    let s = s.into_inner();
    s.validate().map_err(|e| {
        src.err_diag(
            &[key("slurm")],
            span.start,
            "[slurm]",
            &Diag::at(e.key, format!("`{}`: {}", e.key, e.msg)),
        )
    })?;
    Ok(s)
}

/// `[eval]` and its `[eval.interactive]` table, checked strictly (unknown keys, types, ranges).
fn parse_eval(
    src: &SpecSource,
    e: Option<Spanned<Table>>,
) -> Result<(super::EvalSettings, Option<InteractiveSpec>)> {
    let Some(e) = e else {
        return Ok((super::EvalSettings::default(), None));
    };
    let start = e.span().start;
    let fail = |d: Diag| src.err_diag(&[key("eval")], start, "[eval]", &d);
    let raw: RawEval = from_table(e.get_ref()).map_err(fail)?;
    let mut eval = super::EvalSettings {
        save_predictions: raw.save_predictions,
        ..Default::default()
    };
    if let Some(t) = raw.nsd_tolerance_mm {
        if !(t.is_finite() && t >= 0.0) {
            return Err(fail(Diag::at(
                "nsd_tolerance_mm",
                format!("`nsd_tolerance_mm` = {t} must be a finite distance >= 0"),
            )));
        }
        eval.nsd_tolerance_mm = t;
    }
    let interactive = raw
        .interactive
        .map(|t| {
            InteractiveSpec::from_table(&t).map_err(|d| {
                src.err_diag(
                    &[key("eval"), key("interactive")],
                    start,
                    "[eval.interactive]",
                    &d,
                )
            })
        })
        .transpose()?;
    Ok((eval, interactive))
}

fn parse_experiment(src: &SpecSource, e: Spanned<ExperimentSpec>) -> Result<ExperimentSpec> {
    let start = e.span().start;
    let experiment = e.into_inner();
    let here = [key("experiment")];
    let fail = |d: Diag| src.err_diag(&here, start, "[experiment]", &d);
    if experiment.name.trim().is_empty()
        || experiment.name.contains(['/', '\\'])
        || experiment.name.starts_with('.')
    {
        return Err(fail(Diag::at(
            "name",
            format!(
                "`name` = {:?} must be a non-empty folder name",
                experiment.name
            ),
        )));
    }
    if experiment.seeds.is_empty() {
        return Err(fail(Diag::at("seeds", "`seeds` is empty")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in &experiment.seeds {
        if !seen.insert(*s) {
            return Err(fail(Diag::at("seeds", format!("`seeds` repeats {s}"))));
        }
    }
    parse_device(&experiment.device)
        .map_err(|m| fail(Diag::at("device", format!("`device`: {m}"))))?;
    Ok(experiment)
}

fn parse_task(
    src: &SpecSource,
    catalog: &dyn Catalog,
    i: usize,
    span: std::ops::Range<usize>,
    mut t: Table,
) -> Result<TaskSpec> {
    let line = src.line_of(span.start);
    let here = [key("stream"), key("task"), Seg::Index(i)];
    let what = format!("[[stream.task]] #{}", i + 1);
    let name = match t.remove("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(v) => {
            let d = Diag::at(
                "name",
                format!("`name` must be a non-empty string, found {}", v.type_str()),
            );
            return Err(src.err_diag(&here, span.start, &what, &d));
        }
        None => return Err(src.err_at(span.start, format!("{what}: missing key `name`"))),
    };
    if name.contains([',', '"', '\n']) {
        let d = Diag::at(
            "name",
            format!("`name` {name:?} may not contain commas, quotes or newlines"),
        );
        return Err(src.err_diag(&here, span.start, &what, &d));
    }
    let what = format!("{what} ({name})");
    let kinds = catalog.source_kinds();
    let quoted = kinds
        .iter()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let kind = match t.remove("source") {
        Some(Value::String(s)) => s,
        Some(v) => {
            let d = Diag::at(
                "source",
                format!("`source` must be a string, found {}", v.type_str()),
            );
            return Err(src.err_diag(&here, span.start, &what, &d));
        }
        None => {
            return Err(src.err_at(
                span.start,
                format!("{what}: missing key `source` (one of {quoted})"),
            ))
        }
    };
    if !kinds.contains(&kind) {
        let d = Diag::at(
            "source",
            format!("`source` = {kind:?} is unknown: use {quoted}"),
        );
        return Err(src.err_diag(&here, span.start, &what, &d));
    }
    catalog
        .check_source(&kind, &t)
        .map_err(|d| src.err_diag(&here, span.start, &what, &d))?;
    Ok(TaskSpec {
        name,
        source: SourceTable { kind, params: t },
        line,
    })
}
