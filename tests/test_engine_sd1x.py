"""SD 1.5 / SD 2.1 rendering, the family router, and an SD 1.5 job end to end (tiny single files)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import save_file

from fooocusd.engine import sd1x
from fooocusd.engine.base import GenerationRequest, ImagePrompt, ImageTask
from fooocusd.engine.factory import create_engine
from fooocusd.engine.families import detect_family
from fooocusd.engine.models import resolve_model
from fooocusd.engine.router import FamilyRouter
from fooocusd.engine.samplers import build_scheduler
from fooocusd.engine.sd1x import SD1xEngine, native_size
from fooocusd.errors import InvalidInput
from fooocusd.settings import EngineSettings
from tests.daemon_harness import Sandbox
from tests.engine_helpers import default_request, write_tiny_sd1x_checkpoint


@dataclass(frozen=True)
class TinyModels:
    root: Path
    cache: Path
    sd15: Path
    sd21: Path
    configs: dict[str, Path]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyModels]:
    root = tmp_path_factory.mktemp("sd1x")
    checkpoints = root / "models" / "checkpoints"
    sd15, sd15_config = write_tiny_sd1x_checkpoint("sd15", checkpoints, "tiny_sd15.safetensors")
    sd21, sd21_config = write_tiny_sd1x_checkpoint("sd21", checkpoints, "tiny_sd21_768.safetensors")
    configs = {"sd15": sd15_config, "sd2": sd21_config}
    threads = torch.get_num_threads()
    # Tensors this small only make torch's worker threads wait on each other on a busy CPU.
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        # The tiny checkpoints load through their shrunk copies of the shipped configs.
        for family, folder in configs.items():
            patch.setitem(sd1x.SD1X_CONFIG_DIRS, family, folder)
        yield TinyModels(root / "models", root / "cache", sd15, sd21, configs)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def router(tiny: TinyModels) -> FamilyRouter:
    built = create_engine(EngineSettings(model="tiny-random", device="cpu"), tiny.root, tiny.cache)
    assert isinstance(built, FamilyRouter)
    return built


def _request(**overrides: object) -> GenerationRequest:
    """128×128 asked for: 64×64 at SD 1.5's native area."""
    return default_request(**{"width": 128, "height": 128, "steps": 3, **overrides})


