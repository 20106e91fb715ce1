"""Frame extraction without Spark: real H.264 made from a real photo, and every kind of bad video
(tests/bad_videos.py): each gives a precise status row, never an exception."""

import hashlib
import io

import pytest
from PIL import Image

from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos, write_corrupt_sample
from catalogfs.statuses import Status
from catalogfs.features.video_frames import (
    ExtractOptions,
    extract_video_frames,
    list_videos,
    mp4_truncation,
)
from tests.bad_videos import FULL_FRAMES_AT_1FPS, write_bad_videos

CAT = next(p for p in SAMPLE_PHOTOS if p.video_id == "cat_chelsea")


@pytest.fixture(scope="module")
def cat_video(tmp_path_factory):
    out = tmp_path_factory.mktemp("videos")
    return make_sample_videos(out, seconds=3.0, fps=10, width=320, height=180, photos=(CAT,))[0]


_SAMPLE_ARGS = dict(seconds=3.0, fps=10, width=320, height=180)
_DETERMINISM_PHOTOS = ("cat_chelsea", "coffee_cup")  # a zoom and a pan
_HASH_SAMPLES = """
import hashlib, json, sys
from pathlib import Path
from catalogfs.jobs.samples import SAMPLE_PHOTOS, make_sample_videos
args, out = json.loads(sys.argv[1]), Path(sys.argv[2])
wanted, n_runs = args.pop("photos"), args.pop("runs")
photos = tuple(p for p in SAMPLE_PHOTOS if p.video_id in wanted)
runs = []
for i in range(n_runs):
    paths = make_sample_videos(out / f"run{i}", photos=photos, **args)
    runs.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths})
print(json.dumps(runs))
"""


