//! The two learners of one task: the chain, which carries what every task taught on, and the task's expert.

use super::birth::Init;
use crate::data::Case;
use crate::model::Adapter;
use crate::strategy::StrategyCtx;
use crate::train::budget::Schedule;
use crate::train::{fit, FitPlan, FitReport};
use crate::Result;

impl super::EvoSam {
    /// Train the chain and the task's expert from `start` on `cases` (validated on `val` inside the field of view
    /// when `fov`; for `schedule` instead of `[train]`'s when given): the chain under the EWC penalty of the
    /// earlier tasks when `chain_ewc_lambda` > 0 (consolidating this one's Fisher when it ends), the expert apart
    /// from a penalised chain, from the same start without the penalty (isolation already keeps the earlier
    /// tasks, and the penalty, anchored on them, only held the new task's expert back: experiments/
    /// interactive-polyp.toml, 3 seeds, click AUC 0.646 as the penalised chain, 0.689 trained apart; fine-tuning
    /// 0.687); without a penalty, expert and chain are one. With `init = "previous"` the chain is kept. Returns
    /// the expert and its fit.
    pub(super) fn fit_chain_and_expert(
        &mut self,
        ctx: &mut StrategyCtx,
        task: &str,
        start: &Adapter,
        init: u64,
        cases: &[&Case],
        (val, fov, schedule): (&[&Case], bool, Option<Schedule>),
    ) -> Result<(Adapter, FitReport)> {
        let plan = |a, seed| {
            let p = FitPlan::new(task, a, cases)
                .validate_on(val, fov)
                .seed(seed);
            match &schedule {
                Some(s) => p.schedule(s.clone()),
                None => p,
            }
        };
        let chain_mode = self.params.init == Init::Previous;
        let lambda = self.params.chain_ewc_lambda;
        // (the first task has nothing to consolidate yet: no penalty)
        let penalised = chain_mode && lambda > 0.0 && !self.set.chain_ewc.pairs.is_empty();
        let chain = start.deep_clone()?;
        let chain_plan = plan(&chain, init.rotate_left(17) ^ 0x5eed);
        let chain_fit = if chain_mode && lambda > 0.0 {
            let mut ewc = crate::strategy::ewc::EwcHooks {
                memory: &mut self.set.chain_ewc,
                lambda,
                fisher_samples: 0,
            };
            fit(ctx, chain_plan.hooks(&mut ewc))?
        } else {
            fit(ctx, chain_plan)?
        };
        let trained = if penalised {
            let expert = start.deep_clone()?;
            let f = fit(ctx, plan(&expert, init.rotate_left(29) ^ 0xe4be))?;
            (expert, f)
        } else {
            (chain.deep_clone()?, chain_fit)
        };
        if chain_mode {
            self.set.chain = Some(chain);
        }
        Ok(trained)
    }
}
