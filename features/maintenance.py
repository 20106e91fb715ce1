"""Retention: keep the last N versions of each table readable for time travel, VACUUM the rest.

Delta keeps every data file a past version needs until VACUUM removes files that were deleted
from the table longer ago than the table's ``delta.deletedFileRetentionDuration``. Three facts of
Delta 4.4 decide how that window is set:

* ``VACUUM … RETAIN n HOURS`` is ignored for any n but 0 (``vacuum.retentionWindowIgnore.enabled``):
  VACUUM always uses the table property.
* The log replay drops tombstones (RemoveFile actions) older than the property from the table's
  state, and checkpoints drop them for good. A file whose tombstone is gone is "untracked", and
  VACUUM deletes it by its modification time — so a kept version older than the property loses
  the files it shares with older versions.
* Time travel to a version older than the property is refused
  (``DELTA_UNSUPPORTED_TIME_TRAVEL_BEYOND_DELETED_FILE_RETENTION_DURATION``).

So the window is the property: before VACUUM it is raised, when shorter, to cover the age of the
N-th newest version (rounded *up* to whole hours). It is never lowered: versions younger than it
stay readable too.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import unquote

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from catalogfs.config import StorageConfig
from catalogfs.spark import default_parallelism
from catalogfs.features.staging_lock import owner_state
from catalogfs.features.tables import ALL_TABLES

log = logging.getLogger(__name__)

TOMBSTONE_RETENTION = "delta.deletedFileRetentionDuration"
LOG_RETENTION = "delta.logRetentionDuration"
# Delta's defaults when a table does not set them
_DEFAULT_HOURS = {TOMBSTONE_RETENTION: 7 * 24.0, LOG_RETENTION: 30 * 24.0}
_LISTING_PARALLELISM = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
_UNIT_HOURS = {"week": 168.0, "day": 24.0, "hour": 1.0, "minute": 1 / 60, "second": 1 / 3600,
               "millisecond": 1 / 3.6e6, "microsecond": 1 / 3.6e9}


@dataclass(frozen=True)
class VacuumResult:
    table: str
    versions: int
    oldest_readable_version: int  # this version and every newer one stay readable (older ones may too)
    retain_hours: int | None  # files removed in the last retain_hours are kept; None: nothing vacuumed
    raised_from_hours: float | None = None  # the table's previous deletedFileRetentionDuration, if raised now
    skipped: str | None = None  # why VACUUM did not run although there was something to vacuum


def retention_hours(oldest_kept: datetime, now: datetime) -> int:
    """Whole hours of VACUUM retention that keep every file the version committed at
    ``oldest_kept`` needs (rounded up; at least 1)."""
    stamp = oldest_kept.replace(tzinfo=timezone.utc) if oldest_kept.tzinfo is None else oldest_kept
    return max(1, math.ceil((now - stamp).total_seconds() / 3600.0))


def interval_hours(value: str) -> float:
    """Hours of a Delta interval property (``interval 1 weeks``, ``interval 30 days``, ``168 hours``)."""
    words = value.strip().lower().split()
    if words[:1] == ["interval"]:
        words = words[1:]
    if not words or len(words) % 2:
        raise ValueError(f"not an interval: {value!r}")
    total = 0.0
    for amount, unit in zip(words[::2], words[1::2]):
        if unit.rstrip("s") not in _UNIT_HOURS or not re.fullmatch(r"\d+(\.\d+)?", amount):
            raise ValueError(f"not an interval: {value!r}")
        total += float(amount) * _UNIT_HOURS[unit.rstrip("s")]
    return total


def table_retention_hours(spark: SparkSession, table: str) -> dict[str, float]:
    """The table's tombstone and log retention in hours (Delta's defaults where unset; an
    unreadable value counts as 0, so that it is replaced)."""
    properties = spark.sql(f"DESCRIBE DETAIL {table}").first()["properties"] or {}
    hours = {}
    for key, default in _DEFAULT_HOURS.items():
        try:
            hours[key] = interval_hours(properties[key]) if key in properties else default
        except ValueError:
            hours[key] = 0.0
    return hours


def cover_retention_window(spark: SparkSession, table: str, window_hours: int) -> tuple[float, float | None]:
    """Make ``delta.deletedFileRetentionDuration`` at least ``window_hours``; returns the hours in
    effect and the previous value when it was raised (else None).

    When raised, it goes to at least the table's log retention, so that every version whose log
    is kept keeps its files and the property rarely needs raising again (each raise is a metadata
    commit, which a concurrent writer of the table must retry). The log retention is raised with
    it where shorter: Delta refuses a deleted-file retention longer than the log retention.
    """
    current = table_retention_hours(spark, table)
    tombstones, logs = current[TOMBSTONE_RETENTION], current[LOG_RETENTION]
    if tombstones >= window_hours:
        return tombstones, None
    target = max(window_hours, math.ceil(logs))
    properties = {TOMBSTONE_RETENTION: f"interval {target} hours"}
    if logs < target:
        properties[LOG_RETENTION] = f"interval {target} hours"
    assignments = ", ".join(f"'{key}' = '{value}'" for key, value in properties.items())
    spark.sql(f"ALTER TABLE {table} SET TBLPROPERTIES ({assignments})")
    log.warning("%s: raised %s from %.0f h to %d h (the oldest kept version is %d h old)%s", table,
                TOMBSTONE_RETENTION, tombstones, target, window_hours,
                f", and {LOG_RETENTION} from {logs:.0f} h" if logs < target else "")
    return float(target), tombstones


@contextmanager
def listing_parallelism(spark: SparkSession) -> Iterator[None]:
    """VACUUM lists the table in ``spark.sql.sources.parallelPartitionDiscovery.parallelism``
    tasks, 10,000 by default: minutes of task overhead on a small machine for a listing that a
    few tasks per core do as well. Capped at four per core while VACUUM runs, then restored."""
    previous = spark.conf.get(_LISTING_PARALLELISM)
    cap = 4 * max(1, default_parallelism(spark))
    spark.conf.set(_LISTING_PARALLELISM, str(min(int(previous), cap)))
    try:
        yield
    finally:
        spark.conf.set(_LISTING_PARALLELISM, previous)


def endangered_files(spark: SparkSession, table: str, versions: Sequence[int]) -> list[str]:
    """Files that VACUUM would delete now although one of ``versions`` reads them.

    Raising the retention cannot bring back tombstones that a checkpoint already dropped while
    the property was shorter (tables created before it was raised): such files are untracked and
    VACUUM deletes them by age. A dry run shows which; data file names are unique (UUIDs)."""
    doomed = {_file_name(r["path"]) for r in spark.sql(f"VACUUM {table} DRY RUN").collect()}
    if not doomed:
        return []
    needed = set()
    for version in versions:
        needed.update(map(_file_name, spark.sql(f"SELECT * FROM {table} VERSION AS OF {version}").inputFiles()))
    return sorted(doomed & needed)


def _file_name(path: str) -> str:
    return unquote(path.rstrip("/").rsplit("/", 1)[-1])


def vacuum_keep_versions(spark: SparkSession, table: str, keep: int) -> VacuumResult:
    """VACUUM ``table`` so that its ``keep`` newest versions stay readable (older versions do while
    they are younger than ``delta.deletedFileRetentionDuration``)."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    history = (spark.sql(f"DESCRIBE HISTORY {table}").select("version", "timestamp")
               .orderBy(F.desc("version")).collect())
    if len(history) <= keep:
        return VacuumResult(table, len(history), int(history[-1]["version"]) if history else 0, None)
    oldest_kept = history[keep - 1]
    window = retention_hours(oldest_kept["timestamp"], datetime.now(timezone.utc))
    retain, raised_from = cover_retention_window(spark, table, window)
    kept = [int(row["version"]) for row in history[:keep]]
    with listing_parallelism(spark):
        at_risk = endangered_files(spark, table, kept)
        if at_risk:
            log.warning("%s: VACUUM skipped: it would delete %d files that kept versions read (their "
                        "tombstones expired before the retention was raised), e.g. %s", table,
                        len(at_risk), at_risk[0])
            return VacuumResult(table, len(history), int(oldest_kept["version"]), None, raised_from,
                                skipped=f"{len(at_risk)} files of kept versions are untracked")
        spark.sql(f"VACUUM {table}")  # the window is the table property (a RETAIN clause is ignored)
    log.info("vacuumed %s: versions >= %s stay readable (files removed in the last %.0f h kept)",
             table, oldest_kept["version"], retain)
    return VacuumResult(table, len(history), int(oldest_kept["version"]), math.floor(retain), raised_from)


