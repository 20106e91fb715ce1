"""Retention: keep the last N versions of each table readable for time travel, VACUUM the rest.

Delta keeps every data file a past version needs until VACUUM removes files that were deleted
from the table longer ago than the retention window. Here the window is derived from the table's
own history — the commit time of the N-th newest version, rounded *up* to whole hours because
Delta's ``VACUUM … RETAIN n HOURS`` rounds to whole hours — so the last N versions always stay
readable, plus any version younger than that window. The transaction log is kept per
``delta.logRetentionDuration``.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from catalogfs.config import StorageConfig
from features.tables import ALL_TABLES

log = logging.getLogger(__name__)

_RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"


@dataclass(frozen=True)
class VacuumResult:
    table: str
    versions: int
    oldest_readable_version: int
    retain_hours: int | None  # None: nothing to vacuum yet


def retention_hours(oldest_kept: datetime, now: datetime) -> int:
    """Whole hours of VACUUM retention that keep every file the version committed at
    ``oldest_kept`` needs (rounded up; at least 1)."""
    stamp = oldest_kept.replace(tzinfo=timezone.utc) if oldest_kept.tzinfo is None else oldest_kept
    return max(1, math.ceil((now - stamp).total_seconds() / 3600.0))


def vacuum_keep_versions(spark: SparkSession, table: str, keep: int) -> VacuumResult:
    """VACUUM ``table`` so that its ``keep`` newest versions (and no older) stay readable."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    history = (DeltaTable.forName(spark, table).history().select("version", "timestamp")
               .orderBy(F.desc("version")).collect())
    if len(history) <= keep:
        return VacuumResult(table, len(history), int(history[-1]["version"]) if history else 0, None)
    oldest_kept = history[keep - 1]
    retain_hours = retention_hours(oldest_kept["timestamp"], datetime.now(timezone.utc))
    previous = spark.conf.get(_RETENTION_CHECK, "true")
    spark.conf.set(_RETENTION_CHECK, "false")  # our window may be shorter than Delta's 7-day default
    try:
        spark.sql(f"VACUUM {table} RETAIN {retain_hours} HOURS")
    finally:
        spark.conf.set(_RETENTION_CHECK, previous)
    log.info("vacuumed %s: versions >= %s stay readable", table, oldest_kept["version"])
    return VacuumResult(table, len(history), int(oldest_kept["version"]), retain_hours)


def apply_retention(spark: SparkSession, storage: StorageConfig, keep: int,
                    tables: Sequence[str] = tuple(t.name for t in ALL_TABLES)) -> list[VacuumResult]:
    """Apply :func:`vacuum_keep_versions` to every table of the catalog that exists."""
    return [vacuum_keep_versions(spark, storage.qualified(t), keep) for t in tables
            if spark.catalog.tableExists(storage.qualified(t))]


def sweep_staging(staging_dir: Path, *, older_than_hours: float, now: float | None = None) -> list[str]:
    """Delete staging folders of runs that died (SIGKILL, lost machine) and left their candidates.

    A run removes its own staging folder when it ends; folders not modified for
    ``older_than_hours`` belong to runs that are gone. Returns the run ids removed.
    """
    if not staging_dir.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - older_than_hours * 3600
    removed = []
    for run_dir in sorted(staging_dir.iterdir()):
        newest = max((f.stat().st_mtime for f in run_dir.rglob("*")), default=run_dir.stat().st_mtime)
        if run_dir.is_dir() and max(newest, run_dir.stat().st_mtime) < cutoff:
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(run_dir.name)
    if removed:
        log.info("removed the staging folders of %d dead runs: %s", len(removed), ", ".join(removed))
    return removed
