from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import fooocusd
from fooocusd.errors import TransientError
from fooocusd.outbox import atomic, writer
from fooocusd.outbox.metadata import ImageFacts, a1111_parameters, build_record
from fooocusd.outbox.reader import parse_a1111_parameters, read_embedded_metadata
from fooocusd.outbox.writer import (
    ASCII_PREFIX,
    EXIF_IFD,
    TAG_MAKER_NOTE,
    TAG_SOFTWARE,
    TAG_USER_COMMENT,
    UNICODE_PREFIX,
    extension_for,
    write_image_with_sidecar,
)


def _record(fmt: str = "png", **overrides: Any) -> dict[str, Any]:
    facts = ImageFacts(
        job_id="job-1",
        input_name="cat.txt",
        input_sha256="ab" * 32,
        prompt=overrides.pop("prompt", "a cat on a sofa"),
        negative="blurry, lowres",
        seed=123,
        steps=30,
        sampler="dpmpp_2m_sde_gpu",
        scheduler="karras",
        cfg=4.0,
        sharpness=2.0,
        width=64,
        height=48,
        performance="speed",
        model_name="juggernautXL_v8.safetensors",
        model_sha256="abcdef1234" + "0" * 54,
        device="cpu",
        dtype="float32",
        image_index=0,
        image_count=1,
        output_name=f"cat_123_0{extension_for(fmt)}",
        fmt=fmt,
        created=datetime(2025, 1, 31, 13, 3, 59, tzinfo=UTC),
    )
    return {**build_record(facts), **overrides}


def _image(mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (64, 48), (200, 100, 50, 255)[: len(mode)] if mode != "L" else 128)


def _write(tmp_path: Path, fmt: str = "png", image: Image.Image | None = None, **kwargs: Any):
    record = kwargs.pop("record", None) or _record(fmt)
    options = {"fmt": fmt, "quality": 90, "embed_metadata": True, "umask": 0o022, **kwargs}
    return write_image_with_sidecar(
        image or _image(), record, tmp_path / f"cat_123_0{extension_for(fmt)}", **options
    )


def test_png_carries_parameters_and_fooocus_scheme_chunks(tmp_path: Path) -> None:
    record = _record("png")
    image_path, _, _ = _write(tmp_path, "png", record=record)

    with Image.open(image_path) as image:
        chunks = dict(image.text)  # type: ignore[attr-defined]
    assert chunks["parameters"] == a1111_parameters(record)
    scheme = json.loads(chunks["fooocus_scheme"])
    assert scheme["seed"] == "123"
    assert scheme["base_model_hash"] == "abcdef1234"
    assert chunks["Software"] == f"fooocusd {fooocusd.__version__}"

    embedded = read_embedded_metadata(image_path)
    assert embedded["parameters"] == a1111_parameters(record)
    assert embedded["fooocus_scheme"] == scheme
    parsed = parse_a1111_parameters(embedded["parameters"] or "")
    assert parsed["prompt"] == record["prompt"]
    assert parsed["params"]["Seed"] == str(record["seed"])


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_jpeg_and_webp_carry_metadata_in_exif(tmp_path: Path, fmt: str) -> None:
    record = _record(fmt)
    image_path, _, _ = _write(tmp_path, fmt, record=record)

    with Image.open(image_path) as image:
        assert image.format == fmt.upper()
        exif = image.getexif()
    exif_ifd = exif.get_ifd(EXIF_IFD)
    assert exif[TAG_SOFTWARE] == f"fooocusd {fooocusd.__version__}"
    assert exif_ifd[TAG_USER_COMMENT] == ASCII_PREFIX + a1111_parameters(record).encode("ascii")
    assert json.loads(exif_ifd[TAG_MAKER_NOTE])["prompt"] == record["prompt"]

    embedded = read_embedded_metadata(image_path)
    assert embedded["parameters"] == a1111_parameters(record)
    assert embedded["fooocus_scheme"] is not None
    assert embedded["fooocus_scheme"]["resolution"] == "(64, 48)"


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "png"])
def test_non_ascii_prompts_survive_embedding(tmp_path: Path, fmt: str) -> None:
    record = _record(fmt, prompt="ein Kätzchen im 雪")
    image_path, _, _ = _write(tmp_path, fmt, record=record)

    embedded = read_embedded_metadata(image_path)

    assert parse_a1111_parameters(embedded["parameters"] or "")["prompt"] == "ein Kätzchen im 雪"
    assert embedded["fooocus_scheme"] is not None
    assert embedded["fooocus_scheme"]["prompt"] == "ein Kätzchen im 雪"
    if fmt == "jpeg":
        with Image.open(image_path) as image:
            comment = image.getexif().get_ifd(EXIF_IFD)[TAG_USER_COMMENT]
        assert comment.startswith(UNICODE_PREFIX)
        assert comment[8:].decode("utf-16-be") == a1111_parameters(record)