def apply_retention(spark: SparkSession, storage: StorageConfig, keep: int,
                    tables: Sequence[str] = tuple(t.name for t in ALL_TABLES)) -> list[VacuumResult]:
    """Apply :func:`vacuum_keep_versions` to every table of the catalog that exists."""
    return [vacuum_keep_versions(spark, storage.qualified(t), keep) for t in tables
            if spark.catalog.tableExists(storage.qualified(t))]


def sweep_staging(staging_dir: Path, *, older_than_hours: float, now: float | None = None) -> list[str]:
    """Delete staging folders of runs that died (SIGKILL, lost machine) and left their candidates.

    A run removes its own staging folder when it ends, and holds the folder's owner lock while it
    lives (:mod:`features.staging_lock`): a folder whose lock is free is removed whatever its age,
    one whose lock is held never is. A folder without a lock file (an older version's) is removed
    when nothing in it was modified for ``older_than_hours``. Returns the run ids removed.
    """
    if not staging_dir.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - older_than_hours * 3600
    removed = []
    for run_dir in sorted(p for p in staging_dir.iterdir() if p.is_dir()):
        owner = owner_state(run_dir)
        if owner == "alive":
            continue
        newest = max((f.stat().st_mtime for f in run_dir.rglob("*")), default=run_dir.stat().st_mtime)
        if owner == "dead" or max(newest, run_dir.stat().st_mtime) < cutoff:
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(run_dir.name)
    if removed:
        log.info("removed the staging folders of %d dead runs: %s", len(removed), ", ".join(removed))
    return removed
