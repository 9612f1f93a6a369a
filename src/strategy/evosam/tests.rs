//! EvoSAM's expert births, selection on validation, novelty scores and step budgets, on the tiny random model.

use super::*;
use crate::strategy::kinds_tests::{noop, Kit};
use crate::strategy::novelty::{Fallback, Model, Sums};
use crate::train::budget::split_validation;
use std::sync::atomic::{AtomicUsize, Ordering};

pub(super) fn values(a: &Adapter) -> Vec<Vec<f32>> {
    a.vars()
        .iter()
        .map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

/// The kit's evosam entry with parameter and train overrides.
fn evo_spec(kit: &Kit, params: &str, edit: impl Fn(&mut crate::spec::TrainSpec)) -> StrategySpec {
    let mut sp = kit.strategy_spec("evosam").clone();
    let over: toml::Table = toml::from_str(params).unwrap();
    crate::spec::merge_tables(&mut sp.params, &over);
    edit(&mut sp.train);
    sp
}

fn build(kit: &Kit, sp: &StrategySpec) -> EvoSam {
    EvoSam::new(
        sp,
        crate::spec::from_table(&sp.params).unwrap(),
        &kit.model,
        "kit",
        3,
    )
    .unwrap()
}

#[test]
fn a_copied_expert_is_bit_identical_at_birth_and_its_parent_after_the_child_trains() {
    let kit = Kit::new(4, 2);
    let trained = evo_spec(&kit, "init = \"previous\"", |_| {});
    // A zero-epoch budget: the child is exactly its birth state.
    let birth_only = evo_spec(&kit, "init = \"previous\"", |t| t.epochs = 0);
    let mut a = build(&kit, &trained);
    a.train_task(&mut kit.ctx_with(&trained, 1, &noop), 0, &kit.tasks[0])
        .unwrap();
    let parent = values(&a.set.adapters[0]);
    assert_eq!(a.set.births[0].parent, None);
    // a trained expert (B != 0): "identical" is not trivially "all zero"
    assert!(parent
        .iter()
        .skip(1)
        .step_by(2)
        .flatten()
        .any(|v| *v != 0.0));
    a.train_task(&mut kit.ctx_with(&birth_only, 2, &noop), 1, &kit.tasks[1])
        .unwrap();
    assert_eq!(a.set.births[1].parent, Some(0));
    assert!(
        a.set.births[1].reason.contains("site0"),
        "{}",
        a.set.births[1].reason
    );
    assert_eq!(values(&a.set.adapters[1]), parent, "child at birth");
    // Train a child for real: it moves, its parent does not.
    let mut b = build(&kit, &trained);
    b.train_task(&mut kit.ctx_with(&trained, 1, &noop), 0, &kit.tasks[0])
        .unwrap();
    let before = values(&b.set.adapters[0]);
    assert_eq!(before, parent, "training is deterministic");
    b.train_task(&mut kit.ctx_with(&trained, 2, &noop), 1, &kit.tasks[1])
        .unwrap();
    assert_eq!(
        values(&b.set.adapters[0]),
        before,
        "parent after the child trained"
    );
    assert_ne!(values(&b.set.adapters[1]), before, "the child trained");
    assert_eq!(b.extra_metrics()["init_parent"], 1.0);
    // Saved and loaded, the birth records survive.
    let d = tempfile::tempdir().unwrap();
    b.save_state(d.path()).unwrap();
    let back = ExpertSet::load(d.path(), &kit.model, "kit").unwrap();
    assert_eq!(back.births, b.set.births);
}

#[test]
fn nearest_init_copies_the_expert_the_matcher_picks() {
    let kit = Kit::new(4, 1);
    let sp = evo_spec(&kit, "init = \"nearest\"", |_| {});
    let mut evo = build(&kit, &sp);
    for k in 0..2 {
        let mut ctx = kit.ctx_with(&sp, k + 1, &noop);
        evo.train_task(&mut ctx, k, &kit.tasks[k]).unwrap();
    }
    // Site 0 again, as a new task: the matcher routes its images to expert 0.
    let mut again = kit.tasks[0].clone();
    again.name = "site0-again".into();
    let mut ctx = kit.ctx_with(&sp, 3, &noop);
    evo.train_task(&mut ctx, 2, &again).unwrap();
    let b = &evo.set.births[2];
    assert_eq!(b.parent, Some(0), "{}", b.reason);
    assert_eq!(b.vote_share, Some(1.0));
    assert_eq!(evo.extra_metrics()["init_vote_share"], 1.0);
}

#[test]
fn selection_keeps_the_best_epoch_and_the_start_on_a_toy_with_a_known_answer() {
    let kit = Kit::new(6, 3);
    let tasks = split_validation(&kit.tasks, 0, 0.34);
    assert_eq!((tasks[0].train.len(), tasks[0].val.len()), (4, 2));
    // Same split for any strategy: it depends on (seed, task) only.
    let again = split_validation(&kit.tasks, 0, 0.34);
    assert_eq!(
        tasks[0].val.iter().map(|c| &c.id).collect::<Vec<_>>(),
        again[0].val.iter().map(|c| &c.id).collect::<Vec<_>>()
    );
    // (1) A learning rate so small that no epoch changes the validation Dice: every epoch ties with the start, so
    // keep_start keeps the start (bit for bit), and without it the first epoch is chosen.
    for keep in [true, false] {
        let sp = evo_spec(&kit, &format!("keep_start = {keep}"), |t| t.lr = 1e-12);
        let mut evo = build(&kit, &sp);
        let mut ctx = kit.ctx_with(&sp, 1, &noop);
        ctx.tasks = &tasks;
        evo.train_task(&mut ctx, 0, &tasks[0]).unwrap();
        let f = evo.set.births[0].fit.clone().unwrap();
        assert_eq!(f.val_dice.len(), 4, "{f:?}");
        assert!(f.val_dice.iter().all(|d| *d == f.val_dice[0]), "{f:?}");
        if keep {
            assert_eq!(f.chosen_epoch, 0);
            assert!(f.kept_start());
            // the start of a base-initialised expert: every B = 0 (vars are A, B per site), i.e. the base model
            let v = values(&evo.set.adapters[0]);
            assert!(v.iter().skip(1).step_by(2).flatten().all(|x| *x == 0.0));
            assert_eq!(evo.extra_metrics()["kept_start"], 1.0);
        } else {
            assert_eq!(f.chosen_epoch, 1);
        }
    }
    // (2) A real learning rate with patience 1: the kept weights score exactly the best recorded Dice, the chosen
    // epoch is the first maximum, and training stopped one epoch after the last improvement (or ran out).
    let sp = evo_spec(&kit, "keep_start = false", |t| {
        t.lr = 3e-2;
        t.epochs = 6;
        t.patience = 1;
    });
    let mut evo = build(&kit, &sp);
    let mut ctx = kit.ctx_with(&sp, 1, &noop);
    ctx.tasks = &tasks;
    evo.train_task(&mut ctx, 0, &tasks[0]).unwrap();
    let f = evo.set.births[0].fit.clone().unwrap();
    let best = crate::train::select::best_epoch(&f.val_dice, false).unwrap();
    assert_eq!(f.chosen_epoch, best);
    assert!(f.epochs_run == 6 || f.epochs_run == best + 1, "{f:?}");
    assert_eq!(f.steps, f.epochs_run * 2);
    let val: Vec<&Case> = tasks[0].val.iter().collect();
    let d = crate::train::select::validation_dice(
        &kit.model,
        &kit.store,
        &kit.dev,
        Some(&evo.set.adapters[0]),
        &val,
        false,
    )
    .unwrap();
    assert_eq!(d, f.val_dice[best], "{f:?}");
}

#[test]
fn novelty_scores_equal_a_batch_computation_from_the_same_features() {
    let kit = Kit::new(4, 1);
    let sp = evo_spec(&kit, "novelty = { enabled = true, quantile = 1.0 }", |_| {});
    let mut evo = build(&kit, &sp);
    let mut per_task = Vec::new();
    for k in 0..2 {
        let mut ctx = kit.ctx_with(&sp, k + 1, &noop);
        evo.train_task(&mut ctx, k, &kit.tasks[k]).unwrap();
        let cases: Vec<&Case> = kit.tasks[k].train.iter().collect();
        per_task.push(pooled_features(&kit.store.batch(&cases).unwrap()).unwrap());
    }
    let m = &evo.set.matcher;
    let sums: Vec<Sums> = per_task
        .iter()
        .map(|t| {
            let f: Vec<Vec<f64>> = t.iter().map(|p| m.novelty_features(p).unwrap()).collect();
            Sums::of(&f, f[0].len())
        })
        .collect();
    let refs: Vec<&Sums> = sums.iter().collect();
    let model = Model::fit(&refs, sp_shrinkage(&evo)).unwrap();
    let b = kit.test_batch(2);
    let p = evo.predict(&kit.ctx_with(&sp, 2, &noop), 2, &b).unwrap();
    let nov = p.novelty.unwrap();
    for (i, p) in pooled_features(&b.embeddings).unwrap().iter().enumerate() {
        let want = model.score(&m.novelty_features(p).unwrap());
        let got = evo.set.novelty_score(p).unwrap().unwrap();
        assert!((got - want).abs() < 1e-9 * want.max(1.0), "{got} vs {want}");
        // the scores table gets it to 1e-6
        assert!((nov[i] - want).abs() <= 5e-7, "{} vs {want}", nov[i]);
    }
    // With the threshold at the largest leave-one-out score, an image above it goes to the base model.
    let th = evo.set.novelty_threshold().unwrap();
    for (i, r) in p.routed_to.unwrap().iter().enumerate() {
        assert_eq!(
            r == "base",
            nov[i] > th,
            "case {i}: {r}, score {} vs {th}",
            nov[i]
        );
    }
    assert_eq!(
        evo.set
            .calibration
            .scores
            .iter()
            .map(Vec::len)
            .sum::<usize>(),
        8
    );
}

fn sp_shrinkage(e: &EvoSam) -> f64 {
    e.params.novelty.shrinkage
}

#[test]
fn a_steps_budget_counts_exactly_for_every_kind() {
    let kit = Kit::new(5, 2);
    for label in ["evosam", "finetune", "replay", "joint", "ewc", "lwf"] {
        let mut sp = kit.strategy_spec(label).clone();
        sp.train.steps = 4; // 5 cases at batch 2 = 3 steps a pass: 3 + 1
        let steps = AtomicUsize::new(0);
        let progress = |_p: crate::strategy::Progress| {
            steps.fetch_add(1, Ordering::Relaxed);
        };
        let env = crate::strategy::BuildEnv {
            model: &kit.model,
            base_sha256: "kit",
            init_seed: 7,
        };
        let mut s = crate::strategy::Registry::default()
            .build(&sp, &env)
            .unwrap();
        for k in 0..2 {
            let mut ctx = kit.ctx_with(&sp, k + 1, &progress);
            s.train_task(&mut ctx, k, &kit.tasks[k]).unwrap();
            // EvoSAM with a penalised chain trains two adapters from the second task on (the expert apart from
            // the chain), each under the budget
            let want = if label == "evosam" && k >= 1 { 8 } else { 4 };
            assert_eq!(steps.swap(0, Ordering::Relaxed), want, "{label} task {k}");
        }
    }
}

#[test]
fn the_chain_carries_the_trained_weights_when_the_served_expert_keeps_its_start() {
    let kit = Kit::new(6, 2);
    let tasks = split_validation(&kit.tasks, 0, 0.34);
    // lr 1e-12: B moves off zero by ~1e-12 (the weights change) but no validation Dice changes, so every trained
    // epoch ties with the start and keep_start serves the start (B = 0) while the chain keeps the trained weights.
    let sp = evo_spec(&kit, "init = \"previous\"", |t| t.lr = 1e-12);
    let mut evo = build(&kit, &sp);
    let mut ctx = kit.ctx_with(&sp, 1, &noop);
    ctx.tasks = &tasks;
    evo.train_task(&mut ctx, 0, &tasks[0]).unwrap();
    assert!(evo.set.births[0].fit.as_ref().unwrap().kept_start());
    let served = values(&evo.set.adapters[0]);
    assert!(served
        .iter()
        .skip(1)
        .step_by(2)
        .flatten()
        .all(|x| *x == 0.0));
    let chain = values(evo.set.chain.as_ref().unwrap());
    assert!(chain.iter().skip(1).step_by(2).flatten().any(|x| *x != 0.0));
    // The next expert starts from the chain, not from the served expert: at a zero budget it is the chain.
    let birth_only = evo_spec(&kit, "init = \"previous\"", |t| t.epochs = 0);
    let mut ctx = kit.ctx_with(&birth_only, 2, &noop);
    ctx.tasks = &tasks;
    evo.train_task(&mut ctx, 1, &tasks[1]).unwrap();
    assert_eq!(values(evo.set.chain.as_ref().unwrap()), chain);
    // Experts from the base keep no chain.
    let sp = evo_spec(&kit, "init = \"base\"", |_| {});
    let mut evo = build(&kit, &sp);
    evo.train_task(&mut kit.ctx_with(&sp, 1, &noop), 0, &kit.tasks[0])
        .unwrap();
    assert!(evo.set.chain.is_none() && !evo.set.chain_serves());
}

#[test]
fn serve_chain_follows_the_measured_transfer_and_survives_a_reload() {
    let kit = Kit::new(6, 2);
    let tasks = split_validation(&kit.tasks, 0, 0.34);
    let sp = evo_spec(
        &kit,
        "init = \"previous\"\nserve_chain = \"auto\"\nchain_ewc_lambda = 10.0",
        |_| {},
    );
    let mut evo = build(&kit, &sp);
    for k in 0..2 {
        let mut ctx = kit.ctx_with(&sp, k + 1, &noop);
        ctx.tasks = &tasks;
        evo.train_task(&mut ctx, k, &tasks[k]).unwrap();
    }
    // one Fisher/anchor pair per finished task, the evidence of the one expert born from the chain
    assert_eq!(evo.set.chain_ewc.pairs.len(), 2);
    let b = evo.set.births[1].clone();
    let start = b.fit.as_ref().unwrap().val_dice[0];
    let ev = evo.set.transfer_evidence();
    assert_eq!(ev, vec![start - b.base_val_dice.unwrap()]);
    let chain = evo.set.chain.as_ref().unwrap().deep_clone().unwrap();
    let chain = &chain;
    let ptr = |a: Option<&Adapter>| a.map(|a| a as *const Adapter);
    // one paired value per validation image: the chain's start minus the base
    assert_eq!(b.transfer_cases.len(), tasks[1].val.len());
    let mean = b.transfer_cases.iter().sum::<f64>() / b.transfer_cases.len() as f64;
    assert!((mean - (start - b.base_val_dice.unwrap())).abs() < 1e-12);
    // the gate follows the lower confidence bound of the evidence; the newest task always keeps its own expert
    for (cases, serves) in [
        (vec![0.1, 0.1, 0.1], true),
        (vec![0.12, 0.08, 0.1], true),
        (vec![-0.1, -0.1], false),
        (vec![0.0, 0.0], false),
        // a positive mean that is noise: +0.02 from +0.3, -0.25, +0.01 (bound -0.17)
        (vec![0.3, -0.25, 0.01], false),
        // one image is no evidence
        (vec![0.5], false),
    ] {
        let evidence = cases.iter().sum::<f64>() / cases.len() as f64;
        evo.set.births[1].transfer_cases = cases.clone();
        assert_eq!(
            evo.set.chain_serves(),
            serves,
            "evidence {cases:?}, mean {evidence}"
        );
        let want0 = if serves {
            evo.set.chain.as_ref().unwrap()
        } else {
            &evo.set.adapters[0]
        };
        assert_eq!(ptr(evo.set.serving(Some(0))), Some(want0 as *const _));
        assert_eq!(
            ptr(evo.set.serving(Some(1))),
            Some(&evo.set.adapters[1] as *const _)
        );
        assert!(evo.set.serving(None).is_none());
    }
    // Novel images follow the same evidence with `[novelty] fallback = "auto"`; "base" and "chain" are fixed.
    let novel = Choice {
        expert: None,
        score: None,
        novelty: None,
        to_chain: true,
    };
    for (fallback, evidence, to_chain) in [
        (Fallback::Auto, 0.1, true),
        (Fallback::Auto, -0.1, false),
        (Fallback::Base, 0.1, false),
        (Fallback::Chain, -0.1, true),
    ] {
        evo.set.novelty.fallback = fallback;
        evo.set.births[1].transfer_cases = vec![evidence; 3];
        assert_eq!(
            evo.set.novel_to_chain(),
            to_chain,
            "{fallback:?} {evidence}"
        );
        // an image far from both tasks is judged novel and goes where the evidence says
        evo.set.novelty.enabled = true;
        let far = vec![1e3; evo.set.matcher.in_dim()];
        let c = evo.set.decide(&far).unwrap();
        assert_eq!((c.expert, c.to_chain), (None, to_chain), "{c:?}");
        assert_eq!(
            evo.set.name_for(&c),
            if to_chain { "chain" } else { "base" }
        );
    }
    assert_eq!(
        ptr(evo.set.adapter_for(&novel)),
        Some(evo.set.chain.as_ref().unwrap() as *const _)
    );
    evo.set.serve_chain = ServeChain::Never;
    assert!(!evo.set.chain_serves());
    evo.set.serve_chain = ServeChain::Always;
    evo.set.births[1].transfer_cases = vec![-1.0; 3];
    assert!(evo.set.chain_serves());
    // Saved and loaded: the chain, its EWC memory and the setting come back bit for bit.
    let d = tempfile::tempdir().unwrap();
    evo.save_state(d.path()).unwrap();
    let back = ExpertSet::load(d.path(), &kit.model, "kit").unwrap();
    assert_eq!(back.serve_chain, ServeChain::Always);
    assert_eq!(values(back.chain.as_ref().unwrap()), values(chain));
    let named = |m: &crate::strategy::ewc::EwcMemory| -> Vec<(String, Vec<f32>)> {
        m.to_named()
            .into_iter()
            .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap()))
            .collect()
    };
    assert_eq!(named(&back.chain_ewc), named(&evo.set.chain_ewc));
    // The penalty acts on the chain's training: the same stream without it trains a different chain.
    let plain = evo_spec(&kit, "init = \"previous\"", |_| {});
    let mut p = build(&kit, &plain);
    for k in 0..2 {
        let mut ctx = kit.ctx_with(&plain, k + 1, &noop);
        ctx.tasks = &tasks;
        p.train_task(&mut ctx, k, &tasks[k]).unwrap();
    }
    assert_eq!(values(&p.set.adapters[0]), values(&evo.set.adapters[0]));
    assert_ne!(values(p.set.chain.as_ref().unwrap()), values(chain));
}

