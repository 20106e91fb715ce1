"""Re-labelling a CLIP-like space from its stored vectors (features/relabel.py, udfs/relabel.py):
the labels equal those of a full re-embed with the new taxonomy, vectors stay bit-identical, no
image forward pass runs, a failed validation publishes nothing, non-CLIP spaces are refused, and
the next embed run still plans incrementally."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

from tests.helpers import photo_bytes, with_database
from tests.test_transformers_models import PHOTOS, _tiny_clip, _tiny_vit

DATABASE = "relabel_features"
TAXONOMY_V1 = {"version": "content-v1", "labels": {
    "cat": ["a photo of a cat"], "coffee": ["a cup of coffee"], "rocket": ["a rocket launch"]}}
TAXONOMY_V2 = {"version": "content-v2", "labels": {
    "animal": ["a photo of an animal", "a cat"], "drink": ["a hot drink"], "vehicle": ["a vehicle", "a rocket"],
    "landscape": ["a landscape"]},
    "flags": {"animal": 0.0, "vehicle": 0.25}}  # animal: every ok frame; vehicle: some


@pytest.fixture(scope="module")
def clip_hf(tmp_path_factory):
    return _tiny_clip(tmp_path_factory.mktemp("relabel_clip_hf"))


@pytest.fixture(scope="module")
def taxonomies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("relabel_taxonomies")
    paths = {}
    for taxonomy in (TAXONOMY_V1, TAXONOMY_V2):
        paths[taxonomy["version"]] = folder / f"{taxonomy['version']}.yaml"
        paths[taxonomy["version"]].write_text(json.dumps(taxonomy))  # JSON is YAML
    return paths


def _block_image_tower(monkeypatch):
    """Any image forward pass of a CLIP model in this process fails the test."""
    from transformers import CLIPModel
    from transformers.models.clip import modeling_clip

    def refuse(*args, **kwargs):
        raise AssertionError("the image tower ran")

    monkeypatch.setattr(CLIPModel, "get_image_features", refuse)
    monkeypatch.setattr(modeling_clip.CLIPVisionEmbeddings, "forward", refuse)  # every image path


def test_scorer_gives_the_engines_labels_from_its_vectors(clip_hf, taxonomies, tmp_path, monkeypatch):
    """Engine with taxonomy v2 on photos == scorer (v2, built from a v1 bundle's text tower) on the
    engine's vectors; building and using the scorer runs no image forward pass."""
    from catalogfs.udfs.engine import EmbeddingEngine, EngineOptions
    from catalogfs.udfs.flags import load_taxonomy
    from catalogfs.udfs.hf_models import write_transformers_bundle
    from catalogfs.udfs.relabel import zero_shot_scorer

    v1, v2 = load_taxonomy(taxonomies["content-v1"]), load_taxonomy(taxonomies["content-v2"])
    bundle_v2 = write_transformers_bundle(clip_hf, tmp_path / "v2", taxonomy=v2.labels, taxonomy_version=v2.version,
                                          flags=v2.flags)
    bundle_v1 = write_transformers_bundle(clip_hf, tmp_path / "v1", taxonomy=v1.labels, taxonomy_version=v1.version)
    images = [photo_bytes(n) for n in PHOTOS] + [b"not an image"]
    full = EmbeddingEngine.from_directory(bundle_v2, EngineOptions(top_k=3)).embed(images)
    assert full.flags[0] and "animal" in full.flags[0]

    _block_image_tower(monkeypatch)
    scorer = zero_shot_scorer(bundle_v1, v2, top_k=3)
    got = scorer.score(full.embeddings)
    assert got.labels == full.label_names[:3] + [None]
    for row in range(3):
        assert got.label_scores[row] == pytest.approx(full.label_scores[row], abs=1e-6)
        assert got.flags[row] == full.flags[row]
        assert got.flag_scores[row] == pytest.approx(full.flag_scores[row], abs=1e-6)
    assert got.flags[3] is None and got.label_scores[3] is None
    # no flags in the taxonomy: null flags, as the engine writes for a model without flags
    assert replace(scorer, flags={}).score(full.embeddings[:1]).flags == [None]


def test_non_clip_models_are_refused(tmp_path):
    from catalogfs.errors import EXIT_CONFIG, RelabelError
    from catalogfs.udfs.bundle_format import read_spec
    from catalogfs.udfs.hf_models import write_transformers_bundle
    from catalogfs.udfs.model_registry import default_bundle_spec
    from catalogfs.udfs.relabel import require_zero_shot

    with pytest.raises(RelabelError, match="not CLIP-like") as caught:
        require_zero_shot(default_bundle_spec(), what="space efficientnet")
    assert caught.value.exit_code == EXIT_CONFIG and "efficientnet_lite0" in str(caught.value)
    vit = write_transformers_bundle(_tiny_vit(tmp_path / "vit_hf"), tmp_path / "vit")
    with pytest.raises(RelabelError, match="kind classifier"):
        require_zero_shot(read_spec(vit), what="space vit")


def _table(spark, cfg, table, space):
    return [r.asDict() for r in spark.table(cfg.storage.qualified(table)).where(f"embedding_space = '{space}'").collect()]


def _versions(spark, cfg):
    from catalogfs.features.delta_writer import table_version

    return {t: table_version(spark, cfg.storage, t) for t in ("frame_embeddings", "video_labels", "video_flags",
                                                               "video_embeddings")}


@pytest.fixture(scope="module")
def catalogue(spark, cfg, clip_hf, taxonomies, tmp_path_factory):
    """Frames of two videos; space A by ``relabel_clip`` (taxonomy v1, serving: current) and space
    B by ``relabel_clip_v2`` (the same weights registered with taxonomy v2: the full re-embed)."""
    from catalogfs.jobs import embed_frames, extract_frames, models
    from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos

    cfg = with_database(cfg, DATABASE)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": "relabel_clip"})})
    overrides = ["--set", f"storage.data_root={cfg.storage.data_root}"]
    for name, version in (("relabel_clip", "content-v1"), ("relabel_clip_v2", "content-v2")):
        assert models.main([*overrides, "register", "--from", str(clip_hf), "--name", name, "--alias", "champion",
                            "--taxonomy", str(taxonomies[version])]) == 0
    videos = tmp_path_factory.mktemp("relabel_videos")
    make_sample_videos(videos, seconds=2.0, fps=6, width=224, height=128,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id in ("cat_chelsea", "coffee_cup")))
    extract_frames.run(spark, cfg, input=str(videos))
    space_a = embed_frames.run(spark, cfg).space.id
    space_b = embed_frames.run(spark, cfg, model="relabel_clip_v2@champion").space.id
    return cfg, space_a, space_b


