//! One adapter as a Hugging Face PEFT LoRA folder: `adapter_config.json` + `adapter_model.safetensors`, plus our
//! own `evosam.json` (PEFT's config loader is strict about its keys, so nothing of ours goes into its file).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::base::BaseModel;
use crate::model::Adapter;
use crate::{Error, Result};

/// The PEFT state-dict key of a site's LoRA matrix (`which` = "A" or "B"), as PEFT's `save_pretrained` writes it
/// for the default adapter: `base_model.model.<module path>.lora_<which>.weight`.
pub fn peft_key(module: &str, which: &str) -> String {
    format!("base_model.model.{module}.lora_{which}.weight")
}

/// Write named tensors as safetensors with the `format = "pt"` metadata that Hugging Face loaders expect.
pub(super) fn save_tensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(meta),
        path,
    )
    .map_err(|e| Error::internal(format!("{}: writing tensors: {e}", path.display())))
}

/// The JSON number of `alpha`: an integer when it is one (PEFT's own configs write `lora_alpha` as an int).
fn alpha_value(alpha: f64) -> serde_json::Value {
    if alpha.fract() == 0.0 && alpha.abs() < 1e15 {
        json!(alpha as i64)
    } else {
        json!(alpha)
    }
}

/// Every site of `ad` (the adapter of `task`) is an `nn.Linear` of `base`; otherwise an input error naming the
/// first site that is not (see [`super`]).
pub fn check_linear(ad: &Adapter, base: &BaseModel, task: &str) -> Result<()> {
    match ad.paths().into_iter().find(|p| !base.linear.contains(p)) {
        Some(p) => Err(Error::input(format!(
            "expert {task:?}: LoRA site `{p}` is not an nn.Linear module of the PyTorch model (a 1x1 convolution \
             with BatchNorm folded into one map here): PEFT cannot express it; only linear sites can be exported"
        ))),
        None => Ok(()),
    }
}

/// Write `ad` as a PEFT folder `dir` (created); `task` is recorded in `evosam.json`. Every site must be an
/// `nn.Linear` of `base` (`check_linear`).
pub fn write_adapter(ad: &Adapter, base: &BaseModel, dir: &Path, task: &str) -> Result<()> {
    check_linear(ad, base, task)?;
    let paths = ad.paths();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut scale = 0.0;
    for p in &paths {
        let (a, b, s) = ad
            .site(p)
            .ok_or_else(|| Error::internal(format!("adapter site `{p}` vanished")))?;
        scale = s;
        for (which, t) in [("A", a), ("B", b)] {
            let t = t
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .contiguous()?;
            tensors.push((peft_key(p, which), t));
        }
    }
    save_tensors(&tensors, &dir.join("adapter_model.safetensors"))?;
    let cfg = &ad.config;
    // PEFT's LoraConfig fields; target_modules lists full module paths, which PEFT matches exactly.
    let config = json!({
        "peft_type": "LORA",
        "task_type": null,
        "base_model_name_or_path": base.name,
        "r": cfg.rank,
        "lora_alpha": alpha_value(cfg.alpha),
        "target_modules": paths,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": true,
        "revision": null,
    });
    let ours = json!({
        "format": "evosam-peft-expert",
        "version": 1,
        "task": task,
        "base_sha256": base.sha256,
        "base_weights": base.name,
        "scaling": scale,
        "rank": cfg.rank,
        "alpha": cfg.alpha,
        "evosam_targets": cfg.targets,
        "modules": paths.len(),
        "params": ad.num_params(),
    });
    for (name, v) in [("adapter_config.json", config), ("evosam.json", ours)] {
        let bytes = serde_json::to_vec_pretty(&v).map_err(|e| Error::internal(e.to_string()))?;
        crate::util::write_atomic(&dir.join(name), &bytes)?;
    }
    Ok(())
}
