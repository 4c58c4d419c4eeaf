"""ControlNet models and the depth estimator: which file serves which control type, loading, caching.

``controlnet.canny`` / ``cpds`` / ``depth`` name a file or folder in the ``controlnet`` model folders:

- a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``), of a
  ``ControlNetModel`` or a ``ControlNetUnionModel`` (ControlNet-Union / ProMax: one model for many
  control types; the type index is picked from ``UNION_CONTROL_INDEX``);
- a single ``.safetensors`` file, in the original (``control_model.*``) or the diffusers layout.
  It is read against the full-size SDXL ControlNet config shipped in ``configs/controlnet_sdxl``,
  or against a ``<name>.json`` config beside it (needed for union, "small" and "mid" models).

SAI Control-LoRA files (Fooocus's ``control-lora-canny-rank128`` and ``fooocus_xl_cpds_128``)
are not ControlNets diffusers can build; they are refused with a hint. Pickled files are refused.

Models are loaded on first use, moved to the engine's device and dtype, and kept while the jobs
keep using them (``retain`` drops the others).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fooocusd.engine.controlnet.preprocess import DepthEstimator
from fooocusd.engine.fetch import fetch_suggestion
from fooocusd.engine.model_dirs import SAFE_SUFFIX, ModelDirs
from fooocusd.engine.models import SDXL_CONFIG_DIR, file_sha256, folder_sha256
from fooocusd.engine.pipeline_loading import reported_failures
from fooocusd.errors import InvalidInput, ModelNotFound

CONTROL_TYPES = ("pyracanny", "cpds", "depth")
SETTING_FOR_TYPE = {"pyracanny": "canny", "cpds": "cpds", "depth": "depth"}
UNION_CONTROL_INDEX = {"pyracanny": 3, "cpds": 3, "depth": 1}
"""ControlNet-Union's control types: 0 pose, 1 depth, 2 soft edges, 3 canny/lines, 4 normal, 5 segments."""
CONTROLNET_CONFIG_DIR = SDXL_CONFIG_DIR.parent / "controlnet_sdxl"
DEFAULT_CANNY = "controlnet-canny-sdxl-1.0"
DEFAULT_DEPTH = "controlnet-depth-sdxl-1.0"
DEFAULT_DEPTH_ESTIMATOR = "Depth-Anything-V2-Small-hf"
DEFAULT_SOFTNESS = 0.25
_SUGGESTED = {
    "canny": "diffusers/controlnet-canny-sdxl-1.0 (or xinsir/controlnet-union-sdxl-1.0)",
    "depth": "diffusers/controlnet-depth-sdxl-1.0 (or xinsir/controlnet-union-sdxl-1.0)",
    "cpds": "a canny or line-art SDXL ControlNet, or xinsir/controlnet-union-sdxl-1.0",
}


@dataclass(frozen=True)
class ControlNetConfig:
    """The ``[controlnet]`` settings the engine needs."""

    canny: str = DEFAULT_CANNY
    cpds: str = ""
    depth: str = DEFAULT_DEPTH
    depth_estimator: str = DEFAULT_DEPTH_ESTIMATOR
    softness: float = DEFAULT_SOFTNESS

    @classmethod
    def from_settings(cls, section: Any) -> ControlNetConfig:
        """From ``Settings.controlnet`` (or anything with the same attributes)."""
        return cls(**{name: getattr(section, name) for name in cls.__dataclass_fields__})

    def file_for(self, control_type: str) -> str:
        return str(getattr(self, SETTING_FOR_TYPE[control_type])).strip()


@dataclass(frozen=True)
class LoadedControlNet:
    """A ControlNet ready to run; ``union_index`` is set for ControlNet-Union models."""

    model: Any
    name: str
    path: Path
    sha256: str
    union_index: int | None = None
    num_control_types: int = 0

    def record(self) -> dict[str, Any]:
        return {
            "control_model": self.name,
            "control_model_sha256": self.sha256,
            "control_model_hash": self.sha256[:10],
        }


