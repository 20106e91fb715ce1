"""Audit: every Great Expectations suite on a run's staged rows, before anything is published.

Frame and video rows get their vector, score and status checks; the run's bad input is measured
against the whole space (one row, :func:`input_rejects`); a space that replaces another version
of the same model is compared with it (vector drift and label shift).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from catalogfs import failpoints
from catalogfs.config import Config
from catalogfs.statuses import INPUT_STATUSES
from catalogfs.expectations.drift import label_shift, with_drift_cosine
from catalogfs.expectations import suites, vector_checks
from catalogfs.expectations.runner import ValidationOutcome, validate_candidates
from catalogfs.expectations.suites import SuiteParams, drift_suite, input_rejects_suite
from catalogfs.features.promotion import SpaceModel
from catalogfs.features.run_plan import RunPlan
from catalogfs.features.spaces import EmbeddingSpace
from catalogfs.features.staging import Staged
from catalogfs.features.tables import FRAME_EMBEDDINGS, REGISTRY, Registered, published

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Audit:
    """The outcome of a run's suites, where their report is, and warnings for the run summary."""

    outcome: ValidationOutcome
    report_dir: Path
    warnings: list[str] = field(default_factory=list)


def audit_staged(spark: SparkSession, cfg: Config, space: EmbeddingSpace, plan: RunPlan, staged: Staged,
                 current: SpaceModel | None, *, report_dir: Path) -> Audit:
    """Run every suite on ``staged``; results and Data Docs go under ``report_dir``."""
    failpoints.phase("embed.audit")
    params = suite_params(cfg, space, plan)
    candidates = staged.candidates  # the frame suite checks the run's new frames, not the whole state
    rejects, warnings = input_rejects(spark, plan, staged)
    run_checks = {"input_rejects": (rejects, input_rejects_suite(params))}
    reference = drift_reference(space, current)
    if reference is not None:
        log.info("checking drift against the current space %s", reference)
        # only the run's videos: the drift checks join on frame keys, and the space is the catalogue
        ref_rows = in_space_id(spark, cfg, reference).where(F.col("video_id").isin(staged.video_ids))
        run_checks["label_drift"] = (label_shift(staged.candidates, ref_rows), drift_suite(params))
        candidates = with_drift_cosine(candidates, ref_rows)
    checks = table_checks({**staged.rows, FRAME_EMBEDDINGS.name: candidates}, params)
    outcome = validate_candidates({**checks, **run_checks}, report_dir,
                                  driver_max_rows=cfg.validation.driver_max_rows)
    return Audit(outcome, report_dir, warnings)


def table_checks(rows: Mapping[str, Any], params: SuiteParams, *,
                 registry: tuple[Registered, ...] = REGISTRY) -> dict[str, tuple[Any, Any]]:
    """table → (its rows with the columns its suite tests, its suite), in registry order, for
    each table of ``rows`` (table → the staged rows to audit): the table's registry entry names the
    checks (:mod:`expectations.vector_checks`) and the suite (:mod:`expectations.suites`, given the
    rows' columns). A table the registry does not publish is refused (ValueError)."""
    unknown = sorted(set(rows) - {r.name for r in published(registry)})
    if unknown:
        raise ValueError(f"no published table in the registry is named {', '.join(unknown)}")
    checks = {}
    for entry in published(registry):
        df = rows.get(entry.name)
        if df is None:
            continue
        if entry.fill.checks:
            df = getattr(vector_checks, entry.fill.checks)(df)
        checks[entry.name] = (df, getattr(suites, entry.fill.suite)(params, tuple(df.columns)))
    return checks


def suite_params(cfg: Config, space: EmbeddingSpace, plan: RunPlan) -> SuiteParams:
    v = cfg.validation
    return SuiteParams(dim=space.dim, norm_tolerance=v.norm_tolerance, max_reject_rate=v.max_reject_rate,
                       expected_rows=plan.frames_to_embed, drift_min_cosine=v.drift_min_cosine,
                       drift_min_share=v.drift_min_share, max_label_shift=v.max_label_shift,
                       max_input_reject_rate=v.max_input_reject_rate,
                       max_input_rejects_per_run=v.max_input_rejects_per_run)


def input_rejects(spark: SparkSession, plan: RunPlan, staged: Staged) -> tuple[DataFrame, list[str]]:
    """One row: the share of the space's frame rows that will be bad input after this publish
    (``space_bad_input_share``; the published rows of unaffected videos plus the affected videos'
    next state) and this run's new bad-input frames (``run_bad_input``). Warns when every new
    frame of the run is bad input: those are published as status rows, the run succeeds."""
    bad = F.col("status").isin(sorted(INPUT_STATUSES))
    state = staged.state.agg(F.count(F.lit(1)).alias("n"), F.count(F.when(bad, 1)).alias("bad")).first()
    affected = [plan.per_video.get(v, (0, 0)) for v in staged.video_ids]
    total = plan.published_frames - sum(a[0] for a in affected) + int(state["n"])
    bad_total = plan.published_bad_input - sum(a[1] for a in affected) + int(state["bad"])
    counts: Mapping[str, int] = staged.stats.status_counts
    run_bad = sum(n for status, n in counts.items() if status in INPUT_STATUSES)
    warnings = []
    if run_bad and run_bad == staged.stats.frames_embedded:
        message = (f"all {run_bad} new frames of this run are bad input "
                   f"({', '.join(sorted(s for s in counts if s in INPUT_STATUSES))}): published as "
                   f"status rows; the space's share of bad input is {bad_total}/{max(total, 1)}")
        log.warning(message)
        warnings.append(message)
    row = spark.createDataFrame(
        [(total, bad_total, bad_total / total if total else 0.0, run_bad)],
        "space_frames long, space_bad_input long, space_bad_input_share double, run_bad_input long")
    return row, warnings


def in_space_id(spark: SparkSession, cfg: Config, space_id: str) -> DataFrame:
    """Published frame embeddings of one space."""
    return (spark.table(cfg.storage.qualified(FRAME_EMBEDDINGS.name))
            .where(F.col("embedding_space") == space_id))


def drift_reference(space: EmbeddingSpace, current: SpaceModel | None) -> str | None:
    """The current space, when it is another version of the same registered model with the same
    dimension (vectors of unrelated models are not comparable); else None."""
    if current is None or current.space == space.id:
        return None
    return current.space if (current.model_name, current.dim) == (space.model_name, space.dim) else None
