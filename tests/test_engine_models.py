"""Model resolution, refusal of unsafe files, and the model hash cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fooocusd.engine import models
from fooocusd.engine.models import (
    ModelLocation,
    autov2,
    checkpoint_family,
    file_sha256,
    require_sdxl_checkpoint,
    resolve_model,
)
from fooocusd.errors import ConfigError, ModelNotFound

SDXL_KEYS = (
    "model.diffusion_model.label_emb.0.0.weight",
    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
    "conditioner.embedders.1.model.ln_final.weight",
    "first_stage_model.decoder.conv_out.weight",
)


def _fake_checkpoint(path: Path, keys: tuple[str, ...] = SDXL_KEYS) -> Path:
    """A header-correct .safetensors with the given tensor names (the engine only reads the header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: torch.zeros(1) for key in keys}, str(path))
    return path


def test_tiny_random_is_only_chosen_by_name(tmp_path: Path) -> None:
    assert resolve_model("tiny-random", tmp_path) == ModelLocation(kind="tiny", name="tiny-random")


def test_empty_models_dir_says_exactly_where_to_put_a_checkpoint(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    with pytest.raises(ModelNotFound) as caught:
        resolve_model("", models_dir)
    error = caught.value
    assert isinstance(error, ConfigError)  # the daemon refuses to start
    text = error.explain()
    assert str(models_dir) in error.message
    assert str(models_dir / "sd_xl_base_1.0.safetensors") in error.hint
    assert "engine.model" in text
    assert 'model = "tiny-random"' in error.hint and "plumbing" in error.hint


def test_missing_models_dir_never_falls_back_to_tiny_random(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        resolve_model("", tmp_path / "does-not-exist")
    assert "tiny-random" in caught.value.hint  # mentioned as an option, never chosen


def test_named_model_that_is_missing_lists_where_it_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        resolve_model("juggernautXL_v8", tmp_path)
    assert "juggernautXL_v8" in caught.value.message
    assert str(tmp_path / "juggernautXL_v8.safetensors") in caught.value.where
    assert str(tmp_path) in caught.value.hint


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_checkpoints_are_refused_with_a_safetensors_hint(tmp_path: Path, suffix: str) -> None:
    (tmp_path / f"old_model{suffix}").write_bytes(b"\x80\x04not really a pickle")
    for name in (f"old_model{suffix}", "old_model", str(tmp_path / f"old_model{suffix}")):
        with pytest.raises(ModelNotFound) as caught:
            resolve_model(name, tmp_path)
        assert "arbitrary code" in caught.value.message
        assert ".safetensors" in caught.value.hint


def test_name_resolves_relative_to_models_dir_with_or_without_suffix(tmp_path: Path) -> None:
    checkpoint = _fake_checkpoint(tmp_path / "checkpoints" / "juggernautXL_v8.safetensors")
    for name in ("juggernautXL_v8", "juggernautXL_v8.safetensors", "checkpoints/juggernautXL_v8.safetensors"):
        location = resolve_model(name, tmp_path)
        assert location == ModelLocation(kind="single_file", name="juggernautXL_v8", path=checkpoint)
    assert resolve_model(str(checkpoint), tmp_path / "elsewhere").path == checkpoint


def test_diffusers_folder_is_recognised_by_its_model_index(tmp_path: Path) -> None:
    folder = tmp_path / "my-sdxl"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}", encoding="utf-8")
    assert resolve_model("my-sdxl", tmp_path) == ModelLocation(kind="diffusers", name="my-sdxl", path=folder)
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelNotFound, match=r"model_index\.json"):
        resolve_model("not-a-model", tmp_path)


def test_discovery_uses_the_only_sdxl_checkpoint_and_ignores_loras(tmp_path: Path) -> None:
    checkpoint = _fake_checkpoint(tmp_path / "checkpoints" / "base.safetensors")
    _fake_checkpoint(tmp_path / "detail_lora.safetensors", ("lora_unet_down_blocks_0.lora_down.weight",))
    assert resolve_model("", tmp_path).path == checkpoint


def test_discovery_with_several_checkpoints_asks_which_one(tmp_path: Path) -> None:
    _fake_checkpoint(tmp_path / "a.safetensors")
    _fake_checkpoint(tmp_path / "b.safetensors")
    with pytest.raises(ModelNotFound) as caught:
        resolve_model("", tmp_path)
    assert "a.safetensors" in caught.value.message and "b.safetensors" in caught.value.message
    assert "[engine] model" in caught.value.hint


def test_discovery_mentions_ignored_pickle_files(tmp_path: Path) -> None:
    (tmp_path / "model.ckpt").write_bytes(b"pickle")
    with pytest.raises(ModelNotFound) as caught:
        resolve_model("", tmp_path)
    assert "model.ckpt" in caught.value.message


@pytest.mark.parametrize(
    ("keys", "family"),
    [
        (SDXL_KEYS, "sdxl"),
        (
            ("conditioner.embedders.0.model.ln_final.weight", "model.diffusion_model.out.2.weight"),
            "sdxl_refiner",
        ),
        (("cond_stage_model.transformer.text_model.final_layer_norm.weight",), "sd1_or_sd2"),
        (("lora_unet_mid_block_attentions_0.lora_down.weight",), "lora"),
        (("something.else",), "unknown"),
    ],
)
def test_checkpoint_family_is_read_from_the_header(
    tmp_path: Path, keys: tuple[str, ...], family: str
) -> None:
    assert checkpoint_family(_fake_checkpoint(tmp_path / "m.safetensors", keys)) == family


def test_non_sdxl_checkpoint_is_refused_with_the_reason(tmp_path: Path) -> None:
    sd15 = _fake_checkpoint(tmp_path / "v1-5.safetensors", ("cond_stage_model.transformer.x",))
    with pytest.raises(ModelNotFound) as caught:
        require_sdxl_checkpoint(sd15)
    assert "Stable Diffusion 1.x/2.x" in caught.value.message and "SDXL" in caught.value.hint


def test_truncated_safetensors_is_reported_as_unreadable(tmp_path: Path) -> None:
    broken = tmp_path / "half.safetensors"
    broken.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    with pytest.raises(ModelNotFound, match="not a readable"):
        checkpoint_family(broken)


def test_sha256_is_computed_once_and_reused_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights" * 1000)
    cache = tmp_path / "cache" / "model_hashes.json"
    expected = hashlib.sha256(model.read_bytes()).hexdigest()
    assert file_sha256(model, cache) == expected
    assert cache.is_file()

    def must_not_hash(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("hashed again despite a valid cache entry")

    monkeypatch.setattr(models.hashlib, "file_digest", must_not_hash)
    assert file_sha256(model, cache) == expected


def test_sha256_cache_entry_is_ignored_when_the_file_changes(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    cache = tmp_path / "hashes.json"
    model.write_bytes(b"first")
    first = file_sha256(model, cache)
    model.write_bytes(b"second version")
    os.utime(model, ns=(1, 1))
    assert file_sha256(model, cache) == hashlib.sha256(b"second version").hexdigest() != first


def test_corrupt_hash_cache_is_rebuilt(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"x")
    cache = tmp_path / "hashes.json"
    cache.write_text("{ not json", encoding="utf-8")
    assert file_sha256(model, cache) == hashlib.sha256(b"x").hexdigest()


def test_autov2_is_the_first_ten_hex_characters() -> None:
    assert autov2("31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b") == "31e35c80fc"
