"""IP-Adapter image prompts on the tiny SDXL, with a tiny random ViT encoder and tiny "plus" adapters.

The adapter files are written in the original IP-Adapter layout (``image_proj.*`` resampler +
``ip_adapter.N.to_k_ip/to_v_ip``), shaped for the tiny UNet, and loaded through diffusers'
``load_ip_adapter`` exactly as the real files are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from fooocusd.engine import ip_adapter
from fooocusd.engine.base import GenerationRequest, ImagePrompt
from fooocusd.engine.denoise import UNetExtras
from fooocusd.engine.ip_adapter.encoder import load_image_encoder
from fooocusd.engine.ip_adapter.face_detect import Face
from fooocusd.engine.ip_adapter.files import ADAPTER_FILES, FACE_DETECTOR_FILE, Located
from fooocusd.engine.ip_adapter.installer import AdapterInstaller
from fooocusd.engine.ip_adapter.provider import IPAdapterRuntime
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.models import SDXL_CONFIG_DIR, file_sha256, resolve_model
from fooocusd.engine.sdxl import SDXLEngine, _default_scheduler
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from fooocusd.errors import InvalidInput
from tests.engine_helpers import default_request

_ENCODER_WIDTH = 32
_RESAMPLER_WIDTH = 32
_QUERIES = 4


def tiny_encoder_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=_ENCODER_WIDTH,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )


def write_tiny_encoder(folder: Path) -> None:
    torch.manual_seed(7)
    CLIPVisionModelWithProjection(tiny_encoder_config()).save_pretrained(folder, safe_serialization=True)


def tiny_plus_adapter(unet: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A random IP-Adapter "plus" state dict (original key layout) that fits ``unet``."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    width, inner = _RESAMPLER_WIDTH, 64  # one head of 64, as diffusers reads heads = to_q rows / 64
    cross = unet.config.cross_attention_dim
    state = {
        "image_proj.latents": rand(1, _QUERIES, width, scale=1.0),
        "image_proj.proj_in.weight": rand(width, _ENCODER_WIDTH),
        "image_proj.proj_in.bias": rand(width),
        "image_proj.proj_out.weight": rand(cross, width),
        "image_proj.proj_out.bias": rand(cross),
        "image_proj.norm_out.weight": 1 + rand(cross),
        "image_proj.norm_out.bias": rand(cross),
    }
    for layer in range(4):
        prefix = f"image_proj.layers.{layer}"
        for norm in ("0.norm1", "0.norm2", "1.0"):
            state[f"{prefix}.{norm}.weight"] = 1 + rand(width)
            state[f"{prefix}.{norm}.bias"] = rand(width)
        state[f"{prefix}.0.to_q.weight"] = rand(inner, width)
        state[f"{prefix}.0.to_kv.weight"] = rand(2 * inner, width)
        state[f"{prefix}.0.to_out.weight"] = rand(width, inner)
        state[f"{prefix}.1.1.weight"] = rand(4 * width, width)
        state[f"{prefix}.1.3.weight"] = rand(width, 4 * width)
    channels = unet.config.block_out_channels
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        state[f"ip_adapter.{key_id}.to_k_ip.weight"] = rand(hidden, cross, scale=0.5)
        state[f"ip_adapter.{key_id}.to_v_ip.weight"] = rand(hidden, cross, scale=0.5)
        key_id += 2
    return state


def reference_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


class FixedFaceDetector:
    """Stands in for YuNet (whose model file cannot be fetched here): one face with known landmarks."""

    def detect(self, image: Image.Image) -> list[Face]:
        landmarks = np.array([[14.0, 16.0], [30.0, 16.0], [22.0, 24.0], [16.0, 31.0], [28.0, 31.0]])
        return [Face(box=(8.0, 6.0, 28.0, 30.0), landmarks=landmarks, score=0.93)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ip-models") / "models"
    dirs = ModelDirs.of(root)
    unet = build_tiny_sdxl_pipeline(_default_scheduler(SDXL_CONFIG_DIR)).unet
    adapters = dirs.folders("ipadapter")[0]
    adapters.mkdir(parents=True)
    save_file(tiny_plus_adapter(unet, seed=1), str(adapters / ADAPTER_FILES["image_prompt"]))
    save_file(tiny_plus_adapter(unet, seed=2), str(adapters / ADAPTER_FILES["face"]))
    write_tiny_encoder(dirs.folders("clip_vision")[0] / "clip-vit-h-14")
    return root


@pytest.fixture(scope="module")
def engine(models: Path) -> Iterator[SDXLEngine]:
    built = SDXLEngine(
        resolve_model("tiny-random", models),
        models_dir=models,
        hash_cache=models.parent / "hashes.json",
        device="cpu",
    )
    built.load()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ip_adapter, "unet_extras", _unet_extras_for(ModelDirs.of(models)))
        yield built


def _unet_extras_for(model_dirs: ModelDirs) -> Callable[..., list[UNetExtras]]:
    """``ip_adapter.unet_extras`` as the engine calls it, with this test's models and face detector."""

    def unet_extras(
        pipeline: Any,
        request: GenerationRequest,
        conditioning: Any,
        device: torch.device,
        dtype: torch.dtype,
        **_: Any,
    ) -> list[UNetExtras]:
        return ip_adapter.runtime().extras(
            pipeline, request, device=device, dtype=dtype, model_dirs=model_dirs, detector=FixedFaceDetector()
        )

    return unet_extras


