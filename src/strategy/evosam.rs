//! EvoSAM: one LoRA expert per task on the frozen base model, and a closed-form ridge-regression matcher on
//! pooled frozen-encoder embeddings that picks the expert for each image.
//!
//! Parameter isolation: each task gets a new adapter, trained on that task only; earlier experts are never touched
//! again. A new adapter starts from the frozen base (B = 0) or as a copy of an earlier expert (`init`, see
//! [`birth`]); with a validation part it keeps its best epoch, and the starting point when training does not beat
//! it (`keep_start`, see [`crate::train::select`]). The matcher keeps running sums (see [`super::matcher`]), so
//! no old image is stored. Routing variants: `routing = "oracle"` (the true task's expert; the matcher's upper
//! bound), `routing = "quality"` (every candidate decodes and the one whose IoU head predicts the best mask wins),
//! `matcher.open_set_threshold` (an image whose best score is below it goes to the base model) and `[novelty]`
//! (an image far from every seen task goes to the base model, see [`super::novelty`]).
//!
//! Saved state (also what `evosam segment --experts DIR` reads): `evosam.json` (format, routing, experts in task
//! order with their files and births), `matcher.json`, `novelty.json`, `experts/<k>.safetensors`.

pub mod birth;
mod bound;
mod chain;
pub mod crossfit;
mod experts;
pub use crossfit::Guard;
pub use experts::{pooled_features, Choice, ExpertSet, CHAIN_TARGET};

use super::matcher::MatcherConfig;
use super::novelty::NoveltyConfig;
use super::{Batch, Prediction, Strategy, StrategyCtx};
use crate::data::{Case, TaskData};
use crate::model::{Adapter, LiteMedSam};
use crate::spec::{Diag, StrategySpec};
use crate::train::select::Validation;
use crate::{Error, Result};
use birth::Init;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// How EvoSAM picks the expert for a test image (`routing = "matcher" | "oracle" | "quality"`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// The ridge matcher picks the expert (the method).
    #[default]
    Matcher,
    /// The true task's expert (upper bound of the matcher; needs the task id at test time).
    Oracle,
    /// The candidate (base model or an expert) whose IoU head predicts the best mask for the image: "the expert
    /// expected to segment it best", learned without stored images. Decodes every image with every candidate.
    Quality,
}

/// Whether the chain (`init = "previous"`) serves the images of earlier tasks (`serve_chain`).
///
/// Why: isolated experts cannot improve on an old task once it is over, while on a stream whose sites share
/// knowledge a model that keeps learning gets better on the old sites too (positive backward transfer). The chain's
/// newest state has learned every task so far; old experts stay untouched either way.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ServeChain {
    /// Each task's images go to its own expert (the paper's isolation).
    #[default]
    Never,
    /// The chain's newest state serves the earlier tasks when the stream has shown forward transfer: on the
    /// held-out images of the tasks learned so far (from the second on), the chain before training on the task
    /// beat the base model, image by image, with a one-sided 90% lower confidence bound above zero
    /// ([`ExpertSet::transfer_bound`]). Measured, not assumed; off until then.
    Auto,
    /// The chain's newest state always serves the earlier tasks.
    Always,
}

/// What makes `keep_start` keep the start (or the base) instead of the trained expert.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum KeepEvidence {
    /// The trained expert does not beat the start (or the base) by `keep_start_margin` on the mean validation Dice.
    #[default]
    Mean,
    /// Validation shows that the trained expert is worse: the one-sided 90% upper confidence bound of the mean
    /// per-image difference (trained minus start, or minus base) is below `keep_start_margin`. With fewer than three
    /// validation images, the mean rule. A small but real gain measured on a dozen noisy validation images (a strong
    /// base model, a task of tens of images) is no longer thrown away; an expert that clearly hurts still is.
    Harm,
    /// Validation shows that the trained expert is better: it is kept only when the one-sided 90% lower confidence
    /// bound of the mean per-image difference (trained minus start, or minus base) is above `keep_start_margin`;
    /// with fewer than two validation images, the mean rule. The stricter rule for few images: the best of several
    /// epochs scored on a handful of images looks better than it is (the maximum of a noisy curve), and a small
    /// mean gain that the images do not agree on is kept out.
    Benefit,
}

