import io
import struct

import numpy as np
from PIL import Image

from tests.helpers import photo_bytes
from catalogfs.statuses import Status
from catalogfs.udfs.images import decode_image

LIMIT = 40_000_000


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_jpeg_decodes_to_rgb():
    out = decode_image(photo_bytes("chelsea.png"), max_pixels=LIMIT)
    assert out.status == Status.OK and out.image.mode == "RGB" and out.image.size == (451, 300)


def test_empty_and_garbage_become_statuses():
    assert decode_image(b"", max_pixels=LIMIT).status == Status.EMPTY_IMAGE
    assert decode_image(None, max_pixels=LIMIT).status == Status.EMPTY_IMAGE
    garbage = decode_image(np.random.default_rng(0).bytes(5000), max_pixels=LIMIT)
    assert garbage.status == Status.UNDECODABLE_IMAGE and garbage.image is None


def test_truncated_jpeg_is_undecodable_not_a_crash():
    data = photo_bytes("chelsea.png")
    out = decode_image(data[: len(data) // 3], max_pixels=LIMIT)
    assert out.status == Status.UNDECODABLE_IMAGE
    assert "truncated" in out.error.lower() or "image file" in out.error.lower()


def test_modes_become_rgb():
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 0))  # fully transparent red → white
    out = decode_image(_encode(rgba, "PNG"), max_pixels=LIMIT)
    assert out.image.mode == "RGB" and out.image.getpixel((0, 0)) == (255, 255, 255)
    gray16 = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    out = decode_image(_encode(gray16, "PNG"), max_pixels=LIMIT)
    assert out.status == Status.OK and out.image.getpixel((0, 0)) == (0, 0, 0)
    assert out.image.getpixel((1, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    assert decode_image(_encode(cmyk, "JPEG"), max_pixels=LIMIT).image.mode == "RGB"


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode_image(_encode(img, "JPEG", exif=exif), max_pixels=LIMIT)
    assert out.image.size == (20, 40)


def test_decompression_bomb_is_refused_from_the_header():
    # A PNG header that claims 100000 x 100000 pixels, followed by nothing.
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    out = decode_image(header + chunk(b"IEND", b""), max_pixels=LIMIT)
    assert out.status == Status.IMAGE_TOO_LARGE and "pixels" in out.error
    small_limit = decode_image(photo_bytes("chelsea.png"), max_pixels=1000)
    assert small_limit.status == Status.IMAGE_TOO_LARGE
