"""Retention: the last N versions stay readable for time travel; the VACUUM window is derived from
the table's own history."""

from datetime import datetime, timedelta, timezone

import pytest

from features.maintenance import retention_hours, sweep_staging, vacuum_keep_versions


def test_retention_window_rounds_up_to_whole_hours():
    now = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
    assert retention_hours(now - timedelta(hours=3, minutes=1), now) == 4
    assert retention_hours(now - timedelta(hours=3), now) == 3
    assert retention_hours(now - timedelta(seconds=5), now) == 1
    assert retention_hours((now - timedelta(hours=30)).replace(tzinfo=None), now) == 30  # naive = UTC


def test_vacuum_keeps_the_newest_versions_readable(spark):
    spark.sql("CREATE DATABASE IF NOT EXISTS maint")
    table = "maint.scores"
    for version in range(4):
        (spark.createDataFrame([(version, f"v{version}")], "n int, tag string")
         .write.format("delta").mode("overwrite").saveAsTable(table))
    result = vacuum_keep_versions(spark, table, keep=2)
    assert (result.versions, result.oldest_readable_version, result.retain_hours) == (4, 2, 1)
    for version in (3, 2):  # VACUUM RETAIN 0 HOURS would have deleted version 2's files
        assert spark.sql(f"SELECT tag FROM {table} VERSION AS OF {version}").first().tag == f"v{version}"
    assert spark.table(table).first().tag == "v3"
    assert vacuum_keep_versions(spark, table, keep=10).retain_hours is None
    history = spark.sql(f"DESCRIBE HISTORY {table}").select("operation").collect()
    assert {"VACUUM START", "VACUUM END"} <= {r.operation for r in history}


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
