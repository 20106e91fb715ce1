"""Videos → frame rows: decode with PyAV, sample at a fixed rate, JPEG-encode, hash.

:func:`extract_video_frames` is plain Python (runs on an executor inside ``mapInPandas``); an
unreadable or truncated video never raises: it yields a status row (``frame_ts_ms = -1``) and the
frames decoded before the failure are kept.
"""

from __future__ import annotations

import glob
import hashlib
import io
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
STATUS_OK = "ok"
STATUS_VIDEO_UNREADABLE = "video_unreadable"
STATUS_VIDEO_TRUNCATED = "video_truncated"
STATUS_NO_VIDEO_STREAM = "no_video_stream"
STATUS_NO_FRAMES = "no_frames"


@dataclass(frozen=True)
class ExtractOptions:
    sample_fps: float = 1.0
    max_side: int = 640
    jpeg_quality: int = 90
    max_frames: int = 3600


def video_id_for(path: str) -> str:
    """A video id from a file name: its stem, with anything but [A-Za-z0-9_.-] replaced by '_'."""
    stem = Path(path).stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "video"


def list_videos(pattern: str) -> list[tuple[str, str]]:
    """(video_id, uri) for every video in a folder or matching a glob, sorted by path.

    Raises ValueError when two files would get the same video id.
    """
    path = Path(pattern)
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()]
    else:
        files = [Path(p) for p in sorted(glob.glob(pattern, recursive=True)) if Path(p).is_file()]
    files = [p for p in files if not p.name.endswith(".part.mp4")]
    seen: dict[str, str] = {}
    for p in files:
        vid = video_id_for(str(p))
        if vid in seen:
            raise ValueError(f"two inputs map to video id {vid!r}: {seen[vid]} and {p}; rename one")
        seen[vid] = str(p.resolve())
    return sorted(seen.items())


def _status_row(video_id: str, uri: str, status: str, error: str, now: datetime) -> dict:
    return {
        "video_id": video_id, "frame_ts_ms": -1, "frame_index": -1, "image": None, "width": None,
        "height": None, "content_sha256": None, "source_uri": uri, "status": status,
        "error": error[:1000], "extracted_at": now,
    }


def _encode_jpeg(frame, options: ExtractOptions) -> tuple[bytes, int, int]:
    img = frame.to_image()  # RGB PIL image
    if max(img.size) > options.max_side:
        img.thumbnail((options.max_side, options.max_side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=options.jpeg_quality)
    return buf.getvalue(), img.width, img.height


def extract_video_frames(video_id: str, uri: str, options: ExtractOptions,
                         now: datetime | None = None) -> Iterator[dict]:
    """Yield frame rows of one video: the first frame at or after each multiple of 1/sample_fps s."""
    import av

    now = now or datetime.now(timezone.utc)
    step_ms = 1000.0 / options.sample_fps
    try:
        container = av.open(uri)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        yield _status_row(video_id, uri, STATUS_VIDEO_UNREADABLE, f"{type(exc).__name__}: {exc}", now)
        return
    kept = 0
    with container:
        if not container.streams.video:
            yield _status_row(video_id, uri, STATUS_NO_VIDEO_STREAM, "the file has no video stream", now)
            return
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_ms = 0.0
        try:
            for frame in container.decode(stream):
                if frame.pts is None or frame.time is None:
                    continue
                ts_ms = frame.time * 1000.0
                if ts_ms + 0.5 < next_ms:
                    continue
                jpeg, width, height = _encode_jpeg(frame, options)
                yield {
                    "video_id": video_id, "frame_ts_ms": int(round(ts_ms)), "frame_index": kept,
                    "image": jpeg, "width": width, "height": height,
                    "content_sha256": hashlib.sha256(jpeg).hexdigest(), "source_uri": uri,
                    "status": STATUS_OK, "error": None, "extracted_at": now,
                }
                kept += 1
                if kept >= options.max_frames:
                    break
                while next_ms <= ts_ms + 0.5:
                    next_ms += step_ms
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            status = STATUS_VIDEO_TRUNCATED if kept else STATUS_VIDEO_UNREADABLE
            yield _status_row(video_id, uri, status, f"{type(exc).__name__}: {exc}", now)
            return
    if kept == 0:
        yield _status_row(video_id, uri, STATUS_NO_FRAMES, "no decodable frames", now)
