"""FlashAttention 4 behind PyTorch's flash operator (``flash4_attention.py``).

The package's CuTe kernels run on Hopper and Blackwell GPUs only, so here a stand-in for its
``flash_attn_func`` (PyTorch's math in the package's (batch, tokens, heads, width) layout) is put
where the package would be imported from; the registration itself is real, on the CPU dispatch
key, where PyTorch has no kernel of its own for the flash operator.
"""

from __future__ import annotations

import os
import sys
import types
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from fooocusd.engine import attention_choice, flash4_attention
from fooocusd.engine.acceleration import AccelerationOptions, fuse_qkv, plan_acceleration
from fooocusd.engine.attention_choice import (
    AttentionShape,
    choose_attention,
    enable_attention,
    measure_backends,
)
from fooocusd.engine.devices import HardwareFacts
from fooocusd.engine.models import SDXL_CONFIG_DIR
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from fooocusd.errors import ConfigError
from tests.engine_helpers import channels_last_unet_inputs

FLASH = torch.ops.aten._scaled_dot_product_flash_attention
CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def meta_sdxl_unet() -> Any:
    """The real SDXL UNet's layout, without memory or weights: its attention shapes are what count."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SDXL_CONFIG_DIR / "unet"))


class StandIn:
    """``flash_attn_func`` of the package: (batch, tokens, heads, width) in, (output, lse) out."""

    def __init__(self, *, offset: float = 0.0, refuse: bool = False) -> None:
        self.offset, self.refuse = offset, refuse
        self.layouts: list[tuple[int, ...]] = []

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        softmax_scale: float | None = None,
        causal: bool = False,
        return_lse: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.refuse:
            raise AssertionError("head width not supported")
        self.layouts.append(tuple(q.shape))
        scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * (
            softmax_scale or q.shape[-1] ** -0.5
        )
        if causal:
            hidden = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
            scores = scores.masked_fill(hidden, float("-inf"))
        lse = scores.logsumexp(-1)
        output = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.float()).to(q.dtype)
        return output + self.offset, lse if return_lse else None


def install(monkeypatch: pytest.MonkeyPatch, function: Callable[..., Any]) -> None:
    package = types.ModuleType(flash4_attention.MODULE)
    package.flash_attn_func = function  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, flash4_attention.MODULE, package)
    forget_the_package()


def forget_the_package() -> None:
    for cached in (flash4_attention._module, flash4_attention._load_failure, flash4_attention._kernel):
        cached.cache_clear()


@pytest.fixture(autouse=True)
def clean_state() -> Iterator[None]:
    forget_the_package()
    yield
    flash4_attention.deactivate()
    forget_the_package()


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    function = StandIn()
    install(monkeypatch, function)
    return function


def projected_heads(batch: int, tokens: int, heads: int, width: int) -> list[torch.Tensor]:
    """q, k, v as diffusers' fused projection hands them to SDPA: strided views of one tensor."""
    fused = torch.randn(batch, tokens, 3 * heads * width, generator=torch.Generator().manual_seed(0))
    return [t.view(batch, tokens, heads, width).transpose(1, 2) for t in fused.chunk(3, dim=-1)]


def test_it_says_why_it_cannot_run_without_a_gpu_a_hopper_or_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert flash4_attention.unavailable(torch.device("cpu")) == "FlashAttention 4 runs on NVIDIA GPUs only"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 6))
    assert "Hopper or Blackwell" in flash4_attention.unavailable(CUDA)
    assert "not 8.6" in flash4_attention.unavailable(CUDA)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    monkeypatch.setitem(sys.modules, flash4_attention.MODULE, None)  # (an import that fails)
    assert flash4_attention.unavailable(CUDA).startswith("flash-attn-4 cannot be loaded (ModuleNotFoundError")


