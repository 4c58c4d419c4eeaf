"""Test helpers for the engine: tiny single-file SDXL checkpoints and ready-made requests.

``write_tiny_checkpoint`` turns an in-memory (diffusers-layout) SDXL pipeline into the single-file
layout real SDXL checkpoints use (Stability's sgm keys: ``model.diffusion_model.*``,
``first_stage_model.*``, ``conditioner.embedders.{0,1}.*``), so tests can load it through the real
``from_single_file`` path. It is the inverse of diffusers' own sgm→diffusers converter, written for
any number of UNet/VAE levels.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import save_file

from fooocusd.engine.base import GenerationRequest
from fooocusd.engine.models import SDXL_CONFIG_DIR
from fooocusd.engine.sdxl import SDXLEngine

_UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION_PARTS = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def default_request(**overrides: object) -> GenerationRequest:
    """The Fooocus default job: 1152×896, 30 steps, CFG 4, DPM++ 2M SDE (GPU) + Karras."""
    request = GenerationRequest(
        prompt="a lighthouse on a cliff at dawn",
        negative="blurry",
        seed=1234,
        width=1152,
        height=896,
        steps=30,
        cfg=4.0,
        sampler="dpmpp_2m_sde_gpu",
        scheduler="karras",
        model="tiny-random",
    )
    return replace(request, **overrides)  # type: ignore[arg-type]


def write_tiny_checkpoint(pipeline: StableDiffusionXLPipeline, checkpoint: Path, config_dir: Path) -> None:
    """Save ``pipeline`` as one sgm-layout ``.safetensors`` file plus a weightless config folder."""
    save_sgm_checkpoint(pipeline, checkpoint)

    pipeline.save_pretrained(config_dir, safe_serialization=True)
    # Only configs and tokenizers may come from the folder; the weights must come from the checkpoint.
    for weights in config_dir.rglob("*.safetensors"):
        weights.unlink()
    # Load prompts through the tokenizer files fooocusd ships, exactly as a real checkpoint would.
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(config_dir / name)
        shutil.copytree(SDXL_CONFIG_DIR / name, config_dir / name)
    _drop_nonessential_index_entries(config_dir)


def save_sgm_checkpoint(pipeline: StableDiffusionXLPipeline, checkpoint: Path) -> None:
    """Write ``pipeline``'s weights in the single-file (sgm/ldm) layout that model sites publish."""
    state: dict[str, torch.Tensor] = {}
    state.update(_prefixed("model.diffusion_model.", _unet_to_sgm(pipeline)))
    state.update(_prefixed("first_stage_model.", _vae_to_sgm(pipeline)))
    state.update(_prefixed("conditioner.embedders.0.transformer.", _clip_to_sgm(pipeline)))
    state.update(_prefixed("conditioner.embedders.1.model.", open_clip_to_ldm(pipeline.text_encoder_2)))
    save_file(
        {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}, str(checkpoint)
    )


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in tensors.items()}


