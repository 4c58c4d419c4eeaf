"""VAE override: a VAE file from the vae folder decodes instead of the model's own, cached."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fooocusd.engine.factory import create_engine
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.sdxl import SDXLEngine
from fooocusd.errors import InvalidInput
from fooocusd.settings import EngineSettings
from tests.engine_helpers import _vae_to_sgm, default_request


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> SDXLEngine:
    root = tmp_path_factory.mktemp("vae") / "models"
    built = create_engine(EngineSettings(model="tiny-random", device="cpu"), root, root.parent / "cache")
    assert isinstance(built, SDXLEngine)
    built.load()
    assert built._pipeline is not None
    folder = ModelDirs.of(root).folders("vae")[0]
    folder.mkdir(parents=True)
    changed = {key: value.clone() for key, value in built._pipeline.vae.state_dict().items()}
    changed["decoder.conv_out.bias"] += 0.5  # a visibly different decoder
    save_file(changed, str(folder / "warm_diffusers.safetensors"))
    ldm = _vae_to_sgm(types.SimpleNamespace(vae=_with_state(built, changed)))  # type: ignore[arg-type]
    save_file(
        {f"first_stage_model.{k}": v.contiguous() for k, v in ldm.items()}, str(folder / "warm.safetensors")
    )
    save_file({"decoder.conv_out.bias": torch.zeros(7)}, str(folder / "wrong.safetensors"))
    return built


def _with_state(engine: SDXLEngine, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    assert engine._pipeline is not None
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_config(engine._pipeline.vae.config)
    vae.load_state_dict(state)
    return vae


def _pixels(engine: SDXLEngine, **overrides: object) -> np.ndarray:
    return np.asarray(engine.generate(default_request(steps=2, **overrides)).image)


def test_vae_override_changes_the_decode_and_default_puts_the_own_vae_back(engine: SDXLEngine) -> None:
    plain = _pixels(engine)
    warm = engine.generate(default_request(steps=2, vae="warm"))
    assert not np.array_equal(plain, np.asarray(warm.image))
    assert warm.extra["vae"] == "warm" and len(warm.extra["vae_sha256"]) == 64
    assert np.array_equal(plain, _pixels(engine, vae="default"))
    assert np.array_equal(plain, _pixels(engine))


def test_single_file_and_diffusers_layouts_decode_alike_and_the_override_is_cached(
    engine: SDXLEngine,
) -> None:
    ldm = _pixels(engine, vae="warm")
    loads = engine._components.vaes.loads
    assert np.array_equal(ldm, _pixels(engine, vae="warm.safetensors"))
    assert engine._components.vaes.loads == loads
    assert np.array_equal(ldm, _pixels(engine, vae="warm_diffusers"))


def test_missing_or_mismatched_vae_is_refused_with_a_hint(engine: SDXLEngine) -> None:
    with pytest.raises(InvalidInput) as missing:
        engine.generate(default_request(steps=1, vae="no_such_vae"))
    assert "no_such_vae" in missing.value.message and "no_such_vae.safetensors" in missing.value.hint
    assert "models fetch" not in missing.value.hint  # not in the catalogue: nothing to fetch
    with pytest.raises(InvalidInput) as catalogued:
        engine.generate(default_request(steps=1, vae="ponyDiffusionV6XL_vae"))
    assert "or run fooocusd models fetch ponyDiffusionV6XL_vae;" in catalogued.value.hint
    with pytest.raises(InvalidInput, match="do not fit"):
        engine.generate(default_request(steps=1, vae="wrong"))
    assert "vae" in missing.value.where


def test_a_deferred_decode_keeps_its_own_vae_when_the_next_job_picks_another(
    engine: SDXLEngine, tmp_path: Path
) -> None:
    settings = EngineSettings(model="tiny-random", device="cpu", overlap_decode="on")
    overlapping = create_engine(settings, engine._models_dir, tmp_path / "cache")
    overlapping.load()
    own_vae = np.asarray(overlapping.generate(default_request(steps=2)).finished())

    pending = overlapping.generate_batch([default_request(steps=2)], defer_decode=True)[0]  # type: ignore[attr-defined]
    overlapping.generate_batch([default_request(steps=2, seed=9, vae="warm")], defer_decode=True)  # type: ignore[attr-defined]

    assert np.array_equal(np.asarray(pending.finished()), own_vae)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("channels", [3, 1])
def test_decoded_pixels_become_the_bytes_diffusers_postprocess_gives(
    dtype: torch.dtype, channels: int
) -> None:
    from diffusers.image_processor import VaeImageProcessor

    from fooocusd.engine.decode import pixels_to_image

    processor = VaeImageProcessor(vae_scale_factor=8)
    pixels = torch.randn(1, channels, 48, 40, generator=torch.Generator().manual_seed(3)) * 0.8
    # out of range, the ends, and values that land half-way between two 8-bit levels
    edge = torch.tensor([-1.5, -1.0, 1.0, 1.5, 0.0, 1 / 255 - 1, 2 * 0.5 / 255 - 1, 2 * 2.5 / 255 - 1])
    pixels[0, 0, 0, : len(edge)] = edge
    pixels = pixels.to(dtype)
    expected = processor.postprocess(pixels, output_type="pil")[0]
    image = pixels_to_image(processor, pixels)
    assert (image.mode, image.size) == (expected.mode, expected.size)
    assert np.array_equal(np.asarray(image), np.asarray(expected))
