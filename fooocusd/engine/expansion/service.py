"""``engine.expansion``: which expander the daemon uses, and what each image's workloads get from it.

``engine.expansion`` is one of:

* ``"auto"`` (default): the first GPT-2-compatible folder under ``<paths.models>/prompt_expansion/``
  (a folder holding ``config.json`` and tokenizer files, or that folder itself); failing that, the
  built-in tiny random expander when ``engine.model = "tiny-random"``; otherwise expansion is off
  and the daemon says once, at start, where to put a model;
* ``"off"``: "Fooocus V2" is accepted but adds nothing;
* ``"tiny-random"``: the built-in tiny random expander (noise words, for plumbing checks);
* a path to a GPT-2-compatible folder, absolute or under ``prompt_expansion/``. A missing or
  broken folder stops the daemon at start (``ConfigError`` naming the path).

``PromptExpansion.apply`` adds the expanded prompt as the last positive workload, as Fooocus does,
and returns ``ExpandedWorkloads`` carrying what the sidecar records (``expansion_record``).

Expansions are remembered by (prompt, seed), the last ``MEMO_SIZE`` of them: the same prompt and
seed always give the same text, so a job prepared again (a reload, a retry) or prepared ahead
(``service/expansion_ahead.py``, inside ``ahead()``) is not expanded twice. An expansion prepared
ahead gives way to one a job needs now.

Together: the worker collects the next jobs' (prompt, seed) pairs (``collecting()``: ``apply``
then records instead of expanding) and runs them with ``expand_together`` before preparing those
jobs, so one model step advances a whole batch's expansions (``PromptExpander.expand_many``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from fooocusd.engine.expansion.expander import TINY_RANDOM, Expansion, PromptExpander
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.styles import Workloads
from fooocusd.errors import ConfigError
from fooocusd.settings import EngineSettings

AUTO = "auto"
OFF = "off"
STATUS_EXPANDED = "fooocus_v2"
STATUS_NOT_REQUESTED = "off"
STATUS_NO_MODEL = "unavailable (no model)"
STATUS_SWITCHED_OFF = 'unavailable (engine.expansion = "off")'
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
MEMO_SIZE = 512
"""Expansions remembered: a few queues' worth of (prompt, seed) pairs, a few hundred bytes each."""
GET_A_MODEL = (
    "hf download openai-community/gpt2 config.json model.safetensors tokenizer.json tokenizer_config.json "
    "vocab.json merges.txt --local-dir {folder}/gpt2"
)


@dataclass(frozen=True)
class ExpandedWorkloads(Workloads):
    """``Workloads`` after prompt expansion, with what the sidecar records about it."""

    expansion_status: str = STATUS_NOT_REQUESTED
    expansion_model: str = ""
    expansion_text: str = ""
    expanded_prompt: str = ""


def expansion_record(workloads: Workloads) -> dict[str, Any]:
    """The sidecar fields: ``expansion`` (the status), ``expansion_model``, ``expansion_text`` (the added
    words) and ``expanded_prompt`` (the full text encoded as the last positive workload)."""
    if isinstance(workloads, ExpandedWorkloads):
        return {
            "expansion": workloads.expansion_status,
            "expansion_model": workloads.expansion_model,
            "expansion_text": workloads.expansion_text,
            "expanded_prompt": workloads.expanded_prompt,
        }
    status = STATUS_NO_MODEL if workloads.expansion else STATUS_NOT_REQUESTED
    return {"expansion": status, "expansion_model": "", "expansion_text": "", "expanded_prompt": ""}


def is_model_folder(folder: Path) -> bool:
    """A folder ``from_pretrained`` can load: config.json plus tokenizer files."""
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in TOKENIZER_FILES)


