"""A single-file SDXL checkpoint loads offline through from_single_file and renders like the original."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fooocusd.engine.models import SDXL_CONFIG_DIR, file_sha256, resolve_model
from fooocusd.engine.sdxl import SDXLEngine, _default_scheduler
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from fooocusd.errors import InvalidInput, ModelNotFound
from tests.engine_helpers import default_request, write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("single_file")
    pipeline = build_tiny_sdxl_pipeline(_default_scheduler(SDXL_CONFIG_DIR))
    checkpoint = root / "models" / "tiny_sdxl.safetensors"
    checkpoint.parent.mkdir()
    write_tiny_checkpoint(pipeline, checkpoint, root / "config")
    return checkpoint, root / "config"


@pytest.fixture(autouse=True)
def one_cpu_thread() -> Iterator[None]:
    # tiny-random always runs on one CPU thread; bit-exact comparison needs the same reduction order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the engine tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_single_file_checkpoint_loads_offline_and_matches_the_in_memory_model(
    tiny_checkpoint: tuple[Path, Path], tmp_path: Path, no_network: None
) -> None:
    checkpoint, config_dir = tiny_checkpoint
    assert not list(config_dir.rglob("*.safetensors"))  # weights can only come from the checkpoint
    from_file = SDXLEngine(
        resolve_model("tiny_sdxl", checkpoint.parent),
        models_dir=checkpoint.parent,
        hash_cache=tmp_path / "hashes.json",
        device="cpu",
        config_dir=config_dir,
    )
    in_memory = SDXLEngine(
        resolve_model("tiny-random", tmp_path),
        models_dir=tmp_path,
        hash_cache=tmp_path / "hashes.json",
        device="cpu",
    )
    # tiny-random renders 1/8 of the requested size; ask the file-backed engine for that size directly.
    loaded = from_file.generate(default_request(steps=4, width=144, height=112, model=""))
    original = in_memory.generate(default_request(steps=4))

    assert loaded.image.size == original.image.size == (144, 112)
    assert np.array_equal(np.asarray(loaded.image), np.asarray(original.image))
    assert loaded.model_name == "tiny_sdxl" and loaded.model_path == str(checkpoint)
    assert loaded.model_sha256 == file_sha256(checkpoint, tmp_path / "other-cache.json")
    assert loaded.timings["load"] > 0
    assert json.loads((tmp_path / "hashes.json").read_text(encoding="utf-8"))  # hash was cached


def test_loading_does_not_leave_the_process_offline(
    tiny_checkpoint: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hub_constants

    checkpoint, config_dir = tiny_checkpoint
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    engine = SDXLEngine(
        resolve_model(str(checkpoint), tmp_path),
        models_dir=tmp_path,
        hash_cache=tmp_path / "hashes.json",
        device="cpu",
        config_dir=config_dir,
    )
    engine.load()
    assert hub_constants.HF_HUB_OFFLINE is False
    assert "HF_HUB_OFFLINE" not in os.environ


def test_a_non_sdxl_checkpoint_is_refused_before_loading(tmp_path: Path) -> None:
    sd15 = tmp_path / "v1-5-pruned.safetensors"
    save_file({"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(4)}, str(sd15))
    engine = SDXLEngine(
        resolve_model(str(sd15), tmp_path), models_dir=tmp_path, hash_cache=tmp_path / "h.json"
    )
    with pytest.raises(ModelNotFound, match=r"Stable Diffusion 1\.x/2\.x"):
        engine.load()


def test_a_damaged_sdxl_checkpoint_gives_a_download_again_hint(
    tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    checkpoint, config_dir = tiny_checkpoint
    damaged = tmp_path / "damaged.safetensors"
    data = checkpoint.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])  # header intact, tensors cut off
    engine = SDXLEngine(
        resolve_model(str(damaged), tmp_path),
        models_dir=tmp_path,
        hash_cache=tmp_path / "h.json",
        device="cpu",
        config_dir=config_dir,
    )
    with pytest.raises(ModelNotFound) as caught:
        engine.load()
    assert "damaged.safetensors" in caught.value.message and "download it again" in caught.value.hint


def test_job_can_switch_to_another_checkpoint_and_back(
    tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    checkpoint, config_dir = tiny_checkpoint
    engine = SDXLEngine(
        resolve_model("tiny-random", tmp_path),
        models_dir=checkpoint.parent,
        hash_cache=tmp_path / "h.json",
        device="cpu",
        config_dir=config_dir,
        configured_model="tiny-random",
    )
    switched = engine.generate(default_request(steps=1, width=144, height=112, model="tiny_sdxl"))
    assert switched.model_name == "tiny_sdxl" and switched.image.size == (144, 112)
    back = engine.generate(default_request(steps=1, model="tiny-random"))
    assert back.model_name == "tiny-random"
    with pytest.raises(InvalidInput):
        engine.generate(default_request(steps=1, model="missing.safetensors"))
