"""JPEG decode and preprocessing on torch tensors (torchvision), for the GPU path.

On CUDA the engine can decode JPEG frames with ``torchvision.io.decode_jpeg(..., device="cuda")``
(nvJPEG) and resize, crop and normalise them on the GPU, so the CPU only reads headers. The result
matches :meth:`udfs.preprocess.PreprocessSpec.to_array` within resampling tolerance (torchvision's
antialiased resize follows PIL's). Anything this path does not handle exactly like the PIL path —
not a JPEG, CMYK, an EXIF rotation, over the pixel limit, a resampling filter torchvision lacks —
raises :class:`NotForTensorPath` before any decoding, and any decoding error raises too: the engine
then takes the PIL path for that frame, so statuses stay the same.

The same functions run on the CPU (``device="cpu"``), which is how the tests compare both paths.
"""

from __future__ import annotations

import io

import torch
from PIL import Image

from catalogfs.udfs.preprocess import PreprocessSpec

JPEG_MAGIC = b"\xff\xd8\xff"
_EXIF_ORIENTATION = 0x0112
_TENSOR_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


class NotForTensorPath(ValueError):
    """This frame goes through the PIL path instead (the reason is the message)."""


def gpu_decode_available() -> bool:
    """Whether torchvision (with ``decode_jpeg``) imports in this environment."""
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
        from torchvision.transforms.v2 import functional  # noqa: F401
    except Exception:  # noqa: BLE001 — a broken torchvision (e.g. not matching torch) fails in many ways
        return False
    return True


def tensor_preprocess_supported(spec: PreprocessSpec) -> bool:
    """Whether ``spec`` can be applied to tensors exactly like to PIL images."""
    return spec.interpolation in _TENSOR_INTERPOLATIONS


def looks_like_jpeg(data: bytes | bytearray | memoryview | None) -> bool:
    """Cheap check of the JPEG start-of-image marker."""
    return data is not None and len(data) > 3 and bytes(data[:3]) == JPEG_MAGIC


def decode_jpeg_tensor(data: bytes | bytearray | memoryview, spec: PreprocessSpec, *,
                       device: torch.device | str, max_pixels: int) -> torch.Tensor:
    """JPEG bytes → float32 tensor (3, crop, crop) on ``device``, preprocessed like ``spec.to_array``.

    Raises :class:`NotForTensorPath` for frames the PIL path must take, and lets decoding errors
    propagate; the caller falls back to PIL on any exception.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = bytes(data)
    try:
        header = Image.open(io.BytesIO(raw))  # reads the header only
    except Exception as exc:  # noqa: BLE001
        raise NotForTensorPath(f"unreadable header: {exc}") from exc
    width, height = header.size
    if header.format != "JPEG" or header.mode not in ("RGB", "L"):
        raise NotForTensorPath(f"{header.format} {header.mode}")
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise NotForTensorPath(f"size {width}x{height}")
    if header.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None):
        raise NotForTensorPath("EXIF orientation")
    device = torch.device(device)
    if device.type == "cuda":
        # nvJPEG writes on its own stream into memory allocated on ours: let pending work finish.
        torch.cuda.current_stream(device).synchronize()
    encoded = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    image = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    if tuple(image.shape) != (3, height, width):
        raise NotForTensorPath(f"decoded shape {tuple(image.shape)} for a {width}x{height} header")
    return preprocess_tensor(image, spec)


def preprocess_tensor(image: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 RGB tensor (3, H, W) → float32 (3, crop, crop): resize (antialiased), centre crop,
    ``(x / 255 - mean) / std`` — the tensor twin of :meth:`PreprocessSpec.to_array`."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    if not tensor_preprocess_supported(spec):
        raise NotForTensorPath(f"interpolation {spec.interpolation!r}")
    height, width = int(image.shape[-2]), int(image.shape[-1])
    new_w, new_h = spec.resized_size(width, height)
    mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
            "nearest": InterpolationMode.NEAREST}[spec.interpolation]
    resized = TF.resize(image, [new_h, new_w], interpolation=mode, antialias=mode != InterpolationMode.NEAREST)
    left, top = spec.crop_origin(new_w, new_h)
    crop = resized[:, top:top + spec.crop, left:left + spec.crop].float().div_(255.0)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=crop.device).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=crop.device).view(3, 1, 1)
    return crop.sub_(mean).div_(std).contiguous()
