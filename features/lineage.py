"""The lineage table ``feature_versions``: one row per publish attempt of a space, written from
what Delta shows, and repaired for runs that died between their last MERGE and their row.

Statuses: ``published`` (every table of the publish committed), ``rejected`` (the gate failed;
nothing written), ``skipped`` (Delta skipped one of the run's MERGEs), ``interrupted`` (a run that
stopped after committing some of its tables, found by a later run), ``promoted`` (the space
became current, see :mod:`features.promotion`). ``table_versions`` are the versions the run's own
commits have — never another run's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from catalogfs.config import Config
from features import delta_writer
from features.spaces import EmbeddingSpace
from features.tables import FEATURE_VERSIONS, FRAME_EMBEDDINGS, PUBLISHED_TABLES, VIDEO_EMBEDDINGS, VIDEO_LABELS
from catalogfs.statuses import RunStatus

log = logging.getLogger(__name__)

# Commits of each table looked at for runs that never wrote their lineage row: crash repair is
# about the last few runs, and reading the whole history would grow with the table's age.
REPAIR_HISTORY = 100
_EVERY_PUBLISH = {FRAME_EMBEDDINGS.name, VIDEO_EMBEDDINGS.name, VIDEO_LABELS.name}
# A run's own lineage row replaces one a repair wrote for it (never a promotion row).
_SAME_ATTEMPT = ("t.run_id = s.run_id AND t.embedding_space = s.embedding_space "
                 f"AND t.status <> '{RunStatus.PROMOTED}' AND s.status <> '{RunStatus.PROMOTED}'")


@dataclass(frozen=True)
class Attempt:
    """What one run did to one space, as a lineage row records it."""

    run_id: str
    status: str  # published, rejected, skipped, interrupted
    table_versions: dict[str, int]
    frames_embedded: int = 0
    validation_success: bool | None = None
    validation_report: str | None = None
    failed_expectations: list[str] | None = None
    note: str | None = None


def record_lineage(spark: SparkSession, cfg: Config, space: EmbeddingSpace, attempt: Attempt, *,
                   started: datetime) -> None:
    """Write ``attempt``'s row to ``feature_versions`` (replacing a row a crash repair wrote for it)."""
    row = {
        "run_id": attempt.run_id, "embedding_space": space.id, "model_name": space.model_name,
        "model_version": space.model_version, "model_uri": f"models:/{space.model_name}/{space.model_version}",
        "preprocess_hash": space.preprocess_hash, "dim": space.dim, "metric": space.metric,
        "status": attempt.status,
        "validation_success": None if attempt.validation_success is None else str(attempt.validation_success).lower(),
        "validation_report": attempt.validation_report,
        "failed_expectations": json.dumps(attempt.failed_expectations) if attempt.failed_expectations else None,
        "table_versions": json.dumps(attempt.table_versions, sort_keys=True),
        "frames_embedded": attempt.frames_embedded, "note": attempt.note,
        "started_at": started, "finished_at": datetime.now(timezone.utc),
    }
    df = spark.createDataFrame([row], FEATURE_VERSIONS.schema)
    delta_writer.upsert_rows(spark, cfg.storage, FEATURE_VERSIONS, df, on=_SAME_ATTEMPT)


def unrecorded_runs(spark: SparkSession, cfg: Config, space: EmbeddingSpace) -> dict[str, dict[str, int]]:
    """Runs whose MERGE commits into this space's tables (found in the tables' recent history by
    the run id in their commit metadata) have no lineage row: run id → table → version."""
    storage = cfg.storage
    commits: dict[str, dict[str, int]] = {}
    for table in PUBLISHED_TABLES:
        if not spark.catalog.tableExists(storage.qualified(table.name)):
            continue
        for c in delta_writer.run_commits(spark, storage, table.name, limit=REPAIR_HISTORY):
            if c["operation"] == "MERGE" and c.get("embedding_space") == space.id and c.get("run_id"):
                commits.setdefault(c["run_id"], {})[table.name] = c["version"]
    if not commits:
        return {}
    known = {r["run_id"] for r in spark.table(storage.qualified(FEATURE_VERSIONS.name))
             .where(F.col("run_id").isin(sorted(commits))).select("run_id").collect()}
    return {run: versions for run, versions in commits.items() if run not in known}


def repair_lineage(spark: SparkSession, cfg: Config, space: EmbeddingSpace, *, run_id: str) -> list[str]:
    """Write the missing lineage rows of runs that committed to this space and then died (killed
    after their last MERGE, or between tables): ``published`` when every table of a publish has
    their commit, else ``interrupted``, with the versions their commits have. Returns those runs."""
    missing = unrecorded_runs(spark, cfg, space)
    for dead, versions in sorted(missing.items()):
        complete = _EVERY_PUBLISH <= set(versions)
        report = cfg.storage.reports_dir / dead / "validation"
        attempt = Attempt(run_id=dead, status=RunStatus.PUBLISHED if complete else RunStatus.INTERRUPTED, table_versions=versions,
                          validation_success=True, validation_report=str(report) if report.exists() else None,
                          note=f"recovered by run {run_id}: the run stopped after its "
                               f"{'publish' if complete else 'commits to ' + ', '.join(sorted(versions))}, "
                               f"before writing this row")
        try:
            record_lineage(spark, cfg, space, attempt, started=datetime.now(timezone.utc))
        except Exception as exc:  # noqa: BLE001 - a repair must never fail the run that found it
            log.warning("could not record the lineage of run %s: %s", dead, str(exc).splitlines()[0][:300])
            continue
        log.warning("run %s committed to space %s but never wrote its lineage: recorded as %s (tables %s)",
                    dead, space.id, attempt.status, versions)
    return sorted(missing)
