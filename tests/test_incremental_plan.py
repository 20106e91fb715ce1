"""Runs plan what changed since the space's last complete run, not the whole catalogue (issue:
scale): the plan's scope comes from the change data feed of ``frames`` after the version the last
published run recorded in ``feature_versions``; anything it cannot prove sends the run back to a
full plan. Each test checks that the incremental plan finds the same work a full plan finds.

The tests share one database and run in file order; each states what it needs."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from catalogfs.features.lineage import last_checkpoint
from catalogfs.features.run_plan import PlanScope, SpaceTables, plan_run, plan_scope
from catalogfs.jobs import embed_frames, extract_frames
from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos
from tests.helpers import with_database

DATABASE = "incremental_plan_features"


def _photos(*ids: str):
    return tuple(p for p in SAMPLE_PHOTOS if p.video_id in ids)


def _videos(spark, cfg, folder, *photos: str) -> None:
    make_sample_videos(folder, seconds=1.5, fps=6, width=160, height=96, photos=_photos(*photos))
    extract_frames.run(spark, cfg, input=str(folder))


@pytest.fixture(scope="module")
def incr(spark, cfg, tmp_path_factory):
    cfg = with_database(cfg, DATABASE)
    _videos(spark, cfg, tmp_path_factory.mktemp("incr_videos"), "coffee_cup", "flower")
    first = embed_frames.run(spark, cfg)
    assert first.published
    return cfg, first, tmp_path_factory


def _table(spark, cfg, name: str):
    return spark.table(cfg.storage.qualified(name))


def _frame_rows(spark, cfg, space: str) -> dict:
    return {(r.video_id, r.frame_ts_ms): (r.status, r.content_sha256, None if r.embedding is None else np.asarray(r.embedding))
            for r in _table(spark, cfg, "frame_embeddings").where(F.col("embedding_space") == space).collect()}


def _frames(spark, cfg) -> set:
    return {(r.video_id, r.frame_ts_ms) for r in _table(spark, cfg, "frames").select("video_id", "frame_ts_ms").collect()}


def _plans(spark, cfg, space):
    """The plan of the catalogue as it is now, incremental (from the last checkpoint) and full."""
    from catalogfs.features.lineage import changed_outside_runs, recent_commits

    tables = SpaceTables.read(spark, cfg.storage, space, with_flags=False)  # the default model has no flags
    checkpoint = last_checkpoint(spark, cfg, space)
    scope = plan_scope(spark, cfg.storage, tables, since=checkpoint.frames_version,
                       unsafe=changed_outside_runs(spark, cfg, checkpoint, recent_commits(spark, cfg)))
    return scope, plan_run(tables, scope), plan_run(tables, PlanScope(None, "full"))


def _same_work(incremental, full) -> None:
    assert (incremental.frames_to_embed, incremental.orphan_videos, incremental.stale_videos) == \
        (full.frames_to_embed, full.orphan_videos, full.stale_videos)
    assert (incremental.published_frames, incremental.published_bad_input) == \
        (full.published_frames, full.published_bad_input)


def test_each_published_run_records_the_frames_version_it_planned_on(spark, incr):
    cfg, first, _ = incr
    assert first.plan_scope.startswith("full plan: no complete run")  # the space's first run
    checkpoint = last_checkpoint(spark, cfg, first.space)
    history = spark.sql(f"DESCRIBE HISTORY {cfg.storage.qualified('frames')}").select("version").collect()
    assert checkpoint.run_id == first.run_id
    assert checkpoint.frames_version == max(r.version for r in history)
    props = {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES {cfg.storage.qualified('frames')}").collect()}
    assert props["delta.enableChangeDataFeed"] == "true"


def test_an_unchanged_catalogue_plans_nothing(spark, incr):
    cfg, first, _ = incr
    before = _frame_rows(spark, cfg, first.space.id)
    result = embed_frames.run(spark, cfg)
    assert result.plan_scope.startswith("incremental plan") and "0 videos changed" in result.plan_scope
    assert result.frames_embedded == 0 and not result.published
    assert set(_frame_rows(spark, cfg, first.space.id)) == set(before)


def test_a_new_video_is_planned_alone_and_finds_what_a_full_plan_finds(spark, incr):
    cfg, first, factory = incr
    _videos(spark, cfg, factory.mktemp("incr_new"), "rocket_launch")
    scope, incremental, full = _plans(spark, cfg, first.space)
    assert scope.video_ids == ["rocket_launch"]
    _same_work(incremental, full)
    new_frames = {k for k in _frames(spark, cfg) if k[0] == "rocket_launch"}
    assert incremental.frames_to_embed == len(new_frames) > 0

    result = embed_frames.run(spark, cfg)
    assert result.published and result.frames_embedded == len(new_frames)
    assert result.videos_updated == ["rocket_launch"]
    rows = _frame_rows(spark, cfg, first.space.id)
    assert set(rows) == _frames(spark, cfg)  # every frame has its row, nothing else


def test_a_removed_frame_reaches_the_plan_through_the_change_feed(spark, incr):
    """A frame deleted from ``frames`` (a re-extraction, a takedown) is a delete in its change
    feed: the video is planned, and the removal policy deletes its frame row from the space."""
    cfg, first, _ = incr
    gone = sorted(k for k in _frames(spark, cfg) if k[0] == "flower")[-1]
    spark.sql(f"DELETE FROM {cfg.storage.qualified('frames')} "
              f"WHERE video_id = '{gone[0]}' AND frame_ts_ms = {gone[1]}")
    scope, incremental, full = _plans(spark, cfg, first.space)
    assert scope.video_ids == ["flower"]
    _same_work(incremental, full)
    assert incremental.orphan_videos == ["flower"]

    result = embed_frames.run(spark, cfg)
    assert result.published and result.frames_embedded == 0
    rows = _frame_rows(spark, cfg, first.space.id)
    assert gone not in rows and set(rows) == _frames(spark, cfg)


def test_a_hand_made_delete_in_a_published_table_asks_for_a_full_plan(spark, incr):
    """Rows deleted from the space by hand are not in the change feed of ``frames``: the run sees a
    DELETE that no run made in the table's history, plans everything and embeds them again."""
    cfg, first, _ = incr
    before = _frame_rows(spark, cfg, first.space.id)
    lost = {k: v for k, v in before.items() if k[0] == "coffee_cup"}
    spark.sql(f"DELETE FROM {cfg.storage.qualified('frame_embeddings')} WHERE video_id = 'coffee_cup'")
    result = embed_frames.run(spark, cfg)
    assert result.plan_scope.startswith("full plan: frame_embeddings version")
    assert "DELETE not made by a catalogfs run" in result.plan_scope
    assert result.published and result.frames_embedded == len(lost) > 0
    after = _frame_rows(spark, cfg, first.space.id)
    for key, (status, sha, vector) in lost.items():
        assert after[key][:2] == (status, sha)
        np.testing.assert_allclose(after[key][2], vector, atol=1e-5)
    # the run recorded its own checkpoint: the next one is incremental again
    again = embed_frames.run(spark, cfg)
    assert again.plan_scope.startswith("incremental plan") and again.frames_embedded == 0