def _request(*prompts: ImagePrompt, **overrides: object) -> GenerationRequest:
    return replace(default_request(steps=3, width=512, height=512, **overrides), image_prompts=prompts)


def _pixels(engine: SDXLEngine, *prompts: ImagePrompt) -> np.ndarray:
    return np.asarray(engine.generate(_request(*prompts)).image).astype(np.int16)


def _prompt(seed: int, weight: float, stop_at: float = 1.0, kind: str = "image_prompt") -> ImagePrompt:
    return ImagePrompt(kind, reference_image(seed), weight, stop_at, source=f"ref{seed}.png")


def test_an_image_prompt_changes_the_image_and_a_plain_job_afterwards_is_unchanged(
    engine: SDXLEngine,
) -> None:
    plain = _pixels(engine)
    prompted = _pixels(engine, _prompt(1, 1.0))
    assert np.abs(prompted - plain).mean() > 1.0
    assert np.array_equal(_pixels(engine), plain)  # the plain UNet is back, bit for bit
    assert np.array_equal(_pixels(engine, _prompt(1, 1.0)), prompted)  # and the cached adapter is reused


def test_weight_zero_and_stop_at_zero_equal_no_image_prompt(engine: SDXLEngine) -> None:
    plain = _pixels(engine)
    assert np.array_equal(_pixels(engine, _prompt(1, 0.0)), plain)
    assert np.array_equal(_pixels(engine, _prompt(1, 0.8, stop_at=0.0)), plain)


def test_stop_at_ends_the_image_prompt_part_way(engine: SDXLEngine) -> None:
    plain, full = _pixels(engine), _pixels(engine, _prompt(1, 1.0, stop_at=1.0))
    early = _pixels(engine, _prompt(1, 1.0, stop_at=0.3))
    assert not np.array_equal(early, full)
    assert not np.array_equal(early, plain)


def test_each_image_of_one_kind_gets_its_own_weight(engine: SDXLEngine) -> None:
    one = _pixels(engine, _prompt(1, 0.8))
    halves = _pixels(engine, _prompt(1, 0.4), _prompt(1, 0.4))  # same image twice: 0.4 + 0.4 = 0.8
    assert np.abs(halves - one).max() <= 1
    mixed = _pixels(engine, _prompt(1, 0.9), _prompt(2, 0.2))
    swapped = _pixels(engine, _prompt(1, 0.2), _prompt(2, 0.9))
    assert np.abs(mixed - swapped).mean() > 0.5


def test_up_to_four_mixed_image_and_face_prompts_render(engine: SDXLEngine, models: Path) -> None:
    prompts = (
        _prompt(1, 0.6),
        _prompt(2, 0.3, 0.5),
        _prompt(3, 0.75, 0.9, "face"),
        _prompt(4, 1.2, kind="face"),
    )
    result = engine.generate(_request(*prompts))
    faces_only = _pixels(engine, *prompts[2:])
    assert not np.array_equal(np.asarray(result.image).astype(np.int16), faces_only)
    records = ip_adapter.image_prompt_records(
        _request(*prompts), model_dirs=ModelDirs.of(models), hash_cache=models.parent / "hashes.json"
    )
    assert [(r["type"], r["source"], r["weight"], r["stop_at"]) for r in records] == [
        ("image_prompt", "ref1.png", 0.6, 1.0),
        ("image_prompt", "ref2.png", 0.3, 0.5),
        ("face", "ref3.png", 0.75, 0.9),
        ("face", "ref4.png", 1.2, 1.0),
    ]
    face_file = ModelDirs.of(models).folders("ipadapter")[0] / ADAPTER_FILES["face"]
    assert records[2]["adapter"] == ADAPTER_FILES["face"]
    assert records[2]["adapter_sha256"] == file_sha256(face_file, models.parent / "hashes.json")
    assert records[2]["face_score"] == pytest.approx(0.93)
    assert records[0]["encoder"] == "clip-vit-h-14" and len(records[0]["encoder_sha256"]) == 64


