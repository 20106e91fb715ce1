"""transformers vision models, built tiny and offline: CLIP (zero-shot against a taxonomy) and a ViT
classifier, checked against the models' own processors and forward passes, then registered and run
through the embed job beside the default model's space, from one frames table."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import photo_bytes
from udfs.engine import EmbeddingEngine, EngineOptions
from udfs.hf_models import write_transformers_bundle
from udfs.model_bundle import load_bundle


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


def _tiny_vit(path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {0: "indoor", 1: "outdoor", 2: "animal"}
    config = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8, num_labels=3, id2label=labels,
                       label2id={v: k for k, v in labels.items()})
    torch.manual_seed(1)
    ViTForImageClassification(config).eval().save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


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

    from udfs.preprocess import PreprocessSpec

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
    from catalogfs.samples import SAMPLE_PHOTOS, make_sample_videos
    from jobs import embed_frames, extract_frames, models
    from tests.conftest import with_database

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
    spaces = {name: embed_frames.run(spark, cfg, model=f"{name}@champion").space
              for name in ("efficientnet_lite0_imagenet", "tiny_clip", "tiny_vit")}
    assert {n: s.dim for n, s in spaces.items()} == {"efficientnet_lite0_imagenet": 1280, "tiny_clip": 16,
                                                    "tiny_vit": 32}
    fe = spark.table(cfg.storage.qualified("frame_embeddings")).collect()
    for name, space in spaces.items():
        rows = [r for r in fe if r.embedding_space == space.id]
        assert len(rows) == 2 and all(len(r.embedding) == space.dim for r in rows)
    labels = spark.table(cfg.storage.qualified("video_labels")).collect()
    clip_labels = {r.label for r in labels if r.embedding_space == spaces["tiny_clip"].id}
    assert clip_labels <= set(TAXONOMY) and clip_labels
    assert {r.taxonomy_version for r in labels if r.embedding_space == spaces["tiny_clip"].id} == {"test-v1"}
    assert {r.label for r in labels if r.embedding_space == spaces["tiny_vit"].id} <= {"indoor", "outdoor", "animal"}
