"""A new model version end to end: backfill a second space beside the current one (shadow),
compare the two, promote the new one (current views switch), roll back."""

import json
import shutil

import numpy as np
import pytest

from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos
from catalogfs.tracking import configure_mlflow
from catalogfs.features import promotion
from catalogfs.jobs import embed_frames, extract_frames, spaces
from tests.helpers import with_database

MODEL = "efficientnet_lite0_imagenet"


@pytest.fixture(scope="module")
def two_spaces(spark, cfg, tmp_path_factory, default_bundle):
    from mlflow import MlflowClient

    from catalogfs.udfs.model_registry import register_bundle

    cfg = with_database(cfg, "spaces_features")
    videos = tmp_path_factory.mktemp("spaces_videos")
    make_sample_videos(videos, seconds=1.5, fps=8, width=320, height=180,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id in ("cat_chelsea", "coffee_cup", "flower")))
    extract_frames.run(spark, cfg, input=str(videos))
    first = embed_frames.run(spark, cfg)

    challenger = tmp_path_factory.mktemp("challenger") / "model"
    shutil.copytree(default_bundle, challenger)
    spec = json.loads((challenger / "model_spec.json").read_text())
    spec["preprocess"]["resize_shorter"] = 240  # another preprocessing: a new space
    (challenger / "model_spec.json").write_text(json.dumps(spec))
    # the registry is shared by the test run: other modules may have registered versions before
    version = register_bundle(MlflowClient(), MODEL, challenger, alias="challenger",
                              experiment_id=configure_mlflow(cfg))
    second = embed_frames.run(spark, cfg, model=f"{MODEL}@challenger")
    assert second.space.model_version == version
    return cfg, first, second


def _current(spark, cfg, view="current_video_embeddings"):
    return {r.embedding_space for r in spark.table(cfg.storage.qualified(view)).collect()}


def test_backfill_writes_a_second_space_in_shadow(spark, two_spaces):
    cfg, first, second = two_spaces
    assert first.space.id != second.space.id
    assert int(second.space.model_version) > int(first.space.model_version) and second.space.dim == 1280
    assert second.frames_embedded == 6 and second.published
    ve = spark.table(cfg.storage.qualified("video_embeddings")).collect()
    assert sorted((r.video_id, r.embedding_space) for r in ve) == sorted(
        (v, s) for v in ("cat_chelsea", "coffee_cup", "flower") for s in (first.space.id, second.space.id))
    # The first published space became current; the backfill did not change that.
    assert promotion.current_space(spark, cfg.storage) == first.space.id
    for view in promotion.CURRENT_VIEWS:
        if view == "current_video_flags":  # the default model has no flags: the view exists, empty
            assert _current(spark, cfg, view) == set()
        else:
            assert _current(spark, cfg, view) == {first.space.id}


def test_compare_spaces(spark, two_spaces):
    cfg, first, second = two_spaces
    result = promotion.compare_spaces(spark, cfg.storage, first.space.id, second.space.id, k=1)
    assert (result.frames_a, result.frames_b, result.frames_both, result.videos_both) == (6, 6, 6, 3)
    top = {(r.embedding_space, r.video_id): r.label for r in spark.table(cfg.storage.qualified("video_labels"))
           .where("rank = 1").collect()}
    expected = np.mean([top[(first.space.id, v)] == top[(second.space.id, v)]
                        for v in ("cat_chelsea", "coffee_cup", "flower")])
    assert result.top_label_agreement == pytest.approx(expected)
    assert result.top_label_agreement >= 2 / 3  # same weights, slightly different crop
    assert 0.0 <= result.neighbour_overlap <= 1.0


def test_promote_then_rollback(spark, two_spaces, capsys):
    cfg, first, second = two_spaces
    overrides = ["--set", f"storage.data_root={cfg.storage.data_root}", "--set", "storage.database=spaces_features"]
    assert spaces.main([*overrides, "promote", second.space.id]) == 0
    assert _current(spark, cfg) == {second.space.id}
    assert _current(spark, cfg, "current_frame_embeddings") == {second.space.id}
    assert spaces.main([*overrides, "rollback"]) == 0
    assert _current(spark, cfg) == {first.space.id}
    history = [(r.embedding_space, r.note) for r in spark.sql(
        f"SELECT embedding_space, note FROM {cfg.storage.qualified('feature_versions')} "
        "WHERE status = 'promoted' ORDER BY finished_at").collect()]
    assert history == [(first.space.id, "first published space"), (second.space.id, "promoted"),
                       (first.space.id, f"rollback from {second.space.id}")]
    capsys.readouterr()
    assert spaces.main([*overrides, "list"]) == 0
    out = capsys.readouterr().out
    assert f"* {first.space.id}" in out and f"  {second.space.id}" in out
    assert spaces.main([*overrides, "promote", "no-such-space"]) == 4
    assert "never been published" in capsys.readouterr().err


