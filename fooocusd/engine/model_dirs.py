"""Where model files of each kind live: checkpoints, LoRAs, VAEs, ControlNets, upscalers, embeddings.

``ModelDirs`` is built from ``paths.models``: one or more *roots*, searched in the order given. The first
root is where ``fooocusd models fetch`` saves files.

A root is either

- a **models folder** (fooocusd's own, or the ``models/`` folder of another program), holding the
  kind folders below; or
- the **install folder** of Fooocus, AUTOMATIC1111/Forge or ComfyUI. A root is taken as an install
  folder when it has a ``models/`` subfolder *and* one of the files those programs start from
  (``entry_with_update.py`` or ``launch.py``: Fooocus/A1111; ``webui.py``: A1111/Forge; ``main.py`` or
  a ``comfy/`` folder: ComfyUI). Its ``models/`` folder is then used, plus A1111's ``embeddings/``
  beside it.

Within a models folder, each kind is looked for in these subfolders, in this order (Fooocus and
ComfyUI share most names; the capitalised ones are A1111's):

=================  ==========================================================
kind               subfolders
=================  ==========================================================
checkpoints        ``checkpoints``, ``Stable-diffusion``, then the models folder itself (top level only)
loras              ``loras``, ``Lora``, ``LyCORIS``
vae                ``vae``, ``VAE``
controlnet         ``controlnet``, ``ControlNet``
upscale_models     ``upscale_models``, ``ESRGAN``, ``RealESRGAN``
embeddings         ``embeddings`` (and ``<install>/embeddings`` for an A1111 install)
clip_vision        ``clip_vision``
ipadapter          ``ipadapter``
prompt_expansion   ``prompt_expansion``
face_detection     ``face_detection``
depth_estimator    ``depth_estimator`` (transformers depth models, one folder each)
=================  ==========================================================

Search order for a name: every folder above, root by root, for the name as given (it may contain
subfolders, e.g. ``SDXL/juggernaut``); then, if none matched, the subfolders of those folders (ComfyUI
users nest checkpoints by family) for a file of that name. A nested name found in two places is an
error that lists both, rather than a guess.

A folder that is one model (a diffusers pipeline with ``model_index.json``, or a model saved with
``save_pretrained``: ``config.json`` beside its weights, such as a ControlNet or the depth estimator)
is listed and named as a whole, never by the files inside it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
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
    "face_detection",
    "depth_estimator",
]
RootLayout = Literal["models folder", "fooocus", "a1111", "comfyui"]

SUBFOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints", "Stable-diffusion"),
    "loras": ("loras", "Lora", "LyCORIS"),
    "vae": ("vae", "VAE"),
    "controlnet": ("controlnet", "ControlNet"),
    "upscale_models": ("upscale_models", "ESRGAN", "RealESRGAN"),
    "embeddings": ("embeddings",),
    "clip_vision": ("clip_vision",),
    "ipadapter": ("ipadapter",),
    "prompt_expansion": ("prompt_expansion",),
    "face_detection": ("face_detection",),
    "depth_estimator": ("depth_estimator",),
}
KINDS: tuple[ModelFileKind, ...] = tuple(SUBFOLDERS)  # type: ignore[assignment]
KIND_LABELS: dict[ModelFileKind, str] = {
    "checkpoints": "checkpoint",
    "loras": "LoRA",
    "vae": "VAE",
    "controlnet": "ControlNet",
    "upscale_models": "upscale model",
    "embeddings": "embedding",
    "clip_vision": "CLIP vision model",
    "ipadapter": "IP-Adapter",
    "prompt_expansion": "prompt expansion model",
    "face_detection": "face detection model",
    "depth_estimator": "depth estimator",
}
SAFE_SUFFIX = ".safetensors"
EMBEDDING_SUFFIXES = (SAFE_SUFFIX, ".pt", ".bin")
"""Tried in this order after an embedding's name (``embedding:name`` in a prompt)."""
MODEL_FILE_SUFFIXES = frozenset({SAFE_SUFFIX, ".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle", ".gguf"})
_INSTALL_MARKERS: tuple[tuple[str, RootLayout], ...] = (
    ("entry_with_update.py", "fooocus"),
    ("fooocus_version.py", "fooocus"),
    ("webui.py", "a1111"),
    ("comfy", "comfyui"),
    ("main.py", "comfyui"),
    ("launch.py", "a1111"),
)
_MAX_NESTING = 8
_SAVED_WEIGHTS = re.compile(
    r"(?:diffusion_pytorch_model|pytorch_model|model)(?:[.-][^/]*)?\.(?:safetensors|bin)(?:\.index\.json)?"
)
"""The weights ``save_pretrained`` writes (``model.safetensors``, ``pytorch_model.bin``,
``diffusion_pytorch_model.fp16.safetensors``, ``model-00001-of-00002.safetensors``, their
``.index.json``): beside a ``config.json``, they make the folder one model."""


