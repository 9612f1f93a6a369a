//! LoRA adapters ("experts"): `y = W x + b + (alpha / r) * B (A x)` on the linear layers whose module
//! path matches one of the configured targets. `B` starts at zero, so a fresh adapter changes nothing.
//! The base weights are never part of an adapter; [`Adapter::vars`] is all an optimiser sees.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What an adapter needs to know of the model it adapts: where its linear layers are and on which device and in
/// which dtype their weights live. [`super::LiteMedSam`] implements it; the trait keeps this file free of the
/// model's own module (adapters are plain data the model's layers read, not the other way round).
pub trait AdapterHost {
    /// Device of the model's weights (adapter tensors are created there).
    fn device(&self) -> Device;
    /// Dtype of the model's weights.
    fn dtype(&self) -> DType;
    /// Every adaptable linear layer: (state-dict path, input features, output features).
    fn linear_sites(&self) -> Vec<(String, usize, usize)>;
}

/// Rank, scaling and target module patterns of an adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r of the update `B A` (at least 1).
    #[schemars(range(min = 1))]
    pub rank: usize,
    /// Scale numerator: the update is multiplied by `alpha / rank`.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub alpha: f64,
    /// Substrings of module paths (`q_proj`, `attn.qkv`), or globs when they contain `*`, `?` or `[`
    /// (`mask_decoder.transformer.layers.*.self_attn.q_proj`).
    #[schemars(length(min = 1), inner(length(min = 1)))]
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// Whether the module at `path` is a target.
    pub fn matches(&self, path: &str) -> bool {
        self.targets.iter().any(|t| {
            if t.contains(['*', '?', '[']) {
                glob::Pattern::new(t)
                    .map(|p| p.matches(path))
                    .unwrap_or(false)
            } else {
                path.contains(t.as_str())
            }
        })
    }

    /// The factor `alpha / rank` applied to the low-rank update.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One expert: module path -> (A: (r, in), B: (out, r)).
#[derive(Debug)]
pub struct Adapter {
    /// The configuration the adapter was built from.
    pub config: LoraConfig,
    sites: BTreeMap<String, (Var, Var)>,
    scale: f64,
    id: u64,
}

