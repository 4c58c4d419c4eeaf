"""Our denoising loop and conditioning against the stock diffusers SDXL pipeline on tiny-random."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

from fooocusd.engine.base import GenerationRequest
from fooocusd.engine.conditioning import (
    AdmTimeIds,
    Conditioning,
    PromptEmbeddings,
    adm_time_ids,
    diffusers_clip_skip,
    encode_workloads,
    match_sequence_lengths,
    prompt_workloads,
    uses_emphasized_adm,
)
from fooocusd.engine.denoise import GuidanceSettings, denoise, initial_latents, unet_noise_predictor
from fooocusd.engine.factory import create_engine
from fooocusd.engine.models import SDXL_CONFIG_DIR
from fooocusd.engine.samplers import build_scheduler
from fooocusd.engine.sdxl import SDXLEngine
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from fooocusd.errors import Interrupted, InvalidInput
from fooocusd.settings import EngineSettings
from tests.engine_helpers import default_request

CPU = torch.device("cpu")
SIZE = 64  # tiny-random's smallest render: an 8×8 latent


@pytest.fixture(scope="module")
def pipeline() -> Iterator[StableDiffusionXLPipeline]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only wait on each other
    base = EulerDiscreteScheduler.from_pretrained(
        SDXL_CONFIG_DIR, subfolder="scheduler", local_files_only=True
    )
    yield build_tiny_sdxl_pipeline(base)
    torch.set_num_threads(threads)


def _scheduler(pipeline: StableDiffusionXLPipeline, sampler: str, schedule: str = "karras"):  # type: ignore[no-untyped-def]
    return build_scheduler(sampler, schedule, dict(pipeline.scheduler.config)).scheduler


def _our_latents(
    pipeline: StableDiffusionXLPipeline,
    sampler: str,
    schedule: str,
    settings: GuidanceSettings,
    *,
    steps: int = 6,
    positive: tuple[str, ...] = ("a lighthouse",),
    negative: tuple[str, ...] = ("blurry",),
    adm: tuple[float, float] = (1.0, 1.0),
    seed: int = 7,
) -> torch.Tensor:
    scheduler = _scheduler(pipeline, sampler, schedule)
    conditioning = Conditioning(
        positive=encode_workloads(pipeline, positive, clip_skip=2, device=CPU),
        negative=encode_workloads(pipeline, negative, clip_skip=2, device=CPU) if settings.uses_cfg else None,
        time_ids=adm_time_ids(
            SIZE, SIZE, positive_scale=adm[0], negative_scale=adm[1], dtype=torch.float32, device=CPU
        ),
    )
    generator = torch.Generator().manual_seed(seed)
    latents = initial_latents(
        scheduler, steps, (1, 4, SIZE // 8, SIZE // 8), generator=generator, device=CPU, dtype=torch.float32
    )
    with torch.inference_mode():
        return denoise(
            unet_noise_predictor(pipeline.unet),
            scheduler,
            latents,
            conditioning,
            settings,
            generator=generator,
        )


def _stock_latents(
    pipeline: StableDiffusionXLPipeline,
    sampler: str,
    schedule: str,
    cfg: float,
    *,
    steps: int = 6,
    seed: int = 7,
) -> torch.Tensor:
    pipeline.scheduler = _scheduler(pipeline, sampler, schedule)
    with torch.inference_mode():
        return pipeline(
            prompt="a lighthouse",
            negative_prompt="blurry",
            width=SIZE,
            height=SIZE,
            num_inference_steps=steps,
            guidance_scale=cfg,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
        ).images


_OFF = {"sharpness": 0.0, "adaptive_cfg": 30.0, "adm_end": 0.0}


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [
        ("dpmpp_2m_sde_gpu", "karras"),
        ("euler", "normal"),
        ("euler", "karras"),
        ("euler_a", "normal"),
        ("ddim", "normal"),
        ("dpmpp_2m", "karras"),
        ("heun", "karras"),
    ],
)
def test_loop_with_refinements_off_equals_the_stock_pipeline(
    pipeline: StableDiffusionXLPipeline, sampler: str, schedule: str
) -> None:
    ours = _our_latents(pipeline, sampler, schedule, GuidanceSettings(cfg=4.0, **_OFF))
    stock = _stock_latents(pipeline, sampler, schedule, 4.0)
    assert ours.shape == stock.shape
    assert (ours - stock).abs().max().item() <= 1e-4


def test_loop_at_cfg_one_equals_the_stock_pipeline(pipeline: StableDiffusionXLPipeline) -> None:
    ours = _our_latents(pipeline, "dpmpp_2m_sde_gpu", "karras", GuidanceSettings(cfg=1.0, **_OFF))
    stock = _stock_latents(pipeline, "dpmpp_2m_sde_gpu", "karras", 1.0)
    assert (ours - stock).abs().max().item() <= 1e-4


def test_adm_scalers_with_end_zero_change_nothing(pipeline: StableDiffusionXLPipeline) -> None:
    plain = _our_latents(pipeline, "euler", "karras", GuidanceSettings(cfg=4.0, **_OFF))
    scaled_but_ended = _our_latents(
        pipeline, "euler", "karras", GuidanceSettings(cfg=4.0, **_OFF), adm=(1.5, 0.8)
    )
    assert torch.equal(plain, scaled_but_ended)


@pytest.mark.parametrize(
    "change",
    [{"sharpness": 20.0}, {"adaptive_cfg": 2.0}, {"adm_end": 0.3}],
)
def test_each_refinement_changes_the_result_deterministically(
    pipeline: StableDiffusionXLPipeline, change: dict[str, float]
) -> None:
    settings = GuidanceSettings(cfg=4.0, **{**_OFF, **change})
    plain = _our_latents(pipeline, "euler", "karras", GuidanceSettings(cfg=4.0, **_OFF), adm=(1.5, 0.8))
    first = _our_latents(pipeline, "euler", "karras", settings, adm=(1.5, 0.8))
    again = _our_latents(pipeline, "euler", "karras", settings, adm=(1.5, 0.8))
    assert torch.equal(first, again)
    assert not torch.allclose(first, plain, atol=1e-6)


@dataclass
class _RecordingPredictor:
    """Stands in for the UNet: records each call, predicts a fixed fraction of its input."""

    calls: list[dict[str, torch.Tensor]] = field(default_factory=list)

    def __call__(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        tokens: torch.Tensor,
        pooled: torch.Tensor,
        time_ids: torch.Tensor,
    ) -> torch.Tensor:
        self.calls.append(
            {
                "input": model_input,
                "timestep": timestep,
                "tokens": tokens,
                "pooled": pooled,
                "time_ids": time_ids,
            }
        )
        return 0.1 * model_input


def _fake_conditioning(negative_workloads: int | None = 1) -> Conditioning:
    def side(workloads: int, value: float) -> PromptEmbeddings:
        return PromptEmbeddings(
            tokens=torch.full((1, 77 * workloads, 96), value), pooled=torch.full((1, 64), value)
        )

    return Conditioning(
        positive=side(2, 1.0),
        negative=None if negative_workloads is None else side(negative_workloads, -1.0),
        time_ids=adm_time_ids(
            96, 128, positive_scale=1.5, negative_scale=0.8, dtype=torch.float32, device=CPU
        ),
    )


def _run_fake(
    settings: GuidanceSettings,
    conditioning: Conditioning,
    steps: int = 10,
    progress: list[tuple[int, int]] | None = None,
    stop_after: int | None = None,
) -> _RecordingPredictor:
    base = EulerDiscreteScheduler.from_pretrained(
        SDXL_CONFIG_DIR, subfolder="scheduler", local_files_only=True
    )
    scheduler = build_scheduler("euler", "normal", dict(base.config)).scheduler
    generator = torch.Generator().manual_seed(0)
    latents = initial_latents(
        scheduler, steps, (1, 4, 8, 8), generator=generator, device=CPU, dtype=torch.float32
    )
    predictor = _RecordingPredictor()
    denoise(
        predictor,
        scheduler,
        latents,
        conditioning,
        settings,
        generator=generator,
        progress=None if progress is None else lambda done, total: progress.append((done, total)),
        should_stop=None if stop_after is None else lambda: len(predictor.calls) >= stop_after,
    )
    return predictor


def test_cfg_makes_one_batch_of_two_per_step_with_uncond_first() -> None:
    predictor = _run_fake(GuidanceSettings(cfg=4.0), _fake_conditioning())
    assert len(predictor.calls) == 10
    call = predictor.calls[0]
    assert call["input"].shape[0] == 2
    assert call["pooled"][:, 0].tolist() == [-1.0, 1.0]  # (uncond, cond)
    # one negative workload (77 tokens) tiled to the positive's two (154)
    assert call["tokens"].shape == (2, 154, 96)


def test_cfg_one_runs_the_conditional_pass_alone() -> None:
    predictor = _run_fake(
        GuidanceSettings(cfg=1.0, sharpness=2.0), _fake_conditioning(negative_workloads=None)
    )
    assert len(predictor.calls) == 10
    assert all(call["input"].shape[0] == 1 for call in predictor.calls)
    assert predictor.calls[0]["pooled"][:, 0].tolist() == [1.0]


def test_adm_uses_emphasized_ids_for_the_first_thirty_percent_of_timesteps() -> None:
    predictor = _run_fake(GuidanceSettings(cfg=4.0, adm_end=0.3), _fake_conditioning())
    for call in predictor.calls:
        emphasized = float(call["timestep"]) > 999 * 0.7
        negative_ids, positive_ids = call["time_ids"].tolist()
        if emphasized:
            assert negative_ids == pytest.approx([96 * 0.8, 128 * 0.8, 0, 0, 96, 128])
            assert positive_ids == pytest.approx([96 * 1.5, 128 * 1.5, 0, 0, 96, 128])
        else:
            assert negative_ids == positive_ids == [96, 128, 0, 0, 96, 128]
    switches = [float(call["timestep"]) > 999 * 0.7 for call in predictor.calls]
    assert switches[0] and not switches[-1]  # both halves of the rule were exercised


def test_progress_is_reported_after_every_step_and_stop_interrupts_between_steps() -> None:
    reported: list[tuple[int, int]] = []
    _run_fake(GuidanceSettings(cfg=4.0), _fake_conditioning(), steps=5, progress=reported)
    assert reported == [(step, 5) for step in range(1, 6)]

    reported.clear()
    with pytest.raises(Interrupted) as caught:
        _run_fake(GuidanceSettings(cfg=4.0), _fake_conditioning(), steps=5, progress=reported, stop_after=2)
    assert reported == [(1, 5), (2, 5)] and "step 2 of 5" in caught.value.message


def test_a_stop_request_after_the_last_step_does_not_interrupt() -> None:
    predictor = _run_fake(GuidanceSettings(cfg=4.0), _fake_conditioning(), steps=3, stop_after=3)
    assert len(predictor.calls) == 3


@pytest.mark.parametrize(
    ("settings", "field_name"),
    [
        ({"cfg": 0.5}, "cfg"),
        ({"cfg": 4.0, "sharpness": -1.0}, "sharpness"),
        ({"cfg": 4.0, "adaptive_cfg": 0.0}, "adaptive_cfg"),
        ({"cfg": 4.0, "adm_end": 1.5}, "adm_scaler_end"),
    ],
)
def test_out_of_range_guidance_settings_are_invalid_input(
    settings: dict[str, float], field_name: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        GuidanceSettings(**settings)
    assert caught.value.where == field_name and caught.value.hint


# -- conditioning ------------------------------------------------------------------------------


def test_adm_time_ids_scale_the_original_size_per_side() -> None:
    ids = adm_time_ids(896, 1152, positive_scale=1.5, negative_scale=0.8, dtype=torch.float32, device=CPU)
    assert ids.emphasized_positive.tolist() == [[1344, 1728, 0, 0, 896, 1152]]
    assert ids.emphasized_negative.tolist()[0] == pytest.approx([716.8, 921.6, 0, 0, 896, 1152])
    assert ids.consistent.tolist() == [[896, 1152, 0, 0, 896, 1152]]
    assert isinstance(ids, AdmTimeIds)


def test_adm_switch_point_is_the_first_end_share_of_the_timestep_range() -> None:
    assert uses_emphasized_adm(999, 0.3) and uses_emphasized_adm(700, 0.3)
    assert not uses_emphasized_adm(699.3, 0.3) and not uses_emphasized_adm(500, 0.3)
    assert not uses_emphasized_adm(999, 0.0)  # end 0 disables it
    assert uses_emphasized_adm(0.5, 1.0)


def test_workloads_come_from_prompt_lines_and_extra_prompts_until_the_worker_fills_them() -> None:
    request = default_request(prompt="a cat\n\n  on a sofa ", extra_prompts=("golden hour", ""), negative="")
    assert prompt_workloads(request) == (("a cat", "on a sofa", "golden hour"), ("",))
    filled = default_request(positive_workloads=("styled cat", "hat"), negative_workloads=("ugly", "blurry"))
    assert prompt_workloads(filled) == (("styled cat", "hat"), ("ugly", "blurry"))


def test_one_workload_at_clip_skip_two_equals_stock_encoding(pipeline: StableDiffusionXLPipeline) -> None:
    with torch.inference_mode():
        ours = encode_workloads(pipeline, ["a lighthouse"], clip_skip=2, device=CPU)
        stock, _, stock_pooled, _ = pipeline.encode_prompt(
            "a lighthouse", device=CPU, do_classifier_free_guidance=False
        )
    assert torch.equal(ours.tokens, stock) and torch.equal(ours.pooled, stock_pooled)
    assert diffusers_clip_skip(2) is None


def test_clip_skip_one_is_the_last_layer_in_diffusers_numbering(pipeline: StableDiffusionXLPipeline) -> None:
    with torch.inference_mode():
        ours = encode_workloads(pipeline, ["a lighthouse"], clip_skip=1, device=CPU)
        stock, _, _, _ = pipeline.encode_prompt(
            "a lighthouse", device=CPU, do_classifier_free_guidance=False, clip_skip=diffusers_clip_skip(1)
        )
        penultimate = encode_workloads(pipeline, ["a lighthouse"], clip_skip=2, device=CPU)
    assert torch.equal(ours.tokens, stock)
    assert not torch.equal(ours.tokens, penultimate.tokens)


def test_clip_skip_beyond_the_encoder_depth_is_invalid_input(pipeline: StableDiffusionXLPipeline) -> None:
    with pytest.raises(InvalidInput) as caught:
        encode_workloads(pipeline, ["x"], clip_skip=3, device=CPU)  # tiny-random has 2 layers
    assert caught.value.where == "clip_skip"


def test_workloads_are_encoded_separately_and_concatenated(pipeline: StableDiffusionXLPipeline) -> None:
    with torch.inference_mode():
        both = encode_workloads(pipeline, ["a lighthouse", "golden hour"], clip_skip=2, device=CPU)
        first = encode_workloads(pipeline, ["a lighthouse"], clip_skip=2, device=CPU)
        second = encode_workloads(pipeline, ["golden hour"], clip_skip=2, device=CPU)
    assert both.tokens.shape[1] == 154 and both.workloads == 2
    assert torch.equal(both.tokens, torch.cat([first.tokens, second.tokens], dim=1))
    assert torch.equal(both.pooled, first.pooled)


def test_tiling_token_sequences_leaves_cross_attention_unchanged() -> None:
    generator = torch.Generator().manual_seed(5)
    short, long = torch.randn(1, 77, 16, generator=generator), torch.randn(1, 154, 16, generator=generator)
    tiled_short, same_long = match_sequence_lengths(short, long)
    assert tiled_short.shape == same_long.shape == (1, 154, 16) and torch.equal(same_long, long)
    query = torch.randn(1, 10, 16, generator=generator)
    once = F.scaled_dot_product_attention(query, short, short)
    twice = F.scaled_dot_product_attention(query, tiled_short, tiled_short)
    assert torch.allclose(once, twice, atol=1e-6)
    three, two = match_sequence_lengths(torch.zeros(1, 231, 4), torch.zeros(1, 154, 4))
    assert three.shape[1] == two.shape[1] == 462


# -- engine ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> SDXLEngine:
    root: Path = tmp_path_factory.mktemp("denoise-engine")
    built = create_engine(EngineSettings(model="tiny-random", device="cpu"), root / "models", root / "cache")
    assert isinstance(built, SDXLEngine)
    built.load()
    return built


def _small(**overrides: object) -> GenerationRequest:
    return default_request(width=512, height=512, steps=4, **overrides)


def test_engine_records_the_refinements_and_the_encoded_workloads(engine: SDXLEngine) -> None:
    result = engine.generate(_small(prompt="a cat\non a sofa", extra_prompts=("hat",), negative="blurry"))
    extra = result.extra
    assert extra["full_prompt"] == ["a cat", "on a sofa", "hat"]
    assert extra["full_negative_prompt"] == ["blurry"]
    assert extra["positive_workloads"] == 3 and extra["negative_workloads"] == 1
    assert (extra["sharpness"], extra["adaptive_cfg"], extra["clip_skip"]) == (2.0, 7.0, 2)
    assert (extra["adm_scaler_positive"], extra["adm_scaler_negative"], extra["adm_scaler_end"]) == (
        1.5,
        0.8,
        0.3,
    )
    assert extra["sharpness_applied"] is True and extra["adaptive_cfg_applied"] is False
    assert extra["extra_prompts_mode"] == "separate"


def test_engine_at_cfg_one_encodes_no_negative(engine: SDXLEngine) -> None:
    result = engine.generate(_small(cfg=1.0))
    assert result.extra["negative_workloads"] == 0 and result.extra["sharpness_applied"] is False


def test_engine_uses_workloads_the_worker_filled_in(engine: SDXLEngine) -> None:
    from_fields = engine.generate(_small(prompt="ignored", positive_workloads=("a cat", "hat")))
    from_lines = engine.generate(_small(prompt="a cat", extra_prompts=("hat",)))
    assert from_fields.extra["full_prompt"] == ["a cat", "hat"]
    assert from_fields.image.tobytes() == from_lines.image.tobytes()


def test_engine_rejects_an_out_of_range_refinement_as_invalid_input(engine: SDXLEngine) -> None:
    with pytest.raises(InvalidInput) as caught:
        engine.generate(_small(adm_scaler_end=2.0))
    assert caught.value.where == "adm_scaler_end"


def test_unet_extras_of_several_providers_are_summed_or_combined() -> None:
    from fooocusd.engine.denoise import merge_unet_extras

    one = torch.ones(1, 2)
    merged = merge_unet_extras(
        [
            {"down_block_additional_residuals": [one, one], "mid_block_additional_residual": one},
            {"down_block_additional_residuals": [one, 2 * one], "added_cond_kwargs": {"image_embeds": [one]}},
            {"mid_block_additional_residual": 3 * one, "cross_attention_kwargs": {"scale": 0.5}},
            {},
        ]
    )
    assert [t.tolist() for t in merged["down_block_additional_residuals"]] == [[[2.0, 2.0]], [[3.0, 3.0]]]
    assert merged["mid_block_additional_residual"].tolist() == [[4.0, 4.0]]
    assert merged["added_cond_kwargs"]["image_embeds"][0] is one
    assert merged["cross_attention_kwargs"] == {"scale": 0.5}


def test_unet_extras_see_each_call_in_schedule_order_and_reach_the_unet() -> None:
    from fooocusd.engine.denoise import UNetCall, unet_noise_predictor

    seen: list[int] = []
    received: list[dict[str, object]] = []

    def fake_unet(model_input, timestep, **kwargs):  # type: ignore[no-untyped-def]
        received.append(kwargs)
        return (model_input,)

    def extras(call: UNetCall) -> dict[str, object]:
        seen.append(call.index)
        return {"added_cond_kwargs": {"image_embeds": call.index}} if call.index < 4 else {}

    predict = unet_noise_predictor(fake_unet, [extras], first_call_index=3)  # type: ignore[arg-type]
    x = torch.zeros(1, 4, 2, 2)
    for _ in range(2):
        predict(x, torch.tensor(1.0), torch.zeros(1, 2, 3), torch.zeros(1, 3), torch.zeros(1, 6))
    assert seen == [3, 4]
    assert received[0]["added_cond_kwargs"]["image_embeds"] == 3  # type: ignore[index]
    assert "image_embeds" not in received[1]["added_cond_kwargs"]  # type: ignore[operator]
