//! The experts trained so far and the matcher that routes between them: what EvoSAM keeps after each task, what
//! `save_state` writes and what `evosam segment --experts DIR` reads.

use super::birth::Birth;
use super::{Routing, ServeChain};
use crate::model::{Adapter, LiteMedSam};
use crate::strategy::ewc::EwcMemory;
use crate::strategy::matcher::{MatcherConfig, RidgeMatcher};
use crate::strategy::novelty::{Calibration, Fallback, NoveltyConfig};
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

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
    /// The chain's newest state (`init = "previous"`), a file inside the folder.
    #[serde(default)]
    chain: Option<String>,
    /// Whether the chain serves earlier tasks.
    #[serde(default)]
    serve_chain: ServeChain,
    /// The chain's EWC memory (Fisher and anchor per finished task), a file inside the folder.
    #[serde(default)]
    chain_ewc: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ManifestExpert {
    task: String,
    file: String,
    params: usize,
    #[serde(default)]
    birth: Option<Birth>,
}

/// `novelty.json`: the detector's settings and calibration scores.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct NoveltyState {
    config: NoveltyConfig,
    calibration: Calibration,
}

const MANIFEST: &str = "evosam.json";
const MATCHER: &str = "matcher.json";
const NOVELTY: &str = "novelty.json";
const FORMAT: &str = "evosam-experts-v1";
const CHAIN: &str = "experts/chain.safetensors";
const CHAIN_EWC: &str = "chain_ewc.safetensors";
/// `routed_to` of a novel image sent to the chain's newest state.
pub const CHAIN_TARGET: &str = "chain";

/// Trained experts (in task order) and the matcher: what EvoSAM keeps after each task.
pub struct ExpertSet {
    /// The routing it was saved with (the strategy replaces it by its spec's on resume).
    pub routing: Routing,
    /// Task name of each expert, in training order; also the `routed_to` values.
    pub names: Vec<String>,
    /// One LoRA adapter per task, aligned with `names`.
    pub adapters: Vec<Adapter>,
    /// How each expert was born and trained (same order as `adapters`).
    pub births: Vec<Birth>,
    /// The ridge matcher, taught one task per expert (running sums only, no stored images).
    pub matcher: RidgeMatcher,
    /// Novelty-detector settings (whether it routes, threshold quantile, shrinkage).
    pub novelty: NoveltyConfig,
    /// Leave-one-out novelty scores of every task's training features: the threshold's sample.
    pub calibration: Calibration,
    /// Rebuilt from the matcher's sums after every task and at load (not saved).
    pub(super) novelty_model: Option<crate::strategy::novelty::Model>,
    /// The chain's newest state (`init = "previous"`): the weights trained through every task so far, each task
    /// starting from the previous one's best epoch. None without a chain.
    pub chain: Option<Adapter>,
    /// Whether the chain serves the images routed to earlier tasks' experts (see [`ServeChain`]).
    pub serve_chain: ServeChain,
    /// EWC memory of the chain's training (`chain_ewc_lambda`); empty when unused.
    pub chain_ewc: EwcMemory,
}

/// The routing decision for one image: an expert index (None = base model), the matcher score and the novelty
/// score.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// Index into the set's experts, or None for the base model (no expert yet, open set or novel image).
    pub expert: Option<usize>,
    /// The matcher's best score (None before the first task).
    pub score: Option<f64>,
    /// Novelty score of the image (None before the first task); higher is more novel.
    pub novelty: Option<f64>,
    /// The image was judged novel and goes to the chain's newest state instead of the base model
    /// (`[novelty] fallback`, see [`ExpertSet::novel_to_chain`]); `expert` is None then.
    pub to_chain: bool,
}

impl ExpertSet {
    /// An empty set (every image goes to the base model) whose matcher takes pooled embeddings of `embed_dim`
    /// values. Fails when `matcher` is out of range.
    pub fn new(
        routing: Routing,
        embed_dim: usize,
        matcher: MatcherConfig,
        novelty: NoveltyConfig,
    ) -> Result<Self> {
        Ok(Self {
            routing,
            names: Vec::new(),
            adapters: Vec::new(),
            births: Vec::new(),
            matcher: RidgeMatcher::new(embed_dim, matcher)?,
            novelty,
            calibration: Calibration::default(),
            novelty_model: None,
            chain: None,
            serve_chain: ServeChain::Never,
            chain_ewc: EwcMemory::new(None),
        })
    }

