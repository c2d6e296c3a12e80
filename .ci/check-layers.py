#!/usr/bin/env python3
"""Fails if the TURN core touches the runtime, sockets or the clock, or if
the modules of src/ import each other in a circle (file by file, tests
left out): a layer imports only layers below it."""
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
FORBIDDEN_IN_CORE = re.compile(r"\btokio\b|\bUdpSocket\b|\bTcpStream\b|Instant::now|SystemTime")


def code_of(path):
    """The file's text up to its test module."""
    text = path.read_text()
    return text.split("#[cfg(test)]\nmod tests")[0]


def module_of(path):
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return "::".join(parts)


files = {
    module_of(p): code_of(p)
    for p in SRC.rglob("*.rs")
    if p.name not in ("tests.rs", "testing.rs", "lib.rs", "main.rs")
    and "tests" not in p.relative_to(SRC).parts
}
problems = []
for module, code in files.items():
    if module.startswith("turn"):
        for n, line in enumerate(code.splitlines(), 1):
            if FORBIDDEN_IN_CORE.search(line):
                problems.append(f"src/{module.replace('::', '/')}: line {n}: {line.strip()}")

edges = {m: set() for m in files}
for module, code in files.items():
    own = module.split("::")
    for path in re.findall(r"crate::([a-z_]+(?:::[a-z_]+)*)", code):
        parts = path.split("::")
        # The longest prefix that names a file of ours is what is imported.
        target = next(
            ("::".join(parts[:i]) for i in range(len(parts), 0, -1) if "::".join(parts[:i]) in files),
            None,
        )
        if target and target != module and not "::".join(own).startswith(target + "::"):
            edges[module].add(target)
    # `super::x` and `use x::` inside a folder module point at siblings.
    parent = own[:-1] if not (SRC / pathlib.Path(*own) / "mod.rs").exists() else own
    for name in re.findall(r"\bsuper::([a-z_]+)", code):
        target = "::".join(parent[:-1] + [name]) if parent == own else "::".join(parent + [name])
        if target in files and target != module:
            edges[module].add(target)

state = {}


def visit(module, stack):
    state[module] = "open"
    stack.append(module)
    for target in sorted(edges[module]):
        if state.get(target) == "open":
            problems.append("import circle: " + " -> ".join(stack[stack.index(target):] + [target]))
        elif target not in state:
            visit(target, stack)
    stack.pop()
    state[module] = "done"


for module in sorted(files):
    if module not in state:
        visit(module, [])

for problem in problems:
    print(problem)
sys.exit(1 if problems else 0)
