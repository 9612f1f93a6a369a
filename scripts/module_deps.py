#!/usr/bin/env python3
"""Import cycles of the evosam crate, from the source text alone (no build needed).

    python3 scripts/module_deps.py            # report; exit 1 when top-level modules form a cycle
    python3 scripts/module_deps.py --edges    # also print every top-level arrow with one example file
    python3 scripts/module_deps.py --check    # also enforce the layer order of docs/ARCHITECTURE.md (exit 1)
    python3 scripts/module_deps.py --surface  # only count the library's public surface (no layering)

What counts as a dependency: a path `crate::a::b...` (in `use` lines, braces included, or inline), a
`super::...` path, and a bare `child::...` path to a module the file itself declares. Test code is left out:
files declared under `#[cfg(test)]` and everything from a file's first `#[cfg(test)]` + `mod` to its end.
Re-exports (`pub use a::X;`, in lib.rs or any module) are not dependencies of the re-exporting file: a path
through them resolves to the module that defines the item.

Two views:
- top-level modules (`spec`, `data`, `strategy`, ...): the layering the docs promise; any cycle is an error;
- files: strongly connected groups of files (a plus: a group means the files can only be read together).
"""
import os
import re
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
ARCHITECTURE = os.path.join(ROOT, "..", "docs", "ARCHITECTURE.md")


def documented_layers():
    """The layer list of docs/ARCHITECTURE.md: the fenced block after the line `<!-- layers -->`, lowest layer
    first, one layer per line (module names separated by spaces; text after `#` is a comment)."""
    text = open(ARCHITECTURE).read()
    at = text.find("<!-- layers -->")
    if at < 0:
        sys.exit("docs/ARCHITECTURE.md has no `<!-- layers -->` block")
    block = text[at:].split("```")[1]
    layers = []
    for line in block.split("\n"):
        names = line.split("#")[0].split()
        if names:
            layers.append(names)
    return layers


def layer_violations(top, layers):
    """Arrows that point up the documented order (a module may import its own layer and the layers below), and
    top-level modules the list does not name."""
    rank = {m: i for i, layer in enumerate(layers) for m in layer}
    problems = []
    for m in sorted({x for a in top for x in [a, *top[a]]} - set(rank)):
        problems.append(f"  module `{m}` is missing from the layer list in docs/ARCHITECTURE.md")
    for a in sorted(top):
        for b in sorted(top[a]):
            if a in rank and b in rank and rank[b] > rank[a]:
                problems.append(f"  {a} -> {b} points up the layers ({a} is layer {rank[a]}, {b} is layer {rank[b]}; e.g. {top[a][b]})")
    return problems


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return ()
    return tuple(rel)


def strip_tests(text):
    lines = text.split("\n")
    for i, l in enumerate(lines):
        if l.strip().startswith("#[cfg(test)]"):
            nxt = "\n".join(lines[i + 1 : i + 3])
            if re.match(r"\s*(pub(\(crate\))?\s+)?mod\s+\w+\s*\{", nxt):
                return "\n".join(lines[:i])
    return text


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"//.*$", "", l) for l in text.split("\n"))


def expand_use_groups(text):
    """`use crate::a::{b, c::d};` -> paths crate::a::b, crate::a::c::d (one level of braces, nested ok)."""
    out = []
    for m in re.finditer(r"\buse\s+([^;]+);", text, flags=re.S):
        out.extend(expand(m.group(1).replace("\n", " ").replace(" ", "")))
    return out


