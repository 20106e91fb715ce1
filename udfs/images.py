"""Robust image decoding: bytes → RGB PIL image, or a status and an error that say why not.

A bad frame never raises out of here: it becomes a :class:`DecodeOutcome` with a status, so the
caller can keep a row for it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from catalogfs.statuses import Status


@dataclass(frozen=True)
class DecodeOutcome:
    image: Image.Image | None
    status: Status
    error: str | None = None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB. Transparency is composited on white; 16/32-bit gray is rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.astype("uint8"), mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes | bytearray | memoryview | None, *, max_pixels: int,
                 draft_size: tuple[int, int] | None = None) -> DecodeOutcome:
    """Decode encoded image bytes (JPEG, PNG, WebP, …) into an RGB image.

    ``max_pixels`` bounds width*height, checked from the header before any pixel is decoded
    (decompression bombs). ``draft_size`` lets JPEG decode at a reduced scale that still covers it.
    EXIF orientation is applied.
    """
    if data is None or len(data) == 0:
        return DecodeOutcome(None, Status.EMPTY_IMAGE, "no image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)))
            width, height = img.size
            if width <= 0 or height <= 0:
                return DecodeOutcome(None, Status.UNDECODABLE_IMAGE, f"invalid size {width}x{height}")
            if width * height > max_pixels:
                return DecodeOutcome(
                    None, Status.IMAGE_TOO_LARGE,
                    f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
                )
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", draft_size)
            img.load()
            return DecodeOutcome(_to_rgb(ImageOps.exif_transpose(img)), Status.OK)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return DecodeOutcome(None, Status.IMAGE_TOO_LARGE, str(exc))
    except UnidentifiedImageError:
        return DecodeOutcome(None, Status.UNDECODABLE_IMAGE, "not a recognised image format")
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        return DecodeOutcome(None, Status.UNDECODABLE_IMAGE, f"{type(exc).__name__}: {exc}")
