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
    frames_version: int | None = None  # the version of ``frames`` the run planned on


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
        "frames_version": attempt.frames_version,
        "started_at": started, "finished_at": datetime.now(timezone.utc),
    }
    df = spark.createDataFrame([row], FEATURE_VERSIONS.schema)
    delta_writer.upsert_rows(spark, cfg.storage, FEATURE_VERSIONS, df, on=_SAME_ATTEMPT)


def recent_commits(spark: SparkSession, cfg: Config) -> dict[str, list[dict]]:
    """The newest :data:`REPAIR_HISTORY` commits of each published table (oldest first), read once
    per run for crash repair and for the plan's check that only runs changed the space's rows."""
    storage = cfg.storage
    return {table.name: delta_writer.run_commits(spark, storage, table.name, limit=REPAIR_HISTORY)
            for table in PUBLISHED_TABLES if spark.catalog.tableExists(storage.qualified(table.name))}


# Delta operations that change a table's rows; every other one (OPTIMIZE, VACUUM, SET TBLPROPERTIES,
# ADD CONSTRAINT, ADD COLUMNS, ...) leaves them as they were.
DATA_OPERATIONS = {"WRITE", "DELETE", "UPDATE", "MERGE", "RESTORE", "TRUNCATE", "STREAMING UPDATE",
                   "CREATE TABLE AS SELECT", "REPLACE TABLE AS SELECT", "CREATE OR REPLACE TABLE AS SELECT",
                   "REPLACE TABLE", "CREATE OR REPLACE TABLE"}


@dataclass(frozen=True)
class Checkpoint:
    """The space's newest complete run that recorded what it planned on: the next run's plan
    looks only at what changed in ``frames`` after ``frames_version``."""

    run_id: str
    frames_version: int
    table_versions: dict[str, int]


def last_checkpoint(spark: SparkSession, cfg: Config, space: EmbeddingSpace) -> Checkpoint | None:
    """The published run of ``space`` with the newest recorded ``frames_version`` (None: no such run:
    the space's first run, or only runs of a version that did not record it)."""
    rows = (spark.table(cfg.storage.qualified(FEATURE_VERSIONS.name))
            .where((F.col("embedding_space") == space.id) & (F.col("status") == RunStatus.PUBLISHED)
                   & F.col("frames_version").isNotNull())
            .orderBy(F.col("frames_version").desc(), F.col("finished_at").desc())
            .select("run_id", "frames_version", "table_versions").limit(1).collect())
    if not rows:
        return None
    r = rows[0]
    return Checkpoint(r["run_id"], int(r["frames_version"]), json.loads(r["table_versions"] or "{}"))


def changed_outside_runs(checkpoint: Checkpoint, commits: dict[str, list[dict]]) -> str | None:
    """Why the space's published rows may have changed since ``checkpoint`` other than by runs (a
    DELETE, UPDATE, RESTORE or overwrite someone made by hand, or history too long to tell), or
    None: every data commit since the checkpoint's own is a run's MERGE."""
    for table, since in sorted(checkpoint.table_versions.items()):
        newer = [c for c in commits.get(table, []) if c["version"] > since]
        if len(commits.get(table, [])) >= REPAIR_HISTORY and commits[table][0]["version"] > since + 1:
            return f"{table} has more than {REPAIR_HISTORY} commits since version {since}"
        for c in newer:
            if c["operation"] in DATA_OPERATIONS and not (c["operation"] == "MERGE" and c.get("run_id")):
                return f"{table} version {c['version']} is a {c['operation']} not made by a catalogfs run"
    return None


def unrecorded_runs(spark: SparkSession, cfg: Config, space: EmbeddingSpace,
                    recent: dict[str, list[dict]] | None = None) -> dict[str, dict[str, int]]:
    """Runs whose MERGE commits into this space's tables (found in the tables' recent history by
    the run id in their commit metadata) have no lineage row: run id → table → version.
    ``recent``: :func:`recent_commits`, when the caller has read them already."""
    storage = cfg.storage
    commits: dict[str, dict[str, int]] = {}
    for table, table_commits in (recent if recent is not None else recent_commits(spark, cfg)).items():
        for c in table_commits:
            if c["operation"] == "MERGE" and c.get("embedding_space") == space.id and c.get("run_id"):
                commits.setdefault(c["run_id"], {})[table] = c["version"]
    if not commits:
        return {}
    known = {r["run_id"] for r in spark.table(storage.qualified(FEATURE_VERSIONS.name))
             .where(F.col("run_id").isin(sorted(commits))).select("run_id").collect()}
    return {run: versions for run, versions in commits.items() if run not in known}


def repair_lineage(spark: SparkSession, cfg: Config, space: EmbeddingSpace, *, run_id: str,
                   recent: dict[str, list[dict]] | None = None) -> list[str]:
    """Write the missing lineage rows of runs that committed to this space and then died (killed
    after their last MERGE, or between tables): ``published`` when every table of a publish has
    their commit, else ``interrupted``, with the versions their commits have. Returns those runs.
    A recovered row records no ``frames_version``: the next plan does not start from it."""
    missing = unrecorded_runs(spark, cfg, space, recent)
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
