//! The JSON Schema of specs and presets (`evosam schema`): the committed copies in docs/ match the code, every
//! shipped spec and preset is valid under it (checked with an independent JSON Schema validator), misspelt keys are
//! refused with their name, its ranges are the parser's, and what only `evosam validate` can know (files, test ids)
//! is still refused there with exit 2 and the key's location.

mod common;

use common::{bin, text, write};
use evosam::spec::{reference, schema, Spec};
use evosam::Registry;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn spec_validator() -> jsonschema::Validator {
    jsonschema::draft7::new(&schema::spec_schema(&Registry::default()))
        .expect("a valid draft-7 schema")
}

fn preset_validator() -> jsonschema::Validator {
    jsonschema::draft7::new(&schema::preset_schema(&Registry::default()))
        .expect("a valid draft-7 schema")
}

/// The validator's complaints about a TOML text, one line each (`path: message`).
fn problems(v: &jsonschema::Validator, toml_text: &str) -> Vec<String> {
    let doc: Value = toml::from_str(toml_text).expect("TOML");
    v.iter_errors(&doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn toml_files(dir: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(crate_dir().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no TOML files in {dir}");
    out
}

#[test]
fn committed_schemas_and_reference_match_the_code() {
    let reg = Registry::default();
    for (file, generated, how) in [
        (
            "docs/evosam.schema.json",
            schema::to_pretty(&schema::spec_schema(&reg)),
            "evosam schema > docs/evosam.schema.json",
        ),
        (
            "docs/evosam-preset.schema.json",
            schema::to_pretty(&schema::preset_schema(&reg)),
            "evosam schema --preset > docs/evosam-preset.schema.json",
        ),
        (
            "docs/spec.md",
            reference::markdown(&reg),
            "evosam schema --markdown > docs/spec.md",
        ),
    ] {
        let committed = read(&crate_dir().join(file));
        assert!(
            committed == generated,
            "{file} differs from what the code generates: regenerate it with `{how}`"
        );
    }
    // the binary prints the same text
    let o = bin().arg("schema").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        read(&crate_dir().join("docs/evosam.schema.json"))
    );
}

#[test]
fn every_shipped_spec_and_preset_is_valid_and_points_at_the_schema() {
    let specs = spec_validator();
    let mut files = toml_files("experiments");
    files.extend(toml_files("experiments/stress"));
    for f in &files {
        let t = read(f);
        let first = t.lines().next().unwrap_or("");
        let rel = first
            .strip_prefix("#:schema ")
            .unwrap_or_else(|| panic!("{}: first line is not `#:schema ...`", f.display()));
        let target = f.parent().unwrap().join(rel).canonicalize().unwrap();
        assert_eq!(
            target,
            crate_dir()
                .join("docs/evosam.schema.json")
                .canonicalize()
                .unwrap()
        );
        let p = problems(&specs, &t);
        assert!(p.is_empty(), "{}:\n{}", f.display(), p.join("\n"));
    }
    let presets = preset_validator();
    let reg = Registry::default();
    let files = toml_files("baselines");
    assert_eq!(
        files.len(),
        reg.preset_names().len(),
        "one file per built-in preset"
    );
    for f in &files {
        let t = read(f);
        assert!(
            t.starts_with("#:schema ../docs/evosam-preset.schema.json\n"),
            "{}: first line",
            f.display()
        );
        let p = problems(&presets, &t);
        assert!(p.is_empty(), "{}:\n{}", f.display(), p.join("\n"));
    }
}

#[test]
fn misspelt_and_misplaced_keys_are_refused_by_name() {
    let v = spec_validator();
    let quick = read(&crate_dir().join("experiments/quickstart.toml"));
    assert!(problems(&v, &quick).is_empty());
    for (from, to, key) in [
        ("epochs = 4", "epochz = 4", "epochz"),
        (
            "family = \"vessels\"\nsite = 0",
            "familly = \"vessels\"\nsite = 0",
            "familly",
        ),
        (
            "preset = \"ewc\"",
            "preset = \"ewc\"\nlamda = 10.0",
            "lamda",
        ),
        // a key of another kind: replay's memory for the fine-tuning preset
        (
            "preset = \"finetune\"",
            "preset = \"finetune\"\nmemory_size = 4",
            "memory_size",
        ),
        // a folder key on a synthetic task
        ("site = 1", "site = 1\nmasks = \"*.png\"", "masks"),
        (
            "[experiment]",
            "[experimnt]\nname = \"x\"\n[experiment]",
            "experimnt",
        ),
    ] {
        assert!(quick.contains(from), "{from}");
        let p = problems(&v, &quick.replacen(from, to, 1));
        assert!(p.iter().any(|m| m.contains(key)), "{key}: {p:?}");
    }
    // closed sets and ranges
    for (from, to, at) in [
        (
            "source = \"synthetic\"",
            "source = \"dicom\"",
            "/stream/task/0/source",
        ),
        ("batch_size = 4", "batch_size = 0", "/train/batch_size"),
        ("rank = 4", "rank = 0", "/model/lora/rank"),
        ("device = \"cpu\"", "device = \"gpu\"", "/experiment/device"),
        (
            "orders = [\"given\"]",
            "orders = [\"backwards\"]",
            "/stream/orders/0",
        ),
    ] {
        let p = problems(&v, &quick.replacen(from, to, 1));
        assert!(p.iter().any(|m| m.starts_with(at)), "{to}: {p:?}");
    }
    let pv = preset_validator();
    let p = problems(&pv, "kind = \"replay\"\nmemory_sise = 3\n");
    assert!(p.iter().any(|m| m.contains("memory_sise")), "{p:?}");
    let p = problems(&pv, "kind = \"magic\"\n");
    assert!(p.iter().any(|m| m.starts_with("/kind")), "{p:?}");
}

/// A numeric bound in the schema is the parser's bound: just outside it the parser refuses, naming the key; at an
/// inclusive bound it accepts.
#[test]
fn schema_ranges_are_the_parsers() {
    let root = schema::spec_schema(&Registry::default());
    let defs = root["definitions"].as_object().unwrap();
    let lora = &defs["Model"]["properties"]["lora"];
    let tables: [(&str, &Value); 6] = [
        ("train", &defs["TrainSpec"]),
        ("train.loss", &defs["LossSpec"]),
        ("train.prompt", &defs["PromptSpec"]),
        ("model.lora", lora),
        ("eval", &defs["RawEval"]),
        ("eval.interactive", &defs["InteractiveSpec"]),
    ];
    let base: toml::Table = toml::from_str(&common::tiny_spec("ranges", &["finetune"], 1)).unwrap();
    let parse = |table: &str, line: &str| {
        let mut doc = base.clone();
        let (key, value) = line.split_once(" = ").unwrap();
        let mut t = &mut doc;
        for part in table.split('.') {
            t = t
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap();
        }
        let v: toml::Table = toml::from_str(&format!("v = {value}")).unwrap();
        t.insert(key.into(), v["v"].clone());
        // the eval.interactive time model needs both of its keys
        if let Some(other) = match key {
            "seconds_per_case" => Some("seconds_per_click"),
            "seconds_per_click" => Some("seconds_per_case"),
            _ => None,
        } {
            t.insert(other.into(), toml::Value::Float(1.0));
        }
        // report_at (default 1, 3, 5) must lie within max_clicks
        if key == "max_clicks" {
            t.insert(
                "report_at".into(),
                toml::Value::Array(vec![toml::Value::Integer(1)]),
            );
        }
        Spec::from_str_at(
            &toml::to_string(&doc).unwrap(),
            Path::new("ranges.toml"),
            Path::new("."),
        )
    };
    let mut probed = 0;
    for (table, t) in tables {
        for (key, p) in t["properties"].as_object().unwrap() {
            let is_int = p["type"] == "integer";
            let fmt = |x: f64| {
                if is_int {
                    format!("{}", x as i64)
                } else {
                    format!("{x:?}")
                }
            };
            let step = if is_int { 1.0 } else { 1e-6 };
            let mut probe = |bound: &Value, outside: f64, inclusive: bool| {
                let b = bound.as_f64().unwrap();
                if is_int && outside < 0.0 {
                    return; // a negative unsigned integer is refused by its type
                }
                let e = parse(table, &format!("{key} = {}", fmt(outside)))
                    .err()
                    .unwrap_or_else(|| panic!("[{table}] {key} = {} passed", fmt(outside)));
                assert!(e.to_string().contains(key.as_str()), "[{table}] {key}: {e}");
                if inclusive {
                    parse(table, &format!("{key} = {}", fmt(b)))
                        .unwrap_or_else(|e| panic!("[{table}] {key} = {}: {e}", fmt(b)));
                } else {
                    assert!(
                        parse(table, &format!("{key} = {}", fmt(b))).is_err(),
                        "[{table}] {key} = {b}"
                    );
                }
                probed += 1;
            };
            let lo_in = p
                .get("minimum")
                .filter(|m| !(is_int && m.as_f64() == Some(0.0)));
            if let Some(m) = lo_in {
                probe(m, m.as_f64().unwrap() - step, true);
            }
            if let Some(m) = p.get("exclusiveMinimum") {
                probe(m, m.as_f64().unwrap() - step, false);
            }
            if let Some(m) = p.get("maximum") {
                probe(m, m.as_f64().unwrap() + step, true);
            }
            if let Some(m) = p.get("exclusiveMaximum") {
                probe(m, m.as_f64().unwrap() + step, false);
            }
        }
    }
    assert!(probed >= 15, "only {probed} bounds probed");
}

/// What no schema can know is still `validate`'s job: a schema-valid spec whose data folder is missing, or whose
/// test ids name no image, exits 2 and names the key.
#[test]
fn schema_valid_specs_with_semantic_errors_are_refused_by_validate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data/images")).unwrap();
    std::fs::create_dir_all(d.join("data/masks")).unwrap();
    for s in ["a", "b", "c"] {
        image::GrayImage::new(8, 8)
            .save(d.join(format!("data/images/{s}.png")))
            .unwrap();
        image::GrayImage::new(8, 8)
            .save(d.join(format!("data/masks/{s}.png")))
            .unwrap();
    }
    let spec = |root: &str, split: &str| {
        format!(
            "[experiment]\nname = \"semantic\"\n\n[stream]\n\n[[stream.task]]\nname = \"site\"\nsource = \"folder\"\n\
             root = \"{root}\"\nimages = \"images/*.png\"\nmasks = \"masks/*.png\"\n{split}\n\n[model]\n\
             weights = \"random-tiny\"\n\n[[strategy]]\npreset = \"zeroshot\"\n"
        )
    };
    let v = spec_validator();
    for (name, text, want) in [
        (
            "missing.toml",
            spec("nowhere", "test_fraction = 0.5"),
            "nowhere",
        ),
        ("ids.toml", spec("data", "test_ids = [\"zzz\"]"), "test_ids"),
    ] {
        assert!(problems(&v, &text).is_empty(), "{name} is schema-valid");
        let p = write(d, name, &text);
        let o = bin().arg("validate").arg(&p).output().unwrap();
        let out = text_of(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {out}");
        assert!(out.contains(name) && out.contains(want), "{name}: {out}");
    }
}

fn text_of(o: &std::process::Output) -> String {
    text(o)
}

/// `validate --resolved` prints a spec that is schema-valid, has the defaults the shipped spec leaves out, and
/// resolves to itself.
#[test]
fn resolved_spec_is_a_valid_spec_that_resolves_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let resolve = |p: &Path| {
        let o = bin()
            .args(["validate", "--resolved", "--no-data"])
            .arg(p)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let first = resolve(&crate_dir().join("experiments/quickstart.toml"));
    let p = problems(&spec_validator(), &first);
    assert!(p.is_empty(), "{}\n{first}", p.join("\n"));
    let doc: toml::Table = toml::from_str(&first).unwrap();
    let strategies = doc["strategy"].as_array().unwrap();
    assert_eq!(strategies.len(), 9);
    let evo = strategies
        .iter()
        .find(|s| s["label"].as_str() == Some("evosam"))
        .unwrap();
    // from the preset, from the schema's defaults (not in the preset) and from the spec's [train]
    assert_eq!(evo["routing"].as_str(), Some("matcher"));
    assert_eq!(evo["novelty"]["fallback"].as_str(), Some("auto"));
    assert_eq!(evo["train"]["warmup"].as_float(), Some(0.0));
    assert_eq!(evo["train"]["lr"].as_float(), Some(3e-3));
    let output = doc["experiment"]["output"].as_str().unwrap();
    assert!(Path::new(output).is_absolute(), "{output}");
    let again = write(dir.path(), "resolved.toml", &first);
    let second = resolve(&again);
    let body = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&first), body(&second));
}
