//! The study for one strategy at one stage: every evaluated task's test images (or the spec's `max_cases` subset)
//! go through [`simulate`](super::simulate()) with the strategy's own `predict`, so each strategy is
//! measured exactly as it is scored (EvoSAM routes each image with its matcher, the oracle uses the true task's
//! expert, baselines use their single model).

use candle_core::{Device, Tensor};

use super::rows::{click_rows, ClickRow, RunStage};
use super::simulate::{simulate, SimCase, SimOptions};
use crate::data::{Case, TaskData};
use crate::spec::InteractiveSpec;
use crate::strategy::{Batch, EmbeddingStore, Strategy, StrategyCtx};
use crate::Result;

/// Images simulated together (one decoder batch per click).
pub const STUDY_BATCH: usize = 8;

/// Seed of the `max_cases` subset: fixed, so every strategy, seed and order sees the same images.
const SUBSET_SEED: u64 = 0x1c11c5;

/// The test cases of `task` the study uses (all, or a fixed seeded subset of `max_cases`, in their order).
pub fn study_cases<'a>(task: &'a TaskData, spec: &InteractiveSpec) -> Vec<&'a Case> {
    crate::data::limit(task.test.iter().collect(), spec.max_cases, SUBSET_SEED)
}

/// One task at position `j` of the order: its click rows for the strategy and stage `at`.
#[allow(clippy::too_many_arguments)]
pub fn study_task(
    strat: &dyn Strategy,
    ctx: &StrategyCtx,
    store: &EmbeddingStore,
    j: usize,
    task: &TaskData,
    spec: &InteractiveSpec,
    at: &RunStage,
    device: &Device,
) -> Result<Vec<ClickRow>> {
    let opts = SimOptions {
        max_clicks: spec.max_clicks,
        mask_prompt: spec.mask_prompt,
    };
    let mut rows = Vec::new();
    for chunk in study_cases(task, spec).chunks(STUDY_BATCH) {
        let sim: Vec<SimCase> = chunk
            .iter()
            .map(|c| SimCase {
                gt: &c.gt,
                fov: if task.fov_eval { c.fov.as_ref() } else { None },
                meta: &c.meta,
                gt_box: c.gt_box(),
            })
            .collect();
        let embeddings = store.batch(chunk)?;
        let traces = simulate(&sim, &opts, device, |idx, prompts| {
            let cases: Vec<&Case> = idx.iter().map(|&i| chunk[i]).collect();
            let embeddings = if idx.len() == chunk.len() {
                embeddings.clone()
            } else {
                let sel: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
                embeddings.index_select(&Tensor::new(sel.as_slice(), device)?, 0)?
            };
            let batch = Batch {
                cases,
                embeddings,
                prompts: prompts.clone(),
            };
            let pred = strat.predict(ctx, j, &batch)?;
            Ok((pred.logits, pred.routed_to))
        })?;
        let ids: Vec<&str> = chunk.iter().map(|c| c.id.as_str()).collect();
        rows.extend(click_rows(at, &task.name, &ids, &traces));
    }
    Ok(rows)
}
