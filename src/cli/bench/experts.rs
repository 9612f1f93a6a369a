//! Inference vs number of experts: an EvoSAM expert set of N LoRA adapters (fresh, as `init = "base"` makes them;
//! the same compute as trained ones) with its matcher and novelty detector taught N synthetic tasks; then per image
//! the routing (pooled features, matcher, novelty score) plus one mask-decoder pass with the chosen expert. Also
//! what one expert costs in bytes: its adapter in memory and on disk, and its task's matcher sums.

use std::time::Instant;

use candle_core::{DType, Tensor};

use super::common::{median, rss_mb, time_it};
use super::matcher::task_features;
use evosam::model::{Adapter, LiteMedSam, LoraConfig, Prompts};
use evosam::strategy::evosam::birth::Birth;
use evosam::strategy::evosam::{pooled_features, ExpertSet, Routing};
use evosam::strategy::novelty::NoveltyConfig;
use evosam::{Error, Result};

/// Figures for a set of N experts.
#[derive(Clone, Copy, Debug)]
pub struct ExpertFigures {
    /// N.
    pub experts: usize,
    /// Median seconds per image: routing plus one decoder pass with the chosen expert.
    pub infer_s: f64,
    /// Median seconds per image of the routing alone.
    pub route_s: f64,
    /// Median seconds of adding one expert to the set (matcher and novelty update).
    pub push_s: f64,
    /// Test images routed to the expert of the task they were drawn from, of `reps`.
    pub routed_right: usize,
    /// Images timed.
    pub reps: usize,
    /// RSS growth while the set was built, MiB (allocator caching makes it approximate).
    pub rss_growth_mb: f64,
}

/// What one expert costs in bytes.
#[derive(Clone, Copy, Debug)]
pub struct ExpertBytes {
    /// Trainable values of one adapter.
    pub params: usize,
    /// The adapter's values in memory (its dtype).
    pub memory: usize,
    /// Its `experts/<k>.safetensors` file.
    pub file: usize,
    /// The matcher's running sums of its task (d x d + d values of f64) and its column of weights.
    pub matcher: usize,
}

/// An image embedding of task `t`: the base embedding shifted per channel so that its pooled features are task
/// `t`'s mean (the matcher then routes it to expert `t`).
fn task_embedding(base: &Tensor, base_pooled: &[f64], t: usize) -> Result<Tensor> {
    let mean = &task_features(t, 1, base_pooled.len(), 7)[0];
    // task_features adds up to +-0.1 noise around the mean: use the drawn point itself, which is close to it
    let shift: Vec<f32> = mean
        .iter()
        .zip(base_pooled)
        .map(|(m, b)| (m - b) as f32)
        .collect();
    let c = shift.len();
    let shift = Tensor::from_vec(shift, (1, c, 1, 1), base.device())?.to_dtype(base.dtype())?;
    Ok(base.broadcast_add(&shift)?)
}

/// Build a set of `n` experts on `base` (one image embedding, (1, C, h, w)) and time inference through it.
pub fn measure(
    model: &LiteMedSam,
    base: &Tensor,
    lora: &LoraConfig,
    n: usize,
    reps: usize,
) -> Result<(ExpertFigures, ExpertSet)> {
    let base_pooled = pooled_features(base)?.remove(0);
    let rss0 = rss_mb().unwrap_or(f64::NAN);
    let novelty = NoveltyConfig {
        enabled: true,
        ..Default::default()
    };
    let mut set = ExpertSet::new(
        Routing::Matcher,
        base_pooled.len(),
        super::matcher::preset_config(0),
        novelty,
    )?;
    let mut pushes = Vec::new();
    for t in 0..n {
        let ad = Adapter::new(model, lora, t as u64)?;
        let feats = task_features(t, 8, base_pooled.len(), 7);
        let t0 = Instant::now();
        set.push(&format!("task{t}"), ad, Birth::default(), &feats)?;
        pushes.push(t0.elapsed().as_secs_f64());
    }
    let rss_growth_mb = rss_mb().unwrap_or(f64::NAN) - rss0;
    let prompt = Prompts::from_box_slice(&[[40., 50., 200., 190.]], base.device())?;
    // images of tasks spread over the set, so that consecutive images use different experts
    let tasks: Vec<usize> = (0..reps.max(1)).map(|j| (j * 7 + 3) % n).collect();
    let embs = tasks
        .iter()
        .map(|&t| task_embedding(base, &base_pooled, t))
        .collect::<Result<Vec<_>>>()?;
    let infer = |emb: &Tensor| -> Result<Option<usize>> {
        let choice = set.route(emb)?.remove(0);
        let ad = set.adapter_for(&choice);
        model.decode(emb, &prompt, ad)?;
        Ok(choice.expert)
    };
    infer(&embs[0])?; // warm-up
    let (mut ts, mut right) = (Vec::new(), 0);
    for (emb, &t) in embs.iter().zip(&tasks) {
        let t0 = Instant::now();
        let e = infer(emb)?;
        ts.push(t0.elapsed().as_secs_f64());
        right += usize::from(e == Some(t));
    }
    let mut j = 0;
    let route_s = time_it(reps, || {
        j = (j + 1) % embs.len();
        set.route(&embs[j]).map(|_| ())
    })?;
    Ok((
        ExpertFigures {
            experts: n,
            infer_s: median(ts),
            route_s,
            push_s: median(pushes),
            routed_right: right,
            reps: embs.len(),
            rss_growth_mb,
        },
        set,
    ))
}

/// Bytes of one expert of `set` (its first), saving the set into a temporary folder for the file size.
pub fn bytes_per_expert(set: &ExpertSet) -> Result<ExpertBytes> {
    let ad = set
        .adapters
        .first()
        .ok_or_else(|| Error::internal("an empty expert set"))?;
    let dir = tempfile::tempdir().map_err(|e| Error::internal(format!("temporary folder: {e}")))?;
    set.save(dir.path(), "bench")?;
    let f = dir.path().join("experts").join("0.safetensors");
    let file = std::fs::metadata(&f).map_err(|e| Error::io(&f, e))?.len() as usize;
    let d = set.matcher.feature_dim();
    let dtype = ad.vars().first().map(|v| v.dtype()).unwrap_or(DType::F32);
    Ok(ExpertBytes {
        params: ad.num_params(),
        memory: ad.num_params() * dtype.size_in_bytes(),
        file,
        matcher: (d * d + d + d) * std::mem::size_of::<f64>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use evosam::model::LiteMedSamConfig;

    #[test]
    fn experts_route_to_their_task_and_cost_their_parameters() {
        let dev = candle_core::Device::Cpu;
        let model = LiteMedSam::random(&LiteMedSamConfig::tiny(), 0, &dev).unwrap();
        let img = super::super::model::rand_images(1, 0, &dev).unwrap();
        let base = model.encode(&img).unwrap();
        let lora = LoraConfig {
            rank: 2,
            alpha: 2.0,
            targets: vec!["mask_decoder".into()],
        };
        let (f, set) = measure(&model, &base, &lora, 5, 5).unwrap();
        assert_eq!((f.experts, f.reps), (5, 5));
        assert_eq!(f.routed_right, 5, "each image goes to its task's expert");
        let b = bytes_per_expert(&set).unwrap();
        assert_eq!(b.memory, b.params * 4);
        assert!(b.file > b.memory, "the file holds the values and a header");
    }
}