def test_drifted_new_version_is_rejected(spark, two_spaces, tmp_path, default_bundle):
    """A new version of the same model whose vectors moved (here: head channels shuffled) fails the
    drift checks against the current space; nothing is published."""
    import torch
    from mlflow import MlflowClient
    from safetensors.torch import load_file, save_file

    from catalogfs.features import delta_writer
    from catalogfs.errors import ValidationFailed
    from catalogfs.udfs.model_registry import register_bundle

    cfg, first, _ = two_spaces
    assert promotion.current_space(spark, cfg.storage) == first.space.id
    broken = tmp_path / "model"
    shutil.copytree(default_bundle, broken)
    state = load_file(str(broken / "model.safetensors"))
    perm = torch.randperm(1280, generator=torch.Generator().manual_seed(0))
    for key in ("_conv_head.weight", "_bn1.weight", "_bn1.bias", "_bn1.running_mean", "_bn1.running_var"):
        state[key] = state[key][perm].contiguous()
    save_file(state, str(broken / "model.safetensors"))
    register_bundle(MlflowClient(), MODEL, broken, alias="drifted", experiment_id=configure_mlflow(cfg))
    before = {t: delta_writer.table_version(spark, cfg.storage, t) for t in ("frame_embeddings", "video_labels")}
    with pytest.raises(ValidationFailed) as failed:
        embed_frames.run(spark, cfg, model=f"{MODEL}@drifted")
    failures = " | ".join(failed.value.outcome.failures)
    assert "drift_cosine" in failures and "label_shift" in failures
    assert {t: delta_writer.table_version(spark, cfg.storage, t) for t in before} == before
    assert promotion.current_space(spark, cfg.storage) == first.space.id


def _sync(spark, cfg, copy: dict, table: str, since: int, out) -> int:
    """Apply ``catalogfs changes TABLE --since SINCE --net --out`` to ``copy`` (key → row), as a
    downstream cache would; returns the version the copy is now in step with."""
    import pandas as pd

    from catalogfs.features import delta_writer
    from catalogfs.features.change_feed import table_keys
    from catalogfs.jobs import changes

    until = delta_writer.table_version(spark, cfg.storage, table)
    overrides = ["--set", f"storage.data_root={cfg.storage.data_root}", "--set", "storage.database=spaces_features"]
    assert changes.main([*overrides, table, "--since", str(since), "--until", str(until), "--net",
                         "--out", str(out)]) == 0
    keys = table_keys(table)
    for row in pd.read_parquet(out).to_dict("records"):
        key = tuple(row[k] for k in keys)
        if row["_change_type"] == "delete":
            copy.pop(key, None)
        else:
            copy[key] = {c: v for c, v in row.items() if not c.startswith("_")}
    return until


def _same(spark, cfg, copy: dict, table: str, columns: tuple[str, ...]) -> None:
    from catalogfs.features.change_feed import table_keys

    keys = table_keys(table)
    rows = {tuple(r[k] for k in keys): r.asDict() for r in spark.table(cfg.storage.qualified(table)).collect()}
    assert set(copy) == set(rows)
    for key, row in rows.items():
        for c in columns:
            mine, theirs = copy[key][c], row[c]
            if c == "embedding":
                np.testing.assert_array_equal(np.asarray(mine, dtype=np.float32), np.asarray(theirs, dtype=np.float32))
            else:
                assert mine == theirs, (key, c)


def test_a_copy_synced_from_the_change_feed_equals_the_table(spark, two_spaces, tmp_path):
    """A downstream copy of video_embeddings and feature_versions, bootstrapped from a full read,
    then kept in step only by `catalogfs changes --net` across a publish (a new video), a removal
    (a video's frames deleted: the next run deletes its rows) and a promote."""
    from catalogfs.features import delta_writer
    from catalogfs.features.change_feed import table_keys

    cfg, first, second = two_spaces
    tables = {"video_embeddings": ("embedding", "run_id", "n_frames"), "feature_versions": ("status", "note", "run_id")}
    copies, since = {}, {}
    for table in tables:  # bootstrap: a full read at a known version
        since[table] = delta_writer.table_version(spark, cfg.storage, table)
        keys = table_keys(table)
        rows = spark.sql(f"SELECT * FROM {cfg.storage.qualified(table)} VERSION AS OF {since[table]}").collect()
        copies[table] = {tuple(r[k] for k in keys): r.asDict() for r in rows}

    def step(name: str) -> None:
        for table, columns in tables.items():
            since[table] = _sync(spark, cfg, copies[table], table, since[table], tmp_path / f"{name}-{table}")
            _same(spark, cfg, copies[table], table, columns)

    videos = tmp_path / "more_videos"
    make_sample_videos(videos, seconds=1.0, fps=6, width=320, height=180,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id == "rocket_launch"))
    extract_frames.run(spark, cfg, input=str(videos))
    assert embed_frames.run(spark, cfg).published  # a publish: rocket_launch's rows inserted
    step("publish")
    assert ("rocket_launch", first.space.id) in copies["video_embeddings"]
    spark.sql(f"DELETE FROM {cfg.storage.qualified('frames')} WHERE video_id = 'coffee_cup'")
    assert embed_frames.run(spark, cfg).published  # a removal: coffee_cup's rows deleted
    before = since["video_embeddings"]
    step("removal")
    # SQL consumers read the same feed with table_changes (versions inclusive)
    sql_changes = {(r.video_id, r._change_type) for r in spark.sql(
        f"SELECT video_id, _change_type FROM table_changes('{cfg.storage.qualified('video_embeddings')}', "
        f"{before + 1}, {since['video_embeddings']}) WHERE embedding_space = '{first.space.id}'").collect()}
    assert ("coffee_cup", "delete") in sql_changes and not any(v == "rocket_launch" for v, _ in sql_changes)
    assert ("coffee_cup", first.space.id) not in copies["video_embeddings"]
    assert ("coffee_cup", second.space.id) in copies["video_embeddings"]  # the shadow space was not run
    overrides = ["--set", f"storage.data_root={cfg.storage.data_root}", "--set", "storage.database=spaces_features"]
    def promotions_of(space: str) -> int:
        return sum(r["status"] == "promoted" and r["embedding_space"] == space for r in copies["feature_versions"].values())

    promoted_before = promotions_of(second.space.id)
    assert spaces.main([*overrides, "promote", second.space.id]) == 0
    step("promote")  # a promote writes only its lineage row; the feature rows do not move
    assert promotions_of(second.space.id) == promoted_before + 1
