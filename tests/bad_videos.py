"""Tiny bad-video fixtures, made offline with PyAV and numpy (a few KB each).

:func:`write_bad_videos` writes every kind of bad upload the extractor must survive, each named
``.mp4`` as an upload would be, and returns what the extractor should record for it.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WIDTH, HEIGHT, FPS, SECONDS = 64, 48, 10, 4
FULL_FRAMES_AT_1FPS = [0, 1000, 2000, 3000]


@dataclass(frozen=True)
class BadVideo:
    path: Path
    status: str             # the status of the video-level row (frame_ts_ms = -1); "ok": no such row
    error_contains: str     # a piece of its error message
    some_frames: bool       # ok frames decoded before the problem are kept


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(7)  # noise: every frame costs bytes, so a cut lands mid-stream
    return [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(FPS * SECONDS)]


def _encode(path: Path, *, container: str, codec: str, options: dict | None = None) -> bytes:
    import av

    with av.open(str(path), "w", format=container, options=options or {}) as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if codec == "libx264":
            stream.codec_context.options = {"preset": "veryfast", "crf": "30", "threads": "1"}
        for array in _frames():
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path.read_bytes()


def _audio_only(path: Path) -> None:
    import av

    rate = 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)[None, :]
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate)
        for start in range(0, rate, 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]),
                                               format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_bad_videos(folder: Path) -> dict[str, BadVideo]:
    """Write the fixtures into ``folder`` (only them: it can be an extract job's input)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    src = Path(tempfile.mkdtemp(prefix="bad-video-src-"))
    mp4 = _encode(src / "plain.mp4", container="mp4", codec="libx264")  # index ('moov') at the end
    streaming = _encode(src / "faststart.mp4", container="mp4", codec="libx264",
                        options={"movflags": "faststart"})                # index first
    mkv = _encode(src / "clip.mkv", container="matroska", codec="libx264")
    avi = _encode(src / "clip.avi", container="avi", codec="mpeg4")
    jpeg = io.BytesIO()
    Image.fromarray(_frames()[0]).save(jpeg, format="JPEG")
    _audio_only(src / "audio.mp4")
    audio = (src / "audio.mp4").read_bytes()
    shutil.rmtree(src)

    files = {
        "good": mp4,
        # An upload cut short: the MP4 index never arrived.
        "truncated_upload": mp4[: len(mp4) * 6 // 10],
        # A streaming-friendly MP4 cut short: the first frames decode, then the data ends.
        "truncated_stream": streaming[: len(streaming) * 6 // 10],
        # A Matroska file cut short: no MP4 boxes to check, the declared duration tells.
        "truncated_mkv": mkv[: len(mkv) * 6 // 10],
        # Wrong containers: the content decides, not the name.
        "mkv_named_mp4": mkv,
        "avi_named_mp4": avi,
        "jpeg_named_mp4": jpeg.getvalue(),
        "text_named_mp4": b"this is not a video, it is a text file named .mp4\n" * 10,
        "empty": b"",
        "audio_only": audio,
        # The H.264 sample entry relabelled as EVC (MPEG-5 Essential Video Coding): a real codec
        # FFmpeg's MP4 demuxer knows, whose only decoder (libxevd) is not in PyAV's FFmpeg build.
        "unsupported_codec": mp4.replace(b"avc1", b"evc1"),
        # The same data relabelled as HEVC: the decoder exists, and fails on every packet.
        "undecodable": mp4.replace(b"avc1", b"hvc1"),
    }
    expected = {
        "good": ("ok", "", True),
        "truncated_upload": ("video_truncated", "'mdat' box", False),
        "truncated_stream": ("video_truncated", "'mdat' box", True),
        "truncated_mkv": ("video_truncated", "frames end at", True),
        "mkv_named_mp4": ("ok", "", True),
        "avi_named_mp4": ("ok", "", True),
        "jpeg_named_mp4": ("not_a_video", "still image", False),
        "text_named_mp4": ("not_a_video", "no video container", False),
        "empty": ("video_empty", "0 bytes", False),
        "audio_only": ("no_video_stream", "streams: audio", False),
        "unsupported_codec": ("unsupported_codec", "no decoder", False),
        "undecodable": ("video_undecodable", "hevc decoder failed", False),
    }
    out = {}
    for name, data in files.items():
        path = folder / f"{name}.mp4"
        path.write_bytes(data)
        status, error, some = expected[name]
        out[name] = BadVideo(path, status, error, some)
    return out
