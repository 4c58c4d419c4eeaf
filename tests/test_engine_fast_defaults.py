"""Fast defaults with hardware fallbacks: dtype, VRAM mode and fp8 quantisation per GPU generation.

The decisions are pure functions of the device's facts, so every GPU generation is checked here on
the CPU with explicit inputs: T4 (7.5), A100 (8.0), RTX 3090 (8.6), RTX 4090 (8.9), H100 (9.0).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from loguru import logger

from fooocusd.engine import acceleration, devices
from fooocusd.engine.acceleration import AccelerationOptions, AccelerationPlan, plan_acceleration
from fooocusd.engine.devices import (
    HardwareFacts,
    hardware_plan,
    pick_dtype,
    probe_hardware,
    torchao_available,
)
from fooocusd.engine.models import TINY_MODEL, ModelLocation
from fooocusd.engine.sdxl import SDXLEngine
from fooocusd.settings import EngineSettings
from tests.engine_helpers import default_request

GIB = 2**30
CUDA = torch.device("cuda")  # only ever a label here: nothing is moved to it
CPU = torch.device("cpu")
T4, A100, RTX_3090, RTX_4090, H100 = (7, 5), (8, 0), (8, 6), (8, 9), (9, 0)


def _gpu(capability: tuple[int, int], memory_gib: int = 80, *, torchao: bool = True) -> HardwareFacts:
    return HardwareFacts("cuda", capability, memory_gib * GIB, torchao)


def _plan_fp8(
    facts: HardwareFacts, dtype: torch.dtype = torch.bfloat16, **options: object
) -> AccelerationPlan:
    chosen = AccelerationOptions(**{"quantize": "fp8", **options})  # type: ignore[arg-type]
    return plan_acceleration(chosen, CUDA if facts.device_type == "cuda" else CPU, dtype, hardware=facts)


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [(T4, torch.float16), (A100, torch.bfloat16), (RTX_3090, torch.bfloat16), (RTX_4090, torch.bfloat16)],
)
def test_auto_dtype_is_bf16_from_ampere_and_fp16_before(
    capability: tuple[int, int], dtype: torch.dtype
) -> None:
    assert hardware_plan(capability, 24 * GIB, True).dtype == dtype


def test_auto_dtype_is_fp32_on_the_cpu_and_fp16_on_apple() -> None:
    assert hardware_plan(None, None, True).dtype == torch.float32
    assert hardware_plan(None, None, True, device_type="mps").dtype == torch.float16
    assert pick_dtype("auto", CPU) == torch.float32
    assert pick_dtype("bfloat16", CPU) == torch.bfloat16


def test_an_fp16_t4_keeps_the_sdxl_vae_in_fp32() -> None:
    plan = plan_acceleration(
        AccelerationOptions(),
        CUDA,
        hardware_plan(T4, 16 * GIB, True).dtype,
        vae_force_upcast=True,
        hardware=_gpu(T4, 16),
    )
    assert plan.vae_dtype == torch.float32


@pytest.mark.parametrize(
    ("capability", "fp8"), [(T4, False), (A100, False), (RTX_3090, False), (RTX_4090, True), (H100, True)]
)
def test_fp8_is_supported_only_from_ada_and_hopper(capability: tuple[int, int], fp8: bool) -> None:
    plan = hardware_plan(capability, 80 * GIB, True)
    assert plan.fp8 is fp8
    if not fp8:
        assert f"{capability[0]}.{capability[1]}" in plan.fp8_unsupported
        assert "8.9" in plan.fp8_unsupported


def test_fp8_without_torchao_says_how_to_install_it() -> None:
    plan = hardware_plan(H100, 80 * GIB, False)
    assert not plan.fp8 and "fooocusd[fp8]" in plan.fp8_unsupported


def test_quantize_auto_stays_off_everywhere_until_fp8_quality_is_measured() -> None:
    for capability in (T4, A100, RTX_3090, RTX_4090, H100):
        assert hardware_plan(capability, 80 * GIB, True).quantize_auto == "off"
    plan = plan_acceleration(AccelerationOptions(quantize="auto"), CUDA, torch.bfloat16, hardware=_gpu(H100))
    assert plan.quantize == "off"
    assert any("not measured" in note for note in plan.notes)  # on an fp8-capable GPU, say why not
    older = plan_acceleration(AccelerationOptions(quantize="auto"), CUDA, torch.bfloat16, hardware=_gpu(A100))
    assert older.quantize == "off" and not older.notes


def test_vram_auto_is_low_only_on_a_gpu_under_10_gib() -> None:
    assert hardware_plan(RTX_4090, 8 * GIB, True).vram == "low"
    assert hardware_plan(RTX_4090, 24 * GIB, True).vram == "high"
    assert hardware_plan(None, 4 * GIB, True).vram == "high"


@pytest.mark.parametrize("capability", [RTX_4090, H100])
def test_fp8_on_ada_and_hopper_quantises_and_turns_fused_qkv_off(capability: tuple[int, int]) -> None:
    plan = _plan_fp8(_gpu(capability))
    assert plan.quantize == "fp8" and not plan.fuse_qkv
    assert any("fuse_qkv off" in note for note in plan.notes)
    assert plan.record()["quantize"] == "fp8"


@pytest.mark.parametrize("capability", [T4, A100, RTX_3090])
def test_fp8_on_older_gpus_falls_back_with_a_note_naming_the_capability(capability: tuple[int, int]) -> None:
    plan = _plan_fp8(_gpu(capability))
    assert plan.quantize == "off" and plan.fuse_qkv  # nothing else is given up
    (note,) = [note for note in plan.notes if note.startswith("quantize off")]
    assert f"{capability[0]}.{capability[1]}" in note


def test_fp8_falls_back_without_torchao_on_the_cpu_with_fp16_and_in_low_vram_mode() -> None:
    reasons = {
        "torchao": _plan_fp8(_gpu(H100, torchao=False)),
        "NVIDIA GPU": _plan_fp8(HardwareFacts("cpu", None, None, True)),
        "bfloat16": _plan_fp8(_gpu(H100), torch.float16),
        "low-VRAM": _plan_fp8(_gpu(H100, 8)),
    }
    for reason, plan in reasons.items():
        assert plan.quantize == "off"
        assert any(note.startswith("quantize off") and reason in note for note in plan.notes), plan.notes
        assert plan.record()["quantize"] == "off"


def test_quantize_off_never_looks_at_the_hardware() -> None:
    chosen = AccelerationOptions(quantize="off", compile="off")  # compile = "auto" does look
    plan = plan_acceleration(chosen, CUDA, torch.bfloat16, total_memory=80 * GIB)
    assert plan.quantize == "off" and not any("quantize" in note for note in plan.notes)


@pytest.mark.parametrize("capability", [T4, A100, RTX_4090, H100])
def test_compile_auto_is_regional_on_gpus_triton_builds_for(capability: tuple[int, int]) -> None:
    assert hardware_plan(capability, 24 * GIB, True).compile_auto == "unet"
    auto = AccelerationOptions(compile="auto")
    plan = plan_acceleration(auto, CUDA, torch.bfloat16, hardware=_gpu(capability))
    assert plan.compile == "unet" and plan.record()["compile"] == "unet"


def test_compile_auto_is_off_on_the_cpu_old_gpus_without_triton_and_in_low_vram_mode() -> None:
    assert hardware_plan(None, None, True).compile_auto == "off"
    assert hardware_plan((6, 1), 12 * GIB, True).compile_auto == "off"  # Pascal: Triton builds nothing
    assert hardware_plan(H100, 80 * GIB, True, triton_available=False).compile_auto == "off"
    assert hardware_plan(RTX_4090, 8 * GIB, True).compile_auto == "off"  # low VRAM streams layers
    for facts in (HardwareFacts("cpu", None, None, True), _gpu(H100, 8)):
        device = CUDA if facts.device_type == "cuda" else CPU
        plan = plan_acceleration(AccelerationOptions(compile="auto"), device, torch.float32, hardware=facts)
        assert plan.compile == "off"
    explicit = plan_acceleration(AccelerationOptions(compile="unet"), CPU, torch.float32)
    assert explicit.compile == "unet"  # asked for by name, it is honoured on the CPU too


def test_fp8_without_compile_says_it_runs_slower_eagerly() -> None:
    eager = _plan_fp8(_gpu(H100), compile="off")
    assert eager.quantize == "fp8" and acceleration.FP8_EAGER_NOTE in eager.notes
    compiled = _plan_fp8(_gpu(H100), compile="auto")
    assert compiled.compile == "unet" and acceleration.FP8_EAGER_NOTE not in compiled.notes


def test_probing_the_cpu_reads_no_gpu_and_finds_torchao_without_importing_it() -> None:
    facts = probe_hardware(CPU)
    assert facts.device_type == "cpu" and facts.capability is None
    assert facts.torchao_available == torchao_available()
    assert facts.plan().dtype == torch.float32


def test_settings_default_to_auto_dtype_quantize_and_compile(tmp_path: Path) -> None:
    settings = EngineSettings()
    assert (settings.dtype, settings.quantize, settings.compile) == ("auto", "auto", "auto")
    assert AccelerationOptions.from_settings(settings, tmp_path).compile == "auto"
    options = AccelerationOptions.from_settings(EngineSettings(quantize="fp8"), tmp_path)
    assert options.quantize == "fp8"


def test_fp8_asked_for_on_the_cpu_renders_anyway_and_warns_once(tmp_path: Path) -> None:
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(str(message)), level="WARNING")
    acceleration._warned.clear()
    try:
        engines = [
            SDXLEngine(
                ModelLocation(kind="tiny", name=TINY_MODEL),
                models_dir=tmp_path / "models",
                hash_cache=tmp_path / "hashes.json",
                device="cpu",
                acceleration=AccelerationOptions(quantize="fp8"),
            )
            for _ in range(2)
        ]
        for engine in engines:
            engine.load()
        image = engines[0].generate(default_request(steps=2)).image
    finally:
        logger.remove(sink)
    assert image.size[0] > 0
    record = engines[0].describe()["acceleration"]
    assert record["quantize"] == "off" and record["quantized_layers"] == 0
    assert any("NVIDIA GPU" in note for note in record["notes"])
    assert len([message for message in messages if "quantize" in message]) == 1


def test_once_fp8_quality_is_measured_auto_quantises_only_where_fp8_can_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(devices, "FP8_QUALITY_MEASURED", True)
    auto = AccelerationOptions(quantize="auto")
    assert plan_acceleration(auto, CUDA, torch.bfloat16, hardware=_gpu(H100)).quantize == "fp8"
    assert plan_acceleration(auto, CUDA, torch.float16, hardware=_gpu(T4)).quantize == "off"
    forced_fp16 = plan_acceleration(auto, CUDA, torch.float16, hardware=_gpu(H100))
    assert forced_fp16.quantize == "off" and any("bfloat16" in note for note in forced_fp16.notes)