    /// Forward-transfer evidence of the chain, one value per expert born from it: validation Dice of the chain
    /// before it trained on the task (knowledge of the earlier tasks only) minus the base model's, on the task's
    /// held-out images. Positive values say what earlier sites taught helps a new one.
    pub fn transfer_evidence(&self) -> Vec<f64> {
        if self.chain.is_none() {
            return Vec::new();
        }
        self.births
            .iter()
            .filter_map(|b| {
                let start = b.fit.as_ref()?.val_dice.first()?;
                Some(start - b.base_val_dice?).filter(|_| b.parent.is_some())
            })
            .collect()
    }

    /// Mean of [`ExpertSet::transfer_evidence`] (None before any expert is born from the chain).
    pub fn mean_transfer(&self) -> Option<f64> {
        let ev = self.transfer_evidence();
        (!ev.is_empty()).then(|| ev.iter().sum::<f64>() / ev.len() as f64)
    }

    /// One-sided 90% lower confidence bound of the chain's forward transfer per image: the paired differences
    /// (chain before training minus base, on each validation image of every task born from the chain; a birth
    /// saved without them counts its mean once) give `mean - t_{0.9, n-1} sd / sqrt(n)`. None with fewer than two
    /// values.
    ///
    /// Why a bound and not the mean: with a handful of validation images a mean of +0.004 is noise, and opening
    /// the chain on noise hands every earlier task to a model that may have forgotten it (measured on a real
    /// 5-task stream of 3 images per task: the chain opened on +0.004 and DRIVE ended 0.032 below the base).
    pub fn transfer_bound(&self) -> Option<f64> {
        self.chain.as_ref()?;
        let mut v: Vec<f64> = Vec::new();
        for b in self.births.iter().filter(|b| b.parent.is_some()) {
            if !b.transfer_cases.is_empty() {
                v.extend(&b.transfer_cases);
            } else if let (Some(start), Some(base)) = (
                b.fit.as_ref().and_then(|f| f.val_dice.first()),
                b.base_val_dice,
            ) {
                v.push(start - base);
            }
        }
        v.retain(|x| x.is_finite());
        super::bound::mean_bound(&v, false)
    }

    /// Whether the stream has shown forward transfer of the chain: [`ExpertSet::transfer_bound`] above zero.
    pub fn transfer_shown(&self) -> bool {
        self.transfer_bound().is_some_and(|b| b > 0.0)
    }

    /// Whether the chain's newest state serves the images routed to earlier tasks' experts now.
    pub fn chain_serves(&self) -> bool {
        if self.chain.is_none() {
            return false;
        }
        match self.serve_chain {
            ServeChain::Never => false,
            ServeChain::Always => true,
            ServeChain::Auto => self.transfer_shown(),
        }
    }

    /// The adapter that decodes an image routed to `expert` (None = the base model): the expert itself, or the
    /// chain's newest state for an earlier task's expert when [`ExpertSet::chain_serves`].
    pub fn serving(&self, expert: Option<usize>) -> Option<&Adapter> {
        if self.chain_serves_expert(expert) {
            self.chain.as_ref()
        } else {
            expert.and_then(|k| self.adapters.get(k))
        }
    }

    /// Whether images judged novel go to the chain's newest state rather than the base model: `[novelty]
    /// fallback = "chain"`, or `"auto"` when the chain has shown forward transfer (the same evidence as
    /// `serve_chain = "auto"`: [`ExpertSet::transfer_shown`]). Never without a chain.
    pub fn novel_to_chain(&self) -> bool {
        if self.chain.is_none() {
            return false;
        }
        match self.novelty.fallback {
            Fallback::Base => false,
            Fallback::Chain => true,
            Fallback::Auto => self.transfer_shown(),
        }
    }

    /// The adapter that decodes an image routed by `c` (None = the base model).
    pub fn adapter_for(&self, c: &Choice) -> Option<&Adapter> {
        if c.to_chain {
            self.chain.as_ref()
        } else {
            self.serving(c.expert)
        }
    }

    /// The `routed_to` name of a routing decision: the expert's task, "chain" (a novel image sent to the chain) or
    /// "base".
    pub fn name_for(&self, c: &Choice) -> String {
        if c.to_chain {
            CHAIN_TARGET.to_string()
        } else {
            self.target_name(c.expert)
        }
    }

