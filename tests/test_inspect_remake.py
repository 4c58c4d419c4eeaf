"""``fooocusd inspect``: read an image's settings back, and remake it from the job file it prints."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from fooocusd.cli import main
from fooocusd.jobs.toml_format import parse_toml
from fooocusd.outbox.metadata import a1111_parameters
from fooocusd.outbox.remake import a1111_sampler, from_a1111, from_fooocus_scheme
from tests.daemon_harness import Sandbox
from tests.image_helpers import drawn_scene

STYLED_TXT = """a red fox in a snowy birch forest
soft morning light
negative: blurry, text
styles: Fooocus V2, Fooocus Sharp, Fooocus Enhance
seed: 4242
images: 2
aspect: 896*1152
cfg: 5.5
sharpness: 3
"""


def _inspect(*args: str | Path) -> int:
    return main(["inspect", *(str(arg) for arg in args)])


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _png_with_text(path: Path, chunks: dict[str, str]) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (32, 32), "olive").save(path, pnginfo=info)
    return path


def _fooocus_png(path: Path, scheme: dict[str, object]) -> Path:
    """An image as Fooocus saves it with "Save Metadata to Images": the JSON in ``parameters``."""
    return _png_with_text(path, {"parameters": json.dumps(scheme), "fooocus_scheme": "fooocus"})


def _with_tiny_expansion(sandbox: Sandbox) -> None:
    text = sandbox.config.read_text(encoding="utf-8")
    sandbox.config.write_text(text.replace('device = "cpu"', 'device = "cpu"\nexpansion = "tiny-random"', 1))


def test_images_made_again_from_the_job_file_inspect_prints_are_the_same_pixels(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    _with_tiny_expansion(sandbox)
    sandbox.drop("portrait/fox.txt", STYLED_TXT)  # the portrait preset's folder, two images
    assert sandbox.drain().jobs_done == 1
    originals = sorted(sandbox.images())
    assert len(originals) == 2
    record = json.loads(originals[0].with_suffix(".json").read_text())
    assert record["expanded_prompt"], "prompt expansion must have run for this test to mean anything"

    capsys.readouterr()
    assert _inspect(*originals, "--job") == 0
    job_file = capsys.readouterr().out
    specs = parse_toml(job_file, "again.toml")
    assert [(spec.seed, spec.images) for spec in specs] == [(4242, 1), (4243, 1)]
    assert all("images" in spec.model_fields_set for spec in specs), "not the config's generation.images"
    assert specs[0].styles == ["Fooocus V2", "Fooocus Sharp", "Fooocus Enhance"]
    assert specs[0].extra_prompts == ["soft morning light"]

    sandbox.drop("again.toml", job_file)  # the top folder: the default preset, not portrait's
    assert sandbox.drain().jobs_done == 2  # a [[job]] per image
    remade = sorted(path for path in sandbox.images() if path.name.startswith("again"))
    assert len(remade) == 2
    for original, again in zip(originals, remade, strict=True):
        assert np.array_equal(_pixels(original), _pixels(again)), f"{again.name} differs from {original.name}"


def _scene_png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    drawn_scene(size).save(buffer, format="PNG")
    return buffer.getvalue()


def _mask_png(size: tuple[int, int]) -> bytes:
    mask = Image.new("L", size, 0)
    mask.paste(255, (24, 16, 72, 48))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


IMAGE_JOBS = {
    "vary": ('prompt = "a garden shed"\naction = "vary_strong"\nseed = 9\n', False),
    "inpaint": ('prompt = "a vase of flowers"\nsteps = 2\nseed = 9\n', True),
    "outpaint": (
        'prompt = "a meadow"\naction = "outpaint"\noutpaint = ["left", "top"]\noutpaint_distance = 16\n'
        "steps = 2\nseed = 9\n",
        False,
    ),
}


@pytest.mark.parametrize("kind", sorted(IMAGE_JOBS))
def test_an_image_job_is_made_again_from_its_job_file_submitted_with_its_pictures(
    kind: str, sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_text, with_mask = IMAGE_JOBS[kind]
    source = _scene_png((96, 64))
    sources = {"shed.png": source, **({"shed.mask.png": _mask_png((96, 64))} if with_mask else {})}
    for name, content in sources.items():
        sandbox.drop(f"yard/{name}", content)
    sandbox.drop("yard/shed.toml", job_text)
    assert sandbox.drain().jobs_done == 1
    (original,) = sandbox.images()

    capsys.readouterr()
    assert _inspect(original, "--config", sandbox.config) == 0
    readable = " ".join(capsys.readouterr().out.split())
    assert f"the job works on {', '.join(sources)}: put " in readable
    assert f"yard/shed.png was moved to {sandbox.done / 'yard' / 'shed.png'}" in readable
    assert _inspect(original, "--job") == 0
    job_file = capsys.readouterr().out
    (spec,) = parse_toml(job_file, "again.toml")
    assert (spec.image, spec.seed) == ("shed.png", 9), "by file name, to sit beside the job file"

    work = tmp_path / "work"  # the user's own folder: the job file, and the pictures beside it
    work.mkdir()
    (work / "again.toml").write_text(job_file)
    for name, content in sources.items():
        (work / name).write_bytes(content)
    assert main(["submit", str(work / "again.toml"), "--config", str(sandbox.config)]) == 0
    assert sandbox.drain().jobs_done == 1, sandbox.files(sandbox.failed)
    (again,) = [path for path in sandbox.images() if path.name.startswith("again")]
    assert np.array_equal(_pixels(original), _pixels(again))


def test_without_its_sidecar_an_image_is_read_from_the_settings_embedded_in_it(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.drop("fox.txt", STYLED_TXT.replace("images: 2", "clip skip: 1\nadaptive cfg: 6"))
    assert sandbox.drain().jobs_done == 1
    (image,) = sandbox.images()
    image.with_suffix(".json").unlink()  # moved elsewhere, as sidecars get

    capsys.readouterr()
    assert _inspect(image, "--json") == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["origin"] == "fooocusd"
    job = entry["job"]
    assert (job["prompt"], job["extra_prompts"], job["negative"]) == (
        "a red fox in a snowy birch forest",
        ["soft morning light"],
        "blurry, text",
    )
    assert job["styles"] == ["Fooocus V2", "Fooocus Sharp", "Fooocus Enhance"]
    assert (job["seed"], job["cfg"], job["sharpness"], job["adaptive_cfg"], job["clip_skip"]) == (
        4242,
        5.5,
        3.0,
        6.0,
        1,
    )
    assert (job["sampler"], job["scheduler"], job["performance"]) == ("dpmpp_2m_sde_gpu", "karras", "speed")


def test_a_sidecar_whose_image_was_edited_since_gives_way_to_the_settings_in_the_image(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.drop("fox.txt", "a red fox\nseed: 11\n")
    assert sandbox.drain().jobs_done == 1
    (image,) = sandbox.images()
    sidecar = image.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**record, "seed": 999}))  # this sidecar no longer tells the truth
    assert _inspect(image, "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["job"]["seed"] == 999
    assert _inspect(sidecar, "--json") == 0  # a sidecar may be given itself
    (entry,) = json.loads(capsys.readouterr().out)
    assert (entry["origin"], entry["file"]) == ("fooocusd sidecar", str(sidecar))

    with Image.open(image) as opened:  # an editor re-saves it, keeping the text chunks
        info = PngImagePlugin.PngInfo()
        for key, value in opened.text.items():
            info.add_text(key, value)
        opened.convert("L").convert("RGB").save(image, pnginfo=info)
    assert _inspect(image, "--json") == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert (entry["origin"], entry["job"]["seed"]) == ("fooocusd", 11)


def test_a_fooocus_image_is_remade_from_the_prompt_fooocus_encoded_without_its_styles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scheme = {
        "adm_guidance": "(1.5, 0.8, 0.3)",
        "base_model": "juggernautXL_v8Rundiffusion",
        "base_model_hash": "aeb7e9e689",
        "full_negative_prompt": ["(worst quality, low quality:1.4)", "blurry"],
        "full_prompt": ["cinematic photo of a red fox, golden hour, highly detailed", "35mm film"],
        "guidance_scale": 4.0,
        "loras": [["sd_xl_offset_example-lora_1.0", 0.1, "4852686128"]],
        "metadata_scheme": "fooocus",
        "negative_prompt": "",
        "performance": "Speed",
        "prompt": "a red fox",
        "prompt_expansion": "a red fox, golden hour, highly detailed",
        "refiner_model": "None",
        "refiner_switch": 0.5,
        "resolution": "(896, 1152)",
        "sampler": "dpmpp_2m_sde_gpu",
        "scheduler": "karras",
        "seed": "1234567890123",
        "sharpness": 2.0,
        "steps": 30,
        "styles": "['Fooocus V2', 'Fooocus Enhance', 'Fooocus Sharp']",
        "vae": "Default (model)",
        "version": "Fooocus v2.5.5",
    }
    image = _fooocus_png(tmp_path / "2026-11-28_10-00-00_1234.png", scheme)
    assert _inspect(image, "--job") == 0
    job_file = capsys.readouterr().out
    assert "their templates are not fooocusd's" in job_file
    (spec,) = parse_toml(job_file, "again.toml")
    assert spec.prompt == "cinematic photo of a red fox, golden hour, highly detailed"
    assert spec.extra_prompts == ["35mm film"]
    assert spec.negative == "(worst quality, low quality:1.4), blurry"
    assert spec.styles == []
    assert (spec.seed, spec.performance, spec.aspect, spec.cfg) == (1234567890123, "speed", "896*1152", 4.0)
    assert (spec.adm_scaler_positive, spec.adm_scaler_negative, spec.adm_scaler_end) == (1.5, 0.8, 0.3)
    assert spec.model == "juggernautXL_v8Rundiffusion"
    assert [(lora.name, lora.weight) for lora in spec.loras or []] == [("sd_xl_offset_example-lora_1.0", 0.1)]
    assert (spec.refiner, spec.vae) == ("none", "default")


def test_an_a1111_image_is_remade_with_fooocus_refinements_turned_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "a castle on a cliff, <lora:detail:0.6>\nNegative prompt: blurry, lowres\n"
        "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 99, Size: 832x1216, "
        "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Clip skip: 2, Version: v1.10.1"
    )
    image = _png_with_text(tmp_path / "00012-99.png", {"parameters": text})
    assert _inspect(image, "--job") == 0
    (spec,) = parse_toml(capsys.readouterr().out, "again.toml")
    assert (spec.prompt, spec.negative, spec.styles) == (
        "a castle on a cliff, <lora:detail:0.6>",
        "blurry, lowres",
        [],
    )
    assert (spec.steps, spec.sampler, spec.scheduler, spec.cfg, spec.seed) == (
        25,
        "dpmpp_2m",
        "karras",
        6.5,
        99,
    )
    assert (spec.aspect, spec.model, spec.clip_skip) == ("832*1216", "sd_xl_base_1.0", 2)
    assert (spec.sharpness, spec.adaptive_cfg) == (0.0, 6.5)
    assert (spec.adm_scaler_positive, spec.adm_scaler_negative, spec.adm_scaler_end) == (1.0, 1.0, 0.0)


def test_fooocusds_own_a1111_text_reads_back_as_the_job_that_wrote_it() -> None:
    record = {
        "prompt": "a red fox",
        "extra_prompts": ["soft light"],
        "negative": "blurry",
        "full_prompt": ["photo of a red fox, sharp", "soft light"],
        "full_negative_prompt": ["blurry, painting"],
        "styles": ["Fooocus V2", "fooocusd Sharp"],
        "expanded_prompt": "a red fox, detailed",
        "seed": 77,
        "steps": 30,
        "sampler": "dpmpp_3m_sde_gpu",
        "scheduler": "exponential",
        "cfg": 4.0,
        "sharpness": 2.0,
        "adaptive_cfg": 7.0,
        "clip_skip": 2,
        "adm_guidance": [1.5, 0.8, 0.3],
        "width": 1152,
        "height": 896,
        "performance": "quality",
        "model": "juggernautXL_v8Rundiffusion.safetensors",
        "model_hash": "aeb7e9e689",
        "loras": [{"name": "offset.safetensors", "weight": 0.1, "hash": "1234567890"}],
        "refiner": None,
        "vae": "default",
    }
    job = from_a1111(Path("x.png"), a1111_parameters(record)).job
    assert (job["prompt"], job["extra_prompts"], job["negative"]) == ("a red fox", ["soft light"], "blurry")
    assert job["styles"] == ["Fooocus V2", "fooocusd Sharp"]
    assert (job["sampler"], job["scheduler"], job["performance"]) == (
        "dpmpp_3m_sde_gpu",
        "exponential",
        "quality",
    )
    assert (job["seed"], job["steps"], job["aspect"], job["model"]) == (
        77,
        30,
        "1152*896",
        "juggernautXL_v8Rundiffusion",
    )
    assert (job["sharpness"], job["adaptive_cfg"], job["clip_skip"], job["adm_scaler_end"]) == (
        2.0,
        7.0,
        2,
        0.3,
    )
    assert job["loras"] == [{"name": "offset", "weight": 0.1}]


@pytest.mark.parametrize(
    ("label", "schedule", "expected"),
    [
        ("DPM++ 2M SDE Karras", "", ("dpmpp_2m_sde_gpu", "karras")),
        ("DPM++ 2M", "Karras", ("dpmpp_2m", "karras")),
        ("Euler a", "", ("euler_ancestral", "")),
        ("DPM++ SDE", "Exponential", ("dpmpp_sde_gpu", "exponential")),
        ("UniPC", "SGM Uniform", ("uni_pc", "sgm_uniform")),
        ("PLMS", "", ("", "")),
    ],
)
def test_a1111_sampler_labels_map_back_to_fooocus_sampler_and_scheduler(
    label: str, schedule: str, expected: tuple[str, str]
) -> None:
    assert a1111_sampler(label, schedule) == expected


def test_a_remade_job_turns_off_the_default_presets_loras_the_image_did_not_use(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.drop("fox.txt", "a red fox\nseed: 3\n")
    assert sandbox.drain().jobs_done == 1
    (image,) = sandbox.images()
    presets = tmp_path / "my-presets"
    presets.mkdir()
    (presets / "house.toml").write_text('loras = [["house_style.safetensors", 0.7]]\n')
    config = sandbox.config.read_text()
    config = config.replace("[intake]", f'presets = "{presets}"\n\n[intake]', 1)
    sandbox.config.write_text(config + 'preset = "house"\n')

    assert main(["inspect", str(image), "--job", "--config", str(sandbox.config)]) == 0
    (spec,) = parse_toml(capsys.readouterr().out, "again.toml")
    assert [(lora.name, lora.weight) for lora in spec.loras or []] == [("house_style.safetensors", 0.0)]


def test_an_image_without_settings_is_explained_and_nothing_is_printed_for_a_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "holiday.png"
    Image.new("RGB", (16, 16), "red").save(plain)
    shutil.copy(plain, tmp_path / "other.png")

    assert _inspect(plain) == 1
    captured = capsys.readouterr()
    assert "holiday.png carries no generation settings" in captured.err
    assert "Save Metadata to Images" in captured.err

    assert _inspect(plain, "--job") == 2
    assert capsys.readouterr().out == ""
    assert _inspect(tmp_path / "missing.png") == 1
    assert "does not exist" in capsys.readouterr().err

    garbled = _png_with_text(
        tmp_path / "garbled.png", {"parameters": json.dumps({"prompt": "x", "seed": "soon"})}
    )
    assert _inspect(garbled) == 1
    assert "the settings recorded in garbled.png are incomplete or garbled" in capsys.readouterr().err


def test_an_older_fooocus_image_without_encoded_prompts_keeps_its_styles_by_name_and_says_they_differ() -> (
    None
):
    scheme = {
        "prompt": "a red fox",
        "styles": "['Fooocus V2', 'Fooocus Sharp']",
        "seed": "5",
        "version": "v2.1",
    }
    image = from_fooocus_scheme(Path("old.png"), scheme, known_style=lambda name: True)
    assert (image.origin, image.job["prompt"], image.job["styles"]) == (
        "Fooocus",
        "a red fox",
        ["Fooocus V2", "Fooocus Sharp"],
    )
    assert any("templates differ" in note for note in image.notes)


def test_a_sampler_or_scheduler_fooocusd_lacks_is_left_to_the_default_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scheme = {"prompt": "a lighthouse", "seed": "8", "sampler": "restart", "scheduler": "align_your_steps"}
    image = _fooocus_png(tmp_path / "fooocus.png", {**scheme, "version": "Fooocus v2.5.5"})
    assert _inspect(image, "--job") == 0
    job_file = capsys.readouterr().out
    assert "sampler 'restart' is not one fooocusd has: the default sampler is used" in job_file
    assert "scheduler 'align_your_steps' is not one fooocusd has" in job_file
    (spec,) = parse_toml(job_file, "again.toml")
    assert (spec.sampler, spec.scheduler, spec.seed) == (None, None, 8)

    scheme.update(sampler="euler", scheduler="lcm")  # lcm's schedule is for the lcm sampler only
    _fooocus_png(image, scheme)
    assert _inspect(image, "--job") == 0
    job_file = capsys.readouterr().out
    assert "sampler 'euler' cannot use scheduler 'lcm': the default scheduler is used" in job_file
    (spec,) = parse_toml(job_file, "again.toml")
    assert (spec.sampler, spec.scheduler) == ("euler", None)
