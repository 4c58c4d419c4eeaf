"""Encode one image with its embedded metadata, publish it, then publish its sidecar.

Order matters: the image goes first, the ``.json`` sidecar last. A sidecar therefore always
describes a complete image, and an image without a sidecar is an interrupted write that
reconciliation may delete and redo.

Embedded metadata:

* PNG: text chunks ``parameters`` (A1111 infotext), ``fooocus_scheme`` (JSON) and ``Software``.
* JPEG/WebP: EXIF UserComment (0x9286, A1111 infotext with its 8-byte charset prefix),
  MakerNote (0x927C, the JSON) and Software (0x0131, ``fooocusd <version>``). A JPEG's EXIF
  block cannot exceed 64 KiB: for very long prompts the JSON, then the infotext, is left out of
  the image (the sidecar always has everything) and the sidecar says so in ``embedded_metadata``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Literal

from loguru import logger
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from fooocusd.crashpoints import crashpoint
from fooocusd.outbox.atomic import publish_bytes
from fooocusd.outbox.metadata import a1111_parameters, fooocus_scheme, version_label
from fooocusd.outbox.naming import sidecar_path_for

ImageFormat = Literal["png", "jpeg", "webp"]
EmbeddedMetadata = Literal["full", "parameters_only", "none"]

EXIF_IFD = 0x8769
TAG_SOFTWARE = 0x0131
TAG_USER_COMMENT = 0x9286
TAG_MAKER_NOTE = 0x927C
ASCII_PREFIX = b"ASCII\x00\x00\x00"
UNICODE_PREFIX = b"UNICODE\x00"
# A JPEG APP1 segment holds at most 65533 bytes of payload ("Exif\0\0" + TIFF data).
MAX_JPEG_EXIF_BYTES = 65533

_FORMAT_ALIASES: dict[str, ImageFormat] = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
_SUFFIXES: dict[ImageFormat, tuple[str, ...]] = {
    "png": (".png",),
    "jpeg": (".jpg", ".jpeg"),
    "webp": (".webp",),
}


def normalise_format(fmt: str) -> ImageFormat:
    try:
        return _FORMAT_ALIASES[fmt.lower().lstrip(".")]
    except KeyError:
        raise ValueError(f"unsupported output format {fmt!r}; use png, jpeg or webp") from None


def extension_for(fmt: str) -> str:
    """The file extension (with dot) an output of this format gets."""
    return _SUFFIXES[normalise_format(fmt)][0]


def write_image_with_sidecar(
    image: Image.Image,
    record: dict[str, Any],
    final_image_path: Path,
    *,
    fmt: str,
    quality: int,
    embed_metadata: bool,
    umask: int,
) -> tuple[Path, Path, str]:
    """Publish the image (never overwriting), then its sidecar; return (image, sidecar, sha256).

    If the sidecar cannot be written, the just-published image is removed again and the error
    (``FileExistsError`` or ``TransientError``) is raised, so no half-finished output remains.
    """
    image_format = normalise_format(fmt)
    if final_image_path.suffix.lower() not in _SUFFIXES[image_format]:
        raise ValueError(f"{final_image_path.name} does not end in {' or '.join(_SUFFIXES[image_format])}")
    sidecar_path = sidecar_path_for(final_image_path)

    data, embedded = encode_image(image, record, image_format, quality=quality, embed_metadata=embed_metadata)
    image_sha256 = hashlib.sha256(data).hexdigest()
    sidecar = {
        **record,
        "output_file": final_image_path.name,
        "format": image_format,
        "image_sha256": image_sha256,
        "image_bytes": len(data),
        "embedded_metadata": embedded,
    }
    sidecar_bytes = (json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    publish_bytes(final_image_path, data, umask=umask, overwrite=False)
    crashpoint("after_image_published")
    try:
        publish_bytes(sidecar_path, sidecar_bytes, umask=umask, overwrite=False)
    except BaseException:
        with contextlib.suppress(OSError):
            final_image_path.unlink(missing_ok=True)
        raise
    return final_image_path, sidecar_path, image_sha256


def encode_image(
    image: Image.Image,
    record: dict[str, Any],
    fmt: ImageFormat,
    *,
    quality: int,
    embed_metadata: bool,
) -> tuple[bytes, EmbeddedMetadata]:
    """Encode in memory; return the bytes and how much metadata went inside."""
    parameters = a1111_parameters(record) if embed_metadata else ""
    scheme = fooocus_scheme(record) if embed_metadata else ""
    buffer = io.BytesIO()
    if fmt == "png":
        _save_png(image, buffer, parameters, scheme)
        return buffer.getvalue(), "full" if embed_metadata else "none"

    embedded: EmbeddedMetadata = "none"
    exif = b""
    if embed_metadata:
        exif, embedded = _exif_that_fits(parameters, scheme, fmt)
    if fmt == "jpeg":
        _to_mode(image, ("RGB", "L")).save(
            buffer, "JPEG", quality=quality, optimize=True, progressive=True, exif=exif
        )
    else:
        _to_mode(image, ("RGB", "RGBA")).save(buffer, "WEBP", quality=quality, exif=exif)
    return buffer.getvalue(), embedded


def _save_png(image: Image.Image, buffer: io.BytesIO, parameters: str, scheme: str) -> None:
    info = PngInfo()
    if parameters:
        # add_text falls back to iTXt (UTF-8) when the text is not Latin-1.
        info.add_text("parameters", parameters)
        info.add_text("fooocus_scheme", scheme)
        info.add_text("Software", version_label())
    _to_mode(image, ("RGB", "RGBA", "L", "LA", "I;16")).save(buffer, "PNG", pnginfo=info)


def _exif_that_fits(parameters: str, scheme: str, fmt: ImageFormat) -> tuple[bytes, EmbeddedMetadata]:
    full = exif_bytes(parameters, scheme)
    if fmt != "jpeg" or len(full) <= MAX_JPEG_EXIF_BYTES:
        return full, "full"
    logger.warning("metadata too long for JPEG EXIF ({} bytes); JSON kept in the sidecar only", len(full))
    without_scheme = exif_bytes(parameters, None)
    if len(without_scheme) <= MAX_JPEG_EXIF_BYTES:
        return without_scheme, "parameters_only"
    logger.warning("prompt too long for JPEG EXIF; all metadata stays in the sidecar only")
    return exif_bytes(None, None), "none"


def exif_bytes(parameters: str | None, scheme: str | None) -> bytes:
    """EXIF block (big-endian) with Software, and UserComment / MakerNote when given."""
    exif = Image.Exif()
    exif.endian = ">"  # big-endian, so UTF-16 UserComment readers agree whichever order they assume
    exif[TAG_SOFTWARE] = version_label()
    exif_ifd = exif.get_ifd(EXIF_IFD)
    if parameters is not None:
        exif_ifd[TAG_USER_COMMENT] = encode_user_comment(parameters)
    if scheme is not None:
        exif_ifd[TAG_MAKER_NOTE] = scheme.encode("utf-8")
    return exif.tobytes()


def encode_user_comment(text: str) -> bytes:
    """EXIF UserComment: an 8-byte charset prefix, then the text (UCS-2 big-endian if not ASCII)."""
    if text.isascii():
        return ASCII_PREFIX + text.encode("ascii")
    return UNICODE_PREFIX + text.encode("utf-16-be")


def _to_mode(image: Image.Image, allowed: tuple[str, ...]) -> Image.Image:
    if image.mode in allowed:
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA" if "RGBA" in allowed else "RGB")
    return image.convert("RGB")