def _rename(state: dict[str, torch.Tensor], prefixes: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Rename by the longest matching diffusers prefix; every key must be covered."""
    ordered = sorted(prefixes, key=lambda pair: len(pair[0]), reverse=True)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for old, new in ordered:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            raise KeyError(f"no sgm name for {key}")
    return out


def _unet_to_sgm(pipeline: StableDiffusionXLPipeline) -> dict[str, torch.Tensor]:
    unet = pipeline.unet
    per_level = unet.config.layers_per_block + 1
    levels = len(unet.config.block_out_channels)
    prefixes: list[tuple[str, str]] = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for level in range(levels):
        for layer in range(per_level - 1):
            block = per_level * level + layer + 1
            prefixes.append((f"down_blocks.{level}.resnets.{layer}.", f"input_blocks.{block}.0."))
            prefixes.append((f"down_blocks.{level}.attentions.{layer}.", f"input_blocks.{block}.1."))
        for layer in range(per_level):
            block = per_level * level + layer
            prefixes.append((f"up_blocks.{level}.resnets.{layer}.", f"output_blocks.{block}.0."))
            prefixes.append((f"up_blocks.{level}.attentions.{layer}.", f"output_blocks.{block}.1."))
        if level < levels - 1:
            prefixes.append(
                (f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{per_level * (level + 1)}.0.op.")
            )
            has_attention = hasattr(unet.up_blocks[level], "attentions")
            slot = 2 if has_attention else 1
            prefixes.append(
                (
                    f"up_blocks.{level}.upsamplers.0.conv.",
                    f"output_blocks.{per_level * level + per_level - 1}.{slot}.conv.",
                )
            )
    state = {}
    for key, value in unet.state_dict().items():
        if ".resnets." in key or key.startswith("mid_block.resnets"):
            for old, new in _UNET_RESNET_PARTS.items():
                key = key.replace(f".{old}.", f".{new}.")
        state[key] = value
    return _rename(state, prefixes)


def _vae_to_sgm(pipeline: StableDiffusionXLPipeline) -> dict[str, torch.Tensor]:
    vae = pipeline.vae
    levels = len(vae.config.block_out_channels)
    prefixes: list[tuple[str, str]] = [
        ("encoder.conv_in.", "encoder.conv_in."),
        ("encoder.conv_out.", "encoder.conv_out."),
        ("encoder.conv_norm_out.", "encoder.norm_out."),
        ("decoder.conv_in.", "decoder.conv_in."),
        ("decoder.conv_out.", "decoder.conv_out."),
        ("decoder.conv_norm_out.", "decoder.norm_out."),
        ("quant_conv.", "quant_conv."),
        ("post_quant_conv.", "post_quant_conv."),
    ]
    for side in ("encoder", "decoder"):
        prefixes.append((f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1."))
        prefixes.append((f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2."))
        prefixes.append((f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1."))
    for level in range(levels):
        prefixes.append((f"encoder.down_blocks.{level}.resnets.", f"encoder.down.{level}.block."))
        prefixes.append((f"encoder.down_blocks.{level}.downsamplers.0.", f"encoder.down.{level}.downsample."))
        mirrored = levels - 1 - level
        prefixes.append((f"decoder.up_blocks.{level}.resnets.", f"decoder.up.{mirrored}.block."))
        prefixes.append((f"decoder.up_blocks.{level}.upsamplers.0.", f"decoder.up.{mirrored}.upsample."))
    state = {}
    for key, value in vae.state_dict().items():
        key = key.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid_block.attentions." in key:
            for old, new in _VAE_ATTENTION_PARTS.items():
                key = key.replace(f".{old}.", f".{new}.")
            if value.ndim == 2:  # sgm stores these projections as 1×1 convolutions
                value = value[:, :, None, None]
        state[key] = value
    return _rename(state, prefixes)


def _clip_to_sgm(pipeline: StableDiffusionXLPipeline) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 flattened CLIPTextModel; real checkpoints keep the ``text_model.`` level.
    state = pipeline.text_encoder.state_dict()
    return {
        key if key.startswith("text_model.") else f"text_model.{key}": value for key, value in state.items()
    }


def _drop_nonessential_index_entries(config_dir: Path) -> None:
    # save_pretrained lists optional components (image encoder, feature extractor) as null; harmless,
    # but keep the folder as close to the shipped one as possible.
    index_file = config_dir / "model_index.json"
    index = json.loads(index_file.read_text(encoding="utf-8"))
    for name in ("image_encoder", "feature_extractor"):
        if index.get(name) == [None, None]:
            del index[name]
    index_file.write_text(json.dumps(index, indent=2), encoding="utf-8")


# -- tiny SD 1.5 / SD 2.1 single-file checkpoints ----------------------------------------------------

from diffusers import StableDiffusionPipeline  # noqa: E402 - appended section

SHIPPED_CONFIGS = SDXL_CONFIG_DIR.parent
"""``fooocusd/engine/configs``: ``sd15`` and ``sd21`` hold the SD 1.5 / SD 2.1 diffusers configs."""


def shrunk_sd1x_config_dir(family: str, target: Path) -> Path:
    """The shipped ``sd15``/``sd21`` folder with only the sizes made tiny (block types, projections,
    tokenizer and scheduler kept), so a checkpoint built from it loads through the real code path."""
    shutil.copytree(SHIPPED_CONFIGS / family, target)
    width = 32 if family == "sd15" else 48
    sizes: dict[str, dict[str, object]] = {
        "unet": {
            "block_out_channels": [16, 16, 32, 32],
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "cross_attention_dim": width,
            "sample_size": 8,
            "attention_head_dim": 4 if family == "sd15" else [2, 2, 4, 4],
        },
        "vae": {
            "block_out_channels": [16] * 4,
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "sample_size": 64,
        },
        "text_encoder": {
            "hidden_size": width,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "projection_dim": width,
        },
    }
    for component, changes in sizes.items():
        config_file = target / component / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config.update(changes)
        config_file.write_text(json.dumps(config), encoding="utf-8")
    return target


def tiny_sd1x_pipeline(config_dir: Path, seed: int = 7) -> StableDiffusionPipeline:
    """A deterministic random-weight ``StableDiffusionPipeline`` built from ``config_dir``."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    text_config = json.loads((config_dir / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    text_config = {k: v for k, v in text_config.items() if k not in {"architectures", "torch_dtype"}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    pipeline = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(config_dir / "tokenizer", local_files_only=True),
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler.from_pretrained(config_dir / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def open_clip_to_ldm(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An OpenCLIP text tower (SDXL's second encoder, SD 2.x's only one) in open_clip's layout (fused q/k/v).

    SDXL's encoder carries its projection; SD 2.x's has none, and gets an identity (real files carry
    one, unused).
    """
    config = text_encoder.config  # type: ignore[attr-defined]
    state = {key.removeprefix("text_model."): value for key, value in text_encoder.state_dict().items()}
    state.pop("embeddings.position_ids", None)
    projection = state.pop("text_projection.weight", None)
    out = {
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        "text_projection": torch.eye(config.hidden_size) if projection is None else projection.T,
    }
    for layer in range(config.num_hidden_layers):
        source, target = f"encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            out[f"{target}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{source}self_attn.{proj}_proj.{kind}") for proj in ("q", "k", "v")]
            )
            out[f"{target}attn.out_proj.{kind}"] = state.pop(f"{source}self_attn.out_proj.{kind}")
            out[f"{target}ln_1.{kind}"] = state.pop(f"{source}layer_norm1.{kind}")
            out[f"{target}ln_2.{kind}"] = state.pop(f"{source}layer_norm2.{kind}")
            out[f"{target}mlp.c_fc.{kind}"] = state.pop(f"{source}mlp.fc1.{kind}")
            out[f"{target}mlp.c_proj.{kind}"] = state.pop(f"{source}mlp.fc2.{kind}")
    if state:
        raise KeyError(f"unconverted OpenCLIP keys: {sorted(state)}")
    return out


def save_ldm_checkpoint(pipeline: StableDiffusionPipeline, family: str, path: Path) -> None:
    """The original (CompVis ldm) single-file layout SD 1.5 (``sd15``) / 2.1 (``sd21``) are published in."""
    state = _prefixed("model.diffusion_model.", _unet_to_sgm(pipeline))  # type: ignore[arg-type]
    state.update(_prefixed("first_stage_model.", _vae_to_sgm(pipeline)))  # type: ignore[arg-type]
    if family == "sd15":
        state.update(_prefixed("cond_stage_model.transformer.", _clip_to_sgm(pipeline)))  # type: ignore[arg-type]
    else:
        state.update(_prefixed("cond_stage_model.model.", open_clip_to_ldm(pipeline.text_encoder)))
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(path))


def write_tiny_sd1x_checkpoint(family: str, folder: Path, name: str = "") -> tuple[Path, Path]:
    """A tiny ``sd15``/``sd21`` checkpoint in ``folder`` and the shrunk config folder it loads with."""
    folder.mkdir(parents=True, exist_ok=True)
    config_dir = shrunk_sd1x_config_dir(family, folder / f"config_{family}")
    checkpoint = folder / (name or f"tiny_{family}.safetensors")
    save_ldm_checkpoint(tiny_sd1x_pipeline(config_dir), family, checkpoint)
    return checkpoint, config_dir


def save_tiny_canny_controlnet(models: Path) -> None:
    """A tiny random SDXL ControlNet (from tiny-random's UNet) at ``models/controlnet/tiny-canny``."""
    from diffusers import ControlNetModel, EulerDiscreteScheduler

    from fooocusd.engine.tiny import build_tiny_sdxl_pipeline

    unet = build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).unet
    torch.manual_seed(7)
    net = ControlNetModel.from_unet(unet)
    with torch.no_grad():  # from_unet zero-initialises the output convolutions: wake them up
        for block in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            block.weight.normal_(0.0, 0.5)
    net.save_pretrained(models / "controlnet" / "tiny-canny")


# -- tiny-random engines with acceleration options ------------------------------------------------


def tiny_engine_with(root: Path, dtype: str = "auto", **options: object) -> SDXLEngine:
    """A loaded tiny-random ``SDXLEngine`` on the CPU with the given ``AccelerationOptions``."""
    from fooocusd.engine.acceleration import AccelerationOptions
    from fooocusd.engine.models import TINY_MODEL, ModelLocation

    engine = SDXLEngine(
        ModelLocation(kind="tiny", name=TINY_MODEL),
        models_dir=root / "models",
        hash_cache=root / "hashes.json",
        device="cpu",
        dtype=dtype,
        acceleration=AccelerationOptions(**options),  # type: ignore[arg-type]
    )
    engine.load()
    return engine


def pixels_of(engine: SDXLEngine, request: GenerationRequest) -> np.ndarray:
    """The rendered image as int16 pixels, ready for subtraction."""
    return np.asarray(engine.generate(request).image).astype(np.int16)


def models_root_with_ink_lora(root: Path) -> Path:
    """``root`` whose loras folder holds the small diffusers-layout LoRA ``ink``."""
    from fooocusd.engine.model_dirs import ModelDirs
    from tests import test_engine_loras as lora_files

    loras = ModelDirs.of(root / "models").folders("loras")[0]
    loras.mkdir(parents=True)
    lora_files.write_diffusers_lora(loras, "ink", seed=1)
    return root


# -- CUDA graphs without a GPU ---------------------------------------------------------------


class ReplayByRerun:
    """A CUDA graph's contract without a GPU: replay recomputes from the static inputs into one output."""

    def __init__(self, corrupt: bool = False, fail: str = "") -> None:
        self.corrupt = corrupt
        self.fail = fail

    def capture(self, run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        if self.fail:
            raise RuntimeError(self.fail)
        output = run()

        def replay() -> None:
            output.copy_(run() * (0.0 if self.corrupt else 1.0))

        return replay, output


def channels_last_unet_inputs(
    unet: torch.nn.Module, seed: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """A batch of 2 for a tiny SDXL UNet: channels_last 16x16 latents, text states, added conditions."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=generator).contiguous(memory_format=torch.channels_last)
    config: Any = unet.config
    text = torch.randn(2, 77, config.cross_attention_dim, generator=generator)
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    added = {
        "text_embeds": torch.randn(2, pooled, generator=generator),
        "time_ids": torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]] * 2),
    }
    return x, text, added


def channels_last_randn(
    shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Random activations, channels_last, with a mean far from 0 as real activations have."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator) * 3.0 + 1.5
    return values.to(dtype).contiguous(memory_format=torch.channels_last)


def tiny_unet_with_random_norms() -> torch.nn.Module:
    """The tiny SDXL UNet, channels_last, its GroupNorms given random affine parameters: the
    defaults (1, 0) would hide a swapped pair."""
    from diffusers import EulerDiscreteScheduler

    from fooocusd.engine.tiny import build_tiny_sdxl_pipeline

    unet = build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).unet.eval()
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.3)
    return unet.to(memory_format=torch.channels_last)


def render_both_ways(
    root: Path, seed: int, setting: str, without: str, with_: str
) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """One seed rendered by two tiny engines (layouts applied on the CPU) that differ only in
    ``setting``: the pixels' absolute difference, and each engine's acceleration record (with, then
    without)."""
    plain = tiny_engine_with(root, layout_on_cpu=True, **{setting: without})
    changed = tiny_engine_with(root, layout_on_cpu=True, **{setting: with_})
    request = default_request(seed=seed)
    difference = np.abs(pixels_of(changed, request) - pixels_of(plain, request))
    return difference, changed.describe()["acceleration"], plain.describe()["acceleration"]
