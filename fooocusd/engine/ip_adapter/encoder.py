"""The CLIP ViT-H/14 image encoder for IP-Adapter "plus" models, loaded offline.

A transformers folder (``config.json`` + ``model.safetensors``) loads with ``from_pretrained``; a
single weights file is read against the ViT-H/14 config shipped in ``configs/clip_vision_vit_h``.
"Plus" adapters take the encoder's **penultimate hidden states** (every patch token, not the pooled
embedding); the unconditional side is the encoding of an all-zero pixel tensor, as diffusers does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from fooocusd.engine.ip_adapter.files import Located
from fooocusd.errors import InvalidInput

ENCODER_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "clip_vision_vit_h"
_IGNORED_MISSING = ("position_ids",)


@dataclass
class ImageEncoder:
    """A loaded encoder and the preprocessing its input size needs."""

    location: Located
    model: torch.nn.Module
    image_size: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """CLIP preprocessing as diffusers' IP-Adapter does: shortest side to the input size, centre crop,
        CLIP mean/std normalisation. Returns 1×3×S×S on the encoder's device and dtype."""
        from transformers import CLIPImageProcessor

        processor = CLIPImageProcessor(size=self.image_size, crop_size=self.image_size)
        values = processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
        return values.to(device=self.device, dtype=self.dtype)

    def hidden_states(self, pixels: torch.Tensor) -> torch.Tensor:
        """Penultimate hidden states, N×tokens×width."""
        return self.model(pixels, output_hidden_states=True).hidden_states[-2]

    def embed(self, image: Image.Image) -> torch.Tensor:
        return self.hidden_states(self.pixels(image))

    def embed_zero_image(self) -> torch.Tensor:
        shape = (1, 3, self.image_size, self.image_size)
        return self.hidden_states(torch.zeros(shape, device=self.device, dtype=self.dtype))


def load_image_encoder(
    location: Located,
    *,
    device: torch.device,
    dtype: torch.dtype,
    config_dir: Path = ENCODER_CONFIG_DIR,
) -> ImageEncoder:
    """Load the encoder at ``location`` (folder or single file). Raises ``InvalidInput`` for a bad file."""
    from transformers import CLIPVisionModelWithProjection

    path = location.path
    try:
        # Built outside inference mode: its weights must be ordinary tensors, usable in any later job.
        with torch.inference_mode(False):
            if path.is_dir():
                from fooocusd.engine.pipeline_loading import offline_hub

                with offline_hub():
                    model = CLIPVisionModelWithProjection.from_pretrained(
                        str(path), local_files_only=True, dtype=dtype
                    )
            else:
                model = _from_single_file(path, config_dir)
            model = model.to(device=device, dtype=dtype).eval()
    except InvalidInput:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InvalidInput(
            f"could not load the image encoder {path.name}: {type(exc).__name__}: {exc}",
            where=str(path),
            hint="it must be the CLIP ViT-H/14 vision model in transformers format (.safetensors); "
            "a partial download is the usual cause, so download it again",
        ) from exc
    return ImageEncoder(location, model, int(model.config.image_size))


def _from_single_file(path: Path, config_dir: Path) -> torch.nn.Module:
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    state = load_file(str(path))
    if not any(key.startswith("vision_model.") for key in state):
        raise InvalidInput(
            f"{path.name} is not a CLIP vision model in transformers layout (no vision_model.* weights)",
            where=str(path),
            hint="use clip_vision_vit_h.safetensors or model.safetensors from h94/IP-Adapter "
            "(models/image_encoder); OpenCLIP-layout files are not read",
        )
    config = CLIPVisionConfig.from_pretrained(str(config_dir), local_files_only=True)
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [key for key in result.missing_keys if not key.endswith(_IGNORED_MISSING)]
    if missing:
        raise InvalidInput(
            f"{path.name} does not match the CLIP ViT-H/14 image encoder: {len(missing)} weights are missing "
            f"(e.g. {missing[0]})",
            where=str(path),
            hint="IP-Adapter plus SDXL models need the ViT-H/14 encoder (1280 wide, 32 layers)",
        )
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:  # non-persistent buffers (position ids) are not in the file
            _rebuild_buffer(model, name, config)
    return model


def _rebuild_buffer(model: torch.nn.Module, name: str, config: object) -> None:
    module_name, _, buffer_name = name.rpartition(".")
    module = model.get_submodule(module_name)
    if buffer_name != "position_ids":
        raise InvalidInput(f"cannot initialise {name} of the image encoder", where=name)
    count = int(module.position_embedding.num_embeddings)  # type: ignore[union-attr]
    module.register_buffer(buffer_name, torch.arange(count).expand((1, -1)), persistent=False)
