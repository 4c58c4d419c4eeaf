"""What a model file is, from its tensor names and shapes alone (no weight is read).

Single files are classified from the ``.safetensors`` header (8-byte length + JSON naming every tensor
with its shape); diffusers folders from ``model_index.json`` and their component configs; a folder of
one saved model (``config.json`` beside its weights: a ControlNet, a depth estimator) from that
``config.json``. Rules for single files, first match wins:

1. **ControlNet**: ``control_model.*``, ``input_hint_block.*`` or ``controlnet_cond_embedding.*``
   tensors, or a Control-LoRA (``lora_controlnet``).
2. **LoRA** (and LyCORIS): ``lora_down``/``lora_up``/``lora_A``/``lora_B``/``hada_w1``/``lokr_w1``
   tensors, or names starting with ``lora_unet_``/``lora_te``.
3. **Full checkpoints**, by their text encoder(s):
   ``conditioner.embedders.1.*`` (CLIP-L + OpenCLIP bigG) → SDXL base;
   ``conditioner.embedders.0.model.*`` alone (OpenCLIP bigG) → SDXL refiner;
   ``cond_stage_model.transformer.*`` (CLIP ViT-L/14, HF layout) → SD 1.x;
   ``cond_stage_model.model.*`` (OpenCLIP ViT-H/14) → SD 2.x.
   Without text-encoder tensors, by the UNet's cross-attention width (``attn2.to_k`` input size):
   768 → SD 1.x, 1024 → SD 2.x, 1280 → SDXL refiner, 2048 → SDXL base.
   An SDXL base whose UNet takes 9 input channels (``input_blocks.0.0.weight`` is 320×9×3×3: latents,
   mask, masked-image latents) is an **SDXL inpainting** model; so is a diffusers folder whose
   ``unet/config.json`` says ``in_channels: 9``.
4. **VAE**: ``encoder.*`` + ``decoder.*`` (+ ``quant_conv``) and nothing else.
5. **Embedding** (textual inversion): ``emb_params``, ``string_to_param.*``, ``clip_l``/``clip_g``.
6. Anything else is **unknown**.

**v-prediction.** SD 2.0-v/2.1 (768 px) predict *v*, SD 2.x "base" (512 px) predicts noise, and the
two have identical tensors. The rule: a ``v_pred`` tensor (the marker some trainers add) → v; else the
header's ``modelspec.prediction_type`` / ``modelspec.architecture`` metadata (Stability's model
spec); else the file name (``768`` → v; ``512`` or ``base`` → noise, as in ``v2-1_512-ema-pruned``);
else v-prediction at 768 px, the common case (SD 2.1), flagged as a guess. A ``v_pred`` tensor marks
a v-prediction SD 1.x/SDXL fine-tune too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fooocusd.errors import ModelNotFound
from fooocusd.json_store import read_json_object

Family = Literal[
    "sdxl",
    "sdxl_inpaint",
    "sdxl_refiner",
    "sd15",
    "sd2",
    "lora",
    "vae",
    "controlnet",
    "embedding",
    "transformers",
    "unknown",
]
Prediction = Literal["epsilon", "v_prediction"]

SAFE_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})
FULL_CHECKPOINTS: frozenset[Family] = frozenset({"sdxl", "sdxl_inpaint", "sdxl_refiner", "sd15", "sd2"})
_MAX_HEADER_BYTES = 100_000_000
UNET_INPUT_KEY = "model.diffusion_model.input_blocks.0.0.weight"
"""The UNet's first convolution in the single-file layout: its shape[1] is the input channel count."""
INPAINT_CHANNELS = 9
_CROSS_ATTENTION = re.compile(
    r"diffusion_model\.(input|middle|output)_blocks?\.[\d.]*transformer_blocks\.0\.attn2\.to_k\.weight$"
)
_WIDTH_TO_FAMILY: dict[int, Family] = {768: "sd15", 1024: "sd2", 1280: "sdxl_refiner", 2048: "sdxl"}
_NATIVE_SIDE: dict[Family, int] = {
    "sdxl": 1024,
    "sdxl_inpaint": 1024,
    "sdxl_refiner": 1024,
    "sd15": 512,
    "sd2": 768,
}
_LABELS: dict[Family, str] = {
    "sdxl": "SDXL",
    "sdxl_inpaint": "SDXL inpainting",
    "sdxl_refiner": "SDXL refiner",
    "sd15": "SD 1.5",
    "sd2": "SD 2.x",
    "lora": "LoRA",
    "vae": "VAE",
    "controlnet": "ControlNet",
    "embedding": "embedding",
    "transformers": "transformers",
    "unknown": "unknown",
}


