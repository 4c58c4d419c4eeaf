"""CUDA graphs for the text encoders (``encoder_graphs.py``), checked on the CPU.

As in test_engine_unet_graphs.py, a double of the capture layer (``ReplayByRerun``) stands in for
``torch.cuda.CUDAGraph`` with the same contract; the tiny SDXL's real CLIP encoders, the engine and
the bookkeeping around them are real.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from peft import LoraConfig, inject_adapter_in_model

from fooocusd.engine.encoder_graphs import EncoderGraphs, encoder_outputs
from fooocusd.engine.graph_capture import active_adapter_layers
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from tests.engine_helpers import ReplayByRerun, default_request, tiny_engine_with


@pytest.fixture(scope="module")
def encoders() -> tuple[torch.nn.Module, torch.nn.Module]:
    pipeline = build_tiny_sdxl_pipeline(EulerDiscreteScheduler())
    return pipeline.text_encoder.eval(), pipeline.text_encoder_2.eval()


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(0, 1000, (1, 77), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def test_replayed_encoders_give_the_eager_outputs_for_every_new_prompt(
    encoders: tuple[torch.nn.Module, torch.nn.Module],
) -> None:
    graphs = EncoderGraphs(ReplayByRerun())
    for seed in range(3):
        for encoder in encoders:
            hidden, first = graphs.outputs(encoder, _ids(seed), clip_skip=2)
            expected_hidden, expected_first = encoder_outputs(encoder, _ids(seed), clip_skip=2)
            assert torch.equal(hidden, expected_hidden) and torch.equal(first, expected_first)
    assert graphs.captures == 2  # one per encoder
    assert graphs.replays == 6
    assert graphs.record()["text_encoder_graphs"] == 2


@torch.inference_mode()
def test_each_clip_skip_is_a_graph_of_its_own(encoders: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    graphs = EncoderGraphs(ReplayByRerun())
    clip_l = encoders[0]
    for clip_skip in (1, 2, 1):
        hidden, _ = graphs.outputs(clip_l, _ids(4), clip_skip=clip_skip)
        assert torch.equal(hidden, encoder_outputs(clip_l, _ids(4), clip_skip=clip_skip)[0])
    assert graphs.captures == 2


@torch.inference_mode()
@pytest.mark.parametrize("backend", [ReplayByRerun(fail="operation not permitted when stream is capturing"),
                                     ReplayByRerun(corrupt=True)])  # fmt: skip
def test_an_encoder_whose_graph_fails_or_replays_wrong_runs_eagerly_and_says_why(
    encoders: tuple[torch.nn.Module, torch.nn.Module], backend: ReplayByRerun
) -> None:
    graphs = EncoderGraphs(backend)
    clip_g = encoders[1]
    for _ in range(2):
        hidden, first = graphs.outputs(clip_g, _ids(5), clip_skip=2)
        expected_hidden, expected_first = encoder_outputs(clip_g, _ids(5), clip_skip=2)
        assert torch.equal(hidden, expected_hidden) and torch.equal(first, expected_first)
    (note,) = graphs.record()["text_encoder_graph_eager_buckets"]
    assert "CLIPTextModelWithProjection at CLIP skip 2" in note
    assert graphs.captures == 0 and graphs.replays == 0


@torch.inference_mode()
def test_new_token_rows_drop_the_graphs_that_read_the_old_embedding_table() -> None:
    clip_l = build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).text_encoder.eval()
    graphs = EncoderGraphs(ReplayByRerun())
    graphs.outputs(clip_l, _ids(6), clip_skip=2)
    rows = clip_l.get_input_embeddings().weight.shape[0]
    clip_l.resize_token_embeddings(rows + 1)  # what loading an embedding does
    hidden, _ = graphs.outputs(clip_l, _ids(6), clip_skip=2)
    assert torch.equal(hidden, encoder_outputs(clip_l, _ids(6), clip_skip=2)[0])
    assert graphs.captures == 2


def test_an_encoder_running_lora_layers_is_not_graphed() -> None:
    clip_l = build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).text_encoder.eval()
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["q_proj"]), clip_l, adapter_name="ink")
    assert active_adapter_layers(clip_l) > 0
    graphs = EncoderGraphs(ReplayByRerun())
    with torch.inference_mode():
        graphs.outputs(clip_l, _ids(7), clip_skip=2)
    assert graphs.captures == 0 and graphs.replays == 0  # its scale is a number a capture would freeze


def test_the_engine_encodes_through_the_graphs_to_the_same_image_and_drops_them_on_unload(
    tmp_path: Path,
) -> None:
    plain = tiny_engine_with(tmp_path)
    graphed = tiny_engine_with(tmp_path)
    graphed._accelerator.encoder_graphs = EncoderGraphs(ReplayByRerun())
    request = default_request(seed=5, steps=3, prompt="a (lighthouse:1.2) at dusk\nfilm grain")
    expected = np.asarray(plain.generate(request).image)
    np.testing.assert_array_equal(np.asarray(graphed.generate(request).image), expected)
    record = graphed.describe()["acceleration"]
    assert record["text_encoder_graphs"] == 2
    # two prompt lines, the negative, and the weighting's empty reference: each through both encoders
    assert record["text_encoder_graph_replays"] == 8
    graphed.unload()
    assert graphed._accelerator.encoder_graphs is None
