"""Frame extraction without Spark: real H.264 made from a real photo, and broken files."""

import hashlib
import io

import pytest
from PIL import Image

from catalogfs.samples import SAMPLE_PHOTOS, make_sample_videos, write_corrupt_sample
from features.video_frames import (
    STATUS_NO_FRAMES,
    STATUS_VIDEO_UNREADABLE,
    ExtractOptions,
    extract_video_frames,
    list_videos,
)

CAT = next(p for p in SAMPLE_PHOTOS if p.video_id == "cat_chelsea")


@pytest.fixture(scope="module")
def cat_video(tmp_path_factory):
    out = tmp_path_factory.mktemp("videos")
    return make_sample_videos(out, seconds=3.0, fps=10, width=320, height=180, photos=(CAT,))[0]


def test_sample_videos_are_deterministic(cat_video, tmp_path):
    again = make_sample_videos(tmp_path, seconds=3.0, fps=10, width=320, height=180, photos=(CAT,))[0]
    assert again.read_bytes() == cat_video.read_bytes()


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
    assert rows[0]["status"] in (STATUS_VIDEO_UNREADABLE, STATUS_NO_FRAMES)
    assert rows[0]["frame_ts_ms"] == -1 and rows[0]["image"] is None and rows[0]["error"]
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    missing = list(extract_video_frames("nope", str(tmp_path / "missing.mp4"), ExtractOptions()))
    assert [r["status"] for r in missing] == [STATUS_VIDEO_UNREADABLE]
    assert list(extract_video_frames("e", str(empty), ExtractOptions()))[0]["status"] == STATUS_VIDEO_UNREADABLE


def test_list_videos_ids_and_duplicates(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "clip one.mp4").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("not a video")
    assert list_videos(str(tmp_path)) == [("clip_one", str((tmp_path / "a" / "clip one.mp4").resolve()))]
    (tmp_path / "b" / "clip one.mp4").write_bytes(b"y")
    with pytest.raises(ValueError, match="clip_one"):
        list_videos(str(tmp_path))
