//! One trainable LoRA adapter and its optimiser: the core shared by the single-model baselines (finetune, EWC,
//! replay, LwF, joint). Each of them differs only in what it trains on and which [`TrainHooks`] it lends the fit.

use super::{Batch, Prediction, StrategyCtx};
use crate::data::Case;
use crate::model::{Adapter, LiteMedSam};
use crate::spec::StrategySpec;
use crate::train::{fit, AdamW, FitPlan, FitReport, ParamsAdamW, TrainHooks};
use crate::Result;
use std::collections::BTreeMap;
use std::path::Path;

/// The one adapter of a single-model strategy, its optimiser and the report of its last fit.
pub struct SingleAdapter {
    /// The trainable LoRA adapter (what `predict` decodes with).
    pub adapter: Adapter,
    /// AdamW over the adapter's variables: None until the first fit, and after [`SingleAdapter::reinit`].
    pub opt: Option<AdamW>,
    init_seed: u64,
    /// What the last fit did (steps, chosen epoch, validation Dice), for extras.csv.
    pub last_fit: Option<FitReport>,
}

/// The adapter's file in a saved state folder.
pub const ADAPTER_FILE: &str = "adapter.safetensors";
/// The optimiser's moments in a saved state folder (absent while there is none), so a resumed run continues them.
pub const ADAMW_FILE: &str = "adamw.safetensors";
/// The last fit's report (chosen epoch, validation Dice), so a restored strategy reports the same extras.
pub const FIT_FILE: &str = "fit.json";

impl SingleAdapter {
    /// A fresh adapter for `model` with the spec's LoRA settings, initialised from `init_seed`; no optimiser yet.
    pub fn new(spec: &StrategySpec, model: &LiteMedSam, init_seed: u64) -> Result<Self> {
        Ok(Self {
            adapter: Adapter::new(model, &spec.lora, init_seed)?,
            opt: None,
            init_seed,
            last_fit: None,
        })
    }

    /// Replace the adapter by a freshly initialised one (same seed as at construction) and drop the optimiser.
    pub fn reinit(&mut self, spec: &StrategySpec, model: &LiteMedSam) -> Result<()> {
        self.adapter = Adapter::new(model, &spec.lora, self.init_seed)?;
        self.opt = None;
        Ok(())
    }

    /// Drop the optimiser: the next fit starts from fresh AdamW moments (`reset_optimizer`).
    pub fn reset_optimizer(&mut self) {
        self.opt = None;
    }

    /// Train the adapter on `cases` of the task named `task` (see [`fit`]) with `hooks`. The optimiser is created
    /// on first use (and after [`SingleAdapter::reset_optimizer`]) and carried over otherwise. With a validation
    /// part, the epoch with the best Dice on the current task's held-out cases is kept. The report is kept for
    /// extras.csv.
    pub fn fit(
        &mut self,
        ctx: &mut StrategyCtx,
        task: &str,
        cases: &[&Case],
        hooks: &mut impl TrainHooks,
    ) -> Result<&FitReport> {
        let opt = match &mut self.opt {
            Some(o) => o,
            None => self.opt.insert(AdamW::new(
                self.adapter.vars(),
                ParamsAdamW::from_train(&ctx.spec.train),
            )?),
        };
        let current = ctx.seen().last().copied();
        let val: Vec<&Case> = current.map(|t| t.val.iter().collect()).unwrap_or_default();
        let plan = FitPlan::new(task, &self.adapter, cases)
            .optimizer(opt)
            .validate_on(&val, current.is_some_and(|t| t.fov_eval))
            .hooks(hooks);
        let report = fit(ctx, plan)?;
        Ok(self.last_fit.insert(report))
    }

    /// Decode a batch with the adapter (no routing, no novelty).
    pub fn predict(&self, ctx: &StrategyCtx, batch: &Batch) -> Result<Prediction> {
        let out = super::decode_cases(ctx, batch, &vec![Some(&self.adapter); batch.cases.len()])?;
        Ok(Prediction {
            logits: out.logits,
            routed_to: None,
            novelty: None,
        })
    }

    /// Write the adapter ([`ADAPTER_FILE`], tagged with `base_sha256`), the optimiser ([`ADAMW_FILE`]) and the
    /// last fit ([`FIT_FILE`]) into `dir`; the last two only when present.
    pub fn save(&self, dir: &Path, base_sha256: &str) -> Result<()> {
        self.adapter.save(&dir.join(ADAPTER_FILE), base_sha256)?;
        if let Some(o) = &self.opt {
            o.save(&dir.join(ADAMW_FILE))?;
        }
        if let Some(f) = &self.last_fit {
            let js = serde_json::to_vec(f).map_err(|e| crate::Error::internal(e.to_string()))?;
            crate::results::write_atomic(&dir.join(FIT_FILE), &js)?;
        }
        Ok(())
    }

