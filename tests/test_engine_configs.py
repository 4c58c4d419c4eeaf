"""The shipped SDXL base configs and CLIP tokenizers: right architecture, right token ids, offline."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from fooocusd.engine.models import SDXL_CONFIG_DIR

# Published parameter counts of SDXL base 1.0 (shared/reference/sdxl-performance.md §2.1).
PUBLISHED_MILLIONS = {"unet": 2567.46, "text_encoder": 123.06, "text_encoder_2": 694.66, "vae": 83.65}
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat" in OpenAI CLIP's BPE


def _millions(module: torch.nn.Module) -> float:
    return round(sum(parameter.numel() for parameter in module.parameters()) / 1e6, 2)


def test_shipped_configs_build_sdxl_base_with_the_published_parameter_counts() -> None:
    with torch.device("meta"):
        counts = {
            "unet": _millions(
                UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SDXL_CONFIG_DIR / "unet"))
            ),
            "vae": _millions(AutoencoderKL.from_config(AutoencoderKL.load_config(SDXL_CONFIG_DIR / "vae"))),
            "text_encoder": _millions(
                CLIPTextModel(CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder"))
            ),
            "text_encoder_2": _millions(
                CLIPTextModelWithProjection(
                    CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder_2")
                )
            ),
        }
    assert counts == PUBLISHED_MILLIONS


def test_model_index_names_every_sdxl_component_the_loader_needs() -> None:
    index = json.loads((SDXL_CONFIG_DIR / "model_index.json").read_text(encoding="utf-8"))
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    for component in (
        "unet",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "scheduler",
    ):
        assert component in index
        assert (SDXL_CONFIG_DIR / component).is_dir()


@pytest.mark.parametrize("folder", ["tokenizer", "tokenizer_2"])
def test_shipped_tokenizer_gives_the_known_clip_ids_offline(folder: str) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(SDXL_CONFIG_DIR / folder, local_files_only=True)
    assert tokenizer("a photo of a cat").input_ids == CAT_IDS
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77


def test_second_tokenizer_pads_with_exclamation_mark_like_sdxl() -> None:
    first = CLIPTokenizer.from_pretrained(SDXL_CONFIG_DIR / "tokenizer", local_files_only=True)
    second = CLIPTokenizer.from_pretrained(SDXL_CONFIG_DIR / "tokenizer_2", local_files_only=True)
    assert first.pad_token == "<|endoftext|>" and first.pad_token_id == 49407
    assert second.pad_token == "!" and second.pad_token_id == 0
    padded = second("a cat", padding="max_length", max_length=77).input_ids
    assert padded[:4] == [49406, 320, 2368, 49407] and set(padded[4:]) == {0}


def test_long_prompts_are_truncated_to_clip_context() -> None:
    tokenizer = CLIPTokenizer.from_pretrained(SDXL_CONFIG_DIR / "tokenizer", local_files_only=True)
    ids = tokenizer("cat " * 200, truncation=True, max_length=tokenizer.model_max_length).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407


def test_tokenizer_credits_ship_next_to_the_vocabulary() -> None:
    for folder in ("tokenizer", "tokenizer_2"):
        credits = (SDXL_CONFIG_DIR / folder / "CREDITS.md").read_text(encoding="utf-8")
        assert "OpenAI" in credits and "MIT" in credits and "open_clip" in credits