def test_frames_written_without_a_change_feed_send_the_run_to_a_full_plan(spark, incr):
    """A version of ``frames`` with no change data (the feed was off, e.g. a table from an older
    release or a hand-made write with it disabled) cannot be read incrementally: full plan."""
    cfg, first, _ = incr
    frames = cfg.storage.qualified("frames")
    spark.sql(f"ALTER TABLE {frames} SET TBLPROPERTIES ('delta.enableChangeDataFeed' = 'false')")
    (_table(spark, cfg, "frames").where(F.col("video_id") == "flower")
     .withColumn("video_id", F.lit("flower_copy")).write.format("delta").mode("append").saveAsTable(frames))
    result = embed_frames.run(spark, cfg)  # ensure_catalog turns the feed back on first
    assert result.plan_scope.startswith("full plan: the change data feed of frames does not cover")
    copies = {k for k in _frames(spark, cfg) if k[0] == "flower_copy"}
    assert result.published and result.frames_embedded == len(copies) > 0
    rows = _frame_rows(spark, cfg, first.space.id)
    for ts in {k[1] for k in copies}:  # same pixels, same vector
        np.testing.assert_allclose(rows[("flower_copy", ts)][2], rows[("flower", ts)][2], atol=1e-6)
    props = {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES {frames}").collect()}
    assert props["delta.enableChangeDataFeed"] == "true"