def test_failed_validation_and_dry_run_publish_nothing(spark, catalogue, taxonomies, monkeypatch):
    from catalogfs.errors import ValidationFailed
    from catalogfs.features import relabel
    from catalogfs.jobs.relabel import run

    cfg, space_a, _ = catalogue
    before, labels = _versions(spark, cfg), _table(spark, cfg, "video_labels", space_a)
    dry = run(spark, cfg, taxonomy=taxonomies["content-v2"], dry_run=True)
    assert dry.dry_run and not dry.published and dry.validation.success and dry.videos_relabelled == 2
    assert dry.previous_taxonomies == ["content-v1"] and dry.space.taxonomy_version == "content-v2"

    real_params = relabel.suite_params
    monkeypatch.setattr(relabel, "suite_params", lambda *a: replace(real_params(*a), dim=real_params(*a).dim + 1))
    with pytest.raises(ValidationFailed, match="emb_dim") as failed:
        run(spark, cfg, taxonomy=taxonomies["content-v2"])
    assert "nothing published" in str(failed.value)
    assert _versions(spark, cfg) == before and _table(spark, cfg, "video_labels", space_a) == labels
    lineage = spark.table(cfg.storage.qualified("feature_versions")).where(
        f"embedding_space = '{space_a}' AND note LIKE 'relabel:%'").collect()
    assert [(r.status, r.frames_embedded, r.validation_success) for r in lineage] == [("rejected", 0, "false")]


