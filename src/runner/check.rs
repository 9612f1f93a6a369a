//! What can be known about a spec's model settings before anything runs (`evosam validate`, and `run` before it
//! claims a folder): the weights file exists, and every strategy's LoRA settings fit the model's layers (targets
//! that match a layer, a rank those layers can hold, encoder targets only with an unfrozen encoder).

use crate::model::{LiteMedSam, LiteMedSamConfig};
use crate::spec::Spec;
use crate::Result;
use candle_core::{DType, Device};
use std::path::Path;

/// Check `[model] weights` and every strategy's LoRA settings against the model's architecture, without reading
/// or fetching weights (the layers come from a zero-initialised model of the same architecture).
pub fn check_model(spec: &Spec) -> Result<()> {
    let cfg = match spec.model.weights.as_str() {
        "random-tiny" => LiteMedSamConfig::tiny(),
        "lite_medsam" => LiteMedSamConfig::lite_medsam(),
        path => {
            let p = spec.resolve_path(Path::new(path));
            if !p.is_file() {
                return Err(spec.err(format!(
                    "[model] weights = {path:?}: {} does not exist (use \"lite_medsam\", \"random-tiny\" or a file)",
                    p.display()
                )));
            }
            LiteMedSamConfig::lite_medsam()
        }
    };
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let model = LiteMedSam::new(&cfg, vb)?;
    check_lora_sites(spec, &model)?;
    check_encoder_targets(spec, &model)
}

/// Every strategy's targets match at least one linear layer, and its rank is at most the largest `min(in, out)`
/// among them (a larger rank fits no matched layer, and only costs memory: a rank of 1,000,000 would exhaust it).
pub(super) fn check_lora_sites(spec: &Spec, model: &LiteMedSam) -> Result<()> {
    for s in &spec.strategies {
        let matched: Vec<(String, usize, usize)> = model
            .linear_sites()
            .into_iter()
            .filter(|(p, _, _)| s.lora.matches(p))
            .collect();
        let Some(cap) = matched.iter().map(|(_, i, o)| (*i).min(*o)).max() else {
            return Err(spec.err(format!(
                "strategy {:?}: lora targets {:?} match no linear layer of the model (e.g. \"mask_decoder\", \
                 \"q_proj\", \"attn.qkv\")",
                s.label, s.lora.targets
            )));
        };
        if s.lora.rank > cap {
            return Err(spec.err(format!(
                "strategy {:?}: lora rank {} is larger than the adapted layers allow: the {} layers matched by {:?} \
                 have min(in, out) of at most {cap}",
                s.label,
                s.lora.rank,
                matched.len(),
                s.lora.targets
            )));
        }
    }
    Ok(())
}

/// LoRA targets in the image encoder need `freeze_encoder = false` (and then run the encoder at every step: the
/// GPU setting); with a frozen encoder they would be silently useless, so they are refused.
pub(super) fn check_encoder_targets(spec: &Spec, model: &LiteMedSam) -> Result<()> {
    for s in &spec.strategies {
        let enc: Vec<String> = model
            .linear_sites()
            .into_iter()
            .map(|(p, _, _)| p)
            .filter(|p| p.starts_with("image_encoder.") && s.lora.matches(p))
            .collect();
        if spec.model.freeze_encoder && !enc.is_empty() {
            return Err(spec.err(format!(
                "strategy {:?}: lora targets {:?} match {} image-encoder layers (e.g. {}), but [model] \
                 freeze_encoder = true; set freeze_encoder = false to train encoder LoRA (slow on a CPU: the \
                 encoder runs at every step) or target the mask decoder",
                s.label,
                s.lora.targets,
                enc.len(),
                enc[0]
            )));
        }
    }
    Ok(())
}
