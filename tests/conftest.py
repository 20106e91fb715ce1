"""Shared fixtures: one local Spark session (Delta, Derby catalog) and one MLflow sqlite registry
per test run, both under a temporary data root; small real fixtures (photos from scikit-image)."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# ONNX exports of the test models go to a folder of this test run (Spark's workers inherit it)
_ONNX_CACHE = tempfile.mkdtemp(prefix="catalogfs-test-onnx-")
os.environ["CATALOGFS_ONNX_CACHE"] = _ONNX_CACHE
atexit.register(shutil.rmtree, _ONNX_CACHE, True)

from catalogfs.config import DEFAULT_CONF_DIR, Config, load_config  # noqa: E402


def photo_bytes(name: str, fmt: str = "JPEG", **save_args) -> bytes:
    """A scikit-image photo encoded in ``fmt``."""
    import skimage
    from PIL import Image

    buf = io.BytesIO()
    with Image.open(Path(skimage.__file__).parent / "data" / name) as img:
        img.convert("RGB").save(buf, format=fmt, **save_args)
    return buf.getvalue()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("catalogfs-data")


@pytest.fixture(scope="session")
def cfg(data_root: Path) -> Config:
    """Test config: the local config over a temporary data root, short sample videos."""
    return load_config([DEFAULT_CONF_DIR / "local.yaml"], [
        f"storage.data_root={data_root}",
        "spark.master=local[2]",
        "samples.seconds=2.0",
        "samples.width=320",
        "samples.height=180",
        "inference.batch_size=8",
    ])


def with_database(cfg: Config, database: str) -> Config:
    """The same config writing to another database (tests isolate their tables this way)."""
    return cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"database": database})})


@pytest.fixture(scope="session")
def spark(cfg: Config):
    from catalogfs.spark import build_spark

    session = build_spark(cfg)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def default_bundle(tmp_path_factory) -> Path:
    """The real EfficientNet-Lite0 ImageNet bundle, written once per test run."""
    from udfs.model_registry import write_default_bundle

    return write_default_bundle(tmp_path_factory.mktemp("bundle") / "efficientnet_lite0")
