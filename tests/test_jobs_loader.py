"""Loading a drop: size limit, decoding, image paths kept inside the inbox, pairing, error reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fooocusd.errors import InvalidInput
from fooocusd.jobs.loader import error_report, load_drop

LIMITS = {"max_job_file_bytes": 10_000, "max_image_pixels": 64_000_000, "default_image_action": "vary_subtle"}


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


def image(path: Path, size: tuple[int, int] = (32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "blue").save(path, "PNG")
    return path


def load(
    inbox: Path, spec: Path | None = None, img: Path | None = None, mask: Path | None = None, **overrides
):
    return load_drop(spec, img, mask, inbox, **{**LIMITS, **overrides})


def test_txt_file_is_parsed_by_extension(inbox: Path) -> None:
    spec_path = inbox / "fox.TXT"
    spec_path.write_text("a red fox\nseed: 3\n", encoding="utf-8")
    [spec] = load(inbox, spec_path)
    assert (spec.prompt, spec.seed, spec.image) == ("a red fox", 3, None)


def test_toml_file_is_parsed_by_extension(inbox: Path) -> None:
    spec_path = inbox / "fox.toml"
    spec_path.write_text('[[job]]\nprompt = "a"\n[[job]]\nprompt = "b"\n', encoding="utf-8")
    assert [spec.prompt for spec in load(inbox, spec_path)] == ["a", "b"]


def test_oversize_job_file_is_refused_with_size_and_config_key(inbox: Path) -> None:
    spec_path = inbox / "big.txt"
    spec_path.write_text("a" * 10_001)
    with pytest.raises(InvalidInput) as caught:
        load(inbox, spec_path)
    assert "file is 10,001 bytes, limit is 10,000 (intake.max_job_file_bytes)" in caught.value.message


def test_non_utf8_job_file_names_the_line_and_says_save_as_utf8(inbox: Path) -> None:
    spec_path = inbox / "latin1.txt"
    spec_path.write_bytes("a dog\nun café\n".encode("latin-1"))
    with pytest.raises(InvalidInput) as caught:
        load(inbox, spec_path)
    assert caught.value.where == "line 2"
    assert "UTF-8" in caught.value.hint


def test_utf16_job_file_is_recognised_and_refused_with_a_hint(inbox: Path) -> None:
    spec_path = inbox / "notepad.txt"
    spec_path.write_bytes("a dog".encode("utf-16"))
    with pytest.raises(InvalidInput, match="UTF-16"):
        load(inbox, spec_path)


def test_utf8_bom_job_file_is_accepted(inbox: Path) -> None:
    spec_path = inbox / "bom.toml"
    spec_path.write_bytes(b'\xef\xbb\xbfprompt = "a dog"\n')
    assert load(inbox, spec_path)[0].prompt == "a dog"


def test_unknown_extension_is_refused(inbox: Path) -> None:
    spec_path = inbox / "job.json"
    spec_path.write_text("{}")
    with pytest.raises(InvalidInput, match=r"\.txt or \.toml"):
        load(inbox, spec_path)


def test_named_image_is_resolved_relative_to_the_job_file_and_stored_inbox_relative(inbox: Path) -> None:
    image(inbox / "cats" / "refs" / "tabby.png")
    spec_path = inbox / "cats" / "job.txt"
    spec_path.write_text("a tabby cat\nimage: refs/tabby.png\n")
    [spec] = load(inbox, spec_path)
    assert spec.image == "cats/refs/tabby.png"
    assert spec.image_action == "vary_subtle"


def test_named_image_keeps_the_action_the_job_asks_for(inbox: Path) -> None:
    image(inbox / "tabby.png")
    spec_path = inbox / "job.toml"
    spec_path.write_text('image = "tabby.png"\naction = "upscale_2x"\n')
    [spec] = load(inbox, spec_path)
    assert (spec.image, spec.image_action, spec.prompt) == ("tabby.png", "upscale_2x", "")


@pytest.mark.parametrize("reference", ["../../etc/passwd", "../outside.png"])
def test_image_path_escaping_the_inbox_is_refused(inbox: Path, reference: str) -> None:
    image(inbox.parent / "outside.png")
    spec_path = inbox / "job.toml"
    spec_path.write_text(f'prompt = "x"\nimage = "{reference}"\n')
    with pytest.raises(InvalidInput) as caught:
        load(inbox, spec_path)
    assert caught.value.where == "image"
    assert "outside the inbox" in caught.value.message


def test_absolute_image_path_outside_the_inbox_is_refused(inbox: Path) -> None:
    outside = image(inbox.parent / "secret.png")
    spec_path = inbox / "job.txt"
    spec_path.write_text(f"x\nimage: {outside}\n")
    with pytest.raises(InvalidInput, match="outside the inbox") as caught:
        load(inbox, spec_path)
    assert caught.value.where == "image"


def test_absolute_image_path_inside_the_inbox_is_allowed(inbox: Path) -> None:
    inside = image(inbox / "in.png")
    spec_path = inbox / "job.txt"
    spec_path.write_text(f"x\nimage: {inside}\n")
    assert load(inbox, spec_path)[0].image == "in.png"


def test_symlink_pointing_out_of_the_inbox_is_refused(inbox: Path) -> None:
    outside = image(inbox.parent / "secret.png")
    (inbox / "link.png").symlink_to(outside)
    spec_path = inbox / "job.txt"
    spec_path.write_text("x\nimage: link.png\n")
    with pytest.raises(InvalidInput, match="outside the inbox"):
        load(inbox, spec_path)


def test_paired_image_symlinked_out_of_the_inbox_is_refused(inbox: Path) -> None:
    outside = image(inbox.parent / "secret.png")
    (inbox / "cat.png").symlink_to(outside)
    with pytest.raises(InvalidInput, match="outside the inbox"):
        load(inbox, img=inbox / "cat.png")


def test_missing_named_image_is_refused(inbox: Path) -> None:
    spec_path = inbox / "job.txt"
    spec_path.write_text("x\nimage: nowhere.png\n")
    with pytest.raises(InvalidInput, match="does not exist") as caught:
        load(inbox, spec_path)
    assert caught.value.where == "image"


def test_corrupt_named_image_is_refused(inbox: Path) -> None:
    (inbox / "fake.png").write_text("hello")
    spec_path = inbox / "job.txt"
    spec_path.write_text("x\nimage: fake.png\n")
    with pytest.raises(InvalidInput, match="only PNG, JPEG and WebP"):
        load(inbox, spec_path)


def test_paired_image_fills_jobs_that_name_none_and_keeps_a_named_one(inbox: Path) -> None:
    image(inbox / "portrait" / "cat.png")
    image(inbox / "portrait" / "other.png")
    spec_path = inbox / "portrait" / "cat.txt"
    spec_path.write_text("a cat\n---\na dog\nimage: other.png\naction: vary_strong\n")
    first, second = load(inbox, spec_path, inbox / "portrait" / "cat.png")
    assert (first.image, first.image_action) == ("portrait/cat.png", "vary_subtle")
    assert (second.image, second.image_action) == ("portrait/other.png", "vary_strong")


def test_image_alone_becomes_one_job_with_the_default_action(inbox: Path) -> None:
    image(inbox / "holiday.jpg")
    [spec] = load(inbox, img=inbox / "holiday.jpg", default_image_action="upscale_1.5x")
    assert (spec.prompt, spec.image, spec.image_action) == ("", "holiday.jpg", "upscale_1.5x")


def test_mask_makes_inpaint_the_default_action_and_must_match_the_image_size(inbox: Path) -> None:
    image(inbox / "room.png", (48, 32))
    image(inbox / "room.mask.png", (48, 32))
    [spec] = load(inbox, img=inbox / "room.png", mask=inbox / "room.mask.png")
    assert spec.image_action == "inpaint"

    image(inbox / "room.mask.png", (32, 32))
    with pytest.raises(InvalidInput, match="32×32 but its image is 48×32"):
        load(inbox, img=inbox / "room.png", mask=inbox / "room.mask.png")


def test_mask_without_its_image_is_refused(inbox: Path) -> None:
    image(inbox / "room.mask.png")
    with pytest.raises(InvalidInput, match="no image") as caught:
        load(inbox, mask=inbox / "room.mask.png")
    assert "room.png" in caught.value.hint


def test_action_without_any_image_is_refused(inbox: Path) -> None:
    spec_path = inbox / "job.txt"
    spec_path.write_text("a cat\naction: upscale_2x\n")
    with pytest.raises(InvalidInput, match="names no image"):
        load(inbox, spec_path)


def test_error_report_says_what_where_how_and_what_is_accepted(inbox: Path) -> None:
    spec_path = inbox / "job.txt"
    spec_path.write_text("a bridge\nseed: lots\n")
    with pytest.raises(InvalidInput) as caught:
        load(inbox, spec_path)
    report = error_report(caught.value, "job.txt")
    assert "fooocusd could not use job.txt" in report
    assert "What is wrong:" in report and "'seed'" in report
    assert "Where: line 2" in report
    assert "How to fix:" in report
    assert "name.toml" in report and "[[job]]" in report
    assert "README" in report
