"""Point-in-time training sets (issue 16, part 3): the published history of ``video_embeddings``
(``video_embeddings_history``, synced from its change data feed after every publish) and the join
of events to the value that was current at each event's time — never a later one.

One catalogue, one timeline, built once by the module fixture:

    publish space A (coffee_cup, flower) → A becomes current → flower changes (a frame removed) and
    is re-pooled in A → space B backfilled in shadow → B promoted

Events fall before, between and after those commits; expected vectors are read from the table
itself at the version that was current then (Delta time travel). The tests run in file order: the
last ones change rows by hand."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pytest
from pyspark.sql.types import StringType, StructField, StructType, TimestampType

from catalogfs.tracking import configure_mlflow
from catalogfs.features import promotion
from catalogfs.features.history import sync_history, synced_version
from catalogfs.features.training_set import training_set
from catalogfs.errors import TrainingSetError
from catalogfs.jobs import embed_frames, extract_frames
from catalogfs.jobs import training_set as training_set_job
from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos
from tests.helpers import with_database

DATABASE = "training_set_features"
MODEL = "efficientnet_lite0_imagenet"
ALIAS = "training_set_challenger"
HISTORY = "video_embeddings_history"
EVENT_SCHEMA = StructType([StructField("video_id", StringType()), StructField("event_ts", TimestampType()),
                           StructField("label", StringType())])
US = timedelta(microseconds=1)


@dataclass(frozen=True)
class Timeline:
    cfg: object
    space_a: str
    space_b: str
    commits: dict  # "a1", "a2", "b" → (video_embeddings version, commit timestamp)
    promoted_a: datetime
    promoted_b: datetime


def _challenger(cfg, default_bundle, folder) -> str:
    """A second version of the default model (another resize: another space), under its own alias."""
    from mlflow import MlflowClient

    from catalogfs.udfs.model_registry import register_bundle

    shutil.copytree(default_bundle, folder)
    spec = json.loads((folder / "model_spec.json").read_text())
    spec["preprocess"]["resize_shorter"] = 240
    (folder / "model_spec.json").write_text(json.dumps(spec))
    return register_bundle(MlflowClient(), MODEL, folder, alias=ALIAS, experiment_id=configure_mlflow(cfg))


def _merge_commits(spark, cfg) -> dict[str, tuple[int, datetime]]:
    rows = spark.sql(f"DESCRIBE HISTORY {cfg.storage.qualified('video_embeddings')}").where("operation = 'MERGE'")
    return {json.loads(r.userMetadata)["run_id"]: (int(r.version), r.timestamp) for r in rows.collect()}


@pytest.fixture(scope="module")
def timeline(spark, cfg, tmp_path_factory, default_bundle) -> Timeline:
    cfg = with_database(cfg, DATABASE)  # and the default: the history synced after each publish
    cfg = cfg.model_copy(update={"publish": cfg.publish.model_copy(update={"sync_history": True})})
    videos = tmp_path_factory.mktemp("training_set_videos")
    make_sample_videos(videos, seconds=1.5, fps=4, width=160, height=96,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id in ("coffee_cup", "flower")))
    extract_frames.run(spark, cfg, input=str(videos))
    first = embed_frames.run(spark, cfg)
    assert first.published and first.is_current and not first.warnings
    # flower changes: one of its frames leaves `frames`, the next run pools the others again
    frames = cfg.storage.qualified("frames")
    gone = spark.sql(f"SELECT max(frame_ts_ms) AS t FROM {frames} WHERE video_id = 'flower'").first().t
    spark.sql(f"DELETE FROM {frames} WHERE video_id = 'flower' AND frame_ts_ms = {gone}")
    second = embed_frames.run(spark, cfg)
    assert second.published and second.videos_updated == ["flower"] and second.space.id == first.space.id
    _challenger(cfg, default_bundle, tmp_path_factory.mktemp("training_set_challenger") / "model")
    third = embed_frames.run(spark, cfg, model=f"{MODEL}@{ALIAS}")
    assert third.published and not third.is_current and third.space.id != first.space.id
    promotion.promote(spark, cfg.storage, third.space.id, run_id="training-set-test-promote")
    merges = _merge_commits(spark, cfg)
    promoted = {r.embedding_space: r.finished_at for r in spark.table(cfg.storage.qualified("feature_versions"))
                .where("status = 'promoted'").collect()}
    line = Timeline(cfg, first.space.id, third.space.id,
                    {"a1": merges[first.run_id], "a2": merges[second.run_id], "b": merges[third.run_id]},
                    promoted[first.space.id], promoted[third.space.id])
    c = line.commits
    assert c["a1"][1] < line.promoted_a < c["a2"][1] < c["b"][1] < line.promoted_b  # the order the tests rely on
    return line


def _vectors_at(spark, cfg, version: int, space: str) -> dict[str, np.ndarray]:
    """video_id → the embedding of ``space`` in video_embeddings as of ``version`` (time travel)."""
    rows = spark.sql(f"SELECT video_id, embedding FROM {cfg.storage.qualified('video_embeddings')} "
                     f"VERSION AS OF {version} WHERE embedding_space = '{space}'").collect()
    return {r.video_id: np.asarray(r.embedding, dtype=np.float32) for r in rows}


def _history(spark, cfg) -> list:
    return spark.table(cfg.storage.qualified(HISTORY)).orderBy("embedding_space", "video_id", "commit_version").collect()


def _between(a: datetime, b: datetime) -> datetime:
    return a + (b - a) / 2


def _training_rows(spark, line: Timeline, events: list[tuple], **kwargs) -> dict[str, object]:
    df = spark.createDataFrame(events, EVENT_SCHEMA)
    rows = training_set(spark, line.cfg.storage, df, **kwargs).collect()
    assert len(rows) == len(events) and len({r.label for r in rows}) == len(events)  # every event, once
    for r in rows:  # never a value that became visible after the event
        assert r.valid_from is None or r.valid_from <= r.event_ts, r
    return {r.label: r for r in rows}


def test_history_holds_every_published_value_with_its_span(spark, timeline):
    cfg, c = timeline.cfg, timeline.commits
    rows = _history(spark, cfg)
    spans = [(r.embedding_space, r.video_id, r.commit_version, r.valid_from, r.valid_to, r.ended_version)
             for r in rows]
    a, b = timeline.space_a, timeline.space_b
    expected = [(a, "coffee_cup", c["a1"][0], c["a1"][1], None, None),
                (a, "flower", c["a1"][0], c["a1"][1], c["a2"][1], c["a2"][0]),
                (a, "flower", c["a2"][0], c["a2"][1], None, None),
                (b, "coffee_cup", c["b"][0], c["b"][1], None, None),
                (b, "flower", c["b"][0], c["b"][1], None, None)]
    assert sorted(spans) == sorted(expected)
    assert {r.recorded_from for r in rows} == {"change_feed"}
    for r in rows:  # each value is the one the table had at the version that wrote it
        np.testing.assert_array_equal(np.asarray(r.embedding, dtype=np.float32),
                                      _vectors_at(spark, cfg, r.commit_version, r.embedding_space)[r.video_id])
    old, new = (np.asarray(r.embedding) for r in rows if r.embedding_space == a and r.video_id == "flower")
    assert not np.allclose(old, new)  # the re-pooled vector really changed
    assert synced_version(spark, cfg.storage) >= c["b"][0]


def test_each_event_gets_the_value_of_the_space_current_at_its_time(spark, timeline):
    cfg, c, a, b = timeline.cfg, timeline.commits, timeline.space_a, timeline.space_b
    t_before = c["a1"][1] - timedelta(seconds=1)
    t_a1 = _between(timeline.promoted_a, c["a2"][1])
    t_shadow = _between(c["b"][1], timeline.promoted_b)  # B published, not yet promoted: still A
    t_after = timeline.promoted_b + timedelta(milliseconds=1)
    events = [("flower", t_before, "before_publish"), ("flower", _between(c["a1"][1], timeline.promoted_a),
                                                        "published_not_yet_current"),
              ("flower", t_a1, "flower_a1"), ("coffee_cup", t_a1, "coffee_a1"),
              ("flower", c["a2"][1] - US, "flower_just_before_change"), ("flower", c["a2"][1], "flower_at_change"),
              ("flower", t_shadow, "flower_shadow"), ("coffee_cup", t_shadow, "coffee_shadow"),
              ("flower", t_after, "flower_b"), ("coffee_cup", t_after, "coffee_b"),
              ("nope", t_after, "unknown"), ("flower", None, "no_time"), (None, t_after, "no_key")]
    got = _training_rows(spark, timeline, events)
    assert {k: got[k].feature_status for k in ("before_publish", "published_not_yet_current", "unknown",
                                               "no_time", "no_key")} == {
        "before_publish": "no_current_space", "published_not_yet_current": "no_current_space",
        "unknown": "unknown_key", "no_time": "null_event_time", "no_key": "null_key"}
    a1, a2, vb = (_vectors_at(spark, cfg, c["a1"][0], a), _vectors_at(spark, cfg, c["a2"][0], a),
                  _vectors_at(spark, cfg, c["b"][0], b))
    expected = {"flower_a1": (a, a1["flower"], c["a1"]), "coffee_a1": (a, a1["coffee_cup"], c["a1"]),
                "flower_just_before_change": (a, a1["flower"], c["a1"]), "flower_at_change": (a, a2["flower"], c["a2"]),
                "flower_shadow": (a, a2["flower"], c["a2"]), "coffee_shadow": (a, a2["coffee_cup"], c["a1"]),
                "flower_b": (b, vb["flower"], c["b"]), "coffee_b": (b, vb["coffee_cup"], c["b"])}
    for label, (space, vector, (_, committed)) in expected.items():
        row = got[label]
        assert (row.feature_status, row.embedding_space, row.valid_from) == ("ok", space, committed), label
        np.testing.assert_array_equal(np.asarray(row.embedding, dtype=np.float32), vector, err_msg=label)
    assert not np.allclose(a1["flower"], a2["flower"])
    assert got["flower_b"].model_version != got["flower_shadow"].model_version


def test_a_space_asked_for_is_read_at_every_time(spark, timeline):
    """space=A after B's promotion gives A's newest value; before A's first publish, none."""
    cfg, c, a = timeline.cfg, timeline.commits, timeline.space_a
    events = [("flower", c["a1"][1] - timedelta(milliseconds=1), "before_publish"),
              ("flower", timeline.promoted_b + timedelta(seconds=1), "after_promotion_of_b"),
              ("coffee_cup", timeline.promoted_b + timedelta(seconds=1), "coffee_after_promotion_of_b")]
    got = _training_rows(spark, timeline, events, space=a)
    assert (got["before_publish"].feature_status, got["before_publish"].embedding) == ("no_value_at_event_time", None)
    newest = _vectors_at(spark, cfg, c["b"][0], a)  # A's rows as the table had them after B's backfill
    for label, video in (("after_promotion_of_b", "flower"), ("coffee_after_promotion_of_b", "coffee_cup")):
        assert (got[label].feature_status, got[label].embedding_space) == ("ok", a)
        np.testing.assert_array_equal(np.asarray(got[label].embedding, dtype=np.float32), newest[video])
    with pytest.raises(TrainingSetError, match="no-such-space"):
        training_set(spark, cfg.storage, spark.createDataFrame(events, EVENT_SCHEMA), space="no-such-space")
    with pytest.raises(TrainingSetError, match="'clicked_at'"):
        training_set(spark, cfg.storage, spark.createDataFrame(events, EVENT_SCHEMA), ts="clicked_at")