    /// Restore what [`SingleAdapter::save`] wrote; the adapter must match the context's base weights.
    pub fn load(&mut self, ctx: &StrategyCtx, dir: &Path) -> Result<()> {
        self.adapter = Adapter::load(&dir.join(ADAPTER_FILE), ctx.model, ctx.base_sha256)?;
        let p = dir.join(ADAMW_FILE);
        self.opt = if p.is_file() {
            let mut o = AdamW::new(
                self.adapter.vars(),
                ParamsAdamW::from_train(&ctx.spec.train),
            )?;
            o.load(&p)?;
            Some(o)
        } else {
            None
        };
        let f = dir.join(FIT_FILE);
        self.last_fit = match std::fs::read(&f) {
            Ok(b) => Some(
                serde_json::from_slice(&b)
                    .map_err(|e| crate::Error::input(format!("{}: {e}", f.display())))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(crate::Error::io(&f, e)),
        };
        Ok(())
    }

    /// `trainable_params` and `params_per_expert` (one model), and the last fit's selection
    /// ([`fit_extras`]).
    pub fn extras(&self) -> BTreeMap<String, f64> {
        let n = self.adapter.num_params() as f64;
        let mut m = BTreeMap::from([
            ("trainable_params".to_string(), n),
            ("params_per_expert".to_string(), n),
        ]);
        if let Some(r) = &self.last_fit {
            fit_extras(r, &mut m);
        }
        m
    }
}

/// extras.csv keys of a fit: `chosen_epoch`, `epochs_run` and, with validation, `val_dice` (kept weights) and
/// `val_dice_start`.
pub fn fit_extras(r: &FitReport, m: &mut BTreeMap<String, f64>) {
    m.insert("chosen_epoch".into(), r.chosen_epoch as f64);
    m.insert("epochs_run".into(), r.epochs_run as f64);
    if let Some(d) = r.chosen_val_dice() {
        m.insert("val_dice".into(), d);
        m.insert("val_dice_start".into(), r.val_dice[0]);
    }
}

/// What distinguishes one single-model baseline from another: how it trains on a task, and any state of its own
/// (saved next to the adapter).
pub trait SingleKind: Send {
    /// Train `core` on task `task_index` of the order (typically through [`SingleAdapter::fit`]).
    fn train(
        &mut self,
        core: &mut SingleAdapter,
        ctx: &mut StrategyCtx,
        task_index: usize,
        task: &crate::data::TaskData,
    ) -> Result<()>;

    /// Save the kind's own state into the stage's state folder, next to the adapter (default: none).
    fn save(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Restore what [`SingleKind::save`] wrote (default: nothing to restore).
    fn load(&mut self, _ctx: &StrategyCtx, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Add the kind's own values to the stage's extras (extras.csv), after the adapter's (default: none).
    fn extras(&self, _m: &mut BTreeMap<String, f64>) {}
}

/// A single-model strategy: one adapter (see [`SingleAdapter`]) trained by a [`SingleKind`].
pub struct SingleModel<K: SingleKind> {
    label: String,
    base_sha256: String,
    /// The adapter, its optimiser and last fit.
    pub core: SingleAdapter,
    /// The baseline's training rule and its own state.
    pub kind: K,
}

impl<K: SingleKind> SingleModel<K> {
    /// A strategy labelled by `spec` with a fresh adapter initialised from `init_seed`; saved adapters record
    /// `base_sha256`.
    pub fn new(
        spec: &StrategySpec,
        model: &LiteMedSam,
        base_sha256: &str,
        init_seed: u64,
        kind: K,
    ) -> Result<Self> {
        Ok(Self {
            label: spec.label.clone(),
            base_sha256: base_sha256.to_string(),
            core: SingleAdapter::new(spec, model, init_seed)?,
            kind,
        })
    }
}

impl<K: SingleKind> super::Strategy for SingleModel<K> {
    fn name(&self) -> &str {
        &self.label
    }

    fn train_task(
        &mut self,
        ctx: &mut StrategyCtx,
        task_index: usize,
        task: &crate::data::TaskData,
    ) -> Result<()> {
        self.kind.train(&mut self.core, ctx, task_index, task)
    }

    fn predict(&self, ctx: &StrategyCtx, _task_index: usize, batch: &Batch) -> Result<Prediction> {
        self.core.predict(ctx, batch)
    }

    fn save_state(&self, dir: &Path) -> Result<()> {
        self.core.save(dir, &self.base_sha256)?;
        self.kind.save(dir)
    }

    fn load_state(&mut self, ctx: &StrategyCtx, dir: &Path) -> Result<()> {
        self.core.load(ctx, dir)?;
        self.kind.load(ctx, dir)
    }

    fn extra_metrics(&self) -> BTreeMap<String, f64> {
        let mut m = self.core.extras();
        self.kind.extras(&mut m);
        m
    }
}
