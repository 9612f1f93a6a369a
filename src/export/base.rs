//! The base model an export is relative to: its weights file and which of its modules PEFT can adapt.

use std::collections::BTreeSet;
use std::path::Path;

use crate::{Error, Result};

/// What the exported adapters are relative to: the base weights and which of their modules are `nn.Linear`.
#[derive(Clone, Debug)]
pub struct BaseModel {
    /// `base_model_name_or_path` of the adapters (the weights file's name).
    pub name: String,
    /// sha256 of the weights file (every expert records the weights it was trained on).
    pub sha256: String,
    /// Module paths with a 2-D `<path>.weight` in the state dict: the `nn.Linear` modules (and embedding tables,
    /// which never match an adapter site, since sites are the model's linear layers).
    pub linear: BTreeSet<String>,
}

impl BaseModel {
    /// Read the module table of a PyTorch state dict (`lite_medsam.pth`; tensor shapes only, no data).
    pub fn from_pth(path: &Path, sha256: &str) -> Result<Self> {
        let infos = candle_core::pickle::read_pth_tensor_info(path, false, None).map_err(|e| {
            Error::Weights(format!(
                "{}: cannot read the PyTorch state dict: {e}",
                path.display()
            ))
        })?;
        let linear = infos
            .iter()
            .filter(|t| t.layout.shape().rank() == 2)
            .filter_map(|t| t.name.strip_suffix(".weight").map(str::to_string))
            .collect();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "lite_medsam.pth".into());
        Ok(Self {
            name,
            sha256: sha256.to_string(),
            linear,
        })
    }
}