    /// Whether the chain's newest state decodes the images routed to `expert`: an earlier task's expert while
    /// [`ExpertSet::chain_serves`], unless that task's cross-fitting found the chain's weights worse there
    /// ([`Birth::chain_ok`]).
    pub fn chain_serves_expert(&self, expert: Option<usize>) -> bool {
        expert.is_some_and(|k| k + 1 < self.len() && self.births[k].chain_ok != Some(false))
            && self.chain_serves()
    }

    /// Add a trained expert and teach the matcher and the novelty detector its task (pooled training features).
    pub fn push(
        &mut self,
        name: &str,
        adapter: Adapter,
        birth: Birth,
        feats: &[Vec<f64>],
    ) -> Result<()> {
        self.matcher.add_task(name, feats)?;
        let nf = feats
            .iter()
            .map(|p| self.matcher.novelty_features(p))
            .collect::<Result<Vec<_>>>()?;
        let sums = self.matcher.task_sums();
        let refs: Vec<&crate::strategy::novelty::Sums> = sums.iter().collect();
        self.calibration
            .add_task(&refs, &nf, self.novelty.shrinkage)?;
        self.names.push(name.to_string());
        self.adapters.push(adapter);
        self.births.push(birth);
        self.refit_novelty()
    }

    fn refit_novelty(&mut self) -> Result<()> {
        let sums = self.matcher.task_sums();
        let refs: Vec<&crate::strategy::novelty::Sums> = sums.iter().collect();
        self.novelty_model = if refs.is_empty() {
            None
        } else {
            Some(crate::strategy::novelty::Model::fit(
                &refs,
                self.novelty.shrinkage,
            )?)
        };
        Ok(())
    }

    /// The fitted novelty model (None before the first task): its means and covariance factor, for exporting.
    pub fn novelty_model(&self) -> Option<&crate::strategy::novelty::Model> {
        self.novelty_model.as_ref()
    }

    /// The novelty threshold (None before the first task or without calibration scores).
    pub fn novelty_threshold(&self) -> Option<f64> {
        self.calibration.threshold(self.novelty.quantile)
    }

    /// Novelty score of a pooled embedding (None before the first task).
    pub fn novelty_score(&self, pooled: &[f64]) -> Result<Option<f64>> {
        match &self.novelty_model {
            Some(m) => Ok(Some(m.score(&self.matcher.novelty_features(pooled)?))),
            None => Ok(None),
        }
    }

    /// The routing decision for one pooled embedding: the matcher's expert, unless the novelty detector is on and
    /// judges the image novel (then the base model, or the chain: [`ExpertSet::novel_to_chain`]).
    pub fn decide(&self, pooled: &[f64]) -> Result<Choice> {
        let r = self.matcher.route(pooled)?;
        let nov = self.novelty_score(pooled)?;
        let novel = match (self.novelty.enabled, nov, self.novelty_threshold()) {
            (true, Some(s), Some(th)) => s > th,
            _ => false,
        };
        Ok(Choice {
            expert: if novel { None } else { r.expert },
            score: Some(r.score),
            novelty: nov,
            to_chain: novel && self.novel_to_chain(),
        })
    }

    /// Number of experts (tasks trained).
    pub fn len(&self) -> usize {
        self.adapters.len()
    }

