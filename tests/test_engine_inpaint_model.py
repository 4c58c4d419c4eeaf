"""SDXL inpainting models (9-channel UNet) and ControlNet images that line up with the inpaint crop."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
from PIL import Image, ImageDraw

from fooocusd.engine.base import ImagePrompt
from fooocusd.engine.controlnet.models import ControlNetConfig
from fooocusd.engine.controlnet.preprocess import fit_to_size, pyracanny
from fooocusd.engine.families import detect_family
from fooocusd.engine.image_actions import (
    ImageActionContext,
    ImageJob,
    aligned_control_prompts,
    run_image_action,
)
from fooocusd.engine.image_prompts import CONTROL_IMAGES_KEY
from fooocusd.engine.inpaint import mask_bounding_box, working_area
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.models import SDXL_CONFIG_DIR, require_sdxl_checkpoint, resolve_model
from fooocusd.engine.sdxl import SDXLEngine
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from fooocusd.errors import InvalidInput, ModelNotFound
from tests.daemon_harness import Sandbox
from tests.engine_helpers import default_request, save_sgm_checkpoint, save_tiny_canny_controlnet
from tests.image_helpers import drawn_scene

STEPS = 2
FOLDER_MODEL = "tiny-inpainting"
FILE_MODEL = "tiny-inpainting-file"
BASE_FILE = "tiny-base-file"


def _inpainting_unet(seed: int = 11) -> UNet2DConditionModel:
    """tiny-random's UNet with 9 input channels (latents, mask, masked-image latents), random weights."""
    base = build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).unet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config({**base.config, "in_channels": 9})
    return unet.eval()


def _save_inpainting_folder(folder: Path, unet: UNet2DConditionModel) -> None:
    """A diffusers-layout SDXL inpainting folder; only the UNet is read, so only it is written."""
    folder.mkdir(parents=True)
    index = {
        "_class_name": "StableDiffusionXLInpaintPipeline",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    unet.save_pretrained(folder / "unet")


def _save_single_file(path: Path, unet: UNet2DConditionModel) -> None:
    """A whole SDXL checkpoint (text encoders, VAE, UNet) in the single-file layout with ``unet``."""
    pipeline = build_tiny_sdxl_pipeline(EulerDiscreteScheduler())
    parts = SimpleNamespace(
        unet=unet,
        vae=pipeline.vae,
        text_encoder=pipeline.text_encoder,
        text_encoder_2=pipeline.text_encoder_2,
    )
    save_sgm_checkpoint(parts, path)  # type: ignore[arg-type]


def _tiny_config_dir(target: Path) -> Path:
    """The base model's config folder as the engine has it: tiny-random's UNet config, the real scheduler."""
    shutil.copytree(SDXL_CONFIG_DIR / "scheduler", target / "scheduler")
    build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).unet.save_config(target / "unet")
    return target


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    checkpoints = root / "checkpoints"
    _save_inpainting_folder(checkpoints / FOLDER_MODEL, _inpainting_unet())
    _save_single_file(checkpoints / f"{FILE_MODEL}.safetensors", _inpainting_unet(seed=12))
    _save_single_file(
        checkpoints / f"{BASE_FILE}.safetensors", build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).unet
    )
    save_tiny_canny_controlnet(root)
    return root


@pytest.fixture(scope="module")
def engine(models: Path, tmp_path_factory: pytest.TempPathFactory) -> SDXLEngine:
    built = SDXLEngine(
        resolve_model("tiny-random", models),
        models_dir=models,
        hash_cache=models / "hashes.json",
        device="cpu",
        config_dir=_tiny_config_dir(tmp_path_factory.mktemp("config")),
        controlnet=ControlNetConfig(canny="tiny-canny", depth=""),
    )
    built.load()
    return built


@pytest.fixture
def unet_inputs() -> Iterator[list[torch.Size]]:
    """Shapes of every input reaching a 9-channel convolution (an inpainting UNet's ``conv_in``)."""
    seen: list[torch.Size] = []

    def record(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 9:
            seen.append(args[0].shape)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    yield seen
    handle.remove()


def _scene_and_mask() -> tuple[Image.Image, Image.Image]:
    image = drawn_scene((256, 192))
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (100, 60, 160, 120))
    return image, mask


def _inpaint(engine: SDXLEngine, inpaint_model: str, **request: Any) -> tuple[np.ndarray, dict[str, Any]]:
    image, mask = _scene_and_mask()
    job = ImageJob("inpaint", image, mask=mask, inpaint_model=inpaint_model)
    context = ImageActionContext(ModelDirs.of(Path("/nonexistent")))
    result = run_image_action(engine, default_request(steps=STEPS, sampler="euler", **request), job, context)
    return np.asarray(result.image), result.extra


