"""Prompt workloads encoded once and looked up for later images (``encoding_cache.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fooocusd.engine.encoding_cache import EncodingCache, tensor_bytes
from fooocusd.engine.models import TINY_MODEL, resolve_model
from fooocusd.engine.sdxl import SDXLEngine
from tests.engine_helpers import default_request


def _counting(results: dict[str, object]) -> tuple[list[str], object]:
    calls: list[str] = []

    def encode_for(key: str):
        def encode() -> object:
            calls.append(key)
            return results[key]

        return encode

    return calls, encode_for


def test_a_workload_is_encoded_once_and_later_lookups_return_the_same_tensors() -> None:
    cache = EncodingCache()
    kept = (torch.ones(1, 77, 8), torch.ones(1, 4))
    calls, encode_for = _counting({"negative": kept})
    first = cache.encoded("negative", encode_for("negative"))
    second = cache.encoded("negative", encode_for("negative"))
    assert calls == ["negative"]
    assert first is kept and second is kept
    assert (cache.hits, cache.misses) == (1, 1)


def test_the_least_recently_used_encodings_go_first_when_the_budget_is_full() -> None:
    block = torch.zeros(1, 77, 8)  # 2,464 bytes
    cache = EncodingCache(budget_bytes=3 * tensor_bytes(block))
    results = {name: block.clone() for name in "abcd"}
    calls, encode_for = _counting(results)
    for name in "abc":
        cache.encoded(name, encode_for(name))
    cache.encoded("a", encode_for("a"))  # a is now the most recent: b is the oldest
    cache.encoded("d", encode_for("d"))  # over budget: b goes
    assert len(cache) == 3 and cache.bytes_held == 3 * tensor_bytes(block)
    calls.clear()
    for name in "acd":
        cache.encoded(name, encode_for(name))
    assert calls == []
    cache.encoded("b", encode_for("b"))
    assert calls == ["b"]


def test_an_encoding_larger_than_the_whole_budget_is_returned_but_not_kept() -> None:
    cache = EncodingCache(budget_bytes=100)
    calls, encode_for = _counting({"long": torch.zeros(1, 231, 8)})
    cache.encoded("long", encode_for("long"))
    cache.encoded("long", encode_for("long"))
    assert calls == ["long", "long"] and len(cache) == 0


def test_attaching_another_pipeline_forgets_every_encoding() -> None:
    cache = EncodingCache()
    calls, encode_for = _counting({"negative": torch.ones(2)})
    cache.encoded("negative", encode_for("negative"))
    cache.attach(object())
    cache.encoded("negative", encode_for("negative"))
    assert calls == ["negative", "negative"]


# -- through the tiny SDXL engine --------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> SDXLEngine:
    work = tmp_path_factory.mktemp("encodings")
    location = resolve_model(TINY_MODEL, work / "models")
    engine = SDXLEngine(location, models_dir=work / "models", hash_cache=work / "hashes.json", device="cpu")
    engine.load()
    return engine


@contextmanager
def encoder_runs(engine: SDXLEngine) -> Iterator[list[str]]:
    """One entry per forward pass of either text encoder."""
    pipeline = engine._pipeline
    assert pipeline is not None
    runs: list[str] = []
    handles = [
        encoder.register_forward_hook(lambda *_, name=name: runs.append(name))
        for name, encoder in (("clip-l", pipeline.text_encoder), ("clip-g", pipeline.text_encoder_2))
    ]
    try:
        yield runs
    finally:
        for handle in handles:
            handle.remove()


def _pixels(engine: SDXLEngine, **overrides: object) -> np.ndarray:
    return np.asarray(engine.generate(default_request(steps=2, **overrides)).image)


def test_the_next_job_with_the_same_negative_encodes_only_its_new_prompt(engine: SDXLEngine) -> None:
    engine.encodings.clear()
    _pixels(engine, prompt="a lighthouse on a cliff at dawn", negative="blurry, text")
    with encoder_runs(engine) as runs:
        _pixels(engine, prompt="a red fox in fresh snow", negative="blurry, text", seed=7)
    assert sorted(runs) == ["clip-g", "clip-l"]  # one workload: the new prompt
    with encoder_runs(engine) as runs:
        _pixels(engine, prompt="a red fox in fresh snow", negative="blurry, text", seed=8)
    assert runs == []


def test_an_image_from_kept_encodings_is_pixel_for_pixel_the_freshly_encoded_one(engine: SDXLEngine) -> None:
    request = {"prompt": "an old tram in the rain\n(golden hour:1.3)", "negative": "blurry", "seed": 3}
    engine.encodings.clear()
    fresh = _pixels(engine, **request)
    assert len(engine.encodings) == 3  # two prompt lines and the negative, each its own workload
    kept = _pixels(engine, **request)
    assert engine.encodings.hits >= 3
    assert np.array_equal(kept, fresh)


def test_clip_skip_is_part_of_what_identifies_an_encoding(engine: SDXLEngine) -> None:
    engine.encodings.clear()
    _pixels(engine, prompt="a quiet harbour", clip_skip=2)
    with encoder_runs(engine) as runs:
        _pixels(engine, prompt="a quiet harbour", clip_skip=1)
    assert runs  # the other layer's hidden states: encoded again


def test_a_batch_of_one_jobs_images_encodes_the_shared_lines_once(engine: SDXLEngine) -> None:
    engine.encodings.clear()
    base = default_request(steps=2, prompt="a lighthouse\nfilm grain", negative="blurry")
    requests = [replace(base, seed=seed, extra_prompts=(f"variation {seed}",)) for seed in (1, 2, 3)]
    with encoder_runs(engine) as runs:
        engine.generate_batch(requests)
    # shared: "a lighthouse", "film grain", "blurry"; then one expansion-like line per image
    assert len(runs) == 2 * (3 + 3)


def test_unloading_the_model_forgets_its_encodings(tmp_path: Path) -> None:
    location = resolve_model(TINY_MODEL, tmp_path / "models")
    engine = SDXLEngine(
        location, models_dir=tmp_path / "models", hash_cache=tmp_path / "h.json", device="cpu"
    )
    engine.generate(default_request(steps=1))
    assert len(engine.encodings) > 0
    engine.unload()
    assert len(engine.encodings) == 0


def test_freeing_memory_after_running_out_forgets_the_kept_encodings(engine: SDXLEngine) -> None:
    _pixels(engine, prompt="a windmill")
    assert len(engine.encodings) > 0
    engine.free_memory()
    assert len(engine.encodings) == 0 and engine.encodings.bytes_held == 0