@dataclass(frozen=True)
class CheckpointHeader:
    """Tensor name → shape, plus the free-form ``__metadata__`` strings."""

    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FamilyInfo:
    """A model's family, and for full checkpoints its prediction type and native resolution."""

    family: Family
    prediction: Prediction | None = None
    resolution: int | None = None
    guessed: bool = False
    reason: str = ""

    @property
    def label(self) -> str:
        """Short text for tables: ``SD 2.x (768, v)``."""
        text = _LABELS[self.family]
        if self.family == "transformers" and self.reason:
            text = f"{self.reason} (transformers)"
        elif self.family == "sd2" and self.prediction is not None:
            text += f" ({self.resolution}, {'v' if self.prediction == 'v_prediction' else 'eps'}"
            text += "?)" if self.guessed else ")"
        elif self.prediction == "v_prediction":
            text += " (v)"
        return text

    @property
    def is_full_checkpoint(self) -> bool:
        return self.family in FULL_CHECKPOINTS


def detect_family(path: Path, *, allow_pickle: bool = False) -> FamilyInfo:
    """Classify a model file or diffusers folder. Raises ``ModelNotFound`` for unreadable files.

    Pickle-based files are only opened (with ``torch.load(weights_only=True)``) when ``allow_pickle``.
    """
    if path.is_dir():
        if not (path / "model_index.json").is_file() and (path / "config.json").is_file():
            return saved_model_family(path)
        return diffusers_family(path)
    suffix = path.suffix.lower()
    if suffix == SAFE_SUFFIX:
        return family_from_header(read_header(path), file_name=path.name)
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            return FamilyInfo("unknown", reason="pickle-based file, not opened (engine.allow_unsafe_pickle)")
        return family_from_header(read_pickle_header(path), file_name=path.name)
    return FamilyInfo("unknown", reason=f"{suffix or 'no'} suffix")


def read_header(path: Path) -> CheckpointHeader:
    """The tensor names and shapes of a ``.safetensors`` file, from its header only."""
    try:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if size <= 0 or size > _MAX_HEADER_BYTES:
                raise ValueError(f"implausible header size {size}")
            header = json.loads(handle.read(size))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelNotFound(
            f"{path.name} is not a readable .safetensors file ({exc})",
            where=str(path),
            hint="the download may be incomplete or corrupt; download it again",
        ) from exc
    if not isinstance(header, dict):
        raise ModelNotFound(f"{path.name} has a malformed .safetensors header", where=str(path))
    metadata = header.pop("__metadata__", None)
    shapes = {
        name: tuple(int(side) for side in info.get("shape", ()))
        for name, info in header.items()
        if isinstance(info, dict)
    }
    text_metadata = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    return CheckpointHeader(shapes=shapes, metadata=text_metadata)


def read_pickle_header(path: Path) -> CheckpointHeader:
    """Tensor names and shapes of a pickle checkpoint, via torch's restricted ``weights_only`` loader.

    Only call this when the user allowed pickles: ``weights_only`` refuses arbitrary classes, but the
    format still deserves less trust than safetensors.
    """
    import pickle

    import torch

    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the pre-1.6 (non-zip) format cannot be memory-mapped
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise ModelNotFound(
            f"{path.name} could not be opened as a weights-only checkpoint ({exc})",
            where=str(path),
            hint="it may be damaged, or contain code rather than plain tensors: use a .safetensors version",
        ) from exc
    state = _state_dict_of(loaded)
    shapes = {name: tuple(value.shape) for name, value in state.items() if hasattr(value, "shape")}
    return CheckpointHeader(shapes=shapes)


