"""``model = "tiny-random"``: a tiny random-weight SDXL, built in memory, for plumbing checks.

It has the real SDXL structure — a UNet with the ``text_time`` micro-conditioning, two CLIP text
encoders of *different* widths (so a single-file round trip routes each to the right converter), a
4-level VAE (the 8× latent factor of the real one) and the real shipped CLIP tokenizers — at a size
that runs a whole default job in about a second on two CPU cores. Every weight comes from a fixed
seed, so the same request always gives the same pixels. The pictures are noise.

Because it is only a plumbing check, the engine renders it at a reduced size (``tiny_render_size``)
and reports the size it actually rendered.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, SchedulerMixin, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from fooocusd.engine.models import SDXL_CONFIG_DIR

TINY_SEED = 20_231_126
"""A refiner-shaped tiny UNet (CLIP-G-only cross-attention, aesthetic-score time ids), for tests."""
TINY_REFINER_SEED = 20_230_726
TEXT_WIDTH_1 = 32
TEXT_WIDTH_2 = 64
TIME_EMBED_DIM = 8
TINY_SCALE = 8
TINY_MULTIPLE = 16
TINY_MIN_SIDE = 64


def build_tiny_sdxl_pipeline(scheduler: SchedulerMixin) -> StableDiffusionXLPipeline:
    """A deterministic tiny SDXL pipeline using ``scheduler``. Nothing is downloaded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = _tiny_unet()
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(_tiny_text_config(TEXT_WIDTH_1, "quick_gelu"))
        text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config(TEXT_WIDTH_2, "gelu"))
    pipeline = StableDiffusionXLPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(SDXL_CONFIG_DIR / "tokenizer", local_files_only=True),
        tokenizer_2=CLIPTokenizer.from_pretrained(SDXL_CONFIG_DIR / "tokenizer_2", local_files_only=True),
        unet=unet.eval(),
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def build_tiny_refiner_unet() -> UNet2DConditionModel:
    """A deterministic tiny UNet shaped like the SDXL refiner's: it attends to the second text encoder
    only, and its micro-conditioning has 5 numbers (original size, crop, aesthetic score)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_REFINER_SEED)
        unet = _tiny_unet(cross_attention_dim=TEXT_WIDTH_2, time_ids=5)
    return unet.eval()


def tiny_render_size(width: int, height: int) -> tuple[int, int]:
    """The size tiny-random renders for a requested size: 1/8 of each side, a multiple of 16, at least 64."""
    return _shrink(width), _shrink(height)


def _shrink(side: int) -> int:
    return max(TINY_MIN_SIDE, round(side / TINY_SCALE / TINY_MULTIPLE) * TINY_MULTIPLE)


def _tiny_unet(
    cross_attention_dim: int = TEXT_WIDTH_1 + TEXT_WIDTH_2, time_ids: int = 6
) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        # The micro-conditioning numbers (base: original size, crop, target size; refiner: original
        # size, crop, aesthetic score), each embedded, plus the pooled output of the second text encoder.
        projection_class_embeddings_input_dim=time_ids * TIME_EMBED_DIM + TEXT_WIDTH_2,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=32,
    )


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=128,
        scaling_factor=0.13025,
        force_upcast=False,
    )


def _tiny_text_config(width: int, activation: str) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=width * 2,
        projection_dim=width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=activation,
        layer_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
