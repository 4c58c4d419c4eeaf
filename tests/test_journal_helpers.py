"""Shared helpers for the journal tests (this module holds no tests of its own)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from uuid import uuid4

from fooocusd.journal import Journal


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def spec_json(prompt: str = "a lighthouse at dusk", **fields: object) -> str:
    return json.dumps({"prompt": prompt, **fields})


def add_input(
    journal: Journal,
    root: Path,
    relpath: str = "cat.txt",
    specs: Sequence[tuple[str, int]] | None = None,
    *,
    complete: bool = True,
    content: bytes | None = None,
) -> int:
    """Claim a one-file input the way the daemon does; returns the input id."""
    key = uuid4().hex
    data = content if content is not None else relpath.encode()
    input_id = journal.begin_claim(
        key,
        relpath,
        hashlib.sha256(data).hexdigest(),
        len(data),
        files=[("spec", root / "inbox" / relpath, root / "processing" / f"{key}__{Path(relpath).name}")],
        specs=list(specs) if specs is not None else [(spec_json(), 0)],
    )
    if complete:
        journal.complete_claim(input_id)
    return input_id
