"""Image checks: accepted formats by content, pixel limit before decoding, truncated files."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from fooocusd.errors import InvalidInput
from fooocusd.jobs.images import NEUTRAL_BACKGROUND, inspect_image, load_input_image, load_mask

LIMIT = 64_000_000
DATA = Path(__file__).parent / "data"


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


@pytest.mark.parametrize(
    ("fmt", "suffix"),
    [
        ("PNG", ".png"),
        ("JPEG", ".jpg"),
        ("WEBP", ".webp"),
        ("AVIF", ".avif"),
        ("TIFF", ".tif"),
        ("BMP", ".bmp"),
    ],
)
def test_common_image_formats_are_accepted_with_size_and_mode(tmp_path: Path, fmt: str, suffix: str) -> None:
    path = tmp_path / f"in{suffix}"
    Image.new("RGB", (40, 24), "red").save(path, fmt)
    info = inspect_image(path, LIMIT)
    assert (info.width, info.height, info.mode, info.format) == (40, 24, "RGB", fmt)


def test_an_iphone_heic_photo_is_read_upright(tmp_path: Path) -> None:
    # Saved 64×32 (red left, blue right) with orientation 6: shown upright it is 32×64, red on top.
    path = tmp_path / "IMG_0042.HEIC"
    path.write_bytes((DATA / "sideways-iphone-photo.heic").read_bytes())

    info = inspect_image(path, LIMIT)
    image = load_input_image(path, LIMIT)

    assert info.format == "HEIF" and info.upright_size == (32, 64)
    assert image.mode == "RGB" and image.size == (32, 64)
    red, blue = image.getpixel((16, 4)), image.getpixel((16, 60))
    assert red[0] > 200 and red[2] < 50 and blue[2] > 200 and blue[0] < 50


def test_an_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "loop.gif"
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "lime", "blue")]
    frames[0].save(path, save_all=True, append_images=frames[1:])

    assert inspect_image(path, LIMIT).format == "GIF"
    assert load_input_image(path, LIMIT).getpixel((8, 8)) == (255, 0, 0)


def test_content_decides_not_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "actually_jpeg.png"
    Image.new("RGB", (8, 8)).save(path, "JPEG")
    assert inspect_image(path, LIMIT).format == "JPEG"


def test_text_file_named_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_text("definitely not an image")
    with pytest.raises(InvalidInput) as caught:
        inspect_image(path, LIMIT)
    assert "only PNG, JPEG, WebP, HEIC, AVIF, TIFF, BMP and GIF images are accepted" in caught.value.message
    assert caught.value.where == "fake.png"


def test_pdf_named_png_is_refused_and_named_as_a_pdf(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    with pytest.raises(InvalidInput) as caught:
        inspect_image(path, LIMIT)
    assert "scan.png is a PDF document" in caught.value.message


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
    assert caught.value.message == (
        f"bomb.png is 10,000,000,000 pixels, over the limit of {LIMIT:,} pixels (intake.max_image_pixels)"
    )


def test_lower_limit_applies_to_ordinary_images(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(InvalidInput, match="10,000 pixels, over the limit of 9,999"):
        inspect_image(path, 9_999)
    assert inspect_image(path, 10_000).width == 100


# -- decoding for the worker: load_input_image / load_mask -------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def rgb48_png(path: Path, width: int, height: int, colour: tuple[int, int, int]) -> Path:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write these itself)."""
    row = b"\x00" + struct.pack(">HHH", *colour) * width
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    body = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(row * height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + _png_chunk(b"IEND", b""))
    return path


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(path, "JPEG", quality=100)  # pure red ink
    image = load_input_image(path, LIMIT)
    assert image.mode == "RGB" and image.size == (16, 8)
    red, green, blue = image.getpixel((4, 4))
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_greyscale_keeps_its_full_range(tmp_path: Path) -> None:
    import numpy as np

    path = tmp_path / "scan.png"
    values = np.array([[0, 32768, 65535, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(path, "PNG")
    image = load_input_image(path, LIMIT)
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_48_bit_rgb_png_becomes_8_bit_rgb(tmp_path: Path) -> None:
    path = rgb48_png(tmp_path / "deep.png", 4, 2, (65535, 32896, 0))
    image = load_input_image(path, LIMIT)
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 128, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_land_on_neutral_grey(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "cutout.png"
    image = Image.new(mode, (8, 8), (255, 0) if mode == "LA" else (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 255) if mode == "LA" else (255, 0, 0, 255))
    image.save(path, "PNG")
    loaded = load_input_image(path, LIMIT)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((5, 5)) == NEUTRAL_BACKGROUND
    assert loaded.getpixel((0, 0)) == ((255, 0, 0) if mode == "RGBA" else (255, 255, 255))


def test_palette_image_with_a_transparent_colour_is_composited(tmp_path: Path) -> None:
    path = tmp_path / "icon.png"
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.save(path, "PNG", transparency=0)
    loaded = load_input_image(path, LIMIT)
    assert loaded.getpixel((0, 0)) == NEUTRAL_BACKGROUND and loaded.getpixel((1, 1)) == (0, 200, 0)


def _rotated_jpeg(path: Path, size: tuple[int, int], mode: str = "RGB") -> Path:
    image = Image.new(mode, size, 0)
    image.paste(255 if mode == "L" else (255, 255, 255), (0, 0, size[0] // 4, size[1]))  # left stripe white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    image.save(path, "JPEG", exif=exif.tobytes(), quality=100)
    return path


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    image = load_input_image(_rotated_jpeg(tmp_path / "phone.jpg", (40, 20)), LIMIT)
    assert image.size == (20, 40)
    assert image.getpixel((10, 2))[0] > 200 and image.getpixel((10, 37))[0] < 50  # the stripe is on top


def test_truncated_image_fails_with_a_clear_error_when_loaded(tmp_path: Path) -> None:
    path = noisy_png(tmp_path / "cut.png")
    path.write_bytes(path.read_bytes()[:-400])
    with pytest.raises(InvalidInput, match="truncated or corrupt") as caught:
        load_input_image(path, LIMIT)
    assert "drop it again" in caught.value.hint


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(InvalidInput, match=r"too large|over the limit") as caught:
        load_input_image(path, LIMIT)
    assert "max_image_pixels" in caught.value.hint


def test_mask_is_greyscale_and_white_means_repaint(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    mask = Image.new("RGB", (10, 10), (0, 0, 0))
    mask.paste((255, 255, 255), (2, 2, 5, 5))
    mask.save(path)
    loaded = load_mask(path, (10, 10))
    assert loaded.mode == "L" and loaded.getpixel((3, 3)) == 255 and loaded.getpixel((8, 8)) == 0


def test_mask_of_the_same_shape_is_resized_to_the_image(tmp_path: Path) -> None:
    path = tmp_path / "half.png"
    mask = Image.new("L", (50, 25), 0)
    mask.paste(255, (0, 0, 25, 25))
    mask.save(path)
    loaded = load_mask(path, (100, 50))
    assert loaded.size == (100, 50)
    assert loaded.getpixel((10, 10)) == 255 and loaded.getpixel((90, 10)) == 0


def test_mask_of_another_shape_is_refused_naming_both_sizes(tmp_path: Path) -> None:
    path = tmp_path / "wrong.png"
    Image.new("L", (50, 50), 255).save(path)
    with pytest.raises(InvalidInput) as caught:
        load_mask(path, (100, 50))
    assert "50×50" in caught.value.message and "100×50" in caught.value.message


def test_mask_follows_exif_rotation_like_its_image(tmp_path: Path) -> None:
    loaded = load_mask(_rotated_jpeg(tmp_path / "m.jpg", (40, 20), "L"), (20, 40))
    assert loaded.size == (20, 40) and loaded.getpixel((10, 2)) > 200