class ControlNetModels:
    """Finds, loads and caches the ControlNets and the depth estimator."""

    def __init__(self, model_dirs: ModelDirs, hash_cache: Path, config: ControlNetConfig) -> None:
        self._model_dirs = model_dirs
        self._hash_cache = hash_cache
        self.config = config
        self._nets: dict[tuple[Path, str], tuple[Any, str]] = {}  # (path, dtype) → (model, sha256)
        self._depth: DepthEstimator | None = None
        self.loads = 0

    def control_net(self, control_type: str, *, device: torch.device, dtype: torch.dtype) -> LoadedControlNet:
        """The ControlNet configured for ``control_type``. Raises ``InvalidInput`` when it is unusable."""
        setting = SETTING_FOR_TYPE[control_type]
        name = self.config.file_for(control_type)
        if not name:
            raise InvalidInput(
                f"no ControlNet is configured for {control_type} image prompts",
                where=f"controlnet.{setting}",
                hint=f"put an SDXL ControlNet into {self._first_folder()} and set controlnet.{setting} to "
                f"its name, e.g. {_SUGGESTED[setting]}",
            )
        path = self._find(name, setting)
        key = (path, str(dtype))
        if key not in self._nets:
            model = _load_control_net(path, setting).to(device=device, dtype=dtype).eval()
            sha256 = (
                folder_sha256(path, self._hash_cache)
                if path.is_dir()
                else file_sha256(path, self._hash_cache)
            )
            self._nets[key] = (model, sha256)
            self.loads += 1
        model, sha256 = self._nets[key]
        union = type(model).__name__ == "ControlNetUnionModel"
        return LoadedControlNet(
            model=model,
            name=name,
            path=path,
            sha256=sha256,
            union_index=UNION_CONTROL_INDEX[control_type] if union else None,
            num_control_types=int(model.config.get("num_control_type", 0)) if union else 0,
        )

    def retain(self, paths: Iterable[Path]) -> None:
        """Forget the ControlNets not in ``paths`` (the current image's), freeing their memory."""
        keep = set(paths)
        for key in [key for key in self._nets if key[0] not in keep]:
            del self._nets[key]

    def depth_estimator(self, *, device: torch.device, dtype: torch.dtype) -> DepthEstimator:
        """The configured depth estimator (a transformers model folder in ``depth_estimator``)."""
        name = self.config.depth_estimator.strip()
        folder = self._model_dirs.locate("depth_estimator", name, ()) if name else None
        if folder is None or not folder.is_dir():
            folders = self._model_dirs.folders("depth_estimator")
            fetch = fetch_suggestion(name or DEFAULT_DEPTH_ESTIMATOR)
            raise InvalidInput(
                f"the depth estimator {name!r} was not found" if name else "no depth estimator is configured",
                where=f"looked in {', '.join(str(f) for f in folders) or 'no models folder'}",
                hint="put a transformers depth model folder into "
                f"{folders[0] if folders else 'a models folder'}"
                f"/{name or DEFAULT_DEPTH_ESTIMATOR} (Depth Anything V2 Small: "
                "depth-anything/Depth-Anything-V2-Small-hf, or DPT-hybrid: Intel/dpt-hybrid-midas) "
                f"and set controlnet.depth_estimator to its folder name{fetch}",
            )
        if self._depth is None or self._depth.folder != folder:
            self._depth = None
            with _quiet_transformers():
                self._depth = DepthEstimator(folder, device=device, dtype=dtype)
        return self._depth

    def _find(self, name: str, setting: str) -> Path:
        try:
            return self._model_dirs.find("controlnet", name, (SAFE_SUFFIX,))
        except ModelNotFound as exc:
            raise InvalidInput(
                exc.message,
                where=f"controlnet.{setting} ({exc.where})",
                hint=f"{exc.hint}{fetch_suggestion(name)}; suggested: {_SUGGESTED[setting]}, "
                "as a diffusers folder or one .safetensors file",
            ) from exc

    def _first_folder(self) -> Path | str:
        folders = self._model_dirs.folders("controlnet")
        return folders[0] if folders else "the controlnet models folder"


def _load_control_net(path: Path, setting: str) -> Any:
    from diffusers import ControlNetModel, ControlNetUnionModel

    from fooocusd.engine.pipeline_loading import offline_hub

    with offline_hub(), _load_errors(path, setting):
        if path.is_dir():
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            cls = (
                ControlNetUnionModel
                if config.get("_class_name") == "ControlNetUnionModel"
                else ControlNetModel
            )
            return cls.from_pretrained(path, local_files_only=True)
        if path.suffix.lower() != SAFE_SUFFIX:
            raise InvalidInput(
                f"the ControlNet {path.name} is a pickle file, which fooocusd does not load",
                where=f"controlnet.{setting}",
                hint="use the .safetensors version of the model",
            )
        keys = _tensor_names(path)
        if any(key.startswith("lora_controlnet") for key in keys):
            raise InvalidInput(
                f"{path.name} is a Control-LoRA (Stability/Fooocus format), which diffusers cannot run",
                where=f"controlnet.{setting}",
                hint=f"use a full SDXL ControlNet instead, e.g. {_SUGGESTED[setting]}",
            )
        own_config = path.with_suffix(".json")
        if "controlnet_cond_embedding.conv_in.weight" in keys:  # diffusers layout in one file
            config_dir = own_config if own_config.is_file() else CONTROLNET_CONFIG_DIR / "config.json"
            config = json.loads(config_dir.read_text(encoding="utf-8"))
            union = config.get("_class_name") == "ControlNetUnionModel" or "task_embedding" in keys
            if union and not own_config.is_file():
                raise InvalidInput(
                    f"{path.name} is a ControlNet-Union model without its config",
                    where=f"controlnet.{setting}",
                    hint=f"put its config.json beside it as {own_config.name}, or use the model's folder",
                )
            cls = ControlNetUnionModel if union else ControlNetModel
            model = cls.from_config(config)
            model.load_state_dict(load_file(path), strict=True)
            return model
        return ControlNetModel.from_single_file(
            str(path), config=str(CONTROLNET_CONFIG_DIR), local_files_only=True
        )


def _tensor_names(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys())


def _load_errors(path: Path, setting: str) -> contextlib.AbstractContextManager[None]:
    def explain(exc: BaseException) -> InvalidInput:
        return InvalidInput(
            f"could not load the ControlNet {path.name}: {type(exc).__name__}: {exc}",
            where=f"controlnet.{setting}",
            hint="it must be an SDXL ControlNet (a diffusers folder or one .safetensors file); "
            "a partial download is the usual cause, so download it again",
        )

    return reported_failures(explain, passthrough=(InvalidInput,))


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        transformers_logging.enable_progress_bar()
