//! Zero-shot: the frozen base model, never trained.

use super::{Batch, Prediction, Strategy, StrategyCtx};
use crate::data::TaskData;
use crate::spec::StrategySpec;
use crate::Result;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// No parameters.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {}

/// The `zeroshot` strategy kind: predictions of the frozen base model, nothing trained or saved.
pub struct ZeroShot {
    label: String,
}

impl ZeroShot {
    /// The strategy for `spec` (only its label is used).
    pub fn new(spec: &StrategySpec, _p: Params) -> Self {
        Self {
            label: spec.label.clone(),
        }
    }
}

impl Strategy for ZeroShot {
    fn name(&self) -> &str {
        &self.label
    }

    fn train_task(
        &mut self,
        _ctx: &mut StrategyCtx,
        _task_index: usize,
        _task: &TaskData,
    ) -> Result<()> {
        Ok(())
    }

    fn predict(&self, ctx: &StrategyCtx, _task_index: usize, batch: &Batch) -> Result<Prediction> {
        let out = ctx.model.decode(&batch.embeddings, &batch.prompts, None)?;
        Ok(Prediction {
            logits: out.logits,
            routed_to: None,
            novelty: None,
        })
    }

    fn save_state(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    fn load_state(&mut self, _ctx: &StrategyCtx, _dir: &Path) -> Result<()> {
        Ok(())
    }

    fn extra_metrics(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([("trainable_params".to_string(), 0.0)])
    }
}
