"""transformers vision models, built tiny and offline: CLIP (zero-shot against a taxonomy) and a ViT
classifier, checked against the models' own processors and forward passes, then registered and run
through the embed job beside the default model's space, from one frames table."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import photo_bytes
from catalogfs.udfs.engine import EmbeddingEngine, EngineOptions
from catalogfs.udfs.hf_models import write_transformers_bundle


def _tiny_clip(path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {}
    for ch in bytes_to_unicode().values():
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    for tok in ("<|startoftext|>", "<|endoftext|>"):
        vocab[tok] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _tiny_vit(path, *, labels=None, multi_label=False, head_bias=None):
    """A tiny random ViT classifier; with ``head_bias`` its head ignores the image (zero weights) and
    every frame's logits are exactly ``head_bias`` — a known answer for scores and flags."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = labels or {0: "indoor", 1: "outdoor", 2: "animal"}
    config = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8, num_labels=len(labels), id2label=labels,
                       label2id={v: k for k, v in labels.items()},
                       problem_type="multi_label_classification" if multi_label else None)
    torch.manual_seed(1)
    model = ViTForImageClassification(config).eval()
    if head_bias is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor(head_bias))
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


MODERATION_LABELS = {0: "violence", 1: "nudity", 2: "weapon"}
MODERATION_BIAS = [2.0, -2.0, 0.0]  # sigmoid: .881 .119 .5 — softmax: .867 .016 .117
MODERATION_FLAGS = {"violence": 0.8, "nudity": 0.1, "weapon": 0.6}


def _sigmoid(v):
    return float(1 / (1 + np.exp(-np.float32(v))))


@pytest.fixture(scope="module")
def moderation_vit(tmp_path_factory):
    """A multi-label classifier whose every frame scores violence σ(2), nudity σ(-2), weapon σ(0)."""
    return _tiny_vit(tmp_path_factory.mktemp("moderation_hf"), labels=MODERATION_LABELS, multi_label=True,
                     head_bias=MODERATION_BIAS)


TAXONOMY = {"cat": ["a photo of a cat"], "coffee": ["a cup of coffee"], "rocket": ["a rocket launch"]}
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")


@pytest.fixture(scope="module")
def clip_bundle(tmp_path_factory):
    hf = _tiny_clip(tmp_path_factory.mktemp("clip_hf"))
    return hf, write_transformers_bundle(hf, tmp_path_factory.mktemp("clip") / "b", taxonomy=TAXONOMY,
                                         taxonomy_version="test-v1")


@pytest.fixture(scope="module")
def vit_bundle(tmp_path_factory):
    hf = _tiny_vit(tmp_path_factory.mktemp("vit_hf"))
    return hf, write_transformers_bundle(hf, tmp_path_factory.mktemp("vit") / "b")


@pytest.mark.parametrize("kind", ["clip", "vit"])
def test_preprocessing_matches_the_models_own_processor(kind, tmp_path):
    """Our batch preprocessing from a processor's config equals the processor's output (224 px)."""
    from transformers import AutoImageProcessor, CLIPImageProcessor, ViTImageProcessor

    from catalogfs.udfs.preprocess import PreprocessSpec

    if kind == "clip":
        CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(tmp_path)
    else:
        ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(tmp_path)
    spec = PreprocessSpec.from_hf_processor(json.loads((tmp_path / "preprocessor_config.json").read_text()))
    processor = AutoImageProcessor.from_pretrained(str(tmp_path))
    for name in PHOTOS:
        img = Image.open(io.BytesIO(photo_bytes(name))).convert("RGB")
        ours = spec.to_array(img)
        theirs = processor(images=[img], return_tensors="np")["pixel_values"][0]
        assert ours.shape == theirs.shape == (3, 224, 224)
        # Resampling backends differ by a level or two per pixel; the pictures are the same.
        assert float(np.abs(ours - theirs).mean()) < 0.03
        assert float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]) > 0.995


