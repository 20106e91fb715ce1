"""Retention: the last N versions stay readable for time travel. VACUUM's window is the table's
delta.deletedFileRetentionDuration, raised to cover the age of the N-th newest version; tables are
aged by rewriting their log and file times."""

import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from catalogfs.features.maintenance import interval_hours, retention_hours, sweep_staging, vacuum_keep_versions


def test_retention_window_rounds_up_to_whole_hours():
    now = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
    assert retention_hours(now - timedelta(hours=3, minutes=1), now) == 4
    assert retention_hours(now - timedelta(hours=3), now) == 3
    assert retention_hours(now - timedelta(seconds=5), now) == 1
    assert retention_hours((now - timedelta(hours=30)).replace(tzinfo=None), now) == 30  # naive = UTC


def test_delta_interval_properties_read_as_hours():
    assert [interval_hours(v) for v in ("interval 1 weeks", "interval 30 days", "168 hours",
                                        "INTERVAL 2 days 12 hours", "interval 90 minutes")] == [168, 720, 168, 60, 1.5]
    for value in ("interval 1 month", "interval", "interval x days", ""):
        with pytest.raises(ValueError):
            interval_hours(value)


def test_vacuum_keeps_the_newest_versions_readable(spark):
    spark.sql("CREATE DATABASE IF NOT EXISTS maint")
    table = "maint.scores"
    for version in range(4):
        (spark.createDataFrame([(version, f"v{version}")], "n int, tag string")
         .write.format("delta").mode("overwrite").saveAsTable(table))
    result = vacuum_keep_versions(spark, table, keep=2)
    # the oldest kept version is seconds old: Delta's one-week retention covers it
    assert (result.versions, result.oldest_readable_version, result.retain_hours) == (4, 2, 7 * 24)
    assert (result.raised_from_hours, result.skipped) == (None, None)
    for version in (3, 2):
        assert spark.sql(f"SELECT tag FROM {table} VERSION AS OF {version}").first().tag == f"v{version}"
    assert spark.table(table).first().tag == "v3"
    assert vacuum_keep_versions(spark, table, keep=10).retain_hours is None
    history = spark.sql(f"DESCRIBE HISTORY {table}").select("operation").collect()
    assert {"VACUUM START", "VACUUM END"} <= {r.operation for r in history}


DAY_MS = 86_400_000


def table_location(spark, table: str) -> Path:
    return Path(unquote(urlparse(spark.sql(f"DESCRIBE DETAIL {table}").first().location).path))


def age_table(spark, table: str, days_ago: dict[int, float]) -> None:
    """Rewrite ``table`` as if version ``v`` had been committed ``days_ago[v]`` days ago: every
    timestamp in its commit (commitInfo, in-commit timestamp, add modificationTime, remove
    deletionTimestamp), the mtime of its commit file (where Delta's history takes the commit time
    from) and of the data files it added (a minute before the commit). Spark's cached log is
    dropped so that the next command reads the aged one."""
    location = table_location(spark, table)
    log_dir = location / "_delta_log"
    now_ms = int(time.time() * 1000)
    for commit in sorted(log_dir.glob("*.json")):
        stamp = now_ms - int(days_ago[int(commit.stem)] * DAY_MS)
        actions = [json.loads(line) for line in commit.read_text().splitlines() if line.strip()]
        for action in actions:
            if "commitInfo" in action:
                action["commitInfo"]["timestamp"] = stamp
                if "inCommitTimestamp" in action["commitInfo"]:
                    action["commitInfo"]["inCommitTimestamp"] = stamp
            if "add" in action:
                action["add"]["modificationTime"] = stamp - 60_000
                os.utime(location / unquote(action["add"]["path"]), (stamp / 1000 - 60, stamp / 1000 - 60))
            if "remove" in action:
                action["remove"]["deletionTimestamp"] = stamp
        commit.write_text("".join(json.dumps(a) + "\n" for a in actions))
        os.utime(commit, (stamp / 1000, stamp / 1000))
    for checksum in log_dir.glob("*.crc"):  # (also the hidden ones) they describe the old bytes
        checksum.unlink()
    spark._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()


def files_by_version(location: Path) -> dict[int, set[str]]:
    """The data files each version of a (small, checkpoint-free) table reads, replayed from its log
    here rather than asked of Delta, so that the check does not depend on Delta's time travel."""
    live: set[str] = set()
    versions = {}
    for commit in sorted((location / "_delta_log").glob("*.json")):
        for action in map(json.loads, commit.read_text().splitlines()):
            if "add" in action:
                live.add(unquote(action["add"]["path"]))
            if "remove" in action:
                live.discard(unquote(action["remove"]["path"]))
        versions[int(commit.stem)] = set(live)
    return versions


def rows_at(spark, table: str, version: int) -> list[int]:
    return sorted(r.n for r in spark.sql(f"SELECT n FROM {table} VERSION AS OF {version}").collect())


