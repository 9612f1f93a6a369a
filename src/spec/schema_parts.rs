//! The pieces of the spec's JSON Schema that the parser's raw types name (`#[schemars(with = ...)]` in
//! `parse.rs`): stand-ins for the tables kept as raw TOML, filled in by [`super::schema::spec_schema`], and the
//! `[model]` table (its typed keys plus `lora`).

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Value};
use std::borrow::Cow;

/// Stand-in for the tables the parser keeps raw: its definition is filled from the catalog by [`spec_schema`].
macro_rules! placeholder {
    ($t:ident, $name:literal) => {
        pub(crate) struct $t;
        impl JsonSchema for $t {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                Schema::default()
            }
        }
    };
}
placeholder!(TaskTable, "Task");
placeholder!(StrategyTable, "Strategy");

/// `[model]`: [`super::ModelSpec`]'s keys plus the `[model.lora]` table.
pub(crate) struct ModelTable;
impl JsonSchema for ModelTable {
    fn schema_name() -> Cow<'static, str> {
        "Model".into()
    }
    fn json_schema(gen: &mut SchemaGenerator) -> Schema {
        let mut s = super::ModelSpec::json_schema(gen);
        let lora = lora_table(
            gen,
            "LoRA settings of every strategy's adapters: rank, alpha, targets (a preset or a [[strategy]] \
             entry may override them).",
        );
        s.ensure_object()
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("properties is an object")
            .insert("lora".into(), lora);
        s
    }
}

/// The `lora` table: [`crate::model::LoraConfig`] with every key optional (unset keys keep
/// [`super::default_lora`]'s values, which are the defaults shown).
pub(super) fn lora_table(gen: &mut SchemaGenerator, description: &str) -> Value {
    let mut s = crate::model::LoraConfig::json_schema(gen);
    let o = s.ensure_object();
    o.remove("required");
    o.insert("description".into(), description.into());
    if let Some(Value::Object(p)) = o.get_mut("properties") {
        for (k, v) in super::default_lora() {
            if let (Some(Value::Object(ps)), Ok(d)) = (p.get_mut(&k), serde_json::to_value(&v)) {
                ps.insert("default".into(), d);
            }
        }
    }
    s.to_value()
}
