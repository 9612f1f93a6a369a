//! Presets and the strategy merge: a `[[strategy]]` entry names a preset (`baselines/<name>.toml` next to the
//! spec, or the registry's built-in copy), and its settings are merged as
//! built-in defaults < preset < the spec's `[train]`/`[model.lora]` < the entry's overrides.

use super::diag::{from_value, Diag, Seg, SpecSource};
use super::{default_lora, merge_tables, Catalog, StrategySpec, TrainSpec};
use crate::model::LoraConfig;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// Find a preset's TOML: a path (ending in .toml), else `baselines/<name>.toml` next to the spec or in its parent
/// folder, else the built-in copy.
pub fn find_preset(
    base_dir: &Path,
    name: &str,
    catalog: &dyn Catalog,
) -> std::result::Result<(String, String), String> {
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
    if let Some(text) = catalog.builtin_preset(name) {
        return Ok((format!("<built-in baselines/{name}.toml>"), text));
    }
    Err(format!(
        "unknown preset {name:?}: no baselines/{name}.toml next to the spec and no built-in preset (built in: {})",
        catalog.preset_names().join(", ")
    ))
}

/// What every `[[strategy]]` entry is resolved against: the spec's text (for messages), the catalog of kinds and
/// presets, the folder presets are looked up in first, and the spec's own `[train]` and `[model.lora]` tables.
pub(super) struct EntryContext<'a> {
    pub src: &'a SpecSource<'a>,
    pub catalog: &'a dyn Catalog,
    pub base_dir: &'a Path,
    pub spec_train: &'a Table,
    pub spec_lora: &'a Table,
}

/// `[[strategy]]` entry `i` (at `span`) as it will run: its preset's table under the entry's keys, `train` and
/// `lora` layered defaults < preset < spec < entry, the kind's own keys checked by the catalog. A problem is
/// reported where its key was written (the entry, else the preset file).
pub(super) fn resolve_strategy(
    cx: &EntryContext,
    i: usize,
    span: std::ops::Range<usize>,
    mut entry: Table,
) -> Result<StrategySpec> {
    let EntryContext {
        src,
        catalog,
        base_dir,
        spec_train,
        spec_lora,
    } = *cx;
    let what = format!("[[strategy]] #{}", i + 1);
    let here = [Seg::Key("strategy".into()), Seg::Index(i)];
    let preset = match entry.remove("preset") {
        Some(Value::String(s)) => s,
        Some(v) => {
            let d = Diag::at(
                "preset",
                format!("`preset` must be a string, found {}", v.type_str()),
            );
            return Err(src.err_diag(&here, span.start, &what, &d));
        }
        None => {
            return Err(src.err_at(
                span.start,
                format!("{what}: missing key `preset` (e.g. \"finetune\")"),
            ))
        }
    };
    let what = format!("{what} (preset {preset:?})");
    let (pfile, ptext) = find_preset(base_dir, &preset, catalog)
        .map_err(|m| src.err_at(span.start, format!("{what}: {m}")))?;
    let psrc = SpecSource {
        file: pfile.clone(),
        text: &ptext,
    };
    let mut ptable: Table = toml::from_str(&ptext).map_err(|e| psrc.toml_err(&e))?;
    // Remember which keys came from the entry, so errors point at the spec rather than the preset.
    let entry_keys: Vec<String> = entry.keys().cloned().collect();
    merge_tables(&mut ptable, &entry);

    // A problem is reported where its key was written: the spec's entry when it set the key, else the preset.
    let perr_diag = |d: Diag| -> Error {
        let in_entry = d
            .path
            .first_key()
            .is_some_and(|k| entry_keys.iter().any(|e| e == k));
        if in_entry {
            src.err_diag(&here, span.start, &what, &d)
        } else {
            psrc.err_diag(&[], 0, &what, &d)
        }
    };
    let perr = |key: &str, msg: String| perr_diag(Diag::at(key, msg));
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
    let train_t = layered(Table::new(), &preset_train, spec_train, &entry_train);
    let train: TrainSpec = from_value(Value::Table(train_t))
        .map_err(|d| perr_diag(d.under("train").prefixed("train: ")))?;
    let lora_t = layered(default_lora(), &preset_lora, spec_lora, &entry_lora);
    let lora: LoraConfig = from_value(Value::Table(lora_t))
        .map_err(|d| perr_diag(d.under("lora").prefixed("lora: ")))?;
    validate_train(&train).map_err(|d| perr_diag(d.under("train")))?;
    validate_lora(&lora).map_err(|d| perr_diag(d.under("lora")))?;
    let params = ptable;
    catalog.check_strategy(&kind, &params).map_err(perr_diag)?;
    Ok(StrategySpec {
        label,
        kind,
        preset,
        train,
        lora,
        params,
    })
}

