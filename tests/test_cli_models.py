"""``fooocusd models list`` and ``fooocusd models fetch``, through the real CLI entry point."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fooocusd.cli import main
from tests.test_models_fetch import PAYLOAD, FakeHub, hub  # noqa: F401 (hub is a fixture)

SDXL_KEYS = ("conditioner.embedders.1.model.ln_final.weight", "model.diffusion_model.label_emb.0.0.weight")


def _safetensors(path: Path, keys: tuple[str, ...]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: torch.zeros(2) for key in keys}, str(path))
    return path


def _config(tmp_path: Path, roots: list[Path]) -> Path:
    config = tmp_path / "fooocusd.toml"
    listed = ", ".join(f'"{root}"' for root in roots)
    config.write_text(f'[paths]\nmodels = [{listed}]\nstate = "{tmp_path / "state"}"\n', encoding="utf-8")
    return config


def test_models_list_json_shows_every_root_kind_family_and_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "models"
    comfy = tmp_path / "ComfyUI"
    (comfy / "comfy").mkdir(parents=True)
    base = _safetensors(mine / "checkpoints" / "base.safetensors", SDXL_KEYS)
    sd15 = _safetensors(
        comfy / "models" / "checkpoints" / "SD1" / "v1-5.safetensors", ("cond_stage_model.transformer.x",)
    )
    lora = _safetensors(comfy / "models" / "loras" / "detail.safetensors", ("lora_unet_a.lora_down.weight",))
    config = _config(tmp_path, [mine, comfy])

    assert main(["models", "list", "--json", "--config", str(config)]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["roots"] == [
        {"path": str(mine), "layout": "models folder"},
        {"path": str(comfy), "layout": "comfyui"},
    ]
    rows = {row["path"]: row for row in listing["files"]}
    assert (rows[str(base)]["kind"], rows[str(base)]["family"]) == ("checkpoints", "sdxl")
    assert (rows[str(sd15)]["family"], rows[str(sd15)]["resolution"]) == ("sd15", 512)
    assert (rows[str(lora)]["kind"], rows[str(lora)]["family"]) == ("loras", "lora")
    assert rows[str(base)]["size"] == base.stat().st_size
    assert rows[str(base)]["sha256"] == ""  # not hashed unless asked
    # The name a job writes: below the kind's folder, without .safetensors.
    assert (rows[str(base)]["name"], rows[str(sd15)]["name"], rows[str(lora)]["name"]) == (
        "base",
        "SD1/v1-5",
        "detail",
    )


def test_models_list_says_a_pickle_is_not_loaded_without_allow_unsafe_pickle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "models" / "checkpoints" / "old.ckpt"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"not opened")
    config = _config(tmp_path, [tmp_path / "models"])

    assert main(["models", "list", "--json", "--config", str(config)]) == 0
    [row] = json.loads(capsys.readouterr().out)["files"]
    assert row["name"] == "old.ckpt"
    assert row["note"] == "a pickle: not loaded unless engine.allow_unsafe_pickle = true"
    assert main(["models", "list", "--config", str(config)]) == 0
    assert "allow_unsafe_pickle" in capsys.readouterr().out


def test_models_list_hash_computes_and_caches_sha256(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # long temp paths would otherwise fold inside the table
    base = _safetensors(tmp_path / "models" / "base.safetensors", SDXL_KEYS)
    config = _config(tmp_path, [tmp_path / "models"])
    expected = hashlib.sha256(base.read_bytes()).hexdigest()
    assert main(["models", "list", "--hash", "--json", "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["files"][0]["sha256"] == expected
    assert main(["models", "list", "--config", str(config)]) == 0  # the table, from the cache
    table = capsys.readouterr().out
    assert expected[:10] in table and "SDXL" in table and "base.safetensors" in table


def test_models_list_on_empty_folders_says_how_to_get_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "list", "--config", str(_config(tmp_path, [tmp_path / "none"]))]) == 0
    out = capsys.readouterr().out
    assert "no model files found" in out and "models fetch" in out and "juggernautXL_v8Rundiffusion" in out


def test_models_fetch_downloads_a_catalogue_entry_into_the_first_root(
    hub: FakeHub,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hub.add("lllyasviel/misc", "sdxl_lcm_lora.safetensors", PAYLOAD)
    first, second = tmp_path / "first", tmp_path / "second"
    config = _config(tmp_path, [first, second])
    assert main(["models", "fetch", "sdxl_lcm_lora", "--config", str(config)]) == 0
    target = first / "loras" / "sdxl_lcm_lora.safetensors"
    assert capsys.readouterr().out.strip() == str(target)
    assert target.read_bytes() == PAYLOAD
    # The verified hash went into the daemon's hash cache: listing needs no hashing.
    assert main(["models", "list", "--json", "--config", str(config)]) == 0
    rows = json.loads(capsys.readouterr().out)["files"]
    assert rows[0]["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()


def test_models_fetch_takes_several_names_or_a_preset_and_checks_every_name_before_downloading(
    hub: FakeHub,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hub.add("lllyasviel/misc", "sdxl_lcm_lora.safetensors", PAYLOAD)
    hub.add("opencv/face_detection_yunet", "face_detection_yunet_2023mar.onnx", PAYLOAD[::-1])
    hub.add("lllyasviel/fav_models", "fav/realisticStockPhoto_v20.safetensors", PAYLOAD)
    hub.add("mashb1t/fav_models", "fav/SDXL_FILM_PHOTOGRAPHY_STYLE_V1.safetensors", PAYLOAD[::-1])
    models = tmp_path / "models"
    fetch = ["models", "fetch", "--config", str(_config(tmp_path, [models]))]
    named = [*fetch, "sdxl_lcm_lora", "face_detection_yunet_2023mar"]
    assert main([*named, "nope"]) == 2  # the typo is found before anything is downloaded
    assert not models.exists() or not any(models.rglob("*.safetensors"))
    capsys.readouterr()
    assert main(named) == 0
    lora = models / "loras" / "sdxl_lcm_lora.safetensors"
    detector = models / "face_detection" / "face_detection_yunet_2023mar.onnx"
    assert capsys.readouterr().out.split() == [str(lora), str(detector)]
    assert lora.read_bytes() == PAYLOAD and detector.read_bytes() == PAYLOAD[::-1]

    # --preset: every file the preset uses and lacks (its checkpoint and film LoRA here).
    checkpoint = models / "checkpoints" / "realisticStockPhoto_v20.safetensors"
    assert main([*fetch, "--preset", "realistic"]) == 0
    film = models / "loras" / "SDXL_FILM_PHOTOGRAPHY_STYLE_V1.safetensors"
    assert capsys.readouterr().out.split() == [str(checkpoint), str(film)]
    assert checkpoint.read_bytes() == PAYLOAD
    assert main([*fetch, "--preset", "realistic"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "preset 'realistic' has every file it uses" in err
    assert main(fetch) == 2
    assert "name what to fetch" in capsys.readouterr().err


def test_models_fetch_of_an_unknown_name_lists_the_catalogue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, [tmp_path / "models"])
    assert main(["models", "fetch", "juggernaut", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "'juggernaut' is not in the model catalogue" in err
    assert "juggernautXL_v8Rundiffusion" in err and "sdxl_hyper_sd_4step_lora" in err


def test_models_list_names_a_model_saved_as_a_folder_by_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The depth estimator and a diffusers ControlNet are set by folder name (controlnet.*), so that is
    # what the listing must show, not the weights files inside them.
    depth = tmp_path / "models" / "depth_estimator" / "Depth-Anything-V2-Small-hf"
    _safetensors(depth / "model.safetensors", ("head.conv.weight",))
    (depth / "config.json").write_text('{"model_type": "depth_anything"}', encoding="utf-8")
    (depth / "preprocessor_config.json").write_text("{}", encoding="utf-8")
    canny = tmp_path / "models" / "controlnet" / "controlnet-canny-sdxl-1.0"
    _safetensors(canny / "diffusion_pytorch_model.fp16.safetensors", ("controlnet_cond_embedding.x",))
    (canny / "config.json").write_text('{"_class_name": "ControlNetModel"}', encoding="utf-8")
    config = _config(tmp_path, [tmp_path / "models"])

    assert main(["models", "list", "--json", "--config", str(config)]) == 0
    rows = {row["kind"]: row for row in json.loads(capsys.readouterr().out)["files"]}
    assert rows.keys() == {"depth_estimator", "controlnet"}
    estimator, controlnet = rows["depth_estimator"], rows["controlnet"]
    assert (estimator["name"], estimator["path"]) == (depth.name, str(depth))
    assert (estimator["family"], estimator["label"]) == ("transformers", "depth_anything (transformers)")
    assert estimator["size"] == sum(item.stat().st_size for item in depth.iterdir())
    assert (controlnet["name"], controlnet["family"]) == (canny.name, "controlnet")
