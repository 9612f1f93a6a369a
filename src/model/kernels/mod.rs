//! CPU kernels with hand-written backward passes, for the ops that dominate LiteMedSAM's forward pass and the
//! training steps that run thousands of times (the mask decoder on cached embeddings).
//!
//! Why: candle's autograd costs, for every node of the graph, a zero-filled gradient buffer plus an add on top of
//! the op's own backward work, and its matmul backward always computes both operand gradients (even for frozen
//! weights or constant inputs). On the decoder's 4 x 4096 x 256 image tokens that overhead dominated the step.
//! Each op here is one graph node and computes only the gradients that some variable needs (`track_op`):
//! - [`linear()`]: `act(x W^T + b)` (act: identity or erf-GELU), any leading dims or explicit rows;
//! - [`lora_linear()`]: the same plus `scale (x A^T) B^T` with W and b frozen constants (A, B train);
//! - [`add()`]: a sum whose gradient skips the constant side;
//! - [`attention()`]: multi-head scaled-dot-product attention on token-major (B, n, C) tensors;
//! - [`grouped_attention`]: many queries over a few keys in softmax groups whose outputs are summed (the
//!   decoder's image-to-token attention with its projections absorbed into the tokens);
//! - [`ln_act`]: layer norm over rows of `w.len()` values, optionally followed by GELU;
//! - [`readout_gelu`]: the last upscaling layer (linear + GELU) and the mask read-out as one node;
//! - [`bias_gelu`] / [`gelu()`]: erf-GELU with an optional bias;
//! - [`dwconv3x3`]: the encoder's depthwise 3x3 convolution, channels-last.
//!
//! Inference-only kernels (no backward pass; the layers call them when no gradient is tracked and fall back to
//! the ops above otherwise), which keep the encoder's large maps in cache: [`bottleneck`] (MBConv and patch
//! merging in bands of rows), [`tokens_plus`] (a cached embedding to the decoder's tokens), [`window_attention`] (TinyViT's windowed attention from the qkv map) and
//! [`conv3x3`] (the neck's dense conv as nine matmuls on the padded map). They multiply through [`gemm`].
//!
//! Every matrix product of the model on the CPU ends in [`gemm`] ([`matmul()`] for tensors, [`matmul::mm`] for
//! storages), whose results are the same bits on every instruction set, vector width and thread count
//! ([`tile`] has the register tiles); see `gemm.rs` for the rule a new kernel must keep.
//!
//! All work on contiguous CPU f32/f64 tensors; anything else falls back to candle's ops (same numbers). Generic
//! code is written once over [`float::Float`]; parallel work goes through [`par`] on rayon's pool. The module is
//! crate-private: the model's layers (`super::common`) are the interface.
//!
//! Dependencies point one way: `float`, `par` and `cpu` at the bottom, the ops above them, `lora_linear` on
//! `linear`; nothing here imports the model's layers.

pub(crate) mod add;
pub(crate) mod attention;
pub(crate) mod conv3x3;
pub(crate) mod cpu;
pub(crate) mod dwconv;
pub(crate) mod float;
pub(crate) mod gelu;
pub(crate) mod gemm;
pub(crate) mod grouped_attn;
pub(crate) mod layer_norm;
pub(crate) mod linear;
pub(crate) mod lora_linear;
pub(crate) mod matmul;
pub(crate) mod mbconv;
pub(crate) mod par;
pub(crate) mod readout;
pub(crate) mod tile;
pub(crate) mod tokens;
pub(crate) mod window_attn;

#[cfg(test)]
mod infer_tests;
#[cfg(test)]
pub(crate) mod tests;

pub(crate) use add::add;
pub(crate) use attention::{attention, attention_scaled};
pub(crate) use conv3x3::conv3x3;
pub(crate) use dwconv::dwconv3x3;
pub(crate) use gelu::{bias_gelu, gelu};
pub(crate) use grouped_attn::grouped_attention;
pub(crate) use layer_norm::ln_act;
pub(crate) use linear::linear;
pub(crate) use lora_linear::lora_linear;
pub(crate) use matmul::{broadcast_matmul, matmul};
pub(crate) use mbconv::bottleneck;
pub(crate) use readout::readout_gelu;
pub(crate) use tokens::tokens_plus;
pub(crate) use window_attn::window_attention;

/// Below this many output elements a fused op runs on the calling thread (thread hand-off costs more).
pub(crate) const PAR_MIN: usize = 1 << 15;
