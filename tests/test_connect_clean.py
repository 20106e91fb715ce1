"""The job code runs over Spark Connect as well as over a classic (py4j) session: no SparkContext,
py4j, RDD, accumulator or ``DeltaTable`` call in ``features/`` and ``udfs/`` outside the few places
allowed below (checked from the source, no Spark). Also, without a JVM: the embed UDF reports its
forward passes and model loads in its output rows, and a MERGE is one SQL statement over a temp
view that is dropped whatever happens."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("features", "udfs")
# attributes and names that exist only in a classic session (or need the Delta Python API)
CLASSIC_ONLY = {"sparkContext", "_jvm", "_jsparkSession", "_jsc", "_jdf", "_jconf", "rdd", "accumulator",
                "broadcast", "SparkContext", "DeltaTable"}
CLASSIC_MODULES = ("py4j", "delta.tables", "pyspark.context", "pyspark.accumulators", "pyspark.broadcast")
# file → what it may use. read_only.py parses SQL with the JVM's parser (classic sessions only); the
# embed stage keeps a live-progress accumulator where the session is classic (guarded by is_connect).
ALLOWED = {
    "features/read_only.py": {"sparkContext", "_jvm", "_jsparkSession", "py4j"},
    "features/staging.py": {"sparkContext", "accumulator"},
}
GUARDED = {"features/staging.py"}  # each allowed use must sit on a line that tests is_connect(...)


def _uses(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in CLASSIC_ONLY:
            found.append((node.attr, node.lineno))
        elif isinstance(node, ast.Name) and node.id in CLASSIC_ONLY:
            found.append((node.id, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".")[0] if a.name.startswith("py4j") else a.name, node.lineno)
                      for a in node.names if a.name.startswith(CLASSIC_MODULES)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(CLASSIC_MODULES):
            found.append((node.module.split(".")[0] if node.module.startswith("py4j") else node.module,
                          node.lineno))
        if isinstance(node, ast.ImportFrom) and node.module:
            found += [(a.name, node.lineno) for a in node.names if a.name in CLASSIC_ONLY]
    return found


def test_features_and_udfs_use_no_classic_only_api():
    wrong = []
    for package in CHECKED:
        for path in sorted((ROOT / package).glob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            lines = path.read_text().splitlines()
            for name, line in _uses(path):
                if name not in ALLOWED.get(rel, set()):
                    wrong.append(f"{rel}:{line} uses {name}")
                elif rel in GUARDED and "is_connect(" not in lines[line - 1]:
                    wrong.append(f"{rel}:{line} uses {name} without an is_connect(...) guard on the line")
    assert not wrong, "classic-only Spark APIs (they fail over Spark Connect):\n" + "\n".join(wrong)


def test_the_check_sees_what_it_forbids(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from delta.tables import DeltaTable\nimport py4j.protocol\n"
                      "def f(spark, df):\n    spark.sparkContext.accumulator(0)\n    return df.rdd\n")
    assert {name for name, _ in _uses(sample)} == {"delta.tables", "DeltaTable", "py4j", "sparkContext",
                                                    "accumulator", "rdd"}


class _Engine:
    def embed(self, images):
        n = len(images)
        return SimpleNamespace(embeddings=[[0.0]] * n, statuses=["ok"] * n, errors=[None] * n,
                               label_names=[[]] * n, label_scores=[[]] * n, flags=[[]] * n,
                               flag_scores=[[]] * n, forward_passes=(n + 1) // 2)


@pytest.mark.parametrize("cached", [False, True])
def test_embed_udf_reports_passes_and_loads_in_its_rows(monkeypatch, tmp_path, cached):
    """Each batch puts its forward passes on its first row; the first non-empty batch of a worker
    that had to load the model carries model_load 1 — the sums are what the accumulators counted."""
    from catalogfs.udfs import spark_udf
    from catalogfs.udfs.engine import EngineOptions

    monkeypatch.setattr(spark_udf, "local_bundle_dir", lambda uri, cache: tmp_path)
    monkeypatch.setattr(spark_udf, "is_cached", lambda directory, options: cached)
    monkeypatch.setattr(spark_udf, "cached_engine", lambda directory, options: _Engine())
    monkeypatch.setattr(spark_udf, "pandas_udf", lambda ddl: lambda func: func)  # the bare function (no JVM)
    udf = spark_udf.make_embed_udf("file:///bundle", EngineOptions(), cache_dir=str(tmp_path))
    batches = [pd.Series([], dtype=object), pd.Series([b"a", b"b", b"c"]), pd.Series([b"d"])]
    out = list(udf(iter(batches)))
    assert [len(o) for o in out] == [0, 3, 1]
    assert [list(o["forward_passes"]) for o in out] == [[], [2, 0, 0], [1]]
    assert [list(o["model_load"]) for o in out] == [[], [0 if cached else 1, 0, 0], [0]]
    assert set(spark_udf.COUNTER_FIELDS) <= set(out[1].columns)
    assert all(f"{c}: int" in spark_udf.EMBED_RESULT_DDL for c in spark_udf.COUNTER_FIELDS)


class _Recorder:
    """A stand-in session and source DataFrame: records the SQL and the temp views."""

    def __init__(self, fail: bool = False) -> None:
        self.statements, self.views, self.dropped, self.selected, self.fail = [], [], [], None, fail
        self.catalog = SimpleNamespace(dropTempView=self.dropped.append)

    def sql(self, statement):
        self.statements.append(statement)
        if self.fail:
            raise RuntimeError("merge failed")

    def select(self, *columns):
        self.selected = columns
        return SimpleNamespace(createOrReplaceTempView=self.views.append)


@pytest.mark.parametrize("fail", [False, True])
def test_merge_is_one_sql_statement_over_a_dropped_temp_view(monkeypatch, fail):
    from catalogfs.features import delta_writer
    from catalogfs.features.tables import FEATURE_VERSIONS

    rec = _Recorder(fail)
    monkeypatch.setattr(delta_writer, "check_schema", lambda *a, **k: None)
    storage = SimpleNamespace(qualified=lambda name: f"db.{name}")

    def merge():
        delta_writer.merge_rows(rec, storage, FEATURE_VERSIONS, rec, update_condition="s.x > t.x",
                                delete_scope="t.`a` IN ('1')")
    if fail:
        with pytest.raises(RuntimeError):
            merge()
    else:
        merge()
    columns = [f.name for f in FEATURE_VERSIONS.schema.fields]
    (view,) = rec.views
    assert view.startswith("_catalogfs_merge_") and rec.dropped == [view] and list(rec.selected) == columns
    (statement,) = rec.statements
    assert statement.startswith(f"MERGE INTO db.{FEATURE_VERSIONS.name} AS t USING {view} AS s ON ")
    assert "WHEN MATCHED AND (s.x > t.x) THEN UPDATE SET " in statement
    assert f"WHEN NOT MATCHED THEN INSERT ({', '.join(f'`{c}`' for c in columns)})" in statement
    assert statement.endswith("WHEN NOT MATCHED BY SOURCE AND (t.`a` IN ('1')) THEN DELETE")
    assert all(f"`{c}` = s.`{c}`" in statement for c in columns)
