"""Bad frames through the real embed job: each becomes a row with a precise status and error, the
job succeeds, and the gate fails only when the bad share exceeds the configured threshold."""

import hashlib
import io
import struct
import zlib
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image

from catalogfs.features import delta_writer
from catalogfs.errors import ValidationFailed
from catalogfs.features.tables import FRAMES
from catalogfs.jobs import embed_frames
from tests.helpers import photo_bytes, with_database


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _bomb_png():
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def _fixtures():
    cat = Image.open(io.BytesIO(photo_bytes("chelsea.png"))).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    good_jpeg = photo_bytes("coffee.png")
    return {  # name: (bytes, expected status)
        "jpeg": (good_jpeg, "ok"),
        "zero_bytes": (b"", "empty_image"),
        "truncated_jpeg": (good_jpeg[: len(good_jpeg) // 2], "undecodable_image"),
        "random_bytes": (np.random.default_rng(0).bytes(4096), "undecodable_image"),
        "png": (_encode(cat, "PNG"), "ok"),
        "webp": (_encode(cat, "WEBP"), "ok"),
        "gif": (_encode(cat.convert("P"), "GIF"), "ok"),
        "cmyk": (_encode(cat.convert("CMYK"), "JPEG"), "ok"),
        "grayscale": (_encode(cat.convert("L"), "JPEG"), "ok"),
        "rgba": (_encode(cat.convert("RGBA"), "PNG"), "ok"),
        "gray16": (_encode(Image.fromarray((np.asarray(cat.convert("L"), dtype=np.uint16) * 257)), "PNG"), "ok"),
        "exif_rotated": (_encode(cat, "JPEG", exif=exif), "ok"),
        "one_pixel": (_encode(Image.new("RGB", (1, 1), (200, 10, 10)), "JPEG"), "ok"),
        "bomb_header": (_bomb_png(), "image_too_large"),
        "large_file": (_encode(cat.resize((4000, 2660)), "JPEG", quality=95), "ok"),
    }


@pytest.fixture(scope="module")
def bad_frames(spark, cfg):
    cfg = with_database(cfg, "badframes_features")
    delta_writer.ensure_catalog(spark, cfg.storage)
    now = datetime.now(timezone.utc)
    rows = [{"video_id": name, "frame_ts_ms": 0, "frame_index": 0, "image": data, "width": None, "height": None,
             "content_sha256": hashlib.sha256(data).hexdigest(), "source_uri": f"fixture://{name}",
             "status": "ok", "error": None, "extracted_at": now}
            for name, (data, _) in _fixtures().items()]
    spark.createDataFrame(rows, FRAMES.schema).write.format("delta").mode("append").saveAsTable(
        cfg.storage.qualified(FRAMES.name))
    return cfg


def test_gate_refuses_when_bad_share_exceeds_threshold(spark, bad_frames):
    """Bad frames are bad input: they count against the space's share of bad input (4 of 15 here),
    not against the run's pipeline failures."""
    lenient = bad_frames.model_copy(update={"validation": bad_frames.validation.model_copy(
        update={"max_reject_rate": 0.0, "max_input_reject_rate": 0.1})})
    with pytest.raises(ValidationFailed, match="space_bad_input_share") as failed:
        embed_frames.run(spark, lenient)
    assert "pipeline_failure" not in str(failed.value)  # no frame failed in the pipeline itself
    assert spark.table(lenient.storage.qualified("frame_embeddings")).count() == 0


def test_each_bad_frame_becomes_a_precise_status_row(spark, bad_frames):
    result = embed_frames.run(spark, bad_frames)  # 4 of 15 bad: under the default 0.5 threshold
    assert result.published
    expected = {name: status for name, (_, status) in _fixtures().items()}
    rows = {r.video_id: r for r in spark.table(bad_frames.storage.qualified("frame_embeddings")).collect()}
    assert {name: r.status for name, r in rows.items()} == expected
    for row in rows.values():
        if row.status == "ok":
            vec = np.asarray(row.embedding, dtype=np.float64)
            assert vec.shape == (1280,) and abs(np.linalg.norm(vec) - 1) < 1e-4 and row.error is None
        else:
            assert row.embedding is None and row.error
    assert "3600000000 pixels" in rows["bomb_header"].error
    assert rows["zero_bytes"].error == "no image bytes"
    # The rotated and the plain cat are the same picture up to rotation: still a cat for the model.
    assert rows["exif_rotated"].labels[0] in {"tiger cat", "Egyptian cat", "tabby, tabby cat"}
