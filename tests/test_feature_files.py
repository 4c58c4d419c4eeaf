"""``fooocusd doctor``'s image-features row: which image actions and image-prompt types have their files."""

from __future__ import annotations

from pathlib import Path

from fooocusd.service.doctor import run_checks
from tests.daemon_harness import Sandbox


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _features(sandbox: Sandbox) -> tuple[str, str]:
    [check] = [check for check in run_checks(sandbox.settings()) if check.name == "image features"]
    return check.level, check.detail


def test_doctor_names_what_each_image_feature_lacks_by_its_fetch_name(sandbox: Sandbox) -> None:
    models = sandbox.root / "models"
    level, detail = _features(sandbox)
    assert level == "warn"
    assert detail.startswith("ready: none; upscale lacks RealESRGAN_x4plus; ")
    assert "; image prompts lacks ip-adapter-plus_sdxl_vit-h, clip_vision_vit_h; " in detail
    assert (
        "; face image prompts lacks ip-adapter-plus-face_sdxl_vit-h, clip_vision_vit_h, "
        "face_detection_yunet_2023mar; "
    ) in detail
    assert "; depth image prompts lacks controlnet-depth-sdxl-1.0, Depth-Anything-V2-Small-hf; " in detail
    assert "cpds image prompts: controlnet.cpds names no ControlNet" in detail
    assert detail.endswith(". `fooocusd models fetch NAME` downloads each")
    assert str(models) not in detail  # every file here is in the catalogue


def test_doctor_says_every_image_feature_is_ready_once_its_files_are_there(sandbox: Sandbox) -> None:
    models = sandbox.root / "models"
    for relative in (
        "upscale_models/RealESRGAN_x4plus.safetensors",
        "ipadapter/ip-adapter-plus_sdxl_vit-h.safetensors",
        "ipadapter/ip-adapter-plus-face_sdxl_vit-h.safetensors",
        "clip_vision/clip_vision_vit_h.safetensors",
        "face_detection/face_detection_yunet_2023mar.onnx",
        "controlnet/controlnet-canny-sdxl-1.0.safetensors",
        "controlnet/controlnet-depth-sdxl-1.0.safetensors",
        "depth_estimator/Depth-Anything-V2-Small-hf/config.json",
    ):
        _touch(models / relative)
    level, detail = _features(sandbox)
    assert (level, detail) == (
        "ok",
        "ready: upscale, image prompts, face image prompts, canny image prompts, depth image prompts; "
        "cpds image prompts: controlnet.cpds names no ControlNet",
    )
    # A configured cpds ControlNet and inpainting model are checked too.
    sandbox.write_config('inpaint_model = "inpaint-xl"\n[controlnet]\ncpds = "union"\n')  # [generation] first
    level, detail = _features(sandbox)
    assert level == "warn"
    assert "; inpainting model lacks inpaint-xl.safetensors (not in the catalogue: put it into " in detail
    assert "; cpds image prompts lacks union.safetensors (not in the catalogue: " in detail
