//! Where a new expert starts: knowledge sharing at expert birth.
//!
//! The paper's experts all start from the frozen base (B = 0) and see one task each; on small real tasks they
//! underfit, while single-model learners pool what related tasks teach. A new expert may instead start as a copy
//! of an existing one: the last expert (`init = "previous"`: a fine-tuned chain, each expert frozen when its task
//! ends), or the expert the matcher routes most of the new task's training images to (`init = "nearest"`: the
//! most similar domain seen so far). The parent is copied ([`crate::model::Adapter::deep_clone`]) and the copy is
//! trained, so earlier experts never change: parameter isolation is kept. The choice and its reason are recorded
//! in `evosam.json` and extras.csv.

use crate::train::FitReport;
use serde::{Deserialize, Serialize};

/// `init` of the evosam preset.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// A fresh adapter on the frozen base model (B = 0), as in the paper.
    #[default]
    Base,
    /// A copy of the last expert.
    Previous,
    /// A copy of the expert the matcher routes most of the new task's training images to.
    Nearest,
}

/// How one expert was born and trained (recorded per expert in `evosam.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Birth {
    /// Index (task order) of the expert it was copied from; None = the base model.
    pub parent: Option<usize>,
    /// Why, in words.
    pub reason: String,
    /// `nearest`: fraction of the task's training images the matcher routed to the parent.
    #[serde(default)]
    pub vote_share: Option<f64>,
    /// Steps, epochs and validation of its training (chosen epoch 0 = the starting point was kept).
    #[serde(default)]
    pub fit: Option<FitReport>,
    /// Validation Dice of the base model, when it was weighed against a copied expert.
    #[serde(default)]
    pub base_val_dice: Option<f64>,
    /// Per validation image (a copied expert only): the starting point's Dice (the chain, or the parent, before
    /// training on this task) minus the base model's. The paired values behind the forward-transfer evidence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transfer_cases: Vec<f64>,
    /// The expert was replaced by the base model (B = 0): neither the trained copy nor its parent beat the base
    /// on validation.
    #[serde(default)]
    pub kept_base: bool,
    /// Folds of the cross-fitted validation (`guard = "crossfit"`; None: the held-out part). With folds, `fit`'s
    /// `val_dice` is the pooled held-out curve over all the task's images and `transfer_cases` covers them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crossfit_folds: Option<usize>,
    /// Whether the chain may serve this task's images later (`serve_chain`): cross-fitting served the trained
    /// weights the chain carries on (neither the start nor the base was kept), so the evidence rule backs them.
    /// `Some(false)` keeps this task's images with its own expert whatever the chain's forward transfer; None (the
    /// held-out guard, which measures no such thing) leaves the decision to `serve_chain` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_ok: Option<bool>,
}

/// Choose the parent of the expert for a new task. `votes[k]` is how many of the task's training images the
/// matcher routes to expert k (used by `nearest`; ties go to the later expert, which has seen more); `names` are
/// the experts' tasks.
pub fn choose(init: Init, names: &[String], votes: &[usize]) -> Birth {
    let n = names.len();
    if n == 0 {
        return Birth {
            parent: None,
            reason: "first task: the base model".into(),
            ..Default::default()
        };
    }
    match init {
        Init::Base => Birth {
            parent: None,
            reason: "init = base: a fresh adapter on the base model".into(),
            ..Default::default()
        },
        Init::Previous => Birth {
            parent: Some(n - 1),
            reason: format!(
                "init = previous: a copy of the chain's state after the last task ({})",
                names[n - 1]
            ),
            ..Default::default()
        },
        Init::Nearest => {
            let total: usize = votes.iter().sum();
            let mut best = 0;
            for (k, &v) in votes.iter().enumerate() {
                if v >= votes[best] {
                    best = k;
                }
            }
            let share = if total > 0 {
                votes[best] as f64 / total as f64
            } else {
                0.0
            };
            Birth {
                parent: Some(best),
                reason: format!(
                    "init = nearest: the matcher routes {} of {total} training images to expert {} ({})",
                    votes[best], best, names[best]
                ),
                vote_share: Some(share),
                ..Default::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_choice() {
        let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(choose(Init::Nearest, &[], &[]).parent, None);
        assert_eq!(choose(Init::Base, &names, &[0, 0, 5]).parent, None);
        assert_eq!(choose(Init::Previous, &names, &[5, 0, 0]).parent, Some(2));
        let b = choose(Init::Nearest, &names, &[5, 2, 1]);
        assert_eq!(b.parent, Some(0));
        assert_eq!(b.vote_share, Some(5.0 / 8.0));
        assert!(
            b.reason.contains("5 of 8") && b.reason.contains("(a)"),
            "{}",
            b.reason
        );
        // ties go to the later expert
        assert_eq!(choose(Init::Nearest, &names, &[3, 3, 0]).parent, Some(1));
    }
}
