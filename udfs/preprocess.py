"""Image preprocessing: resize the shorter side, centre-crop, scale and normalise.

The settings are data (:class:`PreprocessSpec`) because they are part of what makes two embeddings
comparable: their short hash is part of the embedding space id.
"""

from __future__ import annotations

import hashlib
import math
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
    resize_mode: str = "shorter"  # "shorter": shorter side → resize_shorter, then crop; "exact": → crop×crop
    long_side: str = "round"  # how the resized longer side is rounded: "round", or "floor" (transformers)
    crop_offset: str = "floor"  # centre-crop offset: "floor" (transformers), or "round" (torchvision / timm)

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shorter", "exact"):
            raise ValueError(f"resize_mode must be 'shorter' or 'exact', got {self.resize_mode!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}")
        if self.crop_offset not in ("floor", "round"):
            raise ValueError(f"crop_offset must be 'floor' or 'round', got {self.crop_offset!r}")
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
            resize_mode=str(data.get("resize_mode", "shorter")),
            long_side=str(data.get("long_side", "round")),
            crop_offset=str(data.get("crop_offset", "floor")),
        )

    @classmethod
    def from_hf_processor(cls, config: Mapping[str, Any]) -> "PreprocessSpec":
        """From a transformers ``preprocessor_config.json`` (CLIP/SigLIP/ViT/DINOv2 image processors)."""
        resample = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}.get(int(config.get("resample", 3)), "bicubic")
        size = config.get("size", {})
        crop = config.get("crop_size") or {}
        mean = tuple(config.get("image_mean", (0.5, 0.5, 0.5)))
        std = tuple(config.get("image_std", (0.5, 0.5, 0.5)))
        if config.get("do_center_crop") and "shortest_edge" in size:
            return cls(int(size["shortest_edge"]), int(crop.get("height", size["shortest_edge"])), mean, std, resample,
                       long_side="floor")
        side = int(size.get("height") or size.get("shortest_edge"))
        return cls(side, side, mean, std, resample, resize_mode="exact")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        for key, default in (("resize_mode", "shorter"), ("long_side", "round"), ("crop_offset", "floor")):
            if data[key] == default:  # defaults stay out, so existing space ids are unchanged
                del data[key]
        return data

    def short_hash(self) -> str:
        """8 hex digits that change whenever any setting changes."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:8]

    @property
    def draft_size(self) -> tuple[int, int]:
        """Smallest size a JPEG may be draft-decoded to without losing resolution we need."""
        return (self.resize_shorter, self.resize_shorter)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) an image of this size is resized to before the centre crop."""
        if self.resize_mode == "exact":
            return self.crop, self.crop
        scale = self.resize_shorter / min(width, height)
        rounding = math.floor if self.long_side == "floor" else round
        new_w = max(self.crop, rounding(width * scale)) if width > height else self.resize_shorter
        new_h = max(self.crop, rounding(height * scale)) if height > width else self.resize_shorter
        return new_w, new_h

    def crop_origin(self, width: int, height: int) -> tuple[int, int]:
        """(left, top) of the centre crop in a ``width``×``height`` resized image. torchvision's
        CenterCrop rounds half-way offsets (to even, as Python does); transformers floors them."""
        if self.crop_offset == "round":
            return int(round((width - self.crop) / 2.0)), int(round((height - self.crop) / 2.0))
        return (width - self.crop) // 2, (height - self.crop) // 2

    def to_array(self, img: Image.Image) -> np.ndarray:
        """RGB image → float32 array (3, crop, crop), normalised."""
        if self.resize_mode == "exact":
            return self._normalise(img.resize((self.crop, self.crop), _RESAMPLE[self.interpolation]))
        width, height = img.size
        new_w, new_h = self.resized_size(width, height)
        left, top = self.crop_origin(new_w, new_h)
        # Resample only the source region that lands in the crop: the same scale and pixel centres
        # as resizing the whole image and cropping after (values agree to 1/255), at half the cost.
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy)
        return self._normalise(img.resize((self.crop, self.crop), _RESAMPLE[self.interpolation], box=box))

    def _normalise(self, img: Image.Image) -> np.ndarray:
        arr: np.ndarray = np.asarray(img, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))
