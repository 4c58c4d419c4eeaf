from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from fooocusd.errors import InvalidInput
from fooocusd.outbox.reader import decode_user_comment, parse_a1111_parameters, read_embedded_metadata

A1111_SAMPLE = (
    "masterpiece, a cat wearing a (red:1.2) hat\n"
    "on a sofa\n"
    "Negative prompt: lowres, bad anatomy\n"
    "watermark\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x768, "
    'Model hash: 6ce0161689, Model: v1-5, Lora hashes: "cat: 1a2b3c4d5e6f, hat: 0f9e8d7c6b5a", '
    'Note: "says \\"hi\\", twice", Version: v1.10.1'
)


def test_parses_a1111_infotext_from_other_tools() -> None:
    parsed = parse_a1111_parameters(A1111_SAMPLE)

    assert parsed["prompt"] == "masterpiece, a cat wearing a (red:1.2) hat\non a sofa"
    assert parsed["negative"] == "lowres, bad anatomy\nwatermark"
    assert parsed["params"] == {
        "Steps": "20",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "7",
        "Seed": "42",
        "Size": "512x768",
        "Model hash": "6ce0161689",
        "Model": "v1-5",
        "Lora hashes": "cat: 1a2b3c4d5e6f, hat: 0f9e8d7c6b5a",
        "Note": 'says "hi", twice',
        "Version": "v1.10.1",
    }


def test_text_without_a_settings_line_is_all_prompt() -> None:
    parsed = parse_a1111_parameters("just a prompt, with: one colon")

    assert parsed == {"prompt": "just a prompt, with: one colon", "negative": "", "params": {}}


def test_settings_line_alone_gives_empty_prompts() -> None:
    parsed = parse_a1111_parameters("Steps: 4, Seed: 1, Size: 64x64")

    assert parsed["prompt"] == "" and parsed["negative"] == ""
    assert parsed["params"]["Size"] == "64x64"


def test_reads_images_written_by_fooocus_itself(tmp_path: Path) -> None:
    # Fooocus keeps its JSON in "parameters" and only the scheme's name in "fooocus_scheme".
    scheme = {"prompt": "a cat", "seed": "5", "resolution": "(1024, 1024)"}
    info = PngInfo()
    info.add_text("parameters", json.dumps(scheme))
    info.add_text("fooocus_scheme", "fooocus")
    path = tmp_path / "fooocus.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)

    assert read_embedded_metadata(path) == {"parameters": None, "fooocus_scheme": scheme}


def test_reads_a1111_only_png(tmp_path: Path) -> None:
    info = PngInfo()
    info.add_text("parameters", A1111_SAMPLE)
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)

    assert read_embedded_metadata(path) == {"parameters": A1111_SAMPLE, "fooocus_scheme": None}


def test_image_without_metadata_gives_nones(tmp_path: Path) -> None:
    path = tmp_path / "plain.jpg"
    Image.new("RGB", (8, 8)).save(path)

    assert read_embedded_metadata(path) == {"parameters": None, "fooocus_scheme": None}


@pytest.mark.parametrize("encoding", ["utf-16-be", "utf-16-le"])
def test_unicode_user_comment_is_decoded_whichever_byte_order_the_writer_chose(encoding: str) -> None:
    text = "Kätzchen, Steps: 20"

    assert decode_user_comment(b"UNICODE\x00" + text.encode(encoding)) == text


def test_user_comment_prefixes_are_honoured() -> None:
    assert decode_user_comment(b"ASCII\x00\x00\x00hello") == "hello"
    assert decode_user_comment(b"\x00" * 8 + b"undefined charset") == "undefined charset"
    assert decode_user_comment(b"ASCII\x00\x00\x00") is None
    assert decode_user_comment(None) is None


def test_user_comment_in_ifd0_is_found_too(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x9286] = b"ASCII\x00\x00\x00a cat"
    path = tmp_path / "odd.jpg"
    Image.new("RGB", (8, 8)).save(path, exif=exif.tobytes())

    assert read_embedded_metadata(path)["parameters"] == "a cat"


def test_non_image_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image")

    with pytest.raises(InvalidInput, match="not an image"):
        read_embedded_metadata(path)