def test_inpainting_checkpoints_are_recognised_by_their_9_channel_unet(models: Path) -> None:
    checkpoints = models / "checkpoints"
    single = detect_family(checkpoints / f"{FILE_MODEL}.safetensors")
    assert single.family == "sdxl_inpaint" and "9-channel" in single.reason
    assert detect_family(checkpoints / FOLDER_MODEL).family == "sdxl_inpaint"
    assert detect_family(checkpoints / f"{BASE_FILE}.safetensors").family == "sdxl"


def test_an_inpainting_checkpoint_as_the_base_model_says_where_it_belongs(models: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        require_sdxl_checkpoint(models / "checkpoints" / f"{FILE_MODEL}.safetensors")
    assert "SDXL inpainting checkpoint" in caught.value.message
    assert "inpaint_model" in caught.value.message


def test_the_inpainting_unet_gets_latents_mask_and_masked_image_at_every_call(
    engine: SDXLEngine, unet_inputs: list[torch.Size]
) -> None:
    _inpaint(engine, FOLDER_MODEL)
    assert len(unet_inputs) == STEPS  # euler: one call per step
    for shape in unet_inputs:
        assert shape[0] == 2 and shape[1] == 9  # the CFG batch (uncond, cond), both with the extra channels


def test_the_extra_channels_are_the_latent_mask_and_the_grey_blanked_image(engine: SDXLEngine) -> None:
    captured: list[torch.Tensor] = []

    def record(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 9:
            captured.append(args[0].detach().clone())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        _inpaint(engine, FOLDER_MODEL)
    finally:
        handle.remove()
    first = captured[0]
    assert torch.equal(first[0, 4:], first[1, 4:])  # the same extras for both halves of the CFG batch
    mask = first[0, 4]
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert 0.0 < float(mask.mean()) < 1.0  # part of the working area is repainted, not all of it
    assert torch.equal(first[0, 4:], captured[-1][0, 4:])  # unchanged from step to step


def test_an_inpainting_model_repaints_differently_and_keeps_every_outside_pixel(engine: SDXLEngine) -> None:
    with_model, extra = _inpaint(engine, FOLDER_MODEL)
    with_base, base_extra = _inpaint(engine, "none")
    image, mask = _scene_and_mask()
    outside = np.asarray(mask) < 128
    assert np.array_equal(with_model[outside], np.asarray(image)[outside])
    assert not np.array_equal(with_model[~outside], with_base[~outside])
    record = extra["image_action"]["inpaint_model"]
    assert record["name"] == FOLDER_MODEL and len(record["sha256"]) == 64
    assert base_extra["image_action"]["inpaint_model"] is None


def test_a_single_file_inpainting_checkpoint_loads_its_unet_and_renders(
    engine: SDXLEngine, unet_inputs: list[torch.Size]
) -> None:
    pixels, extra = _inpaint(engine, FILE_MODEL)
    image, mask = _scene_and_mask()
    outside = np.asarray(mask) < 128
    assert np.array_equal(pixels[outside], np.asarray(image)[outside])
    assert unet_inputs and all(shape[1] == 9 for shape in unet_inputs)
    assert extra["inpaint_model"]["name"] == FILE_MODEL


def test_a_missing_inpaint_model_names_it_and_the_checkpoints_folder(
    engine: SDXLEngine, models: Path
) -> None:
    with pytest.raises(InvalidInput) as caught:
        _inpaint(engine, "no_such_inpainting")
    assert "no_such_inpainting" in caught.value.message and "inpaint_model" in caught.value.message
    assert str(models / "checkpoints") in caught.value.hint and "'none'" in caught.value.hint
    assert caught.value.where.startswith("inpaint_model = 'no_such_inpainting' (looked for")


def test_a_plain_sdxl_model_as_inpaint_model_is_refused_with_the_reason(engine: SDXLEngine) -> None:
    with pytest.raises(InvalidInput) as caught:
        _inpaint(engine, BASE_FILE)
    assert "4 input channels" in caught.value.message and "9" in caught.value.message
    assert "inpainting" in caught.value.hint


def _reference() -> Image.Image:
    image = Image.new("RGB", (256, 192), (30, 30, 30))
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, 90, 80), fill=(230, 230, 230))
    draw.ellipse((120, 70, 200, 150), fill=(200, 60, 60))
    return image


def test_control_map_of_an_inpaint_job_is_the_working_area_of_the_control_image(engine: SDXLEngine) -> None:
    image, mask = _scene_and_mask()
    reference = _reference()
    canny = ImagePrompt("pyracanny", reference, weight=1.0, stop_at=1.0)
    job = ImageJob("inpaint", image, mask=mask)
    request = default_request(steps=STEPS, sampler="euler", image_prompts=(canny,))
    result = run_image_action(engine, request, job, ImageActionContext(ModelDirs.of(Path("/nonexistent"))))
    (control,) = result.extra[CONTROL_IMAGES_KEY]
    box = mask_bounding_box(mask)
    assert box is not None
    area = tuple(result.extra["image_action"]["working_area"])
    assert area == working_area(box, *image.size, 0.618)
    expected = pyracanny(fit_to_size(reference.crop(area), *control.image.size))
    assert np.array_equal(np.asarray(control.image), np.asarray(expected))
    whole = pyracanny(fit_to_size(reference, *control.image.size))
    assert not np.array_equal(np.asarray(control.image), np.asarray(whole))


