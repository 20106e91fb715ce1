"""Helpers shared by test modules (fixtures and hooks live in conftest.py)."""

from __future__ import annotations

import io
from pathlib import Path

from catalogfs.config import Config


def photo_bytes(name: str, fmt: str = "JPEG", **save_args) -> bytes:
    """A scikit-image photo encoded in ``fmt``."""
    import skimage
    from PIL import Image

    buf = io.BytesIO()
    with Image.open(Path(skimage.__file__).parent / "data" / name) as img:
        img.convert("RGB").save(buf, format=fmt, **save_args)
    return buf.getvalue()


def with_database(cfg: Config, database: str) -> Config:
    """The same config writing to another database (tests isolate their tables this way)."""
    return cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"database": database})})
