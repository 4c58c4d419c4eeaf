"""Names cut to fit the filesystem's limit in bytes, never splitting a character."""

from __future__ import annotations

import os

from fooocusd.file_names import cut_to_bytes, fitted_name


def test_a_name_that_fits_is_kept_whole() -> None:
    assert cut_to_bytes("cat.png", 255) == "cat.png"


def test_a_cut_never_splits_a_multibyte_character() -> None:
    cut = cut_to_bytes("é" * 200, 255)  # 2 bytes each: 127 fit in 254
    assert cut == "é" * 127


def test_a_cut_counts_four_byte_characters_in_bytes() -> None:
    assert cut_to_bytes("🦊" * 10, 9) == "🦊" * 2


def test_a_name_that_is_not_utf8_is_cut_by_its_bytes() -> None:
    name = os.fsdecode(b"\xe9" * 10)
    assert os.fsencode(cut_to_bytes(name, 4)) == b"\xe9" * 4


def test_the_tail_is_kept_whole_and_the_stem_is_cut() -> None:
    name = fitted_name("a" * 300, "-12.toml")
    assert name == "a" * 247 + "-12.toml" and len(name) == 255
