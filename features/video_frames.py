"""Videos → frame rows: decode with PyAV, sample at a fixed rate, JPEG-encode, hash.

:func:`extract_video_frames` is plain Python (runs on an executor inside ``mapInPandas``); a bad
video never raises: it yields a status row (``frame_ts_ms = -1``) saying why, and the frames decoded
before a failure are kept. The file's content decides, not its extension: an MKV or AVI named
``.mp4`` is decoded as what it is; a still image or a text file named ``.mp4`` is ``not_a_video``.

Statuses of a status row: ``video_empty`` (0 bytes), ``video_unreadable`` (missing, unreadable),
``not_a_video`` (no container FFmpeg recognises, or a still image), ``video_truncated`` (an MP4
whose boxes run past the end of the file, a decode error after some frames, or frames ending well
before the declared duration), ``no_video_stream`` (e.g. audio only), ``unsupported_codec`` (no
decoder for the video stream's codec in this FFmpeg build), ``video_undecodable`` (the decoder
fails before any frame), ``no_frames`` (decoding ends without a frame).
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import re
import struct
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
STATUS_VIDEO_EMPTY = "video_empty"
STATUS_NOT_A_VIDEO = "not_a_video"
STATUS_UNSUPPORTED_CODEC = "unsupported_codec"
STATUS_VIDEO_UNDECODABLE = "video_undecodable"
# Demuxers of single still images: FFmpeg opens a JPEG or PNG as a one-frame "video".
_IMAGE_DEMUXERS = ("image2",)
# A decode that stops this much (and at least 3 frame intervals) before the declared end is a truncation.
_TRUNCATION_TOLERANCE_MS = 500.0


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


def mp4_truncation(path: str) -> str | None:
    """Why an ISO-BMFF file (MP4, MOV, M4V) is cut short, or None (complete, or not ISO-BMFF).

    Walks the top-level boxes: a box whose declared size runs past the end of the file, or a file
    with no ``moov`` box (the index), is what an interrupted upload or copy leaves behind.
    """
    try:
        size = os.path.getsize(path)
        handle = open(path, "rb")
    except OSError:
        return None
    with handle:
        offset, seen = 0, set()
        while offset < size:
            handle.seek(offset)
            header = handle.read(16)
            if len(header) < 8:
                return f"the file ends inside a box header at byte {offset}" if seen else None
            box_size, box_type = struct.unpack(">I4s", header[:8])
            if not seen and box_type != b"ftyp":
                return None
            if box_size == 1 and len(header) == 16:
                box_size = struct.unpack(">Q", header[8:16])[0]
            elif box_size == 0:
                box_size = size - offset
            if box_size < 8:
                return None  # not a box structure: leave the verdict to FFmpeg
            name = box_type.decode("latin-1")
            if offset + box_size > size:
                return (f"its '{name}' box at byte {offset} declares {box_size} bytes "
                        f"but the file ends after {size - offset}")
            seen.add(box_type)
            offset += box_size
    return None if b"moov" in seen else "it has no 'moov' box (the index every MP4 needs)"


def _is_local_file(uri: str) -> bool:
    return "://" not in uri and os.path.isfile(uri)


def _declared_end_ms(container, stream) -> float | None:
    """End of the video stream as the container declares it (ms), or None when unknown."""
    if stream.duration and stream.time_base:
        return float(((stream.start_time or 0) + stream.duration) * stream.time_base) * 1000.0
    if container.duration and len(container.streams) == 1:  # another stream may be longer
        return container.duration / 1000.0
    return None


def _open_failure(uri: str, exc: Exception) -> tuple[str, str]:
    """(status, error) for a file FFmpeg could not open."""
    import av

    error = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, av.error.InvalidDataError) and _is_local_file(uri):
        cut = mp4_truncation(uri)
        if cut:
            return STATUS_VIDEO_TRUNCATED, f"truncated MP4: {cut} ({error})"
        return STATUS_NOT_A_VIDEO, f"FFmpeg recognises no video container in it ({error})"
    return STATUS_VIDEO_UNREADABLE, error


def extract_video_frames(video_id: str, uri: str, options: ExtractOptions,
                         now: datetime | None = None) -> Iterator[dict]:
    """Yield frame rows of one video: the first frame at or after each multiple of 1/sample_fps s.

    Never raises for a bad video: it yields a status row (see the module doc for the statuses),
    after the frames decoded before the problem, if any.
    """
    import av

    now = now or datetime.now(timezone.utc)
    step_ms = 1000.0 / options.sample_fps
    if _is_local_file(uri) and os.path.getsize(uri) == 0:
        yield _status_row(video_id, uri, STATUS_VIDEO_EMPTY, "the file is empty (0 bytes)", now)
        return
    try:
        container = av.open(uri)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        status, error = _open_failure(uri, exc)
        yield _status_row(video_id, uri, status, error, now)
        return
    kept = 0
    with container:
        format_name = container.format.name
        if format_name in _IMAGE_DEMUXERS or format_name.endswith("_pipe"):
            yield _status_row(video_id, uri, STATUS_NOT_A_VIDEO,
                              f"a still image ({format_name}), not a video", now)
            return
        if not container.streams.video:
            cut = mp4_truncation(uri) if _is_local_file(uri) else None
            if cut:
                yield _status_row(video_id, uri, STATUS_VIDEO_TRUNCATED, f"truncated MP4: {cut}", now)
            else:
                found = ", ".join(s.type for s in container.streams) or "none"
                yield _status_row(video_id, uri, STATUS_NO_VIDEO_STREAM,
                                  f"the file has no video stream (streams: {found})", now)
            return
        stream = container.streams.video[0]
        if stream.codec_context is None:
            yield _status_row(video_id, uri, STATUS_UNSUPPORTED_CODEC,
                              f"no decoder in this FFmpeg build for the codec of the video stream ({format_name} container)",
                              now)
            return
        stream.thread_type = "AUTO"
        next_ms, last_ms = 0.0, None
        try:
            for frame in container.decode(stream):
                if frame.pts is None or frame.time is None:
                    continue
                ts_ms = frame.time * 1000.0
                last_ms = ts_ms if last_ms is None else max(last_ms, ts_ms)
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
                    return
                while next_ms <= ts_ms + 0.5:
                    next_ms += step_ms
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            cut = mp4_truncation(uri) if _is_local_file(uri) else None
            if kept or cut:
                yield _status_row(video_id, uri, STATUS_VIDEO_TRUNCATED,
                                  f"truncated: {cut or f'decoding stopped after {kept} kept frames'} ({error})", now)
            else:
                yield _status_row(video_id, uri, STATUS_VIDEO_UNDECODABLE,
                                  f"the {stream.codec_context.name} decoder failed before the first frame ({error})",
                                  now)
            return
        cut = mp4_truncation(uri) if _is_local_file(uri) else None
        if kept == 0:
            if cut:
                yield _status_row(video_id, uri, STATUS_VIDEO_TRUNCATED, f"truncated: {cut}", now)
            else:
                yield _status_row(video_id, uri, STATUS_NO_FRAMES, "no decodable frames", now)
            return
        declared = _declared_end_ms(container, stream)
        interval = 1000.0 / float(stream.average_rate) if stream.average_rate else 100.0
        if cut is None and declared is not None and last_ms is not None:
            shortfall = declared - (last_ms + interval)
            if shortfall > max(3 * interval, _TRUNCATION_TOLERANCE_MS):
                cut = f"frames end at {last_ms / 1000:.2f} s of a declared {declared / 1000:.2f} s"
        if cut:
            yield _status_row(video_id, uri, STATUS_VIDEO_TRUNCATED, f"truncated: {cut}", now)
