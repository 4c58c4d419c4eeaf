"""Model folders: fooocusd's own, Fooocus, A1111 and ComfyUI layouts, several roots, search order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from loguru import logger
from safetensors.torch import save_file

from fooocusd.engine.model_dirs import ModelDirs, root_layout
from fooocusd.engine.models import ModelLocation, resolve_model
from fooocusd.errors import ModelNotFound
from fooocusd.settings import Settings, load_settings

SDXL_KEYS = (
    "model.diffusion_model.label_emb.0.0.weight",
    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
    "conditioner.embedders.1.model.ln_final.weight",
)


def _file(path: Path, keys: tuple[str, ...] = SDXL_KEYS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: torch.zeros(1) for key in keys}, str(path))
    return path


def _fooocus(root: Path) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "entry_with_update.py").write_text("", encoding="utf-8")
    return root


def _a1111(root: Path) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "webui.py").write_text("", encoding="utf-8")
    return root


def _comfyui(root: Path) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "comfy").mkdir()
    return root


def test_fooocus_install_root_uses_its_models_folder(tmp_path: Path) -> None:
    root = _fooocus(tmp_path / "Fooocus")
    checkpoint = _file(root / "models" / "checkpoints" / "juggernautXL_v8Rundiffusion.safetensors")
    lora = _file(
        root / "models" / "loras" / "sd_xl_offset_example-lora_1.0.safetensors",
        ("lora_unet_x.lora_down.weight",),
    )
    dirs = ModelDirs.of(root)
    assert root_layout(root) == "fooocus"
    assert dirs.find("checkpoints", "juggernautXL_v8Rundiffusion") == checkpoint
    assert dirs.find("loras", "sd_xl_offset_example-lora_1.0") == lora
    assert dirs.folders("upscale_models")[0] == root / "models" / "upscale_models"
    assert dirs.folders("prompt_expansion") == [root / "models" / "prompt_expansion"]


def test_a1111_install_root_uses_its_capitalised_folders_and_root_embeddings(tmp_path: Path) -> None:
    root = _a1111(tmp_path / "stable-diffusion-webui")
    checkpoint = _file(root / "models" / "Stable-diffusion" / "ponyDiffusionV6XL.safetensors")
    lycoris = _file(root / "models" / "LyCORIS" / "style.safetensors", ("lora_unet_x.hada_w1_a",))
    vae = _file(root / "models" / "VAE" / "sdxl_vae.safetensors", ("decoder.conv_in.weight",))
    upscaler = root / "models" / "ESRGAN" / "4x_foo.pth"
    upscaler.parent.mkdir(parents=True)
    upscaler.write_bytes(b"x")
    embedding = _file(root / "embeddings" / "bad_hands.safetensors", ("emb_params",))
    dirs = ModelDirs.of(root)
    assert root_layout(root) == "a1111"
    assert dirs.find("checkpoints", "ponyDiffusionV6XL") == checkpoint
    assert dirs.find("loras", "style") == lycoris
    assert dirs.find("vae", "sdxl_vae") == vae
    assert dirs.find("upscale_models", "4x_foo.pth") == upscaler
    assert dirs.find("embeddings", "bad_hands") == embedding
    assert resolve_model("ponyDiffusionV6XL", root).path == checkpoint


def test_comfyui_install_root_and_nested_checkpoints(tmp_path: Path) -> None:
    root = _comfyui(tmp_path / "ComfyUI")
    nested = _file(root / "models" / "checkpoints" / "SDXL" / "realistic" / "juggernaut.safetensors")
    adapter = _file(root / "models" / "ipadapter" / "ip-adapter-plus_sdxl_vit-h.safetensors", ("ip",))
    dirs = ModelDirs.of(root)
    assert root_layout(root) == "comfyui"
    assert dirs.find("checkpoints", "juggernaut") == nested
    assert dirs.find("checkpoints", "SDXL/realistic/juggernaut") == nested
    assert dirs.find("ipadapter", "ip-adapter-plus_sdxl_vit-h") == adapter
    assert resolve_model("juggernaut", root) == ModelLocation("single_file", "juggernaut", nested)
    assert resolve_model("", root).path == nested  # discovery looks into subfolders too


def test_a_models_folder_of_another_program_can_be_given_directly(tmp_path: Path) -> None:
    models = _a1111(tmp_path / "webui") / "models"
    checkpoint = _file(models / "Stable-diffusion" / "a.safetensors")
    assert root_layout(models) == "models folder"
    assert ModelDirs.of(models).find("checkpoints", "a") == checkpoint


def test_a_folder_named_models_without_a_program_beside_it_is_a_plain_models_folder(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    assert root_layout(tmp_path) == "models folder"
    assert ModelDirs.of(tmp_path).folders("loras")[0] == tmp_path / "loras"


def test_roots_are_searched_in_the_order_given(tmp_path: Path) -> None:
    first, second = tmp_path / "first", _comfyui(tmp_path / "ComfyUI")
    in_second = _file(second / "models" / "loras" / "detail.safetensors", ("lora_unet_x.lora_down.weight",))
    dirs = ModelDirs.of([first, second])
    assert dirs.find("loras", "detail") == in_second
    in_first = _file(first / "loras" / "detail.safetensors", ("lora_unet_x.lora_down.weight",))
    assert dirs.find("loras", "detail") == in_first
    assert dirs.download_folder("loras") == first / "loras"
    assert dirs.folders("loras")[:3] == [first / "loras", first / "Lora", first / "LyCORIS"]


def test_a_direct_match_in_a_later_root_beats_a_nested_one_in_an_earlier_root(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _file(first / "checkpoints" / "old" / "base.safetensors")
    direct = _file(second / "checkpoints" / "base.safetensors")
    assert ModelDirs.of([first, second]).find("checkpoints", "base") == direct


def test_a_nested_name_in_two_places_is_an_error_that_lists_both(tmp_path: Path) -> None:
    one = _file(tmp_path / "checkpoints" / "a" / "base.safetensors")
    two = _file(tmp_path / "checkpoints" / "b" / "base.safetensors")
    with pytest.raises(ModelNotFound) as caught:
        ModelDirs.of(tmp_path).find("checkpoints", "base")
    assert str(one) in caught.value.where and str(two) in caught.value.where
    assert "a/base.safetensors" in caught.value.hint


def test_missing_file_names_every_folder_searched_and_where_to_put_it(tmp_path: Path) -> None:
    root = _a1111(tmp_path / "webui")
    with pytest.raises(ModelNotFound) as caught:
        ModelDirs.of([tmp_path / "mine", root]).find("loras", "detail")
    assert str(root / "models" / "Lora") in caught.value.where
    assert str(tmp_path / "mine" / "loras") in caught.value.hint


def test_partial_downloads_and_hidden_files_are_not_listed(tmp_path: Path) -> None:
    _file(tmp_path / "loras" / ".detail.safetensors.part", ("lora_unet_x.lora_down.weight",))
    real = _file(tmp_path / "loras" / "detail.safetensors", ("lora_unet_x.lora_down.weight",))
    (tmp_path / "loras" / "notes.txt").write_text("not a model", encoding="utf-8")
    assert list(ModelDirs.of(tmp_path).files("loras")) == [real]


def test_a_transformers_model_folder_is_one_entry_found_by_name_even_when_nested(tmp_path: Path) -> None:
    depth = tmp_path / "depth_estimator" / "vendor" / "Depth-Anything-V2-Small-hf"
    _file(depth / "model.safetensors", ("head.weight",))
    (depth / "config.json").write_text('{"model_type": "depth_anything"}', encoding="utf-8")
    no_weights = tmp_path / "depth_estimator" / "half-copied"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}", encoding="utf-8")
    dirs = ModelDirs.of(tmp_path)
    assert list(dirs.files("depth_estimator")) == [depth]
    assert dirs.locate("depth_estimator", depth.name, ()) == depth
    assert dirs.name_for("depth_estimator", depth) == "vendor/Depth-Anything-V2-Small-hf"


def test_settings_accept_one_models_folder_or_a_list(tmp_path: Path) -> None:
    single = tmp_path / "single.toml"
    single.write_text(f'[paths]\nmodels = "{tmp_path / "m"}"\n', encoding="utf-8")
    assert load_settings(single, environ={}).settings.paths.resolved().models == (tmp_path / "m",)
    several = tmp_path / "several.toml"
    several.write_text(f'[paths]\nmodels = ["{tmp_path / "a"}", "{tmp_path / "b"}"]\n', encoding="utf-8")
    resolved = load_settings(several, environ={}).settings.paths.resolved()
    assert resolved.models == (tmp_path / "a", tmp_path / "b")
    env = {"FOOOCUSD_PATHS__MODELS": f'["{tmp_path / "x"}", "{tmp_path / "y"}"]'}
    assert load_settings(None, environ=env).settings.paths.resolved().models[1] == tmp_path / "y"
    assert Settings().paths.resolved().models == (Path("~/fooocusd/models").expanduser(),)


def test_pickle_checkpoints_load_only_when_allowed_and_then_with_a_warning(tmp_path: Path) -> None:
    pickle_file = tmp_path / "checkpoints" / "legacy.ckpt"
    pickle_file.parent.mkdir()
    state = {key: torch.zeros(1) for key in SDXL_KEYS}
    torch.save({"state_dict": state, "global_step": 1}, pickle_file)
    with pytest.raises(ModelNotFound) as caught:
        resolve_model("legacy", tmp_path)
    assert "arbitrary code" in caught.value.message and "allow_unsafe_pickle" in caught.value.hint
    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(str(message)), level="WARNING")
    try:
        location = resolve_model("legacy", tmp_path, allow_pickle=True)
    finally:
        logger.remove(sink)
    assert location == ModelLocation("single_file", "legacy", pickle_file)
    assert any("legacy.ckpt" in line and "weights_only" in line for line in warnings)
    assert resolve_model("", tmp_path, allow_pickle=True).path == pickle_file  # its header is read too
    with pytest.raises(ModelNotFound, match="allow_unsafe_pickle"):
        resolve_model("", tmp_path)
