"""Deferred VAE decodes (``decode_lane.py``): the lane alone, then the tiny-random SDXL engine with
``overlap_decode = "on"`` on the CPU (``auto`` turns it on only for CUDA GPUs)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from PIL import Image

from fooocusd.engine.acceleration import AccelerationOptions, plan_acceleration
from fooocusd.engine.base import ImageTask
from fooocusd.engine.decode_lane import DecodeLane, DeferredImage
from fooocusd.engine.devices import HardwareFacts
from fooocusd.engine.sdxl import SDXLEngine
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from fooocusd.engine.unet_graphs import UNetGraphs
from tests.engine_helpers import ReplayByRerun, default_request, tiny_engine_with

CUDA = torch.device("cuda")  # a label for the planner only
GIB = 2**30


def _picture(shade: int) -> Image.Image:
    return Image.new("RGB", (4, 4), (shade, 0, 0))


# -- the lane alone --------------------------------------------------------------------------------


def test_a_deferred_decode_runs_once_on_the_first_thread_that_asks_for_the_picture() -> None:
    lane = DecodeLane()
    threads: list[str] = []

    def decode() -> Image.Image:
        threads.append(threading.current_thread().name)
        return _picture(7)

    deferred = lane.defer(decode, (4, 4))
    assert not deferred.done and lane.pending == 1
    asker = threading.Thread(target=deferred.result, name="publisher")
    asker.start()
    asker.join()

    assert deferred.done and lane.pending == 0
    assert deferred.result().getpixel((0, 0)) == (7, 0, 0)
    assert threads == ["publisher"], "the decode ran once, where the picture was first asked for"
    assert deferred.size == (4, 4) and deferred.seconds >= 0.0


def test_drain_runs_what_is_pending_in_order_and_keeps_an_error_for_the_picture_owner() -> None:
    lane = DecodeLane()
    order: list[int] = []

    def decode(shade: int) -> Image.Image:
        order.append(shade)
        if shade == 2:
            raise torch.cuda.OutOfMemoryError("no room for the decode")
        return _picture(shade)

    first, failing, last = (lane.defer(lambda shade=shade: decode(shade), (4, 4)) for shade in (1, 2, 3))
    lane.drain()  # the render thread: it must not see the failing decode's error

    assert order == [1, 2, 3] and lane.pending == 0
    assert first.result().getpixel((0, 0)) == (1, 0, 0) and last.result().getpixel((0, 0)) == (3, 0, 0)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="no room"):
        failing.result()
    assert order == [1, 2, 3], "a failed decode is not run again"


def test_drain_waits_for_a_decode_that_another_thread_is_running() -> None:
    lane = DecodeLane()
    started, release = threading.Event(), threading.Event()

    def slow_decode() -> Image.Image:
        started.set()
        release.wait(timeout=10)
        return _picture(5)

    deferred = lane.defer(slow_decode, (4, 4))
    publisher = threading.Thread(target=deferred.result)
    publisher.start()
    assert started.wait(timeout=10)
    drained = threading.Event()
    render = threading.Thread(target=lambda: (lane.drain(), drained.set()))
    render.start()

    assert not drained.wait(timeout=0.2), "drain returned while the decode was still running"
    release.set()
    assert drained.wait(timeout=10)
    publisher.join()
    render.join()
    assert deferred.result().getpixel((0, 0)) == (5, 0, 0)


def test_a_deferred_image_its_caller_dropped_is_never_decoded() -> None:
    lane = DecodeLane()
    ran: list[str] = []

    def decode(name: str) -> Image.Image:
        ran.append(name)
        return _picture(1)

    kept = lane.defer(lambda: decode("kept"), (4, 4))
    dropped = lane.defer(lambda: decode("dropped"), (4, 4))  # a cancelled job's image
    assert lane.pending == 2
    del dropped
    assert lane.pending == 1
    lane.drain()

    assert ran == ["kept"] and kept.done


@torch.inference_mode()
def test_a_cuda_graph_capture_first_runs_the_before_capture_hook_and_a_replay_does_not() -> None:
    unet = build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).unet.eval()
    calls: list[str] = []
    graphs = UNetGraphs(unet, ReplayByRerun(), before_capture=lambda: calls.append("drain"))
    generator = torch.Generator().manual_seed(0)
    config = unet.config
    pooled_width = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    inputs = (
        torch.randn(2, 4, 8, 8, generator=generator),
        torch.tensor(500.0),
        torch.randn(2, 77, config.cross_attention_dim, generator=generator),
        torch.randn(2, pooled_width, generator=generator),
        torch.tensor([[64, 64, 0, 0, 64, 64]] * 2, dtype=torch.float32),
    )
    predictor = graphs.predictor(unet)
    assert predictor is not None
    predictor(*inputs)
    predictor(*inputs)

    assert (graphs.captures, calls) == (1, ["drain"])


# -- planning --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "memory", "vram", "expected"),
    [
        (CUDA, 80 * GIB, "high", True),
        (CUDA, 20 * GIB, "high", True),
        (CUDA, 16 * GIB, "high", False),
        (CUDA, 12 * GIB, "high", False),
        (CUDA, 80 * GIB, "low", False),
        (torch.device("cpu"), None, "high", False),
    ],
)
def test_overlap_decode_auto_is_on_only_for_a_cuda_gpu_with_20_gib_in_high_vram_mode(
    device: torch.device, memory: int | None, vram: str, expected: bool
) -> None:
    hardware = HardwareFacts(device.type, (9, 0) if device.type == "cuda" else None, memory, True)
    plan = plan_acceleration(AccelerationOptions(vram=vram), device, torch.bfloat16, hardware=hardware)
    assert plan.overlap_decode is expected
    assert plan.record()["overlap_decode"] is expected


def test_overlap_decode_on_says_why_low_vram_mode_decodes_at_once() -> None:
    hardware = HardwareFacts("cuda", (8, 6), 8 * GIB, True)
    options = AccelerationOptions(vram="low", overlap_decode="on")
    plan = plan_acceleration(options, CUDA, torch.bfloat16, hardware=hardware)
    assert plan.overlap_decode is False
    assert any(note.startswith("overlap_decode off: low-VRAM mode") for note in plan.notes), plan.notes
    off = plan_acceleration(
        AccelerationOptions(overlap_decode="off"), CUDA, torch.bfloat16, hardware=hardware
    )
    assert off.overlap_decode is False


# -- the engine ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory: pytest.TempPathFactory) -> SDXLEngine:
    return tiny_engine_with(tmp_path_factory.mktemp("overlap"), overlap_decode="on")


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_deferred_decodes_give_the_pixels_of_immediate_ones_and_record_their_time(
    overlapping: SDXLEngine,
) -> None:
    requests = [default_request(seed=seed, steps=2) for seed in (3, 4)]
    immediate = [overlapping.generate(request) for request in requests]
    deferred = overlapping.generate_batch(requests, defer_decode=True)

    assert overlapping.defers_decode
    assert all(isinstance(each.image, DeferredImage) for each in deferred)
    assert all("decode" not in each.timings for each in deferred)
    for now, later in zip(immediate, deferred, strict=True):
        picture = later.finished()
        assert (later.width, later.height) == picture.size == (now.width, now.height)
        assert np.abs(_pixels(picture) - _pixels(now.finished())).max() <= 1  # batch of 2 vs 1
        assert later.timings["decode"] > 0 and later.timings["total"] >= later.timings["decode"]


def test_an_engine_without_overlap_or_a_caller_that_does_not_ask_decodes_at_once(
    tmp_path: Path, overlapping: SDXLEngine
) -> None:
    plain = tiny_engine_with(tmp_path)  # overlap_decode auto: off on the CPU
    assert not plain.defers_decode
    assert isinstance(
        plain.generate_batch([default_request(steps=1)], defer_decode=True)[0].image, Image.Image
    )
    assert isinstance(overlapping.generate_batch([default_request(steps=1)])[0].image, Image.Image)


def test_a_render_that_uses_the_vae_itself_first_finishes_the_pending_decodes(
    overlapping: SDXLEngine,
) -> None:
    pending = overlapping.generate_batch([default_request(seed=5, steps=2)], defer_decode=True)[0]
    image = pending.image
    assert isinstance(image, DeferredImage) and not image.done

    source = Image.new("RGB", (128, 128), (90, 120, 200))
    vary = dataclasses.replace(
        default_request(steps=2), width=128, height=128, image_task=ImageTask("vary", source, 0.6)
    )
    overlapping.generate_batch([vary], defer_decode=True)  # an image task encodes: never deferred

    assert image.done, "the image task ran while a decode was still pending"
    assert isinstance(pending.finished(), Image.Image)


def test_a_model_unload_finishes_the_pending_decodes(tmp_path: Path) -> None:
    engine = tiny_engine_with(tmp_path, overlap_decode="on")
    pending = engine.generate_batch([default_request(seed=6, steps=1)], defer_decode=True)[0]
    engine.unload()
    image = pending.image
    assert isinstance(image, DeferredImage) and image.done
    assert pending.finished().size == (pending.width, pending.height)
