//! EvoSAM: one LoRA expert per task on the frozen base model, and a closed-form ridge-regression matcher on
//! pooled frozen-encoder embeddings that picks the expert for each image.
//!
//! Parameter isolation: each task gets a new adapter, initialised from the frozen base (B = 0) and trained on that
//! task only; earlier experts are never touched again. The matcher keeps running sums (see [`super::matcher`]), so
//! no old image is stored. Variants: `routing = "oracle"` (the true task's expert; the matcher's upper bound) and
//! `matcher.open_set_threshold` (an image whose best score is below it goes to the base model).
//!
//! Saved state (also what `evosam segment --experts DIR` reads): `evosam.json` (format, routing, experts in task
//! order with their files), `matcher.json`, `experts/<k>.safetensors`.

use super::matcher::{MatcherConfig, RidgeMatcher};
use super::{Batch, Prediction, Strategy, StrategyCtx};
use crate::data::{Case, TaskData};
use crate::model::{Adapter, LiteMedSam};
use crate::spec::{Diag, StrategySpec};
use crate::train::optim::AdamW;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// The ridge matcher picks the expert (the method).
    #[default]
    Matcher,
    /// The true task's expert (upper bound of the matcher; needs the task id at test time).
    Oracle,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default)]
    pub routing: Routing,
    #[serde(default)]
    pub matcher: MatcherConfig,
}

impl Params {
    /// Ranges of the matcher settings.
    pub fn check(self) -> std::result::Result<Self, Diag> {
        self.matcher
            .check()
            .map_err(|e| Diag::at("matcher", format!("[matcher] {e}")))?;
        Ok(self)
    }
}

/// Global-average-pooled embeddings (B,C,h,w) -> B feature vectors of C values (f64).
pub fn pooled_features(emb: &Tensor) -> Result<Vec<Vec<f64>>> {
    let p = emb
        .to_dtype(DType::F32)?
        .mean((2, 3))?
        .to_dtype(DType::F64)?;
    Ok(p.to_vec2::<f64>()?)
}

/// On-disk description of an expert set.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    routing: Routing,
    experts: Vec<ManifestExpert>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ManifestExpert {
    task: String,
    file: String,
    params: usize,
}

const MANIFEST: &str = "evosam.json";
const MATCHER: &str = "matcher.json";
const FORMAT: &str = "evosam-experts-v1";

/// Trained experts (in task order) and the matcher: what EvoSAM keeps after each task.
pub struct ExpertSet {
    pub routing: Routing,
    pub names: Vec<String>,
    pub adapters: Vec<Adapter>,
    pub matcher: RidgeMatcher,
}

/// The routing decision for one image: an expert index (None = base model) and the matcher score.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub expert: Option<usize>,
    pub score: Option<f64>,
}

impl ExpertSet {
    pub fn new(routing: Routing, embed_dim: usize, matcher: MatcherConfig) -> Result<Self> {
        Ok(Self {
            routing,
            names: Vec::new(),
            adapters: Vec::new(),
            matcher: RidgeMatcher::new(embed_dim, matcher)?,
        })
    }

    pub fn len(&self) -> usize {
        self.adapters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }

    /// Matcher routing for a batch of embeddings (B,C,h,w). Before the first task everything goes to the base.
    pub fn route(&self, emb: &Tensor) -> Result<Vec<Choice>> {
        let b = emb.dim(0)?;
        if self.is_empty() {
            return Ok(vec![
                Choice {
                    expert: None,
                    score: None
                };
                b
            ]);
        }
        pooled_features(emb)?
            .iter()
            .map(|p| {
                let r = self.matcher.route(p)?;
                Ok(Choice {
                    expert: r.expert,
                    score: Some(r.score),
                })
            })
            .collect()
    }

    /// Name of a routing target ("base" for the base model).
    pub fn target_name(&self, expert: Option<usize>) -> String {
        match expert {
            Some(k) => self.names[k].clone(),
            None => "base".to_string(),
        }
    }

    pub fn params_per_expert(&self) -> usize {
        self.adapters.first().map(|a| a.num_params()).unwrap_or(0)
    }

    pub fn save(&self, dir: &Path, base_sha256: &str) -> Result<()> {
        let mut experts = Vec::new();
        for (k, (name, ad)) in self.names.iter().zip(&self.adapters).enumerate() {
            let file = format!("experts/{k}.safetensors");
            ad.save(&dir.join(&file), base_sha256)?;
            experts.push(ManifestExpert {
                task: name.clone(),
                file,
                params: ad.num_params(),
            });
        }
        let m = Manifest {
            format: FORMAT.into(),
            routing: self.routing,
            experts,
        };
        let js = serde_json::to_vec_pretty(&m).map_err(|e| Error::internal(e.to_string()))?;
        crate::util::write_atomic(&dir.join(MATCHER), self.matcher.to_json()?.as_bytes())?;
        crate::util::write_atomic(&dir.join(MANIFEST), &js)
    }

