"""Read generation metadata back out of images (ours, A1111's or Fooocus's).

Used by tests and by ``fooocusd inspect``. Only headers are read, never the pixels (except for
a PNG whose text chunks come after the image data, which Pillow must decode to reach).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

from PIL import Image, UnidentifiedImageError

from fooocusd.errors import InvalidInput

EXIF_IFD = 0x8769
TAG_USER_COMMENT = 0x9286
TAG_MAKER_NOTE = 0x927C
_CHARSET_PREFIX_BYTES = 8
# A line holding fewer pairs than this is prose, not the A1111 settings line.
_MIN_SETTINGS_PAIRS = 3
NEGATIVE_PREFIX = "Negative prompt:"


class EmbeddedMetadata(TypedDict):
    parameters: str | None
    fooocus_scheme: dict[str, Any] | None


class A1111Parameters(TypedDict):
    prompt: str
    negative: str
    params: dict[str, str]


def read_embedded_metadata(path: Path) -> EmbeddedMetadata:
    """``{"parameters": A1111 text or None, "fooocus_scheme": dict or None}`` for one image.

    Also understands images written by Fooocus itself, where the ``parameters`` chunk holds
    the JSON and ``fooocus_scheme`` only names the scheme.
    """
    try:
        with Image.open(path) as image:
            if image.format == "PNG":
                text = dict(getattr(image, "text", {}) or {})
                parameters, scheme_text = text.get("parameters"), text.get("fooocus_scheme")
            else:
                parameters, scheme_text = _from_exif(image.getexif())
    except UnidentifiedImageError as exc:
        raise InvalidInput(
            f"{path.name} is not an image Pillow can read",
            hint="pass a PNG, JPEG or WebP file",
            where=str(path),
        ) from exc

    scheme = _json_object(scheme_text)
    parameters_as_json = _json_object(parameters)
    if parameters_as_json is not None:
        return {"parameters": None, "fooocus_scheme": scheme or parameters_as_json}
    return {"parameters": parameters, "fooocus_scheme": scheme}


def _from_exif(exif: Image.Exif) -> tuple[str | None, str | None]:
    exif_ifd = exif.get_ifd(EXIF_IFD)
    # Some writers put these tags in IFD0 instead of the Exif IFD; accept both.
    comment = exif_ifd.get(TAG_USER_COMMENT, exif.get(TAG_USER_COMMENT))
    maker_note = exif_ifd.get(TAG_MAKER_NOTE, exif.get(TAG_MAKER_NOTE))
    return decode_user_comment(comment), _decode_text(maker_note)


def decode_user_comment(value: bytes | str | None) -> str | None:
    """Decode EXIF UserComment, honouring its 8-byte charset prefix."""
    if value is None or isinstance(value, str):
        return value or None
    prefix, body = value[:_CHARSET_PREFIX_BYTES], value[_CHARSET_PREFIX_BYTES:]
    if prefix == b"UNICODE\x00":
        text = body.decode(_utf16_order(body), errors="replace")
    elif prefix in (b"ASCII\x00\x00\x00", b"\x00" * _CHARSET_PREFIX_BYTES):
        text = body.decode("utf-8", errors="replace")
    elif prefix == b"JIS\x00\x00\x00\x00\x00":
        text = body.decode("iso2022_jp", errors="replace")
    else:
        text = value.decode("utf-8", errors="replace")
    text = text.rstrip("\x00 ")
    return text or None


def _utf16_order(body: bytes) -> str:
    """Byte order of UCS-2 text: writers disagree, so look at where the zero bytes of ASCII are."""
    if body.startswith(b"\xff\xfe"):
        return "utf-16"
    if body.startswith(b"\xfe\xff"):
        return "utf-16"
    zeros_first = body[0::2].count(0)
    zeros_second = body[1::2].count(0)
    return "utf-16-le" if zeros_second > zeros_first else "utf-16-be"


def _decode_text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    return value.decode("utf-8", errors="replace").rstrip("\x00") or None


def _json_object(text: str | None) -> dict[str, Any] | None:
    if not text or not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def parse_a1111_parameters(text: str) -> A1111Parameters:
    """Split A1111 infotext into prompt, negative prompt and the ``Key: value`` settings."""
    lines = text.strip("\n").split("\n")
    params: dict[str, str] = {}
    if lines:
        candidate = parse_settings_line(lines[-1])
        if len(candidate) >= _MIN_SETTINGS_PAIRS:
            params = candidate
            lines = lines[:-1]

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        if not in_negative and line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].lstrip(" ")
        (negative_lines if in_negative else prompt_lines).append(line)
    return {
        "prompt": "\n".join(prompt_lines).strip(),
        "negative": "\n".join(negative_lines).strip(),
        "params": params,
    }


def parse_settings_line(line: str) -> dict[str, str]:
    """``Steps: 30, Sampler: "A, B", Seed: 1`` → dict; quoted values are JSON strings."""
    pairs: dict[str, str] = {}
    position, length = 0, len(line)
    while position < length:
        colon = line.find(":", position)
        if colon < 0:
            break
        key = line[position:colon].strip()
        position = colon + 1
        while position < length and line[position] == " ":
            position += 1
        if position < length and line[position] == '"':
            end = _closing_quote(line, position)
            try:
                value = json.loads(line[position : end + 1])
            except json.JSONDecodeError:
                value = line[position + 1 : end]
            position = end + 1
            next_comma = line.find(",", position)
        else:
            next_comma = line.find(",", position)
            value = line[position : next_comma if next_comma >= 0 else length].strip()
        if _is_settings_key(key):
            pairs[key] = str(value)
        if next_comma < 0:
            break
        position = next_comma + 1
    return pairs


def _closing_quote(line: str, opening: int) -> int:
    position = opening + 1
    while position < len(line):
        if line[position] == "\\":
            position += 2
            continue
        if line[position] == '"':
            return position
        position += 1
    return len(line) - 1


def _is_settings_key(key: str) -> bool:
    return (
        bool(key)
        and (key[0].isalnum() or key[0] == "_")
        and all(char.isalnum() or char in " _-/" for char in key)
    )
