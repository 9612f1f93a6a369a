//! Joint training: at every stage, one adapter trained on the union of all tasks seen so far (the usual upper
//! bound of continual learning; it needs every past task's data).

use super::single::SingleAdapter;
use super::{Batch, Prediction, Strategy, StrategyCtx};
use crate::data::{Case, TaskData};
use crate::model::LiteMedSam;
use crate::spec::StrategySpec;
use crate::Result;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Start every stage from a fresh adapter (true) or continue from the previous stage's.
    #[serde(default = "super::finetune::yes")]
    pub from_scratch: bool,
}

pub struct Joint {
    label: String,
    params: Params,
    core: SingleAdapter,
    base_sha256: String,
}

impl Joint {
    pub fn new(
        spec: &StrategySpec,
        params: Params,
        model: &LiteMedSam,
        base_sha256: &str,
        init_seed: u64,
    ) -> Result<Self> {
        Ok(Self {
            label: spec.label.clone(),
            params,
            core: SingleAdapter::new(spec, model, init_seed)?,
            base_sha256: base_sha256.to_string(),
        })
    }
}

impl Strategy for Joint {
    fn name(&self) -> &str {
        &self.label
    }

    fn train_task(
        &mut self,
        ctx: &mut StrategyCtx,
        _task_index: usize,
        task: &TaskData,
    ) -> Result<()> {
        if self.params.from_scratch {
            self.core.reinit(ctx.spec, ctx.model)?;
        }
        let seen = ctx.seen();
        let cases: Vec<&Case> = seen.iter().flat_map(|t| t.train.iter()).collect();
        let name = format!("{} (joint, {} tasks)", task.name, seen.len());
        self.core.fit(ctx, &name, &cases, None, &[], 0, true)?;
        Ok(())
    }

    fn predict(&self, ctx: &StrategyCtx, _task_index: usize, batch: &Batch) -> Result<Prediction> {
        self.core.predict(ctx, batch)
    }

    fn save_state(&self, dir: &Path) -> Result<()> {
        self.core.save(dir, &self.base_sha256)
    }

    fn load_state(&mut self, ctx: &StrategyCtx, dir: &Path) -> Result<()> {
        self.core.load(ctx, dir)
    }

    fn extra_metrics(&self) -> BTreeMap<String, f64> {
        self.core.extras()
    }
}
