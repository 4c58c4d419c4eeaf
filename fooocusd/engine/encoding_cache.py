"""Prompt workloads already encoded, kept between images of the resident pipeline.

Most images repeat most of their text: every job of a daemon usually shares its negative prompt and
its styles' lines, and the images of one job share everything but the expansion. Encoding one
workload runs both CLIP encoders, about a thousand small kernels (measured in docs/benchmarks.md),
on the render thread between two renders. A workload encoded once is looked up instead.

The result of a lookup is the very tensor the encoder gave the first time, so an image is bit for
bit what it would be without the cache. The key names everything the encoding depends on besides
the text encoders' weights: the (rewritten) text, the CLIP skip, and the caller's ``state`` (the
active LoRAs and the tokenizers' sizes). The weights are covered by ``attach``: a newly loaded
pipeline empties the cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import torch

DEFAULT_BUDGET_BYTES = 64 * 2**20
"""Device memory the kept encodings may take: about 200 one-block SDXL workloads in bfloat16."""

Encoded = TypeVar("Encoded")


class EncodingCache:
    """Least recently used workload encodings, bounded by the bytes of their tensors."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def attach(self, pipeline: object | None) -> None:
        """A pipeline was loaded (or unloaded): encodings of the previous one no longer apply."""
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def encoded(self, key: Hashable, encode: Callable[[], Encoded]) -> Encoded:
        """The kept result for ``key``, or ``encode()``'s, kept for next time if it fits the budget."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[0]
        result = encode()
        size = tensor_bytes(result)
        with self._lock:
            self.misses += 1
            if size > self.budget_bytes or key in self._entries:
                return result
            self._entries[key] = (result, size)
            self._bytes += size
            while self._bytes > self.budget_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
        return result


def tensor_bytes(value: object) -> int:
    """Bytes of the tensors in ``value`` (a tensor, or a tuple or list of them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, tuple | list):
        return sum(tensor_bytes(item) for item in value)
    return 0