def test_clip_zero_shot_scores_equal_the_models_own_logits(clip_bundle):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    hf, bundle = clip_bundle
    engine = EmbeddingEngine.from_directory(bundle, EngineOptions(top_k=3))
    assert engine.model.labels == list(TAXONOMY) and engine.embedding_dim == 16
    model = CLIPModel.from_pretrained(str(hf)).eval()
    processor, tokenizer = AutoImageProcessor.from_pretrained(str(hf)), AutoTokenizer.from_pretrained(str(hf))
    images = [Image.open(io.BytesIO(photo_bytes(n))).convert("RGB") for n in PHOTOS]
    with torch.inference_mode():
        out = model(**tokenizer([p[0] for p in TAXONOMY.values()], padding=True, return_tensors="pt"),
                    pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
    expected = torch.softmax(out.logits_per_image, dim=1).numpy()
    image_embeds = torch.nn.functional.normalize(out.image_embeds, dim=-1).numpy()
    result = engine.embed([photo_bytes(n) for n in PHOTOS])
    for row in range(3):
        got = dict(zip(result.label_names[row], result.label_scores[row]))
        for j, label in enumerate(TAXONOMY):
            assert got[label] == pytest.approx(float(expected[row, j]), abs=0.02)
        assert float(result.embeddings[row] @ image_embeds[row]) > 0.99


def test_vit_classifier_labels_and_cls_embedding(vit_bundle):
    from transformers import AutoImageProcessor, ViTForImageClassification

    hf, bundle = vit_bundle
    engine = EmbeddingEngine.from_directory(bundle, EngineOptions(top_k=2))
    assert engine.model.labels == ["indoor", "outdoor", "animal"] and engine.embedding_dim == 32
    model = ViTForImageClassification.from_pretrained(str(hf)).eval()
    img = Image.open(io.BytesIO(photo_bytes("chelsea.png"))).convert("RGB")
    with torch.inference_mode():
        out = model(pixel_values=AutoImageProcessor.from_pretrained(str(hf))(images=[img], return_tensors="pt")[
            "pixel_values"], output_hidden_states=True)
    cls = torch.nn.functional.normalize(out.hidden_states[-1][:, 0], dim=-1)[0].numpy()
    result = engine.embed([photo_bytes("chelsea.png")])
    assert float(result.embeddings[0] @ cls) > 0.99
    assert result.label_names[0][0] == model.config.id2label[int(out.logits.argmax())]


def test_pickle_only_transformers_folder_is_refused(tmp_path, vit_bundle):
    hf, _ = vit_bundle
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (folder / name).write_text((hf / name).read_text())
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="refusing pickle files"):
        write_transformers_bundle(folder, tmp_path / "b")


def test_registered_transformers_models_write_spaces_beside_the_default(spark, cfg, tmp_path_factory,
                                                                       clip_bundle, vit_bundle):
    from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos
    from catalogfs.jobs import embed_frames, extract_frames, models
    from tests.helpers import with_database

    cfg = with_database(cfg, "hf_features")
    overrides = ["--set", f"storage.data_root={cfg.storage.data_root}"]
    taxonomy = tmp_path_factory.mktemp("tax") / "t.yaml"
    taxonomy.write_text(json.dumps({"version": "test-v1", "labels": TAXONOMY}))
    assert models.main([*overrides, "register", "--from", str(clip_bundle[0]), "--name", "tiny_clip",
                        "--alias", "champion", "--taxonomy", str(taxonomy)]) == 0
    assert models.main([*overrides, "register", "--from", str(vit_bundle[0]), "--name", "tiny_vit",
                        "--alias", "champion"]) == 0

    videos = tmp_path_factory.mktemp("hf_videos")
    make_sample_videos(videos, seconds=1.0, fps=6, width=224, height=128,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id in ("cat_chelsea", "coffee_cup")))
    extract_frames.run(spark, cfg, input=str(videos))
    # the serving model (registered from the bundled default if missing), then two backfills
    spaces = {name: embed_frames.run(spark, cfg, model=None if name == cfg.model.name else f"{name}@champion").space
              for name in ("efficientnet_lite0_imagenet", "tiny_clip", "tiny_vit")}
    assert {n: s.dim for n, s in spaces.items()} == {"efficientnet_lite0_imagenet": 1280, "tiny_clip": 16,
                                                    "tiny_vit": 32}
    fe = spark.table(cfg.storage.qualified("frame_embeddings")).collect()
    for space in spaces.values():
        rows = [r for r in fe if r.embedding_space == space.id]
        assert len(rows) == 2 and all(len(r.embedding) == space.dim for r in rows)
    labels = spark.table(cfg.storage.qualified("video_labels")).collect()
    clip_labels = {r.label for r in labels if r.embedding_space == spaces["tiny_clip"].id}
    assert clip_labels <= set(TAXONOMY) and clip_labels
    assert {r.taxonomy_version for r in labels if r.embedding_space == spaces["tiny_clip"].id} == {"test-v1"}
    assert {r.label for r in labels if r.embedding_space == spaces["tiny_vit"].id} <= {"indoor", "outdoor", "animal"}
    # Models without flags: null flags on every frame and no video_flags rows.
    assert all(r.flags is None and r.flag_scores is None for r in fe)
    assert spark.table(cfg.storage.qualified("video_flags")).count() == 0