@dataclass(frozen=True)
class SearchFolder:
    """One folder that may hold files of a kind; ``nested`` says whether its subfolders count too."""

    path: Path
    nested: bool = True


@dataclass(frozen=True)
class ModelDirs:
    """The model roots, in search order."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, roots: ModelDirs | Path | str | Sequence[Path | str]) -> ModelDirs:
        if isinstance(roots, ModelDirs):
            return roots
        if isinstance(roots, Path | str):
            return cls((Path(roots),))
        return cls(tuple(Path(root) for root in roots))

    @property
    def download_root(self) -> Path:
        """The models folder of the first root: ``models fetch`` saves into its kind folders."""
        return models_folder(self.roots[0]) if self.roots else Path("models")

    def download_folder(self, kind: ModelFileKind) -> Path:
        return self.download_root / SUBFOLDERS[kind][0]

    def search_folders(self, kind: ModelFileKind) -> list[SearchFolder]:
        """Every folder that may hold files of ``kind``, in search order, without duplicates."""
        found: list[SearchFolder] = []
        seen: set[Path] = set()
        for root in self.roots:
            for folder in _root_folders(root, kind):
                key = _identity(folder.path)
                if key not in seen:
                    seen.add(key)
                    found.append(folder)
        return found

    def folders(self, kind: ModelFileKind) -> list[Path]:
        """Every folder that may hold files of ``kind``, in search order."""
        return [folder.path for folder in self.search_folders(kind)]

    def find(self, kind: ModelFileKind, name: str, suffixes: Sequence[str] = (SAFE_SUFFIX,)) -> Path:
        """The file (or folder) called ``name`` among ``kind``'s folders. Raises ``ModelNotFound``.

        Without a suffix, ``name`` + each of ``suffixes`` is tried too (in that order).
        """
        found = self.locate(kind, name, suffixes)
        if found is not None:
            return found
        folders = self.folders(kind)
        raise ModelNotFound(
            f"{_describe(kind)} {name!r} was not found",
            where=searched_folders(folders),
            hint=f"put {_with_suffix(name)} into {folders[0] if folders else 'a models folder'} "
            "(paths.models lists the model folders)",
        )

    def locate(self, kind: ModelFileKind, name: str, suffixes: Sequence[str] = (SAFE_SUFFIX,)) -> Path | None:
        """Like ``find`` but ``None`` when nothing matches; still raises when a nested name is ambiguous."""
        for candidate in self.candidates(kind, name, suffixes):
            if candidate.exists():
                return candidate
        if Path(name).expanduser().is_absolute():
            return None
        nested = self._nested_matches(kind, name, suffixes)
        if len(nested) > 1:
            raise ModelNotFound(
                f"{_describe(kind)} {name!r} is ambiguous: it is in {len(nested)} places",
                where=", ".join(str(path) for path in nested),
                hint="name it by its path inside the models folder, e.g. "
                f"{nested[0].parent.name}/{nested[0].name}",
            )
        return nested[0] if nested else None

    def candidates(
        self, kind: ModelFileKind, name: str, suffixes: Sequence[str] = (SAFE_SUFFIX,)
    ) -> list[Path]:
        """The paths tried for ``name`` before any nested search, in order."""
        names = _names_with_suffixes(name, suffixes)
        given = Path(name).expanduser()
        if given.is_absolute():
            return [Path(candidate).expanduser() for candidate in names]
        return [folder / candidate for folder in self.folders(kind) for candidate in names]

    def files(self, kind: ModelFileKind) -> Iterator[Path]:
        """Every model file (and model folder) of ``kind``, folder by folder in search order."""
        seen: set[Path] = set()
        for folder in self.search_folders(kind):
            for path in _model_entries(folder):
                key = _identity(path)
                if key not in seen:
                    seen.add(key)
                    yield path

    def name_for(self, kind: ModelFileKind, path: Path) -> str:
        """What a job writes to use ``path``: its path below the folder of ``kind`` that holds it,
        without ``.safetensors`` (``sub/foo`` for ``loras/sub/foo.safetensors``)."""
        for folder in self.search_folders(kind):
            if path.is_relative_to(folder.path) and path != folder.path:
                relative = path.relative_to(folder.path).as_posix()
                return relative.removesuffix(SAFE_SUFFIX)
        return path.name.removesuffix(SAFE_SUFFIX)

    def _nested_matches(self, kind: ModelFileKind, name: str, suffixes: Sequence[str]) -> list[Path]:
        wanted = {Path(candidate).name for candidate in _names_with_suffixes(name, suffixes)}
        relative = Path(name)
        matches: list[Path] = []
        for folder in self.search_folders(kind):
            if not folder.nested:
                continue
            for path in _model_entries(folder):
                if path.name in wanted and path.parent != folder.path and _ends_with(path, relative):
                    matches.append(path)
        return matches


def root_layout(root: Path) -> RootLayout:
    """What a configured root is: a models folder, or the install folder of another program."""
    if not (root / "models").is_dir():
        return "models folder"
    for marker, layout in _INSTALL_MARKERS:
        if (root / marker).exists():
            return layout
    return "models folder"


def models_folder(root: Path) -> Path:
    """The folder holding the kind subfolders: the root itself, or ``<install>/models``."""
    return root if root_layout(root) == "models folder" else root / "models"


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def is_saved_model_folder(path: Path) -> bool:
    """One model saved with ``save_pretrained`` (a transformers model, or one diffusers component such
    as a ControlNet): ``config.json`` beside its weights."""
    if not (path / "config.json").is_file():
        return False
    try:
        return any(_SAVED_WEIGHTS.fullmatch(entry.name) for entry in path.iterdir())
    except OSError:
        return False


def is_model_folder(path: Path) -> bool:
    """A folder that is one model (a diffusers pipeline or a saved model), listed and named as a whole."""
    return is_diffusers_folder(path) or (path.is_dir() and is_saved_model_folder(path))


def _root_folders(root: Path, kind: ModelFileKind) -> list[SearchFolder]:
    base = models_folder(root)
    folders = [SearchFolder(base / sub) for sub in SUBFOLDERS[kind]]
    if kind == "checkpoints":
        folders.append(SearchFolder(base, nested=False))  # a plain folder of checkpoints, as before
    if kind == "embeddings" and base != root:
        folders.append(SearchFolder(root / "embeddings"))  # A1111 keeps them beside models/
    return folders


def _model_entries(folder: SearchFolder) -> Iterator[Path]:
    """Model files and model folders in ``folder`` (and below, when nested), sorted by name."""
    if not folder.path.is_dir():
        return
    yield from _walk(folder.path, depth=_MAX_NESTING if folder.nested else 0)


def _walk(directory: Path, depth: int) -> Iterator[Path]:
    try:
        entries = sorted(directory.iterdir(), key=lambda entry: entry.name.lower())
    except OSError:
        return
    subfolders: list[Path] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue  # partial downloads, editor files, .git
        if entry.is_dir():
            if is_model_folder(entry):
                yield entry
            else:
                subfolders.append(entry)
        elif entry.suffix.lower() in MODEL_FILE_SUFFIXES and entry.is_file():
            yield entry
    if depth > 0:
        for subfolder in subfolders:
            yield from _walk(subfolder, depth - 1)


def _names_with_suffixes(name: str, suffixes: Sequence[str]) -> list[str]:
    if Path(name).suffix.lower() in {*MODEL_FILE_SUFFIXES, *suffixes}:
        return [name]
    return [name, *(name + suffix for suffix in suffixes)]


def _ends_with(path: Path, relative: Path) -> bool:
    # "SDXL/juggernaut" must match .../SDXL/juggernaut.safetensors, not .../Other/juggernaut.safetensors.
    parents = relative.parent.parts
    return not parents or path.parent.parts[-len(parents) :] == parents


def _identity(path: Path) -> Path:
    # "vae" and "VAE" are one folder on case-insensitive file systems; symlinked roots are one too.
    try:
        return Path(os.path.realpath(path)) if path.exists() else path
    except OSError:
        return path


def _describe(kind: ModelFileKind) -> str:
    return f"{KIND_LABELS[kind]} file"


def searched_folders(folders: Sequence[Path]) -> str:
    """An error's ``where`` for a file that is in none of ``folders``."""
    return "looked in " + (", ".join(str(folder) for folder in folders) or "no models folder")


def put_file_into(name: str, folders: Sequence[Path], *, no_folder: str) -> str:
    """The start of a not-found hint: ``put <file name>.safetensors into <first folder>``."""
    stem = Path(name).name
    file_name = stem if Path(stem).suffix else stem + SAFE_SUFFIX
    return f"put {file_name} into {folders[0] if folders else no_folder}"


def _with_suffix(name: str) -> str:
    return name if Path(name).suffix else name + SAFE_SUFFIX
