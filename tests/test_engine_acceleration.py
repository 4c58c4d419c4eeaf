"""engine.vram / compile / channels_last / fuse_qkv / vae_upcast on tiny-random, on the CPU."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fooocusd.engine.acceleration import (
    COMPILE_CACHE_FOLDER,
    AccelerationOptions,
    configure_compile_cache,
    configure_triton_cache,
    plan_acceleration,
    qkv_fused,
    resolve_vram,
    vae_dtype_for,
)
from fooocusd.engine.low_vram import StageOffload, small_decode_tiles
from fooocusd.engine.sdxl import SDXLEngine
from fooocusd.settings import EngineSettings
from tests.engine_helpers import default_request, models_root_with_ink_lora, pixels_of, tiny_engine_with

CUDA = torch.device("cuda")  # only ever a label here: nothing is moved to it
CPU = torch.device("cpu")
GIB = 2**30


_engine = tiny_engine_with
_pixels = pixels_of


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models_root_with_ink_lora(tmp_path_factory.mktemp("acceleration"))


@pytest.fixture(scope="module")
def plain(root: Path) -> SDXLEngine:
    return _engine(root)


@pytest.fixture(scope="module")
def laid_out(root: Path) -> SDXLEngine:
    return _engine(root, layout_on_cpu=True)


def test_channels_last_and_fused_qkv_give_the_same_image_as_plain(
    plain: SDXLEngine, laid_out: SDXLEngine
) -> None:
    request = default_request(steps=4)
    difference = np.abs(_pixels(plain, request) - _pixels(laid_out, request))
    assert difference.max() <= 2  # fp32 rounding only
    record = laid_out.describe()["acceleration"]
    assert record["channels_last"] and record["fuse_qkv"]
    assert not plain.describe()["acceleration"]["fuse_qkv"]  # on the CPU only when asked for


def test_fused_projections_take_no_extra_memory(laid_out: SDXLEngine) -> None:
    unet = laid_out._pipeline.unet  # type: ignore[union-attr]
    fused_layers = [module for module in unet.modules() if hasattr(module, "to_qkv")]
    assert fused_layers
    for attention in fused_layers:
        start = attention.to_qkv.weight.untyped_storage().data_ptr()
        for part in (attention.to_q, attention.to_k, attention.to_v):
            assert part.weight.untyped_storage().data_ptr() == start


def test_a_lora_turns_fusion_off_and_still_changes_the_image_like_on_a_plain_engine(
    laid_out: SDXLEngine, plain: SDXLEngine
) -> None:
    fused, unfused = laid_out, plain
    request = default_request(steps=3, loras=(("ink", 1.0),))
    assert qkv_fused(fused._pipeline.unet)  # type: ignore[union-attr]
    with_lora = _pixels(fused, request)
    assert not qkv_fused(fused._pipeline.unet)  # type: ignore[union-attr]
    assert np.abs(with_lora - _pixels(unfused, request)).max() <= 2
    assert np.abs(with_lora - _pixels(fused, default_request(steps=3))).max() > 10


def test_stage_offload_keeps_one_stage_on_the_accelerator() -> None:
    placed: dict[str, torch.device] = {}
    modules = {name: nn.Linear(2, 2) for name in ("te1", "te2", "unet")}
    names = {id(module): name for name, module in modules.items()}

    def record(module: nn.Module, device: torch.device) -> None:
        placed[names[id(module)]] = device

    offload = StageOffload(CUDA, CPU, move=record)
    offload.add("text", modules["te1"])
    offload.add("text", modules["te2"])
    offload.add("denoise", modules["unet"], movable=False)
    assert placed == {"te1": CPU, "te2": CPU}  # nothing sits on the accelerator before it runs
    offload.enter("text")
    assert placed == {"te1": CUDA, "te2": CUDA}
    moves = offload.moves
    offload.enter("text")
    assert offload.moves == moves  # already resident: no traffic
    offload.enter("denoise")
    assert placed == {"te1": CPU, "te2": CPU}  # the UNet streams itself; it is never moved whole


def test_calling_a_managed_module_makes_its_stage_resident_and_moves_its_inputs() -> None:
    encoder, unet = nn.Linear(3, 3), nn.Linear(3, 3)
    offload = StageOffload(CPU, CPU)
    offload.add("text", encoder)
    offload.add("denoise", unet, movable=False)
    encoder(torch.ones(1, 3))
    assert offload.active == "text"
    unet(torch.ones(1, 3))
    assert offload.active == "denoise"


def test_low_vram_mode_on_the_cpu_gives_the_same_image(root: Path, plain: SDXLEngine) -> None:
    low = _engine(root, vram="low")
    request = default_request(steps=3, width=512, height=512)  # tiny renders 64 px: one decode tile
    assert np.array_equal(_pixels(low, request), _pixels(plain, request))
    record = low.describe()["acceleration"]
    assert record["vram"] == "low" and record["compile"] == "off"


def test_low_vram_decode_tiles_are_half_the_vae_size_and_restored_afterwards(plain: SDXLEngine) -> None:
    vae = plain._pipeline.vae  # type: ignore[union-attr]
    native = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
    latents = torch.randn(1, 4, 12, 12, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: worker threads only wait on each other
    with torch.inference_mode():
        whole = vae.decode(latents).sample
        with small_decode_tiles(vae):
            assert vae.tile_sample_min_size == vae.config.sample_size // 2
            tiled = vae.decode(latents).sample
    torch.set_num_threads(threads)
    assert (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size) == native
    assert tiled.shape == whole.shape and not torch.equal(tiled, whole)


def test_vram_auto_is_low_only_on_a_gpu_under_10_gib() -> None:
    assert resolve_vram("auto", CUDA, total_memory=8 * GIB) == "low"
    assert resolve_vram("auto", CUDA, total_memory=80 * GIB) == "high"
    assert resolve_vram("auto", CPU) == "high"
    assert resolve_vram("low", CPU) == "low"


def test_vae_runs_in_bf16_without_upcast_and_fp16_keeps_an_fp32_vae() -> None:
    assert vae_dtype_for("auto", torch.bfloat16, force_upcast=True) == torch.bfloat16
    assert vae_dtype_for("auto", torch.float16, force_upcast=True) == torch.float32
    assert vae_dtype_for("auto", torch.float16, force_upcast=False) == torch.float16
    assert vae_dtype_for("always", torch.bfloat16, force_upcast=False) == torch.float32
    assert vae_dtype_for("never", torch.float16, force_upcast=True) == torch.float16


def test_low_vram_mode_says_why_it_does_not_compile_or_fuse() -> None:
    options = AccelerationOptions(vram="low", compile="unet", fuse_qkv=True)
    plan = plan_acceleration(options, CUDA, torch.bfloat16, total_memory=80 * GIB)
    assert plan.compile == "off" and not plan.fuse_qkv and plan.channels_last
    assert any("compile off" in note for note in plan.notes)
    chosen = AccelerationOptions(vram="high", compile="off")
    xformers = plan_acceleration(chosen, CUDA, torch.float16, attention="xformers")
    assert not xformers.fuse_qkv and any("xformers" in note for note in xformers.notes)


def test_settings_reach_the_options_with_the_cache_folder(tmp_path: Path) -> None:
    settings = EngineSettings(vram="low", compile="unet_full", compile_mode="reduce-overhead", fuse_qkv=False)
    options = AccelerationOptions.from_settings(settings, tmp_path)
    assert (options.vram, options.compile, options.compile_mode) == ("low", "unet_full", "reduce-overhead")
    assert not options.fuse_qkv and options.channels_last and options.cache_dir == tmp_path


def test_compile_cache_env_is_set_under_the_configured_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    folder = configure_compile_cache(tmp_path / "cache")
    assert folder == tmp_path / "cache" / COMPILE_CACHE_FOLDER and folder.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder)
    assert os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1"
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str(folder)


def test_our_triton_kernels_are_cached_under_the_cache_dir_unless_triton_cache_dir_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    folder = configure_triton_cache(tmp_path / "cache")
    assert folder == tmp_path / "cache" / "triton" and folder.is_dir()
    assert os.environ["TRITON_CACHE_DIR"] == str(folder)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))
    assert configure_triton_cache(tmp_path / "cache") == tmp_path / "mine"


def _inductor_unusable() -> str:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as exc:  # torch says inductor cannot build CPU kernels here
        return f"torch inductor is unusable on this machine: {exc}"
    return ""


@pytest.mark.slow
@pytest.mark.skipif(bool(_inductor_unusable()), reason=_inductor_unusable() or "inductor usable")
def test_compiled_unet_blocks_match_eager_and_compile_once_per_image_size(
    root: Path, plain: SDXLEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Matching eager, artefacts in the cache folder, and no recompilation per step, per job (other
    seed, prompt, guidance numbers) or beyond one set of graphs per aspect bucket."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR", ""))
    torch._dynamo.reset()
    compiled = _engine(root, compile="unet", cache_dir=tmp_path)
    before = counters["stats"]["unique_graphs"]  # (global: earlier tests in this process count too)

    def graphs() -> int:
        return counters["stats"]["unique_graphs"] - before

    square = default_request(steps=3, width=512, height=512)
    assert np.abs(_pixels(compiled, square) - _pixels(plain, square)).max() <= 2
    assert compiled.describe()["acceleration"]["compile"] == "unet_blocks"
    assert any((tmp_path / COMPILE_CACHE_FOLDER).iterdir())  # inductor wrote its artefacts there
    per_size = graphs()
    assert per_size > 0
    compiled.generate(replace(square, seed=5, prompt="a harbour at night", cfg=5.0, sharpness=4.0))
    assert graphs() == per_size
    wide = replace(square, width=1152, height=896)
    compiled.generate(wide)
    compiled.generate(replace(wide, seed=9, prompt="another prompt"))
    assert graphs() == 2 * per_size
