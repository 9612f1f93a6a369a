#!/usr/bin/env python3
"""One comparison table for the few-shot stress suite (scripts/stress.sh): for every experiment folder under
OUT (results/stress), the strategies' ACC, BWT, FWT (mean +- std over seeds x orders), and EvoSAM's checks
against the suite's criteria (docs/evosam-stress.md):

- ACC >= best non-oracle baseline (joint excluded) - 0.01, or the gap within seed noise (paired exact Wilcoxon
  signed-rank test on the per-run ACC, two-sided p > 0.1 with n >= 6 runs);
- BWT >= -0.01 and FWT >= -0.01;
- matcher accuracy on seen tasks >= 0.95 (extras.csv route_seen_own at the final stage; pseudo-sites of one
  device or protocol may be indistinguishable, which the table shows rather than hides);
- no task's final Dice below the base model's (R[T][j] >= R[0][j] for every task j, every run).

Writes OUT/stress.md and OUT/stress.csv and prints the Markdown. Standard library only.
"""
import csv
import itertools
import math
import statistics
import sys
from pathlib import Path

REF = "evosam"
EXCLUDED = {"evosam", "evosam-oracle", "joint", "zeroshot"}


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def ms(values):
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.3f} ± {sd:.3f}"


def wilcoxon_exact(diffs):
    """Two-sided exact p of the Wilcoxon signed-rank test (zeros dropped, average ranks for ties)."""
    d = [x for x in diffs if x != 0.0]
    n = len(d)
    if n == 0:
        return 1.0
    order = sorted(range(n), key=lambda i: abs(d[i]))
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and abs(d[order[j + 1]]) == abs(d[order[i]]):
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    w_plus = sum(r for r, x in zip(ranks, d) if x > 0)
    total = sum(ranks)
    observed = min(w_plus, total - w_plus)
    count = 0
    for signs in itertools.product((0, 1), repeat=n):
        w = sum(r for r, s in zip(ranks, signs) if s)
        if min(w, total - w) <= observed + 1e-12:
            count += 1
    return min(1.0, count / 2**n)


def experiment(folder):
    metrics = read(folder / "metrics.csv")
    matrix = read(folder / "matrix.csv")
    extras = read(folder / "extras.csv") if (folder / "extras.csv").is_file() else []
    runs = {}
    for r in metrics:
        runs.setdefault(r["strategy"], {})[(r["seed"], r["order"])] = r
    n_tasks = max(int(r["eval_index"]) for r in matrix)
    rows = []
    for strat, rr in runs.items():
        rows.append({
            "strategy": strat,
            "runs": len(rr),
            "acc": ms(num(r["acc"]) for r in rr.values()),
            "bwt": ms(num(r["bwt"]) for r in rr.values()),
            "fwt": ms(num(r["fwt"]) for r in rr.values()),
        })
    checks = {}
    if REF in runs:
        ref = runs[REF]
        acc = lambda s: statistics.mean(num(r["acc"]) for r in runs[s].values())
        rivals = [s for s in runs if s not in EXCLUDED]
        best = max(rivals, key=acc) if rivals else None
        if best:
            keys = sorted(set(ref) & set(runs[best]))
            diffs = [num(ref[k]["acc"]) - num(runs[best][k]["acc"]) for k in keys]
            gap = statistics.mean(diffs)
            p = wilcoxon_exact(diffs)
            ok = gap >= -0.01 or (len(keys) >= 6 and p > 0.1)
            checks["ACC vs best"] = (ok, f"{gap:+.3f} vs {best} (p = {p:.3f}, n = {len(keys)})")
        bwt = [num(r["bwt"]) for r in ref.values()]
        fwt = [num(r["fwt"]) for r in ref.values() if num(r["fwt"]) is not None]
        checks["BWT"] = (statistics.mean(bwt) >= -0.01, f"{statistics.mean(bwt):+.3f}")
        if fwt:
            checks["FWT"] = (statistics.mean(fwt) >= -0.01, f"{statistics.mean(fwt):+.3f}")
        own = [num(e["value"]) for e in extras
               if e["strategy"] == REF and e["key"] == "route_seen_own" and int(e["stage"]) == n_tasks]
        if own:
            m = statistics.mean(own)
            checks["matcher accuracy"] = (m >= 0.95, f"{m:.3f}")
        cell = {}
        for r in matrix:
            if r["strategy"] == REF:
                cell[(r["seed"], r["order"], int(r["stage"]), r["eval_task"])] = num(r["dice"])
        worst = min(
            (cell[(s, o, n_tasks, t)] - cell[(s, o, 0, t)], t)
            for (s, o, k, t) in cell if k == n_tasks and (s, o, 0, t) in cell
        )
        checks["every task >= base"] = (worst[0] >= 0.0, f"worst {worst[0]:+.3f} ({worst[1]})")
    return rows, checks


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "results/stress")
    folders = sorted(p.parent for p in out.glob("*/metrics.csv"))
    if not folders:
        sys.exit(f"no results under {out} (run scripts/stress.sh first)")
    md, flat = [], []
    for folder in folders:
        rows, checks = experiment(folder)
        md.append(f"### {folder.name}\n\n| strategy | runs | ACC | BWT | FWT |\n|---|---:|---:|---:|---:|")
        for r in rows:
            md.append(f"| {r['strategy']} | {r['runs']} | {r['acc']} | {r['bwt']} | {r['fwt']} |")
            flat.append({"experiment": folder.name, **r})
        if checks:
            md.append("\nEvoSAM: " + "; ".join(
                f"{k} {'PASS' if ok else 'FAIL'} ({v})" for k, (ok, v) in checks.items()))
        md.append("")
    text = "\n".join(md)
    (out / "stress.md").write_text(text + "\n")
    with open(out / "stress.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["experiment", "strategy", "runs", "acc", "bwt", "fwt"])
        w.writeheader()
        w.writerows(flat)
    print(text)


if __name__ == "__main__":
    main()