def test_scale_zero_runs_the_unet_exactly_as_without_adapters(models: Path) -> None:
    """After stop_at every scale is 0: the installed adapter must then leave the UNet's output untouched."""
    pipeline = build_tiny_sdxl_pipeline(_default_scheduler(SDXL_CONFIG_DIR))
    unet = pipeline.unet
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    tokens = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    added = {"text_embeds": torch.randn(2, 64, generator=generator), "time_ids": torch.full((2, 6), 64.0)}
    with_image = {**added, "image_embeds": [torch.randn(2, 1, 17, _ENCODER_WIDTH, generator=generator)]}
    installer = AdapterInstaller()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only wait on each other
    with torch.inference_mode():
        bare = unet(latents, 500, encoder_hidden_states=tokens, added_cond_kwargs=added).sample
        processors = installer.install(pipeline, (_adapter_path(models),))
        outputs = {}
        for scale in (0.0, 1.0):
            for processor in processors:
                processor.scale = [scale]
            outputs[scale] = unet(
                latents, 500, encoder_hidden_states=tokens, added_cond_kwargs=with_image
            ).sample
        installer.restore(pipeline)
        again = unet(latents, 500, encoder_hidden_states=tokens, added_cond_kwargs=added).sample
    torch.set_num_threads(threads)
    assert torch.equal(outputs[0.0], bare)
    assert not torch.allclose(outputs[1.0], bare)
    assert torch.equal(again, bare)


def _adapter_path(models: Path) -> Path:
    return ModelDirs.of(models).folders("ipadapter")[0] / ADAPTER_FILES["image_prompt"]


def _refusal(model_dirs: ModelDirs, prompt: ImagePrompt) -> str:
    """The explanation of the ``InvalidInput`` raised when ``prompt`` needs files ``model_dirs`` lacks."""
    with pytest.raises(InvalidInput) as caught:
        IPAdapterRuntime().extras(
            object(), _request(prompt), device=torch.device("cpu"), dtype=torch.float32, model_dirs=model_dirs
        )
    return caught.value.explain()


def test_a_missing_adapter_file_names_the_file_and_the_folder(tmp_path: Path) -> None:
    empty = ModelDirs.of(tmp_path / "models")
    text = _refusal(empty, _prompt(1, 0.6))
    assert ADAPTER_FILES["image_prompt"] in text
    assert str(empty.folders("ipadapter")[0]) in text
    assert "h94/IP-Adapter" in text
    assert "fooocusd models fetch ip-adapter-plus_sdxl_vit-h" in text


def test_a_pickled_adapter_is_named_and_refused(tmp_path: Path) -> None:
    dirs = ModelDirs.of(tmp_path / "models")
    folder = dirs.folders("ipadapter")[0]
    folder.mkdir(parents=True)
    (folder / "ip-adapter-plus-face_sdxl_vit-h.bin").write_bytes(b"pickle")
    text = _refusal(dirs, _prompt(1, 0.6, kind="face"))
    assert "ip-adapter-plus-face_sdxl_vit-h.bin is there, but pickled .bin files are not loaded" in text
    assert ADAPTER_FILES["face"] in text


def test_a_missing_image_encoder_names_the_clip_vision_folder(tmp_path: Path, models: Path) -> None:
    dirs = ModelDirs.of(tmp_path / "models")
    folder = dirs.folders("ipadapter")[0]
    folder.mkdir(parents=True)
    (folder / ADAPTER_FILES["image_prompt"]).write_bytes(_adapter_path(models).read_bytes())
    text = _refusal(dirs, _prompt(1, 0.6))
    assert "ViT-H/14" in text and str(dirs.folders("clip_vision")[0]) in text
    assert "clip_vision_vit_h.safetensors" in text
    assert "fooocusd models fetch clip_vision_vit_h" in text


def test_a_face_prompt_without_the_detector_model_says_where_to_get_it(models: Path) -> None:
    dirs = ModelDirs.of(models)
    text = _refusal(dirs, _prompt(1, 0.75, kind="face"))
    assert FACE_DETECTOR_FILE in text and "opencv_zoo" in text
    assert str(dirs.folders("face_detection")[0]) in text


def test_a_single_file_encoder_loads_with_a_shipped_style_config(models: Path, tmp_path: Path) -> None:
    folder = ModelDirs.of(models).folders("clip_vision")[0] / "clip-vit-h-14"
    single = tmp_path / "clip_vision_vit_h.safetensors"
    single.write_bytes((folder / "model.safetensors").read_bytes())
    cpu = torch.device("cpu")
    from_folder = load_image_encoder(Located("clip-vit-h-14", folder), device=cpu, dtype=torch.float32)
    from_file = load_image_encoder(
        Located(single.name, single), device=cpu, dtype=torch.float32, config_dir=folder
    )
    image = reference_image(5)
    with torch.inference_mode():
        assert torch.equal(from_folder.embed(image), from_file.embed(image))
        assert from_file.embed(image).shape == (1, 17, _ENCODER_WIDTH)  # penultimate states: 16 patches + CLS


def test_a_file_that_is_not_a_clip_vision_model_is_refused_with_the_reason(tmp_path: Path) -> None:
    bogus = tmp_path / "clip_vision_vit_h.safetensors"
    save_file({"visual.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(2, 2)}, str(bogus))
    with pytest.raises(InvalidInput, match="transformers layout"):
        load_image_encoder(Located(bogus.name, bogus), device=torch.device("cpu"), dtype=torch.float32)