def test_sample_videos_are_deterministic(cat_video, tmp_path):
    """Every byte of every sample video is the same on every encode, in this process and in a fresh
    one. 320x180 is the size that used to differ on most encodes (x264's AVX-512 code read memory
    outside its data; samples.X264_OPTIONS now pins x264 to its C code)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    def sha256s(paths):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}

    photos = tuple(p for p in SAMPLE_PHOTOS if p.video_id in _DETERMINISM_PHOTOS)
    runs = [sha256s(make_sample_videos(tmp_path / f"here{i}", photos=photos, **_SAMPLE_ARGS)) for i in range(4)]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    spec = json.dumps({**_SAMPLE_ARGS, "photos": list(_DETERMINISM_PHOTOS), "runs": 2})
    done = subprocess.run([sys.executable, "-c", _HASH_SAMPLES, spec, str(tmp_path / "there")], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    runs += json.loads(done.stdout.strip().splitlines()[-1])

    assert len(runs) == 6 and set(runs[0]) == {f"{vid}.mp4" for vid in _DETERMINISM_PHOTOS}
    for i, run in enumerate(runs[1:], start=1):
        assert run == runs[0], f"encode {i} differs from encode 0: {run} != {runs[0]}"
    # The module's fixture (another encode, made earlier in this process) has the same bytes too.
    assert hashlib.sha256(cat_video.read_bytes()).hexdigest() == runs[0]["cat_chelsea.mp4"]
    assert runs[0]["cat_chelsea.mp4"] != runs[0]["coffee_cup.mp4"]


def test_frames_sampled_at_one_per_second(cat_video):
    rows = list(extract_video_frames("cat", str(cat_video), ExtractOptions(sample_fps=1.0, max_side=160)))
    assert [r["frame_ts_ms"] for r in rows] == [0, 1000, 2000]
    assert [r["frame_index"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert r["status"] == "ok" and r["error"] is None
        assert r["content_sha256"] == hashlib.sha256(r["image"]).hexdigest()
        img = Image.open(io.BytesIO(r["image"]))
        assert img.format == "JPEG" and img.size == (r["width"], r["height"]) == (160, 90)
    # A zoom changes the picture: frames differ.
    assert len({r["content_sha256"] for r in rows}) == 3


def test_higher_rate_and_frame_cap(cat_video):
    rows = list(extract_video_frames("cat", str(cat_video), ExtractOptions(sample_fps=2.0, max_frames=4)))
    assert [r["frame_ts_ms"] for r in rows] == [0, 500, 1000, 1500]


def test_corrupt_and_missing_videos_become_status_rows(cat_video, tmp_path):
    corrupt = write_corrupt_sample(tmp_path, source=cat_video)
    rows = list(extract_video_frames("bad", str(corrupt), ExtractOptions()))
    assert len(rows) == 1
    assert rows[0]["status"] == Status.VIDEO_TRUNCATED and "'mdat' box" in rows[0]["error"]
    assert rows[0]["frame_ts_ms"] == -1 and rows[0]["image"] is None and rows[0]["error"]
    missing = list(extract_video_frames("nope", str(tmp_path / "missing.mp4"), ExtractOptions()))
    assert [r["status"] for r in missing] == [Status.VIDEO_UNREADABLE]
    assert "No such file" in missing[0]["error"]


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory):
    return write_bad_videos(tmp_path_factory.mktemp("bad_videos"))


@pytest.mark.parametrize("name", [
    "good", "truncated_upload", "truncated_stream", "truncated_mkv", "mkv_named_mp4", "avi_named_mp4",
    "jpeg_named_mp4", "text_named_mp4", "empty", "audio_only", "unsupported_codec", "undecodable",
])
def test_each_bad_video_gets_a_precise_status(bad_videos, name):
    """Each kind of bad upload: ok frames decoded before the problem, then exactly one status row
    (frame_ts_ms = -1, no image) whose status and error say what is wrong; never an exception."""
    video = bad_videos[name]
    rows = list(extract_video_frames(name, str(video.path), ExtractOptions(sample_fps=1.0)))
    ok = [r for r in rows if r["status"] == Status.OK]
    status_rows = [r for r in rows if r["status"] != Status.OK]
    for r in ok:
        assert r["frame_ts_ms"] >= 0 and r["image"] and r["error"] is None
    if video.status == Status.OK:
        assert status_rows == []
        assert [r["frame_ts_ms"] for r in ok] == FULL_FRAMES_AT_1FPS
        return
    assert len(status_rows) == 1, rows
    row = status_rows[0]
    assert (row["status"], row["frame_ts_ms"], row["frame_index"], row["image"]) == (video.status, -1, -1, None)
    assert video.error_contains in row["error"], row["error"]
    if video.some_frames:  # what decoded before the cut is kept, and is less than the whole video
        assert 1 <= len(ok) < len(FULL_FRAMES_AT_1FPS)
        assert [r["frame_ts_ms"] for r in ok] == FULL_FRAMES_AT_1FPS[:len(ok)]
    else:
        assert ok == []
    assert rows[-1] is row  # the status row comes last


def test_mp4_truncation_reads_the_box_structure(bad_videos, cat_video, tmp_path):
    assert mp4_truncation(str(cat_video)) is None
    assert mp4_truncation(str(bad_videos["good"].path)) is None
    assert "'mdat' box at byte" in mp4_truncation(str(bad_videos["truncated_upload"].path))
    assert mp4_truncation(str(bad_videos["mkv_named_mp4"].path)) is None  # not ISO-BMFF: no verdict
    no_index = tmp_path / "no_index.mp4"
    data = bad_videos["good"].path.read_bytes()
    no_index.write_bytes(data[: data.index(b"moov") - 4])  # cut exactly where the index would start
    assert "no 'moov' box" in mp4_truncation(str(no_index))


def test_list_videos_ids_keep_the_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "clip one.mp4").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("not a video")
    assert list_videos(str(tmp_path)) == [("a/clip one", str((tmp_path / "a" / "clip one.mp4").resolve()))]
    (tmp_path / "b" / "clip one.mp4").write_bytes(b"y")
    assert [vid for vid, _ in list_videos(str(tmp_path))] == ["a/clip one", "b/clip one"]
    (tmp_path / "a" / "clip one.mov").write_bytes(b"z")
    with pytest.raises(ValueError, match="two inputs map to video id 'a/clip one'"):
        list_videos(str(tmp_path))


# ---------------------------------------------------------------- bounds read from the header

@pytest.mark.parametrize("bounds, status, error", [
    ({"max_video_pixels": 320 * 180 - 1}, "video_too_large",
     "the video stream is 320x180 = 57,600 pixels a frame, over extract.max_video_pixels = 57,599"),
    ({"max_video_seconds": 2.5}, "video_too_long",
     "the video declares 3.0 s, over extract.max_video_seconds = 2.5 s"),
])
def test_bounds_from_the_header_refuse_before_decoding(cat_video, monkeypatch, bounds, status, error):
    """Past a bound: one status row and not a single frame decoded (decode is never called)."""
    import av

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded a video past its bounds")

    opened = []
    real_open = av.open

    def spy_open(*args, **kwargs):
        container = real_open(*args, **kwargs)
        opened.append(container)
        return _NoDecode(container, no_decode)

    monkeypatch.setattr(av, "open", spy_open)
    rows = list(extract_video_frames("cat", str(cat_video), ExtractOptions(**bounds)))
    assert len(opened) == 1
    assert [(r["status"], r["frame_ts_ms"], r["frame_index"], r["image"], r["error"]) for r in rows] == [
        (status, -1, -1, None, error)]


def test_bounds_at_the_limit_extract_every_frame(cat_video):
    at_limit = ExtractOptions(max_video_pixels=320 * 180, max_video_seconds=3.0)
    rows = list(extract_video_frames("cat", str(cat_video), at_limit))
    assert [(r["status"], r["frame_ts_ms"]) for r in rows] == [("ok", 0), ("ok", 1000), ("ok", 2000)]


def test_default_bounds_are_8k_and_6_hours_and_reach_the_options(cfg):
    from catalogfs.jobs.extract_frames import extract_options

    assert (cfg.extract.max_video_pixels, cfg.extract.max_video_seconds) == (7680 * 4320, 6 * 3600)
    assert ExtractOptions() == extract_options(cfg)
    narrow = cfg.model_copy(update={"extract": cfg.extract.model_copy(
        update={"max_video_pixels": 100, "max_video_seconds": 1.5, "sample_fps": 2.0})})
    assert extract_options(narrow) == ExtractOptions(sample_fps=2.0, max_video_pixels=100, max_video_seconds=1.5)


class _NoDecode:
    """A PyAV container whose ``decode`` fails the test; everything else is the real container's."""

    def __init__(self, container, decode):
        self._container, self.decode = container, decode

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._container.close()
