"""Run suites against candidate DataFrames and keep the results as JSON reports.

Where a candidate set is small enough (``driver_max_rows``), only the columns its suite tests are
collected to the driver (one Spark job) and Great Expectations validates them with pandas; larger
sets are validated by Spark (several jobs per suite). Both give the same results: the columns the
suites test are computed in Spark either way (see :mod:`expectations.vector_checks`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402
from pyspark.sql import DataFrame  # noqa: E402

log = logging.getLogger(__name__)

# Great Expectations keeps process-global state (its YAML handler among it) that is not safe to use
# from two threads at once; runs publishing concurrently from one process validate in turn.
_GX_LOCK = threading.Lock()


@dataclass
class ValidationOutcome:
    success: bool
    failures: list[str] = field(default_factory=list)
    reports: dict[str, str] = field(default_factory=dict)
    engines: dict[str, str] = field(default_factory=dict)  # table → "pandas" (on the driver) or "spark"
    data_docs: str | None = None

    @property
    def summary(self) -> str:
        return "passed" if self.success else "failed: " + "; ".join(self.failures)


def _describe_failure(table: str, result) -> str:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k in ("column", "column_list", "value", "min_value",
                                                               "max_value", "value_set", "mostly")}
    details = result.result or {}
    if "unexpected_count" in details:
        seen = f"{details.get('unexpected_count')} of {details.get('element_count')} rows unexpected"
        sample = details.get("partial_unexpected_list")
        if sample:
            seen += f", e.g. {sample[:3]}"
    else:
        seen = f"observed {details.get('observed_value')!r}"
    return f"{table}: {config.type} {kwargs} — {seen}"


def suite_columns(suite: "gx.ExpectationSuite") -> list[str]:
    """The columns the expectations of ``suite`` read, in order of first use."""
    columns: list[str] = []
    for expectation in suite.expectations:
        kwargs = expectation.configuration.kwargs
        names = [kwargs.get(k) for k in ("column", "column_A", "column_B")] + list(kwargs.get("column_list") or [])
        columns.extend(n for n in names if n and n not in columns)
    return columns


def on_driver(df: DataFrame, suite: "gx.ExpectationSuite", max_rows: int):
    """The columns of ``df`` that ``suite`` tests, as pandas, when ``df`` has at most ``max_rows``
    rows; else None. Columns the suite names but ``df`` lacks are left out (the suite then fails
    on them, as it would on Spark)."""
    if max_rows <= 0:
        return None
    columns = [c for c in suite_columns(suite) if c in df.columns] or [df.columns[0]]
    rows = df.select(*columns).limit(max_rows + 1).toPandas()
    return rows if len(rows) <= max_rows else None


def validate_candidates(candidates: Mapping[str, tuple[DataFrame, "gx.ExpectationSuite"]],
                        report_dir: Path, *, driver_max_rows: int = 0) -> ValidationOutcome:
    """Validate each (DataFrame, suite) with Great Expectations.

    A candidate set of at most ``driver_max_rows`` rows is validated on the driver (its tested
    columns collected, GE's pandas engine); larger ones, or all with ``driver_max_rows=0``, by
    Spark. Keeps, under ``report_dir``: ``<table>.json`` (the results), ``summary.json``, and a
    file-backed GE project in ``gx/`` whose Data Docs (HTML) show every suite and result.
    """
    with _GX_LOCK:
        return _validate(candidates, report_dir, driver_max_rows)


def _validate(candidates: Mapping[str, tuple[DataFrame, "gx.ExpectationSuite"]], report_dir: Path,
              driver_max_rows: int) -> ValidationOutcome:
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    report_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(report_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    sources: dict[str, object] = {}

    def source(kind: str):
        if kind not in sources:
            sources[kind] = (context.data_sources.add_pandas(name="candidates_driver") if kind == "pandas"
                             else context.data_sources.add_spark(name="candidates"))
        return sources[kind]

    outcome = ValidationOutcome(success=True)
    for table, (df, suite) in candidates.items():
        rows = on_driver(df, suite, driver_max_rows)
        data = df if rows is None else rows
        batch = (source("spark" if rows is None else "pandas").add_dataframe_asset(name=table)
                 .add_batch_definition_whole_dataframe(f"{table}_all"))
        suite = context.suites.add(suite)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{table}_validation", data=batch, suite=suite))
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"{table}_checkpoint", validation_definitions=[definition], result_format="SUMMARY"))
        run = checkpoint.run(batch_parameters={"dataframe": data})
        result = next(iter(run.run_results.values()))
        path = report_dir / f"{table}.json"
        path.write_text(json.dumps(result.to_json_dict(), indent=2, default=str))
        outcome.reports[table] = str(path)
        outcome.engines[table] = "spark" if rows is None else "pandas"
        if not result.success:
            outcome.success = False
            outcome.failures.extend(_describe_failure(table, r) for r in result.results if not r.success)
    context.build_data_docs()  # once for all suites (a per-checkpoint action rebuilds the site each time)
    docs = report_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    outcome.data_docs = str(docs) if docs.exists() else None
    summary = {"success": outcome.success, "failures": outcome.failures, "reports": outcome.reports,
               "engines": outcome.engines, "data_docs": outcome.data_docs}
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return outcome
