"""Which files image prompts need, and where they are looked for (all offline, through ``ModelDirs``).

=============  =====================================================  ==============================
kind           file                                                   folder (kind)
=============  =====================================================  ==============================
image_prompt   ``ip-adapter-plus_sdxl_vit-h.safetensors``             ``ipadapter/``
face           ``ip-adapter-plus-face_sdxl_vit-h.safetensors``        ``ipadapter/``
both           ViT-H/14 image encoder (see ``ENCODER_NAMES``)          ``clip_vision/``
face           ``face_detection_yunet_2023mar.onnx`` (OpenCV YuNet)   ``face_detection/``
=============  =====================================================  ==============================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fooocusd.engine.fetch import fetch_suggestion
from fooocusd.engine.model_dirs import ModelDirs, ModelFileKind
from fooocusd.errors import InvalidInput

ADAPTER_FILES: dict[str, str] = {
    "image_prompt": "ip-adapter-plus_sdxl_vit-h.safetensors",
    "face": "ip-adapter-plus-face_sdxl_vit-h.safetensors",
}
"""IP-Adapter kinds → the "plus" SDXL adapter file for the ViT-H encoder (h94/IP-Adapter, sdxl_models)."""

IP_ADAPTER_KINDS = frozenset(ADAPTER_FILES)

ENCODER_NAMES: tuple[str, ...] = (
    "clip-vit-h-14",
    "image_encoder",
    "clip_vision_vit_h.safetensors",
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
    "model.safetensors",
)
"""Tried in order in ``clip_vision/``: a transformers folder (config.json + model.safetensors), else one
weights file read with the shipped ViT-H/14 config."""

FACE_DETECTOR_FILE = "face_detection_yunet_2023mar.onnx"
FACE_DETECTOR_URL = "https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet"
_ADAPTER_SOURCE = "https://huggingface.co/h94/IP-Adapter/tree/main/sdxl_models"
_ENCODER_SOURCE = "https://huggingface.co/h94/IP-Adapter/tree/main/models/image_encoder"


@dataclass(frozen=True)
class Located:
    """A file (or folder) found for an image prompt, with the name it is recorded under."""

    name: str
    path: Path


def adapter_file(kind: str, model_dirs: ModelDirs) -> Located:
    """The IP-Adapter file for ``kind`` (image_prompt or face). Raises ``InvalidInput`` when missing."""
    name = ADAPTER_FILES[kind]
    found = model_dirs.locate("ipadapter", name)
    if found is not None and found.is_file():
        return Located(name, found)
    pickled = model_dirs.locate("ipadapter", name.removesuffix(".safetensors") + ".bin")
    extra = (
        f" ({pickled.name} is there, but pickled .bin files are not loaded: they can run code)"
        if pickled is not None
        else ""
    )
    raise _missing(
        f"the IP-Adapter file {name} for image prompts of type {kind} was not found{extra}",
        "ipadapter",
        model_dirs,
        hint=f"download {name} from {_ADAPTER_SOURCE} "
        f"and put it into {_first_folder('ipadapter', model_dirs)}{fetch_suggestion(name)}",
    )


def encoder_location(model_dirs: ModelDirs) -> Located:
    """The ViT-H/14 image encoder: the first of ``ENCODER_NAMES`` present in ``clip_vision/``."""
    for name in ENCODER_NAMES:
        found = model_dirs.locate("clip_vision", name)
        if found is None:
            continue
        if found.is_dir() and not (found / "config.json").is_file():
            continue  # a folder without a config is not a transformers model folder
        return Located(name, found)
    folder = _first_folder("clip_vision", model_dirs)
    raise _missing(
        "the CLIP ViT-H/14 image encoder that IP-Adapter image prompts need was not found",
        "clip_vision",
        model_dirs,
        hint=f"put config.json and model.safetensors from {_ENCODER_SOURCE} into {folder / 'clip-vit-h-14'}, "
        f"or the single file clip_vision_vit_h.safetensors into {folder}"
        + fetch_suggestion("clip_vision_vit_h"),
    )


def face_detector_file(model_dirs: ModelDirs) -> Path:
    """OpenCV's YuNet model for ``face`` image prompts. Raises ``InvalidInput`` when missing."""
    found = model_dirs.locate("face_detection", FACE_DETECTOR_FILE, suffixes=(".onnx",))
    if found is not None and found.is_file():
        return found
    raise _missing(
        f"the face detector {FACE_DETECTOR_FILE} that image prompts of type face need was not found",
        "face_detection",
        model_dirs,
        hint=f"download {FACE_DETECTOR_FILE} from {FACE_DETECTOR_URL} and put it into "
        f"{_first_folder('face_detection', model_dirs)}{fetch_suggestion(FACE_DETECTOR_FILE)}, "
        "or use type image_prompt instead",
    )


def _first_folder(kind: ModelFileKind, model_dirs: ModelDirs) -> Path:
    folders = model_dirs.folders(kind)
    return folders[0] if folders else model_dirs.download_folder(kind)


def _missing(message: str, kind: ModelFileKind, model_dirs: ModelDirs, *, hint: str) -> InvalidInput:
    looked = ", ".join(str(folder) for folder in model_dirs.folders(kind)) or "no models folder"
    return InvalidInput(message, where=f"looked in {looked}", hint=hint)