def family_from_header(header: CheckpointHeader, *, file_name: str = "") -> FamilyInfo:
    """Apply the rules in the module docstring to a header."""
    names = header.shapes
    if _any(names, "control_model.", "input_hint_block.", "controlnet_cond_embedding.") or (
        "lora_controlnet" in names
    ):
        return FamilyInfo("controlnet", reason="ControlNet tensors")
    if _is_lora(names):
        return FamilyInfo("lora", reason="LoRA tensors")
    family, reason = _full_checkpoint_family(header)
    if family == "sdxl" and unet_input_channels(header) == INPAINT_CHANNELS:
        family, reason = "sdxl_inpaint", f"{reason}; 9-channel UNet input (latents, mask, masked image)"
    if family is not None:
        return _with_prediction(family, header, file_name, reason)
    if _is_vae(names):
        return FamilyInfo("vae", reason="only encoder/decoder tensors")
    if names and (
        _any(names, "string_to_param.") or "emb_params" in names or set(names) <= {"clip_l", "clip_g"}
    ):
        return FamilyInfo("embedding", reason="textual-inversion tensors")
    return FamilyInfo("unknown", reason="no known tensor layout")


def unet_input_channels(header: CheckpointHeader) -> int | None:
    """The UNet's input channels (4 for text-to-image SDXL, 9 for inpainting); None without a UNet."""
    shape = header.shapes.get(UNET_INPUT_KEY, ())
    return shape[1] if len(shape) == 4 else None


def diffusers_family(folder: Path) -> FamilyInfo:
    """Classify a diffusers-format folder from ``model_index.json`` and its component configs."""
    index = read_json_object(folder / "model_index.json")
    pipeline = str(index.get("_class_name", ""))
    if pipeline.startswith("StableDiffusionXL"):
        text_encoder = index.get("text_encoder")
        if not text_encoder or text_encoder == [None, None]:
            return FamilyInfo("sdxl_refiner", resolution=1024, prediction=_scheduler_prediction(folder))
        if read_json_object(folder / "unet" / "config.json").get("in_channels") == INPAINT_CHANNELS:
            return FamilyInfo("sdxl_inpaint", resolution=1024, prediction=_scheduler_prediction(folder))
        return FamilyInfo("sdxl", resolution=1024, prediction=_scheduler_prediction(folder))
    if pipeline.startswith("StableDiffusion"):
        width = read_json_object(folder / "text_encoder" / "config.json").get("hidden_size")
        family: Family = "sd2" if width == 1024 else "sd15"
        sample_size = read_json_object(folder / "unet" / "config.json").get("sample_size")
        resolution = int(sample_size) * 8 if isinstance(sample_size, int) else _NATIVE_SIDE[family]
        return FamilyInfo(
            family, prediction=_scheduler_prediction(folder), resolution=resolution, reason=pipeline
        )
    return FamilyInfo("unknown", reason=f"diffusers pipeline {pipeline or '(unnamed)'}")


def saved_model_family(folder: Path) -> FamilyInfo:
    """A folder of one saved model, from its ``config.json``: a diffusers component (``_class_name``:
    a ControlNet, a VAE) or a transformers model (``model_type``: a depth estimator, GPT-2, CLIP)."""
    config = read_json_object(folder / "config.json")
    class_name = config.get("_class_name")
    if isinstance(class_name, str):
        if class_name.startswith("ControlNet"):
            return FamilyInfo("controlnet", reason=class_name)
        if class_name.startswith("Autoencoder"):
            return FamilyInfo("vae", reason=class_name)
        return FamilyInfo("unknown", reason=f"diffusers {class_name}")
    model_type = config.get("model_type")
    return FamilyInfo("transformers", reason=model_type if isinstance(model_type, str) else "")


