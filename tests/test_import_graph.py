"""The package's import graph: data flows forward through the stages, and nothing is circular.

Every ``import`` of a pathosae module is read with ``ast`` (inside functions and
``TYPE_CHECKING`` blocks too), so a dependency hidden in a function body counts like any other.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

import pathosae
from pathosae.pipeline import STAGES

ROOT = Path(pathosae.__file__).parent
# Stage packages in pipeline order; a module of one may import modules of itself or earlier ones.
STAGE_PACKAGES = ("cohort", "tiling", "embedding", "sae", "confounders", "edit", "saeception",
                  "report")
# The SAE registry imports its architectures to run their @register decorators: that is the one
# cycle allowed (registry -> an architecture module that imports the registry).
REGISTRY = "pathosae.sae.registry"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The pathosae modules a file imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pathosae"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pathosae"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if f"{node.module}.{a.name}" in modules)
    return {m for m in found if m in modules}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def stage_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGE_PACKAGES else None


def test_every_pipeline_stage_lives_in_a_stage_module_of_its_package() -> None:
    for stage in STAGES:
        module = stage.target.split(":")[0]
        assert module.endswith(".stage"), stage
        assert stage_package(module) is not None, stage
        assert callable(stage.load())


def test_no_module_imports_a_stage_module(graph: dict[str, set[str]]) -> None:
    """Stage modules only orchestrate: what another module needs lives in a library module."""
    stage_modules = {s.target.split(":")[0] for s in STAGES}
    offenders = sorted((m, t) for m, targets in graph.items() for t in targets if t in stage_modules)
    assert offenders == []


def test_no_stage_package_imports_a_later_one(graph: dict[str, set[str]]) -> None:
    backwards = []
    for module, targets in graph.items():
        own = stage_package(module)
        for target in targets:
            other = stage_package(target)
            if own and other and STAGE_PACKAGES.index(other) > STAGE_PACKAGES.index(own):
                backwards.append((module, target))
    assert sorted(backwards) == []


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module are the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    plugins = {m for m, targets in graph.items() if REGISTRY in targets}
    assert {"pathosae.sae.topk", "pathosae.sae.relu"} <= plugins
    pruned = {m: ts - plugins if m == REGISTRY else ts for m, ts in graph.items()}
    assert strongly_connected(pruned) == []


def test_the_checks_see_a_cycle_and_a_backward_import() -> None:
    """The checks above can fail: a planted cycle and a planted backward edge are found."""
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert stage_package("pathosae.edit.defaults") == "edit"
    assert STAGE_PACKAGES.index("saeception") > STAGE_PACKAGES.index("edit")


def test_production_stages_do_not_import_the_synthetic_generator(graph: dict[str, set[str]]) -> None:
    """Only ground-truth scoring (run when the config names a ground-truth folder) may import
    pathosae.synth; it does so inside the function that scores."""
    allowed = {"pathosae.confounders.truth", "pathosae.sae.run_training"}
    importers = defaultdict(set)
    for module, targets in graph.items():
        if module.startswith(("pathosae.synth", "pathosae.cli")):
            continue
        for target in targets:
            if target.startswith("pathosae.synth"):
                importers[module].add(target)
    assert set(importers) <= allowed, dict(importers)
    for module in allowed:
        tree = ast.parse(all_modules()[module].read_text(encoding="utf-8"))
        top_level = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert not any((n.module or "").startswith("pathosae.synth") for n in top_level), module
