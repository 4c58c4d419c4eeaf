"""Loading a drop: size limit, decoding, image paths kept inside the inbox, pairing, error reports."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from fooocusd.errors import InvalidInput
from fooocusd.jobs.loader import error_report, load_drop
from fooocusd.jobs.spec import JobSpec

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


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_job_file_with_a_byte_order_mark_is_read_like_powershell_writes_it(
    inbox: Path, encoding: str
) -> None:
    spec_path = inbox / "powershell.txt"
    body = "un café au lait\r\nseed: 7\r\n"
    spec_path.write_bytes(("" if encoding == "utf-16" else "\ufeff").encode(encoding) + body.encode(encoding))
    [spec] = load(inbox, spec_path)
    assert (spec.prompt, spec.seed) == ("un café au lait", 7)


def test_broken_utf16_job_file_is_refused_with_a_hint(inbox: Path) -> None:
    spec_path = inbox / "broken.txt"
    spec_path.write_bytes("a dog".encode("utf-16") + b"\x00\xd8")  # a lone high surrogate at the end
    with pytest.raises(InvalidInput, match="not valid UTF-16") as caught:
        load(inbox, spec_path)
    assert "UTF-8" in caught.value.hint


@pytest.mark.parametrize(
    ("fmt", "what", "extension"), [("PNG", "a PNG image", ".png"), ("TIFF", "a TIFF image", ".tif")]
)
def test_a_picture_saved_as_a_job_file_is_named_with_the_extension_to_give_it(
    inbox: Path, fmt: str, what: str, extension: str
) -> None:
    spec_path = inbox / "shed.toml"
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, fmt)
    spec_path.write_bytes(buffer.getvalue())
    with pytest.raises(InvalidInput) as caught:
        load(inbox, spec_path)
    assert caught.value.message == f"shed.toml is {what}, not text"
    assert caught.value.hint == f"rename it to shed{extension}: an image alone is varied"


def test_a_pdf_saved_as_a_job_file_is_named_as_a_pdf(inbox: Path) -> None:
    spec_path = inbox / "brief.txt"
    spec_path.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    with pytest.raises(InvalidInput, match=r"brief\.txt is a PDF document, not text"):
        load(inbox, spec_path)


@pytest.mark.parametrize(
    "prompt", ["BMW at dusk, wet street", "GIF89a style pixel art", "II* roman numerals"]
)
def test_a_prompt_that_starts_like_a_file_signature_is_still_a_prompt(inbox: Path, prompt: str) -> None:
    spec_path = inbox / "car.txt"
    spec_path.write_text(prompt + "\n", encoding="utf-8")
    assert load(inbox, spec_path)[0].prompt == prompt


def test_utf8_bom_job_file_is_accepted(inbox: Path) -> None:
    spec_path = inbox / "bom.toml"
    spec_path.write_bytes(b'\xef\xbb\xbfprompt = "a dog"\n')
    assert load(inbox, spec_path)[0].prompt == "a dog"


def test_unknown_extension_is_refused(inbox: Path) -> None:
    spec_path = inbox / "job.yaml"
    spec_path.write_text("prompt: a fox")
    with pytest.raises(InvalidInput, match=r"\.txt, \.toml or \.json"):
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
    with pytest.raises(InvalidInput, match="only PNG, JPEG, WebP, HEIC, AVIF, TIFF, BMP and GIF images"):
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


def test_mask_makes_inpaint_the_default_action_and_must_have_the_image_shape(inbox: Path) -> None:
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


# -- image jobs need no prompt -------------------------------------------------------------------


def test_toml_beside_an_image_needs_no_prompt(inbox: Path) -> None:
    image(inbox / "shed.png")
    spec_path = inbox / "shed.toml"
    spec_path.write_text('image_action = "upscale_2x"\nsteps = 4\n')
    [spec] = load(inbox, spec_path, inbox / "shed.png")
    assert (spec.prompt, spec.image, spec.image_action, spec.steps) == ("", "shed.png", "upscale_2x", 4)


def test_txt_of_only_option_lines_beside_an_image_makes_image_jobs(inbox: Path) -> None:
    image(inbox / "shed.png")
    spec_path = inbox / "shed.txt"
    spec_path.write_text("action: vary_strong\n---\n# the second job keeps the default action\nseed: 4\n")
    first, second = load(inbox, spec_path, inbox / "shed.png")
    assert (first.prompt, first.image, first.image_action) == ("", "shed.png", "vary_strong")
    assert (second.prompt, second.image, second.image_action, second.seed) == (
        "",
        "shed.png",
        "vary_subtle",
        4,
    )


@pytest.mark.parametrize(
    ("name", "text", "message", "where"),
    [
        ("job.toml", "seed = 3\n", "a job needs a prompt (or an image to work from)", "the file"),
        ("job.txt", "seed: 3\n", "job 1 (lines 1–2) has options ('seed') but no prompt", "job 1 (lines 1–2)"),
    ],
)
def test_promptless_job_without_an_image_is_refused_with_the_same_message(
    inbox: Path, name: str, text: str, message: str, where: str
) -> None:
    spec_path = inbox / name
    spec_path.write_text(text)
    with pytest.raises(InvalidInput) as caught:
        load(inbox, spec_path)
    assert message in caught.value.message and caught.value.where == where
    assert "prompt" in caught.value.hint


def test_promptless_image_job_round_trips_through_the_journal_form_and_the_rule_still_holds(
    inbox: Path,
) -> None:
    image(inbox / "shed.png")
    spec_path = inbox / "shed.toml"
    spec_path.write_text('action = "vary_subtle"\n')
    [spec] = load(inbox, spec_path, inbox / "shed.png")
    stored = spec.model_dump_json(exclude_unset=True)  # what intake writes to the journal
    assert JobSpec.model_validate_json(stored) == spec
    with pytest.raises(ValueError, match="a job needs a prompt"):
        JobSpec.model_validate_json('{"image_action": "vary_subtle"}')


# -- masks named in a job ------------------------------------------------------------------------


def test_named_mask_is_resolved_relative_to_the_job_file_and_makes_inpaint_the_default(inbox: Path) -> None:
    image(inbox / "rooms" / "refs" / "hall.png", (48, 32))
    image(inbox / "rooms" / "refs" / "hall-mask.png", (48, 32))
    spec_path = inbox / "rooms" / "hall.toml"
    spec_path.write_text('image = "refs/hall.png"\nmask = "refs/hall-mask.png"\n')
    [spec] = load(inbox, spec_path)
    assert (spec.prompt, spec.image, spec.mask) == ("", "rooms/refs/hall.png", "rooms/refs/hall-mask.png")
    assert spec.image_action == "inpaint"


def test_named_mask_applies_to_the_paired_image_and_wins_over_a_paired_mask(inbox: Path) -> None:
    image(inbox / "hall.png", (48, 32))
    image(inbox / "hall.mask.png", (48, 32))
    image(inbox / "masks" / "door.png", (96, 64))
    spec_path = inbox / "hall.toml"
    spec_path.write_text('mask = "masks/door.png"\n')
    [spec] = load(inbox, spec_path, inbox / "hall.png", inbox / "hall.mask.png")
    assert (spec.image, spec.mask, spec.image_action) == ("hall.png", "masks/door.png", "inpaint")


@pytest.mark.parametrize("reference", ["../outside.png", "{outside}"])
def test_named_mask_leading_out_of_the_inbox_is_refused(inbox: Path, reference: str) -> None:
    outside = image(inbox.parent / "outside.png")
    image(inbox / "hall.png")
    spec_path = inbox / "hall.toml"
    spec_path.write_text(f'mask = "{reference.format(outside=outside)}"\n')
    with pytest.raises(InvalidInput, match=r"the mask path .* leads outside the inbox") as caught:
        load(inbox, spec_path, inbox / "hall.png")
    assert caught.value.where == "mask"


def test_named_mask_symlinked_out_of_the_inbox_is_refused(inbox: Path) -> None:
    (inbox / "mask.png").symlink_to(image(inbox.parent / "secret.png"))
    image(inbox / "hall.png")
    spec_path = inbox / "hall.toml"
    spec_path.write_text('mask = "mask.png"\n')
    with pytest.raises(InvalidInput, match="outside the inbox") as caught:
        load(inbox, spec_path, inbox / "hall.png")
    assert caught.value.where == "mask"


def test_missing_named_mask_is_refused_naming_the_key(inbox: Path) -> None:
    image(inbox / "hall.png")
    spec_path = inbox / "hall.toml"
    spec_path.write_text('mask = "masks/hall.png"\n')
    with pytest.raises(InvalidInput, match=r"the mask 'masks/hall\.png' does not exist") as caught:
        load(inbox, spec_path, inbox / "hall.png")
    assert caught.value.where == "mask" and "relative to the job file" in caught.value.hint


def test_named_mask_that_is_not_an_image_is_refused(inbox: Path) -> None:
    image(inbox / "hall.png")
    (inbox / "notes.png").write_text("not a picture")
    spec_path = inbox / "hall.toml"
    spec_path.write_text('mask = "notes.png"\n')
    with pytest.raises(InvalidInput, match="only PNG, JPEG, WebP, HEIC, AVIF, TIFF, BMP and GIF images"):
        load(inbox, spec_path, inbox / "hall.png")


def test_named_mask_without_any_image_is_refused(inbox: Path) -> None:
    image(inbox / "hall-mask.png")
    spec_path = inbox / "hall.toml"
    spec_path.write_text('prompt = "a hall"\nmask = "hall-mask.png"\n')
    with pytest.raises(InvalidInput, match=r"names the mask 'hall-mask\.png' but no image") as caught:
        load(inbox, spec_path)
    assert caught.value.where == "mask"


def test_paired_mask_goes_only_with_the_jobs_that_use_the_paired_image(inbox: Path) -> None:
    image(inbox / "hall.png")
    image(inbox / "hall.mask.png")
    image(inbox / "other.png", (64, 16))
    spec_path = inbox / "hall.txt"
    spec_path.write_text("a hall\n---\na street\nimage: other.png\n")
    first, second = load(inbox, spec_path, inbox / "hall.png", inbox / "hall.mask.png")
    assert (first.image, first.mask, first.image_action) == ("hall.png", "hall.mask.png", "inpaint")
    assert (second.image, second.mask, second.image_action) == ("other.png", None, "vary_subtle")


# -- mask size: the worker's rule (same shape within 1% → scaled; other shape → refused) ---------


@pytest.mark.parametrize("mask_size", [(48, 32), (24, 16), (96, 64), (193, 128)])
def test_mask_with_the_image_shape_but_another_size_is_accepted(
    inbox: Path, mask_size: tuple[int, int]
) -> None:
    image(inbox / "hall.png", (96, 64))
    image(inbox / "hall.mask.png", mask_size)
    [spec] = load(inbox, img=inbox / "hall.png", mask=inbox / "hall.mask.png")
    assert spec.mask == "hall.mask.png"


def test_paired_mask_of_another_shape_is_refused_naming_both_sizes(inbox: Path) -> None:
    image(inbox / "hall.png", (96, 64))
    image(inbox / "hall.mask.png", (64, 64))
    with pytest.raises(InvalidInput) as caught:
        load(inbox, img=inbox / "hall.png", mask=inbox / "hall.mask.png")
    assert "64×64 but its image is 96×64" in caught.value.message and "shapes differ" in caught.value.message
    assert caught.value.where == "hall.mask.png"


def test_named_mask_of_another_shape_is_refused_at_the_mask_key(inbox: Path) -> None:
    image(inbox / "hall.png", (96, 64))
    image(inbox / "wide-mask.png", (100, 30))
    spec_path = inbox / "hall.toml"
    spec_path.write_text('image = "hall.png"\nmask = "wide-mask.png"\n')
    with pytest.raises(InvalidInput, match="100×30 but its image is 96×64") as caught:
        load(inbox, spec_path)
    assert caught.value.where == "mask"


def test_mask_shape_is_compared_with_the_photo_as_it_is_shown_upright(inbox: Path) -> None:
    # A phone photo stored 40×20 with "rotate 90°" in its EXIF is 20×40 on screen, as its mask is.
    photo = Image.new("RGB", (40, 20), "green")
    exif = photo.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", exif=exif)
    (inbox / "phone.jpg").write_bytes(buffer.getvalue())
    image(inbox / "phone.mask.png", (20, 40))
    [spec] = load(inbox, img=inbox / "phone.jpg", mask=inbox / "phone.mask.png")
    assert spec.mask == "phone.mask.png"

    image(inbox / "phone.mask.png", (40, 20))
    with pytest.raises(InvalidInput, match="40×20 but its image is 20×40"):
        load(inbox, img=inbox / "phone.jpg", mask=inbox / "phone.mask.png")