    /// Load an expert set written by [`ExpertSet::save`] (a stage's `state/` folder of an EvoSAM cell).
    pub fn load(dir: &Path, model: &LiteMedSam, base_sha256: &str) -> Result<Self> {
        let mp = dir.join(MANIFEST);
        let text = std::fs::read(&mp).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Input(format!(
                    "{}: not an EvoSAM expert folder (no {MANIFEST}); use a `state` folder of an evosam cell, \
                     e.g. results/<experiment>/cells/<cell>/stage_<k>/state",
                    dir.display()
                ))
            } else {
                Error::io(&mp, e)
            }
        })?;
        let m: Manifest = serde_json::from_slice(&text)
            .map_err(|e| Error::input(format!("{}: {e}", mp.display())))?;
        if m.format != FORMAT {
            return Err(Error::input(format!(
                "{}: format {:?}, expected {FORMAT:?}",
                mp.display(),
                m.format
            )));
        }
        let xp = dir.join(MATCHER);
        let mtext = std::fs::read_to_string(&xp).map_err(|e| Error::io(&xp, e))?;
        let matcher = RidgeMatcher::from_json(&mtext)
            .map_err(|e| Error::input(format!("{}: {e}", xp.display())))?;
        let mut names = Vec::new();
        let mut adapters = Vec::new();
        for e in &m.experts {
            adapters.push(Adapter::load(&dir.join(&e.file), model, base_sha256)?);
            names.push(e.task.clone());
        }
        if matcher.num_tasks() != names.len() {
            return Err(Error::input(format!(
                "{}: the matcher knows {} tasks but {} experts are listed",
                dir.display(),
                matcher.num_tasks(),
                names.len()
            )));
        }
        Ok(Self {
            routing: m.routing,
            names,
            adapters,
            matcher,
        })
    }
}

pub struct EvoSam {
    label: String,
    params: Params,
    base_sha256: String,
    pub set: ExpertSet,
}

impl EvoSam {
    pub fn new(
        spec: &StrategySpec,
        params: Params,
        model: &LiteMedSam,
        base_sha256: &str,
        _init_seed: u64,
    ) -> Result<Self> {
        let embed_dim = model.cfg.prompt.embed_dim;
        Ok(Self {
            label: spec.label.clone(),
            set: ExpertSet::new(params.routing, embed_dim, params.matcher.clone())?,
            params,
            base_sha256: base_sha256.to_string(),
        })
    }
}

impl Strategy for EvoSam {
    fn name(&self) -> &str {
        &self.label
    }

    fn train_task(
        &mut self,
        ctx: &mut StrategyCtx,
        task_index: usize,
        task: &TaskData,
    ) -> Result<()> {
        if task_index != self.set.len() {
            return Err(Error::internal(format!(
                "evosam: training task {} with {} experts",
                task_index + 1,
                self.set.len()
            )));
        }
        // A new expert from the frozen base: fresh adapter (B = 0), fresh optimiser, this task's data only. Its
        // initialisation and batch stream depend on (seed, order, task) but not on the strategy's label or routing,
        // so `evosam` and `evosam-oracle` with the same settings train bit-identical experts and differ only in
        // routing.
        let (seed_s, k_s) = (ctx.seed.to_string(), task_index.to_string());
        let parts = ["evosam-expert", &seed_s, ctx.order_label, &k_s, &task.name];
        let init = crate::util::derive_seed(&parts);
        let adapter = Adapter::new(ctx.model, &ctx.spec.lora, init)?;
        let mut opt = AdamW::new(adapter.vars(), super::single::adamw_params(ctx.spec))?;
        let cases: Vec<&Case> = task.train.iter().collect();
        let saved_rng = std::mem::replace(
            &mut ctx.rng,
            rand::SeedableRng::seed_from_u64(init.rotate_left(17) ^ 0x5eed),
        );
        let fitted = crate::train::r#loop::fit(ctx, &task.name, &adapter, &mut opt, &cases, None);
        ctx.rng = saved_rng;
        fitted?;
        // The matcher learns the task from the frozen embeddings of its training images (running sums only).
        let mut feats = Vec::with_capacity(cases.len());
        for chunk in cases.chunks(16) {
            feats.extend(pooled_features(&ctx.embeddings.batch(chunk)?)?);
        }
        self.set.matcher.add_task(&task.name, &feats)?;
        self.set.names.push(task.name.clone());
        self.set.adapters.push(adapter);
        Ok(())
    }

    fn predict(&self, ctx: &StrategyCtx, task_index: usize, batch: &Batch) -> Result<Prediction> {
        let b = batch.cases.len();
        let choices: Vec<Option<usize>> = match self.params.routing {
            Routing::Oracle => {
                let e = (task_index < self.set.len()).then_some(task_index);
                vec![e; b]
            }
            Routing::Matcher => self
                .set
                .route(&batch.embeddings)?
                .into_iter()
                .map(|c| c.expert)
                .collect(),
        };
        let routes: Vec<Option<&Adapter>> = choices
            .iter()
            .map(|c| c.map(|k| &self.set.adapters[k]))
            .collect();
        let out = super::decode_cases(ctx, batch, &routes)?;
        let routed_to = match self.params.routing {
            Routing::Matcher => Some(choices.iter().map(|&c| self.set.target_name(c)).collect()),
            Routing::Oracle => None,
        };
        Ok(Prediction {
            logits: out.logits,
            routed_to,
        })
    }

    fn save_state(&self, dir: &Path) -> Result<()> {
        self.set.save(dir, &self.base_sha256)
    }

    fn load_state(&mut self, ctx: &StrategyCtx, dir: &Path) -> Result<()> {
        let set = ExpertSet::load(dir, ctx.model, ctx.base_sha256)?;
        if set.matcher.config != self.params.matcher {
            return Err(Error::internal(format!(
                "{}: matcher settings differ from the spec's",
                dir.display()
            )));
        }
        self.set = ExpertSet {
            routing: self.params.routing,
            ..set
        };
        Ok(())
    }

    fn extra_metrics(&self) -> BTreeMap<String, f64> {
        let per = self.set.params_per_expert() as f64;
        let n = self.set.len() as f64;
        let mut m = BTreeMap::from([
            ("n_experts".to_string(), n),
            ("params_per_expert".to_string(), per),
            ("trainable_params".to_string(), per * n),
            (
                "matcher_stored_values".to_string(),
                self.set.matcher.num_stored_values() as f64,
            ),
        ]);
        if !self.set.is_empty() {
            m.insert("matcher_lambda".into(), self.set.matcher.lambda);
        }
        m
    }
}