def _full_checkpoint_family(header: CheckpointHeader) -> tuple[Family | None, str]:
    names = header.shapes
    if _any(names, "conditioner.embedders.1."):
        return "sdxl", "CLIP-L + OpenCLIP bigG text encoders"
    if _any(names, "conditioner.embedders.0.model."):
        return "sdxl_refiner", "OpenCLIP bigG text encoder only"
    if _any(names, "cond_stage_model.transformer."):
        return "sd15", "CLIP ViT-L/14 text encoder"
    if _any(names, "cond_stage_model.model."):
        return "sd2", "OpenCLIP ViT-H/14 text encoder"
    for name, shape in names.items():
        if _CROSS_ATTENTION.search(name) and shape:
            family = _WIDTH_TO_FAMILY.get(shape[-1])
            if family is not None:
                return family, f"UNet cross-attention width {shape[-1]}"
    return None, ""


def _with_prediction(family: Family, header: CheckpointHeader, file_name: str, reason: str) -> FamilyInfo:
    if "v_pred" in header.shapes:
        side = _NATIVE_SIDE[family] if family != "sd2" else 768
        return FamilyInfo(family, "v_prediction", side, reason=f"{reason}; v_pred marker")
    if family != "sd2":
        return FamilyInfo(family, "epsilon", _NATIVE_SIDE[family], reason=reason)
    from_metadata = _sd2_from_metadata(header.metadata)
    if from_metadata is not None:
        return FamilyInfo("sd2", *from_metadata, reason=f"{reason}; modelspec metadata")
    stem = Path(file_name).stem.lower()
    if "768" in stem:
        return FamilyInfo("sd2", "v_prediction", 768, reason=f"{reason}; '768' in the file name")
    if "512" in stem or "base" in stem:
        return FamilyInfo("sd2", "epsilon", 512, reason=f"{reason}; '512'/'base' in the file name")
    return FamilyInfo(
        "sd2", "v_prediction", 768, guessed=True, reason=f"{reason}; no marker, assumed SD 2.1 768-v"
    )


def _sd2_from_metadata(metadata: dict[str, str]) -> tuple[Prediction, int] | None:
    prediction = metadata.get("modelspec.prediction_type", "").lower()
    architecture = metadata.get("modelspec.architecture", "").lower()
    resolution = metadata.get("modelspec.resolution", "")
    side = int(resolution.split("x")[0]) if re.fullmatch(r"\d+x\d+", resolution) else None
    if prediction in {"v", "v_prediction"} or architecture.endswith("-v"):
        return "v_prediction", side or 768
    if prediction in {"epsilon", "eps"} or "512" in architecture:
        return "epsilon", side or 512
    return None


def _is_lora(names: dict[str, tuple[int, ...]]) -> bool:
    markers = ("lora_down", "lora_up", "lora_A.", "lora_B.", "lora.down", "lora.up", "hada_w1", "lokr_w1")
    return any(
        name.startswith(("lora_unet_", "lora_te")) or any(marker in name for marker in markers)
        for name in names
    )


def _is_vae(names: dict[str, tuple[int, ...]]) -> bool:
    stripped = {name.removeprefix("first_stage_model.") for name in names}
    has_both = _any(stripped, "encoder.") and _any(stripped, "decoder.")
    return has_both and all(
        name.startswith(("encoder.", "decoder.", "quant_conv", "post_quant_conv")) for name in stripped
    )


def _any(names: dict[str, Any] | set[str], *prefixes: str) -> bool:
    return any(name.startswith(prefixes) for name in names)


def _state_dict_of(loaded: object) -> dict[str, Any]:
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        return loaded["state_dict"]  # Lightning checkpoints (most SD 1.x/2.x .ckpt files)
    return loaded if isinstance(loaded, dict) else {}


def _scheduler_prediction(folder: Path) -> Prediction:
    value = read_json_object(folder / "scheduler" / "scheduler_config.json").get("prediction_type")
    return "v_prediction" if value == "v_prediction" else "epsilon"
