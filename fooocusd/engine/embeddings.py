"""Textual-inversion embeddings named in prompts as ``embedding:name`` (Fooocus/ComfyUI syntax).

``embedding:name`` (or, weighted, ``(embedding:name:1.2)``: the weighting parser treats the name as
ordinary prompt text) names a file in the ``embeddings`` model folders: ``name.safetensors``, the
name as a path (``negative/bad_hands``), or with its suffix. The file's vectors are added to the
resident pipeline's tokenizer(s) and text encoder(s) under a token of its own
(``<emb-…>``, from the file's SHA-256) with diffusers' ``load_textual_inversion``, once per pipeline;
the prompt text is then rewritten to that token just before tokenisation. A multi-vector embedding
takes as many token positions as it has vectors.

File layouts: SDXL embeddings hold ``clip_l`` and ``clip_g`` (one tensor per text encoder); SD 1.x
and 2.x ones a single tensor, as ``emb_params`` (kohya, A1111 safetensors), ``string_to_param``
(A1111 ``.pt``) or a single ``{token: tensor}`` entry (diffusers). The vectors' width must match the
text encoder's (768 SD 1.x / CLIP-L, 1024 SD 2.x, 1280 CLIP-G): an embedding made for another
family is refused with the reason. Pickle-based files (``.pt``, ``.bin`` ...) are refused unless
``engine.allow_unsafe_pickle``; then torch's ``weights_only`` loader reads them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fooocusd.engine.families import PICKLE_SUFFIXES, SAFE_SUFFIX
from fooocusd.engine.model_dirs import EMBEDDING_SUFFIXES, ModelDirs, put_file_into, searched_folders
from fooocusd.engine.models import PICKLE_SETTING, autov2, file_sha256
from fooocusd.engine.prompt_syntax import EMBEDDING_REFERENCE
from fooocusd.errors import InvalidInput, ModelNotFound

TOKEN_PREFIX = "<emb-"


@dataclass(frozen=True)
class EmbeddingFile:
    """An embedding a prompt used: the name as written, the file and its hash."""

    name: str
    path: Path
    sha256: str

    @property
    def token(self) -> str:
        """The token it is loaded under: unique per file content, lower case (CLIP lower-cases text)."""
        return f"{TOKEN_PREFIX}{self.sha256[:16]}>"

    def record(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256, "hash": autov2(self.sha256)}


@dataclass(frozen=True)
class TextEncoderSlot:
    """One tokenizer + text encoder pair of a pipeline and the key of its tensor in SDXL files."""

    tokenizer: Any
    text_encoder: Any
    sdxl_key: str


def encoder_slots(pipeline: Any) -> list[TextEncoderSlot]:
    """The pipeline's text encoders: CLIP-L (``clip_l``), and for SDXL also CLIP-G (``clip_g``)."""
    slots = [TextEncoderSlot(pipeline.tokenizer, pipeline.text_encoder, "clip_l")]
    if getattr(pipeline, "text_encoder_2", None) is not None:
        slots.append(TextEncoderSlot(pipeline.tokenizer_2, pipeline.text_encoder_2, "clip_g"))
    return slots