impl KeepEvidence {
    /// Whether to keep the reference: `diffs` are per-validation-image (candidate - reference) Dice differences.
    pub fn keep_reference(self, diffs: &[f64], margin: f64) -> bool {
        if diffs.is_empty() {
            return false;
        }
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        match self {
            KeepEvidence::Harm if diffs.len() >= 3 => {
                bound::mean_bound(diffs, true).is_some_and(|ub| ub < margin)
            }
            KeepEvidence::Benefit if diffs.len() >= 2 => {
                bound::mean_bound(diffs, false).is_none_or(|lb| lb <= margin)
            }
            _ => mean <= margin,
        }
    }
}

/// The kind-specific keys of an `evosam` preset.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// How test images are routed to experts (default: the ridge matcher).
    #[serde(default)]
    pub routing: Routing,
    /// `[matcher]`: the ridge matcher's penalty, projection and open-set settings.
    #[serde(default)]
    pub matcher: MatcherConfig,
    /// Where a new expert starts (see [`birth`]).
    #[serde(default)]
    pub init: Init,
    /// With a validation part: keep the starting point when the trained expert does not beat it, and use the base
    /// model (B = 0) when neither the trained copy nor its parent beats the base.
    #[serde(default = "d_true")]
    pub keep_start: bool,
    /// How much (mean validation Dice) a trained expert must beat its start, and a copied expert the base, by.
    #[serde(default)]
    pub keep_start_margin: f64,
    /// What decides `keep_start`: the validation mean, or shown harm (see [`KeepEvidence`]).
    #[serde(default)]
    pub keep_start_evidence: KeepEvidence,
    /// What the epoch choice, `keep_start` and the base check are measured on: the held-out validation part
    /// (`holdout`), or, for tasks of at most `crossfit_max_images` images, every image by cross-fitting
    /// (`crossfit`, see [`crossfit`]).
    #[serde(default)]
    pub guard: Guard,
    /// With `guard = "crossfit"`: the largest task (in images; the tiles of one image count once) that is
    /// cross-fitted.
    #[serde(default = "d_crossfit_max")]
    pub crossfit_max_images: usize,
    /// With `guard = "crossfit"`: folds (at most one per image; leave-one-out below this many images).
    #[serde(default = "d_crossfit_folds")]
    pub crossfit_folds: usize,
    /// With `guard = "crossfit"`: what decides `keep_start` and the base check on the cross-fitted per-image scores
    /// (default `benefit`: every image is a paired value, so a confidence bound is available; the held-out part
    /// keeps `keep_start_evidence`).
    #[serde(default = "d_crossfit_evidence")]
    pub crossfit_evidence: KeepEvidence,
    /// `[novelty]`: the novelty detector that can send unfamiliar images to the base model (off by default).
    #[serde(default)]
    pub novelty: NoveltyConfig,
    /// Whether the chain's newest state serves earlier tasks (no effect unless `init = "previous"`, the only
    /// init that keeps a chain).
    #[serde(default)]
    pub serve_chain: ServeChain,
    /// EWC penalty strength on the chain's training (0 = none; no effect unless `init = "previous"`): the chain keeps what earlier tasks taught it
    /// (Fisher of each finished task on its own training images, computed when the task ends; no image kept).
    #[serde(default)]
    pub chain_ewc_lambda: f64,
}

fn d_true() -> bool {
    true
}

fn d_crossfit_max() -> usize {
    12
}

fn d_crossfit_folds() -> usize {
    5
}

fn d_crossfit_evidence() -> KeepEvidence {
    KeepEvidence::Benefit
}