def aged_table(spark, table: str) -> tuple[Path, dict[int, set[str]]]:
    """Six versions committed 40, 35, 13, 12, 11 and 10 days ago: ``n = -1``, overwritten by
    ``0``, ``1`` and ``2`` appended, overwritten by ``3``, ``4`` appended. Version 3 reads files
    written 35, 13 and 12 days ago that version 4 removed 11 days ago — longer ago than Delta's
    default tombstone retention (one week). Returns the location and the files of each version."""
    spark.sql("CREATE DATABASE IF NOT EXISTS maint")
    spark.sql(f"DROP TABLE IF EXISTS {table}")
    writes = [("append", -1), ("overwrite", 0), ("append", 1), ("append", 2), ("overwrite", 3), ("append", 4)]
    for mode, n in writes:
        spark.createDataFrame([(n,)], "n int").write.format("delta").mode(mode).saveAsTable(table)
    days_ago = [40, 35, 13, 12, 11, 10]
    age_table(spark, table, dict(enumerate(days_ago)))
    history = spark.sql(f"DESCRIBE HISTORY {table}").orderBy("version").collect()
    assert [round((time.time() - r.timestamp.timestamp()) / 86400) for r in history] == days_ago
    location = table_location(spark, table)
    files = files_by_version(location)
    assert [len(files[v]) for v in range(6)] == [1, 1, 2, 3, 1, 2]
    return location, files


KEPT_ROWS = {3: [0, 1, 2], 4: [3], 5: [3, 4]}


def test_vacuum_keeps_versions_older_than_the_tombstone_retention_readable(spark):
    table = "maint.aged"
    location, files = aged_table(spark, table)

    result = vacuum_keep_versions(spark, table, keep=3)

    missing = {v: sorted(f for f in files[v] if not (location / f).exists()) for v in KEPT_ROWS}
    assert missing == {3: [], 4: [], 5: []}
    assert {v: rows_at(spark, table, v) for v in KEPT_ROWS} == KEPT_ROWS
    assert (result.versions, result.oldest_readable_version, result.skipped) == (6, 3, None)
    # version 3 is 12 days (and seconds) old: the one-week retention was raised, to the log retention
    assert (result.raised_from_hours, result.retain_hours) == (7 * 24, 30 * 24)
    properties = spark.sql(f"DESCRIBE DETAIL {table}").first().properties
    assert properties["delta.deletedFileRetentionDuration"] == "interval 720 hours"
    assert {r.operation for r in spark.sql(f"DESCRIBE HISTORY {table}").collect()} >= {
        "SET TBLPROPERTIES", "VACUUM START", "VACUUM END"}
    tracked = set().union(*files.values())
    kept = {f for f in tracked if (location / f).exists()}
    assert kept == files[3] | files[5] == tracked - files[0]  # version 0's file, removed 35 days ago, is gone
    assert vacuum_keep_versions(spark, table, keep=3).raised_from_hours is None  # raised once


def test_vacuum_is_skipped_when_a_checkpoint_already_dropped_the_tombstones_of_kept_versions(spark):
    """A checkpoint written while the retention was one week dropped the tombstones of the files
    version 3 reads; raising the retention cannot bring them back, and VACUUM would delete the
    file written 35 days ago by its age. Nothing is deleted then."""
    table = "maint.checkpointed"
    location, files = aged_table(spark, table)
    spark.sql(f"ALTER TABLE {table} SET TBLPROPERTIES ('delta.checkpointInterval' = '1')")  # v6 + checkpoint
    assert list(location.glob("_delta_log/*.checkpoint.parquet"))

    result = vacuum_keep_versions(spark, table, keep=4)

    missing = {v: sorted(f for f in files[v] if not (location / f).exists()) for v in KEPT_ROWS}
    assert missing == {3: [], 4: [], 5: []}
    assert {v: rows_at(spark, table, v) for v in KEPT_ROWS} == KEPT_ROWS
    assert (result.oldest_readable_version, result.retain_hours, result.raised_from_hours) == (3, None, 7 * 24)
    assert result.skipped == "1 files of kept versions are untracked"
    assert (location / next(iter(files[0]))).exists()  # nothing was vacuumed


def test_keep_must_be_positive(spark):
    with pytest.raises(ValueError):
        vacuum_keep_versions(spark, "maint.scores", keep=0)


def test_staging_of_dead_runs_is_swept(tmp_path):
    import os
    import time

    dead, live = tmp_path / "run-dead" / "frame_embeddings", tmp_path / "run-live" / "frame_embeddings"
    for folder in (dead, live):
        folder.mkdir(parents=True)
        (folder / "part-0.parquet").write_bytes(b"x")
    old = time.time() - 30 * 3600
    for path in (dead / "part-0.parquet", dead, dead.parent):
        os.utime(path, (old, old))
    assert sweep_staging(tmp_path, older_than_hours=24) == ["run-dead"]
    assert not dead.parent.exists() and (live / "part-0.parquet").exists()
    assert sweep_staging(tmp_path / "absent", older_than_hours=24) == []