def expand(s):
    i = s.find("{")
    if i < 0:
        return [s]
    prefix, inner = s[:i], s[i + 1 : s.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    res = []
    for p in parts:
        if p:
            res.extend(prefix + q for q in expand(p))
    return res


def surface():
    """The library's public surface, counted from the source text: `pub` items outside the binary (src/cli,
    src/main.rs) and test files, root `pub mod`s, and the distinct library paths deeper than the root
    (`evosam::a::b`) that the binary, the integration tests and the examples name."""
    here = os.path.join(ROOT, "..")
    items = 0
    for d, _, fs in os.walk(ROOT):
        rel = os.path.relpath(d, ROOT)
        if rel == "cli" or rel.startswith("cli" + os.sep):
            continue
        for f in fs:
            if not f.endswith(".rs") or f == "main.rs" or "tests" in f:
                continue
            t = strip_tests(open(os.path.join(d, f)).read())
            items += len(re.findall(r"^\s*pub (?:fn|struct|enum|trait|type|const|static|mod|use)\b", t, flags=re.M))
    lib = open(os.path.join(ROOT, "lib.rs")).read()
    print(f"pub items in the library (test files left out): {items}")
    print(f"root `pub mod`s: {len(re.findall(r'^pub mod ', lib, flags=re.M))}")
    for name, roots in (("binary", [os.path.join(ROOT, "cli"), os.path.join(ROOT, "main.rs")]),
                        ("tests", [os.path.join(here, "tests")]), ("examples", [os.path.join(here, "examples")])):
        paths = set()
        for r in roots:
            walk = [(os.path.dirname(r), [], [os.path.basename(r)])] if os.path.isfile(r) else os.walk(r)
            for d, _, fs in walk:
                for f in fs:
                    if not f.endswith(".rs"):
                        continue
                    t = strip_comments(open(os.path.join(d, f)).read())
                    for m in re.finditer(r"\buse\s+(evosam[^;]+);", t, flags=re.S):
                        paths.update(expand(m.group(1).replace("\n", "").replace(" ", "")))
                    paths.update(re.findall(r"(?<![\w:])evosam(?:::\w+)+", t))
        deep = sorted({"::".join(p.split(" as ")[0].split("::")[:3]) for p in paths
                       if p.count("::") >= 2 and p.split("::")[1][:1].islower()})
        print(f"library paths below the root named by the {name}: {len(deep)}")
        if "-v" in sys.argv:
            for p in deep:
                print(f"    {p}")
    return 0


def main():
    if "--surface" in sys.argv:
        return surface()
    files = {}
    for d, _, fs in os.walk(ROOT):
        for f in fs:
            if f.endswith(".rs"):
                p = os.path.join(d, f)
                files[module_of(p)] = p
    if () in files and os.path.basename(files[()]) != "lib.rs":
        files[()] = os.path.join(ROOT, "lib.rs")
    modules = set(files)
    texts = {m: open(files[m]).read() for m in files}

    # test-only modules: declared as `#[cfg(test)] mod x;`
    test_mods = set()
    for m, t in texts.items():
        for mm in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\(crate\))?\s+)?mod\s+(\w+)\s*;", t):
            test_mods.add(m + (mm.group(1),))
    def is_test(m):
        return any(m[: i + 1] in test_mods for i in range(len(m)))

    # crate-root re-exports: name -> defining path
    root_alias = {}
    lib = strip_comments(texts.get((), ""))
    for m in re.finditer(r"\bpub\s+use\s+([^;]+);", lib, flags=re.S):
        for p in expand(m.group(1).replace("\n", " ").replace(" ", "")):
            p = p.replace("crate::", "")
            name = p.split("::")[-1].split(" as ")[-1]
            root_alias[name] = tuple(p.split("::")[:-1])

    def absolute(m, p):
        """A path written in module m -> (base module, remaining segments), or None for external paths."""
        segs = [x for x in p.split(" as ")[0].split("::") if x]
        children = {c[-1] for c in modules if c[:-1] == m and len(c) == len(m) + 1}
        if not segs:
            return None
        if segs[0] == "crate":
            return (), segs[1:]
        if segs[0] == "super":
            base, segs = m[:-1], segs[1:]
            while segs and segs[0] == "super":
                base, segs = base[:-1], segs[1:]
            return base, segs
        if segs[0] == "self":
            return m, segs[1:]
        if segs[0] in children:
            return m, segs
        return None

    # `pub use` re-exports per module: name -> (base, segments) of the item's real home
    reexports = defaultdict(dict)
    for m, t in texts.items():
        t = strip_comments(strip_tests(t))
        for mm in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", t, flags=re.S):
            for p in expand(mm.group(1).replace("\n", " ").replace(" ", "")):
                a = absolute(m, p)
                if a:
                    reexports[m][p.split(" as ")[-1].split("::")[-1]] = a

    def resolve(segs, depth=0):
        """The module that defines a path (tuple of segments), following re-exports."""
        for k in range(len(segs), -1, -1):
            if segs[:k] in modules or k == 0:
                mod = segs[:k]
                rest = segs[k:]
                if rest and rest[0] in reexports.get(mod, {}) and depth < 20:
                    base, tail = reexports[mod][rest[0]]
                    r = resolve(tuple(base) + tuple(tail), depth + 1)
                    if r is not None:
                        return r
                if k > 0:
                    return mod
        if segs and segs[0] in root_alias:
            return resolve(root_alias[segs[0]] + segs[1:], depth + 1) or ()
        return None

    edges = defaultdict(set)
    for m, t in texts.items():
        if is_test(m):
            continue
        t = strip_comments(strip_tests(t))
        # a facade's `pub use` is not a dependency: users of the name are sent to its real home instead
        t = re.sub(r"\bpub(?:\([^)]*\))?\s+use\s+[^;]+;", "", t, flags=re.S)
        children = {c[-1] for c in modules if c[:-1] == m and len(c) == len(m) + 1}
        paths = expand_use_groups(t)
        paths += re.findall(r"\b(?:crate|super)(?:::\w+)+", t)
        paths += [p for p in re.findall(r"(?<![\w:])(\w+(?:::\w+)+)", t) if p.split("::")[0] in children]
        for p in paths:
            p = p.split(" as ")[0]
            segs = [s for s in p.split("::") if s]
            if not segs:
                continue
            if segs[0] == "crate":
                base = ()
                segs = segs[1:]
            elif segs[0] == "super":
                base = m[:-1]
                segs = segs[1:]
                while segs and segs[0] == "super":
                    base, segs = base[:-1], segs[1:]
            elif segs[0] == "self":
                base, segs = m, segs[1:]
            elif segs[0] in children:
                base = m
            else:
                continue
            target = resolve(base + tuple(segs))
            if target is None:
                target = base
            if target != m and not is_test(target):
                edges[m].add(target)

    # top-level view
    top = defaultdict(dict)
    for a, bs in edges.items():
        for b in bs:
            ta, tb = (a[:1] or ("<root>",)), (b[:1] or ("<root>",))
            if ta != tb and tb != ("<root>",) and ta != ("<root>",):
                top[ta[0]].setdefault(tb[0], os.path.relpath(files[a], os.path.join(ROOT, "..")))
    if "--edges" in sys.argv:
        for a in sorted(top):
            for b in sorted(top[a]):
                print(f"  {a} -> {b}   (e.g. {top[a][b]})")
    top_sccs = [c for c in sccs({k: set(v) for k, v in top.items()}) if len(c) > 1]
    print(f"top-level modules: {len({x for a in top for x in [a, *top[a]]})}, arrows: {sum(len(v) for v in top.values())}")
    if top_sccs:
        for c in top_sccs:
            print("  CYCLE between top-level modules:", " <-> ".join(sorted(c)))
            for a in sorted(c):
                for b in sorted(top[a]):
                    if b in c:
                        print(f"    {a} -> {b}   (e.g. {top[a][b]})")
    else:
        print("  no cycle between top-level modules")

    # file view
    fsccs = [c for c in sccs({k: set(v) for k, v in edges.items()}) if len(c) > 1]
    print(f"files: {len([m for m in modules if not is_test(m)])} (test-only files left out), groups of files in a cycle: {len(fsccs)}")
    for c in sorted(fsccs, key=len, reverse=True):
        names = sorted(os.path.relpath(files[x], os.path.join(ROOT, "..")) for x in c)
        print(f"  {len(c)} files: {', '.join(names)}")
    status = 1 if top_sccs else 0
    if "--check" in sys.argv:
        layers = documented_layers()
        problems = layer_violations(top, layers)
        print(f"layers (docs/ARCHITECTURE.md): {' < '.join(', '.join(l) for l in layers)}")
        if problems:
            print("\n".join(problems))
            status = 1
        else:
            print("  every arrow points down the documented layers")
    return status


def sccs(g):
    """Tarjan's strongly connected components."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    nodes = set(g) | {b for v in g.values() for b in v}
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            out.append(comp)

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