def test_a_hopper_or_blackwell_gpu_without_the_package_is_told_what_it_would_bring_and_how(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert flash4_attention.install_hint(torch.device("cpu")) == ""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 9))  # Ada: cannot run it
    assert flash4_attention.install_hint(CUDA) == ""
    monkeypatch.setitem(sys.modules, flash4_attention.MODULE, None)  # (an import that fails)
    for capability in ((9, 0), (10, 0)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        hint = flash4_attention.install_hint(CUDA)
        assert "8 % at 1024² on an H200" in hint and hint.endswith("pip install 'fooocusd[flash4]'")
        assert "flash-attn-4 cannot be loaded (ModuleNotFoundError" in hint


def test_a_gpu_that_runs_it_needs_no_hint(monkeypatch: pytest.MonkeyPatch, stand_in: StandIn) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert flash4_attention.install_hint(CUDA) == ""


def test_a_hopper_gpu_with_the_package_can_run_it(monkeypatch: pytest.MonkeyPatch, stand_in: StandIn) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert flash4_attention.unavailable(CUDA) == ""


def test_attention_takes_sdpas_layout_and_gives_sdpas_result(stand_in: StandIn) -> None:
    q, k, v = projected_heads(2, 40, 3, 16)
    for causal in (False, True):
        output, lse = flash4_attention.attention(q, k, v, scale=0.2, causal=causal)
        expected = F.scaled_dot_product_attention(q, k, v, scale=0.2, is_causal=causal)
        torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
        assert lse is not None and lse.shape == (2, 3, 40)
    assert stand_in.layouts == [(2, 40, 3, 16)] * 2  # tokens before heads, as the package takes them


def test_a_package_version_without_return_lse_still_gives_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in = StandIn()
    install(
        monkeypatch, lambda q, k, v, softmax_scale=None, causal=False: stand_in(q, k, v, softmax_scale)[0]
    )
    q, k, v = projected_heads(1, 24, 2, 8)
    output, lse = flash4_attention.attention(q, k, v)
    torch.testing.assert_close(output, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)
    assert lse is None


def test_activated_pytorchs_flash_operator_runs_flashattention_4_until_deactivated(stand_in: StandIn) -> None:
    q, k, v = projected_heads(2, 33, 4, 8)
    with pytest.raises(NotImplementedError):  # PyTorch has no CPU kernel for it: the registration is ours
        FLASH(q, k, v)

    flash4_attention.activate("CPU")
    assert flash4_attention.active()
    output, lse, _, _, max_q, max_k, *_ = FLASH(q, k[:, :, :20], v[:, :, :20], is_causal=False, scale=0.3)
    torch.testing.assert_close(
        output, F.scaled_dot_product_attention(q, k[:, :, :20], v[:, :, :20], scale=0.3), atol=1e-5, rtol=1e-5
    )
    assert lse.shape == (2, 4, 33) and lse.dtype == torch.float32
    assert (max_q, max_k) == (33, 20)
    assert len(stand_in.layouts) == 1

    flash4_attention.deactivate()
    assert not flash4_attention.active()
    with pytest.raises(NotImplementedError):
        FLASH(q, k, v)


def test_its_output_is_laid_out_as_pytorchs_kernel_and_a_compiled_graph_expect_it(stand_in: StandIn) -> None:
    flash4_attention.activate("CPU")
    projected = projected_heads(2, 16, 3, 8)  # diffusers' layout: the package's output as it is
    contiguous = [t.contiguous() for t in projected]  # (batch, heads, tokens, width) in memory: one copy
    for q, k, v in (projected, contiguous):
        output = FLASH(q, k, v)[0]
        assert output.stride() == torch.empty_like(q).stride()
        torch.testing.assert_close(output, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)
    assert FLASH(*projected)[2:4] == (None, None)  # no cumulative lengths, as PyTorch's returns


def test_a_call_flashattention_4_refuses_runs_pytorchs_other_kernel_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    install(monkeypatch, StandIn(refuse=True))
    q, k, v = projected_heads(1, 16, 2, 8)
    flash4_attention.activate("CPU")
    output = FLASH(q, k, v, is_causal=True)[0]
    torch.testing.assert_close(
        output, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5, rtol=1e-5
    )


def test_a_causal_mask_over_unequal_lengths_keeps_pytorchs_top_left_alignment(stand_in: StandIn) -> None:
    q, k, v = projected_heads(1, 24, 2, 8)
    flash4_attention.activate("CPU")
    output = FLASH(q[:, :, :10], k, v, is_causal=True)[0]
    expected = F.scaled_dot_product_attention(q[:, :, :10], k, v, is_causal=True)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    assert stand_in.layouts == []  # (the package aligns such a mask bottom-right)


def test_dropout_is_refused_rather_than_silently_dropped(stand_in: StandIn) -> None:
    q, k, v = projected_heads(1, 16, 2, 8)
    flash4_attention.activate("CPU")
    with pytest.raises(NotImplementedError, match="no dropout"):
        FLASH(q, k, v, 0.1)


def test_the_check_through_pytorchs_operator_passes_a_kernel_that_agrees(stand_in: StandIn) -> None:
    assert flash4_attention.dispatch_problem(CPU, torch.float32, head_widths=(40, 64, 80, 64)) == ""
    widths = [layout[-1] for layout in stand_in.layouts]
    assert widths == [40, 40, 64, 64, 80, 80]  # each width once, causal and not
    assert not flash4_attention.active()  # left as it was found


def test_the_check_through_pytorchs_operator_names_a_kernel_that_differs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    install(monkeypatch, StandIn(offset=0.25))
    problem = flash4_attention.dispatch_problem(CPU, torch.float32, head_widths=(40, 80))
    assert problem.startswith("attention with 40-wide heads differs by up to 0.25")
    assert "causal attention with 80-wide heads differs" in problem
    assert not flash4_attention.active()


def test_a_unet_with_fused_projections_predicts_the_same_through_flashattention_4(
    stand_in: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import EulerDiscreteScheduler

    unet = build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).unet.eval()
    fuse_qkv(unet)
    latents, text, added = channels_last_unet_inputs(unet, seed=3)

    def predict() -> torch.Tensor:
        with torch.inference_mode():
            return unet(latents, 10, encoder_hidden_states=text, added_cond_kwargs=added).sample

    expected = predict()
    flash4_attention.activate("CPU")

    def as_on_a_gpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **options: Any) -> torch.Tensor:
        # on a GPU, SDPA hands these calls to PyTorch's flash operator; on a CPU it has its own
        dropout, causal = options.get("dropout_p", 0.0), options.get("is_causal", False)
        return FLASH(q, k, v, dropout, causal, scale=options.get("scale"))[0]

    monkeypatch.setattr(F, "scaled_dot_product_attention", as_on_a_gpu)
    torch.testing.assert_close(predict(), expected, atol=1e-4, rtol=1e-4)
    assert len(stand_in.layouts) == len(unet.attn_processors)  # every attention layer, once


