"""ControlNet image prompts in the engine, with a tiny random ControlNet built from tiny-random's UNet."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetUnionModel
from PIL import Image, ImageDraw

from fooocusd.engine.base import GeneratedImage, ImagePrompt
from fooocusd.engine.controlnet.apply import active_calls, softness_factors
from fooocusd.engine.controlnet.models import ControlNetConfig, ControlNetModels
from fooocusd.engine.image_prompts import CONTROL_IMAGES_KEY, ControlImage
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.models import resolve_model
from fooocusd.engine.sdxl import SDXLEngine
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from fooocusd.errors import InvalidInput
from tests.daemon_harness import Sandbox
from tests.engine_helpers import default_request, save_tiny_canny_controlnet

STEPS = 4


def _reference_image() -> Image.Image:
    image = Image.new("RGB", (96, 96), (30, 30, 30))
    ImageDraw.Draw(image).rectangle((24, 24, 71, 71), fill=(230, 230, 230))
    return image


def _save_tiny_control_nets(models: Path) -> None:
    from diffusers import EulerDiscreteScheduler

    save_tiny_canny_controlnet(models)
    unet = build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).unet
    torch.manual_seed(8)
    # from_unet keeps the union transformer at SDXL's width (320); the tiny UNet's first block is 32 wide.
    union = ControlNetUnionModel.from_config(
        ControlNetUnionModel.from_unet(unet).config,
        num_trans_channel=32,
        num_proj_channel=32,
        num_trans_head=2,
    )
    with torch.no_grad():
        for block in [*union.controlnet_down_blocks, union.controlnet_mid_block]:
            block.weight.normal_(0.0, 0.5)
    union.save_pretrained(models / "controlnet" / "tiny-union")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> SDXLEngine:
    models = tmp_path_factory.mktemp("models")
    _save_tiny_control_nets(models)
    built = SDXLEngine(
        resolve_model("tiny-random", models),
        models_dir=models,
        hash_cache=models / "hashes.json",
        device="cpu",
        controlnet=ControlNetConfig(canny="tiny-canny", cpds="tiny-union", depth=""),
    )
    built.load()
    return built


def _render(engine: SDXLEngine, *prompts: ImagePrompt) -> GeneratedImage:
    return engine.generate(default_request(steps=STEPS, sampler="euler", image_prompts=tuple(prompts)))


def _pixels(generated: GeneratedImage) -> np.ndarray:
    return np.asarray(generated.image, dtype=np.int16)


def _canny(weight: float = 1.0, stop_at: float = 1.0) -> ImagePrompt:
    return ImagePrompt("pyracanny", _reference_image(), weight, stop_at, source="ref.png")


def test_weight_zero_renders_exactly_as_without_control(engine: SDXLEngine) -> None:
    plain = _render(engine)
    controlled = _render(engine, _canny(weight=0.0))
    assert np.array_equal(_pixels(plain), _pixels(controlled))


def test_stop_at_zero_renders_exactly_as_without_control(engine: SDXLEngine) -> None:
    plain = _render(engine)
    controlled = _render(engine, _canny(weight=1.0, stop_at=0.0))
    assert np.array_equal(_pixels(plain), _pixels(controlled))


def test_control_changes_the_image_and_the_sidecar_names_the_model(engine: SDXLEngine) -> None:
    plain = _render(engine)
    controlled = _render(engine, _canny())
    assert np.abs(_pixels(plain) - _pixels(controlled)).max() > 0
    (record,) = controlled.extra["image_prompts"]
    assert record["type"] == "pyracanny" and record["source"] == "ref.png"
    assert record["weight"] == 1.0 and record["stop_at"] == 1.0
    assert record["control_model"] == "tiny-canny" and len(record["control_model_sha256"]) == 64
    (control,) = controlled.extra[CONTROL_IMAGES_KEY]
    assert isinstance(control, ControlImage) and control.slot == 1 and control.kind == "pyracanny"
    assert control.image.size == (controlled.width, controlled.height)


def test_stopping_half_way_differs_from_both_full_control_and_none(engine: SDXLEngine) -> None:
    plain, full, half = _render(engine), _render(engine, _canny()), _render(engine, _canny(stop_at=0.5))
    assert not np.array_equal(_pixels(half), _pixels(plain))
    assert not np.array_equal(_pixels(half), _pixels(full))


def test_two_controls_at_once_run_and_both_are_recorded(engine: SDXLEngine) -> None:
    cpds_prompt = ImagePrompt("cpds", _reference_image(), 0.8, 1.0, source="other.png")
    both = _render(engine, _canny(), cpds_prompt)
    one = _render(engine, _canny())
    assert not np.array_equal(_pixels(both), _pixels(one))
    assert [entry["control_model"] for entry in both.extra["image_prompts"]] == ["tiny-canny", "tiny-union"]
    assert [image.kind for image in both.extra[CONTROL_IMAGES_KEY]] == ["pyracanny", "cpds"]


def test_a_type_without_a_configured_model_is_refused_with_the_setting_to_change(engine: SDXLEngine) -> None:
    depth = ImagePrompt("depth", _reference_image(), 1.0, 0.5, source="d.png")
    with pytest.raises(InvalidInput) as caught:
        _render(engine, depth)
    assert caught.value.where == "controlnet.depth"
    assert "controlnet-depth-sdxl-1.0" in caught.value.hint


def test_missing_control_net_names_the_file_and_the_folder(tmp_path: Path) -> None:
    models = ControlNetModels(ModelDirs.of(tmp_path), tmp_path / "h.json", ControlNetConfig(canny="nope"))
    with pytest.raises(InvalidInput) as caught:
        models.control_net("pyracanny", device=torch.device("cpu"), dtype=torch.float32)
    assert "'nope'" in caught.value.message
    assert str(tmp_path / "controlnet") in caught.value.where
    assert "models fetch" not in caught.value.hint  # not a file the catalogue has


def test_a_missing_catalogue_control_net_says_which_fetch_command_gets_it(tmp_path: Path) -> None:
    models = ControlNetModels(ModelDirs.of(tmp_path), tmp_path / "h.json", ControlNetConfig())
    with pytest.raises(InvalidInput) as caught:
        models.control_net("depth", device=torch.device("cpu"), dtype=torch.float32)
    assert "fooocusd models fetch controlnet-depth-sdxl-1.0" in caught.value.hint


def test_control_lora_files_are_refused_with_a_hint(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    (tmp_path / "controlnet").mkdir()
    file = tmp_path / "controlnet" / "control-lora-canny.safetensors"
    save_file({"lora_controlnet": torch.zeros(1)}, str(file))
    config = ControlNetConfig(canny="control-lora-canny")
    models = ControlNetModels(ModelDirs.of(tmp_path), tmp_path / "h.json", config)
    with pytest.raises(InvalidInput, match="Control-LoRA"):
        models.control_net("pyracanny", device=torch.device("cpu"), dtype=torch.float32)


def test_missing_depth_estimator_names_the_folder_and_a_model_to_get(tmp_path: Path) -> None:
    models = ControlNetModels(ModelDirs.of(tmp_path), tmp_path / "h.json", ControlNetConfig())
    with pytest.raises(InvalidInput) as caught:
        models.depth_estimator(device=torch.device("cpu"), dtype=torch.float32)
    assert str(tmp_path / "depth_estimator") in caught.value.where
    assert "Depth-Anything-V2-Small-hf" in caught.value.hint
    assert "fooocusd models fetch Depth-Anything-V2-Small-hf" in caught.value.hint


def test_softness_damps_the_shallowest_residual_most_and_leaves_the_tenth_alone() -> None:
    factors = softness_factors(10, 0.25)
    assert factors[0] == pytest.approx(0.75) and factors[9] == pytest.approx(1.0)
    assert factors == sorted(factors)


def test_stop_at_is_measured_on_the_noise_level_of_each_call() -> None:
    timesteps = [999.0, 749.0, 499.0, 249.0]
    assert active_calls(timesteps, 0.0) == [False] * 4
    assert active_calls(timesteps, 0.5) == [True, True, False, False]
    assert active_calls(timesteps, 1.0) == [True] * 4


def test_the_engine_reuses_a_loaded_control_net(engine: SDXLEngine) -> None:
    loads = engine._image_prompts.models.loads
    _render(engine, replace(_canny(), weight=0.5))
    assert engine._image_prompts.models.loads == loads


def _drop_a_pyracanny_job(sandbox: Sandbox, config: str = "", job: str = "") -> None:
    """``sketch.txt`` with its reference ``sketch.png``, saving its map, on the tiny canny model."""
    import io

    _save_tiny_control_nets(sandbox.root / "models")
    sandbox.write_config(f'[controlnet]\ncanny = "tiny-canny"\n\n{config}')
    buffer = io.BytesIO()
    _reference_image().save(buffer, format="PNG")
    sandbox.drop("sketch.png", buffer.getvalue())
    lines = "a house\nimage prompt: sketch.png pyracanny\nsteps: 2\nsave control images: yes\n"
    sandbox.drop("sketch.txt", lines + job)


def test_a_pyracanny_job_through_the_daemon_records_the_prompt_and_saves_its_map(sandbox: Sandbox) -> None:
    import json

    _drop_a_pyracanny_job(sandbox)
    summary = sandbox.drain()
    errors = [path.read_text() for path in sandbox.files(sandbox.failed, "*.error.txt")]
    assert summary.ok and not errors, errors

    (sidecar_path,) = sandbox.sidecars()
    sidecar = json.loads(sidecar_path.read_text())
    (entry,) = sidecar["image_prompts"]
    assert entry["type"] == "pyracanny" and entry["source"] == "sketch.png"
    assert (entry["weight"], entry["stop_at"]) == (1.0, 0.5)  # Fooocus's PyraCanny defaults
    assert entry["control_model"] == "tiny-canny" and entry["control_model_hash"]
    assert "image_action" not in sidecar  # the image beside the job was a reference, not an input
    control = sidecar_path.with_name(f"{sidecar_path.stem}.control-1-pyracanny.png")
    assert sidecar["control_images"] == [control.name]
    with Image.open(control) as saved:
        assert saved.size == (sidecar["width"], sidecar["height"])


def test_a_control_map_that_cannot_be_written_fails_its_job_and_the_daemon_carries_on(
    sandbox: Sandbox,
) -> None:
    _drop_a_pyracanny_job(sandbox, config="[journal]\nmax_attempts = 1\n", job="seed: 5\n")
    sandbox.drop("fox.txt", "a fox\nsteps: 2\n")
    # Where the map would go stands a folder: its write fails whatever the disk has room for.
    (sandbox.outbox / "sketch_5_0.control-1-pyracanny.png").mkdir(parents=True)

    summary = sandbox.drain()

    assert (summary.jobs_done, summary.jobs_failed) == (1, 1)
    report = (sandbox.failed / "sketch.txt.error.txt").read_text(encoding="utf-8")
    assert "could not write" in report and "sketch_5_0.control-1-pyracanny.png" in report
    assert (sandbox.done / "fox.txt").exists()