def test_the_documented_sql_gives_what_the_api_gives(spark, timeline):
    """The AS-OF join a consumer pastes from docs/consuming.md (the space current at each event's time)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "docs" / "consuming.md").read_text()
    sql = next(block for block in readme.split("```sql")[1:] if "WITH current_spaces" in block)
    sql = sql.split("```")[0].split(";")[0].replace("catalog_features.", f"{DATABASE}.")
    c = timeline.commits
    events = [("flower", _between(timeline.promoted_a, c["a2"][1]), "a1"),
              ("flower", _between(c["b"][1], timeline.promoted_b), "shadow"),
              ("coffee_cup", timeline.promoted_b + timedelta(seconds=1), "b"),
              ("flower", c["a1"][1] - timedelta(seconds=1), "before")]
    spark.createDataFrame(events, EVENT_SCHEMA).createOrReplaceTempView("my_events")
    try:
        by_sql = {r.label: (r.embedding_space, r.embedding, r.valid_from) for r in spark.sql(sql).collect()}
    finally:
        spark.catalog.dropTempView("my_events")
    by_api = {label: (r.embedding_space, r.embedding, r.valid_from)
              for label, r in _training_rows(spark, timeline, events).items()}
    assert by_sql == by_api and by_api["b"][0] == timeline.space_b and by_api["before"] == (None, None, None)


def test_syncing_twice_changes_nothing(spark, timeline):
    cfg = timeline.cfg
    table = cfg.storage.qualified(HISTORY)
    before = (spark.sql(f"DESCRIBE HISTORY {table}").first().version, _history(spark, cfg))
    first, second = sync_history(spark, cfg.storage), sync_history(spark, cfg.storage)
    assert not first.written and not second.written
    assert (spark.sql(f"DESCRIBE HISTORY {table}").first().version, _history(spark, cfg)) == before


def test_the_cli_writes_the_training_set_and_names_what_is_missing(spark, timeline, tmp_path, capsys):
    cfg, c = timeline.cfg, timeline.commits
    overrides = ["--set", f"storage.data_root={cfg.storage.data_root}", "--set", f"storage.database={DATABASE}"]
    events = [("flower", _between(timeline.promoted_a, c["a2"][1]), "a1"), ("flower", None, "no_time"),
              ("coffee_cup", timeline.promoted_b + timedelta(seconds=1), "b")]
    spark.createDataFrame(events, EVENT_SCHEMA).write.option("header", "true").csv(str(tmp_path / "events.csv"))
    out = tmp_path / "train.parquet"
    args = [*overrides, "--events", str(tmp_path / "events.csv"), "--key", "video_id", "--ts", "event_ts",
            "--out", str(out)]
    capsys.readouterr()
    assert training_set_job.main(args) == 0
    printed = capsys.readouterr().out
    assert "3 events, 2 matched, 1 unmatched" in printed and "null_event_time: 1" in printed
    got = {r.label: r for r in spark.read.parquet(str(out)).collect()}
    assert (got["a1"].embedding_space, got["a1"].feature_status) == (timeline.space_a, "ok")
    np.testing.assert_array_equal(np.asarray(got["b"].embedding, dtype=np.float32),
                                  _vectors_at(spark, cfg, c["b"][0], timeline.space_b)["coffee_cup"])
    assert training_set_job.main(args) == 2 and "already exists" in capsys.readouterr().err
    assert training_set_job.main([*args, "--overwrite", "--ts", "clicked_at"]) == 4
    assert "no column 'clicked_at'" in capsys.readouterr().err
    missing = [*overrides, "--events", str(tmp_path / "nothing.parquet"), "--out", str(tmp_path / "x")]
    assert training_set_job.main(missing) == 4 and "nothing.parquet: no such file" in capsys.readouterr().err
    bad = [*overrides, "--events", str(tmp_path / "events.xlsx"), "--out", str(tmp_path / "x")]
    assert training_set_job.main(bad) == 2 and "unsupported extension '.xlsx'" in capsys.readouterr().err


def test_a_delete_by_hand_closes_the_value_at_its_commit(spark, timeline):
    cfg = timeline.cfg
    ve = cfg.storage.qualified("video_embeddings")
    spark.sql(f"DELETE FROM {ve} WHERE video_id = 'coffee_cup' AND embedding_space = '{timeline.space_b}'")
    deleted = spark.sql(f"DESCRIBE HISTORY {ve}").first()
    assert deleted.operation == "DELETE"
    assert sync_history(spark, cfg.storage).written
    row, = [r for r in _history(spark, cfg) if (r.video_id, r.embedding_space) == ("coffee_cup", timeline.space_b)]
    assert (row.valid_to, row.ended_version) == (deleted.timestamp, deleted.version)
    events = [("coffee_cup", deleted.timestamp - US, "just_before"), ("coffee_cup", deleted.timestamp, "at_delete")]
    got = _training_rows(spark, timeline, events)
    assert (got["just_before"].feature_status, got["at_delete"].feature_status) == ("ok", "no_value_at_event_time")


def test_changes_the_feed_did_not_record_are_taken_from_the_snapshot(spark, timeline):
    """With the change data feed off for a while (a data root from before it, or a feed vacuumed),
    the history records the snapshot: nothing duplicated, the value deleted meanwhile closed at the
    snapshot's commit (later than it really went: stale, never from the future)."""
    cfg = timeline.cfg
    ve = cfg.storage.qualified("video_embeddings")
    before = {(r.video_id, r.embedding_space, r.commit_version) for r in _history(spark, cfg)}
    spark.sql(f"ALTER TABLE {ve} SET TBLPROPERTIES ('delta.enableChangeDataFeed' = 'false')")
    spark.sql(f"DELETE FROM {ve} WHERE video_id = 'flower' AND embedding_space = '{timeline.space_b}'")
    spark.sql(f"ALTER TABLE {ve} SET TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')")
    latest = spark.sql(f"DESCRIBE HISTORY {ve}").first()
    done = sync_history(spark, cfg.storage)
    assert (done.recorded_from, done.written, done.until) == ("snapshot", True, latest.version)
    rows = _history(spark, cfg)
    assert {(r.video_id, r.embedding_space, r.commit_version) for r in rows} == before  # nothing new, no duplicate
    gone, = [r for r in rows if (r.video_id, r.embedding_space) == ("flower", timeline.space_b)]
    assert (gone.valid_to, gone.ended_version, gone.recorded_from) == (latest.timestamp, latest.version, "change_feed")
    assert [r for r in rows if r.valid_to is None] == [r for r in rows if r.embedding_space == timeline.space_a
                                                      and r.ended_version is None]
    assert not sync_history(spark, cfg.storage).written  # the feed covers what comes after


