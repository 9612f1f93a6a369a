#!/usr/bin/env python3
"""Time a running `evosam annotate` server through its HTTP API (what the page does), standard library only.

    python3 scripts/annotate_timing.py 'http://127.0.0.1:8765/?token=...' [--n 20]

Prints the median (and min/max) of N page loads (page + state + image + mask, as the page fetches them) and of N
mask updates after a click (POST /api/prompt -> PNG overlay: one decoder pass on the cached embedding). The clicks
are logged in the study like any other (use a throw-away --out and --annotator).
"""
import argparse
import json
import statistics
import time
import urllib.parse
import urllib.request


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--n", type=int, default=20)
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    token = urllib.parse.parse_qs(u.query)["token"][0]
    base = f"{u.scheme}://{u.netloc}"

    def req(path, body=None):
        r = urllib.request.Request(base + path, headers={"x-evosam-token": token})
        if body is not None:
            r.data = json.dumps(body).encode()
            r.add_header("content-type", "application/json")
        with urllib.request.urlopen(r, timeout=600) as resp:
            return resp.read()

    st = json.loads(req("/api/state"))  # waits for the encoder pass of the open case
    slot, w, h = st["slot"], st["width"], st["height"]
    loads = []
    for _ in range(a.n):
        t0 = time.perf_counter()
        req("/?token=" + token)
        json.loads(req("/api/state"))
        req(f"/api/image/{slot}")
        req(f"/api/mask/{slot}")
        loads.append(time.perf_counter() - t0)
    req("/api/prompt", {"slot": slot, "kind": "box", "x": w * 0.25, "y": h * 0.25, "x1": w * 0.75, "y1": h * 0.75})
    clicks = []
    for i in range(a.n):
        x = w * (0.3 + 0.4 * ((i * 7) % 11) / 10)
        y = h * (0.3 + 0.4 * ((i * 3) % 7) / 6)
        t0 = time.perf_counter()
        png = req("/api/prompt", {"slot": slot, "kind": "click", "x": x, "y": y, "label": i % 2 ^ 1})
        clicks.append(time.perf_counter() - t0)
        assert png[:4] == b"\x89PNG"
    for name, v in [("page load (page + state + image + mask)", loads), ("mask update after a click", clicks)]:
        ms = [x * 1000 for x in v]
        print(f"{name}: median {statistics.median(ms):.1f} ms over {len(ms)} (min {min(ms):.1f}, max {max(ms):.1f})")
    print(f"image {w}x{h}, slot {slot}")


if __name__ == "__main__":
    main()