def test_outpaint_extends_control_images_like_the_canvas_and_leaves_ip_adapter_images_whole() -> None:
    reference = _reference()
    canny = ImagePrompt("pyracanny", reference, weight=1.0, stop_at=0.5)
    face = ImagePrompt("face", reference, weight=0.8, stop_at=0.9)
    padding = (32, 0, 0, 16)  # left and bottom, as extend_canvas reports them
    area = (0, 40, 200, 208)
    aligned_canny, aligned_face = aligned_control_prompts((canny, face), reference.size, padding, area)
    assert aligned_face is face
    assert aligned_canny.image.size == (200, 168) and aligned_canny.weight == 1.0
    pixels = np.asarray(aligned_canny.image)
    source = np.asarray(reference)
    # Canvas x = source x + 32; canvas y = source y (nothing added on top); the crop starts at y 40.
    assert np.array_equal(pixels[:152, 32:], source[40:192, :168])
    assert np.array_equal(pixels[:152, 0], source[40:192, 0])  # the new left strip repeats the edge
    assert np.array_equal(pixels[152:, 40], np.broadcast_to(source[191, 8], (16, 3)))  # bottom strip


def test_a_control_image_of_another_size_is_fitted_to_the_input_image_first() -> None:
    reference = _reference().resize((128, 96))  # same aspect, half the size
    canny = ImagePrompt("pyracanny", reference, weight=1.0, stop_at=0.5)
    (aligned,) = aligned_control_prompts((canny,), (256, 192), (0, 0, 0, 0), (64, 48, 192, 144))
    assert aligned.image.size == (128, 96)
    expected = fit_to_size(reference, 256, 192).crop((64, 48, 192, 144))
    assert np.array_equal(np.asarray(aligned.image), np.asarray(expected))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_dropped_inpaint_job_renders_with_the_configured_inpainting_model(sandbox: Sandbox) -> None:
    sandbox.write_config(f'inpaint_model = "{FOLDER_MODEL}"\n')
    _save_inpainting_folder(sandbox.root / "models" / "checkpoints" / FOLDER_MODEL, _inpainting_unet())
    source = drawn_scene((128, 96))
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (40, 30, 80, 70))
    sandbox.drop("room.png", _png(source))
    sandbox.drop("room.mask.png", _png(mask))
    sandbox.drop("room.txt", "a vase of flowers\nsteps: 2\n")
    summary = sandbox.drain()
    errors = [p.read_text() for p in sandbox.files(sandbox.failed, "*.error.txt")]
    assert summary.ok and not errors, errors
    (output,) = sandbox.images()
    sidecar = json.loads(output.with_suffix(".json").read_text())
    with Image.open(output) as image:
        pixels = np.asarray(image.convert("RGB"))
    outside = np.asarray(mask) < 128
    assert np.array_equal(pixels[outside], np.asarray(source)[outside])
    assert sidecar["image_action"]["inpaint_model"]["name"] == FOLDER_MODEL


def test_a_job_can_turn_the_configured_inpainting_model_off(sandbox: Sandbox) -> None:
    sandbox.write_config('inpaint_model = "missing_inpainting"\n')
    source = drawn_scene((96, 64))
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (30, 20, 60, 50))
    sandbox.drop("cup.png", _png(source))
    sandbox.drop("cup.mask.png", _png(mask))
    sandbox.drop("cup.toml", 'prompt = "a cup"\ninpaint_model = "none"\nsteps = 2\n')
    summary = sandbox.drain()
    errors = [p.read_text() for p in sandbox.files(sandbox.failed, "*.error.txt")]
    assert summary.ok and not errors, errors
    (output,) = sandbox.images()
    assert json.loads(output.with_suffix(".json").read_text())["image_action"]["inpaint_model"] is None


def test_job_files_name_the_inpainting_model_in_txt_and_toml() -> None:
    from fooocusd.jobs.toml_format import parse_toml
    from fooocusd.jobs.txt_format import parse_txt

    (from_txt,) = parse_txt("a cat\ninpaint model: sdxl-inpainting\n", "cat.txt")
    assert from_txt.inpaint_model == "sdxl-inpainting"
    assert parse_toml('prompt = "a cat"\ninpaint_model = "none"\n', "cat.toml")[0].inpaint_model == "none"
