"""Image prompts in job files: the .txt and .toml syntax, and how the loader resolves their files."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fooocusd.errors import InvalidInput
from fooocusd.jobs.loader import load_drop
from fooocusd.jobs.spec import JobSpec
from fooocusd.jobs.toml_format import parse_toml
from fooocusd.jobs.txt_format import parse_txt


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(path)
    return path


def _load(inbox: Path, job: Path, image: Path | None = None) -> list[JobSpec]:
    return load_drop(
        job,
        image,
        None,
        inbox,
        max_job_file_bytes=1_000_000,
        max_image_pixels=64_000_000,
        default_image_action="vary_subtle",
    )


def test_txt_image_prompt_lines_repeat_and_read_path_type_weight_and_stop() -> None:
    (spec,) = parse_txt(
        "a fox\nimage prompt: refs/my pose.png PyraCanny 0.6 0.5\n"
        "Image_Prompt: d.png depth\nimage prompt: x.png\n",
        "a.txt",
    )
    slots = [(s.image, s.type, s.weight, s.stop_at) for s in spec.image_prompts or ()]
    assert slots == [
        ("refs/my pose.png", "pyracanny", 0.6, 0.5),
        ("d.png", "depth", None, None),
        ("x.png", "image_prompt", None, None),
    ]


def test_toml_image_prompts_take_tables_or_text_entries_and_loose_type_names() -> None:
    (spec,) = parse_toml(
        'prompt = "x"\n'
        'image_prompts = [{ image = "r.png", type = "FaceSwap", weight = 0.7 }, "c.png cpds 1.5"]',
        "a.toml",
    )
    slots = [(s.image, s.type, s.weight, s.stop_at) for s in spec.image_prompts or ()]
    assert slots == [("r.png", "face", 0.7, None), ("c.png", "cpds", 1.5, None)]


def test_an_unknown_image_prompt_type_is_refused_with_the_known_types() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_toml('prompt = "x"\nimage_prompts = [{ image = "r.png", type = "scribble" }]', "a.toml")
    assert "pyracanny" in caught.value.message and "pyracanny" in caught.value.hint


def test_more_than_four_image_prompts_are_refused() -> None:
    lines = "".join(f"image prompt: {n}.png canny\n" for n in range(5))
    with pytest.raises(InvalidInput):
        parse_txt(f"a fox\n{lines}", "a.txt")


def test_image_prompt_files_are_resolved_relative_to_the_job_file(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    _image(inbox / "work" / "refs" / "pose.png")
    job = inbox / "work" / "job.txt"
    job.write_text("a dancer\nimage prompt: refs/pose.png pyracanny\n")
    (spec,) = _load(inbox, job)
    assert spec.image_prompts is not None and spec.image_prompts[0].image == "work/refs/pose.png"
    assert spec.image is None


def test_a_missing_image_prompt_file_is_refused_naming_it(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    job = inbox / "job.txt"
    job.write_text("a dancer\nimage prompt: gone.png depth\n")
    with pytest.raises(InvalidInput) as caught:
        _load(inbox, job)
    assert "gone.png" in caught.value.message and caught.value.where == "image prompt"


def test_an_image_prompt_outside_the_inbox_is_refused(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _image(tmp_path / "secret.png")
    job = inbox / "job.txt"
    job.write_text("a dancer\nimage prompt: ../secret.png cpds\n")
    with pytest.raises(InvalidInput, match="outside the inbox"):
        _load(inbox, job)


def test_the_image_beside_a_job_that_uses_it_as_an_image_prompt_is_only_a_reference(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    picture = _image(inbox / "sketch.png")
    job = inbox / "sketch.txt"
    job.write_text("a house\nimage prompt: sketch.png pyracanny\n")
    (spec,) = _load(inbox, job, picture)
    assert spec.image is None and spec.image_action is None
    assert spec.image_prompts is not None and spec.image_prompts[0].image == "sketch.png"


def test_the_image_beside_a_job_stays_its_input_when_the_job_asks_for_an_action(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    picture = _image(inbox / "sketch.png")
    job = inbox / "sketch.txt"
    job.write_text("a house\nimage prompt: sketch.png pyracanny\naction: vary_strong\n")
    (spec,) = _load(inbox, job, picture)
    assert spec.image == "sketch.png" and spec.image_action == "vary_strong"
