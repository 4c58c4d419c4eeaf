"""Control-image preprocessors on synthetic pictures: PyraCanny, CPDS, depth, and fitting to size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from fooocusd.engine.controlnet.models import ControlNetConfig, ControlNetModels
from fooocusd.engine.controlnet.preprocess import cpds, fit_to_size, pyracanny
from fooocusd.engine.model_dirs import ModelDirs


def _square(size: int = 128) -> Image.Image:
    image = Image.new("RGB", (size, size), (40, 40, 40))
    ImageDraw.Draw(image).rectangle((32, 32, 95, 95), fill=(220, 220, 220))
    return image


def _isoluminant_halves() -> Image.Image:
    """Red on the left, green on the right, of the same luminance: one grey for plain greyscale."""
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (200, 60, 60)
    red_luma = 0.299 * 200 + 0.587 * 60 + 0.114 * 60
    green = round((red_luma - 0.299 * 60 - 0.114 * 60) / 0.587)
    pixels[:, 32:] = (60, green, 60)
    return Image.fromarray(pixels)


def test_pyracanny_finds_the_edges_of_a_drawn_square_and_nothing_far_from_them() -> None:
    edges = np.asarray(pyracanny(_square()))[..., 0]
    assert edges.shape == (128, 128)
    assert edges[64, 30:35].max() > 200 and edges[30:35, 64].max() > 200  # left and top sides
    assert edges[94:99, 64].max() > 200 and edges[64, 94:99].max() > 200  # bottom and right sides
    assert edges[64, 56:72].max() == 0  # the middle of the square
    assert edges[4, 4] == 0 and edges[120, 120] == 0  # the background far from the square


def test_pyracanny_of_a_flat_image_is_black() -> None:
    assert np.asarray(pyracanny(Image.new("RGB", (96, 64), (90, 120, 30)))).max() == 0


def test_cpds_keeps_an_edge_between_equally_bright_colours_that_greyscale_loses() -> None:
    image = _isoluminant_halves()
    grey = np.asarray(image.convert("L")).astype(int)
    assert abs(grey[10, 5] - grey[10, 58]) <= 1  # plain greyscale: one flat grey
    structure = np.asarray(cpds(image))[..., 0].astype(int)
    assert abs(structure[10, 5] - structure[10, 58]) > 100
    assert structure.shape == (64, 64)


def test_fit_to_size_covers_the_target_and_crops_the_middle() -> None:
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    ImageDraw.Draw(wide).rectangle((0, 0, 49, 99), fill=(0, 0, 255))  # a blue left quarter
    fitted = fit_to_size(wide, 64, 64)
    assert fitted.size == (64, 64)
    assert fitted.getpixel((32, 32)) == (255, 0, 0)  # the middle is kept
    assert fitted.getpixel((0, 32))[2] < 128  # the blue quarter was cropped away


@pytest.fixture(scope="module")
def depth_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    root = tmp_path_factory.mktemp("models")
    folder = root / "depth_estimator" / "tiny-dpt"
    config = DPTConfig(
        image_size=32,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        backbone_out_indices=[0, 1, 2, 3],
        num_attention_heads=4,
        intermediate_size=37,
        neck_hidden_sizes=[16, 32, 64, 64],
        fusion_hidden_size=16,
        is_hybrid=False,
    )
    torch.manual_seed(0)
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(folder)
    return root


def test_depth_estimator_loads_from_its_folder_and_maps_an_image_at_its_size(depth_models: Path) -> None:
    models = ControlNetModels(
        ModelDirs.of(depth_models), depth_models / "h.json", ControlNetConfig(depth_estimator="tiny-dpt")
    )
    estimator = models.depth_estimator(device=torch.device("cpu"), dtype=torch.float32)
    depth = estimator(_square(48).resize((48, 40)))
    assert depth.size == (48, 40) and depth.mode == "RGB"
    pixels = np.asarray(depth)
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # a grey map, as depth ControlNets take
    assert models.depth_estimator(device=torch.device("cpu"), dtype=torch.float32) is estimator
