"""The engine alone: no Spark, no MLflow, the real EfficientNet-Lite0 ImageNet weights."""

import sys

import numpy as np
import pytest
import torch

from tests.helpers import photo_bytes
from catalogfs.udfs.efficientnet_lite import EfficientNetLite0, build_efficientnet_lite0, load_packaged_state_dict
from catalogfs.udfs.engine import EmbeddingEngine, EngineOptions
from catalogfs.statuses import Status
from catalogfs.udfs.model_bundle import load_bundle
from catalogfs.errors import BundleError

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
    assert result.statuses == [Status.EMPTY_IMAGE, "ok", Status.UNDECODABLE_IMAGE, Status.EMPTY_IMAGE]
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


def test_batches_are_also_cut_by_bytes(engine, monkeypatch):
    """With room for two 224 px frames in max_batch_bytes, five frames go as 2 + 2 + 1; a limit
    under one frame still forwards each frame alone. Results do not depend on the cut."""
    frame_bytes = 3 * 224 * 224 * 4
    images = [photo_bytes(n) for n in ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "camera.png")]
    reference = engine.embed(images)
    for limit, expected in ((2 * frame_bytes + 100, [2, 2, 1]), (frame_bytes // 2, [1] * 5), (0, [4, 1])):
        by_bytes = EmbeddingEngine(engine.model, EngineOptions(batch_size=4, max_batch_bytes=limit))
        sizes = []
        real = by_bytes._forward
        monkeypatch.setattr(by_bytes, "_forward",
                            lambda batch, sizes=sizes, real=real: sizes.append(len(batch)) or real(batch))
        result = by_bytes.embed(images)
        assert sizes == expected and result.forward_passes == len(expected)
        for a, b in zip(reference.embeddings, result.embeddings):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_gpu_decode_and_pinned_memory_are_not_used_on_cpu(engine, monkeypatch):
    from catalogfs.udfs import engine as engine_module
    from catalogfs.udfs.engine import use_gpu_decode
    from catalogfs.udfs.preprocess import PreprocessSpec

    assert engine.device.type == "cpu" and not engine.gpu_decode and engine._prefetch is None
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    assert not use_gpu_decode(EngineOptions(gpu_decode="auto"), cpu, PreprocessSpec())
    assert use_gpu_decode(EngineOptions(gpu_decode="auto"), cuda, PreprocessSpec())
    assert not use_gpu_decode(EngineOptions(gpu_decode="off"), cuda, PreprocessSpec())
    assert not use_gpu_decode(EngineOptions(gpu_decode="auto"), cuda, PreprocessSpec(interpolation="lanczos"))
    with pytest.raises(ValueError, match="gpu_decode"):
        use_gpu_decode(EngineOptions(gpu_decode="yes"), cpu, PreprocessSpec())

    def no_tensor_decode(*args, **kwargs):
        raise AssertionError("torchvision decode used on CPU")

    monkeypatch.setattr(engine_module, "decode_jpeg_tensor", no_tensor_decode)
    arrays = [np.zeros((3, 224, 224), np.float32)] * 2
    assert isinstance(engine._stack(arrays), np.ndarray)  # host batch stays a plain array: no pinning
    assert engine.embed([photo_bytes("coffee.png")]).label_names[0][0] == "espresso"


TENSOR_SPECS = [
    pytest.param(dict(), id="efficientnet-bicubic-256-224"),
    pytest.param(dict(resize_shorter=224, crop=224, mean=(0.481, 0.458, 0.408), std=(0.269, 0.261, 0.276),
                      long_side="floor"), id="clip-bicubic-224"),
    pytest.param(dict(resize_shorter=224, crop=224, interpolation="bilinear", resize_mode="exact"), id="vit-exact"),
]


@pytest.mark.parametrize("settings", TENSOR_SPECS)
def test_tensor_preprocessing_matches_the_pil_path(settings):
    """torchvision decode + tensor preprocessing (here on the CPU) ≈ PIL decode + to_array."""
    from catalogfs.udfs.gpu_decode import decode_jpeg_tensor
    from catalogfs.udfs.images import decode_image
    from catalogfs.udfs.preprocess import PreprocessSpec

    spec = PreprocessSpec(**settings)
    for name in ("chelsea.png", "coffee.png", "rocket.jpg", "camera.png", "astronaut.png"):
        data = photo_bytes(name)
        ours = decode_jpeg_tensor(data, spec, device="cpu", max_pixels=10**8).numpy()
        pil = spec.to_array(decode_image(data, max_pixels=10**8, draft_size=spec.draft_size).image)
        assert ours.shape == pil.shape == (3, spec.crop, spec.crop) and ours.dtype == np.float32
        # Equal up to resampling (and PIL's draft-mode JPEG decode of large frames).
        assert float(np.abs(ours - pil).mean()) < 0.03, name
        assert float(np.corrcoef(ours.ravel(), pil.ravel())[0, 1]) > 0.995, name


def test_frames_the_tensor_path_does_not_handle_are_refused_before_decoding():
    import io

    from PIL import Image

    from catalogfs.udfs.gpu_decode import NotForTensorPath, decode_jpeg_tensor
    from catalogfs.udfs.preprocess import PreprocessSpec

    spec = PreprocessSpec()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: PIL applies it, the tensor path would not
    rotated = photo_bytes("coffee.png", exif=exif.tobytes())
    buf = io.BytesIO()
    Image.new("CMYK", (64, 48), (0, 50, 100, 0)).save(buf, format="JPEG")
    for data in (photo_bytes("coffee.png", fmt="PNG"), rotated, buf.getvalue()):
        with pytest.raises(NotForTensorPath):
            decode_jpeg_tensor(data, spec, device="cpu", max_pixels=10**8)
    with pytest.raises(NotForTensorPath, match="size"):
        decode_jpeg_tensor(photo_bytes("coffee.png"), spec, device="cpu", max_pixels=1000)


def test_forced_tensor_decode_keeps_results_and_statuses(default_bundle, engine):
    """The GPU-decode code path, forced on the CPU: vectors match the PIL path's, and frames it
    cannot take (PNG, garbage, too large) fall back to PIL with PIL's statuses."""
    limit = 265_000  # rocket.jpg (427x640) is over it
    tensor_engine = EmbeddingEngine(engine.model, EngineOptions(batch_size=4, max_image_pixels=limit))
    tensor_engine.gpu_decode = True
    images = [photo_bytes("coffee.png"), photo_bytes("chelsea.png", fmt="PNG"), b"\xff\xd8\xff garbage",
              photo_bytes("rocket.jpg"), None, photo_bytes("astronaut.png")]
    forced = tensor_engine.embed(images)
    plain = EmbeddingEngine(engine.model, EngineOptions(batch_size=4, max_image_pixels=limit)).embed(images)
    assert forced.statuses == plain.statuses == ["ok", "ok", Status.UNDECODABLE_IMAGE, "image_too_large", Status.EMPTY_IMAGE, "ok"]
    for a, b in zip(forced.embeddings, plain.embeddings):
        assert (a is None) == (b is None)
        if a is not None:
            assert float(a @ b) > 0.99
    assert forced.label_names[0][0] == "espresso"
    assert not np.array_equal(forced.embeddings[0], plain.embeddings[0])  # the JPEG took the tensor path
    np.testing.assert_array_equal(forced.embeddings[1], plain.embeddings[1])  # the PNG took PIL's


PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "camera.png")


def test_cpu_serves_the_default_model_with_onnx_runtime_and_the_same_outputs(default_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("CATALOGFS_ONNX_CACHE", str(tmp_path))
    images = [photo_bytes(n) for n in PHOTOS]
    eager = EmbeddingEngine.from_directory(default_bundle, EngineOptions(batch_size=4, runtime="torch"))
    fast = EmbeddingEngine.from_directory(default_bundle, EngineOptions(batch_size=4))
    assert (eager.runtime, fast.runtime) == ("torch", "onnxruntime")
    assert len(list(tmp_path.glob("*.onnx"))) == 1  # exported once, cached by content
    a, b = eager.embed(images), fast.embed(images)
    for x, y in zip(a.embeddings, b.embeddings):
        np.testing.assert_allclose(x, y, atol=1e-5)
    assert a.label_names == b.label_names
    np.testing.assert_allclose(np.array(a.label_scores), np.array(b.label_scores), atol=1e-5)
    again = EmbeddingEngine.from_directory(default_bundle, EngineOptions(batch_size=2))  # from the cache
    np.testing.assert_allclose(again.embed(images[:1]).embeddings[0], b.embeddings[0], atol=1e-6)


def test_an_export_that_disagrees_with_the_model_is_not_served(default_bundle, tmp_path, monkeypatch, caplog):
    """A cached export that computes something else than the loaded weights (here: weights changed
    in memory after the export) is refused: PyTorch serves the model, or with runtime
    'onnxruntime' the engine fails."""
    from catalogfs.errors import OnnxExportError

    monkeypatch.setenv("CATALOGFS_ONNX_CACHE", str(tmp_path))
    EmbeddingEngine.from_directory(default_bundle, EngineOptions(batch_size=2))  # caches the export
    model = load_bundle(default_bundle)
    with torch.no_grad():
        model.module._fc.weight.mul_(1.5)
    with caplog.at_level("WARNING"):
        engine = EmbeddingEngine(model, EngineOptions(batch_size=2))
    assert engine.runtime == "torch" and "differs from the model" in caplog.text
    with pytest.raises(OnnxExportError, match="differs from the model"):
        EmbeddingEngine(model, EngineOptions(batch_size=2, runtime="onnxruntime"))
    with pytest.raises(ValueError, match="inference.runtime"):
        EmbeddingEngine(model, EngineOptions(runtime="tensorrt"))


def test_a_damaged_cached_export_is_removed_and_pytorch_serves(default_bundle, tmp_path, monkeypatch, caplog):
    """An export that ONNX Runtime cannot load although its sha256 sidecar vouches for it (a damaged
    file that does not match its sidecar is exported again at once: tests/test_onnx_cache.py)."""
    import hashlib

    monkeypatch.setenv("CATALOGFS_ONNX_CACHE", str(tmp_path))
    EmbeddingEngine.from_directory(default_bundle, EngineOptions(batch_size=2))
    (cached,) = tmp_path.glob("*.onnx")
    damaged = cached.read_bytes()[:1000]  # cut short, and recorded so by the exporter
    cached.write_bytes(damaged)
    cached.with_name(f"{cached.name}.sha256").write_text(f"{hashlib.sha256(damaged).hexdigest()}  {cached.name}\n")
    with caplog.at_level("WARNING"):
        engine = EmbeddingEngine.from_directory(default_bundle, EngineOptions(batch_size=2))
    assert engine.runtime == "torch" and "cannot load the ONNX export" in caplog.text
    assert not cached.exists()
    assert EmbeddingEngine.from_directory(default_bundle, EngineOptions(batch_size=2)).runtime == "onnxruntime"