    /// True before the first task is trained.
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
                    score: None,
                    novelty: None,
                    to_chain: false,
                };
                b
            ]);
        }
        pooled_features(emb)?
            .iter()
            .map(|p| self.decide(p))
            .collect()
    }

    /// Name of a routing target ("base" for the base model).
    pub fn target_name(&self, expert: Option<usize>) -> String {
        match expert {
            Some(k) => self.names[k].clone(),
            None => "base".to_string(),
        }
    }

    /// Trainable parameters of one expert (all experts share the LoRA configuration); 0 for an empty set.
    pub fn params_per_expert(&self) -> usize {
        self.adapters.first().map(|a| a.num_params()).unwrap_or(0)
    }

    /// Write the set into `dir`: `evosam.json`, `matcher.json`, `novelty.json` and `experts/<k>.safetensors`
    /// (each adapter records `base_sha256`, the weights it was trained on).
    pub fn save(&self, dir: &Path, base_sha256: &str) -> Result<()> {
        let mut experts = Vec::new();
        for (k, (name, ad)) in self.names.iter().zip(&self.adapters).enumerate() {
            let file = format!("experts/{k}.safetensors");
            ad.save(&dir.join(&file), base_sha256)?;
            experts.push(ManifestExpert {
                task: name.clone(),
                file,
                params: ad.num_params(),
                birth: self.births.get(k).cloned(),
            });
        }
        let chain = match &self.chain {
            Some(c) => {
                c.save(&dir.join(CHAIN), base_sha256)?;
                Some(CHAIN.to_string())
            }
            None => None,
        };
        let chain_ewc = if self.chain_ewc.pairs.is_empty() {
            None
        } else {
            self.chain_ewc.save(&dir.join(CHAIN_EWC))?;
            Some(CHAIN_EWC.to_string())
        };
        let m = Manifest {
            format: FORMAT.into(),
            routing: self.routing,
            experts,
            chain,
            serve_chain: self.serve_chain,
            chain_ewc,
        };
        let js = serde_json::to_vec_pretty(&m).map_err(|e| Error::internal(e.to_string()))?;
        crate::util::write_atomic(&dir.join(MATCHER), self.matcher.to_json()?.as_bytes())?;
        let nov = NoveltyState {
            config: self.novelty.clone(),
            calibration: self.calibration.clone(),
        };
        let nj = serde_json::to_vec_pretty(&nov).map_err(|e| Error::internal(e.to_string()))?;
        crate::util::write_atomic(&dir.join(NOVELTY), &nj)?;
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
        // novelty.json is absent in folders written before the detector existed: it is then off.
        let np = dir.join(NOVELTY);
        let nov: NoveltyState = match std::fs::read(&np) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::input(format!("{}: {e}", np.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => NoveltyState::default(),
            Err(e) => return Err(Error::io(&np, e)),
        };
        let mut names = Vec::new();
        let mut adapters = Vec::new();
        let mut births = Vec::new();
        // a file inside the folder: never an absolute path, `..` or the folder itself
        let inside = |file: &str| -> Result<std::path::PathBuf> {
            let ok = !file.is_empty()
                && Path::new(file)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !ok {
                return Err(Error::input(format!(
                    "{}: expert file {file:?} is not a file inside {}",
                    mp.display(),
                    dir.display()
                )));
            }
            Ok(dir.join(file))
        };
        for e in &m.experts {
            adapters.push(Adapter::load(&inside(&e.file)?, model, base_sha256)?);
            names.push(e.task.clone());
            births.push(e.birth.clone().unwrap_or_default());
        }
        if matcher.num_tasks() != names.len() {
            return Err(Error::input(format!(
                "{}: the matcher knows {} tasks but {} experts are listed",
                dir.display(),
                matcher.num_tasks(),
                names.len()
            )));
        }
        let chain = match &m.chain {
            Some(f) => Some(Adapter::load(&inside(f)?, model, base_sha256)?),
            None => None,
        };
        let chain_ewc = match (&m.chain_ewc, &chain) {
            (Some(f), Some(c)) => {
                let device = c
                    .vars()
                    .first()
                    .map_or(candle_core::Device::Cpu, |v| v.device().clone());
                let p = inside(f)?;
                let mem = EwcMemory::load(&p, None, &device).map_err(Error::input)?;
                let n_vars = c.vars().len();
                if mem.pairs.iter().any(|q| q.fisher.len() != n_vars) {
                    return Err(Error::input(format!(
                        "{}: the EWC memory does not have the chain's {n_vars} tensors per pair",
                        p.display()
                    )));
                }
                mem
            }
            (Some(_), None) => {
                return Err(Error::input(format!(
                    "{}: a chain EWC memory without a chain",
                    mp.display()
                )))
            }
            (None, _) => EwcMemory::new(None),
        };
        let mut set = Self {
            routing: m.routing,
            names,
            adapters,
            births,
            matcher,
            novelty: nov.config,
            calibration: nov.calibration,
            novelty_model: None,
            chain,
            serve_chain: m.serve_chain,
            chain_ewc,
        };
        // a corrupt folder can hold sums no detector can be fitted on: that is bad input, named
        set.refit_novelty()
            .map_err(|e| Error::input(format!("{}: {e}", dir.display())))?;
        Ok(set)
    }
}
