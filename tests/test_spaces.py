"""A new model version end to end: backfill a second space beside the current one (shadow),
compare the two, promote the new one (current views switch), roll back."""

import json
import shutil

import numpy as np
import pytest

from jobs.samples import SAMPLE_PHOTOS, make_sample_videos
from catalogfs.tracking import configure_mlflow
from features import promotion
from jobs import embed_frames, extract_frames, spaces
from tests.helpers import with_database

MODEL = "efficientnet_lite0_imagenet"


@pytest.fixture(scope="module")
def two_spaces(spark, cfg, tmp_path_factory, default_bundle):
    from mlflow import MlflowClient

    from udfs.model_registry import register_bundle

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

    from features import delta_writer
    from features.embedding_run import ValidationFailed
    from udfs.model_registry import register_bundle

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
