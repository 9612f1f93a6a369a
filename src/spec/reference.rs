//! `docs/spec.md`, the spec reference, written from the JSON Schema of [`super::schema`] (the one source of both,
//! so the page cannot say what the parser does not read; tests/schema.rs fails when the committed page differs).

use super::schema::{preset_schema, spec_schema};
use super::Catalog;
use serde_json::{Map, Value};
use std::fmt::Write;

/// The order a user reads a spec in; a top-level table missing here is appended after them.
const ORDER: [&str; 7] = [
    "experiment",
    "stream",
    "model",
    "train",
    "eval",
    "strategy",
    "slurm",
];

/// Follow `$ref` (and the `allOf: [{$ref}]` wrapper draft 7 needs for a described reference).
fn resolve<'a>(root: &'a Value, v: &'a Value) -> &'a Value {
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/definitions/");
        return match root.get("definitions").and_then(|d| d.get(name)) {
            Some(d) => resolve(root, d),
            None => v,
        };
    }
    match v.get("allOf").and_then(Value::as_array) {
        Some(a) if a.len() == 1 && v.get("properties").is_none() => resolve(root, &a[0]),
        _ => v,
    }
}

/// Title and description of a schema, outer (the field's doc) before inner (the type's doc).
fn meaning(root: &Value, v: &Value) -> String {
    let text = |x: &Value| {
        let t = x.get("title").and_then(Value::as_str).unwrap_or("");
        let d = x.get("description").and_then(Value::as_str).unwrap_or("");
        match (t.is_empty(), d.is_empty()) {
            (true, _) => d.to_string(),
            (false, true) => t.to_string(),
            (false, false) => format!("{t} {d}"),
        }
    };
    let mut s = text(v);
    if s.is_empty() {
        s = text(resolve(root, v));
    }
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn is_table(root: &Value, v: &Value) -> bool {
    resolve(root, v).get("properties").is_some()
}

/// The closed set of values of an enum (`enum`, or `oneOf`/`anyOf` of documented constants).
fn enum_values(root: &Value, v: &Value) -> Vec<Value> {
    let v = resolve(root, v);
    if let Some(e) = v.get("enum").and_then(Value::as_array) {
        return e.clone();
    }
    if let Some(c) = v.get("const") {
        return vec![c.clone()];
    }
    let mut out = Vec::new();
    for k in ["oneOf", "anyOf"] {
        for alt in v.get(k).and_then(Value::as_array).into_iter().flatten() {
            out.extend(enum_values(root, alt));
        }
    }
    out
}

fn type_name(root: &Value, v: &Value) -> String {
    let v = resolve(root, v);
    if v.get("properties").is_some() {
        return "table".into();
    }
    if let Some(alts) = v.get("anyOf").or(v.get("oneOf")).and_then(Value::as_array) {
        let mut names: Vec<String> = alts.iter().map(|a| type_name(root, a)).collect();
        names.dedup();
        return names.join(" or ");
    }
    let base = match v.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ if v.get("enum").is_some() || v.get("const").is_some() => "string".into(),
        _ => "any".into(),
    };
    match (base.as_str(), v.get("items")) {
        ("array", Some(Value::Array(items))) => {
            format!("array of {} {}", items.len(), type_name(root, &items[0]))
        }
        ("array", Some(items)) => format!("array of {}", type_name(root, items)),
        ("number", _) => "float".into(),
        _ => base,
    }
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => v.to_string(),
    }
}

/// Ranges of a number (or of an array's items) and array lengths, as `≥ 1`, `(0, 1]`, `at least 1 item`.
fn range(root: &Value, v: &Value) -> Vec<String> {
    let v = resolve(root, v);
    let mut out = Vec::new();
    let lo = v
        .get("minimum")
        .map(|x| ("[", x))
        .or(v.get("exclusiveMinimum").map(|x| ("(", x)));
    let hi = v
        .get("maximum")
        .map(|x| ("]", x))
        .or(v.get("exclusiveMaximum").map(|x| (")", x)));
    match (lo, hi) {
        (Some((a, l)), Some((b, h))) => out.push(format!("{a}{}, {}{b}", num(l), num(h))),
        (Some(("[", l)), None)
            if num(l) == "0" && v.get("type").is_some_and(|t| t == "integer") => {}
        (Some(("[", l)), None) => out.push(format!("≥ {}", num(l))),
        (Some((_, l)), None) => out.push(format!("> {}", num(l))),
        (None, Some(("]", h))) => out.push(format!("≤ {}", num(h))),
        (None, Some((_, h))) => out.push(format!("< {}", num(h))),
        (None, None) => {}
    }
    match (v.get("minItems"), v.get("maxItems")) {
        (Some(a), Some(b)) if a == b => out.push(format!("exactly {} items", num(a))),
        (Some(n), _) => out.push(format!(
            "at least {} item{}",
            num(n),
            if num(n) == "1" { "" } else { "s" }
        )),
        (None, Some(n)) => out.push(format!("at most {} items", num(n))),
        (None, None) => {}
    }
    if v.get("uniqueItems") == Some(&Value::Bool(true)) {
        out.push("no repeats".into());
    }
    if let Some(items) = v.get("items").filter(|i| i.is_object()) {
        for r in range(root, items) {
            out.push(format!("each {r}"));
        }
    }
    out
}