class Embeddings:
    """The embeddings loaded into one pipeline, and the ones the current image's prompts used."""

    def __init__(self, model_dirs: ModelDirs, hash_cache: Path, *, allow_unsafe_pickle: bool = False) -> None:
        self._model_dirs = model_dirs
        self._hash_cache = hash_cache
        self._allow_pickle = allow_unsafe_pickle
        self._loaded: set[str] = set()  # sha256 of the files injected into the attached pipeline
        self.used: list[EmbeddingFile] = []
        """The embeddings of the last ``rewrite`` calls since ``start_image``, for the sidecar."""
        self.files_loaded = 0

    def attach(self, pipeline: Any) -> None:
        """A new pipeline is resident: the tokens added to the previous one went with it."""
        self._loaded.clear()
        self.used = []

    def start_image(self) -> None:
        self.used = []

    def rewrite(self, pipeline: Any, workloads: Sequence[str]) -> tuple[str, ...]:
        """``workloads`` with every ``embedding:name`` replaced by its loaded token."""
        return tuple(self._rewrite_one(pipeline, text) for text in workloads)

    def record(self) -> list[dict[str, str]]:
        return [item.record() for item in self.used]

    def _rewrite_one(self, pipeline: Any, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            trailing = name[len(name.rstrip(".")) :]
            file = self._ensure_loaded(pipeline, name.rstrip("."))
            if file.sha256 not in {item.sha256 for item in self.used}:
                self.used.append(file)
            return file.token + trailing

        return EMBEDDING_REFERENCE.sub(replace, text)

    def _ensure_loaded(self, pipeline: Any, name: str) -> EmbeddingFile:
        path = self._find(name)
        file = EmbeddingFile(name=name, path=path, sha256=file_sha256(path, self._hash_cache))
        if file.sha256 not in self._loaded:
            inject_embedding(pipeline, file, read_embedding(path, allow_pickle=self._allow_pickle))
            self._loaded.add(file.sha256)
            self.files_loaded += 1
        return file

    def _find(self, name: str) -> Path:
        if not name or ".." in Path(name).parts:
            raise InvalidInput(
                f"embedding name {name!r} is not usable",
                where="prompt",
                hint="write embedding:<file name without suffix>, e.g. embedding:EasyNegative",
            )
        try:
            found = self._model_dirs.locate("embeddings", name, EMBEDDING_SUFFIXES)
        except ModelNotFound as exc:  # the same name in two subfolders
            raise InvalidInput(exc.message, where=exc.where, hint=exc.hint) from exc
        if found is not None and found.is_file():
            return found
        folders = self._model_dirs.folders("embeddings")
        raise InvalidInput(
            f"embedding {name!r} (written embedding:{name} in the prompt) was not found",
            where=searched_folders(folders),
            hint=f"{put_file_into(name, folders, no_folder='the embeddings folder')}, "
            "or correct the name in the prompt",
        )


def read_embedding(path: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The file's vectors: ``{"clip_l": …, "clip_g": …}`` (SDXL) or ``{"single": …}``, each (n, width)."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise InvalidInput(
                f"embedding {path.name} is a pickle-based {suffix} file; fooocusd refuses those because "
                "loading one can run arbitrary code",
                where=str(path),
                hint=f"use the .safetensors version of this embedding, or set {PICKLE_SETTING} = true "
                "if you trust the file (it is then read with torch's weights-only loader)",
            )
        state = _load_pickle(path)
    elif suffix == SAFE_SUFFIX:
        state = _load_safetensors(path)
    else:
        raise _not_an_embedding(path, f"expected a {SAFE_SUFFIX} file")
    return _vectors(state, path)


def inject_embedding(pipeline: Any, file: EmbeddingFile, vectors: dict[str, torch.Tensor]) -> None:
    """Add ``file``'s token to every tokenizer/text encoder of ``pipeline`` with its vectors."""
    slots = encoder_slots(pipeline)
    sdxl = len(slots) == 2
    if sdxl and "single" in vectors:
        width = vectors["single"].shape[-1]
        raise _wrong_family(file, f"it has one {width}-wide vector set (an SD 1.x/2.x embedding)", "SDXL")
    if not sdxl and "single" not in vectors:
        raise _wrong_family(file, "it has clip_l and clip_g vectors (an SDXL embedding)", "SD 1.x/2.x")
    for slot in slots:
        tensor = vectors[slot.sdxl_key if sdxl else "single"]
        expected = slot.text_encoder.get_input_embeddings().weight.shape[-1]
        if tensor.shape[-1] != expected:
            raise _wrong_family(
                file,
                f"its vectors are {tensor.shape[-1]} wide, the model's text encoder takes {expected}",
                "",
            )
        weights = tensor.to(dtype=slot.text_encoder.dtype)
        pipeline.load_textual_inversion(
            weights, token=file.token, tokenizer=slot.tokenizer, text_encoder=slot.text_encoder
        )


def _vectors(state: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    if "clip_l" in state or "clip_g" in state:
        if not ("clip_l" in state and "clip_g" in state):
            raise _not_an_embedding(path, "an SDXL embedding needs both clip_l and clip_g tensors")
        return {"clip_l": _matrix(state["clip_l"], path), "clip_g": _matrix(state["clip_g"], path)}
    if "emb_params" in state:
        return {"single": _matrix(state["emb_params"], path)}
    nested = state.get("string_to_param")
    if isinstance(nested, dict) and nested:
        return {"single": _matrix(next(iter(nested.values())), path)}
    flat = [value for key, value in state.items() if key.startswith("string_to_param.")]
    tensors = [value for value in state.values() if isinstance(value, torch.Tensor)]
    if flat:
        return {"single": _matrix(flat[0], path)}
    if len(tensors) == 1:  # diffusers: {token: tensor}
        return {"single": _matrix(tensors[0], path)}
    raise _not_an_embedding(path, "it has no clip_l/clip_g, emb_params or string_to_param tensors")


def _matrix(value: Any, path: Path) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim not in (1, 2) or value.numel() == 0:
        raise _not_an_embedding(path, "its vectors are not a non-empty (count, width) tensor")
    return value.detach().float().reshape(-1, value.shape[-1]).cpu()


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise _not_an_embedding(path, f"it is not a readable .safetensors file ({exc})") from exc


def _load_pickle(path: Path) -> dict[str, Any]:
    import pickle

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise _not_an_embedding(path, f"torch's weights-only loader cannot read it ({exc})") from exc
    if not isinstance(loaded, dict):
        raise _not_an_embedding(path, "it does not hold a dictionary of tensors")
    return loaded


def _not_an_embedding(path: Path, reason: str) -> InvalidInput:
    return InvalidInput(
        f"{path.name} is not a textual-inversion embedding fooocusd can read: {reason}",
        where=str(path),
        hint="use a .safetensors embedding made for this model's family; a partial download is a "
        "common cause, so download it again",
    )


def _wrong_family(file: EmbeddingFile, reason: str, model: str) -> InvalidInput:
    target = f"an {model} model" if model else "this model"
    return InvalidInput(
        f"embedding {file.name} ({file.path.name}) does not fit {target}: {reason}",
        where=str(file.path),
        hint="use an embedding trained for the job's model family (SDXL embeddings for SDXL, "
        "SD 1.5 embeddings for SD 1.5, SD 2.x ones for SD 2.x), or change the job's model",
    )