def test_relabel_equals_a_full_re_embed_with_the_new_taxonomy(spark, catalogue, taxonomies, monkeypatch, capsys):
    from catalogfs.features.lineage import changed_outside_runs, last_checkpoint, recent_commits
    from catalogfs.jobs import embed_frames, relabel

    cfg, space_a, space_b = catalogue
    frames_before = {(r["video_id"], r["frame_ts_ms"]): r for r in _table(spark, cfg, "frame_embeddings", space_a)}
    emb_before = _table(spark, cfg, "video_embeddings", space_a)
    _block_image_tower(monkeypatch)  # the driver builds the scorer; the workers load no model at all
    overrides = ["--set", f"storage.data_root={cfg.storage.data_root}", "--set", f"storage.database={DATABASE}",
                 "--set", "model.name=relabel_clip"]
    assert relabel.main([*overrides, "--taxonomy", str(taxonomies["content-v2"])]) == 0
    out = capsys.readouterr().out
    assert "taxonomy content-v1 → content-v2: 2 videos relabelled (4 frames)" in out
    assert "image forward passes 0" in out

    def by_key(table, space, key):
        return {tuple(r[k] for k in key): r for r in _table(spark, cfg, table, space)}

    for table, key, scores in (("video_labels", ("video_id", "label"), ("score",)),
                               ("video_flags", ("video_id", "flag"), ("max_score", "threshold"))):
        got, want = by_key(table, space_a, key), by_key(table, space_b, key)
        assert got.keys() == want.keys() and got, table
        for k, row in got.items():
            for column in scores:
                assert row[column] == pytest.approx(want[k][column], abs=1e-5)
            same = [c for c in row if c not in (*scores, "embedding_space", "model_name", "model_version",
                                                "run_id", "computed_at")]
            assert {c: row[c] for c in same} == {c: want[k][c] for c in same}, (table, k)
            assert row["taxonomy_version"] == "content-v2"
    assert {k[1] for k in by_key("video_flags", space_a, ("video_id", "flag"))} >= {"animal"}

    frames_after, frames_full = (by_key("frame_embeddings", s, ("video_id", "frame_ts_ms")) for s in (space_a, space_b))
    assert frames_after.keys() == frames_before.keys() == frames_full.keys()
    relabel_run = {r["run_id"] for r in frames_after.values()}
    assert len(relabel_run) == 1 and relabel_run != {r["run_id"] for r in frames_before.values()}
    for k, row in frames_after.items():
        assert row["embedding"] == frames_before[k]["embedding"]  # bit-identical floats
        unchanged = [c for c in row if c not in ("labels", "label_scores", "flags", "flag_scores", "run_id")]
        assert {c: row[c] for c in unchanged} == {c: frames_before[k][c] for c in unchanged}
        assert row["labels"] == frames_full[k]["labels"] and row["flags"] == frames_full[k]["flags"]
        assert row["label_scores"] == pytest.approx(frames_full[k]["label_scores"], abs=1e-5)
        assert row["flag_scores"] == pytest.approx(frames_full[k]["flag_scores"], abs=1e-5)
    assert _table(spark, cfg, "video_embeddings", space_a) == emb_before
    assert {r.label for r in spark.table(cfg.storage.qualified("current_video_labels")).collect()} <= set(
        TAXONOMY_V2["labels"])

    lineage = spark.table(cfg.storage.qualified("feature_versions")).where(
        f"embedding_space = '{space_a}' AND status = 'published' AND note LIKE 'relabel:%'").collect()
    assert len(lineage) == 1 and lineage[0].frames_embedded == 0 and lineage[0].frames_version is None
    assert lineage[0].note.startswith("relabel: taxonomy content-v2 (was content-v1)")
    assert set(json.loads(lineage[0].table_versions)) == {"frame_embeddings", "video_labels", "video_flags"}

    # The next embed run: the relabel's commits count as a run's, the plan stays incremental, nothing to do.
    checkpoint = last_checkpoint(spark, cfg, SimpleNamespace(id=space_a))  # the last embed run's
    assert checkpoint is not None and changed_outside_runs(spark, cfg, checkpoint, recent_commits(spark, cfg)) is None
    after = embed_frames.run(spark, cfg)
    assert after.plan_scope.startswith("incremental plan") and after.frames_embedded == 0
    assert after.videos_updated == [] and after.forward_passes == 0


