//! The strategy registry: the one place that knows which strategy kinds exist. Each kind registers, together,
//! its name, its params type (and with it the validation), its builder and its built-in presets.
//!
//! ```
//! use evosam::{Registry, StrategyKind};
//! let reg = Registry::default();
//! assert!(reg.kind("evosam").is_some());
//! assert!(reg.preset("evosam-oracle").is_some());
//! ```
//!
//! A crate that adds a strategy builds a [`StrategyKind`] for it and [`Registry::register`]s it on a default
//! registry; `runner::run` and `Spec::load` take the registry, so nothing in this crate needs an edit
//! (`examples/custom_strategy.rs` does it end to end).

use super::{evosam, ewc, finetune, joint, lwf, replay, single, zeroshot, Strategy};
use crate::data::SourceSpec;
use crate::model::LiteMedSam;
use crate::spec::{from_table, Catalog, Diag, Spec, StrategySpec};
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;
use toml::Table;

/// A strategy's kind-specific parameters: the keys of its preset besides `kind`, `label`, `train` and `lora`.
/// Deserialised with `#[serde(deny_unknown_fields)]`; [`StrategyParams::check`] adds range checks.
pub trait StrategyParams: DeserializeOwned + Send + 'static {
    /// Range and consistency checks after parsing. The error names the key at fault.
    fn check(self) -> std::result::Result<Self, Diag> {
        Ok(self)
    }
}

impl StrategyParams for zeroshot::Params {}
impl StrategyParams for finetune::Params {}
impl StrategyParams for joint::Params {}
impl StrategyParams for evosam::Params {
    fn check(self) -> std::result::Result<Self, Diag> {
        evosam::Params::check(self)
    }
}
impl StrategyParams for ewc::Params {
    fn check(self) -> std::result::Result<Self, Diag> {
        ewc::Params::check(self)
    }
}
impl StrategyParams for replay::Params {
    fn check(self) -> std::result::Result<Self, Diag> {
        replay::Params::check(self)
    }
}
impl StrategyParams for lwf::Params {
    fn check(self) -> std::result::Result<Self, Diag> {
        lwf::Params::check(self)
    }
}

/// What a builder gets besides the strategy's spec and params.
#[non_exhaustive]
pub struct BuildEnv<'a> {
    /// The frozen base model (adapters are created against it).
    pub model: &'a LiteMedSam,
    /// sha256 of the base weights (saved adapters record it).
    pub base_sha256: &'a str,
    /// Initialisation seed of this cell, derived from (experiment seed, label, order).
    pub init_seed: u64,
}

impl<'a> BuildEnv<'a> {
    /// What a builder gets: the base model, its weights' sha256 and the cell's initialisation seed.
    pub fn new(model: &'a LiteMedSam, base_sha256: &'a str, init_seed: u64) -> Self {
        Self {
            model,
            base_sha256,
            init_seed,
        }
    }
}

type CheckFn = dyn Fn(&Table) -> std::result::Result<(), Diag> + Send + Sync;
type BuildFn = dyn Fn(&StrategySpec, &BuildEnv) -> Result<Box<dyn Strategy>> + Send + Sync;
type SchemaFn = dyn Fn(&mut schemars::SchemaGenerator) -> schemars::Schema + Send + Sync;

/// One strategy kind: name, params validation, builder and built-in presets.
#[derive(Clone)]
pub struct StrategyKind {
    name: String,
    check: Arc<CheckFn>,
    build: Arc<BuildFn>,
    /// JSON Schema of the params (`evosam schema`): the derived schema of the same type `check` parses.
    schema: Arc<SchemaFn>,
    presets: Vec<(String, String)>,
}

impl StrategyKind {
    /// A kind whose params type is `P`: validation is "parse `P` from the table, then `P::check`", and the
    /// builder receives the parsed `P`; `P`'s JSON Schema documents the kind's keys (`evosam schema`).
    pub fn new<P: StrategyParams + schemars::JsonSchema>(
        name: &str,
        build: fn(&StrategySpec, P, &BuildEnv) -> Result<Box<dyn Strategy>>,
    ) -> Self {
        let kind = name.to_string();
        Self {
            name: name.to_string(),
            check: Arc::new(|t: &Table| from_table::<P>(t)?.check().map(|_| ())),
            build: Arc::new(move |spec: &StrategySpec, env: &BuildEnv| {
                let p = from_table::<P>(&spec.params)
                    .and_then(P::check)
                    .map_err(|d| Error::Spec {
                        file: format!("strategy {:?} (kind {kind})", spec.label),
                        msg: d.msg,
                    })?;
                build(spec, p, env)
            }),
            schema: Arc::new(|g: &mut schemars::SchemaGenerator| P::json_schema(g)),
            presets: Vec::new(),
        }
    }

