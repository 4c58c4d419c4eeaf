"""Upscaling: spandrel loading rules, tiled super-resolution without seams, and Fooocus's size plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.upscale import find_upscaler, load_upscaler, plan_upscale, super_resolve
from fooocusd.errors import InvalidInput
from tests.image_helpers import drawn_scene, write_tiny_esrgan


@pytest.fixture(scope="module")
def tiny_esrgan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_esrgan(tmp_path_factory.mktemp("models") / "upscale_models" / "tiny-esrgan.safetensors")


def test_tiled_super_resolution_matches_the_untiled_result(tiny_esrgan: Path) -> None:
    model = load_upscaler(tiny_esrgan)
    image = drawn_scene((44, 36))
    whole = super_resolve(model, image, tile=512)
    tiled = super_resolve(model, image, tile=24, overlap=8)
    assert whole.size == tiled.size == (44 * 4, 36 * 4)
    difference = np.abs(np.asarray(whole, dtype=int) - np.asarray(tiled, dtype=int))
    assert difference.max() <= 2  # rounding only: the overlap covers the network's reach


def test_missing_upscale_model_names_the_file_and_the_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        find_upscaler(ModelDirs.of(tmp_path / "models"), "4x-UltraSharp")
    error = caught.value
    assert "4x-UltraSharp" in error.message
    assert str(tmp_path / "models" / "upscale_models") in error.message + error.hint
    assert error.where == "upscale_model"
    assert "models fetch" not in error.hint  # not a catalogue file


def test_the_missing_default_upscale_model_says_which_fetch_command_gets_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        find_upscaler(ModelDirs.of(tmp_path / "models"), "RealESRGAN_x4plus")
    assert "fooocusd models fetch RealESRGAN_x4plus" in caught.value.hint


def test_pickled_upscale_models_are_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    path.write_bytes(b"\x80\x04not really")
    with pytest.raises(InvalidInput, match="pickle") as caught:
        load_upscaler(path)
    assert "safetensors" in caught.value.hint


def test_a_file_that_is_no_sr_model_is_refused_clearly(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "odd.safetensors"
    save_file({"something.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(InvalidInput, match="not a super-resolution model"):
        load_upscaler(path)


def test_size_plan_follows_fooocus_limits() -> None:
    small = plan_upscale(256, 256, 2.0, fast=False)
    assert small.target == (1024, 1024) and small.diffuse  # ceil 512 < 1024: raised to ceil 1024
    assert plan_upscale(256, 256, 2.0, fast=True).target == (512, 512)  # fast: exactly ×2, no diffusion
    assert not plan_upscale(256, 256, 2.0, fast=True).diffuse
    medium = plan_upscale(1000, 700, 1.5, fast=False)
    assert medium.target == (1500, 1050) and medium.diffuse and medium.diffusion_size == (1496, 1048)
    assert not plan_upscale(2000, 2000, 2.0, fast=False).diffuse  # ceil 4000 > 2800: SR only
