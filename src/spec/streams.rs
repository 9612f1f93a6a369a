//! Task orders: "given", "reverse", explicit permutations and seeded random ones.

use super::diag::SpecSource;
use super::{Order, TaskSpec};
use crate::Result;
use serde::Deserialize;
use toml::Spanned;

/// One entry of `[stream] orders`: a name or a permutation of task names.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub(super) enum RawOrder {
    /// "given" (the spec's order) or "reverse".
    #[schemars(with = "OrderName")]
    Named(String),
    /// A permutation: every task name once, in training order.
    Perm(Vec<String>),
}

/// The named task orders.
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // the schema's enum of names; the parser reads a string and checks it
enum OrderName {
    /// The spec's order.
    Given,
    /// The spec's order reversed.
    Reverse,
}

pub(super) fn resolve_orders(
    src: &SpecSource,
    tasks: &[TaskSpec],
    orders: Option<Vec<Spanned<RawOrder>>>,
    n_random: usize,
    order_seed: u64,
    stream_span: std::ops::Range<usize>,
) -> Result<Vec<Order>> {
    let n = tasks.len();
    let mut out: Vec<Order> = Vec::new();
    let mut n_perm = 0;
    let given: Vec<usize> = (0..n).collect();
    let raw = orders.unwrap_or_default();
    if raw.is_empty() && n_random == 0 {
        out.push(Order {
            label: "given".into(),
            tasks: given.clone(),
        });
    }
    for o in raw {
        let span = o.span();
        match o.into_inner() {
            RawOrder::Named(s) if s == "given" => out.push(Order {
                label: "given".into(),
                tasks: given.clone(),
            }),
            RawOrder::Named(s) if s == "reverse" => out.push(Order {
                label: "reverse".into(),
                tasks: given.iter().rev().copied().collect(),
            }),
            RawOrder::Named(s) => {
                return Err(src.err_at(
                    span.start,
                    format!(
                    "[stream] orders: {s:?} is not \"given\", \"reverse\" or a list of task names"
                ),
                ))
            }
            RawOrder::Perm(names) => {
                let mut idx = Vec::new();
                for nm in &names {
                    match tasks.iter().position(|t| &t.name == nm) {
                        Some(p) if !idx.contains(&p) => idx.push(p),
                        Some(_) => {
                            return Err(src.err_at(
                                span.start,
                                format!("[stream] orders: task {nm:?} appears twice"),
                            ))
                        }
                        None => {
                            return Err(src.err_at(
                                span.start,
                                format!(
                                    "[stream] orders: unknown task {nm:?} (tasks: {})",
                                    task_list(tasks)
                                ),
                            ))
                        }
                    }
                }
                if idx.len() != n {
                    return Err(src.err_at(
                        span.start,
                        format!(
                            "[stream] orders: a permutation must list all {n} tasks ({})",
                            task_list(tasks)
                        ),
                    ));
                }
                n_perm += 1;
                out.push(Order {
                    label: format!("perm{n_perm}"),
                    tasks: idx,
                });
            }
        }
    }
    if n_random > 0 {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(order_seed);
        for k in 1..=n_random {
            let mut p = given.clone();
            p.shuffle(&mut rng);
            out.push(Order {
                label: format!("random{k}"),
                tasks: p,
            });
        }
    }
    for i in 0..out.len() {
        for j in 0..i {
            if out[i].label == out[j].label {
                return Err(src.err_at(
                    stream_span.start,
                    format!("[stream] orders: {:?} is listed twice", out[i].label),
                ));
            }
        }
    }
    Ok(out)
}

fn task_list(tasks: &[TaskSpec]) -> String {
    tasks
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