    /// Add a built-in preset: `toml` is the text of a `baselines/<name>.toml` (it must say `kind = "<this
    /// kind>"`). Used when no `baselines/<name>.toml` sits next to the spec.
    pub fn preset(mut self, name: &str, toml: &str) -> Self {
        self.presets.push((name.to_string(), toml.to_string()));
        self
    }

    /// The kind's name (`kind = "..."` in presets).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Check kind-specific params (see [`StrategyParams`]).
    pub fn check(&self, params: &Table) -> std::result::Result<(), Diag> {
        (self.check)(params)
    }

    /// Built-in presets as (name, TOML text).
    pub fn presets(&self) -> &[(String, String)] {
        &self.presets
    }
}

/// The strategy kinds a run may use. `Registry::default()` holds the built-ins; [`Registry::register`] adds
/// more. It is also the [`Catalog`] the spec parser consults (sources are the data layer's fixed set).
#[derive(Clone)]
pub struct Registry {
    kinds: Vec<StrategyKind>,
}

fn boxed<S: Strategy + 'static>(s: S) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(s))
}

fn single_model<K: single::SingleKind + 'static>(
    spec: &StrategySpec,
    env: &BuildEnv,
    kind: K,
) -> Result<Box<dyn Strategy>> {
    boxed(single::SingleModel::new(
        spec,
        env.model,
        env.base_sha256,
        env.init_seed,
        kind,
    )?)
}

impl Default for Registry {
    /// The built-in kinds and presets (the copies of `baselines/*.toml`). Their order is the report's strategy
    /// order (and so its colours and markers): EvoSAM first, then the baselines.
    fn default() -> Self {
        let kinds = vec![
            StrategyKind::new::<evosam::Params>("evosam", |s, p, env| {
                boxed(evosam::EvoSam::new(
                    s,
                    p,
                    env.model,
                    env.base_sha256,
                    env.init_seed,
                )?)
            })
            .preset("evosam", include_str!("../../baselines/evosam.toml"))
            .preset(
                "evosam-oracle",
                include_str!("../../baselines/evosam-oracle.toml"),
            ),
            StrategyKind::new::<zeroshot::Params>("zeroshot", |s, p, _| {
                boxed(zeroshot::ZeroShot::new(s, p))
            })
            .preset("zeroshot", include_str!("../../baselines/zeroshot.toml")),
            StrategyKind::new::<finetune::Params>("finetune", |s, p, env| {
                single_model(s, env, finetune::FineTune { params: p })
            })
            .preset("finetune", include_str!("../../baselines/finetune.toml")),
            StrategyKind::new::<ewc::Params>("ewc", |s, p, env| {
                single_model(s, env, ewc::Ewc::new(p))
            })
            .preset("ewc", include_str!("../../baselines/ewc.toml"))
            .preset(
                "online-ewc",
                include_str!("../../baselines/online-ewc.toml"),
            ),
            StrategyKind::new::<replay::Params>("replay", |s, p, env| {
                single_model(s, env, replay::Replay::new(p))
            })
            .preset("replay", include_str!("../../baselines/replay.toml")),
            StrategyKind::new::<lwf::Params>("lwf", |s, p, env| {
                single_model(s, env, lwf::Lwf { params: p })
            })
            .preset("lwf", include_str!("../../baselines/lwf.toml")),
            StrategyKind::new::<joint::Params>("joint", |s, p, env| {
                single_model(s, env, joint::Joint { params: p })
            })
            .preset("joint", include_str!("../../baselines/joint.toml")),
        ];
        Self { kinds }
    }
}

impl Registry {
    /// A registry with no kinds at all (for a program that wants only its own strategies).
    pub fn empty() -> Self {
        Self { kinds: Vec::new() }
    }

    /// Add a kind. Refused when its name, or one of its presets' names, is already taken.
    pub fn register(&mut self, kind: StrategyKind) -> Result<&mut Self> {
        if self.kind(&kind.name).is_some() {
            return Err(Error::input(format!(
                "strategy kind {:?} is already registered",
                kind.name
            )));
        }
        if let Some((p, _)) = kind.presets.iter().find(|(p, _)| self.preset(p).is_some()) {
            return Err(Error::input(format!(
                "preset {p:?} of strategy kind {:?} is already registered",
                kind.name
            )));
        }
        self.kinds.push(kind);
        Ok(self)
    }

    /// The kind called `name`.
    pub fn kind(&self, name: &str) -> Option<&StrategyKind> {
        self.kinds.iter().find(|k| k.name == name)
    }

    /// Kind names, in registration order.
    pub fn kind_names(&self) -> Vec<&str> {
        self.kinds.iter().map(|k| k.name.as_str()).collect()
    }

    /// A built-in preset's TOML text.
    pub fn preset(&self, name: &str) -> Option<&str> {
        self.kinds
            .iter()
            .flat_map(|k| k.presets.iter())
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
    }

