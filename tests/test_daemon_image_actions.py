"""Image jobs through the real daemon (tiny-random): vary, upscale, fast upscale, inpaint, outpaint."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.daemon_harness import Sandbox
from tests.image_helpers import drawn_scene, write_tiny_esrgan


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _only_output(sandbox: Sandbox) -> tuple[Image.Image, dict[str, Any]]:
    images = sandbox.images()
    assert len(images) == 1, sandbox.files(sandbox.failed)
    sidecar = json.loads(images[0].with_suffix(".json").read_text())
    with Image.open(images[0]) as image:
        return image.convert("RGB"), sidecar


def _drain_ok(sandbox: Sandbox) -> None:
    summary = sandbox.drain()
    errors = [p.read_text() for p in sandbox.files(sandbox.failed, "*.error.txt")]
    assert summary.ok and not errors, errors


def test_image_with_a_vary_toml_becomes_a_varied_image_with_its_source_recorded(sandbox: Sandbox) -> None:
    sandbox.write_config()
    picture = _png(drawn_scene((128, 96)))
    sandbox.drop("scene.png", picture)
    sandbox.drop("scene.toml", 'prompt = "a cottage at dusk"\naction = "vary_strong"\nsteps = 2\n')
    _drain_ok(sandbox)
    image, sidecar = _only_output(sandbox)
    assert image.size == (1152, 896)  # ceil 1024 at the input's 4:3 shape, sides ×64
    action = sidecar["image_action"]
    assert action["action"] == "vary_strong" and action["denoise"] == 0.85
    assert action["source_image"] == "scene.png"
    assert action["source_image_sha256"] == hashlib.sha256(picture).hexdigest()
    assert sorted(p.name for p in sandbox.files(sandbox.done)) == ["scene.png", "scene.toml"]


def test_upscale_2x_super_resolves_then_refines(sandbox: Sandbox) -> None:
    sandbox.write_config('upscale_model = "tiny-esrgan"')
    write_tiny_esrgan(sandbox.root / "models" / "upscale_models" / "tiny-esrgan.safetensors")
    sandbox.drop("small.png", _png(drawn_scene((48, 48))))
    sandbox.drop("small.txt", "crisp details\naction: upscale_2x\nsteps: 2\n")
    _drain_ok(sandbox)
    image, sidecar = _only_output(sandbox)
    assert image.size == (1024, 1024)  # 96×96 is under ceil 1024, so it is raised to it (Fooocus)
    action = sidecar["image_action"]
    assert action["upscale_model"] == "tiny-esrgan.safetensors" and action["upscale_factor"] == 2.0
    assert action["upscale_diffused"] is True and action["denoise"] == 0.382


def test_fast_upscale_is_super_resolution_alone_at_the_custom_factor(sandbox: Sandbox) -> None:
    sandbox.write_config()
    write_tiny_esrgan(sandbox.root / "models" / "upscale_models" / "tiny-esrgan.safetensors")
    sandbox.drop("small.png", _png(drawn_scene((40, 30))))
    sandbox.drop(
        "small.toml",
        'prompt = "x"\naction = "upscale_fast_2x"\nupscale_factor = 3\nupscale_model = "tiny-esrgan"\n',
    )
    _drain_ok(sandbox)
    image, sidecar = _only_output(sandbox)
    assert image.size == (120, 90)
    assert sidecar["image_action"]["upscale_diffused"] is False


def test_upscale_with_a_missing_model_fails_naming_the_file_and_folder(sandbox: Sandbox) -> None:
    sandbox.write_config()
    sandbox.drop("small.png", _png(drawn_scene((40, 30))))
    sandbox.drop("small.txt", "sharp\naction: upscale_fast_2x\n")
    assert not sandbox.drain().ok
    report = next(iter(sandbox.files(sandbox.failed, "*.error.txt"))).read_text()
    assert "RealESRGAN_x4plus" in report and "upscale_models" in report


def test_inpaint_with_a_mask_file_keeps_everything_outside_the_mask(sandbox: Sandbox) -> None:
    sandbox.write_config()
    source = drawn_scene((128, 96))
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (40, 30, 80, 70))
    sandbox.drop("room.png", _png(source))
    sandbox.drop("room.mask.png", _png(mask))
    sandbox.drop("room.txt", "a vase of flowers\nsteps: 2\n")
    _drain_ok(sandbox)
    image, sidecar = _only_output(sandbox)
    outside = np.asarray(mask) < 128
    assert np.array_equal(np.asarray(image)[outside], np.asarray(source)[outside])
    action = sidecar["image_action"]
    assert action["action"] == "inpaint" and action["mask"] == "room.mask.png"
    assert len(action["working_area"]) == 4


def test_outpaint_extends_the_chosen_sides(sandbox: Sandbox) -> None:
    sandbox.write_config()
    source = drawn_scene((96, 64))
    sandbox.drop("wide.png", _png(source))
    sandbox.drop(
        "wide.toml",
        'prompt = "a meadow"\naction = "outpaint"\noutpaint = ["left", "right"]\n'
        "outpaint_distance = 16\nsteps = 2\n",
    )
    _drain_ok(sandbox)
    image, sidecar = _only_output(sandbox)
    assert image.size == (128, 64)
    assert np.array_equal(np.asarray(image)[:, 16:112], np.asarray(source))
    assert sidecar["image_action"]["outpaint"] == ["left", "right"]


def test_example_inbox_reference_image_is_small_and_asks_for_vary_subtle() -> None:
    example = Path(__file__).resolve().parent.parent / "inbox_example"
    with Image.open(example / "garden-shed.png") as image:
        assert image.size == (256, 256)
    assert 'action = "vary_subtle"' in (example / "garden-shed.toml").read_text()