/// A JSON value as a TOML literal (`"cpu"`, `[0, 1]`, `0.001`).
fn toml_literal(v: &Value) -> String {
    match toml::Value::try_from(v) {
        Ok(t) => t.to_string(),
        Err(_) => v.to_string(),
    }
}

fn example(root: &Value, key: &str, v: &Value) -> String {
    let r = resolve(root, v);
    let value = r
        .get("examples")
        .or(v.get("examples"))
        .and_then(|e| e.as_array())
        .and_then(|e| e.first().cloned())
        .or_else(|| v.get("default").or(r.get("default")).cloned())
        .or_else(|| enum_values(root, v).into_iter().next());
    let lit = match value {
        Some(x) => toml_literal(&x),
        None => placeholder(root, r),
    };
    format!("`{key} = {lit}`")
}

/// A value of the schema's type when it has no default, example or enum.
fn placeholder(root: &Value, r: &Value) -> String {
    if let Some(items) = r.get("items").filter(|i| i.is_object()) {
        let n = r
            .get("minItems")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1) as usize;
        let item = placeholder(root, resolve(root, items));
        return format!("[{}]", vec![item; n].join(", "));
    }
    match type_name(root, r).as_str() {
        "integer" => r
            .get("minimum")
            .map(num)
            .filter(|m| m != "0")
            .unwrap_or_else(|| "1".into()),
        "float" => "1.0".into(),
        "boolean" => "true".into(),
        "string" => "\"...\"".into(),
        _ => "...".into(),
    }
}

/// One table: its meaning and a row per key; sub-tables follow as their own sections.
fn table(out: &mut String, root: &Value, heading: &str, path: &str, v: &Value, depth: usize) {
    let r = resolve(root, v);
    let hashes = "#".repeat(depth.min(5));
    let _ = writeln!(out, "{hashes} `{heading}`\n");
    let m = meaning(root, v);
    if !m.is_empty() {
        let _ = writeln!(out, "{m}\n");
    }
    let props = r
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let required: Vec<&str> = r
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut keys: Vec<&String> = props.keys().collect();
    keys.sort_by_key(|k| (!required.contains(&k.as_str()), k.as_str()));
    let mut subtables = Vec::new();
    if !keys.is_empty() {
        out.push_str(
            "| Key | Type | Default | Allowed | Meaning | Example |\n|---|---|---|---|---|---|\n",
        );
    }
    for k in keys {
        let pv = &props[k];
        let sub = if is_table(root, pv) {
            format!("{path}.{k}")
        } else {
            String::new()
        };
        let array_of_tables = resolve(root, pv)
            .get("items")
            .is_some_and(|i| is_table(root, i));
        let default = pv
            .get("default")
            .or(resolve(root, pv).get("default"))
            .map(|d| format!("`{}`", toml_literal(d)))
            .unwrap_or_else(|| {
                if required.contains(&k.as_str()) {
                    "*required*".into()
                } else {
                    "—".into()
                }
            });
        let mut allowed: Vec<String> = enum_values(root, pv)
            .iter()
            .map(|e| format!("`{}`", toml_literal(e)))
            .collect();
        allowed.extend(range(root, pv));
        let (ty, ex) = if array_of_tables {
            ("array of tables".into(), format!("see `[[{path}.{k}]]`"))
        } else if sub.is_empty() {
            (type_name(root, pv), example(root, k, pv))
        } else {
            subtables.push((k.clone(), pv.clone()));
            ("table".into(), format!("see `[{sub}]`"))
        };
        let _ = writeln!(
            out,
            "| `{k}` | {ty} | {default} | {} | {} | {ex} |",
            if allowed.is_empty() {
                "—".into()
            } else {
                allowed.join(", ")
            },
            meaning(root, pv),
        );
    }
    out.push('\n');
    for (k, pv) in subtables {
        let p = format!("{path}.{k}");
        table(out, root, &format!("[{p}]"), &p, &pv, depth + 1);
    }
}