def _sd15_engine(tiny: TinyModels) -> SD1xEngine:
    location = resolve_model(str(tiny.sd15), tiny.root)
    return SD1xEngine(
        location,
        detect_family(tiny.sd15),
        model_dirs=sd1x.ModelDirs.of(tiny.root),
        hash_cache=tiny.cache / "hashes.json",
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def test_sdxl_sizes_map_to_the_family_native_area_in_multiples_of_64() -> None:
    assert native_size(1152, 896, 512) == (576, 448)
    assert native_size(1024, 1024, 512) == (512, 512)
    assert native_size(1152, 896, 768) == (896, 704)
    assert native_size(1344, 768, 768) == (1024, 576)


def test_sd15_render_with_refinements_off_equals_the_diffusers_pipeline(tiny: TinyModels) -> None:
    request = _request(
        prompt="a red fox in snow", negative="blurry", sharpness=0.0, adaptive_cfg=30.0, cfg=5.0,
        clip_skip=1, sampler="euler", scheduler="normal",
    )  # fmt: skip
    ours = _sd15_engine(tiny).render_latents(request).latents

    reference = StableDiffusionPipeline.from_single_file(
        str(tiny.sd15), config=str(tiny.configs["sd15"]), local_files_only=True, safety_checker=None
    )
    reference.set_progress_bar_config(disable=True)
    reference.scheduler = build_scheduler("euler", "normal", dict(reference.scheduler.config)).scheduler
    expected = reference(
        "a red fox in snow",
        negative_prompt="blurry",
        num_inference_steps=3,
        guidance_scale=5.0,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="latent",
    ).images
    assert ours.shape == expected.shape == (1, 4, 8, 8)
    assert (ours - expected).abs().max().item() < 1e-4


def test_sd15_renders_deterministically_at_its_native_size_and_records_the_family(
    router: FamilyRouter, tiny: TinyModels
) -> None:
    request = _request(model=tiny.sd15.stem, width=256, height=128)
    first, second = router.generate(request), router.generate(request)
    assert first.image.size == (128, 64)  # 256×128 at (512 / 1024)² the area
    assert first.image.tobytes() == second.image.tobytes()
    assert first.extra["model_family"] == "sd15" and first.extra["prediction_type"] == "epsilon"
    assert first.extra["adm_applied"] is False and first.extra["sharpness_applied"] is True
    assert first.model_name == "tiny_sd15" and len(first.model_sha256) == 64


def test_sd21_768_renders_with_v_prediction(router: FamilyRouter, tiny: TinyModels) -> None:
    request = _request(model=tiny.sd21.name, width=256, height=256, clip_skip=2)
    result, again = router.generate(request), router.generate(request)
    assert result.extra["model_family"] == "sd2" and result.extra["prediction_type"] == "v_prediction"
    assert result.image.size == (192, 192)  # 256² asked for, at (768 / 1024)²
    assert result.image.tobytes() == again.image.tobytes()
    assert router.describe()["model_family"] == "sd2"


def test_sd2_has_no_clip_skip_1_because_its_last_layer_is_not_shipped(
    router: FamilyRouter, tiny: TinyModels
) -> None:
    with pytest.raises(InvalidInput) as caught:
        router.generate(_request(model=tiny.sd21.name, clip_skip=1))
    assert caught.value.where == "clip_skip" and "2 is SD 2.x's standard" in (caught.value.hint or "")


def test_router_switches_sdxl_then_sd15_then_sdxl_with_one_model_resident(
    router: FamilyRouter, tiny: TinyModels
) -> None:
    sdxl_first = router.generate(_request())
    assert router.active_family == "sdxl" and router.describe()["model_family"] == "sdxl"

    sd15 = router.generate(_request(model=tiny.sd15.stem))
    assert router.active_family == "sd15" and sd15.extra["model_family"] == "sd15"
    assert router.describe()["loaded"] is True
    assert router._pipeline is None  # the SDXL pipeline was dropped before SD 1.5 loaded

    sdxl_again = router.generate(_request())
    assert router.active_family == "sdxl" and sdxl_again.extra["model_family"] == "sdxl"
    assert sdxl_again.image.tobytes() == sdxl_first.image.tobytes()


def test_unloading_the_router_drops_an_sd15_model_too_and_load_brings_back_the_configured_one(
    router: FamilyRouter, tiny: TinyModels
) -> None:
    router.generate(_request(model=tiny.sd15.stem))
    assert router.active_family == "sd15"

    router.unload()  # as a pause does
    assert router.describe()["loaded"] is False and router.active_family == "sdxl"

    router.load()
    assert router.describe()["loaded"] is True and router.describe()["model_family"] == "sdxl"


@pytest.mark.parametrize(
    ("overrides", "where", "words"),
    [
        ({"refiner": "tiny-random-refiner", "refiner_switch": 0.5}, "refiner", "refiner"),
        (
            {"image_prompts": (ImagePrompt("pyracanny", Image.new("RGB", (64, 64)), 1.0, 0.5),)},
            "image_prompts",
            "pyracanny",
        ),
    ],
)
def test_features_sd15_cannot_do_fail_the_job_with_the_reason(
    router: FamilyRouter, tiny: TinyModels, overrides: dict[str, object], where: str, words: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        router.generate(_request(model=tiny.sd15.stem, **overrides))
    assert caught.value.where == where
    assert words in caught.value.message and "SD 1.5" in caught.value.message
    assert "SDXL model" in (caught.value.hint or "")


def test_sd15_varies_an_image_at_the_size_asked_for(router: FamilyRouter, tiny: TinyModels) -> None:
    source = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    task = ImageTask(kind="vary", image=source, strength=0.5)
    result = router.generate(_request(model=tiny.sd15.stem, width=96, height=64, image_task=task))
    assert result.image.size == (96, 64)
    assert result.extra["model_family"] == "sd15"


def test_a_missing_job_model_fails_the_job_and_names_it(router: FamilyRouter) -> None:
    with pytest.raises(InvalidInput) as caught:
        router.generate(_request(model="no_such_sd15_model"))
    assert "no_such_sd15_model" in caught.value.message


def test_sd15_job_end_to_end_writes_an_image_whose_sidecar_names_the_family(
    sandbox: Sandbox, tiny: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = sandbox.root / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / tiny.sd15.name).write_bytes(tiny.sd15.read_bytes())
    sandbox.drop("fox.txt", f"a red fox\nmodel: {tiny.sd15.stem}\nseed: 3\nsteps: 2\naspect: 256*256\n")
    assert sandbox.drain().ok
    [image] = sandbox.images()
    sidecar = json.loads(image.with_suffix(".json").read_text())
    assert sidecar["model"] == tiny.sd15.stem and sidecar["model_family"] == "sd15"
    assert Image.open(image).size == (128, 128)
    assert (sandbox.done / "fox.txt").exists()


def test_sd15_lora_changes_the_render_and_turning_it_off_restores_it(
    router: FamilyRouter, tiny: TinyModels
) -> None:
    request = _request(model=tiny.sd15.stem, steps=2)
    plain = router.generate(request)
    unet = StableDiffusionPipeline.from_single_file(
        str(tiny.sd15), config=str(tiny.configs["sd15"]), local_files_only=True, safety_checker=None
    ).unet
    generator = torch.Generator().manual_seed(1)
    lora: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_k"):  # a diffusers-layout LoRA on the cross-attention keys
            lora[f"unet.{name}.lora_A.weight"] = torch.randn(4, module.in_features, generator=generator)
            lora[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, 4, generator=generator)
    (tiny.root / "loras").mkdir(exist_ok=True)
    save_file(lora, str(tiny.root / "loras" / "tiny_sd15_lora.safetensors"))

    with_lora = router.generate(replace(request, loras=(("tiny_sd15_lora", 0.8),)))
    assert with_lora.image.tobytes() != plain.image.tobytes()
    assert [entry["name"] for entry in with_lora.extra["loras"]] == ["tiny_sd15_lora"]
    assert router.generate(request).image.tobytes() == plain.image.tobytes()


def test_sd15_encodes_a_repeated_negative_once_and_the_image_stays_the_same(tiny: TinyModels) -> None:
    engine = _sd15_engine(tiny)
    first = engine.render_latents(_request(prompt="a red fox in snow", negative="blurry")).latents
    runs: list[int] = []
    assert engine._pipeline is not None
    hook = engine._pipeline.text_encoder.register_forward_hook(lambda *_: runs.append(1))
    try:
        engine.render_latents(_request(prompt="an old tram", negative="blurry"))
        assert len(runs) == 1  # the new prompt only
        again = engine.render_latents(_request(prompt="a red fox in snow", negative="blurry")).latents
    finally:
        hook.remove()
    assert len(runs) == 1
    assert torch.equal(again, first)
