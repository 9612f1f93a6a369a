//! Experience replay: a reservoir-sampled memory of past training cases (handles, not copies); every training
//! batch of the current task is extended with `memory_batch` cases drawn from the memory.

use super::reservoir::Reservoir;
use super::single::{SingleAdapter, SingleKind};
use super::StrategyCtx;
use crate::data::{Case, TaskData};
use crate::model::Adapter;
use crate::spec::Diag;
use crate::train::{FitEnv, TrainHooks};
use crate::{Error, Result};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The kind-specific keys of a `replay` preset.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Capacity of the memory, in training cases.
    #[serde(default = "default_memory_size")]
    pub memory_size: usize,
    /// Memory cases appended to each training batch.
    #[serde(default = "default_memory_batch")]
    pub memory_batch: usize,
    /// Fresh AdamW moments at each task (default) or carried over.
    #[serde(default = "super::finetune::yes")]
    pub reset_optimizer: bool,
}

fn default_memory_size() -> usize {
    20
}
fn default_memory_batch() -> usize {
    2
}

impl Params {
    /// `memory_batch` needs a memory.
    pub fn check(self) -> std::result::Result<Self, Diag> {
        if self.memory_batch > 0 && self.memory_size == 0 {
            return Err(Diag::at(
                "memory_batch",
                "`memory_batch` > 0 needs `memory_size` > 0",
            ));
        }
        Ok(self)
    }
}

/// A memory item: (index of the task in the spec's stream, index of the case in its train split).
pub type Item = (usize, usize);

/// The `replay` strategy kind: fine-tuning with memory cases of earlier tasks mixed into every batch.
pub struct Replay {
    /// The preset's settings.
    pub params: Params,
    memory: Reservoir<Item>,
}

const MEMORY_FILE: &str = "memory.json";

impl Replay {
    /// A replay strategy with an empty memory of `params.memory_size` cases.
    pub fn new(params: Params) -> Self {
        Self {
            memory: Reservoir::new(params.memory_size),
            params,
        }
    }

    /// The memory's items per task name (for inspection and tests).
    pub fn memory_counts<'a>(&self, ctx: &StrategyCtx<'a>) -> BTreeMap<&'a str, usize> {
        let mut m = BTreeMap::new();
        for (t, _) in self.memory.items() {
            *m.entry(ctx.tasks[*t].name.as_str()).or_insert(0) += 1;
        }
        m
    }
}

/// Replay as training hooks: `per_batch` cases drawn uniformly without replacement from `memory` appended to every
/// batch; when the task ends, its training cases are offered to the reservoir (with the fit's random stream).
pub struct ReplayHooks<'m> {
    /// The past cases to draw from.
    pub memory: Vec<&'m Case>,
    /// Memory cases per batch (at most all of them).
    pub per_batch: usize,
    /// The reservoir the finished task's cases are offered to.
    pub reservoir: &'m mut Reservoir<Item>,
    /// Index in the spec's stream of the task being trained (what the reservoir records).
    pub task: usize,
}

impl TrainHooks for ReplayHooks<'_> {
    fn extra_batch_items<'s>(&'s self, rng: &mut ChaCha8Rng) -> Vec<&'s Case> {
        let k = self.per_batch.min(self.memory.len());
        if k == 0 {
            return Vec::new();
        }
        rand::seq::index::sample(rng, self.memory.len(), k)
            .into_iter()
            .map(|i| self.memory[i])
            .collect()
    }

    fn after_task(&mut self, env: &mut FitEnv, _adapter: &Adapter, cases: &[&Case]) -> Result<()> {
        for i in 0..cases.len() {
            self.reservoir.offer((self.task, i), &mut *env.rng);
        }
        Ok(())
    }
}

impl SingleKind for Replay {
    fn train(
        &mut self,
        core: &mut SingleAdapter,
        ctx: &mut StrategyCtx,
        task_index: usize,
        task: &TaskData,
    ) -> Result<()> {
        if self.params.reset_optimizer {
            core.reset_optimizer();
        }
        let tasks = ctx.tasks;
        let cases: Vec<&Case> = task.train.iter().collect();
        let memory: Vec<&Case> = self
            .memory
            .items()
            .iter()
            .map(|&(t, i)| {
                tasks.get(t).and_then(|td| td.train.get(i)).ok_or_else(|| {
                    Error::internal(format!("replay memory item ({t}, {i}) out of range"))
                })
            })
            .collect::<Result<_>>()?;
        let mut hooks = ReplayHooks {
            memory,
            per_batch: self.params.memory_batch,
            reservoir: &mut self.memory,
            task: ctx.order[task_index],
        };
        core.fit(ctx, &task.name, &cases, &mut hooks)?;
        Ok(())
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let s = serde_json::to_vec(&self.memory).map_err(|e| Error::internal(e.to_string()))?;
        crate::util::write_atomic(&dir.join(MEMORY_FILE), &s)
    }

    fn load(&mut self, _ctx: &StrategyCtx, dir: &Path) -> Result<()> {
        let p = dir.join(MEMORY_FILE);
        let s = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        self.memory = serde_json::from_slice(&s)
            .map_err(|e| Error::internal(format!("{}: corrupt checkpoint: {e}", p.display())))?;
        Ok(())
    }

    fn extras(&self, m: &mut BTreeMap<String, f64>) {
        m.insert("memory_cases".into(), self.memory.len() as f64);
    }
}
