"""Image checks: accepted formats by content, pixel limit before decoding, truncated files."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from fooocusd.errors import InvalidInput
from fooocusd.jobs.images import inspect_image

LIMIT = 64_000_000


def noisy_png(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    # Random pixels do not compress, so cutting the file really removes image data.
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(path, "PNG")
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width``×``height``: a decompression-bomb stand-in."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


@pytest.mark.parametrize(("fmt", "suffix"), [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp")])
def test_png_jpeg_and_webp_are_accepted_with_size_and_mode(tmp_path: Path, fmt: str, suffix: str) -> None:
    path = tmp_path / f"in{suffix}"
    Image.new("RGB", (40, 24), "red").save(path, fmt)
    info = inspect_image(path, LIMIT)
    assert (info.width, info.height, info.mode, info.format) == (40, 24, "RGB", fmt)


def test_content_decides_not_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "actually_jpeg.png"
    Image.new("RGB", (8, 8)).save(path, "JPEG")
    assert inspect_image(path, LIMIT).format == "JPEG"


def test_text_file_named_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_text("definitely not an image")
    with pytest.raises(InvalidInput) as caught:
        inspect_image(path, LIMIT)
    assert "only PNG, JPEG and WebP" in caught.value.message
    assert caught.value.where == "fake.png"


def test_gif_named_png_is_refused_and_named_as_gif(tmp_path: Path) -> None:
    path = tmp_path / "anim.png"
    Image.new("P", (8, 8)).save(path, "GIF")
    with pytest.raises(InvalidInput) as caught:
        inspect_image(path, LIMIT)
    assert "GIF" in caught.value.message


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InvalidInput, match="empty"):
        inspect_image(path, LIMIT)


def test_truncated_png_is_refused_as_truncated_or_corrupt(tmp_path: Path) -> None:
    path = noisy_png(tmp_path / "cut.png")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InvalidInput) as caught:
        inspect_image(path, LIMIT)
    assert "truncated or corrupt" in caught.value.message
    assert "re-export" in caught.value.message


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(path, "JPEG", quality=95)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        inspect_image(path, LIMIT)


def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    # 9000×9000 = 81 Mpx: under Pillow's own bomb threshold, over ours; only the header exists.
    path = png_header_only(tmp_path / "big.png", 9000, 9000)
    with pytest.raises(InvalidInput) as caught:
        inspect_image(path, LIMIT)
    assert "81,000,000" in caught.value.message
    assert "intake.max_image_pixels" in caught.value.message


def test_huge_header_claim_is_refused_as_a_decompression_bomb(tmp_path: Path) -> None:
    path = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(InvalidInput) as caught:
        inspect_image(path, LIMIT)
    assert "intake.max_image_pixels" in caught.value.message + caught.value.hint


def test_lower_limit_applies_to_ordinary_images(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(InvalidInput, match="10,000 pixels, over the limit of 9,999"):
        inspect_image(path, 9_999)
    assert inspect_image(path, 10_000).width == 100
