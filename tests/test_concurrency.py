"""Concurrent publishers. Publisher A opens its MERGE and is held inside it (its source waits on a
gate) while another writer commits to the same table; when A goes on, its commit loses the race
(Delta's optimistic concurrency) and A retries from the same candidates: it publishes on the
second attempt or, out of attempts, fails with a clean :class:`PublishConflict`. A second
publisher of the same space afterwards updates rows in place. Keys are never duplicated."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos
from catalogfs.features.embedding_run import run_embedding
from catalogfs.features.publish import is_commit_conflict, publish_with_retries
from catalogfs.errors import PublishConflict
from catalogfs.features.spaces import EmbeddingSpace
from catalogfs.features.tables import FRAME_EMBEDDINGS, VIDEO_EMBEDDINGS, VIDEO_LABELS
from catalogfs.jobs import embed_frames, extract_frames
from tests.helpers import with_database
from catalogfs.udfs.model_bundle import BundleSpec
from catalogfs.udfs.model_registry import ResolvedModel


@pytest.fixture(scope="module")
def race(spark, cfg, tmp_path_factory, default_bundle):
    cfg = with_database(cfg, "concurrent_features")
    cfg = cfg.model_copy(update={"publish": cfg.publish.model_copy(update={"retry_backoff_seconds": 0.2})})
    videos = tmp_path_factory.mktemp("concurrent_videos")
    make_sample_videos(videos, seconds=1.0, fps=8, width=160, height=96,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id in ("coffee_cup", "flower")))
    extract_frames.run(spark, cfg, input=str(videos))
    current = embed_frames.run(spark, cfg).space  # the default model's space is current

    challenger = tmp_path_factory.mktemp("concurrent_model") / "model"
    shutil.copytree(default_bundle, challenger)
    spec = json.loads((challenger / "model_spec.json").read_text())
    spec["preprocess"]["resize_shorter"] = 240
    (challenger / "model_spec.json").write_text(json.dumps(spec))
    model = ResolvedModel(name="efficientnet_lite0_imagenet", version="race", alias="challenger",
                          source_uri=challenger.as_uri(), spec=BundleSpec.from_dict(spec))
    space = EmbeddingSpace.for_model(model)
    return cfg, current, model, space, tmp_path_factory.mktemp("gate")


def _as_space(spark, cfg, table, source_space: str, space: EmbeddingSpace, run_id: str):
    """Rows of ``table`` in ``source_space`` relabelled as ``space`` (publisher A's candidates)."""
    rows = (spark.table(cfg.storage.qualified(table.name)).where(F.col("embedding_space") == source_space)
            .withColumn("embedding_space", F.lit(space.id)).withColumn("run_id", F.lit(run_id)).collect())
    return spark.createDataFrame(rows, table.schema)


def _held_publisher(spark, cfg, race_fixture, *, max_attempts: int):
    """Start publisher A in a thread, held inside its first MERGE; returns (thread, outcome, gate)."""
    cfg, current, _model, space, gate_dir = race_fixture
    cfg = cfg.model_copy(update={"publish": cfg.publish.model_copy(update={"max_attempts": max_attempts})})
    gate, inside = gate_dir / f"open-{max_attempts}", gate_dir / f"inside-{max_attempts}"
    session = spark.newSession()  # own SQL conf: commit metadata and txn ids do not mix with B's

    @F.udf("boolean")
    def held(_video_id):  # runs in a Python worker, inside A's MERGE
        Path(inside).touch()
        while not Path(gate).exists():
            time.sleep(0.05)
        return True

    # one partition: one task slot held, the other left for B's work
    frames = _as_space(session, cfg, FRAME_EMBEDDINGS, current.id, space, "race-a").coalesce(1).where(held("video_id"))
    videos = _as_space(session, cfg, VIDEO_EMBEDDINGS, current.id, space, "race-a")
    labels = _as_space(session, cfg, VIDEO_LABELS, current.id, space, "race-a")
    video_ids = sorted({r.video_id for r in videos.collect()})
    outcome: dict = {}

    def publish():
        try:
            outcome["written"] = publish_with_retries(
                session, cfg, space, {FRAME_EMBEDDINGS.name: frames, VIDEO_EMBEDDINGS.name: videos,
                                      VIDEO_LABELS.name: labels}, video_ids, run_id="race-a",
                txn_version=int(time.time() * 1000))
        except BaseException as exc:  # noqa: BLE001 - asserted by the tests
            outcome["error"] = exc

    thread = threading.Thread(target=publish)
    thread.start()
    deadline = time.monotonic() + 300
    while not inside.exists():
        assert time.monotonic() < deadline and thread.is_alive(), f"A never reached its MERGE: {outcome}"
        time.sleep(0.1)
    return thread, outcome, gate


def _keys_unique_and_complete(spark, cfg, space):
    storage = cfg.storage
    frames = {(r.video_id, r.frame_ts_ms) for r in spark.table(storage.qualified("frames")).collect()}
    for table, keys in (("frame_embeddings", ["video_id", "frame_ts_ms"]), ("video_embeddings", ["video_id"]),
                        ("video_labels", ["video_id", "label"])):
        rows = spark.table(storage.qualified(table)).where(F.col("embedding_space") == space.id)
        assert rows.count() == rows.select(*keys).distinct().count(), table
    fe = spark.table(storage.qualified("frame_embeddings")).where(F.col("embedding_space") == space.id)
    assert {(r.video_id, r.frame_ts_ms) for r in fe.collect()} == frames
    return fe


def _race(spark, race_fixture, *, max_attempts: int) -> dict:
    """Publisher A held inside its MERGE while another writer commits to the same table (rewriting
    files A has read); returns A's outcome."""
    cfg, current = race_fixture[0], race_fixture[1]
    thread, outcome, gate = _held_publisher(spark, cfg, race_fixture, max_attempts=max_attempts)
    try:
        spark.newSession().sql(f"UPDATE {cfg.storage.qualified('frame_embeddings')} SET error = NULL "
                               f"WHERE embedding_space = '{current.id}'")
    finally:
        gate.touch()
        thread.join(timeout=600)
    return outcome


def test_the_publisher_that_loses_the_race_retries_and_wins(spark, race, caplog):
    cfg, _current, model, space, _ = race
    caplog.set_level(logging.WARNING, logger="catalogfs.features.publish")
    outcome = _race(spark, race, max_attempts=3)
    assert "error" not in outcome, str(outcome.get("error"))[:3000]
    # the first commit lost the race, the retry went through: one lost race logged, every table written
    assert sum("lost a commit race" in r.getMessage() for r in caplog.records) == 1
    assert set(outcome["written"]) == {"frame_embeddings", "video_embeddings", "video_labels"}
    fe = _keys_unique_and_complete(spark, cfg, space)
    assert {r.run_id for r in fe.collect()} == {"race-a"}
    # a second publisher of the same space afterwards: updates in place, still one row per key
    assert run_embedding(spark.newSession(), cfg, model, run_id="race-b").frames_embedded == 0
    _keys_unique_and_complete(spark, cfg, space)


def test_out_of_attempts_is_a_clean_conflict_error(spark, race):
    cfg, _current, _model, space, _ = race
    outcome = _race(spark, race, max_attempts=1)
    assert isinstance(outcome.get("error"), PublishConflict), outcome
    assert "lost 1 commit races" in str(outcome["error"]) and "Rerun the job" in str(outcome["error"])
    _keys_unique_and_complete(spark, cfg, space)


def test_commit_conflicts_are_recognised():
    class ConcurrentAppendException(Exception):
        pass

    assert is_commit_conflict(ConcurrentAppendException("files were added"))
    assert is_commit_conflict(RuntimeError("[DELTA_CONCURRENT_APPEND] ConcurrentAppendException: ..."))
    assert not is_commit_conflict(RuntimeError("[TABLE_OR_VIEW_NOT_FOUND] no such table"))