/// The keys of each kind (`source-<kind>` / `strategy-<kind>` definitions), one section per kind.
fn kinds(out: &mut String, root: &Value, prefix: &str, key: &str, path: &str, depth: usize) {
    let defs = root
        .get("definitions")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (name, v) in defs.iter().filter(|(n, _)| n.starts_with(prefix)) {
        let kind = &name[prefix.len()..];
        table(out, root, &format!("{key} = \"{kind}\""), path, v, depth);
    }
}

/// The markdown of `docs/spec.md`.
pub fn markdown(catalog: &dyn Catalog) -> String {
    let root = spec_schema(catalog);
    let preset_root = preset_schema(catalog);
    let mut out = String::from(
        "<!-- Generated by `evosam schema --markdown` from the spec types; do not edit: tests/schema.rs fails when \
         this page differs from what the code generates (regenerate: `evosam schema --markdown > docs/spec.md`). -->\n\n\
         # Spec reference\n\n\
         Every table and key of an experiment spec (TOML), as `evosam validate` reads it: type, default, allowed \
         values, meaning and an example. The same keys are in the JSON Schema `docs/evosam.schema.json` (presets: \
         `docs/evosam-preset.schema.json`) that editors read from a spec's first line \
         `#:schema ../docs/evosam.schema.json`. `evosam init` writes a starter spec, `evosam validate --resolved SPEC` \
         prints a spec as it will run (presets merged, defaults filled in). Data paths are relative to the spec's \
         folder; `${NAME}` and `${NAME:-default}` expand from the environment. Ranges are checked by `evosam validate`, \
         which also checks what no schema can (files, task names, LoRA targets against the model).\n\n",
    );
    let top = root
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut order: Vec<String> = ORDER.iter().map(|s| s.to_string()).collect();
    order.extend(top.keys().filter(|k| !ORDER.contains(&k.as_str())).cloned());
    for k in order.iter().filter(|k| top.contains_key(*k)) {
        let v = &top[k];
        match k.as_str() {
            "strategy" => {
                let entry = v.get("items").cloned().unwrap_or(Value::Null);
                let _ = writeln!(out, "## `[[strategy]]`\n");
                strategies_section(&mut out, &root, &preset_root, &entry, catalog);
            }
            "stream" => {
                table(&mut out, &root, "[stream]", "stream", v, 2);
                let task = resolve(&root, v)
                    .get("properties")
                    .and_then(|p| p.get("task"))
                    .and_then(|t| t.get("items"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let mut t = resolve(&root, &task).clone();
                keep_only(&mut t, &["name", "source"]);
                table(&mut out, &root, "[[stream.task]]", "stream.task", &t, 3);
                kinds(&mut out, &root, "source-", "source", "stream.task", 4);
            }
            _ => table(&mut out, &root, &format!("[{k}]"), k, v, 2),
        }
    }
    out
}

fn keep_only(v: &mut Value, keys: &[&str]) {
    if let Some(Value::Object(p)) = v.get_mut("properties") {
        let kept: Map<String, Value> = p
            .iter()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        *p = kept;
    }
}

fn strategies_section(
    out: &mut String,
    root: &Value,
    preset_root: &Value,
    entry: &Value,
    catalog: &dyn Catalog,
) {
    let mut e = resolve(root, entry).clone();
    keep_only(&mut e, &["preset", "label"]);
    table(out, root, "[[strategy]] keys", "strategy", &e, 3);
    out.push_str(
        "An entry may also set `train` and `lora` tables (the keys of `[train]` and `[model.lora]`) and any key of \
         its preset's kind (below). A preset file holds `kind`, `label`, `train`, `lora` and the kind's keys.\n\n\
         ### Presets\n\n| Preset | Kind | What it is |\n|---|---|---|\n",
    );
    for p in catalog.preset_names() {
        let text = catalog.builtin_preset(&p).unwrap_or_default();
        let kind = toml::from_str::<toml::Table>(&text)
            .ok()
            .and_then(|t| t.get("kind").and_then(|k| k.as_str()).map(str::to_string))
            .unwrap_or_default();
        // the preset's first comment sentence (after the `#:schema` line)
        let first = text
            .lines()
            .filter(|l| l.starts_with('#') && !l.starts_with("#:"))
            .map(|l| l.trim_start_matches('#').trim())
            .take_while(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let first = first.split(". ").next().unwrap_or("").trim_end_matches('.');
        let _ = writeln!(out, "| `{p}` | `{kind}` | {}. |", first.replace('|', "\\|"));
    }
    out.push('\n');
    kinds(out, preset_root, "strategy-", "kind", "strategy", 3);
}