impl Params {
    /// Ranges of the matcher, novelty and keep-the-start settings.
    pub fn check(self) -> std::result::Result<Self, Diag> {
        self.matcher
            .check()
            .map_err(|e| Diag::at("matcher", format!("[matcher] {e}")))?;
        self.novelty
            .check()
            .map_err(|e| Diag::at("novelty", format!("[novelty] {e}")))?;
        if !(self.keep_start_margin.is_finite() && self.keep_start_margin >= 0.0) {
            return Err(Diag::at(
                "keep_start_margin",
                format!(
                    "`keep_start_margin` = {} must be >= 0",
                    self.keep_start_margin
                ),
            ));
        }
        if self.crossfit_folds < 2 {
            return Err(Diag::at(
                "crossfit_folds",
                format!(
                    "`crossfit_folds` = {} must be at least 2",
                    self.crossfit_folds
                ),
            ));
        }
        if !(self.chain_ewc_lambda.is_finite() && self.chain_ewc_lambda >= 0.0) {
            return Err(Diag::at(
                "chain_ewc_lambda",
                format!(
                    "`chain_ewc_lambda` = {} must be a finite number >= 0",
                    self.chain_ewc_lambda
                ),
            ));
        }
        Ok(self)
    }
}

/// The `evosam` strategy: one LoRA expert per task and a matcher that routes each test image (module docs).
pub struct EvoSam {
    label: String,
    params: Params,
    base_sha256: String,
    /// The experts and matcher trained so far (what `save_state` writes).
    pub set: ExpertSet,
}