def test_sidecar_is_published_after_the_image_and_holds_its_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    real_publish = writer.publish_bytes

    def recording_publish(final: Path, data: bytes, **kwargs: Any) -> Path:
        order.append(final.name)
        return real_publish(final, data, **kwargs)

    monkeypatch.setattr(writer, "publish_bytes", recording_publish)
    image_path, sidecar_path, sha256 = _write(tmp_path, "png")

    assert order == ["cat_123_0.png", "cat_123_0.json"]
    assert sidecar_path == tmp_path / "cat_123_0.json"
    sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    assert sha256 == hashlib.sha256(image_path.read_bytes()).hexdigest()
    assert sidecar["image_sha256"] == sha256
    assert sidecar["output_file"] == "cat_123_0.png"
    assert sidecar["image_bytes"] == image_path.stat().st_size
    assert sidecar["embedded_metadata"] == "full"
    assert sidecar["seed"] == 123 and sidecar["job_id"] == "job-1"


def test_existing_image_is_never_overwritten(tmp_path: Path) -> None:
    existing = tmp_path / "cat_123_0.png"
    existing.write_bytes(b"someone else's picture")

    with pytest.raises(FileExistsError):
        _write(tmp_path, "png")

    assert existing.read_bytes() == b"someone else's picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat_123_0.png"]


def test_failed_sidecar_write_takes_the_image_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write_synced = atomic._write_synced

    def disk_full_for_sidecars(tmp: Path, data: bytes, mode: int) -> None:
        if ".json." in tmp.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_synced(tmp, data, mode)

    monkeypatch.setattr(atomic, "_write_synced", disk_full_for_sidecars)

    with pytest.raises(TransientError, match="disk full"):
        _write(tmp_path, "png")

    assert list(tmp_path.iterdir()) == []


def test_metadata_off_writes_clean_images_even_from_tagged_sources(tmp_path: Path) -> None:
    source = _image()
    source.info["parameters"] = "leaked prompt from an input image"

    for fmt in ("png", "jpeg", "webp"):
        image_path, sidecar_path, _ = _write(tmp_path / fmt, fmt, image=source, embed_metadata=False)
        assert read_embedded_metadata(image_path) == {"parameters": None, "fooocus_scheme": None}
        assert json.loads(sidecar_path.read_text(encoding="utf-8"))["embedded_metadata"] == "none"


@pytest.mark.parametrize(("words", "expected"), [(8_000, "parameters_only"), (14_000, "none")])
def test_jpeg_metadata_too_big_for_exif_stays_in_the_sidecar(
    tmp_path: Path, words: int, expected: str
) -> None:
    huge = " ".join(["word"] * words)
    record = _record("jpeg", prompt=huge)

    image_path, sidecar_path, _ = _write(tmp_path, "jpeg", record=record)

    embedded = read_embedded_metadata(image_path)
    sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    assert embedded["fooocus_scheme"] is None
    assert (embedded["parameters"] == a1111_parameters(record)) == (expected == "parameters_only")
    assert sidecar["embedded_metadata"] == expected
    assert sidecar["prompt"] == huge
    with Image.open(image_path) as image:
        assert image.getexif()[TAG_SOFTWARE].startswith("fooocusd")


@pytest.mark.parametrize(
    ("fmt", "mode", "expected_mode"),
    [("jpeg", "RGBA", "RGB"), ("webp", "RGBA", "RGBA"), ("png", "P", "RGB"), ("jpeg", "L", "L")],
)
def test_images_are_converted_to_a_mode_the_format_can_store(
    tmp_path: Path, fmt: str, mode: str, expected_mode: str
) -> None:
    image_path, _, _ = _write(tmp_path, fmt, image=Image.new(mode, (16, 16)))

    with Image.open(image_path) as written:
        assert written.mode == expected_mode
        assert written.size == (16, 16)


def test_outputs_are_0644_and_never_executable_with_umask_022(tmp_path: Path) -> None:
    image_path, sidecar_path, _ = _write(tmp_path, "png", umask=0o022)

    for path in (image_path, sidecar_path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_extension_that_does_not_match_the_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.jpg"):
        write_image_with_sidecar(
            _image(),
            _record(),
            tmp_path / "cat.png",
            fmt="jpeg",
            quality=90,
            embed_metadata=True,
            umask=0o022,
        )
    assert list(tmp_path.iterdir()) == []
