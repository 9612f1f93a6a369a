//! Sequential fine-tuning: one LoRA adapter trained on each task in turn (no protection against forgetting).

use super::{Batch, Prediction, Strategy, StrategyCtx};
use crate::data::{Case, TaskData};
use crate::model::{Adapter, LiteMedSam};
use crate::spec::StrategySpec;
use crate::train::optim::AdamW;
use crate::Result;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Fresh AdamW moments at each task (default) or carried over.
    #[serde(default = "yes")]
    pub reset_optimizer: bool,
}

fn yes() -> bool {
    true
}

pub struct FineTune {
    label: String,
    params: Params,
    adapter: Adapter,
    opt: Option<AdamW>,
    base_sha256: String,
}

/// AdamW settings from the train spec.
pub fn adamw_params(spec: &StrategySpec) -> crate::train::optim::ParamsAdamW {
    crate::train::optim::ParamsAdamW {
        lr: spec.train.lr,
        weight_decay: spec.train.weight_decay,
        max_grad_norm: spec.train.max_grad_norm,
        ..Default::default()
    }
}

impl FineTune {
    pub fn new(
        spec: &StrategySpec,
        params: Params,
        model: &LiteMedSam,
        base_sha256: &str,
        init_seed: u64,
    ) -> Result<Self> {
        let adapter = Adapter::new(model, &spec.lora, init_seed)?;
        Ok(Self {
            label: spec.label.clone(),
            params,
            adapter,
            opt: None,
            base_sha256: base_sha256.to_string(),
        })
    }
}

impl Strategy for FineTune {
    fn name(&self) -> &str {
        &self.label
    }

    fn train_task(
        &mut self,
        ctx: &mut StrategyCtx,
        _task_index: usize,
        task: &TaskData,
    ) -> Result<()> {
        if self.opt.is_none() || self.params.reset_optimizer {
            self.opt = Some(AdamW::new(self.adapter.vars(), adamw_params(ctx.spec))?);
        }
        let cases: Vec<&Case> = task.train.iter().collect();
        let opt = self.opt.as_mut().expect("optimiser");
        crate::train::r#loop::fit(ctx, &task.name, &self.adapter, opt, &cases, None)?;
        Ok(())
    }

    fn predict(&self, ctx: &StrategyCtx, _task_index: usize, batch: &Batch) -> Result<Prediction> {
        let out = ctx
            .model
            .decode(&batch.embeddings, &batch.prompts, Some(&self.adapter))?;
        Ok(Prediction {
            logits: out.logits,
            routed_to: None,
        })
    }

    fn save_state(&self, dir: &Path) -> Result<()> {
        self.adapter
            .save(&dir.join("adapter.safetensors"), &self.base_sha256)?;
        if let Some(o) = &self.opt {
            o.save(&dir.join("adamw.safetensors"))?;
        }
        Ok(())
    }

    fn load_state(&mut self, ctx: &StrategyCtx, dir: &Path) -> Result<()> {
        self.adapter = Adapter::load(&dir.join("adapter.safetensors"), ctx.model, ctx.base_sha256)?;
        let p = dir.join("adamw.safetensors");
        self.opt = if p.is_file() {
            let mut o = AdamW::new(self.adapter.vars(), adamw_params(ctx.spec))?;
            o.load(&p)?;
            Some(o)
        } else {
            None
        };
        Ok(())
    }

    fn extra_metrics(&self) -> BTreeMap<String, f64> {
        let n = self.adapter.num_params() as f64;
        BTreeMap::from([
            ("trainable_params".to_string(), n),
            ("params_per_expert".to_string(), n),
        ])
    }
}
