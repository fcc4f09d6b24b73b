"""The layer table of docs/architecture.md holds: every module's imports (those inside functions too) go to its own
layer or a lower one, and no modules import each other around a circle."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"


def layer_table(text: str) -> dict[str, tuple[int, str]]:
    """Module prefix -> (rank, layer), from the rows `| rank | layer | `a`, `b` | ... |` of the page's table."""
    table: dict[str, tuple[int, str]] = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if m:
            for prefix in re.findall(r"`([\w.]+)`", m.group(3)):
                table[prefix] = (int(m.group(1)), m.group(2))
    return table


def modules() -> dict[str, Path]:
    """Every module of the package, and the composition root app.py."""
    found = {"app": ROOT / "app.py"}
    for path in sorted((ROOT / "specviz").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The package modules `name` imports anywhere in its file: `from a.b import c` names a.b.c when c is a module,
    else a.b."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:
                    out.add(sub)
                elif base in known:
                    out.add(base)
    out.discard(name)
    return out


def layer_of(module: str, table: Mapping[str, tuple[int, str]]) -> tuple[int, str] | None:
    """The layer of the longest table prefix that contains the module."""
    best = max((p for p in table if module == p or module.startswith(p + ".")), key=len, default=None)
    return table[best] if best else None


def upward(graph: Mapping[str, set[str]], table: Mapping[str, tuple[int, str]]) -> list[str]:
    """Every import of a higher layer, or of another layer of the same rank."""
    bad = []
    for mod, deps in sorted(graph.items()):
        rank, layer = layer_of(mod, table) or (None, None)
        for dep in sorted(deps):
            drank, dlayer = layer_of(dep, table) or (None, None)
            if rank is None or drank is None:
                continue  # unlisted modules have their own test
            if drank > rank or (drank == rank and dlayer != layer):
                bad.append(f"{mod} ({layer}) imports {dep} ({dlayer})")
    return bad


def circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def table() -> dict[str, tuple[int, str]]:
    t = layer_table(DOC.read_text(encoding="utf-8"))
    assert len(t) >= 9, f"docs/architecture.md's layer table was not found or is too short: {t}"
    return t


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, mods) for name, path in mods.items()}


def test_every_module_has_a_layer(table, graph):
    assert [m for m in graph if layer_of(m, table) is None] == []


def test_no_module_imports_a_higher_layer(table, graph):
    assert upward(graph, table) == []


def test_no_import_circles(graph):
    assert circles(graph) == []


def test_the_checker_catches_an_upward_import_a_peer_import_and_a_circle(table):
    """The checks above can fail: a core module importing the UI, lab importing bench, and a two-module circle."""
    graph = {
        "specviz.core.engine": {"specviz.ui.render"},
        "specviz.lab.batch": {"specviz.bench.suite"},
        "specviz.proposers.ngram": {"specviz.proposers.jacobi"},
        "specviz.proposers.jacobi": {"specviz.proposers.ngram"},
    }
    assert upward(graph, table) == [
        "specviz.core.engine (core) imports specviz.ui.render (ui)",
        "specviz.lab.batch (lab) imports specviz.bench.suite (bench)",
    ]
    assert circles(graph) == [["specviz.proposers.jacobi", "specviz.proposers.ngram"]]


def test_imports_inside_functions_and_relative_imports_count(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from specviz.ui import render\n    from . import sibling\n")
    got = imports("specviz.core.mod", src, {"specviz.ui.render", "specviz.ui", "specviz.core.sibling"})
    assert got == {"specviz.ui.render", "specviz.core.sibling"}


def test_both_model_wrappers_satisfy_the_cores_model_protocol():
    """The engine and the proposers see models only through core.model.LanguageModel; LM and StaticLM both give it."""
    import torch

    from specviz.backends.lm import LM
    from specviz.backends.static_lm import StaticLM
    from specviz.backends.tiny import tiny_model
    from specviz.core.model import LanguageModel

    model = tiny_model(16, seed=0, dtype=torch.float32)
    for wrapped in (LM(model, "lm"), StaticLM(model, "static", context=64, pad=4)):
        assert isinstance(wrapped, LanguageModel), type(wrapped).__name__
        assert isinstance(wrapped.with_layers([0]), LanguageModel)
