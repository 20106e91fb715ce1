"""Sample videos made from real photos shipped inside scikit-image and scikit-learn (no download).

Each video is a few seconds of H.264 with a slow pan or zoom over one photo, encoded
deterministically, so the same call writes the same bytes (see ``X264_OPTIONS``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# Byte-identical H.264, run after run and machine after machine. Threads are not what broke it:
# with threads=1 x264 already runs on one thread. Its SIMD code is the cause: on CPUs with
# AVX-512 the macroblock-tree/lookahead kernels read memory outside the valid data, so the output
# depended on the process's heap (e.g. 320x180: 9 different files in 10 encodes of the same frames).
# With asm=0 x264 uses its portable C code: bit-exact, the same on every CPU, about 4x slower
# (~2 s for a 640x360, 4 s sample), and negligible at test sizes. The thread settings stay pinned.
X264_OPTIONS = {
    "preset": "veryfast",
    "crf": "23",
    "threads": "1",
    "x264-params": "asm=0:threads=1:lookahead-threads=1:sliced-threads=0:sync-lookahead=0",
}
# The muxer writes no library version tag and no creation time: the file depends on the frames only.
MUXER_OPTIONS = {"fflags": "+bitexact"}


@dataclass(frozen=True)
class SamplePhoto:
    video_id: str
    package: Literal["skimage", "sklearn"]
    filename: str
    motion: Literal["pan", "zoom"]


SAMPLE_PHOTOS: tuple[SamplePhoto, ...] = (
    SamplePhoto("cat_chelsea", "skimage", "chelsea.png", "zoom"),
    SamplePhoto("coffee_cup", "skimage", "coffee.png", "pan"),
    SamplePhoto("rocket_launch", "skimage", "rocket.jpg", "zoom"),
    SamplePhoto("motorcycle", "skimage", "motorcycle_left.png", "pan"),
    SamplePhoto("astronaut", "skimage", "astronaut.png", "zoom"),
    SamplePhoto("temple_china", "sklearn", "china.jpg", "pan"),
    SamplePhoto("flower", "sklearn", "flower.jpg", "zoom"),
)


def photo_path(photo: SamplePhoto) -> Path:
    """Where the photo lies inside its installed package."""
    if photo.package == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data" / photo.filename
    import sklearn

    return Path(sklearn.__file__).parent / "datasets" / "images" / photo.filename


def load_photo(photo: SamplePhoto) -> Image.Image:
    with Image.open(photo_path(photo)) as img:
        return img.convert("RGB")


def _window(width: int, height: int, aspect: float, t: float, motion: str) -> tuple[float, float, float, float]:
    """Crop box (left, top, right, bottom) at time t in [0, 1] with the output aspect ratio."""
    if width / height > aspect:
        base_h, base_w = float(height), height * aspect
    else:
        base_w, base_h = float(width), width / aspect
    if motion == "zoom":
        scale = 1.0 - 0.3 * t  # slowly zoom in to 70 % of the frame
        w, h = base_w * scale, base_h * scale
        left, top = (width - w) / 2, (height - h) / 2
    else:
        w, h = base_w * 0.8, base_h * 0.8  # pan a window of 80 % across the photo
        left = (width - w) * (0.1 + 0.8 * t)
        top = (height - h) / 2
    return left, top, left + w, top + h


def render_frames(photo: Image.Image, *, motion: str, n_frames: int, width: int, height: int):
    """Yield ``n_frames`` RGB arrays of ``width``×``height`` following the pan/zoom."""
    aspect = width / height
    for i in range(n_frames):
        t = i / max(n_frames - 1, 1)
        box = _window(photo.width, photo.height, aspect, t, motion)
        frame = photo.resize((width, height), Image.Resampling.BILINEAR, box=box)
        yield np.asarray(frame)


def write_video(path: Path, frames, *, fps: int, width: int, height: int) -> None:
    """Encode RGB arrays as H.264 (yuv420p) MP4, byte-identical for the same frames (``X264_OPTIONS``)."""
    import av
    from av.codec.context import Flags

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), mode="w", format="mp4", container_options=MUXER_OPTIONS) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ctx = stream.codec_context
        # All set before the first encode opens the codec (they cannot change after).
        ctx.options = dict(X264_OPTIONS)
        ctx.thread_type = "NONE"
        ctx.thread_count = 1  # also the thread count of PyAV's RGB -> YUV conversion
        ctx.flags |= Flags.bitexact
        container.metadata["comment"] = "catalogfs sample video"
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


def make_sample_videos(output_dir: Path, *, seconds: float = 4.0, fps: int = 24, width: int = 640,
                       height: int = 360, photos: tuple[SamplePhoto, ...] = SAMPLE_PHOTOS,
                       overwrite: bool = False) -> list[Path]:
    """Write one MP4 per photo into ``output_dir`` (skipping existing files unless ``overwrite``)."""
    n_frames = max(1, round(seconds * fps))
    written = []
    for photo in photos:
        path = output_dir / f"{photo.video_id}.mp4"
        if path.exists() and not overwrite:
            written.append(path)
            continue
        frames = render_frames(load_photo(photo), motion=photo.motion, n_frames=n_frames,
                               width=width, height=height)
        write_video(path, frames, fps=fps, width=width, height=height)
        log.info("wrote sample video %s (%d frames)", path, n_frames)
        written.append(path)
    return written


def write_corrupt_sample(output_dir: Path, *, source: Path, name: str = "corrupt_upload.mp4") -> Path:
    """A truncated copy of ``source`` (its first 4 KiB): what a failed upload looks like."""
    path = output_dir / name
    path.write_bytes(source.read_bytes()[:4096])
    return path
