"""The architecture, checked from the source (no imports run, no Spark): the layers import only
downwards, no module cycle exists, the engine stays free of Spark, functions stay short, and every
error class lives in ``catalogfs.errors`` and is imported from there.

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
# Exceptions that never reach a user, defined where they are raised and caught (control flow):
# the GPU decoder's "take the PIL path" signal, and Ivy's failure, which set-up reports as a warning.
INTERNAL_EXCEPTIONS = {"catalogfs.udfs.gpu_decode.NotForTensorPath", "catalogfs.jars.JarResolutionError"}
# where error classes may be imported from: their module, and the public API that re-exports some
ERROR_HOMES = {"catalogfs.errors", "catalogfs"}


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


@pytest.mark.parametrize("package", sorted(FOLDERS))
def test_functions_stay_short(package):
    long = []
    for path in sorted((ROOT / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} has {lines} lines")
    assert not long, "\n".join(long)


def error_classes() -> set[str]:
    """The names of the classes defined in catalogfs/errors.py."""
    tree = ast.parse((ROOT / "catalogfs" / "errors.py").read_text())
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


def test_error_classes_are_defined_in_catalogfs_errors():
    """A class deriving from an error of catalogfs.errors or from a built-in exception is defined
    there (users import every error from one place), unless it is internal control flow."""
    import builtins

    bases_of_errors = error_classes() | {name for name in dir(builtins)
                                          if isinstance(getattr(builtins, name), type)
                                          and issubclass(getattr(builtins, name), BaseException)}
    wrong = []
    for module, path in modules().items():
        if module == "catalogfs.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and f"{module}.{node.name}" not in INTERNAL_EXCEPTIONS:
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                if bases & bases_of_errors:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not wrong, "define these in catalogfs/errors.py:\n" + "\n".join(wrong)


def wrong_error_imports(path: Path, errors: set[str]) -> list[str]:
    """Lines of ``path`` that take an error class of catalogfs.errors from another module
    (``from catalogfs.features.x import SomeError``, ``x.SomeError``) or offer one (``__all__``)."""
    wrong = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            if path.parent.name != "catalogfs" or path.name != "__init__.py":  # the public API offers some
                wrong += [f"{node.lineno}: __all__ offers {c.value}" for c in ast.walk(node.value)
                          if isinstance(c, ast.Constant) and c.value in errors]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module not in ERROR_HOMES:
            wrong += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names if a.name in errors]
        elif isinstance(node, ast.Attribute) and node.attr in errors:
            owner = ast.unparse(node.value)
            if owner not in ERROR_HOMES | {"errors"}:
                wrong.append(f"{node.lineno}: {owner}.{node.attr}")
    return sorted(wrong, key=lambda line: int(line.split(":")[0]))


def test_errors_are_imported_from_catalogfs_errors():
    errors = error_classes()
    wrong = [f"{path.relative_to(ROOT)}:{line}"
             for folder in (*FOLDERS, "tests", "bench", "scripts") for path in sorted((ROOT / folder).rglob("*.py"))
             for line in wrong_error_imports(path, errors)]
    assert not wrong, "import these from catalogfs.errors:\n" + "\n".join(wrong)


def test_the_checks_see_a_wrong_import(tmp_path):
    """The checker itself: an upward import and a cycle in a made-up module graph are found."""
    path = tmp_path / "m.py"
    path.write_text("from catalogfs.jobs.cli import main\n\ndef f():\n    from catalogfs.features import publish\n")
    assert ("catalogfs.jobs.cli", 1) in imports(path) and ("catalogfs.features.publish", 4) in imports(path)
    assert layer("catalogfs.udfs.engine") < layer("catalogfs.jobs.cli")
    assert _strongly_connected({"a": ["b"], "b": ["a"], "c": ["a"]}) == [["a", "b"]]
    path.write_text("from catalogfs.features.publish import PublishConflict, publish_staged\n"
                    "from catalogfs.errors import InputError\nimport catalogfs\n"
                    "raise ann.VectorIndexError(catalogfs.ConfigError)\n__all__ = ['f', 'BundleError']\n")
    assert wrong_error_imports(path, error_classes()) == [
        "1: from catalogfs.features.publish import PublishConflict", "4: ann.VectorIndexError",
        "5: __all__ offers BundleError"]


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