/// Features of a few sites of one modality (a shared centre, a site offset, anisotropic per-image noise) and of
/// another modality (another centre), d = 32: the routing rule's test bed.
struct Sites {
    centre: Vec<f64>,
    offsets: Vec<Vec<f64>>,
    rng: rand_chacha::ChaCha8Rng,
}

impl Sites {
    fn new(seed: u64, sites: usize) -> Self {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut normal = |s: f64| -> Vec<f64> { (0..32).map(|_| s * gauss(&mut rng)).collect() };
        let centre = normal(1.0);
        let offsets = (0..sites).map(|_| normal(1.5)).collect();
        Self {
            centre,
            offsets,
            rng,
        }
    }

    /// `n` images of site `t` (None: the other modality, whose centre is 5 per dimension away).
    fn draw(&mut self, t: Option<usize>, n: usize) -> Vec<Vec<f64>> {
        (0..n)
            .map(|_| {
                (0..32)
                    .map(|j| {
                        let at = match t {
                            Some(t) => self.centre[j] + self.offsets[t][j],
                            None => self.centre[j] + 8.0,
                        };
                        at + 0.3 * (1.0 + j as f64 / 8.0) * gauss(&mut self.rng)
                    })
                    .collect()
            })
            .collect()
    }
}

fn gauss(rng: &mut rand_chacha::ChaCha8Rng) -> f64 {
    rand_distr::Distribution::sample(&rand_distr::StandardNormal, rng)
}