class _Died(BaseException):
    """Stands for a SIGKILL at a failpoint (not an Exception: nothing in the job catches it)."""


def test_a_run_that_died_before_its_history_sync_is_caught_up_by_the_rerun(spark, cfg, tmp_path):
    """Found by ``make chaos`` (seed 9): a run killed after its MERGEs, before its lineage row and
    its history sync, left ``video_embeddings_history`` behind, and the rerun — nothing left to
    embed, it only recorded the dead run's lineage — never synced it."""
    from catalogfs import failpoints

    cfg = with_database(cfg, "history_catchup_features")
    cfg = cfg.model_copy(update={"publish": cfg.publish.model_copy(update={"sync_history": True})})
    videos = tmp_path / "videos"
    make_sample_videos(videos, seconds=1.0, fps=2, width=96, height=64,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id == "coffee_cup"))
    extract_frames.run(spark, cfg, input=str(videos))

    def die():
        raise _Died()

    failpoints.register("before_lineage", die)
    try:
        with pytest.raises(_Died):
            embed_frames.run(spark, cfg)
    finally:
        failpoints.register("before_lineage", None)
    rerun = embed_frames.run(spark, cfg)
    assert rerun.frames_embedded == 0 and rerun.recovered_runs  # it only repaired the dead run's lineage

    published = {r.video_id: np.asarray(r.embedding, dtype=np.float32)
                 for r in spark.table(cfg.storage.qualified("video_embeddings")).collect()}
    history = spark.table(cfg.storage.qualified(HISTORY)).where("ended_version IS NULL").collect()
    assert sorted(r.video_id for r in history) == sorted(published) == ["coffee_cup"]
    for r in history:
        np.testing.assert_array_equal(np.asarray(r.embedding, dtype=np.float32), published[r.video_id])
