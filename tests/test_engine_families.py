"""Model families from headers alone, and the shipped SD 1.5 / SD 2.1 configs loading tiny checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from fooocusd.engine.families import CheckpointHeader, detect_family, family_from_header
from fooocusd.engine.models import checkpoint_family
from tests.engine_helpers import save_ldm_checkpoint, shrunk_sd1x_config_dir, tiny_sd1x_pipeline

CONFIGS = Path(__file__).resolve().parent.parent / "fooocusd" / "engine" / "configs"
UNET_SD = "model.diffusion_model."
CROSS_K = UNET_SD + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def _header(shapes: dict[str, tuple[int, ...]], **metadata: str) -> CheckpointHeader:
    return CheckpointHeader(shapes=shapes, metadata=metadata)


@pytest.mark.parametrize(
    ("shapes", "family"),
    [
        (
            {
                "conditioner.embedders.1.model.ln_final.weight": (1280,),
                UNET_SD + "label_emb.0.0.weight": (1280, 2816),
            },
            "sdxl",
        ),
        ({"conditioner.embedders.0.model.ln_final.weight": (1280,)}, "sdxl_refiner"),
        ({"cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,)}, "sd15"),
        ({"cond_stage_model.model.ln_final.weight": (1024,)}, "sd2"),
        ({CROSS_K: (320, 768)}, "sd15"),  # a UNet-only file: the cross-attention width decides
        ({CROSS_K: (320, 1024)}, "sd2"),
        ({UNET_SD + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048)}, "sdxl"),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, "lora"),
        ({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 320)}, "lora"),
        ({"lora_te1_text_model_encoder_layers_0_mlp_fc1.hada_w1_a": (4, 768)}, "lora"),
        ({"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3)}, "vae"),
        (
            {
                "first_stage_model.encoder.conv_in.weight": (1,),
                "first_stage_model.decoder.conv_in.weight": (1,),
            },
            "vae",
        ),
        ({"control_model.input_hint_block.0.weight": (16, 3, 3, 3)}, "controlnet"),
        ({"controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3)}, "controlnet"),
        ({"lora_controlnet": (0,), "input_blocks.0.0.up": (1,)}, "controlnet"),
        ({"emb_params": (2, 768)}, "embedding"),
        ({"clip_l": (2, 768), "clip_g": (2, 1280)}, "embedding"),
        ({"something.else": (1,)}, "unknown"),
    ],
)
def test_family_is_read_from_tensor_names_and_shapes(shapes: dict[str, tuple[int, ...]], family: str) -> None:
    assert family_from_header(_header(shapes)).family == family


SD2_TEXT = {"cond_stage_model.model.ln_final.weight": (1024,)}


@pytest.mark.parametrize(
    ("shapes", "metadata", "file_name", "prediction", "resolution", "guessed"),
    [
        ({**SD2_TEXT, "v_pred": ()}, {}, "x.safetensors", "v_prediction", 768, False),
        (SD2_TEXT, {"modelspec.prediction_type": "epsilon"}, "x.safetensors", "epsilon", 512, False),
        (
            SD2_TEXT,
            {"modelspec.architecture": "stable-diffusion-v2-768-v"},
            "x.safetensors",
            "v_prediction",
            768,
            False,
        ),
        (SD2_TEXT, {}, "v2-1_768-ema-pruned.safetensors", "v_prediction", 768, False),
        (SD2_TEXT, {}, "v2-1_512-ema-pruned.safetensors", "epsilon", 512, False),
        (SD2_TEXT, {}, "sd21-base.safetensors", "epsilon", 512, False),
        (SD2_TEXT, {}, "my_finetune.safetensors", "v_prediction", 768, True),
    ],
)
def test_sd2_prediction_type_follows_the_documented_rule(
    shapes: dict[str, tuple[int, ...]],
    metadata: dict[str, str],
    file_name: str,
    prediction: str,
    resolution: int,
    guessed: bool,
) -> None:
    info = family_from_header(_header(shapes, **metadata), file_name=file_name)
    assert (info.family, info.prediction, info.resolution, info.guessed) == (
        "sd2",
        prediction,
        resolution,
        guessed,
    )
    assert info.label.startswith("SD 2.x (") and info.label.endswith("?)") == guessed


def test_sd15_and_sdxl_predict_noise_unless_marked_v_pred() -> None:
    sd15 = family_from_header(_header({"cond_stage_model.transformer.x": (1,)}))
    assert (sd15.prediction, sd15.resolution, sd15.label) == ("epsilon", 512, "SD 1.5")
    marked = family_from_header(_header({"conditioner.embedders.1.model.x": (1,), "v_pred": ()}))
    assert (marked.family, marked.prediction, marked.label) == ("sdxl", "v_prediction", "SDXL (v)")


def test_checkpoint_family_keeps_its_coarse_names(tmp_path: Path) -> None:
    path = tmp_path / "sd2.safetensors"
    save_file({"cond_stage_model.model.ln_final.weight": torch.zeros(4)}, str(path))
    assert checkpoint_family(path) == "sd1_or_sd2"


def test_pickle_files_are_only_opened_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"cond_stage_model.transformer.x": torch.zeros(2)}}, path)
    assert detect_family(path).family == "unknown"
    assert detect_family(path, allow_pickle=True).family == "sd15"


@pytest.mark.parametrize(
    ("folder", "family", "prediction", "resolution"),
    [
        ("sd15", "sd15", "epsilon", 512),
        ("sd21", "sd2", "v_prediction", 768),
        ("sdxl_base", "sdxl", "epsilon", 1024),
    ],
)
def test_shipped_config_folders_are_recognised_as_their_family(
    folder: str, family: str, prediction: str, resolution: int
) -> None:
    info = detect_family(CONFIGS / folder)
    assert (info.family, info.prediction, info.resolution) == (family, prediction, resolution)


@pytest.mark.parametrize(
    ("folder", "unet", "text_encoder", "pad"),
    [("sd15", 859.52, 123.06, "<|endoftext|>"), ("sd21", 865.91, 340.39, "!")],
)
def test_shipped_configs_have_the_published_architecture(
    folder: str, unet: float, text_encoder: float, pad: str
) -> None:
    root = CONFIGS / folder
    with torch.device("meta"):
        modules = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder")),
        }
    millions = {name: round(sum(p.numel() for p in m.parameters()) / 1e6, 2) for name, m in modules.items()}
    assert millions == {"unet": unet, "vae": 83.65, "text_encoder": text_encoder}
    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.pad_token == pad


# -- tiny single-file round trips through the shipped configs --------------------------------------


@pytest.mark.parametrize(
    ("family", "detected", "prediction"), [("sd15", "sd15", "epsilon"), ("sd21", "sd2", "v_prediction")]
)
def test_tiny_ldm_checkpoint_loads_offline_through_the_shipped_configs(
    tmp_path: Path, family: str, detected: str, prediction: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config_dir = shrunk_sd1x_config_dir(family, tmp_path / "config")
    original = tiny_sd1x_pipeline(config_dir)
    checkpoint = tmp_path / f"tiny_{family}.safetensors"
    save_ldm_checkpoint(original, family, checkpoint)
    assert detect_family(checkpoint).family == detected

    loaded = StableDiffusionPipeline.from_single_file(
        str(checkpoint), config=str(config_dir), local_files_only=True, safety_checker=None
    )
    loaded.set_progress_bar_config(disable=True)
    assert loaded.scheduler.config.prediction_type == prediction
    for name in ("unet", "vae", "text_encoder"):
        expected, actual = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[key], actual[key]) for key in expected), name

    image = loaded("a cat", num_inference_steps=1, height=64, width=64, output_type="pt").images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
