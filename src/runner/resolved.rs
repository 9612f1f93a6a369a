//! The spec as it will run: presets merged into each strategy, every default filled in, `${VAR:-default}`
//! substituted and relative paths made absolute. `evosam validate --resolved` prints it as TOML (itself a valid
//! spec) and `run.json` keeps it under `"spec"` (what a run folder was started with, beside its fingerprint).
//!
//! Defaults come from the typed forms (sources are read into their params types, as the fingerprint records them)
//! and, for the keys a type leaves out when they hold their default, from the JSON Schema of the same types, so
//! a strategy kind registered at run time is filled in too.

use crate::data::SourceSpec;
use crate::spec::{schema, Catalog, Spec};
use crate::{Error, Result};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn path_str(p: &Path) -> Value {
    Value::String(absolute(p).display().to_string())
}

/// Follow `$ref` / a one-element `allOf` to the schema that has the properties.
fn deref<'a>(defs: &'a Map<String, Value>, v: &'a Value) -> &'a Value {
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        if let Some(d) = defs.get(r.trim_start_matches("#/definitions/")) {
            return deref(defs, d);
        }
    }
    match v.get("allOf").and_then(Value::as_array) {
        Some(a) if a.len() == 1 && v.get("properties").is_none() => deref(defs, &a[0]),
        _ => v,
    }
}

/// Add the schema's default of every key `t` lacks; recurse into the sub-tables it has.
fn fill(defs: &Map<String, Value>, schema: &Value, t: &mut Map<String, Value>) {
    let s = deref(defs, schema);
    let Some(props) = s.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (k, p) in props {
        let d = p.get("default").or_else(|| deref(defs, p).get("default"));
        match (t.get_mut(k), d) {
            (Some(Value::Object(sub)), _) => fill(defs, p, sub),
            (None, Some(d)) => {
                let mut d = d.clone();
                if let Value::Object(sub) = &mut d {
                    fill(defs, p, sub);
                }
                t.insert(k.clone(), d);
            }
            _ => {}
        }
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn to_json<T: serde::Serialize>(spec: &Spec, what: &str, v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| spec.err(format!("{what}: {e}")))
}

/// The resolved spec as a JSON object (the TOML document's tables).
pub fn resolved_spec(spec: &Spec, catalog: &dyn Catalog) -> Result<Value> {
    let root = schema::spec_schema(catalog);
    let defs = root
        .get("definitions")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let def = |n: &str| defs.get(n).cloned().unwrap_or(Value::Null);

    let mut experiment = object(to_json(spec, "[experiment]", &spec.experiment)?);
    fill(&defs, &def("ExperimentSpec"), &mut experiment);
    experiment.insert("output".into(), path_str(&spec.experiment.output));
    if let Some(c) = &spec.experiment.cache {
        experiment.insert("cache".into(), path_str(c));
    }

    let names = spec.task_names();
    let orders: Vec<Value> = spec
        .orders
        .iter()
        .map(|o| match o.label.as_str() {
            "given" | "reverse" => json!(o.label),
            _ => json!(o.tasks.iter().map(|&i| &names[i]).collect::<Vec<_>>()),
        })
        .collect();
    let mut tasks = Vec::new();
    for t in &spec.stream.tasks {
        let mut src = SourceSpec::of(spec, t)?;
        match &mut src {
            SourceSpec::Folder(f) => f.root = absolute(&spec.resolve_path(&f.root)),
            SourceSpec::Nifti(n) => n.root = absolute(&spec.resolve_path(&n.root)),
            SourceSpec::Synthetic(_) => {}
        }
        let mut task = Map::new();
        task.insert("name".into(), json!(t.name));
        task.extend(object(to_json(spec, &t.name, &src)?));
        fill(&defs, &def(&format!("source-{}", t.source.kind)), &mut task);
        tasks.push(Value::Object(task));
    }

    let mut model = object(to_json(spec, "[model]", &spec.model)?);
    let w = spec.model.weights.as_str();
    if w != "lite_medsam" && w != "random-tiny" {
        model.insert("weights".into(), path_str(&spec.resolve_path(Path::new(w))));
    }

    let mut strategies = Vec::new();
    for s in &spec.strategies {
        let mut e = Map::new();
        let preset = if s.preset.ends_with(".toml") {
            path_str(&spec.resolve_path(Path::new(&s.preset)))
        } else {
            json!(s.preset)
        };
        e.insert("preset".into(), preset);
        e.insert("label".into(), json!(s.label));
        let mut train = object(to_json(spec, &s.label, &s.train)?);
        fill(&defs, &def("TrainSpec"), &mut train);
        e.insert("train".into(), Value::Object(train));
        e.insert("lora".into(), to_json(spec, &s.label, &s.lora)?);
        let mut params = object(to_json(spec, &s.label, &s.params)?);
        fill(&defs, &def(&format!("strategy-{}", s.kind)), &mut params);
        e.extend(params);
        strategies.push(Value::Object(e));
    }

    let mut eval = object(to_json(spec, "[eval]", &spec.eval)?);
    if let Some(i) = &spec.interactive {
        let mut it = object(to_json(spec, "[eval.interactive]", i)?);
        fill(&defs, &def("InteractiveSpec"), &mut it);
        eval.insert("interactive".into(), Value::Object(it));
    }

    let mut doc = Map::new();
    doc.insert("experiment".into(), Value::Object(experiment));
    doc.insert("stream".into(), json!({ "orders": orders, "task": tasks }));
    doc.insert("model".into(), Value::Object(model));
    doc.insert("eval".into(), Value::Object(eval));
    doc.insert("strategy".into(), Value::Array(strategies));
    if !spec.slurm.is_empty() {
        doc.insert("slurm".into(), to_json(spec, "[slurm]", &spec.slurm)?);
    }
    let mut doc = Value::Object(doc);
    strip_nulls(&mut doc);
    Ok(doc)
}

/// An unset optional key is absent (TOML has no null).
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// [`resolved_spec`] as a TOML document, headed by what it is.
pub fn resolved_toml(spec: &Spec, catalog: &dyn Catalog) -> Result<String> {
    let v = resolved_spec(spec, catalog)?;
    let t = toml::Value::try_from(&v)
        .map_err(|e| Error::internal(format!("resolved spec as TOML: {e}")))?;
    let body = toml::to_string_pretty(&t)
        .map_err(|e| Error::internal(format!("resolved spec as TOML: {e}")))?;
    Ok(format!(
        "# {} as it will run: presets merged, defaults filled in, variables substituted, paths absolute.\n\
         # Task orders: {}\n\n{body}",
        spec.file.display(),
        spec.orders
            .iter()
            .map(|o| o.label.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}