def test_multi_label_classifier_flags_use_sigmoids(moderation_vit, tmp_path):
    """Known answer: sigmoid scores pass violence (.881 ≥ .8) and nudity (.119 ≥ .1), not weapon (.5 < .6);
    the same head trained single-label scores by softmax, where only violence (.867) passes."""
    bundle = write_transformers_bundle(moderation_vit, tmp_path / "multi", flags=MODERATION_FLAGS)
    spec = json.loads((bundle / "model_spec.json").read_text())
    assert spec["options"]["flags"] == MODERATION_FLAGS and spec["options"]["flag_score"] == "sigmoid"
    images = [photo_bytes(n) for n in PHOTOS] + [b"garbage"]
    result = EmbeddingEngine.from_directory(bundle, EngineOptions(batch_size=2)).embed(images)
    assert result.flags == [["violence", "nudity"]] * 3 + [None]
    for scores in result.flag_scores[:3]:
        assert scores == pytest.approx([_sigmoid(2.0), _sigmoid(-2.0)], abs=1e-6)

    single = _tiny_vit(tmp_path / "single_hf", labels=MODERATION_LABELS, head_bias=MODERATION_BIAS)
    bundle = write_transformers_bundle(single, tmp_path / "single", flags=MODERATION_FLAGS)
    result = EmbeddingEngine.from_directory(bundle, EngineOptions()).embed([photo_bytes("coffee.png")])
    softmax = np.exp(MODERATION_BIAS) / np.exp(MODERATION_BIAS).sum()
    assert result.flags == [["violence"]] and result.flag_scores[0] == pytest.approx([softmax[0]], abs=1e-6)

    with pytest.raises(ValueError, match="gore"):
        write_transformers_bundle(moderation_vit, tmp_path / "bad", flags={"gore": 0.5})


def test_clip_taxonomy_flags_are_the_zero_shot_scores_over_their_thresholds(clip_bundle, tmp_path):
    hf, _ = clip_bundle
    thresholds = {"cat": 0.0, "rocket": 0.34, "coffee": 1.0}
    bundle = write_transformers_bundle(hf, tmp_path / "b", taxonomy=TAXONOMY, taxonomy_version="test-v1",
                                       flags=thresholds)
    result = EmbeddingEngine.from_directory(bundle, EngineOptions(top_k=3)).embed([photo_bytes(n) for n in PHOTOS])
    for row in range(len(PHOTOS)):
        scores = dict(zip(result.label_names[row], result.label_scores[row]))
        expected = sorted((label for label in thresholds if scores[label] >= thresholds[label]),
                          key=lambda label: -scores[label])
        assert result.flags[row] == expected and "cat" in expected
        assert result.flag_scores[row] == pytest.approx([scores[label] for label in expected], abs=1e-6)


