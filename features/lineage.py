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
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from catalogfs import failpoints
from catalogfs.config import Config
from catalogfs.features import delta_writer, integrity
from catalogfs.features.spaces import EmbeddingSpace
from catalogfs.features.tables import FEATURE_VERSIONS, PUBLISHED_TABLES, every_publish
from catalogfs.statuses import RunStatus

log = logging.getLogger(__name__)

# Commits of each table looked at for runs that never wrote their lineage row: crash repair is
# about the last few runs, and reading the whole history would grow with the table's age.
REPAIR_HISTORY = 100
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # MLflow run ids (hex); never a path
_EVERY_PUBLISH = every_publish()  # frame_embeddings, video_embeddings, video_labels
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
    failpoints.phase("lineage.record")
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


def changed_outside_runs(spark: SparkSession, cfg: Config, checkpoint: Checkpoint,
                         commits: dict[str, list[dict]]) -> str | None:
    """Why the space's published rows may have changed since ``checkpoint`` other than by runs, or
    None: every commit of its tables since the checkpoint's own is provably harmless — a MERGE that
    a lineage row records, or a metadata-only operation (:func:`features.integrity.commit_problem`).
    Anything else — a DELETE, UPDATE, RESTORE or overwrite made by hand, a commit with no
    ``commitInfo``, a MERGE of no recorded run — or history too long to tell is the reason.
    ``commits``: :func:`recent_commits`, read after :func:`repair_lineage` recorded crashed runs."""
    too_long = history_too_long(checkpoint, commits)
    if too_long:
        return too_long
    newer = integrity.commits_after(commits, checkpoint.table_versions)
    recorded = integrity.recorded_commits(spark, cfg.storage, integrity.merge_run_ids(newer))
    problems = integrity.outside_commits(newer, recorded)
    if not problems:
        return None
    return problems[0] + (f" (and {len(problems) - 1} more such commits)" if len(problems) > 1 else "")


def history_too_long(checkpoint: Checkpoint, commits: dict[str, list[dict]]) -> str | None:
    """Why ``commits`` (the newest :data:`REPAIR_HISTORY` of each table) cannot show every commit
    since ``checkpoint``, or None."""
    for table, since in sorted(checkpoint.table_versions.items()):
        if len(commits.get(table, [])) >= REPAIR_HISTORY and commits[table][0]["version"] > since + 1:
            return f"{table} has more than {REPAIR_HISTORY} commits since version {since}"
    return None


def unrecorded_runs(spark: SparkSession, cfg: Config, space: EmbeddingSpace,
                    recent: dict[str, list[dict]] | None = None) -> dict[str, dict[str, int]]:
    """Runs whose MERGE commits into this space's tables (found in the tables' recent history by
    the run id in their commit metadata) have no lineage row: run id → table → version.
    ``recent``: :func:`recent_commits`, when the caller has read them already.

    Only runs of ours: every embed or relabel run validates before it publishes and leaves its
    report in ``<reports>/<run_id>/validation``. A MERGE naming a run without one (metadata
    written by someone else) is not recovered: it is logged, and stays a commit no run made
    (:func:`changed_outside_runs`)."""
    storage = cfg.storage
    commits: dict[str, dict[str, int]] = {}
    for table, table_commits in (recent if recent is not None else recent_commits(spark, cfg)).items():
        for c in table_commits:
            run = c.get("run_id")
            if c["operation"] == "MERGE" and c.get("embedding_space") == space.id and isinstance(run, str) and run:
                commits.setdefault(run, {})[table] = c["version"]
    if not commits:
        return {}
    known = {r["run_id"] for r in spark.table(storage.qualified(FEATURE_VERSIONS.name))
             .where(F.col("run_id").isin(sorted(commits))).select("run_id").collect()}
    missing = {run: versions for run, versions in commits.items() if run not in known}
    validated = {r for r in missing if _RUN_ID.fullmatch(r) and (storage.reports_dir / r / "validation").is_dir()}
    for run in sorted(set(missing) - validated):
        log.warning("MERGE commits naming run %s (%s) have no lineage row, and no run of this data root by that "
                    "id validated anything: not a catalogfs run, not recovered", run,
                    ", ".join(f"{t} version {v}" for t, v in sorted(missing.pop(run).items())))
    return missing


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
