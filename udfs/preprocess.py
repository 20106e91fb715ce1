"""Image preprocessing: resize the shorter side, centre-crop, scale and normalise.

The settings are data (:class:`PreprocessSpec`) because they are part of what makes two embeddings
comparable: their short hash is part of the embedding space id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
from PIL import Image

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """Resize shorter side to ``resize_shorter`` (``interpolation``), centre-crop ``crop``×``crop``,
    then ``(x / 255 - mean) / std`` per channel."""

    resize_shorter: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}")
        if self.crop > self.resize_shorter:
            raise ValueError(f"crop ({self.crop}) must not exceed resize_shorter ({self.resize_shorter})")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PreprocessSpec":
        return cls(
            resize_shorter=int(data["resize_shorter"]),
            crop=int(data["crop"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            interpolation=str(data.get("interpolation", "bicubic")),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    def short_hash(self) -> str:
        """8 hex digits that change whenever any setting changes."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:8]

    @property
    def draft_size(self) -> tuple[int, int]:
        """Smallest size a JPEG may be draft-decoded to without losing resolution we need."""
        return (self.resize_shorter, self.resize_shorter)

    def to_array(self, img: Image.Image) -> np.ndarray:
        """RGB image → float32 array (3, crop, crop), normalised."""
        width, height = img.size
        scale = self.resize_shorter / min(width, height)
        new_w = max(self.crop, round(width * scale))
        new_h = max(self.crop, round(height * scale))
        img = img.resize((new_w, new_h), _RESAMPLE[self.interpolation])
        left = (new_w - self.crop) // 2
        top = (new_h - self.crop) // 2
        img = img.crop((left, top, left + self.crop, top + self.crop))
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))
