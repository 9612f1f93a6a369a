//! Mechanics of every strategy kind on the tiny random model and a generated three-task stream.

use super::*;
use crate::model::{Adapter, LiteMedSamConfig};
use crate::spec::Spec;
use rand::SeedableRng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A tiny model, a three-site synthetic vessel stream and its embeddings; one strategy entry per preset.
pub(crate) struct Kit {
    pub model: LiteMedSam,
    pub spec: Spec,
    pub tasks: Vec<TaskData>,
    pub store: EmbeddingStore,
    pub order: Vec<usize>,
    pub dev: Device,
}

pub(crate) fn noop(_: Progress) {}

impl Kit {
    pub fn new(train: usize, epochs: usize) -> Kit {
        let dev = Device::Cpu;
        let model = LiteMedSam::random(&LiteMedSamConfig::tiny(), 0, &dev).unwrap();
        let mut text = format!(
            "[experiment]\nname = \"kit\"\n[stream]\n[train]\nepochs = {epochs}\nbatch_size = 2\nlr = 1e-2\n"
        );
        for site in 0..3 {
            text += &format!(
                "[[stream.task]]\nname = \"site{site}\"\nsource = \"synthetic\"\nfamily = \"vessels\"\n\
                 site = {site}\ntrain = {train}\ntest = 2\nsize = 48\n"
            );
        }
        for name in Registry::default().preset_names() {
            text += &format!("[[strategy]]\npreset = \"{name}\"\n");
            // The kit's tasks (a few images) would be cross-fitted under the evosam presets; these tests exercise
            // the held-out guard and training itself (src/strategy/evosam/crossfit.rs tests cross-fitting).
            if name.starts_with("evosam") {
                text += "guard = \"holdout\"\n";
            }
        }
        let spec = Spec::from_str_at(&text, Path::new("kit.toml"), Path::new(".")).unwrap();
        let tasks: Vec<TaskData> = spec
            .stream
            .tasks
            .iter()
            .map(|t| crate::data::load_task(&spec, t, model.input_size(), false, &dev).unwrap())
            .collect();
        let mut map = HashMap::new();
        for c in tasks
            .iter()
            .flat_map(|t| t.train.iter().chain(t.test.iter()))
        {
            let e = model.encode(&c.image.unsqueeze(0).unwrap()).unwrap();
            map.insert(c.content_hash.clone(), e.squeeze(0).unwrap());
        }
        Kit {
            model,
            spec,
            tasks,
            store: EmbeddingStore::new(map),
            order: vec![0, 1, 2],
            dev,
        }
    }

    pub fn strategy_spec(&self, label: &str) -> &StrategySpec {
        self.spec
            .strategies
            .iter()
            .find(|s| s.label == label)
            .unwrap_or_else(|| panic!("no strategy {label}"))
    }

    pub fn ctx<'a>(
        &'a self,
        label: &str,
        stage: usize,
        progress: &'a (dyn Fn(Progress) + Send + Sync),
    ) -> StrategyCtx<'a> {
        self.ctx_with(self.strategy_spec(label), stage, progress)
    }

    pub fn ctx_with<'a>(
        &'a self,
        spec: &'a StrategySpec,
        stage: usize,
        progress: &'a (dyn Fn(Progress) + Send + Sync),
    ) -> StrategyCtx<'a> {
        StrategyCtx {
            model: &self.model,
            embeddings: &self.store,
            base_sha256: "kit",
            spec,
            seed: 0,
            order_label: "given",
            tasks: &self.tasks,
            order: &self.order,
            stage,
            rng: ChaCha8Rng::seed_from_u64(stage as u64 + 100),
            progress,
            device: &self.dev,
        }
    }

    pub fn build(&self, label: &str) -> Box<dyn Strategy> {
        let env = BuildEnv {
            model: &self.model,
            base_sha256: "kit",
            init_seed: 7,
        };
        Registry::default()
            .build(self.strategy_spec(label), &env)
            .unwrap()
    }

    /// Train `s` on the first `n` tasks of the order.
    pub fn train(&self, s: &mut dyn Strategy, label: &str, n: usize) {
        for k in 0..n {
            let mut ctx = self.ctx(label, k + 1, &noop);
            s.train_task(&mut ctx, k, &self.tasks[self.order[k]])
                .unwrap();
        }
    }

    pub fn test_batch(&self, task: usize) -> Batch<'_> {
        let cases: Vec<&Case> = self.tasks[task].test.iter().collect();
        Batch {
            embeddings: self.store.batch(&cases).unwrap(),
            prompts: crate::train::r#loop::eval_prompts(&cases, &self.dev).unwrap(),
            cases,
        }
    }
}