def test_later_embed_runs_label_new_frames_with_the_relabelled_taxonomy(spark, catalogue, tmp_path_factory):
    """After the relabel to v2 (test above), an embed run of space A (its model registered with v1)
    labels a new video with v2: its rows equal those of space B (the model registered with v2), and
    every label row of the space is of v2. Re-using the version v2 for another taxonomy is refused."""
    from catalogfs.errors import RelabelError
    from catalogfs.jobs import embed_frames, extract_frames
    from catalogfs.jobs.relabel import run as relabel_run
    from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos

    cfg, space_a, space_b = catalogue
    recorded = spark.table(cfg.storage.qualified("taxonomies")).collect()
    assert [(r.embedding_space, r.taxonomy_version, json.loads(r.labels), json.loads(r.flags)) for r in recorded] == [
        (space_a, "content-v2", TAXONOMY_V2["labels"], TAXONOMY_V2["flags"])]

    videos = tmp_path_factory.mktemp("relabel_more_videos")
    make_sample_videos(videos, seconds=2.0, fps=6, width=224, height=128,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id == "rocket_launch"))
    extract_frames.run(spark, cfg, input=str(videos))
    a = embed_frames.run(spark, cfg)
    assert a.videos_updated == ["rocket_launch"] and a.space.taxonomy_version == "content-v2"
    assert embed_frames.run(spark, cfg, model="relabel_clip_v2@champion").videos_updated == ["rocket_launch"]

    def rows(table, space, key):
        return {tuple(r[k] for k in key): r for r in _table(spark, cfg, table, space) if r["video_id"] == "rocket_launch"}

    for table, key, scores in (("video_labels", ("video_id", "label"), ("score",)),
                               ("video_flags", ("video_id", "flag"), ("max_score", "threshold")),
                               ("frame_embeddings", ("video_id", "frame_ts_ms"), ("label_scores", "flag_scores"))):
        got, want = rows(table, space_a, key), rows(table, space_b, key)
        assert got.keys() == want.keys() and got, table
        for k, row in got.items():
            for column in scores:
                assert row[column] == pytest.approx(want[k][column], abs=1e-5), (table, k, column)
            for column in ("labels", "flags", "rank", "flag", "taxonomy_version"):
                assert row.get(column) == want[k].get(column), (table, k, column)
    assert {r["taxonomy_version"] for r in _table(spark, cfg, "video_labels", space_a)} == {"content-v2"}
    assert {r["taxonomy_version"] for r in _table(spark, cfg, "video_flags", space_a)} == {"content-v2"}

    other = tmp_path_factory.mktemp("relabel_other") / "v2_other.yaml"
    other.write_text(json.dumps({**TAXONOMY_V2, "flags": {"animal": 0.5}}))
    with pytest.raises(RelabelError, match="'content-v2' is already the taxonomy recorded for space"):
        relabel_run(spark, cfg, taxonomy=other, dry_run=True)


def test_a_taxonomy_relabelled_before_it_was_recorded_warns_and_keeps_the_registered_one(spark, catalogue):
    """A data root relabelled by a catalogfs without the ``taxonomies`` table (simulated: the table
    dropped): the next embed run neither fails nor guesses — it warns, names the fix, and the table
    is created again."""
    from catalogfs.jobs import embed_frames

    cfg, space_a, _ = catalogue
    spark.sql(f"DROP TABLE {cfg.storage.qualified('taxonomies')}")
    result = embed_frames.run(spark, cfg)
    assert result.frames_embedded == 0 and result.space.taxonomy_version == "content-v1"
    assert len(result.warnings) == 1 and "taxonomy 'content-v2', which is not recorded" in result.warnings[0]
    assert "run `catalogfs relabel`" in result.warnings[0]
    assert spark.table(cfg.storage.qualified("taxonomies")).count() == 0