class PromptExpansion:
    """The daemon's expansion: an expander source (folder or tiny-random), or why there is none.

    The model loads once, on ``preload()`` (the daemon calls it at start) or on first use.
    """

    def __init__(
        self,
        *,
        folder: Path | None = None,
        tiny_random: bool = False,
        unavailable: str = STATUS_NO_MODEL,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.folder = folder
        self.tiny_random = tiny_random
        self.unavailable = unavailable
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self._expander: PromptExpander | None = None
        self._lock = threading.Lock()
        self._memo: OrderedDict[tuple[str, int], Expansion] = OrderedDict()
        self._expanding = threading.Lock()
        self._wanted_now = threading.Condition()
        self._waiting_now = 0
        """Threads waiting for an expansion they need now (expansions ahead wait for them)."""
        self._local = threading.local()
        self.expanded = 0
        """Expansions run (not remembered ones)."""
        self.expanded_ahead = 0
        """Of those, the ones run inside ``ahead()``."""

    @property
    def enabled(self) -> bool:
        return self.folder is not None or self.tiny_random

    @property
    def model_name(self) -> str:
        if self.tiny_random:
            return TINY_RANDOM
        return self.folder.name if self.folder is not None else ""

    def preload(self) -> None:
        """Load a model folder now, so a broken one stops the daemon's start (``ConfigError``).

        The built-in tiny model cannot be broken and is built on first use instead.
        """
        if self.folder is not None:
            self.load()

    def load(self) -> PromptExpander | None:
        """Load the expander (once); None when expansion is unavailable."""
        if not self.enabled:
            return None
        with self._lock:
            if self._expander is None:
                if self.folder is not None:
                    self._expander = PromptExpander.from_folder(
                        self.folder, device=self.device, dtype=self.dtype
                    )
                else:
                    self._expander = PromptExpander.tiny_random(device=self.device)
                logger.info('prompt expansion ("Fooocus V2") uses {}', self._expander.name)
            return self._expander

    def apply(self, workloads: Workloads, seed: int) -> ExpandedWorkloads:
        """Add this image's expansion (seeded by its ``seed``) as the last positive workload."""
        plain = ExpandedWorkloads(
            **{f.name: getattr(workloads, f.name) for f in dataclasses.fields(Workloads)}
        )
        if not workloads.expansion:
            return plain
        collected = getattr(self._local, "collected", None)
        if collected is not None:
            collected.append((workloads.expansion_prompt, seed))
            return plain
        expander = self.load()
        if expander is None:
            return dataclasses.replace(plain, expansion_status=self.unavailable)
        expansion = self._expansion(expander, workloads.expansion_prompt, seed)
        if not expansion.text:
            return dataclasses.replace(plain, expansion_status=STATUS_NOT_REQUESTED)
        return dataclasses.replace(
            plain,
            positive=[*workloads.positive, expansion.text],
            expansion_status=STATUS_EXPANDED,
            expansion_model=self.model_name,
            expansion_text=expansion.added,
            expanded_prompt=expansion.text,
        )

    @contextlib.contextmanager
    def collecting(self) -> Iterator[list[tuple[str, int]]]:
        """Inside the block, this thread's ``apply`` calls record the (prompt, seed) pairs they would
        expand, in the list yielded, and leave their workloads unexpanded."""
        pairs: list[tuple[str, int]] = []
        self._local.collected = pairs
        try:
            yield pairs
        finally:
            self._local.collected = None

    def expand_together(self, pairs: list[tuple[str, int]]) -> int:
        """Expand the pairs not remembered yet, several per model step, and remember them; how many
        ran."""
        expander = self.load()
        if expander is None:
            return 0
        with self._expanding:
            missing = list(dict.fromkeys(pair for pair in pairs if pair not in self._memo))
            if not missing:
                return 0
            for pair, expansion in zip(missing, expander.expand_many(missing), strict=True):
                self._memo[pair] = expansion
            while len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
            self.expanded += len(missing)
        return len(missing)

    @contextlib.contextmanager
    def ahead(self) -> Iterator[None]:
        """Expansions this thread asks for inside the block are preparations for later jobs: they
        are remembered, and each waits while another thread waits for an expansion it needs now."""
        self._local.ahead = True
        try:
            yield
        finally:
            self._local.ahead = False

    def _expansion(self, expander: PromptExpander, prompt: str, seed: int) -> Expansion:
        key = (prompt, seed)
        ahead = getattr(self._local, "ahead", False)
        if not ahead:
            with self._wanted_now:
                self._waiting_now += 1
        try:
            while True:
                if ahead:
                    with self._wanted_now:
                        self._wanted_now.wait_for(lambda: self._waiting_now == 0)
                with self._expanding:
                    remembered = self._memo.get(key)
                    if remembered is not None:
                        self._memo.move_to_end(key)
                        return remembered
                    if ahead and self._waiting_now:
                        continue  # a job needs one now: it goes first
                    expansion = expander.expand_parts(prompt, seed)
                    self.expanded += 1
                    self.expanded_ahead += ahead
                    self._memo[key] = expansion
                    while len(self._memo) > MEMO_SIZE:
                        self._memo.popitem(last=False)
                    return expansion
        finally:
            if not ahead:
                with self._wanted_now:
                    self._waiting_now -= 1
                    self._wanted_now.notify_all()


def apply_expansion(workloads: Workloads, expansion: PromptExpansion | None, seed: int) -> Workloads:
    """``expansion.apply``; without a ``PromptExpansion`` the workloads stay as they are."""
    return workloads if expansion is None else expansion.apply(workloads, seed)


def build_prompt_expansion(settings: EngineSettings, models_dir: Path) -> PromptExpansion:
    """The expansion ``engine.expansion`` asks for. Raises ``ConfigError`` for a missing folder."""
    from fooocusd.engine.devices import pick_device, pick_dtype

    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    choice = settings.expansion.strip()
    folders = ModelDirs.of(models_dir).folders("prompt_expansion")
    if choice.lower() == OFF:
        return PromptExpansion(unavailable=STATUS_SWITCHED_OFF)
    if choice.lower() == TINY_RANDOM:
        return PromptExpansion(tiny_random=True, device=device)
    if choice.lower() == AUTO:
        found = find_model_folder(folders)
        if found is not None:
            return PromptExpansion(folder=found, device=device, dtype=dtype)
        if settings.model.strip().lower() == TINY_RANDOM:
            return PromptExpansion(tiny_random=True, device=device)
        where = folders[0] if folders else models_dir / "prompt_expansion"
        logger.info(
            'prompt expansion ("Fooocus V2") is off: it needs a GPT-2-compatible model folder in {}. '
            "Any local GPT-2-class model works, e.g. `{}`; then restart. Jobs that ask for "
            '"Fooocus V2" run without it until then. Set engine.expansion = "off" to silence this.',
            where,
            GET_A_MODEL.format(folder=where),
        )
        return PromptExpansion(unavailable=STATUS_NO_MODEL)
    return PromptExpansion(folder=resolve_model_folder(choice, folders), device=device, dtype=dtype)


def find_model_folder(folders: list[Path]) -> Path | None:
    """The first loadable model folder: a ``prompt_expansion`` folder itself, else its subfolders by name."""
    for folder in folders:
        if is_model_folder(folder):
            return folder
        if folder.is_dir():
            for child in sorted(folder.iterdir()):
                if child.is_dir() and is_model_folder(child):
                    return child
    return None


def resolve_model_folder(setting: str, folders: list[Path]) -> Path:
    """``engine.expansion`` as a path: absolute (``~`` allowed) or under a ``prompt_expansion`` folder."""
    given = Path(setting).expanduser()
    candidates = (
        [given] if given.is_absolute() else [folder / given for folder in folders] + [given.absolute()]
    )
    for candidate in candidates:
        if is_model_folder(candidate):
            return candidate
    tried = ", ".join(str(candidate) for candidate in candidates)
    example = GET_A_MODEL.format(folder=folders[0] if folders else "<models>/prompt_expansion")
    raise ConfigError(
        f"engine.expansion = {setting!r}: no prompt expansion model there (looked in {tried})",
        where="engine.expansion",
        hint="point it at a GPT-2-compatible folder holding config.json, the weights and the tokenizer "
        f'files (e.g. `{example}`), or use "auto", "off" or "tiny-random"',
    )
