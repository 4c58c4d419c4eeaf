"""VAE override: decode (and encode) with a VAE file from the ``vae`` folder instead of the model's own.

The file may use the single-file (ldm: ``encoder.down.0…``, optionally under ``first_stage_model.``)
or the diffusers key layout. It is built with the architecture of the model's own VAE (for a
single-file SDXL checkpoint that is the shipped ``configs/sdxl_base/vae`` config), so a VAE made
for another model family is refused rather than producing garbage. One override stays cached; the
model's own VAE is kept aside and put back when a job asks for none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fooocusd.engine.families import PICKLE_SUFFIXES, SAFE_SUFFIX
from fooocusd.engine.fetch import fetch_suggestion
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.models import autov2, file_sha256
from fooocusd.errors import InvalidInput, ModelNotFound

DEFAULT_VAE_NAMES = frozenset({"", "default", "none", "built-in", "builtin"})
_DIFFUSERS_VAE_KEY = "encoder.down_blocks.0.resnets.0.conv1.weight"


@dataclass(frozen=True)
class VaeChoice:
    """The VAE an image was decoded with: ``name`` "default" means the model's own."""

    name: str
    sha256: str = ""

    def record(self) -> dict[str, Any]:
        if not self.sha256:
            return {"vae": self.name}
        return {"vae": self.name, "vae_sha256": self.sha256, "vae_hash": autov2(self.sha256)}


class VaeOverrides:
    """Swaps ``pipeline.vae`` per job between the model's own VAE and a cached override."""

    def __init__(self, model_dirs: ModelDirs, hash_cache: Path) -> None:
        self._model_dirs = model_dirs
        self._hash_cache = hash_cache
        self._own: Any = None
        self._cached: tuple[str, Any] | None = None  # (sha256, AutoencoderKL)
        self.loads = 0

    def attach(self, pipeline: Any) -> None:
        """A new pipeline was loaded: remember its own VAE."""
        self._own = pipeline.vae

    def select(self, pipeline: Any, name: str) -> VaeChoice:
        """Put the VAE called ``name`` (or the model's own) into ``pipeline``."""
        if self._own is None:
            self.attach(pipeline)
        if name.strip().lower() in DEFAULT_VAE_NAMES:
            pipeline.vae = self._own
            return VaeChoice(name="default")
        path = self._find(name.strip())
        sha256 = file_sha256(path, self._hash_cache)
        if self._cached is None or self._cached[0] != sha256:
            self._cached = None
            self._cached = (sha256, self._load(path))
            self.loads += 1
        vae = self._cached[1]
        own = self._own
        vae.to(device=own.device, dtype=own.dtype)
        pipeline.vae = vae
        return VaeChoice(name=path.stem, sha256=sha256)

    def _find(self, name: str) -> Path:
        if Path(name).suffix.lower() in PICKLE_SUFFIXES:
            raise InvalidInput(
                f"VAE {name} is a pickle-based file; fooocusd refuses those because loading one can run "
                "arbitrary code",
                where="vae",
                hint="use the .safetensors version of this VAE",
            )
        try:
            return self._model_dirs.find("vae", name)
        except ModelNotFound as exc:
            stem = Path(name).name
            folders = self._model_dirs.folders("vae")
            raise InvalidInput(
                f"VAE {name!r} was not found",
                where=exc.where,
                hint=f"put {stem if Path(stem).suffix else stem + SAFE_SUFFIX} into "
                f"{folders[0] if folders else 'the vae folder'}{fetch_suggestion(stem)}; "
                "vae = 'default' uses the model's own",
            ) from exc

    def _load(self, path: Path) -> Any:
        from diffusers import AutoencoderKL
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if path.suffix.lower() != SAFE_SUFFIX:
            raise _not_a_vae(path, f"expected a {SAFE_SUFFIX} file")
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise _not_a_vae(path, f"it is not a readable .safetensors file ({exc})") from exc
        config = dict(self._own.config)
        if _DIFFUSERS_VAE_KEY not in state:
            state = convert_ldm_vae_checkpoint(state, config)
        with torch.device("cpu"):
            vae = AutoencoderKL.from_config(config)
        try:
            vae.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise _not_a_vae(path, f"its weights do not fit this model's VAE ({first_line})") from exc
        return vae.eval()


def _not_a_vae(path: Path, reason: str) -> InvalidInput:
    return InvalidInput(
        f"{path.name} cannot be used as the VAE: {reason}",
        where=str(path),
        hint="use an SDXL VAE such as sdxl_vae.safetensors (SD 1.5 VAEs do not fit SDXL models), "
        "or vae = 'default'",
    )
