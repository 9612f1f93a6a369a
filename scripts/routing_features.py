#!/usr/bin/env python3
"""Can the frozen encoder tell the stress suite's Kvasir-SEG pseudo-sites apart from a few images each?

    scripts/routing_features.py [OUT_DIR]      # default results/routing-features

Lists up to 40 images of each pseudo-site (frame width 560-580, 615-630, >= 700 px, as
experiments/stress/polyp-sites-*.toml; seeded), computes their LiteMedSAM features with
`cargo run --release --locked --example routing_features`, then, 100 times per size, draws n = 3, 5, 10 training
images per site and routes the rest with (a) the ridge matcher of the evosam preset (one-hot targets, bias,
lambda 1e-3, class-balanced) and (b) the nearest standardised class mean, on each feature summary: the spatial
mean EvoSAM routes on, the spatial standard deviation, both, the four quadrant means, all. Prints the mean
class-balanced routing accuracy. Needs NumPy (scripts/python-ref.sh makes a Python with it).
"""
import os
import random
import struct
import subprocess
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.environ.get("EVOSAM_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
SITES = {"kvasir-570": (560, 580), "kvasir-622": (615, 630), "kvasir-wide": (700, 4000)}
SUMMARIES = {"mean (EvoSAM)": slice(0, 256), "std": slice(256, 512), "mean+std": slice(0, 512),
             "quadrant means": slice(512, 1536), "all": slice(0, 1536)}


def jpeg_size(path):
    d = open(path, "rb").read()
    i = 2
    while i + 9 < len(d):
        if d[i] != 0xFF:
            i += 1
            continue
        if d[i + 1] in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h, w = struct.unpack(">HH", d[i + 5:i + 9])
            return w, h
        i += 2 + struct.unpack(">H", d[i + 2:i + 4])[0]
    raise ValueError(f"{path}: no JPEG frame header")


def ridge(x, y, lam=1e-3):
    a = np.hstack([x, np.ones((len(x), 1))])
    w = 1.0 / np.bincount(y)[y]
    w *= len(y) / w.sum()
    g = (a * w[:, None]).T @ a
    q = (a * w[:, None]).T @ np.eye(y.max() + 1)[y]
    sol = np.linalg.solve(g + lam * np.eye(len(g)), q)
    return lambda t: np.argmax(np.hstack([t, np.ones((len(t), 1))]) @ sol, 1)


def nearest_mean(x, y):
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    centres = np.array([z[y == k].mean(0) for k in range(y.max() + 1)])
    return lambda t: np.argmin(((((t - mu) / sd)[:, None, :] - centres[None]) ** 2).sum(2), 1)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "results", "routing-features")
    os.makedirs(out, exist_ok=True)
    images = os.path.join(DATA, "polyp", "Kvasir-SEG", "images")
    names = sorted(os.listdir(images))
    by_site = {s: [n for n in names if lo <= jpeg_size(os.path.join(images, n))[0] <= hi]
               for s, (lo, hi) in SITES.items()}
    rng = random.Random(0)
    listing = os.path.join(out, "kvasir.tsv")
    with open(listing, "w") as f:
        for s, ns in by_site.items():
            for n in rng.sample(ns, min(40, len(ns))):
                f.write(f"{s}\t{os.path.join(images, n)}\n")
    feats = os.path.join(out, "kvasir.csv")
    if not os.path.exists(feats):
        subprocess.run(["cargo", "run", "--release", "--locked", "--quiet", "--example", "routing_features", "--",
                        listing, feats], cwd=ROOT, check=True)
    rows = [line.strip().split(",") for line in open(feats)]
    labels = sorted({r[0] for r in rows})
    y = np.array([labels.index(r[0]) for r in rows])
    x = np.array([[float(v) for v in r[3:]] for r in rows])
    print(f"images per pseudo-site: {dict(zip(labels, np.bincount(y).tolist()))}")
    print("| n per site | summary | ridge (the matcher) | nearest mean |\n|---:|---|---:|---:|")
    draws = np.random.default_rng(0)
    for n in (3, 5, 10):
        for name, cols in SUMMARIES.items():
            acc = {ridge: [], nearest_mean: []}
            for _ in range(100):
                train, test = [], []
                for k in range(len(labels)):
                    idx = draws.permutation(np.where(y == k)[0])
                    train += list(idx[:n])
                    test += list(idx[n:])
                for fit in acc:
                    pred = fit(x[train][:, cols], y[train])(x[test][:, cols])
                    acc[fit].append(np.mean([np.mean(pred[y[test] == k] == k) for k in range(len(labels))]))
            print(f"| {n} | {name} | {np.mean(acc[ridge]):.3f} | {np.mean(acc[nearest_mean]):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
