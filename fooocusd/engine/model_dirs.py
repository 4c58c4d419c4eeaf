"""Where model files of each kind live: checkpoints, LoRAs, VAEs, ControlNets, upscalers, embeddings.

``ModelDirs`` is built from ``paths.models``. ``find(kind, name)`` looks ``name`` up (with or without its
``.safetensors`` suffix, or as an absolute path) in each root's subfolder for that kind, and raises
``ModelNotFound`` naming the folders it searched and where to put the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fooocusd.errors import ModelNotFound

ModelFileKind = Literal[
    "checkpoints",
    "loras",
    "vae",
    "controlnet",
    "upscale_models",
    "embeddings",
    "clip_vision",
    "ipadapter",
    "prompt_expansion",
]

SUBFOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "loras": ("loras",),
    "vae": ("vae",),
    "controlnet": ("controlnet",),
    "upscale_models": ("upscale_models",),
    "embeddings": ("embeddings",),
    "clip_vision": ("clip_vision",),
    "ipadapter": ("ipadapter",),
    "prompt_expansion": ("prompt_expansion",),
}
SAFE_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class ModelDirs:
    """The model roots, in search order."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, roots: Path | Sequence[Path]) -> ModelDirs:
        if isinstance(roots, Path):
            return cls((roots,))
        return cls(tuple(roots))

    def folders(self, kind: ModelFileKind) -> list[Path]:
        """Every folder that may hold files of ``kind``, in search order."""
        return [root / sub for root in self.roots for sub in SUBFOLDERS[kind]]

    def find(self, kind: ModelFileKind, name: str) -> Path:
        """The file (or folder) called ``name`` among ``kind``'s folders. Raises ``ModelNotFound``."""
        candidates = self.candidates(kind, name)
        for candidate in candidates:
            if candidate.exists():
                return candidate
        folders = self.folders(kind)
        raise ModelNotFound(
            f"{kind.rstrip('s').replace('_', ' ')} file {name!r} was not found",
            where=f"looked in {', '.join(str(folder) for folder in folders)}",
            hint=f"put {_with_suffix(name)} into {folders[0] if folders else 'a models folder'}",
        )

    def candidates(self, kind: ModelFileKind, name: str) -> list[Path]:
        given = Path(name).expanduser()
        if given.is_absolute():
            return [given] if given.suffix else [given, given.with_name(given.name + SAFE_SUFFIX)]
        names = [name] if Path(name).suffix else [name, name + SAFE_SUFFIX]
        return [folder / candidate for folder in self.folders(kind) for candidate in names]


def _with_suffix(name: str) -> str:
    return name if Path(name).suffix else name + SAFE_SUFFIX