impl Adapter {
    /// A fresh adapter: A ~ U(-1/sqrt(in), 1/sqrt(in)) from `seed` (as PEFT's kaiming-uniform), B = 0.
    pub fn new(model: &impl AdapterHost, cfg: &LoraConfig, seed: u64) -> Result<Self> {
        if cfg.rank == 0 {
            return Err(Error::input("LoRA rank must be at least 1"));
        }
        let matched: Vec<(String, usize, usize)> = model
            .linear_sites()
            .into_iter()
            .filter(|(p, _, _)| cfg.matches(p))
            .collect();
        // checked before allocating: a huge rank would otherwise exhaust memory here
        if let Some(cap) = matched.iter().map(|(_, i, o)| (*i).min(*o)).max() {
            if cfg.rank > cap {
                return Err(Error::input(format!(
                    "LoRA rank {} is larger than the adapted layers allow (min(in, out) of at most {cap} among the \
                     {} layers matched by {:?})",
                    cfg.rank,
                    matched.len(),
                    cfg.targets
                )));
            }
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let dev = model.device();
        let dt = model.dtype();
        let mut sites = BTreeMap::new();
        for (path, in_dim, out_dim) in matched {
            let bound = 1.0 / (in_dim as f64).sqrt();
            let a: Vec<f64> = (0..cfg.rank * in_dim)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let a = Tensor::from_vec(a, (cfg.rank, in_dim), &dev)?.to_dtype(dt)?;
            let b = Tensor::zeros((out_dim, cfg.rank), dt, &dev)?;
            sites.insert(path, (Var::from_tensor(&a)?, Var::from_tensor(&b)?));
        }
        if sites.is_empty() {
            return Err(Error::input(format!(
                "LoRA targets {:?} match no linear layer of the model",
                cfg.targets
            )));
        }
        Ok(Self {
            config: cfg.clone(),
            sites,
            scale: cfg.scale(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// A process-unique id (used to group images by adapter in routed decoding).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// (A, B, alpha/r) for a module path, if this adapter has it.
    pub fn site(&self, path: &str) -> Option<(&Tensor, &Tensor, f64)> {
        self.sites
            .get(path)
            .map(|(a, b)| (a.as_tensor(), b.as_tensor(), self.scale))
    }

    /// The module paths this adapter modifies.
    pub fn paths(&self) -> Vec<String> {
        self.sites.keys().cloned().collect()
    }

    /// Whether any site lies in the image encoder (then the encoder must run differentiably).
    pub fn targets_encoder(&self) -> bool {
        self.sites.keys().any(|p| p.starts_with("image_encoder."))
    }

    /// Whether any site lies outside the image encoder.
    pub fn targets_decoder(&self) -> bool {
        self.sites.keys().any(|p| !p.starts_with("image_encoder."))
    }

    /// The trainable tensors (A and B of every site), in a fixed order.
    pub fn vars(&self) -> Vec<Var> {
        self.sites
            .values()
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect()
    }

    /// Named trainable tensors (`path.lora_A`, `path.lora_B`).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.sites
            .iter()
            .flat_map(|(p, (a, b))| {
                [
                    (format!("{p}.lora_A"), a.clone()),
                    (format!("{p}.lora_B"), b.clone()),
                ]
            })
            .collect()
    }

    /// Trainable values in the adapter (all A and B matrices).
    pub fn num_params(&self) -> usize {
        self.sites
            .values()
            .map(|(a, b)| a.elem_count() + b.elem_count())
            .sum()
    }

    /// An independent copy with new Vars.
    pub fn deep_clone(&self) -> Result<Self> {
        let mut sites = BTreeMap::new();
        for (p, (a, b)) in &self.sites {
            sites.insert(
                p.clone(),
                (
                    Var::from_tensor(&a.as_tensor().copy()?)?,
                    Var::from_tensor(&b.as_tensor().copy()?)?,
                ),
            );
        }
        Ok(Self {
            config: self.config.clone(),
            sites,
            scale: self.scale,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Save as safetensors (f32) with metadata: format, rank, alpha, targets (JSON), base_sha256.
    pub fn save(&self, path: &Path, base_sha256: &str) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (name, v) in self.named_vars() {
            tensors.push((
                name,
                v.as_tensor()
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .contiguous()?,
            ));
        }
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "evosam-lora-v1".to_string());
        meta.insert("rank".to_string(), self.config.rank.to_string());
        meta.insert("alpha".to_string(), self.config.alpha.to_string());
        meta.insert(
            "targets".to_string(),
            serde_json::to_string(&self.config.targets)
                .map_err(|e| Error::internal(e.to_string()))?,
        );
        meta.insert("base_sha256".to_string(), base_sha256.to_string());
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
        }
        safetensors::serialize_to_file(
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            Some(meta),
            path,
        )
        .map_err(|e| Error::internal(format!("{}: writing adapter: {e}", path.display())))
    }

    /// Load an adapter saved by [`Adapter::save`]; refuses a file made for other base weights or with
    /// shapes/sites that do not fit `model`.
    pub fn load(path: &Path, model: &impl AdapterHost, base_sha256: &str) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |m: String| Error::input(format!("{}: {m}", path.display()));
        let (_, md) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let meta = md
            .metadata()
            .clone()
            .ok_or_else(|| bad("no adapter metadata".into()))?;
        let get = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| bad(format!("metadata key `{k}` missing")))
        };
        if get("format")? != "evosam-lora-v1" {
            return Err(bad("not an evosam LoRA adapter (format)".into()));
        }
        let base = get("base_sha256")?;
        if base != base_sha256 {
            return Err(Error::Weights(format!(
                "{}: adapter was trained on base weights {base}, but the loaded base weights are {base_sha256}",
                path.display()
            )));
        }
        let rank: usize = get("rank")?
            .parse()
            .map_err(|_| bad("metadata `rank` is not an integer".into()))?;
        let alpha: f64 = get("alpha")?
            .parse()
            .map_err(|_| bad("metadata `alpha` is not a number".into()))?;
        let targets: Vec<String> = serde_json::from_str(&get("targets")?)
            .map_err(|_| bad("metadata `targets` is not a JSON list".into()))?;
        let config = LoraConfig {
            rank,
            alpha,
            targets,
        };
        let tensors = candle_core::safetensors::load_buffer(&bytes, &model.device())
            .map_err(|e| bad(e.to_string()))?;
        let shapes: HashMap<String, (usize, usize)> = model
            .linear_sites()
            .into_iter()
            .map(|(p, i, o)| (p, (i, o)))
            .collect();
        let mut sites = BTreeMap::new();
        for (name, a) in &tensors {
            let Some(p) = name.strip_suffix(".lora_A") else {
                continue;
            };
            let b = tensors
                .get(&format!("{p}.lora_B"))
                .ok_or_else(|| bad(format!("`{p}.lora_B` missing")))?;
            let &(i, o) = shapes
                .get(p)
                .ok_or_else(|| bad(format!("`{p}` is not a linear layer of this model")))?;
            if a.dims() != [rank, i] || b.dims() != [o, rank] {
                return Err(bad(format!(
                    "`{p}`: shapes {:?}/{:?} do not fit rank {rank}, {i}->{o}",
                    a.dims(),
                    b.dims()
                )));
            }
            let dt = model.dtype();
            sites.insert(
                p.to_string(),
                (
                    Var::from_tensor(&a.to_dtype(dt)?)?,
                    Var::from_tensor(&b.to_dtype(dt)?)?,
                ),
            );
        }
        if sites.is_empty() || sites.len() * 2 != tensors.len() {
            return Err(bad(
                "adapter tensors are not pairs of `.lora_A`/`.lora_B`".into()
            ));
        }
        Ok(Self {
            scale: config.scale(),
            config,
            sites,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }
}
