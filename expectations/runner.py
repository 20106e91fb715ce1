"""Run suites against candidate DataFrames and keep the results as JSON reports."""

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


def validate_candidates(candidates: Mapping[str, tuple[DataFrame, "gx.ExpectationSuite"]],
                        report_dir: Path) -> ValidationOutcome:
    """Validate each (DataFrame, suite) with Great Expectations.

    Keeps, under ``report_dir``: ``<table>.json`` (the results), ``summary.json``, and a file-backed
    GE project in ``gx/`` whose Data Docs (HTML) show every suite and result.
    """
    with _GX_LOCK:
        return _validate(candidates, report_dir)


def _validate(candidates: Mapping[str, tuple[DataFrame, "gx.ExpectationSuite"]], report_dir: Path) -> ValidationOutcome:
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    report_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(report_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_spark(name="candidates")
    outcome = ValidationOutcome(success=True)
    for table, (df, suite) in candidates.items():
        batch = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe(f"{table}_all")
        suite = context.suites.add(suite)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{table}_validation", data=batch, suite=suite))
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"{table}_checkpoint", validation_definitions=[definition], result_format="SUMMARY",
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")]))
        run = checkpoint.run(batch_parameters={"dataframe": df})
        result = next(iter(run.run_results.values()))
        path = report_dir / f"{table}.json"
        path.write_text(json.dumps(result.to_json_dict(), indent=2, default=str))
        outcome.reports[table] = str(path)
        if not result.success:
            outcome.success = False
            outcome.failures.extend(_describe_failure(table, r) for r in result.results if not r.success)
    docs = report_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    outcome.data_docs = str(docs) if docs.exists() else None
    summary = {"success": outcome.success, "failures": outcome.failures, "reports": outcome.reports,
               "data_docs": outcome.data_docs}
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return outcome
