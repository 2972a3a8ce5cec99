#!/usr/bin/env python3
"""Lists the import graph of a crate's top-level modules and fails on a circle.

    tools/module_cycles.py runtime/src

A module depends on another when its code (not its comments, not its tests)
names `crate::other`. Submodules count as their top-level module.
"""
import collections
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "runtime/src"
deps = collections.defaultdict(set)
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.relpath(os.path.join(root, f), src)
        top = path.split(os.sep)[0].removesuffix(".rs")
        if top == "lib" or path.endswith("tests.rs"):
            continue
        code = open(os.path.join(root, f)).read().split("#[cfg(test)]")[0]
        code = "\n".join(l for l in code.splitlines() if not l.lstrip().startswith("//"))
        for m in re.finditer(r"crate::(\w+)", code):
            name = m.group(1)
            if name != top and os.path.exists(os.path.join(src, name + ".rs")) or os.path.isdir(os.path.join(src, name)):
                if name != top:
                    deps[top].add(name)
for k in sorted(deps):
    print(f"{k} -> {', '.join(sorted(deps[k]))}")

# Depth-first search for a circle.
state, stack = {}, []
def visit(n):
    state[n] = 1
    stack.append(n)
    for d in sorted(deps.get(n, ())):
        if state.get(d) == 1:
            cycle = stack[stack.index(d):] + [d]
            sys.exit("import circle: " + " -> ".join(cycle))
        if d not in state:
            visit(d)
    stack.pop()
    state[n] = 2
for n in sorted(deps):
    if n not in state:
        visit(n)
print("no import circle")
