"""Imports point down: bin -> train / inference / recipes -> backends / upstream / scoring -> data -> shared.

Parses every module of the package (no import is executed) and checks each `upmp.*` import
against the layer of the importing module. Sideways imports between sibling packages of one
layer (e.g. upstream -> scoring, backends.lap -> backends.upmp's internals is allowed only
within a package) and any import cycle fail with the offending module and line.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "upmp"

# Layer of each module (the longest matching prefix wins); a module may import modules of a
# strictly lower layer, or of its own group at the same layer.
LAYERS: List[Tuple[str, int, str]] = [
    ("upmp", 0, "shared"),                 # upmp/__init__.py: lazy re-exports only (checked below)
    ("upmp.errors", 0, "shared"),
    ("upmp.fileio", 0, "shared"),
    ("upmp.done", 0, "shared"),
    ("upmp.config", 1, "config"),
    ("upmp.metrics", 1, "metrics"),
    ("upmp.data", 2, "data"),
    ("upmp.upstream", 3, "upstream"),
    ("upmp.backends", 3, "backends"),
    ("upmp.losses", 3, "losses"),
    ("upmp.scoring", 3, "scoring"),
    ("upmp.embeddings", 4, "embeddings"),
    ("upmp.analysis", 4, "analysis"),
    ("upmp.checkpoint", 4, "checkpoint"),
    ("upmp.jobs", 4, "jobs"),
    ("upmp.results", 4, "results"),
    ("upmp.train", 5, "train"),
    ("upmp.inference", 5, "inference"),
    ("upmp.recipes", 5, "recipes"),
    ("upmp.stages", 5, "stages"),
    ("upmp.export", 6, "export"),
    ("upmp.bin", 9, "bin"),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> Tuple[int, str]:
    best = None
    for prefix, layer, group in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer, group)
    assert best is not None, f"{module}: not in LAYERS (add it to test/upmp/test_layering.py)"
    return best[1], best[2]


def upmp_imports(path: Path) -> List[Tuple[str, int, bool]]:
    """(imported module, line, at module level) for every `upmp` import of a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(n) for n in tree.body}
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base]
        else:
            continue
        for name in names:
            if name == "upmp" or name.startswith("upmp."):
                found.append((name, node.lineno, id(node) in top_level))
    return found


def modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_import_points_down():
    bad = []
    for mod, path in modules().items():
        if mod == "upmp":
            continue
        layer, group = layer_of(mod)
        for imported, line, _ in upmp_imports(path):
            if imported == "upmp":
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports the package root")
                continue
            other_layer, other_group = layer_of(imported)
            if other_layer < layer or other_group == group:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line}: {mod} ({group}, layer {layer}) imports "
                       f"{imported} ({other_group}, layer {other_layer})")
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_package_root_is_light():
    """`import upmp` imports no submodule at load time (the API is re-exported lazily)."""
    for imported, line, top in upmp_imports(PACKAGE / "__init__.py"):
        assert not top, f"upmp/__init__.py:{line}: imports {imported} at load time"


def test_no_import_cycles_at_module_level():
    graph: Dict[str, Set[str]] = {}
    mods = modules()
    for mod, path in mods.items():
        deps = set()
        for imported, _, top in upmp_imports(path):
            if not top:
                continue
            while imported not in mods and "." in imported:
                imported = imported.rpartition(".")[0]
            if imported in mods and imported != mod:
                deps.add(imported)
        graph[mod] = deps
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_layering_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The check itself: a data module importing the trainer is reported."""
    fake = tmp_path / "upmp" / "data"
    fake.mkdir(parents=True)
    (tmp_path / "upmp" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "bad.py").write_text("import os\nfrom upmp.train.trainer import train\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "upmp")
    try:
        test_every_import_points_down()
    except AssertionError as e:
        assert "upmp/data/bad.py:2: upmp.data.bad (data, layer 2) imports upmp.train.trainer" in str(e)
    else:
        raise AssertionError("the upward import was not reported")