def test_registration_records_signature_and_metadata(cfg, moderation_vit, tmp_path, capsys):
    """register (with --flags) → tags and params; list shows them; promote moves an alias."""
    from mlflow import MlflowClient
    from mlflow.models.signature import ModelSignature

    from catalogfs.jobs import models

    overrides = ["--set", f"storage.data_root={tmp_path / 'data'}"]
    flags = tmp_path / "flags.yaml"
    flags.write_text("".join(f"{k}: {v}\n" for k, v in MODERATION_FLAGS.items()))
    for _ in range(2):
        assert models.main([*overrides, "register", "--from", str(moderation_vit), "--name", "moderation",
                            "--flags", str(flags)]) == 0
    capsys.readouterr()
    client = MlflowClient()
    tags = client.get_model_version("moderation", "1").tags
    assert {k: tags[k] for k in ("family", "kind", "embedding_dim", "label_set", "flag_score")} == {
        "family": "transformers", "kind": "classifier", "embedding_dim": "32", "label_set": "vit-id2label",
        "flag_score": "sigmoid"}
    assert json.loads(tags["flags"]) == MODERATION_FLAGS and len(tags["preprocess_hash"]) == 8
    signature = ModelSignature.from_dict({"inputs": tags["signature_inputs"], "outputs": tags["signature_outputs"]})
    assert [(c.name, c.type.name) for c in signature.inputs.inputs] == [("image", "binary")]
    assert signature.outputs.input_names() == ["embedding", "status", "error", "labels", "label_scores",
                                               "flags", "flag_scores"]
    params = client.get_run(client.get_model_version("moderation", "1").run_id).data.params
    assert params["preprocess_hash"] == tags["preprocess_hash"] and json.loads(params["flags"]) == MODERATION_FLAGS

    assert models.main([*overrides, "promote", "moderation", "2"]) == 0
    assert models.main([*overrides, "promote", "moderation", "1", "--alias", "challenger"]) == 0
    assert models.main([*overrides, "alias", "moderation", "1", "shadow"]) == 0
    assert capsys.readouterr().out.splitlines() == ["moderation@champion → version 2",
                                                    "moderation@challenger → version 1",
                                                    "moderation@shadow → version 1"]
    assert models.main([*overrides, "promote", "moderation", "9"]) == 4
    assert "not in the registry" in capsys.readouterr().err
    assert models.main([*overrides, "list", "moderation"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("moderation v1 family=transformers kind=classifier dim=32")
    assert f"preprocess={tags['preprocess_hash']}" in lines[0] and "labels=vit-id2label" in lines[0]
    assert "flags=nudity>=0.1,violence>=0.8,weapon>=0.6 (sigmoid)" in lines[0]  # spec order: sorted
    assert "signature=(image:binary) -> (embedding:array<float>, status:string" in lines[0]
    assert lines[0].endswith("aliases=challenger,shadow") and lines[1].endswith("aliases=champion")


def test_flags_reach_delta_on_an_existing_data_root(spark, cfg, tmp_path_factory, moderation_vit):
    """A data root made by an older version (frame_embeddings without flag columns, no video_flags):
    the embed job adds the columns, writes the known flags per frame and per video, and repairs
    video_flags rows lost by an interrupted publish."""
    from dataclasses import replace

    from pyspark.sql.types import StructType

    from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos
    from catalogfs.features import delta_writer, promotion
    from catalogfs.features.tables import FRAME_EMBEDDINGS
    from catalogfs.jobs import embed_frames, extract_frames, models
    from tests.helpers import with_database

    cfg = with_database(cfg, "flags_features")
    old_schema = StructType([f for f in FRAME_EMBEDDINGS.schema.fields if not f.name.startswith("flag")])
    delta_writer.ensure_catalog(spark, cfg.storage, [replace(FRAME_EMBEDDINGS, schema=old_schema)])
    assert "flags" not in spark.table(cfg.storage.qualified("frame_embeddings")).columns

    overrides = ["--set", f"storage.data_root={cfg.storage.data_root}"]
    flags = tmp_path_factory.mktemp("flags") / "flags.yaml"
    flags.write_text("".join(f"{k}: {v}\n" for k, v in MODERATION_FLAGS.items()))
    assert models.main([*overrides, "register", "--from", str(moderation_vit), "--name", "tiny_moderation",
                        "--alias", "champion", "--flags", str(flags)]) == 0
    videos = tmp_path_factory.mktemp("flag_videos")
    make_sample_videos(videos, seconds=2.0, fps=6, width=224, height=128,
                       photos=tuple(p for p in SAMPLE_PHOTOS if p.video_id in ("cat_chelsea", "coffee_cup")))
    extract_frames.run(spark, cfg, input=str(videos))
    frames_table = cfg.storage.qualified("frames")
    stamps = {v: sorted(r.frame_ts_ms for r in spark.table(frames_table).where(f"video_id = '{v}'").collect())
              for v in ("cat_chelsea", "coffee_cup")}
    assert all(len(ts) == 2 for ts in stamps.values())
    # coffee_cup's first frame becomes undecodable: it can carry no flag.
    spark.sql(f"UPDATE {frames_table} SET image = X'FFD8FF00' "
              f"WHERE video_id = 'coffee_cup' AND frame_ts_ms = {stamps['coffee_cup'][0]}")

    # this catalogue serves the moderation model (model.name): its first published space becomes current
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": "tiny_moderation"})})
    first = embed_frames.run(spark, cfg)
    assert first.published and {"flags", "flag_scores"} <= set(spark.table(cfg.storage.qualified("frame_embeddings")).columns)
    frames = {(r.video_id, r.frame_ts_ms): r for r in spark.table(cfg.storage.qualified("frame_embeddings")).collect()}
    assert len(frames) == 4
    for key, row in frames.items():
        if key == ("coffee_cup", stamps["coffee_cup"][0]):
            assert (row.status, row.flags, row.flag_scores) == ("undecodable_image", None, None)
        else:
            assert row.status == "ok" and row.flags == ["violence", "nudity"]
            assert row.flag_scores == pytest.approx([_sigmoid(2.0), _sigmoid(-2.0)], abs=1e-6)

    def video_flags(table="video_flags"):
        return {(r.video_id, r.flag): (round(r.max_score, 5), r.n_frames_flagged, r.first_flag_ts_ms,
                                       round(r.threshold, 5), r.taxonomy_version, r.model_version)
                for r in spark.table(cfg.storage.qualified(table)).collect()}

    violence, nudity = round(_sigmoid(2.0), 5), round(_sigmoid(-2.0), 5)
    expected = {
        ("cat_chelsea", "violence"): (violence, 2, stamps["cat_chelsea"][0], 0.8, "vit-id2label", "1"),
        ("cat_chelsea", "nudity"): (nudity, 2, stamps["cat_chelsea"][0], 0.1, "vit-id2label", "1"),
        ("coffee_cup", "violence"): (violence, 1, stamps["coffee_cup"][1], 0.8, "vit-id2label", "1"),
        ("coffee_cup", "nudity"): (nudity, 1, stamps["coffee_cup"][1], 0.1, "vit-id2label", "1"),
    }
    assert video_flags() == expected
    assert video_flags("current_video_flags") == expected  # the first space became current

    # A publish that stopped before video_flags: the next run recomputes that video's rows.
    spark.sql(f"DELETE FROM {cfg.storage.qualified('video_flags')} WHERE video_id = 'cat_chelsea'")
    repair = embed_frames.run(spark, cfg)
    assert repair.frames_embedded == 0 and repair.videos_updated == ["cat_chelsea"] and repair.published
    assert video_flags() == expected

    # Views of a data root older than the video_flags table are re-created for the current space.
    spark.sql(f"DROP VIEW {cfg.storage.qualified('current_video_flags')}")
    assert promotion.refresh_current_views(spark, cfg.storage) == ["current_video_flags"]
    assert video_flags("current_video_flags") == expected
