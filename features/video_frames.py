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
fails before any frame), ``no_frames`` (decoding ends without a frame), ``video_too_large`` (the
video stream's header declares a frame of more than ``max_video_pixels`` pixels) and
``video_too_long`` (the stream, or else the container, declares more than ``max_video_seconds``);
the last two are decided from the header right after opening, before a single frame is decoded.

Inputs (:func:`scan_videos`, :func:`read_manifest`): a video's id is its path relative to the
input root without the extension (``news/2024/clip`` for ``<root>/news/2024/clip.mp4``), in Unicode
NFC, spaces and non-ASCII letters kept; two files with one id are an error, never an overwrite.
Files that are not taken (extension not listed, hidden, partial uploads) are counted and named.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import os
import struct
import unicodedata
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import takewhile
from pathlib import Path
from typing import Iterator

from catalogfs.statuses import Status

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
# Why an input file was not taken (SkippedFiles.reasons).
SKIP_EXTENSION = "not in extract.extensions"
SKIP_HIDDEN = "hidden"
SKIP_PARTIAL = "partial upload"
SKIP_NOT_A_FILE = "not a regular file"
_SKIP_EXAMPLES = 5
_GLOB_MAGIC = ("*", "?", "[")
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
    max_video_pixels: int = 7680 * 4320  # 8K; width*height declared by the video stream
    max_video_seconds: float = 6 * 3600.0  # declared duration


@dataclass(frozen=True)
class SkippedFiles:
    """Input files an extraction did not take: how many for each reason, and a few of them (paths
    relative to the input root), so that nothing is left out without a word."""

    reasons: tuple[tuple[str, int], ...] = ()  # (reason, count), most frequent first
    examples: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return sum(n for _, n in self.reasons)

    def describe(self) -> str:
        """``skipped 2 files (not in extract.extensions): e.g. a.gif, b.txt``; empty when none."""
        if not self.count:
            return ""
        if len(self.reasons) == 1:
            why = self.reasons[0][0]
        else:
            why = ", ".join(f"{n} {reason}" for reason, n in self.reasons)
        files = "file" if self.count == 1 else "files"
        return f"skipped {self.count} {files} ({why}): e.g. {', '.join(self.examples)}"


@dataclass(frozen=True)
class VideoListing:
    """What an input folder or glob holds: (video_id, uri) sorted by id, and the files skipped."""

    videos: tuple[tuple[str, str], ...]
    skipped: SkippedFiles = SkippedFiles()


def normalise_video_id(raw: str, *, what: str) -> str:
    """``raw`` as a video id: Unicode NFC, otherwise unchanged (spaces, accents, ``/`` kept).

    Raises ValueError naming ``what`` (the file, or the manifest line) for text that is not valid
    UTF-8, for control characters and line separators (invisible in listings, they break log
    lines) and for an empty id.
    """
    if any(0xD800 <= ord(c) <= 0xDFFF for c in raw):  # how Python reads bytes that are not UTF-8
        raise ValueError(f"{what}: its name is not valid UTF-8; rename it (or set its id in a --manifest)")
    vid = unicodedata.normalize("NFC", raw)
    bad = next((c for c in vid if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise ValueError(f"{what}: video id {vid!r} has control character U+{ord(bad):04X}; "
                         f"rename it (or set its id in a --manifest)")
    if not vid.strip():
        raise ValueError(f"{what}: empty video id; rename it (or set its id in a --manifest)")
    return vid


def video_id_for(path: str | Path, root: str | Path | None = None) -> str:
    """The video id of a file: its path relative to the input ``root`` (default: its own folder,
    i.e. its stem), without the extension, ``/`` between folders, normalised by
    :func:`normalise_video_id` (ValueError naming the file)."""
    absolute = Path(os.path.abspath(path))
    relative = absolute.relative_to(os.path.abspath(root)) if root is not None else Path(absolute.name)
    raw = "/".join((*relative.parts[:-1], relative.stem))
    return normalise_video_id(raw, what=f"input file {str(path)!r}")


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard (``/v/*/x/*.mp4`` → ``/v``)."""
    fixed = list(takewhile(lambda part: not any(m in part for m in _GLOB_MAGIC), Path(pattern).parts))
    return Path(os.path.abspath(Path(*fixed) if fixed else "."))


def _printable(name: str) -> str:
    """``name`` for a log line or the summary: control characters and bytes that are not UTF-8
    (which Python reads as surrogates) escaped as ``\\xNN``, everything else as it is."""
    def escape(c: str) -> str:
        code = ord(c) - 0xDC00 if 0xDC80 <= ord(c) <= 0xDCFF else ord(c)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return "".join(escape(c) if unicodedata.category(c) in ("Cc", "Cs") else c for c in name)


def _input_files(pattern: str) -> tuple[Path, list[Path]]:
    """(input root, every non-folder entry under a folder / matching a glob / the one file), sorted."""
    path = Path(pattern)
    if path.is_dir():
        root = Path(os.path.abspath(path))
        return root, [p for p in sorted(root.rglob("*")) if not p.is_dir()]
    if path.is_file():  # a file named exactly (even with [ ] in its name): its id is its stem
        return Path(os.path.abspath(path.parent)), [Path(os.path.abspath(path))]
    matches = sorted(glob.glob(pattern, recursive=True, include_hidden=True))
    return _glob_root(pattern), [Path(os.path.abspath(p)) for p in matches if not os.path.isdir(p)]


def _skip_reason(path: Path, root: Path, extensions: tuple[str, ...]) -> str | None:
    """Why ``path`` is not taken as a video, or None to take it."""
    if any(part.startswith(".") for part in path.relative_to(root).parts):
        return SKIP_HIDDEN
    if path.suffix.lower() not in extensions:
        return SKIP_EXTENSION
    if path.stem.lower().endswith(".part"):  # clip.part.mp4: an upload still being written
        return SKIP_PARTIAL
    if not path.is_file():  # a dangling link, a pipe (FFmpeg would wait on it forever)
        return SKIP_NOT_A_FILE
    return None


def _skipped_summary(skipped: list[tuple[str, str]]) -> SkippedFiles:
    """Counts by reason and up to five examples, taken in turn from each reason's first files."""
    counts = Counter(reason for reason, _ in skipped)
    by_reason: dict[str, list[str]] = {}
    for reason, name in skipped:
        if len(by_reason.setdefault(reason, [])) < _SKIP_EXAMPLES:
            by_reason[reason].append(name)
    examples: list[str] = []
    for i in range(_SKIP_EXAMPLES):
        examples += [names[i] for names in by_reason.values() if i < len(names)]
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return SkippedFiles(reasons=tuple(ordered), examples=tuple(examples[:_SKIP_EXAMPLES]))


def scan_videos(pattern: str, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> VideoListing:
    """The videos in a folder (recursively), matching a glob, or one file, and the files skipped.

    Ids are paths relative to the input root (:func:`video_id_for`): the folder, the part of a
    glob before its first wildcard, or a single file's folder. Raises ValueError for a file whose
    id is not valid, and when two files would get the same id.
    """
    root, candidates = _input_files(pattern)
    wanted = tuple(e.lower() for e in extensions)
    seen: dict[str, Path] = {}
    skipped: list[tuple[str, str]] = []
    for path in candidates:
        reason = _skip_reason(path, root, wanted)
        if reason:
            skipped.append((reason, _printable(path.relative_to(root).as_posix())))
            continue
        vid = video_id_for(path, root)
        if vid in seen:
            raise ValueError(f"two inputs map to video id {vid!r}: {seen[vid]} and {path}; "
                             f"rename one, or give each its own id in a --manifest")
        seen[vid] = path
    videos = tuple(sorted((vid, str(p.resolve())) for vid, p in seen.items()))
    return VideoListing(videos=videos, skipped=_skipped_summary(skipped))


def list_videos(pattern: str, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[tuple[str, str]]:
    """(video_id, uri) for every video of :func:`scan_videos`, sorted by id (ValueError as there)."""
    return list(scan_videos(pattern, extensions).videos)


def _manifest_uri(uri: str, folder: Path) -> str:
    """A manifest's uri: URLs as written, local paths resolved against the manifest's folder."""
    if "://" in uri:
        return uri
    return str((folder / Path(uri).expanduser()).resolve())


def read_manifest(path: str | Path) -> list[tuple[str, str]]:
    """(video_id, uri) from a CSV file whose header names the columns ``video_id`` and ``uri``
    (other columns ignored; cells stripped; blank lines skipped), in file order.

    A relative uri is relative to the manifest's folder. Ids are normalised like file ids
    (:func:`normalise_video_id`). Raises ValueError, naming the file and line, for a missing or
    unreadable file, a header without those columns, an empty uri, a bad or repeated id.
    """
    manifest = Path(path)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            return _manifest_rows(csv.reader(handle), manifest)
    except OSError as exc:
        raise ValueError(f"manifest {manifest}: cannot read it ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"manifest {manifest}: not UTF-8 text (byte {exc.start})") from exc
    except csv.Error as exc:
        raise ValueError(f"manifest {manifest}: not valid CSV ({exc})") from exc


def _manifest_rows(reader, manifest: Path) -> list[tuple[str, str]]:
    """The rows of :func:`read_manifest` from its ``csv.reader``, checked one by one."""
    header = next(reader, None)
    if header is None:
        raise ValueError(f"manifest {manifest} is empty; expected a header row video_id,uri")
    names = [h.strip().lower() for h in header]
    if "video_id" not in names or "uri" not in names:
        raise ValueError(f"manifest {manifest}: header must name the columns video_id,uri "
                         f"(got {','.join(h.strip() for h in header)})")
    id_col, uri_col = names.index("video_id"), names.index("uri")
    rows: list[tuple[str, str]] = []
    first_line: dict[str, int] = {}
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        cells = [c.strip() for c in cells] + [""] * len(names)
        where = f"manifest {manifest} line {line}"
        vid = normalise_video_id(cells[id_col], what=where)
        if not cells[uri_col]:
            raise ValueError(f"{where}: no uri for video id {vid!r}")
        if vid in first_line:
            raise ValueError(f"{where}: video id {vid!r} is also on line {first_line[vid]}; "
                             f"give each file its own id")
        first_line[vid] = line
        rows.append((vid, _manifest_uri(cells[uri_col], manifest.parent)))
    return rows


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


def _declared_seconds(container, stream) -> float | None:
    """Duration the header declares: the video stream's, else the container's; None when unknown."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _over_bounds(container, stream, options: ExtractOptions) -> tuple[str, str] | None:
    """(status, error) when the header declares a frame or a duration past the bounds, else None.

    Read from the header right after opening, so a huge video costs no decoding at all.
    """
    width, height = stream.codec_context.width or 0, stream.codec_context.height or 0
    if width * height > options.max_video_pixels:
        return (Status.VIDEO_TOO_LARGE,
                f"the video stream is {width}x{height} = {width * height:,} pixels a frame, "
                f"over extract.max_video_pixels = {options.max_video_pixels:,}")
    seconds = _declared_seconds(container, stream)
    if seconds is not None and seconds > options.max_video_seconds:
        return (Status.VIDEO_TOO_LONG,
                f"the video declares {seconds:,.1f} s, "
                f"over extract.max_video_seconds = {options.max_video_seconds:g} s")
    return None


def _open_failure(uri: str, exc: Exception) -> tuple[str, str]:
    """(status, error) for a file FFmpeg could not open."""
    import av

    error = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, av.error.InvalidDataError) and _is_local_file(uri):
        cut = mp4_truncation(uri)
        if cut:
            return Status.VIDEO_TRUNCATED, f"truncated MP4: {cut} ({error})"
        return Status.NOT_A_VIDEO, f"FFmpeg recognises no video container in it ({error})"
    return Status.VIDEO_UNREADABLE, error


@dataclass
class _Decoded:
    """What the decode loop of one video saw: frames kept, the last timestamp, whether it was capped."""

    kept: int = 0
    last_ms: float | None = None
    capped: bool = False  # stopped at extract.max_frames: the rest of the video was not read


def extract_video_frames(video_id: str, uri: str, options: ExtractOptions,
                         now: datetime | None = None) -> Iterator[dict]:
    """Yield frame rows of one video: the first frame at or after each multiple of 1/sample_fps s.

    Never raises for a bad video: it yields a status row (see the module doc for the statuses),
    after the frames decoded before the problem, if any.
    """
    import av

    now = now or datetime.now(timezone.utc)
    if _is_local_file(uri) and os.path.getsize(uri) == 0:
        yield _status_row(video_id, uri, Status.VIDEO_EMPTY, "the file is empty (0 bytes)", now)
        return
    try:
        container = av.open(uri)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        yield _status_row(video_id, uri, *_open_failure(uri, exc), now)
        return
    with container:
        refusal = _unusable(container, uri, options)
        if refusal:
            yield _status_row(video_id, uri, *refusal, now)
            return
        stream = container.streams.video[0]
        decoded = _Decoded()
        try:
            yield from _sampled_frames(container, stream, video_id, uri, options, now, decoded)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            yield _status_row(video_id, uri, *_decode_failure(uri, stream, decoded, exc), now)
            return
        verdict = None if decoded.capped else _end_verdict(container, stream, uri, decoded)
        if verdict:
            yield _status_row(video_id, uri, *verdict, now)


def _unusable(container, uri: str, options: ExtractOptions) -> tuple[str, str] | None:
    """(status, error) when the opened file is no video we decode (a still image, no video stream,
    no decoder, past the bounds), read from the header alone; else None."""
    format_name = container.format.name
    if format_name in _IMAGE_DEMUXERS or format_name.endswith("_pipe"):
        return Status.NOT_A_VIDEO, f"a still image ({format_name}), not a video"
    if not container.streams.video:
        cut = mp4_truncation(uri) if _is_local_file(uri) else None
        if cut:
            return Status.VIDEO_TRUNCATED, f"truncated MP4: {cut}"
        found = ", ".join(s.type for s in container.streams) or "none"
        return Status.NO_VIDEO_STREAM, f"the file has no video stream (streams: {found})"
    stream = container.streams.video[0]
    if stream.codec_context is None:
        return (Status.UNSUPPORTED_CODEC,
                f"no decoder in this FFmpeg build for the codec of the video stream ({format_name} container)")
    return _over_bounds(container, stream, options)


def _sampled_frames(container, stream, video_id: str, uri: str, options: ExtractOptions, now: datetime,
                    decoded: _Decoded) -> Iterator[dict]:
    """Frame rows of the first frame at or after each multiple of 1/sample_fps s (``decoded`` is
    updated as frames go by; decoding errors propagate)."""
    step_ms = 1000.0 / options.sample_fps
    stream.thread_type = "AUTO"
    next_ms = 0.0
    for frame in container.decode(stream):
        if frame.pts is None or frame.time is None:
            continue
        ts_ms = frame.time * 1000.0
        decoded.last_ms = ts_ms if decoded.last_ms is None else max(decoded.last_ms, ts_ms)
        if ts_ms + 0.5 < next_ms:
            continue
        jpeg, width, height = _encode_jpeg(frame, options)
        yield {
            "video_id": video_id, "frame_ts_ms": int(round(ts_ms)), "frame_index": decoded.kept,
            "image": jpeg, "width": width, "height": height,
            "content_sha256": hashlib.sha256(jpeg).hexdigest(), "source_uri": uri,
            "status": Status.OK, "error": None, "extracted_at": now,
        }
        decoded.kept += 1
        if decoded.kept >= options.max_frames:
            decoded.capped = True
            return
        while next_ms <= ts_ms + 0.5:
            next_ms += step_ms


def _decode_failure(uri: str, stream, decoded: _Decoded, exc: Exception) -> tuple[str, str]:
    """(status, error) for a decoder that failed part-way (truncated) or before the first frame."""
    error = f"{type(exc).__name__}: {exc}"
    cut = mp4_truncation(uri) if _is_local_file(uri) else None
    if decoded.kept or cut:
        return (Status.VIDEO_TRUNCATED,
                f"truncated: {cut or f'decoding stopped after {decoded.kept} kept frames'} ({error})")
    return (Status.VIDEO_UNDECODABLE,
            f"the {stream.codec_context.name} decoder failed before the first frame ({error})")


def _end_verdict(container, stream, uri: str, decoded: _Decoded) -> tuple[str, str] | None:
    """(status, error) for a video that decoded to its end without error but is cut short (its
    frames stop well before the declared duration, or its MP4 boxes are cut) or gave no frame."""
    cut = mp4_truncation(uri) if _is_local_file(uri) else None
    if decoded.kept == 0:
        return (Status.VIDEO_TRUNCATED, f"truncated: {cut}") if cut else (Status.NO_FRAMES, "no decodable frames")
    declared = _declared_end_ms(container, stream)
    interval = 1000.0 / float(stream.average_rate) if stream.average_rate else 100.0
    if cut is None and declared is not None and decoded.last_ms is not None:
        shortfall = declared - (decoded.last_ms + interval)
        if shortfall > max(3 * interval, _TRUNCATION_TOLERANCE_MS):
            cut = f"frames end at {decoded.last_ms / 1000:.2f} s of a declared {declared / 1000:.2f} s"
    return (Status.VIDEO_TRUNCATED, f"truncated: {cut}") if cut else None