/// A `train` or `lora` table in precedence order: `base` < preset < spec < entry. The merged preset table
/// already holds the entry's keys on top of the preset's, so they are taken out of it and applied last.
fn layered(mut base: Table, preset: &Table, spec: &Table, entry: &Table) -> Table {
    let mut p = preset.clone();
    for k in entry.keys() {
        p.remove(k);
    }
    merge_tables(&mut base, &p);
    merge_tables(&mut base, spec);
    merge_tables(&mut base, entry);
    base
}

/// Ranges of LoRA settings that need no model; the path is relative to the `lora` table. (A rank larger than
/// the adapted layers allow, or targets that match no layer, depend on the model: `runner::check_model`.)
pub(super) fn validate_lora(l: &LoraConfig) -> std::result::Result<(), Diag> {
    if l.rank == 0 {
        return Err(Diag::at("rank", "lora: `rank` must be >= 1"));
    }
    if !(l.alpha.is_finite() && l.alpha > 0.0) {
        return Err(Diag::at(
            "alpha",
            format!("lora: `alpha` must be a positive number, found {}", l.alpha),
        ));
    }
    if l.targets.is_empty() {
        return Err(Diag::at("targets", "lora: `targets` is empty"));
    }
    for t in &l.targets {
        if t.trim().is_empty() {
            return Err(Diag::at(
                "targets",
                "lora: `targets` holds an empty pattern",
            ));
        }
        if t.contains(['*', '?', '[']) {
            glob::Pattern::new(t).map_err(|e| {
                Diag::at(
                    "targets",
                    format!("lora: target {t:?} is not a valid glob: {e}"),
                )
            })?;
        }
    }
    Ok(())
}

/// The most simulated clicks per image in training (the interactive study's own default is 10).
const MAX_TRAIN_CLICKS: usize = 64;

/// Ranges of the merged training settings; the path is relative to the `train` table.
pub(super) fn validate_train(t: &TrainSpec) -> std::result::Result<(), Diag> {
    if t.batch_size == 0 {
        return Err(Diag::at("batch_size", "train: `batch_size` must be >= 1"));
    }
    if !(t.lr.is_finite() && t.lr > 0.0) {
        return Err(Diag::at(
            "lr",
            format!("train: `lr` must be a positive number, found {}", t.lr),
        ));
    }
    if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
        return Err(Diag::at(
            "weight_decay",
            "train: `weight_decay` must be >= 0",
        ));
    }
    if let Some(g) = t.max_grad_norm {
        if !(g.is_finite() && g > 0.0) {
            return Err(Diag::at(
                "max_grad_norm",
                format!("train: `max_grad_norm` must be a positive number, found {g}"),
            ));
        }
    }
    if !(t.val_fraction.is_finite() && (0.0..0.9).contains(&t.val_fraction)) {
        return Err(Diag::at(
            "val_fraction",
            format!(
                "train: `val_fraction` must be in [0, 0.9), found {}",
                t.val_fraction
            ),
        ));
    }
    if !(t.warmup.is_finite() && (0.0..=1.0).contains(&t.warmup)) {
        return Err(Diag::at(
            "warmup",
            format!("train: `warmup` must be in [0, 1], found {}", t.warmup),
        ));
    }
    if !(t.prompt.jitter.is_finite() && t.prompt.jitter >= 0.0) {
        return Err(Diag::at_path(
            &["prompt", "jitter"],
            "train: `prompt.jitter` must be >= 0",
        ));
    }
    if !(t.prompt.click_prob.is_finite() && (0.0..=1.0).contains(&t.prompt.click_prob)) {
        return Err(Diag::at_path(
            &["prompt", "click_prob"],
            format!(
                "train: `prompt.click_prob` must be in [0, 1], found {}",
                t.prompt.click_prob
            ),
        ));
    }
    if t.prompt.clicks > MAX_TRAIN_CLICKS {
        return Err(Diag::at_path(
            &["prompt", "clicks"],
            format!(
                "train: `prompt.clicks` must be at most {MAX_TRAIN_CLICKS}, found {}",
                t.prompt.clicks
            ),
        ));
    }
    for (k, v) in [
        ("dice", t.loss.dice),
        ("bce", t.loss.bce),
        ("iou", t.loss.iou),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Diag::at_path(
                &["loss", k],
                format!("train: `loss.{k}` must be >= 0"),
            ));
        }
    }
    Ok(())
}