impl EvoSam {
    /// An EvoSAM with no expert yet, for the model's embedding size. Expert initialisation is seeded from (seed,
    /// order, task), not from `_init_seed`, so that variants differing only in routing train identical experts.
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
            set: ExpertSet {
                serve_chain: params.serve_chain,
                ..ExpertSet::new(
                    params.routing,
                    embed_dim,
                    params.matcher.clone(),
                    params.novelty.clone(),
                )?
            },
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
        // The matcher's features of all the task's training images (fit and validation parts; running sums only).
        let all: Vec<&Case> = task.train.iter().chain(task.val.iter()).collect();
        let mut feats = Vec::with_capacity(all.len());
        for chunk in all.chunks(16) {
            feats.extend(pooled_features(&ctx.embeddings.batch(chunk)?)?);
        }
        // Where the expert starts: the base (fresh adapter, B = 0) or a copy of an earlier expert.
        let mut votes = vec![0usize; self.set.len()];
        if !self.set.is_empty() {
            for p in &feats {
                if let Some(k) = self.set.matcher.route(p)?.expert {
                    votes[k] += 1;
                }
            }
        }
        let mut birth = birth::choose(self.params.init, &self.set.names, &votes);
        // The initialisation and batch stream depend on (seed, order, task) but not on the strategy's label or
        // routing, so `evosam` and `evosam-oracle` with the same settings train bit-identical experts and differ
        // only in routing.
        let (seed_s, k_s) = (ctx.seed.to_string(), task_index.to_string());
        let parts = ["evosam-expert", &seed_s, ctx.order_label, &k_s, &task.name];
        let init = crate::util::derive_seed(&parts);
        // The chain (`init = "previous"`): the new expert starts from the chain's newest state, the weights trained
        // through the previous task (its best epoch there), even when that task kept its start or the base as its
        // served expert, so what every task taught is carried on.
        let chain_mode = self.params.init == Init::Previous;
        let start = match (birth.parent, &self.set.chain) {
            (Some(_), Some(c)) if chain_mode => c.deep_clone()?,
            (Some(p), _) => self.set.adapters[p].deep_clone()?,
            (None, _) => Adapter::new(ctx.model, &ctx.spec.lora, init)?,
        };
        // Small tasks under `guard = "crossfit"`: every image validates (see `crossfit`).
        let (_, images) = crate::train::budget::image_groups(all.iter().copied());
        if self.params.guard == Guard::Crossfit
            && (2..=self.params.crossfit_max_images).contains(&images)
        {
            let (adapter, birth) = self.train_crossfit(ctx, task, &all, start, birth, init)?;
            return self.set.push(&task.name, adapter, birth, &feats);
        }
        let cases: Vec<&Case> = task.train.iter().collect();
        let val: Vec<&Case> = task.val.iter().collect();
        // Train and keep the best trained epoch (a fresh AdamW, its own seeded batch stream); the keep-the-start
        // rule is applied below, so that the chain carries the trained weights whichever expert is served.
        let how = (&val[..], task.fov_eval, None);
        let (adapter, mut report) =
            self.fit_chain_and_expert(ctx, &task.name, &start, init, &cases, how)?;
        let sel = Validation {
            model: ctx.model,
            embeddings: ctx.embeddings,
            device: ctx.device,
            cases: &val,
            fov: task.fov_eval,
            clicks: ctx.spec.train.prompt.clicks,
        };
        // The starting point's score on each validation image, before it is possibly kept (moved) below.
        let evidence = self.params.keep_start_evidence;
        let paired_rule = self.params.keep_start && evidence != KeepEvidence::Mean;
        let start_cases = if !val.is_empty() && (birth.parent.is_some() || paired_rule) {
            sel.scores(Some(&start))?
        } else {
            Vec::new()
        };
        // Never worse than where it started: keep the start when training does not beat it on validation (the
        // mean rule), when validation shows it hurts (`keep_start_evidence = "harm"`), or unless validation shows it
        // helps (`"benefit"`).
        let margin = self.params.keep_start_margin;
        let mut adapter = adapter;
        let paired = bound::paired;
        // (paired rules) the served expert's score on each validation image, reused by the base check below
        let mut served_cases: Option<Vec<f64>> = None;
        let keep = self.params.keep_start
            && match evidence {
                KeepEvidence::Mean => {
                    crate::train::select::select_epoch(&report.val_dice, true, margin) == Some(0)
                }
                KeepEvidence::Harm | KeepEvidence::Benefit if report.val_dice.len() > 1 => {
                    let trained = sel.scores(Some(&adapter))?;
                    let keep = evidence.keep_reference(&paired(&trained, &start_cases), margin);
                    served_cases = Some(if keep { start_cases.clone() } else { trained });
                    keep
                }
                KeepEvidence::Harm | KeepEvidence::Benefit => false,
            };
        if keep {
            adapter = start;
            report.chosen_epoch = 0;
        }
        // Never worse than the base on validation: a copied expert (trained or its parent kept) must also beat the
        // base model, else the expert is the base (a fresh adapter, B = 0). The base's score is also the
        // forward-transfer evidence of `serve_chain = "auto"`.
        if let (Some(_), Some(chosen)) = (birth.parent, report.chosen_val_dice()) {
            let base_cases = sel.scores(None)?;
            let base = base_cases.iter().sum::<f64>() / base_cases.len() as f64;
            birth.transfer_cases = start_cases
                .iter()
                .zip(&base_cases)
                .map(|(s, b)| s - b)
                .collect();
            birth.base_val_dice = Some(base);
            let below_base = self.params.keep_start
                && match evidence {
                    KeepEvidence::Mean => chosen <= base + margin,
                    KeepEvidence::Harm | KeepEvidence::Benefit => {
                        let served = match served_cases.take() {
                            Some(s) => s,
                            None => sel.scores(Some(&adapter))?,
                        };
                        evidence.keep_reference(&paired(&served, &base_cases), margin)
                    }
                };
            if below_base {
                adapter = Adapter::new(ctx.model, &ctx.spec.lora, init)?;
                birth.kept_base = true;
            }
        }
        birth.fit = Some(report);
        self.set.push(&task.name, adapter, birth, &feats)
    }

    fn predict(&self, ctx: &StrategyCtx, task_index: usize, batch: &Batch) -> Result<Prediction> {
        let b = batch.cases.len();
        let routed = self.set.route(&batch.embeddings)?;
        // Reported to 1e-6: the matcher's sums reload from JSON with last-bit differences, and a resumed run must
        // write the same scores as an uninterrupted one (the routing decision uses the unrounded score).
        let novelty: Option<Vec<f64>> = routed
            .iter()
            .map(|c| c.novelty.map(|v| (v * 1e6).round() / 1e6))
            .collect();
        if self.params.routing == Routing::Quality && !self.set.is_empty() {
            return self.predict_by_quality(ctx, batch, novelty);
        }
        let choices: Vec<Choice> = match self.params.routing {
            Routing::Oracle => {
                let e = (task_index < self.set.len()).then_some(task_index);
                let oracle = Choice {
                    expert: e,
                    score: None,
                    novelty: None,
                    to_chain: false,
                };
                vec![oracle; b]
            }
            Routing::Matcher | Routing::Quality => routed,
        };
        let routes: Vec<Option<&Adapter>> =
            choices.iter().map(|c| self.set.adapter_for(c)).collect();
        let out = super::decode_cases(ctx, batch, &routes)?;
        let routed_to = match self.params.routing {
            Routing::Matcher | Routing::Quality => {
                Some(choices.iter().map(|c| self.set.name_for(c)).collect())
            }
            Routing::Oracle => None,
        };
        Ok(Prediction {
            logits: out.logits,
            routed_to,
            novelty,
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
        if set.novelty.shrinkage != self.params.novelty.shrinkage && !set.is_empty() {
            return Err(Error::internal(format!(
                "{}: novelty shrinkage differs from the spec's",
                dir.display()
            )));
        }
        self.set = ExpertSet {
            routing: self.params.routing,
            serve_chain: self.params.serve_chain,
            novelty: self.params.novelty.clone(),
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
        if self.set.chain.is_some() {
            if let Some(t) = self.set.mean_transfer() {
                m.insert("chain_transfer".into(), t);
            }
            if let Some(b) = self.set.transfer_bound() {
                m.insert("chain_transfer_lcb".into(), b);
            }
            m.insert(
                "chain_serves".into(),
                f64::from(u8::from(self.set.chain_serves())),
            );
            if self.set.novelty.enabled {
                m.insert(
                    "novel_to_chain".into(),
                    f64::from(u8::from(self.set.novel_to_chain())),
                );
            }
        }
        if let Some(th) = self.set.novelty_threshold() {
            m.insert("novelty_threshold".into(), th);
        }
        // The newest expert's birth: parent position (1-based, 0 = base), vote share, and its selection.
        if let Some(b) = self.set.births.last() {
            m.insert(
                "init_parent".into(),
                b.parent.map(|p| p as f64 + 1.0).unwrap_or(0.0),
            );
            if let Some(v) = b.vote_share {
                m.insert("init_vote_share".into(), v);
            }
            if let Some(f) = &b.fit {
                super::single::fit_extras(f, &mut m);
                m.insert("kept_start".into(), f64::from(u8::from(f.kept_start())));
            }
            m.insert("kept_base".into(), f64::from(u8::from(b.kept_base)));
            if let Some(k) = b.crossfit_folds {
                m.insert("crossfit_folds".into(), k as f64);
            }
        }
        m
    }
}

impl EvoSam {
    /// `routing = "quality"`: decode every image with the base model and every expert, keep the output whose
    /// predicted IoU is highest.
    fn predict_by_quality(
        &self,
        ctx: &StrategyCtx,
        batch: &Batch,
        novelty: Option<Vec<f64>>,
    ) -> Result<Prediction> {
        let b = batch.cases.len();
        let mut best: Vec<(f32, Option<usize>)> = vec![(f32::NEG_INFINITY, None); b];
        let mut outs = Vec::new();
        for cand in std::iter::once(None).chain((0..self.set.len()).map(Some)) {
            let a = cand.map(|k| &self.set.adapters[k]);
            let out = super::decode_cases(ctx, batch, &vec![a; b])?;
            let iou: Vec<f32> = out.iou.flatten_all()?.to_vec1()?;
            for (i, &v) in iou.iter().enumerate() {
                if v > best[i].0 {
                    best[i] = (v, cand);
                }
            }
            outs.push(out.logits);
        }
        let rows: Vec<Tensor> = best
            .iter()
            .enumerate()
            .map(|(i, (_, c))| outs[c.map(|k| k + 1).unwrap_or(0)].narrow(0, i, 1))
            .collect::<candle_core::Result<_>>()?;
        Ok(Prediction {
            logits: Tensor::cat(&rows, 0)?,
            routed_to: Some(best.iter().map(|(_, c)| self.set.target_name(*c)).collect()),
            novelty,
        })
    }
}

#[cfg(test)]
mod tests;
