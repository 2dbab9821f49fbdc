#!/usr/bin/env python3
"""Reports import cycles between the modules of a Rust crate.

    python3 scripts/module-cycles.py manager/src [core/src src ...]

Every `crate::a::b` and `super::x` path in a file's code (comments left out) is an edge from
the file's module to the module it names. An edge is lifted to the two siblings under the
modules' nearest common parent: `crate::handoffs::listener` naming `crate::error` is the edge
`handoffs -> error` at the top, and the edge `listener -> server` inside `handoffs` if it names
`crate::handoffs::server`. A module naming its own parent or child is not an edge (a parent
declares and re-exports its children). A cycle at any level, between two files of one folder
or between two folders, is reported, and the script exits 1.

Why: a module that only points one way can be read, tested and moved on its own; two that
point at each other are one module in two files.
"""

import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_of(root, path):
    """The module path of a file under `root`, as a tuple (`()` for the crate root)."""
    rel = os.path.relpath(path, root)[: -len(".rs")]
    parts = rel.split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text):
    """The code without `//` comments (doc comments included) and `/* */` blocks."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"//.*$", "", line) for line in text.splitlines())


def paths_in(code):
    """Every path the code names from the crate root or the parent, as written: `crate::a::b`,
    `super::a`, and the items of a group `crate::{a, b::c}` (one level of braces)."""
    found = []
    for m in re.finditer(r"\b(crate|super)((?:::" + IDENT + r")*)(::\{)?", code):
        head = [m.group(1)] + [p for p in m.group(2).split("::") if p]
        if m.group(3):
            depth, i = 1, m.end()
            while i < len(code) and depth:
                depth += {"{": 1, "}": -1}.get(code[i], 0)
                i += 1
            inner = code[m.end() : i - 1]
            # Top-level items of the group only; nested groups name deeper items of the
            # same first module, which is all an edge needs.
            inner = re.sub(r"\{[^{}]*\}", "", inner)
            for item in inner.split(","):
                segs = re.findall(IDENT, item.split(" as ")[0])
                found.append(head + segs)
        else:
            found.append(head)
    return found


def resolve(module, path, modules):
    """The longest known module that `path` (written inside `module`) names, or None."""
    if path[0] == "crate":
        base, rest = (), path[1:]
    else:
        base, rest = module, list(path)
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    full = base + tuple(rest)
    for n in range(len(full), -1, -1):
        if full[:n] in modules:
            return full[:n]
    return None


def lift(a, b):
    """The edge between the siblings under the nearest common parent of `a` and `b`, or
    None when one contains the other."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n == len(a) or n == len(b):
        return None
    return a[: n + 1], b[: n + 1]


def cycles(edges):
    """Strongly connected components of more than one node (Tarjan)."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def check(root):
    files = []
    for dirpath, _, names in os.walk(root):
        files += [os.path.join(dirpath, n) for n in names if n.endswith(".rs")]
    # main.rs is a crate of its own beside lib.rs: its `crate::` is itself.
    files = [f for f in files if os.path.relpath(f, root) != "main.rs"]
    modules = {module_of(root, f) for f in files}
    edges = {}
    for f in sorted(files):
        me = module_of(root, f)
        with open(f, encoding="utf-8") as fh:
            code = strip_comments(fh.read())
        for path in paths_in(code):
            target = resolve(me, path, modules)
            if target is None:
                continue
            edge = lift(me, target)
            if edge:
                edges.setdefault(edge, f)
    found = cycles(edges)
    name = lambda m: "::".join(m) or "crate"
    for comp in found:
        members = set(comp)
        print(f"{root}: cycle between {', '.join(name(m) for m in comp)}:")
        for (a, b), f in sorted(edges.items()):
            if a in members and b in members:
                print(f"    {name(a)} -> {name(b)}  ({os.path.relpath(f)})")
    if not found:
        print(f"{root}: no import cycle between modules ({len(modules)} modules, "
              f"{len(edges)} edges between siblings)")
    return not found


def main(args):
    if not args:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    ok = all([check(root) for root in args])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