fn values(a: &Adapter) -> Vec<Vec<f32>> {
    a.vars()
        .iter()
        .map(|v| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn every_preset_trains_saves_and_restores_to_identical_predictions() {
    let kit = Kit::new(3, 1);
    for label in Registry::default().preset_names() {
        let mut s = kit.build(label);
        kit.train(s.as_mut(), label, 2);
        let dir = tempfile::tempdir().unwrap();
        s.save_state(dir.path()).unwrap();
        let mut back = kit.build(label);
        back.load_state(&kit.ctx(label, 2, &noop), dir.path())
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let ctx = kit.ctx(label, 2, &noop);
        for task in 0..3 {
            let b = kit.test_batch(task);
            let p1 = s.predict(&ctx, task, &b).unwrap();
            let p2 = back.predict(&ctx, task, &b).unwrap();
            assert_eq!(
                max_abs_diff(&p1.logits, &p2.logits),
                0.0,
                "{label} task {task}"
            );
            assert_eq!(p1.routed_to, p2.routed_to, "{label}");
        }
        assert_eq!(s.extra_metrics(), back.extra_metrics(), "{label}");
        // Trained strategies changed the model; zero-shot did not.
        let base = kit
            .model
            .decode(
                &kit.test_batch(0).embeddings,
                &kit.test_batch(0).prompts,
                None,
            )
            .unwrap()
            .logits;
        let p = s.predict(&ctx, 0, &kit.test_batch(0)).unwrap().logits;
        let d = max_abs_diff(&base, &p);
        if label == "zeroshot" {
            assert_eq!(d, 0.0);
        } else {
            assert!(
                d > 0.0,
                "{label}: predictions equal the base model's after training"
            );
        }
    }
}

#[test]
fn evosam_earlier_experts_are_bit_identical_after_later_tasks() {
    let kit = Kit::new(4, 2);
    let mut evo = evosam::EvoSam::new(
        kit.strategy_spec("evosam"),
        crate::spec::from_table(&kit.strategy_spec("evosam").params).unwrap(),
        &kit.model,
        "kit",
        3,
    )
    .unwrap();
    let mut snapshots = Vec::new();
    for k in 0..3 {
        let mut ctx = kit.ctx("evosam", k + 1, &noop);
        evo.train_task(&mut ctx, k, &kit.tasks[k]).unwrap();
        assert_eq!(evo.set.len(), k + 1);
        snapshots.push(values(&evo.set.adapters[k]));
        // Every earlier expert is exactly what it was when its task finished.
        for (j, snap) in snapshots.iter().enumerate() {
            assert_eq!(
                &values(&evo.set.adapters[j]),
                snap,
                "expert {j} changed after task {k}"
            );
        }
    }
    assert_eq!(evo.set.names, vec!["site0", "site1", "site2"]);
    // Experts differ from each other (each trained on its own task) and from a fresh adapter (B = 0).
    assert_ne!(snapshots[0], snapshots[1]);
    let m = evo.extra_metrics();
    assert_eq!(m["n_experts"], 3.0);
    assert_eq!(m["trainable_params"], 3.0 * m["params_per_expert"]);
    // Routed predictions equal decoding each image with the expert the matcher named.
    let ctx = kit.ctx("evosam", 3, &noop);
    for task in 0..3 {
        let b = kit.test_batch(task);
        let p = evo.predict(&ctx, task, &b).unwrap();
        let names = p.routed_to.unwrap();
        for (i, name) in names.iter().enumerate() {
            let k = evo.set.names.iter().position(|n| n == name).unwrap();
            let one = [b.cases[i]];
            let emb = kit.store.batch(&one).unwrap();
            let pr = crate::train::r#loop::eval_prompts(&one, &kit.dev).unwrap();
            let want = kit
                .model
                .decode(&emb, &pr, Some(&evo.set.adapters[k]))
                .unwrap()
                .logits;
            let got = p.logits.narrow(0, i, 1).unwrap();
            assert!(max_abs_diff(&want, &got) < 1e-4, "task {task} case {i}");
        }
    }
}

#[test]
fn oracle_uses_the_true_task_and_the_base_model_for_unseen_tasks() {
    let kit = Kit::new(3, 1);
    let mut s = kit.build("evosam-oracle");
    kit.train(s.as_mut(), "evosam-oracle", 2);
    // The oracle's experts are bit-identical to the matcher variant's: only the routing differs.
    let mut m = kit.build("evosam");
    kit.train(m.as_mut(), "evosam", 2);
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    s.save_state(d1.path()).unwrap();
    m.save_state(d2.path()).unwrap();
    let e1 = evosam::ExpertSet::load(d1.path(), &kit.model, "kit").unwrap();
    let e2 = evosam::ExpertSet::load(d2.path(), &kit.model, "kit").unwrap();
    assert_eq!(e1.len(), 2);
    for k in 0..2 {
        assert_eq!(
            values(&e1.adapters[k]),
            values(&e2.adapters[k]),
            "expert {k}"
        );
    }
    let ctx = kit.ctx("evosam-oracle", 2, &noop);
    let dir = tempfile::tempdir().unwrap();
    s.save_state(dir.path()).unwrap();
    let set = evosam::ExpertSet::load(dir.path(), &kit.model, "kit").unwrap();
    for task in 0..3 {
        let b = kit.test_batch(task);
        let p = s.predict(&ctx, task, &b).unwrap();
        assert!(p.routed_to.is_none());
        let want = kit
            .model
            .decode(&b.embeddings, &b.prompts, set.adapters.get(task))
            .unwrap()
            .logits;
        assert!(max_abs_diff(&want, &p.logits) < 1e-5, "task {task}");
    }
    // A folder without a manifest is refused with a message naming it.
    let e = evosam::ExpertSet::load(Path::new("/nonexistent-experts"), &kit.model, "kit")
        .err()
        .unwrap();
    assert!(e.to_string().contains("evosam.json"), "{e}");
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn replay_batches_carry_memory_cases_and_the_memory_spans_past_tasks() {
    let kit = Kit::new(4, 1);
    let ctx0 = kit.ctx("replay", 1, &noop);
    let cur: Vec<&Case> = kit.tasks[1].train.iter().collect();
    let mem: Vec<&Case> = kit.tasks[0].train.iter().collect();
    let adapter = Adapter::new(&kit.model, &ctx0.spec.lora, 1).unwrap();
    /// Records the case ids of every training batch.
    struct Record(std::sync::Mutex<Vec<Vec<String>>>);
    impl crate::train::TrainHooks for Record {
        fn extra_loss(
            &self,
            _: &crate::train::FitEnv,
            b: &crate::train::TrainBatch,
        ) -> Result<Option<Tensor>> {
            let ids = b.cases.iter().map(|c| c.id.clone()).collect();
            self.0.lock().unwrap().push(ids);
            Ok(None)
        }
    }
    let mut reservoir = reservoir::Reservoir::new(8);
    let replay = replay::ReplayHooks {
        memory: mem.clone(),
        per_batch: 2,
        reservoir: &mut reservoir,
        task: 1,
    };
    let mut hooks = (replay, Record(std::sync::Mutex::new(Vec::new())));
    let mut ctx = kit.ctx("replay", 2, &noop);
    let plan = crate::train::FitPlan::new("site1", &adapter, &cur).hooks(&mut hooks);
    crate::train::fit(&mut ctx, plan).unwrap();
    let batches = hooks.1 .0.into_inner().unwrap();
    // The task's end offered its 4 cases to the reservoir.
    assert_eq!(reservoir.items(), &[(1, 0), (1, 1), (1, 2), (1, 3)]);
    assert_eq!(batches.len(), 2); // 4 cases, batch 2, 1 epoch
    let mem_ids: Vec<&str> = mem.iter().map(|c| c.id.as_str()).collect();
    for b in &batches {
        assert_eq!(b.len(), 4);
        let from_mem: Vec<&String> = b
            .iter()
            .filter(|id| mem_ids.contains(&id.as_str()))
            .collect();
        assert_eq!(from_mem.len(), 2, "{b:?}");
        assert_ne!(from_mem[0], from_mem[1], "memory drawn without replacement");
    }
    // The strategy's reservoir holds cases of both finished tasks.
    let p: replay::Params = crate::spec::from_table(&kit.strategy_spec("replay").params).unwrap();
    let mut r = single::SingleModel::new(
        kit.strategy_spec("replay"),
        &kit.model,
        "kit",
        1,
        replay::Replay::new(p),
    )
    .unwrap();
    kit.train(&mut r, "replay", 2);
    let counts = r.kind.memory_counts(&kit.ctx("replay", 2, &noop));
    assert_eq!(counts.get("site0"), Some(&4));
    assert_eq!(counts.get("site1"), Some(&4));
}

#[test]
fn ewc_consolidates_a_fisher_and_penalises_moving_away() {
    let kit = Kit::new(3, 1);
    let spec = kit.strategy_spec("ewc");
    let mut core = single::SingleAdapter::new(spec, &kit.model, 5).unwrap();
    let mut ctx = kit.ctx("ewc", 1, &noop);
    let cases: Vec<&Case> = kit.tasks[0].train.iter().collect();
    core.fit(&mut ctx, "site0", &cases, &mut ()).unwrap();
    let fisher = ewc::task_fisher(&ctx.fit_env(), &core.adapter, &cases).unwrap();
    // The Fisher is the mean of squared per-case gradients: recompute it case by case.
    let vars = core.adapter.vars();
    let mut want: Vec<Vec<f32>> = vars.iter().map(|v| vec![0.0; v.elem_count()]).collect();
    for c in &cases {
        let f1 = ewc::task_fisher(&ctx.fit_env(), &core.adapter, &[*c]).unwrap();
        for (w, f) in want.iter_mut().zip(&f1) {
            for (a, b) in w
                .iter_mut()
                .zip(f.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            {
                *a += b / cases.len() as f32;
            }
        }
    }
    let mut nonzero = 0;
    for (f, w) in fisher.iter().zip(&want) {
        let got = f.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(w) {
            assert!(*g >= 0.0);
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1e-6), "{g} vs {w}");
            nonzero += (*g > 0.0) as usize;
        }
    }
    assert!(nonzero > 0, "Fisher is all zero");
    let mut mem = ewc::EwcMemory::new(None);
    mem.consolidate(fisher, &vars).unwrap();
    let p0 = mem
        .penalty(&vars, 10.0)
        .unwrap()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(p0, 0.0);
    // Moving every parameter by +0.1 costs (lambda/2) * 0.01 * sum F.
    let sum_f: f32 = want.iter().flatten().sum();
    for v in &vars {
        v.set(&(v.as_tensor() + 0.1).unwrap()).unwrap();
    }
    let p1 = mem
        .penalty(&vars, 10.0)
        .unwrap()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let expect = 5.0 * 0.01 * sum_f;
    assert!(
        (p1 - expect).abs() <= 1e-3 * expect.abs().max(1e-9),
        "{p1} vs {expect}"
    );
}

#[test]
fn joint_trains_on_every_seen_task_and_finetune_on_the_current_one() {
    let kit = Kit::new(3, 1);
    // Stage 2 with batch 2 and one epoch: joint sees 3 + 3 cases (3 steps), finetune the 3 current ones (2).
    for (label, expect) in [("joint", 3usize), ("finetune", 2usize)] {
        let steps = AtomicUsize::new(0);
        let count = |_: Progress| {
            steps.fetch_add(1, Ordering::Relaxed);
        };
        let mut s = kit.build(label);
        kit.train(s.as_mut(), label, 1);
        let mut ctx = kit.ctx(label, 2, &count);
        s.train_task(&mut ctx, 1, &kit.tasks[1]).unwrap();
        assert_eq!(steps.load(Ordering::Relaxed), expect, "{label}");
    }
}

#[test]
fn evosam_experts_can_target_the_encoder_attention() {
    let kit = Kit::new(2, 1);
    let mut spec = kit.strategy_spec("evosam").clone();
    spec.lora.targets = vec!["attn.qkv".into()];
    // routing by the matcher alone (two training images are too few to calibrate the novelty threshold)
    let off: toml::Table = toml::from_str("novelty = { enabled = false }").unwrap();
    crate::spec::merge_tables(&mut spec.params, &off);
    let mut evo = evosam::EvoSam::new(
        &spec,
        crate::spec::from_table(&spec.params).unwrap(),
        &kit.model,
        "kit",
        3,
    )
    .unwrap();
    let mut ctx = kit.ctx_with(&spec, 1, &noop);
    evo.train_task(&mut ctx, 0, &kit.tasks[0]).unwrap();
    let ad = &evo.set.adapters[0];
    assert!(
        ad.targets_encoder() && !ad.targets_decoder(),
        "{:?}",
        ad.paths()
    );
    // B starts at zero; training moved it at every encoder site.
    for (name, v) in ad.named_vars() {
        if name.ends_with(".lora_B") {
            let m = v
                .as_tensor()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(m > 0.0, "{name} untrained");
        }
    }
    // Predictions run the encoder with the expert: equal to encode_with + decode by hand, and different from the
    // frozen embeddings' decode.
    let ctx = kit.ctx_with(&spec, 1, &noop);
    let b = kit.test_batch(0);
    let p = evo.predict(&ctx, 0, &b).unwrap();
    assert_eq!(
        p.routed_to.as_deref(),
        Some(&["site0".to_string(), "site0".to_string()][..])
    );
    let imgs: Vec<Tensor> = b.cases.iter().map(|c| c.image.clone()).collect();
    let emb = kit
        .model
        .encode_with(&Tensor::stack(&imgs, 0).unwrap(), Some(ad))
        .unwrap();
    let want = kit.model.decode(&emb, &b.prompts, Some(ad)).unwrap().logits;
    assert!(max_abs_diff(&want, &p.logits) < 1e-4);
    let frozen = kit
        .model
        .decode(&b.embeddings, &b.prompts, Some(ad))
        .unwrap()
        .logits;
    assert!(max_abs_diff(&frozen, &p.logits) > 0.0);
}