def test_auto_times_it_beside_pytorchs_choice_at_the_unets_shapes(stand_in: StandIn) -> None:
    shapes = Counter({AttentionShape(2, 2, 64, 64, 16): 2, AttentionShape(2, 2, 64, 77, 16): 2})
    per_call, rejected = measure_backends(["sdpa", "sdpa_flash4"], shapes, CPU, torch.float32, runs=2)
    assert rejected == {} and set(per_call) == {"sdpa", "sdpa_flash4"}
    # per shape: the result checked against PyTorch's, two warm-up calls, two timed ones
    assert stand_in.layouts == [(2, 64, 2, 16)] * 2 * (1 + 2 + 2)


@pytest.fixture
def hopper(monkeypatch: pytest.MonkeyPatch, stand_in: StandIn) -> StandIn:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    attention_choice._measured.clear()
    return stand_in


def test_auto_picks_it_on_a_hopper_gpu_when_it_is_faster_and_agrees_through_pytorchs_operator(
    hopper: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    timed: list[list[str]] = []

    def measure(
        backends: list[str], *args: object, **kwargs: object
    ) -> tuple[dict[str, float], dict[str, str]]:
        timed.append(list(backends))
        return {"sdpa": 9.0, "sdpa_cudnn": 9.1, "sdpa_flash4": 6.0}, {}

    monkeypatch.setattr(attention_choice, "measure_backends", measure)
    monkeypatch.setattr(attention_choice, "masked_attention_problem", lambda *args: "")
    checked: list[set[int]] = []

    def agrees(device: torch.device, dtype: torch.dtype, widths: set[int]) -> str:
        checked.append(widths)
        return ""

    monkeypatch.setattr(flash4_attention, "dispatch_problem", agrees)
    choice = choose_attention("auto", meta_sdxl_unet(), CUDA, torch.bfloat16, graphed=True)
    assert checked == [{64}]  # SDXL's UNet and its text encoders: 64-wide heads alone
    assert timed == [["sdpa", "sdpa_cudnn", "sdpa_flash4"]]
    assert choice.backend == "sdpa_flash4" and "33% faster" in choice.reason


def test_auto_on_a_hopper_gpu_without_the_package_logs_what_it_would_bring(
    monkeypatch: pytest.MonkeyPatch, logged: list[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    monkeypatch.setitem(sys.modules, flash4_attention.MODULE, None)  # (an import that fails)
    attention_choice._measured.clear()
    measured = ({"sdpa": 9.0, "sdpa_cudnn": 9.1}, {})
    monkeypatch.setattr(attention_choice, "measure_backends", lambda *args, **kwargs: measured)
    monkeypatch.setattr(attention_choice, "masked_attention_problem", lambda *args: "")

    choice = choose_attention("auto", meta_sdxl_unet(), CUDA, torch.bfloat16, graphed=True)

    assert choice.backend == "sdpa"
    hints = [line.rstrip() for line in logged if "pip install 'fooocusd[flash4]'" in line]
    assert len(hints) == 1 and hints[0].startswith("attention: FlashAttention 4 would make images faster")


def test_auto_rejects_it_when_pytorchs_operator_gives_another_result_through_it(
    hopper: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        attention_choice, "measure_backends", lambda *a, **k: ({"sdpa": 9.0, "sdpa_flash4": 6.0}, {})
    )
    problem = "causal attention differs by up to 1"
    monkeypatch.setattr(flash4_attention, "dispatch_problem", lambda *args: problem)
    choice = choose_attention("auto", meta_sdxl_unet(), CUDA, torch.bfloat16)
    assert choice.backend == "sdpa"
    assert choice.rejected["sdpa_flash4"] == problem


def test_choosing_it_routes_pytorchs_flash_operator_and_another_backend_routes_it_back(
    hopper: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys: list[str] = []
    monkeypatch.setattr(flash4_attention, "activate", lambda key="CUDA": keys.append(key))
    monkeypatch.setattr(flash4_attention, "deactivate", lambda: keys.append("off"))
    enable_attention(object(), "sdpa_flash4", CUDA)
    enable_attention(object(), "sdpa", CUDA)
    assert keys == ["CUDA", "off"]


def test_asking_for_it_where_it_cannot_run_is_a_configuration_error_with_a_hint() -> None:
    with pytest.raises(ConfigError, match="NVIDIA GPUs only") as error:
        enable_attention(object(), "sdpa_flash4", CPU)
    assert "fooocusd[flash4]" in (error.value.hint or "")


def test_fused_projections_stay_on_with_it_since_diffusers_still_calls_sdpa() -> None:
    h100 = HardwareFacts("cuda", (9, 0), 80 * 2**30, True)
    plan = plan_acceleration(
        AccelerationOptions(vram="high"), CUDA, torch.bfloat16, attention="sdpa_flash4", hardware=h100
    )
    assert plan.fuse_qkv and not any("fuse_qkv" in note for note in plan.notes)


def test_its_compiled_kernels_are_kept_under_the_daemons_cache_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", raising=False)
    monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", raising=False)
    monkeypatch.delenv("TVM_FFI_CACHE_DIR", raising=False)
    folder = flash4_attention.configure_cache(tmp_path)
    assert folder == tmp_path / "flash4" and folder.is_dir()
    assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"] == "1"
    assert os.environ["TVM_FFI_CACHE_DIR"] == str(tmp_path / "tvm-ffi")
    monkeypatch.setenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", str(tmp_path / "mine"))
    assert flash4_attention.configure_cache(tmp_path) == tmp_path / "mine"  # the environment's wins
