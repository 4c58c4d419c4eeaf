"""The curated vocabulary of prompt expansion: fooocusd's own positive descriptive words.

The list lives in ``fooocusd/data/expansion_words.txt``: one lower-case word per line, ``#``
comments. Expansion adds whole tokens, so only single words are candidates; a word the expansion
tokenizer cannot spell as one token (after a space) is simply never added.
"""

from __future__ import annotations

from pathlib import Path

import fooocusd

WORDS_FILE = Path(fooocusd.__file__).parent / "data" / "expansion_words.txt"


def load_word_list(path: Path = WORDS_FILE) -> tuple[str, ...]:
    """The entries of a word list, in file order, without comments or blank lines."""
    entries: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            entries.append(entry)
    return tuple(entries)


def allowed_words(entries: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The distinct single-word entries, lower-cased, in first-seen order (terms of several words
    are skipped: their parts, such as "of", are not descriptive on their own)."""
    seen: dict[str, None] = {}
    for entry in entries:
        words = entry.lower().split()
        if len(words) == 1:
            seen.setdefault(words[0], None)
    return tuple(seen)
