"""An image dropped alone is redrawn with the prompt it records (fooocusd, Fooocus, A1111)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from fooocusd.cli import main
from fooocusd.jobs.loader import load_drop
from fooocusd.jobs.recorded_prompt import recorded_prompt
from tests.daemon_harness import Sandbox

LIMITS = {"max_job_file_bytes": 10_000, "max_image_pixels": 64_000_000, "default_image_action": "vary_subtle"}

A1111 = """\
a knight in ornate armour <lora:add-detail-xl:0.8>, (embedding:shiny:1.1), castle
Negative prompt: lowres, (embedding:bad_hands:1.2), embedding:EasyNegative, blurry
Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 1024x1024, Model: juggernautXL_v9"""


def _png(path: Path, chunks: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (64, 64), "olive").save(path, pnginfo=info)
    return path


def test_an_a1111_image_gives_its_prompts_without_the_files_of_another_installation(tmp_path: Path) -> None:
    fields = recorded_prompt(_png(tmp_path / "knight.png", {"parameters": A1111}))
    assert fields == {"prompt": "a knight in ornate armour, castle", "negative": "lowres, blurry"}


def test_a_fooocus_image_gives_the_prompt_fooocus_encoded_and_no_styles_it_cannot_match(
    tmp_path: Path,
) -> None:
    scheme = {
        "prompt": "a cat",
        "negative_prompt": "",
        "styles": "['Fooocus V2', 'SAI Anime']",
        "full_prompt": ["anime artwork of a cat, vibrant", "a cat, intricate, detailed"],
        "full_negative_prompt": ["photo, realistic"],
        "base_model": "juggernautXL_v8Rundiffusion.safetensors",
        "steps": 30,
        "seed": "7",
        "version": "Fooocus v2.5.5",
    }
    image = _png(tmp_path / "cat.png", {"parameters": json.dumps(scheme), "fooocus_scheme": "fooocus"})
    assert recorded_prompt(image) == {
        "prompt": "anime artwork of a cat, vibrant",
        "extra_prompts": ["a cat, intricate, detailed"],
        "negative": "photo, realistic",
    }


def test_an_image_with_no_record_or_no_prompt_gives_nothing(tmp_path: Path) -> None:
    assert recorded_prompt(_png(tmp_path / "plain.png", {})) == {}
    assert (
        recorded_prompt(_png(tmp_path / "empty.png", {"parameters": "Steps: 30, Seed: 1, CFG scale: 7"}))
        == {}
    )
    assert (
        recorded_prompt(_png(tmp_path / "garbled.png", {"parameters": "{not json", "fooocus_scheme": "x"}))
        == {}
    )


def test_the_loader_redraws_an_image_alone_with_its_recorded_prompt_only_when_asked(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    image = _png(inbox / "knight.png", {"parameters": A1111})
    [asked] = load_drop(None, image, None, inbox, **LIMITS, use_recorded_prompt=True)
    assert (asked.prompt, asked.negative, asked.image, asked.image_action) == (
        "a knight in ornate armour, castle",
        "lowres, blurry",
        "knight.png",
        "vary_subtle",
    )
    assert asked.seed is None and asked.model is None  # a new picture, with this installation's model
    [plain] = load_drop(None, image, None, inbox, **LIMITS)
    assert plain.prompt == "" and plain.image == "knight.png"


def test_a_job_file_without_a_prompt_takes_its_images_prompt_but_keeps_what_it_sets(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    image = _png(inbox / "knight.png", {"parameters": A1111})
    job = inbox / "knight.txt"
    job.write_text("action: upscale_2x\nnegative: jpeg artefacts\n---\na dragon\n", encoding="utf-8")
    first, second = load_drop(job, image, None, inbox, **LIMITS, use_recorded_prompt=True)
    assert (first.prompt, first.negative, first.image_action) == (
        "a knight in ornate armour, castle",
        "jpeg artefacts",
        "upscale_2x",
    )
    assert (second.prompt, second.negative) == ("a dragon", "")  # a prompt of its own: left alone


def test_an_output_dropped_back_alone_is_varied_with_its_own_prompt_and_styles(sandbox: Sandbox) -> None:
    sandbox.drop("fox.txt", "a red fox in fresh snow\nstyles: Film Noir\nseed: 5\n")
    assert sandbox.drain().ok
    [first] = sandbox.images()
    shutil.copy(first, sandbox.inbox / "again.png")
    assert sandbox.drain().ok
    [again] = [image for image in sandbox.images() if image.name.startswith("again")]
    record = json.loads(again.with_suffix(".json").read_text())
    assert record["prompt"] == "a red fox in fresh snow" and record["styles"] == ["Film Noir"]
    assert record["image_action"]["action"] == "vary_subtle" and record["seed"] != 5
    assert record["notes"] == ["prompt and styles taken from what again.png records"]


def test_submit_dry_run_of_an_image_shows_the_prompt_it_records(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _png(tmp_path / "knight.png", {"parameters": A1111})
    assert main(["submit", str(image), "--dry-run", "--config", str(sandbox.config)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "an image alone: vary_subtle (generation.image_action), with the prompt it records:" in out
    assert "'a knight in ornate armour, castle'" in out
    assert sandbox.files(sandbox.inbox) == []
