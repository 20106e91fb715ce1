"""The architecture, checked from the source (no imports run, no Spark): the layers import only
downwards, no module cycle exists, the engine stays free of Spark, and functions stay short.

Layers, lowest first (a module may import its own layer and the ones below):

0. ``catalogfs`` leaf utilities: errors, statuses, config, redaction, failpoints, progress, file modes,
   packaged resources;
1. ``catalogfs`` platform adapters: the Spark builder, MLflow tracking, the Delta jars;
2. ``catalogfs.udfs`` (the inference engine) and ``catalogfs.expectations`` (the suites) — neither
   imports the other;
3. ``catalogfs.features`` (tables, the write-audit-publish run);
4. ``catalogfs.jobs`` (the application: CLI, job runner, run report, sample data, the jobs themselves);
5. ``catalogfs`` itself (``__init__``): the public API, imported lazily from the layers below.

Each layer lives in its own folder of the repository (``catalogfs/``, ``udfs/`` …), mapped into the one
``catalogfs`` package by setup.cfg's ``package_dir``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# repository folder → the package it is mapped to
FOLDERS = {"catalogfs": "catalogfs", "udfs": "catalogfs.udfs", "expectations": "catalogfs.expectations",
           "features": "catalogfs.features", "jobs": "catalogfs.jobs"}
PACKAGES = tuple(FOLDERS.values())
LEAF = {"catalogfs.errors", "catalogfs.statuses", "catalogfs.config", "catalogfs.redaction",
        "catalogfs.failpoints", "catalogfs.progress", "catalogfs.permissions", "catalogfs.packaged"}
# udfs modules that may touch Spark: the pandas UDF wrapper only
SPARK_IN_UDFS = {"catalogfs.udfs.spark_udf"}
MAX_FUNCTION_LINES = 60


def layer(module: str) -> tuple[int, str]:
    """(rank, group): modules may import lower ranks, and their own rank only within their group."""
    if module == "catalogfs":
        return (5, "api")
    parts = module.split(".")
    sub = parts[1] if len(parts) > 1 else ""
    ranks = {"udfs": (2, "udfs"), "expectations": (2, "expectations"), "features": (3, "features"),
             "jobs": (4, "jobs")}
    if sub in ranks:
        return ranks[sub]
    return (0, "leaf") if module in LEAF else (1, "platform")


def package_of(module: str) -> str | None:
    """The mapped package ``module`` belongs to (``catalogfs.features.x`` → ``catalogfs.features``)."""
    for package in sorted(PACKAGES, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    return None


def modules() -> dict[str, Path]:
    return {f"{package}.{p.stem}".removesuffix(".__init__"): p
            for folder, package in FOLDERS.items() for p in sorted((ROOT / folder).glob("*.py"))}


def imports(path: Path) -> list[tuple[str, int]]:
    """Every module imported anywhere in ``path`` (top level or inside functions), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            # `from features import delta_writer` imports the module features.delta_writer
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def project_imports(path: Path, known: set[str]) -> list[tuple[str, int]]:
    return [(name, line) for name, line in imports(path) if name in known and package_of(name)]


def test_imports_follow_the_layer_order():
    known = set(modules()) | set(PACKAGES)
    wrong = []
    for module, path in modules().items():
        rank, group = layer(module)
        for target, line in project_imports(path, known):
            if target in PACKAGES:  # `from features import x` is checked through features.x
                continue
            t_rank, t_group = layer(target)
            if t_rank > rank or (t_rank == rank and t_group != group):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} (layer {t_rank} {t_group} "
                             f"above or beside layer {rank} {group})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    mods = modules()
    known = set(mods)
    graph = {m: sorted({t for t, _ in project_imports(p, known) if t in known and t != m}) for m, p in mods.items()}
    cycles = _strongly_connected(graph)
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_the_engine_and_the_leaf_utilities_do_not_import_spark():
    wrong = []
    for module, path in modules().items():
        spark_free = (module.startswith("catalogfs.udfs.") and module not in SPARK_IN_UDFS) or module in LEAF
        if spark_free:
            wrong += [f"{path.relative_to(ROOT)}:{line} imports {name}" for name, line in imports(path)
                      if name.split(".")[0] in ("pyspark", "delta")]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", ["features", "udfs"])
def test_functions_stay_short(package):
    long = []
    for path in sorted((ROOT / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} has {lines} lines")
    assert not long, "\n".join(long)


def test_the_checks_see_a_wrong_import(tmp_path):
    """The checker itself: an upward import and a cycle in a made-up module graph are found."""
    path = tmp_path / "m.py"
    path.write_text("from catalogfs.jobs.cli import main\n\ndef f():\n    from catalogfs.features import publish\n")
    assert ("catalogfs.jobs.cli", 1) in imports(path) and ("catalogfs.features.publish", 4) in imports(path)
    assert layer("catalogfs.udfs.engine") < layer("catalogfs.jobs.cli")
    assert _strongly_connected({"a": ["b"], "b": ["a"], "c": ["a"]}) == [["a", "b"]]


def _strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out
