#!/usr/bin/env python3
"""Reference Dice / NSD / HD95 with SciPy's exact distance transform, for the Rust tests (src/metrics/surface).

Reads JSON from stdin: {"cases": [{"dims": [...], "spacing": [...], "tau": t, "pred": [0/1...], "gt": [...]}]}
(row-major, last axis fastest) and prints {"scores": [[dice, nsd, hd95], ...]}. The definitions are those of
src/metrics/surface.rs (MONAI's on voxel borders): border = mask minus its erosion by the cross-shaped structuring
element with the outside as background; distances with `sampling = spacing`; HD95 = max of the two directed 95th
percentiles (linear interpolation); both empty -> (1, 1, 0); one empty -> (0, 0, grid diagonal).
"""
import json
import sys

import numpy as np
from scipy import ndimage


def scores(dims, spacing, tau, pred, gt):
    p = np.array(pred, dtype=bool).reshape(dims)
    g = np.array(gt, dtype=bool).reshape(dims)
    np_, ng = p.sum(), g.sum()
    if np_ + ng == 0:
        return [1.0, 1.0, 0.0]
    dice = 2.0 * (p & g).sum() / (np_ + ng)
    if np_ == 0 or ng == 0:
        diag = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(dims, spacing))))
        return [float(dice), 0.0, diag]
    st = ndimage.generate_binary_structure(len(dims), 1)
    bp = p & ~ndimage.binary_erosion(p, structure=st, border_value=0)
    bg = g & ~ndimage.binary_erosion(g, structure=st, border_value=0)
    dp = ndimage.distance_transform_edt(~bg, sampling=spacing)[bp]
    dg = ndimage.distance_transform_edt(~bp, sampling=spacing)[bg]
    nsd = ((dp <= tau).sum() + (dg <= tau).sum()) / (len(dp) + len(dg))
    hd95 = max(np.percentile(dp, 95), np.percentile(dg, 95))
    return [float(dice), float(nsd), float(hd95)]


def main():
    req = json.load(sys.stdin)
    out = [scores(c["dims"], c["spacing"], c["tau"], c["pred"], c["gt"]) for c in req["cases"]]
    json.dump({"scores": out}, sys.stdout)


if __name__ == "__main__":
    main()