#[test]
fn routing_at_2_3_5_and_50_images_per_task_keeps_seen_tasks_and_flags_another_modality() {
    let model = LiteMedSam::random(
        &crate::model::LiteMedSamConfig::tiny(),
        0,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let lora = crate::model::LoraConfig {
        rank: 1,
        alpha: 1.0,
        targets: vec!["mask_decoder".into()],
    };
    for n in [2, 3, 5, 50] {
        for seed in 0..3u64 {
            let mut sites = Sites::new(seed, 3);
            let novelty = NoveltyConfig {
                enabled: true,
                ..Default::default()
            };
            let mut set = ExpertSet::new(
                Routing::Matcher,
                32,
                MatcherConfig {
                    lambda: 1e-3,
                    class_balanced: true,
                    ..Default::default()
                },
                novelty,
            )
            .unwrap();
            for t in 0..3 {
                let feats = sites.draw(Some(t), n);
                let ad = Adapter::new(&model, &lora, t as u64).unwrap();
                set.push(&format!("t{t}"), ad, birth::Birth::default(), &feats)
                    .unwrap();
                if t == 0 && n == 2 {
                    // two images of one task: no spread to calibrate on, so no evidence to call anything novel
                    assert_eq!(set.novelty_threshold(), None);
                }
            }
            // fresh images of the seen tasks go to their own expert (not to the base as novel)
            let (mut own, mut total) = (0, 0);
            for t in 0..3 {
                for x in sites.draw(Some(t), 30) {
                    own += usize::from(set.decide(&x).unwrap().expert == Some(t));
                    total += 1;
                }
            }
            assert!(
                own as f64 >= 0.95 * total as f64,
                "n = {n}, seed {seed}: {own}/{total} routed to their task (threshold {:?})",
                set.novelty_threshold()
            );
            // images of another modality are novel; with two images per task the evidence can be too thin to
            // say so at level 0.99 (each task's two leave-one-out scores are one distance): then the bound is
            // wide, never a threshold below the other modality's scores that also cuts into the seen tasks
            let th = set.novelty_threshold().unwrap();
            let widest = set
                .calibration
                .scores
                .iter()
                .flatten()
                .fold(0.0f64, |a, &b| a.max(b));
            for x in sites.draw(None, 20) {
                let c = set.decide(&x).unwrap();
                if n == 2 && th > 5.0 * widest {
                    continue;
                }
                assert_eq!(
                    c.expert, None,
                    "n = {n}, seed {seed}: {c:?}, threshold {th}"
                );
            }
        }
    }
}

#[test]
fn validation_with_clicks_scores_box_and_clicks_the_same_way_for_every_model() {
    use crate::train::select::{validation_dices, validation_scores};
    let kit = Kit::new(4, 1);
    let tasks = split_validation(&kit.tasks, 0, 0.5);
    let val: Vec<&Case> = tasks[0].val.iter().collect();
    assert!(val.len() >= 2);
    let scores = |clicks| {
        validation_scores(&kit.model, &kit.store, &kit.dev, None, &val, false, clicks).unwrap()
    };
    let boxes = validation_dices(&kit.model, &kit.store, &kit.dev, None, &val, false).unwrap();
    // without clicks: the box Dice itself
    assert_eq!(scores(0), boxes);
    // with clicks: one value per case in [0, 1], the same draw every time, and not the box Dice alone
    let two = scores(2);
    assert_eq!(two.len(), val.len());
    assert!(two.iter().all(|v| (0.0..=1.0).contains(v)), "{two:?}");
    assert_eq!(two, scores(2));
    assert_ne!(two, boxes);
}

/// The keep rules by hand: the mean rule keeps the start on any non-positive mean; the harm rule only when the
/// one-sided 90% upper bound of the mean difference is below the margin (t(0.9, 3) = 1.6377), and falls back to
/// the mean rule below three validation images; the benefit rule keeps it unless the lower bound is above the
/// margin (the mean rule with one image).
#[test]
fn keep_rules_by_hand() {
    use super::KeepEvidence::{Benefit, Harm, Mean};
    let noisy = [0.01, -0.02, 0.005, 0.001]; // mean -0.001, sd 0.0129: no harm shown
    assert!(Mean.keep_reference(&noisy, 0.0));
    assert!(!Harm.keep_reference(&noisy, 0.0));
    // mean -0.105, sd 0.0129, upper bound -0.105 + 1.6377 * 0.0129 / 2 = -0.0944
    let hurts = [-0.1, -0.12, -0.09, -0.11];
    assert!(Harm.keep_reference(&hurts, 0.0) && Mean.keep_reference(&hurts, 0.0));
    assert!(!Harm.keep_reference(&hurts, -0.095));
    assert!(Harm.keep_reference(&hurts, -0.094));
    // two images: the mean rule
    assert!(Harm.keep_reference(&[-0.01, 0.0], 0.0));
    assert!(!Harm.keep_reference(&[0.01, 0.0], 0.0));
    // no validation: never keep
    assert!(!Harm.keep_reference(&[], 0.0) && !Mean.keep_reference(&[], 0.0));
    assert!(!Benefit.keep_reference(&[], 0.0));
    // benefit: the trained model only when the lower bound is above the margin. mean 0.105, lower bound
    // 0.105 - 1.6377 * 0.0129 / 2 = 0.0944
    let helps = [0.1, 0.12, 0.09, 0.11];
    assert!(!Benefit.keep_reference(&helps, 0.0));
    assert!(!Benefit.keep_reference(&helps, 0.094));
    assert!(Benefit.keep_reference(&helps, 0.095));
    // a positive mean the images do not agree on (mean 0.01, sd 0.01826, bound -0.005): the mean rule takes the
    // trained model, the benefit rule keeps the reference
    let unsure = [0.03, -0.01, 0.02, 0.0];
    assert!(!Mean.keep_reference(&unsure, 0.0) && Benefit.keep_reference(&unsure, 0.0));
    // two images, t(0.9, 1) = 3.0777: bound 0.015 - 3.0777 * 0.00707 / sqrt(2) < 0; 0.0195 - 0.0015 > 0
    assert!(Benefit.keep_reference(&[0.02, 0.01], 0.0));
    assert!(!Benefit.keep_reference(&[0.02, 0.019], 0.0));
    // one image: the mean rule
    assert!(!Benefit.keep_reference(&[0.01], 0.0) && Benefit.keep_reference(&[-0.01], 0.0));
}