    /// Built-in preset names, in registration order (the report's default strategy order and colours).
    pub fn preset_names(&self) -> Vec<&str> {
        self.kinds
            .iter()
            .flat_map(|k| k.presets.iter().map(|(n, _)| n.as_str()))
            .collect()
    }

    /// Check a kind's params; an unknown kind is an error at `kind`.
    pub fn validate(&self, kind: &str, params: &Table) -> std::result::Result<(), Diag> {
        match self.kind(kind) {
            Some(k) => k.check(params),
            None => Err(Diag::at(
                "kind",
                format!(
                    "`kind` = {kind:?} is unknown (known kinds: {})",
                    self.kind_names().join(", ")
                ),
            )),
        }
    }

    /// Build the strategy of one cell.
    pub fn build(&self, spec: &StrategySpec, env: &BuildEnv) -> Result<Box<dyn Strategy>> {
        let k = self.kind(&spec.kind).ok_or_else(|| Error::Spec {
            file: format!("strategy {:?}", spec.label),
            msg: format!(
                "`kind` = {:?} is unknown (known kinds: {})",
                spec.kind,
                self.kind_names().join(", ")
            ),
        })?;
        (k.build)(spec, env)
    }
}

impl Catalog for Registry {
    fn source_kinds(&self) -> Vec<String> {
        crate::data::SOURCE_KINDS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn check_source(&self, kind: &str, params: &Table) -> std::result::Result<(), Diag> {
        SourceSpec::parse(kind, params).map(|_| ())
    }

    fn builtin_preset(&self, name: &str) -> Option<String> {
        self.preset(name).map(str::to_string)
    }

    fn preset_names(&self) -> Vec<String> {
        Registry::preset_names(self)
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    fn check_strategy(&self, kind: &str, params: &Table) -> std::result::Result<(), Diag> {
        self.validate(kind, params)
    }

    fn source_schemas(
        &self,
        gen: &mut schemars::SchemaGenerator,
    ) -> Vec<(String, schemars::Schema)> {
        crate::data::source_schemas(gen)
    }

    fn strategy_schemas(
        &self,
        gen: &mut schemars::SchemaGenerator,
    ) -> Vec<(String, schemars::Schema)> {
        self.kinds
            .iter()
            .map(|k| (k.name.clone(), (k.schema)(gen)))
            .collect()
    }
}

/// Loading with the built-in registry: the short path for programs that use only the built-in strategies.
impl Spec {
    /// Read and validate a spec file with `Registry::default()` (see [`Spec::load`] for another registry).
    pub fn from_file(path: &Path) -> Result<Spec> {
        Spec::load(path, &Registry::default())
    }

    /// Parse spec text with `Registry::default()` (see [`Spec::parse`]).
    pub fn from_str_at(text: &str, file: &Path, base_dir: &Path) -> Result<Spec> {
        Spec::parse(text, file, base_dir, &Registry::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_params() {
        let reg = Registry::default();
        for name in reg.preset_names() {
            let mut t: Table = toml::from_str(reg.preset(name).unwrap()).unwrap();
            let kind = t.remove("kind").unwrap().as_str().unwrap().to_string();
            t.remove("label");
            t.remove("train");
            t.remove("lora");
            reg.validate(&kind, &t)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let e = reg.validate("magic", &Table::new()).unwrap_err();
        assert!(e.msg.contains("magic") && e.msg.contains("finetune"), "{e}");
        assert_eq!(e.path.to_string(), "kind");
        let mut t = Table::new();
        t.insert("nope".into(), toml::Value::Integer(1));
        for kind in ["finetune", "zeroshot"] {
            let e = reg.validate(kind, &t).unwrap_err();
            assert!(e.msg.contains("nope"), "{e}");
            assert_eq!(e.path.to_string(), "nope");
        }
        let mut t = Table::new();
        t.insert("gamma".into(), toml::Value::Float(0.5));
        assert_eq!(
            reg.validate("ewc", &t).unwrap_err().path.to_string(),
            "gamma"
        );
    }

    #[test]
    fn register_refuses_taken_names() {
        let mut reg = Registry::default();
        let dup = StrategyKind::new::<zeroshot::Params>("zeroshot", |s, p, _| {
            boxed(zeroshot::ZeroShot::new(s, p))
        });
        assert!(reg.register(dup).is_err());
        let preset_clash = StrategyKind::new::<zeroshot::Params>("other", |s, p, _| {
            boxed(zeroshot::ZeroShot::new(s, p))
        })
        .preset("finetune", "kind = \"other\"\n");
        assert!(reg.register(preset_clash).is_err());
        let ok = StrategyKind::new::<zeroshot::Params>("other", |s, p, _| {
            boxed(zeroshot::ZeroShot::new(s, p))
        })
        .preset("other", "kind = \"other\"\n");
        reg.register(ok).unwrap();
        assert_eq!(reg.kind_names().last(), Some(&"other"));
        assert!(reg.preset("other").is_some());
    }
}
