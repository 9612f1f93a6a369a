//! JSON Schema (draft 7, the draft taplo and VS Code's TOML extension read) of the TOML a user writes: the spec
//! and the preset files. `evosam schema` prints them; `docs/evosam.schema.json`, `docs/evosam-preset.schema.json`
//! and `docs/spec.md` are their committed copies (tests/schema.rs fails when they differ from these functions).
//!
//! Why it cannot drift from the parser: every table is described by the very serde type the parser reads
//! (`schemars` derives from the same fields, serde attributes and doc comments); the tables the parser keeps as
//! raw TOML (tasks, strategy entries, presets) are assembled here from the [`Catalog`]'s typed schemas of each
//! source and strategy kind, so a kind registered at run time appears too. Ranges are `schemars` attributes next to
//! the fields whose `validate` checks them; tests/schema.rs probes each bound against the parser.

use super::schema_parts::lora_table;
use super::Catalog;
use schemars::generate::SchemaSettings;
use schemars::{Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// Keys every `[[strategy]]` entry and preset may hold besides a kind's own.
const STRATEGY_COMMON: [&str; 3] = ["label", "train", "lora"];

/// The generator all schemas of this module use: draft 7.
pub fn generator() -> SchemaGenerator {
    SchemaSettings::draft07().into_generator()
}

/// A doc comment as an editor shows it: one paragraph per line, rustdoc links as plain code.
fn tidy_text(s: &str) -> String {
    let s = s
        .split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    // [`x`] -> `x` (rustdoc links), leaving other brackets alone
    let mut out = String::new();
    let mut rest = s.as_str();
    while let Some(i) = rest.find("[`") {
        let after = &rest[i + 2..];
        match after.find('`') {
            Some(j) if after[j..].starts_with("`]") && j > 0 => {
                out.push_str(&rest[..i]);
                out.push('`');
                out.push_str(&after[..j]);
                out.push('`');
                rest = &after[j + 2..];
            }
            _ => {
                out.push_str(&rest[..i + 2]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `Option<T>` is written as `T`: TOML has no null (an absent key is the `None`); descriptions tidied.
fn drop_null(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for k in ["description", "title"] {
                if let Some(Value::String(d)) = o.get_mut(k) {
                    *d = tidy_text(d);
                }
            }
            if let Some(Value::Array(ts)) = o.get_mut("type") {
                ts.retain(|t| t != "null");
                if ts.len() == 1 {
                    let t = ts[0].clone();
                    o.insert("type".into(), t);
                }
            }
            for k in ["anyOf", "oneOf"] {
                if let Some(Value::Array(alts)) = o.get_mut(k) {
                    alts.retain(|a| a.get("type").and_then(Value::as_str) != Some("null"));
                    if alts.len() == 1 {
                        let only = alts.remove(0);
                        o.remove(k);
                        if let Value::Object(inner) = only {
                            for (ik, iv) in inner {
                                o.entry(ik).or_insert(iv);
                            }
                        }
                    }
                }
            }
            if o.get("default") == Some(&Value::Null) {
                o.remove("default");
            }
            for x in o.values_mut() {
                drop_null(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(drop_null),
        _ => {}
    }
}

fn props_of(v: &Value) -> Map<String, Value> {
    v.get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn required_of(v: &Value) -> Vec<Value> {
    v.get("required")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Properties of several kinds in one table: a key two kinds type differently accepts either.
fn union(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (k, v) in from {
        match into.get(&k) {
            Some(prev) if *prev != v => {
                let merged = json!({ "anyOf": [prev.clone(), v] });
                into.insert(k, merged);
            }
            Some(_) => {}
            None => {
                into.insert(k, v);
            }
        }
    }
}

/// `if <discriminator> = <value> then only these keys (and these required)`: one kind's keys out of the union.
fn kind_rule(discriminator: &str, value: &str, keys: Vec<String>, required: Vec<Value>) -> Value {
    let mut then = json!({ "propertyNames": { "enum": keys } });
    if !required.is_empty() {
        then["required"] = Value::Array(required);
    }
    json!({
        "if": { "properties": { discriminator: { "const": value } }, "required": [discriminator] },
        "then": then,
    })
}

/// The kind of each built-in preset (from its text).
fn preset_kinds(catalog: &dyn Catalog) -> Vec<(String, String)> {
    catalog
        .preset_names()
        .into_iter()
        .filter_map(|p| {
            let t: toml::Table = toml::from_str(&catalog.builtin_preset(&p)?).ok()?;
            let k = t.get("kind")?.as_str()?.to_string();
            Some((p, k))
        })
        .collect()
}

/// Schemas by kind name.
type Named = Vec<(String, Value)>;

/// The definitions of the source kinds (`source-<kind>`) and strategy kinds (`strategy-<kind>`), each an object
/// schema of the kind's own keys; [`super::reference`] documents each kind from them.
fn kind_definitions(gen: &mut SchemaGenerator, catalog: &dyn Catalog) -> (Named, Named) {
    let sources = catalog
        .source_schemas(gen)
        .into_iter()
        .map(|(k, s)| (k, s.to_value()))
        .collect();
    let strategies = catalog
        .strategy_schemas(gen)
        .into_iter()
        .map(|(k, s)| (k, s.to_value()))
        .collect();
    (sources, strategies)
}

/// The schema of a `[[stream.task]]` table: `name`, `source` and the union of the source kinds' keys, each
/// kind limited to its own keys.
fn task_schema(sources: &[(String, Value)]) -> Value {
    let mut p = Map::new();
    p.insert(
        "name".into(),
        json!({ "type": "string", "minLength": 1, "examples": ["site-a"],
                "description": "Task name, unique in the spec (the `task` column of every table); no commas, \
                                quotes or newlines." }),
    );
    let kinds: Vec<&str> = sources.iter().map(|(k, _)| k.as_str()).collect();
    p.insert(
        "source".into(),
        json!({ "enum": kinds, "description": "The data source; its own keys follow in the same table." }),
    );
    let mut rules = Vec::new();
    for (k, s) in sources {
        let own = props_of(s);
        let mut keys = vec!["name".to_string(), "source".to_string()];
        keys.extend(own.keys().cloned());
        rules.push(kind_rule("source", k, keys, required_of(s)));
        union(&mut p, own);
    }
    json!({
        "description": "One task of the stream, in the given order: `name`, `source` and the source's keys.",
        "type": "object",
        "properties": p,
        "required": ["name", "source"],
        "additionalProperties": false,
        "allOf": rules,
    })
}

/// Common keys of a strategy entry or a preset: label, train, lora.
fn strategy_common(gen: &mut SchemaGenerator) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert(
        "label".into(),
        json!({ "type": "string", "minLength": 1,
                "description": "The strategy's name in every table (default: the preset's label, else the preset \
                                name); unique in the spec, no commas, quotes, slashes or newlines." }),
    );
    let mut train = gen.subschema_for::<super::TrainSpec>().to_value();
    if let Value::Object(o) = &mut train {
        o.insert(
            "description".into(),
            "Training settings of this strategy (over the spec's [train]).".into(),
        );
    }
    p.insert("train".into(), train);
    p.insert(
        "lora".into(),
        lora_table(
            gen,
            "LoRA settings of this strategy (over the spec's [model.lora]).",
        ),
    );
    p
}

/// The schema of a `[[strategy]]` entry: `preset`, the common keys and every kind's keys (an entry overrides its
/// preset's keys); a built-in preset limits the entry to its kind's keys.
fn strategy_entry_schema(
    gen: &mut SchemaGenerator,
    catalog: &dyn Catalog,
    strategies: &[(String, Value)],
) -> Value {
    let kinds = preset_kinds(catalog);
    let names: Vec<&str> = kinds.iter().map(|(p, _)| p.as_str()).collect();
    let mut p = Map::new();
    p.insert(
        "preset".into(),
        json!({
            "description": "The preset this entry starts from: a built-in name (baselines/<name>.toml next to the \
                            spec or its parent folder wins over the built-in copy), another baselines/<name>.toml, \
                            or a path ending in .toml.",
            "anyOf": [ { "enum": names }, { "type": "string", "minLength": 1 } ],
        }),
    );
    p.extend(strategy_common(gen));
    let mut rules = Vec::new();
    for (k, s) in strategies {
        union(&mut p, props_of(s));
        let keys = allowed_keys("preset", s);
        for (preset, _) in kinds.iter().filter(|(_, pk)| pk == k) {
            rules.push(kind_rule("preset", preset, keys.clone(), Vec::new()));
        }
    }
    json!({
        "description": "One strategy of the comparison: a preset (baselines/<preset>.toml) and overrides of any \
                        of its keys. Precedence: built-in defaults < preset < the spec's [train]/[model.lora] < \
                        this entry.",
        "type": "object",
        "properties": p,
        "required": ["preset"],
        "additionalProperties": false,
        "allOf": rules,
    })
}

fn finish(
    mut gen: SchemaGenerator,
    mut root: Schema,
    title: &str,
    extra: Vec<(String, Value)>,
) -> Value {
    let mut defs: Map<String, Value> = gen.take_definitions(true).into_iter().collect();
    defs.extend(extra);
    let o = root.ensure_object();
    o.insert("title".into(), title.into());
    if !defs.is_empty() {
        o.insert("definitions".into(), Value::Object(defs));
    }
    let mut v = root.to_value();
    drop_null(&mut v);
    v
}

/// The JSON Schema of an experiment spec (see the module documentation).
pub fn spec_schema(catalog: &dyn Catalog) -> Value {
    let mut gen = generator();
    let root = gen.root_schema_for::<super::parse::RawSpec>();
    let (sources, strategies) = kind_definitions(&mut gen, catalog);
    let entry = strategy_entry_schema(&mut gen, catalog, &strategies);
    let mut extra = vec![
        ("Task".to_string(), task_schema(&sources)),
        ("Strategy".to_string(), entry),
    ];
    extra.extend(sources.into_iter().map(|(k, v)| (format!("source-{k}"), v)));
    extra.extend(
        strategies
            .into_iter()
            .map(|(k, v)| (format!("strategy-{k}"), v)),
    );
    finish(gen, root, "evosam experiment spec", extra)
}

/// The keys a strategy entry (`first` = "preset") or a preset file (`first` = "kind") of the kind whose schema is
/// `kind_schema` may hold: `first`, the common keys and the kind's own.
fn allowed_keys(first: &str, kind_schema: &Value) -> Vec<String> {
    std::iter::once(first)
        .chain(STRATEGY_COMMON.iter().copied())
        .map(str::to_string)
        .chain(props_of(kind_schema).keys().cloned())
        .collect()
}

/// The JSON Schema of a preset file (`baselines/<name>.toml`): `kind`, the common keys and the kind's keys.
pub fn preset_schema(catalog: &dyn Catalog) -> Value {
    let mut gen = generator();
    let (_, strategies) = kind_definitions(&mut gen, catalog);
    let kinds: Vec<&str> = strategies.iter().map(|(k, _)| k.as_str()).collect();
    let mut p = Map::new();
    p.insert(
        "kind".into(),
        json!({ "enum": kinds, "description": "The strategy kind this preset configures." }),
    );
    p.extend(strategy_common(&mut gen));
    let mut rules = Vec::new();
    for (k, s) in &strategies {
        rules.push(kind_rule("kind", k, allowed_keys("kind", s), Vec::new()));
        union(&mut p, props_of(s));
    }
    let root: Schema = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "description": "A strategy preset (baselines/<name>.toml): the strategy kind and its settings; a \
                        [[strategy]] entry of a spec names it with `preset` and may override any key.",
        "type": "object",
        "properties": p,
        "required": ["kind"],
        "additionalProperties": false,
        "allOf": rules,
    })
    .try_into()
    .expect("an object");
    let extra = strategies
        .into_iter()
        .map(|(k, v)| (format!("strategy-{k}"), v))
        .collect();
    finish(gen, root, "evosam strategy preset", extra)
}

/// Pretty JSON with a final newline: the committed form.
pub fn to_pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("JSON values serialise");
    s.push('\n');
    s
}
