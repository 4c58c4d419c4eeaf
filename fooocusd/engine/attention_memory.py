"""``engine.attention = "auto"``'s measurements, kept in the cache folder between starts.

Timing every candidate kernel at the UNet's shapes takes seconds at each model load (2.5 s on an
H100 for two candidates, more with FlashAttention 4 or xformers), and its answer only changes when
the card, the driver or a kernel library does. So each measurement is stored under a key made of
everything it depends on: the GPU, its driver, the versions of torch, CUDA, cuDNN, the optional
attention packages and fooocusd, the dtype, whether the engine replays CUDA graphs, the
candidates and the attention shapes. A start whose key is stored takes its choice from there; a
new driver, an upgrade or another model's shapes measure again. Deleting the file
(``<cache>/attention_choices.json``) measures everything again.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from fooocusd import __version__
from fooocusd.json_store import read_json_object, write_json_atomically

MEMORY_NAME = "attention_choices.json"
"""The file's name inside the daemon's cache folder."""
PACKAGES = ("xformers", "flash-attn-4", "nvidia-cutlass-dsl")
"""Optional packages whose kernels ``auto`` may time: another version may time differently."""
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")


def environment(device: torch.device) -> dict[str, str] | None:
    """What the timings on ``device`` depend on besides the model; None when the GPU cannot be
    identified (nothing is then remembered: a stored answer could belong to another card)."""
    try:
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
    except (AssertionError, RuntimeError):
        return None
    facts = {
        "gpu": name,
        "capability": f"{major}.{minor}",
        "driver": driver_version(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "cudnn": str(torch.backends.cudnn.version()),
        "fooocusd": __version__,
    }
    return facts | {package: _installed_version(package) for package in PACKAGES}


def driver_version() -> str:
    """The NVIDIA kernel driver's version (Linux's ``/proc``), else the CUDA API version the
    driver supports (coarser: a major upgrade), else ``""``."""
    try:
        first = DRIVER_VERSION_FILE.read_text(encoding="utf-8").splitlines()[0]
    except (OSError, ValueError, IndexError):
        return _driver_api_version()
    words = [word for word in first.split() if word[:1].isdigit() and "." in word]
    return words[0] if words else first.strip()


def _driver_api_version() -> str:
    try:
        library = ctypes.CDLL("libcuda.so.1" if sys.platform != "win32" else "nvcuda.dll")
        version = ctypes.c_int()
        if library.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return ""
    except (OSError, AttributeError):
        return ""
    return f"cuda-api-{version.value}"


def _installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def memory_key(facts: dict[str, Any]) -> str:
    """A short stable name for one set of facts (the facts themselves are stored beside it)."""
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _as_stored(facts: dict[str, Any]) -> Any:
    """``facts`` as they read back from the file (tuples as lists, anything else as text)."""
    return json.loads(json.dumps(facts, default=str))


def recall(path: Path, facts: dict[str, Any]) -> dict[str, Any] | None:
    """The measurement stored for ``facts`` (``per_unet_call_ms``, ``measured_at``, ``measuring_s``),
    or None. An entry stored under the key but for other facts, or damaged, is ignored."""
    entry = read_json_object(path).get(memory_key(facts))
    if not isinstance(entry, dict) or entry.get("facts") != _as_stored(facts):
        return None
    timings = entry.get("per_unet_call_ms")
    if not isinstance(timings, dict) or not timings:
        return None
    if not all(isinstance(ms, int | float) and not isinstance(ms, bool) for ms in timings.values()):
        return None
    return entry


def remember(path: Path, facts: dict[str, Any], per_unet_call_ms: dict[str, float], seconds: float) -> None:
    """Store one measurement, every candidate timed and agreeing (other entries are kept: other
    models, dtypes, ways of running). A cache folder that cannot be written costs the next start a
    measurement, nothing more."""
    stored = read_json_object(path)
    stored[memory_key(facts)] = {
        "facts": _as_stored(facts),
        "per_unet_call_ms": per_unet_call_ms,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "measuring_s": round(seconds, 3),
    }
    try:
        write_json_atomically(path, stored)
    except OSError as exc:
        logger.warning("could not keep the attention measurement in {}: {}", path, exc)
