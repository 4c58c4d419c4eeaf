"""File names that fit: a name longer than the filesystem allows fails with ENAMETOOLONG.

Most Linux filesystems allow 255 bytes per name (eCryptfs 143), counted in bytes, so a name of
multi-byte characters reaches the limit sooner than its length suggests. Names fooocusd makes
from a user's name (a variant ``name-2.txt``, a hidden temp name, an error file) are cut here,
at a character boundary, to fit.
"""

from __future__ import annotations

import os

NAME_MAX = 255


def cut_to_bytes(text: str, limit: int) -> str:
    """``text``, cut to at most ``limit`` bytes (as the filesystem stores it) without splitting a
    character."""
    encoded = os.fsencode(text)
    if len(encoded) <= limit:
        return text
    cut = encoded[: max(limit, 0)]
    for partial in range(4):  # a UTF-8 character is at most 4 bytes
        try:
            return cut[: len(cut) - partial].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return os.fsdecode(cut)  # not UTF-8 to begin with: keep its bytes as they are


def fitted_name(stem: str, tail: str, limit: int = NAME_MAX) -> str:
    """``stem + tail``, the stem cut so that the whole fits in ``limit`` bytes; ``tail`` (a suffix,
    a ``-2``) is kept whole."""
    return cut_to_bytes(stem, limit - len(os.fsencode(tail))) + tail
