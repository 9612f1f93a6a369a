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

/// A study of one strategy at one stage: the strategy as it is after the stage, where the images' embeddings come
/// from, the study's settings, and the run and stage the rows are labelled with.
pub struct StudyRun<'a> {
    /// The strategy studied; its own `predict` segments every click.
    pub strategy: &'a dyn Strategy,
    /// Its context.
    pub ctx: &'a StrategyCtx<'a>,
    /// Image embeddings of the cases.
    pub store: &'a EmbeddingStore,
    /// The study's settings (`[eval.interactive]`).
    pub spec: &'a InteractiveSpec,
    /// The run and stage of the rows.
    pub at: &'a RunStage,
    /// Where the clicks are simulated.
    pub device: &'a Device,
}

impl StudyRun<'_> {
    /// The click rows of `task`, at position `j` of the order.
    pub fn task(&self, j: usize, task: &TaskData) -> Result<Vec<ClickRow>> {
        let StudyRun {
            strategy,
            ctx,
            store,
            spec,
            at,
            device,
        } = *self;
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
                let pred = strategy.predict(ctx, j, &batch)?;
                Ok((pred.logits, pred.routed_to))
            })?;
            let ids: Vec<&str> = chunk.iter().map(|c| c.id.as_str()).collect();
            rows.extend(click_rows(at, &task.name, &ids, &traces));
        }
        Ok(rows)
    }
}
