"""Batched generation on tiny-random: one UNet batch gives each image the pixels it gets alone."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fooocusd.engine.base import GeneratedImage, GenerationRequest, ImagePrompt, ImageTask
from fooocusd.engine.batching import (
    SHARED_SEQUENCE_CLASS,
    BatchKey,
    batch_key,
    batch_limit,
    generate_batch,
    resolve_batch_size,
    sequence_class,
)
from fooocusd.engine.expansion import PromptExpansion
from fooocusd.engine.factory import create_engine
from fooocusd.engine.models import TINY_REFINER
from fooocusd.engine.router import FamilyRouter
from fooocusd.engine.styles import Workloads
from fooocusd.errors import OutOfMemory
from fooocusd.settings import EngineSettings
from tests.engine_helpers import default_request, write_tiny_sd1x_checkpoint

LONG_PROMPT = "a lighthouse, " + ", ".join(f"detail number {i}" for i in range(20))  # 2 blocks (> 75 tokens)
STEPS = 4


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FamilyRouter]:
    root = tmp_path_factory.mktemp("batching")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only wait on each other
    built = create_engine(
        EngineSettings(model="tiny-random", device="cpu", batch_size=3), root / "models", root / "cache"
    )
    assert isinstance(built, FamilyRouter)
    built.load()
    yield built
    torch.set_num_threads(threads)


def _three_requests(**shared: Any) -> list[GenerationRequest]:
    """Three images that may share a batch: different prompts (one over 75 tokens), negatives and seeds."""
    base = default_request(steps=STEPS, **shared)
    return [
        replace(base, prompt="a red fox in snow", seed=11),
        replace(base, prompt=LONG_PROMPT, negative="blurry, dark, low quality", seed=22),
        replace(base, prompt="a harbour at night", extra_prompts=("warm light",), seed=33),
    ]


def _assert_same_pixels(alone: GeneratedImage, batched: GeneratedImage) -> None:
    mine, theirs = np.asarray(alone.image, dtype=np.int16), np.asarray(batched.image, dtype=np.int16)
    assert mine.shape == theirs.shape
    difference = np.abs(mine - theirs)
    assert difference.max() <= 2
    assert (difference == 0).mean() > 0.95


@pytest.mark.parametrize(
    ("sampler", "scheduler", "cfg"),
    [
        ("euler", "karras", 8.0),  # sharpness and adaptive CFG (cfg > 7) both act per image
        ("dpmpp_2m_sde_gpu", "karras", 4.0),  # fresh per-step noise from each image's generator
        ("dpmpp_sde", "karras", 4.0),  # a seeded Brownian tree per image
        ("euler", "karras", 1.0),  # no negative: the UNet sees the positive rows only
    ],
)
def test_a_batch_renders_each_image_as_it_renders_alone(
    engine: FamilyRouter, sampler: str, scheduler: str, cfg: float
) -> None:
    requests = _three_requests(sampler=sampler, scheduler=scheduler, cfg=cfg)
    assert len({batch_key(engine, request) for request in requests}) == 1

    batched = generate_batch(engine, requests)

    assert len(batched) == 3
    for request, image in zip(requests, batched, strict=True):
        _assert_same_pixels(engine.generate(request), image)


def test_prompts_of_different_lengths_share_a_batch_and_keep_their_own_records(engine: FamilyRouter) -> None:
    requests = _three_requests(sampler="euler", scheduler="karras")
    images = generate_batch(engine, requests)

    assert [image.extra["full_prompt"][0] for image in images] == [r.prompt for r in requests]
    assert images[2].extra["positive_workloads"] == 2
    assert images[1].extra["full_negative_prompt"] == ["blurry, dark, low quality"]
    assert {image.extra["batch_size"] for image in images} == {3}
    assert len({image.timings["denoise"] for image in images}) == 1  # the shared run, split evenly
    assert all(image.timings["encode"] > 0 for image in images)  # each image encodes its own prompts


def test_generate_is_a_batch_of_one(engine: FamilyRouter) -> None:
    request = default_request(steps=STEPS, seed=5)
    alone = engine.generate(request)
    [batched] = generate_batch(engine, [request])

    assert np.array_equal(np.asarray(alone.image), np.asarray(batched.image))
    assert alone.extra["batch_size"] == 1 == batched.extra["batch_size"]


def test_a_batch_reports_one_progress_callback_per_step_of_the_shared_run(engine: FamilyRouter) -> None:
    calls: list[tuple[int, int]] = []
    generate_batch(engine, _three_requests(), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(step, STEPS) for step in range(1, STEPS + 1)]


def test_requests_with_different_keys_are_refused_naming_the_field(engine: FamilyRouter) -> None:
    first, second, _ = _three_requests()
    with pytest.raises(ValueError, match="steps differs"):
        generate_batch(engine, [first, replace(second, steps=STEPS + 1)])
    with pytest.raises(ValueError, match="loras differs"):
        engine.generate_batch([first, replace(second, loras=(("detail", 0.5),))])


def test_an_image_action_in_a_batch_is_refused_with_the_reason(engine: FamilyRouter) -> None:
    first, second, _ = _three_requests()
    vary = ImageTask(kind="vary", image=Image.new("RGB", (first.width, first.height)), strength=0.5)
    with pytest.raises(ValueError, match=r"request 2 of 2 must render alone: it is an image action \(vary\)"):
        generate_batch(engine, [first, replace(second, image_task=vary)])


def test_out_of_memory_in_a_batch_is_the_retryable_out_of_memory(
    engine: FamilyRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted(*_: object, **__: object) -> torch.Tensor:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    pipeline = engine._pipeline
    assert pipeline is not None
    monkeypatch.setattr(pipeline.unet, "forward", exhausted)
    monkeypatch.setattr(engine, "_batch_ceiling", 0)  # restored afterwards for the other tests
    with pytest.raises(OutOfMemory):
        generate_batch(engine, _three_requests())
    assert batch_limit(engine) == 1  # a batch of 3 ran out: batches of at most 3 // 2 from now on


# -- keys ------------------------------------------------------------------------------------------


def test_prompts_negatives_styles_and_seeds_do_not_change_the_key(engine: FamilyRouter) -> None:
    request = default_request()
    others = [
        replace(request, prompt="something else entirely", seed=99),
        replace(request, negative="ugly", styles=("Fooocus Sharp",), extra_prompts=("at dusk",)),
        replace(request, positive_workloads=("a", "b"), negative_workloads=("c",)),
    ]
    assert all(engine.batch_key(other) == engine.batch_key(request) for other in others)


@pytest.mark.parametrize(
    "change",
    [
        {"steps": 31},
        {"width": 1024, "height": 1024},
        {"sampler": "euler"},
        {"scheduler": "normal"},
        {"cfg": 5.0},
        {"sharpness": 3.0},
        {"adaptive_cfg": 6.0},
        {"adm_scaler_positive": 1.4},
        {"adm_scaler_negative": 0.9},
        {"adm_scaler_end": 0.2},
        {"clip_skip": 1},
        {"loras": (("detail", 0.5),)},
        {"vae": "other-vae"},
    ],
)
def test_every_shared_setting_is_part_of_the_key(engine: FamilyRouter, change: dict[str, object]) -> None:
    request = default_request()
    assert engine.batch_key(replace(request, **change)) != engine.batch_key(request)  # type: ignore[arg-type]


def test_image_actions_and_image_prompts_render_alone(engine: FamilyRouter) -> None:
    request = default_request()
    image = Image.new("RGB", (request.width, request.height))
    alone = [
        replace(request, image_task=ImageTask(kind="upscale", image=image, strength=0.4)),
        replace(request, image_prompts=(ImagePrompt("pyracanny", image, weight=1.0, stop_at=0.5),)),
    ]
    assert [engine.batch_key(each) for each in alone] == [None, None]


@pytest.mark.parametrize("cfg", [4.0, 1.0])
def test_a_batch_with_a_refiner_switch_renders_each_image_as_it_renders_alone(
    engine: FamilyRouter, cfg: float
) -> None:
    requests = _three_requests(sampler="euler", scheduler="karras", cfg=cfg)
    requests = [replace(request, refiner=TINY_REFINER, refiner_switch=0.5) for request in requests]
    assert engine.batch_key(requests[0]) is not None

    batched = generate_batch(engine, requests)

    for request, image in zip(requests, batched, strict=True):
        assert image.extra["refiner"]["switch_step"] == STEPS // 2
        _assert_same_pixels(engine.generate(request), image)


def test_prompt_length_classes_keep_batched_sequences_as_short_as_the_longest_image_alone() -> None:
    assert {sequence_class(counts) for counts in ([1], [1, 2], [4, 1], [2, 4])} == {SHARED_SEQUENCE_CLASS}
    assert sequence_class([3, 1]) == 3
    assert sequence_class([3, 2]) == 6


def test_a_prompt_of_three_blocks_does_not_share_a_batch_with_one_of_one(engine: FamilyRouter) -> None:
    request = default_request(negative="")
    three_blocks = replace(request, extra_prompts=("second line", "third line"))
    two_blocks = replace(request, prompt=LONG_PROMPT)
    assert engine.batch_key(three_blocks) != engine.batch_key(request)
    assert engine.batch_key(two_blocks) == engine.batch_key(request)


def test_expanded_fooocus_v2_jobs_batch_with_each_other_and_with_plain_jobs(engine: FamilyRouter) -> None:
    expansion = PromptExpansion(tiny_random=True)
    prompts = ("a lighthouse on a rocky coast at dusk", "a red fox in fresh snow, morning light", "a tram")
    keys = {engine.batch_key(default_request(negative="blurry"))}  # jobs without expansion too
    for index in range(12):
        prompt = f"{prompts[index % len(prompts)]}, job {index + 1}"
        workloads = Workloads(
            positive=[prompt], negative=["blurry"], styles_applied=[], expansion=True, expansion_prompt=prompt
        )
        expanded = expansion.apply(workloads, seed=index + 1)
        assert len(expanded.positive) == 2  # the prompt and its expansion
        request = default_request(
            prompt=prompt,
            seed=index + 1,
            positive_workloads=tuple(expanded.positive),
            negative_workloads=tuple(expanded.negative),
        )
        keys.add(engine.batch_key(request))
    assert len(keys) == 1 and None not in keys


def test_an_unknown_job_model_renders_alone_and_fails_there(engine: FamilyRouter) -> None:
    assert engine.batch_key(default_request(model="no-such-model.safetensors")) is None


def test_sd1x_models_render_alone_and_cannot_be_batched(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_tiny_sd1x_checkpoint("sd15", models / "checkpoints", "tiny_sd15.safetensors")
    router = create_engine(
        EngineSettings(model="tiny-random", device="cpu", batch_size=2), models, tmp_path / "cache"
    )
    request = default_request(model="tiny_sd15.safetensors")

    assert batch_key(router, request) is None
    with pytest.raises(ValueError, match="must render alone"):
        generate_batch(router, [request, replace(request, seed=2)])


# -- limits and the fallback for engines that cannot batch -------------------------------------------


def test_batch_size_auto_is_four_on_a_gpu_in_high_vram_mode_and_one_elsewhere() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_batch_size("auto", device=cuda, vram="high") == 4
    gib = 2**30
    assert resolve_batch_size("auto", device=cuda, vram="high", total_memory=80 * gib) == 4
    assert resolve_batch_size("auto", device=cuda, vram="high", total_memory=24 * gib) == 4
    assert resolve_batch_size("auto", device=cuda, vram="high", total_memory=16 * gib) == 2
    assert resolve_batch_size("auto", device=cuda, vram="high", total_memory=12 * gib) == 1
    assert resolve_batch_size(8, device=cuda, vram="high", total_memory=12 * gib) == 8  # as configured
    assert resolve_batch_size("auto", device=cuda, vram="low") == 1
    assert resolve_batch_size("auto", device=cpu, vram="high") == 1
    assert resolve_batch_size(3, device=cpu, vram="high") == 3
    assert resolve_batch_size(8, device=cuda, vram="low") == 1


def test_engine_batch_limit_follows_engine_batch_size(engine: FamilyRouter, tmp_path: Path) -> None:
    assert batch_limit(engine) == 3
    default = create_engine(EngineSettings(model="tiny-random", device="cpu"), tmp_path, tmp_path)
    assert batch_limit(default) == 1


@pytest.mark.parametrize("value", [0, 17, "many"])
def test_engine_batch_size_setting_is_auto_or_one_to_sixteen(value: object) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        EngineSettings(batch_size=value)  # type: ignore[arg-type]


class _SingleImageEngine:
    """An engine with only ``generate`` (like the worker's test fakes)."""

    def __init__(self) -> None:
        self.rendered: list[int] = []

    def generate(self, request: GenerationRequest, progress: object = None, stop: object = None) -> Any:
        self.rendered.append(request.seed)
        return request.seed


def test_an_engine_without_batching_renders_one_at_a_time() -> None:
    single = _SingleImageEngine()
    requests = [default_request(seed=seed) for seed in (1, 2, 3)]

    assert batch_limit(single) == 1
    assert batch_key(single, requests[0]) is None
    assert generate_batch(single, requests) == [1, 2, 3]
    assert single.rendered == [1, 2, 3]


def test_batch_keys_name_the_first_differing_field() -> None:
    mine = BatchKey((("model", "a"), ("steps", 30), ("cfg", 4.0)))
    assert mine.differing_field(BatchKey((("model", "a"), ("steps", 20), ("cfg", 5.0)))) == "steps"
    assert mine.differing_field(mine) is None
