"""The import plan of docs/architecture.md, checked on the source: every import statement, those inside
functions included."""

import ast
from collections import defaultdict

import pytest

from conftest import REPO

PACKAGES = {"train": "feredge.train", "export": "feredge.export", "edge": "feredge.edge",
            "benchmarks": "feredge.benchmarks", "models": "feredge.models", "src/feredge": "feredge"}
# What a package may never import (docs/architecture.md, "What each folder may import").
FORBIDDEN = {
    "feredge.edge": ("tensorflow", "keras", "tf_keras", "feredge.train", "feredge.export", "feredge.benchmarks"),
    "feredge.train": ("feredge.export", "feredge.benchmarks"),
    "feredge.export": ("feredge.benchmarks",),
}
# Heavy optional libraries, and our modules that import Keras at their top: the only imports that may
# be deferred into a function. The cli also defers the optional extras' packages, one per subcommand.
HEAVY = ("keras", "tensorflow", "matplotlib", "gradio", "PIL", "onnx", "onnxruntime", "ai_edge_litert",
         "tflite_runtime", "tqdm", "tf2onnx", "psutil", "jax", "paho", "playwright",
         "feredge.train.models", "feredge.train.augment", "feredge.train.distill")
CLI_DEFERRED = ("feredge.train", "feredge.export", "feredge.benchmarks", "feredge.edge.gradio_app")
DEFERRED_ON_PURPOSE = {"feredge.benchmarks.rss"}  # imports after installing its TensorFlow block


def modules() -> dict[str, ast.Module]:
    out = {}
    for folder, prefix in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((prefix, *parts)).removesuffix(".__init__")
            out[name] = ast.parse(path.read_text(), str(path))
    return out


MODULES = modules()


def imports(tree: ast.Module):
    """(imported module, at module top?) for every import statement; `from pkg import mod` names pkg.mod."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            yield name, node in tree.body


def within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_what_the_plan_allows(package):
    bad = [(mod, name) for mod, tree in MODULES.items() if within(mod, [package])
           for name, _ in imports(tree) if within(name, FORBIDDEN[package])]
    assert not bad, f"{package} imports what docs/architecture.md forbids: {bad}"


def test_no_import_cycles():
    graph = defaultdict(set)
    for mod, tree in MODULES.items():
        graph[mod] |= {name for name, _ in imports(tree) if name in MODULES and name != mod}

    def reaches(start, goal):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    cycles = sorted({tuple(sorted((a, b))) for a in MODULES for b in graph[a] if reaches(b, a)})
    assert not cycles, f"modules importing each other: {cycles}"


def test_only_heavy_optional_imports_are_deferred():
    deferred = []
    for mod, tree in MODULES.items():
        if mod in DEFERRED_ON_PURPOSE:
            continue
        allowed = HEAVY + (CLI_DEFERRED if mod == "feredge.cli" else ())
        deferred += [(mod, name) for name, top in imports(tree)
                     if not top and not within(name, allowed) and name not in ("__future__",)]
    assert not deferred, f"imports inside functions that belong at the module's top: {deferred}"


def test_the_checks_see_a_forbidden_import():
    # The scan itself: an import of Keras inside a function is found.
    tree = ast.parse("def f():\n    import keras.layers\n    from feredge.train import data\n")
    assert [(n, top) for n, top in imports(tree)] == [("keras.layers", False), ("feredge.train.data", False)]
