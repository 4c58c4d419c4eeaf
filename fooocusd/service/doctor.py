"""``fooocusd doctor``: the checks that explain why a daemon would not work here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from fooocusd.errors import FooocusdError
from fooocusd.service.free_space import folder_space, free_text
from fooocusd.service.fstab_mounts import unmounted_mount_above
from fooocusd.settings import Settings

_LARGE_JOURNAL_BYTES = 1024**3


@dataclass
class Check:
    name: str
    level: Literal["ok", "warn", "fail"]
    detail: str


def run_checks(settings: Settings) -> list[Check]:
    return [
        _torch(),
        _speed(settings),
        *_folders(settings),
        _daemon(settings),
        _journal(settings),
        _model(settings),
        _default_files(settings),
        _image_features(settings),
        _inotify(),
    ]


def _torch() -> Check:
    try:
        import torch
    except ImportError as exc:
        return Check("torch", "fail", f"cannot import torch: {exc}")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return Check("torch", "ok", f"torch {torch.__version__}, CUDA {torch.version.cuda}: {names}")
    return Check(
        "torch", "warn", f"torch {torch.__version__}, no CUDA device: generation runs on the CPU (slow)"
    )


def _speed(settings: Settings) -> Check:
    """What the engine's ``auto`` speed settings become on this machine, and why anything asked is not."""
    try:
        from fooocusd.engine import flash4_attention
        from fooocusd.engine.acceleration import AccelerationOptions, plan_acceleration
        from fooocusd.engine.attention_choice import describe_setting
        from fooocusd.engine.batching import resolve_batch_size
        from fooocusd.engine.devices import device_total_memory, dtype_name, pick_device, pick_dtype

        engine = settings.engine
        device = pick_device(engine.device)
        dtype = pick_dtype(engine.dtype, device)
        memory = device_total_memory(device)
        options = AccelerationOptions.from_settings(engine, None)
        plan = plan_acceleration(options, device, dtype, total_memory=memory)
        batch = resolve_batch_size(engine.batch_size, device=device, vram=plan.vram, total_memory=memory)
        ahead = engine.expand_ahead == "on"  # "auto" is off (service/expansion_ahead.py)
        attention = describe_setting(engine.attention, device)
        attention_hint = flash4_attention.install_hint(device) if engine.attention == "auto" else ""
    except (FooocusdError, ImportError, RuntimeError, ValueError) as exc:
        return Check("speed settings", "warn", f"cannot tell: {type(exc).__name__}: {exc}")
    warm = "on" if engine.warm_up and (plan.compile != "off" or plan.cuda_graphs) else "off"
    detail = (
        f"{device.type}: {dtype_name(dtype)}, vram {plan.vram}, {attention}, compile {plan.compile}, "
        f"CUDA graphs {'on' if plan.cuda_graphs else 'off'}, batches of {batch}, fp8 {plan.quantize}, "
        f"warm-up render {warm}, decode beside the next render {'on' if plan.overlap_decode else 'off'}, "
        f"prompt expansion ahead of the render {'on' if ahead else 'off'}"
    )
    asked_for_speed = engine.compile != "off" or engine.quantize == "fp8" or engine.cuda_graphs == "on"
    refused = ("compile off", "quantize off", "cuda_graphs off")
    missing = [note for note in plan.notes if note.startswith(refused)]
    level: Literal["ok", "warn"] = "warn" if device.type == "cuda" and asked_for_speed and missing else "ok"
    return Check("speed settings", level, "; ".join([detail, *plan.notes, *filter(None, [attention_hint])]))


def _folders(settings: Settings) -> list[Check]:
    from fooocusd.intake.layout import check_folder_layout

    paths = settings.paths.resolved()
    checks: list[Check] = []
    try:
        check_folder_layout(settings)
        checks.append(
            Check(
                "folder layout",
                "ok",
                "inbox, outbox, state, done and failed do not nest; no folder fooocusd reads from is "
                "inside the inbox",
            )
        )
    except FooocusdError as exc:
        checks.append(Check("folder layout", "fail", exc.message))
    for name in ("inbox", "outbox", "done", "failed", "state"):
        path: Path = getattr(paths, name)
        point = unmounted_mount_above(path)
        if point is not None:
            detail = f"{path} is under {point}, which /etc/fstab lists but is not mounted: mount it first"
            checks.append(Check(f"{name} folder", "fail", detail))
            continue
        space = folder_space(name, path)
        if space is None or not os.access(space.existing, os.W_OK | os.X_OK):
            checks.append(Check(f"{name} folder", "fail", f"{path} is not writable"))
            continue
        level = "warn" if space.low else "ok"
        state = "exists" if path.exists() else "will be created"
        checks.append(Check(f"{name} folder", level, f"{path} ({state}, {free_text(space.free)} free)"))
    return checks


def _daemon(settings: Settings) -> Check:
    from fooocusd.service.state_lock import daemon_holding

    state = settings.paths.resolved().state
    holder = daemon_holding(state)
    if holder is None:
        return Check("daemon", "ok", f"none running on {state}")
    return Check("daemon", "ok", f"running (pid {holder}) on {state}; another one needs its own state folder")


def _journal(settings: Settings) -> Check:
    """Its size and what it holds, and whether ``journal.keep_days`` keeps it bounded."""
    from fooocusd.journal.journal import Journal, JournalNotReady
    from fooocusd.service.folders import Folders

    db = Folders.from_paths(settings.paths.resolved()).journal_db
    if not db.exists():
        return Check("journal", "ok", f"{db} does not exist yet; the daemon creates it at its first start")
    try:
        with Journal.open_read_only(db) as journal:
            jobs = sum(journal.status(recent_failures=0)["counts"].values())
            oldest = journal.oldest_input_time()
    except JournalNotReady as exc:
        return Check("journal", "warn", f"{exc.message}; the daemon brings it up to date when it starts")
    except FooocusdError as exc:
        return Check("journal", "fail", exc.explain())
    size = sum(path.stat().st_size for path in (db, db.with_name(db.name + "-wal")) if path.exists())
    since = f", the oldest dropped {datetime.fromtimestamp(oldest):%Y-%m-%d}" if oldest is not None else ""
    detail = f"{db}: {size / 1024**2:.1f} MiB, {jobs:,} jobs{since}; "
    keep = settings.journal.keep_days
    if keep:
        return Check("journal", "ok", detail + f"it forgets files finished over {keep:g} days ago")
    level: Literal["ok", "warn"] = "warn" if size > _LARGE_JOURNAL_BYTES else "ok"
    return Check(
        "journal", level, detail + "journal.keep_days = 0: it keeps everything and grows without bound"
    )


def _model(settings: Settings) -> Check:
    from fooocusd.engine.models import TINY_MODEL, resolve_model

    try:
        location = resolve_model(
            settings.engine.model,
            settings.paths.resolved().models,
            allow_pickle=settings.engine.allow_unsafe_pickle,
        )
    except FooocusdError as exc:
        return Check("model", "fail", exc.explain())
    path = location.path
    if path is not None and not os.access(path, os.R_OK):
        return Check("model", "fail", f"{path} is not readable by this user")
    if location.is_tiny:
        detail = f"{TINY_MODEL}: random weights for trying fooocusd; its images are noise"
        return Check("model", "warn", detail)
    return Check("model", "ok", str(path))


def _default_files(settings: Settings) -> Check:
    """Model files the default preset and performance make every plain job use."""
    from fooocusd.jobs.presets import preset_search_dirs
    from fooocusd.service.settings_checks import missing_default_files_warning

    paths = settings.paths.resolved()
    try:
        warning = missing_default_files_warning(
            settings.generation, preset_search_dirs(paths.presets), paths.models, settings.engine.model
        )
    except FooocusdError as exc:
        return Check("default files", "fail", exc.explain())
    if warning:
        return Check("default files", "warn", warning)
    generation = settings.generation
    return Check(
        "default files",
        "ok",
        f"preset '{generation.preset}' and performance '{generation.performance}' have every file they need",
    )


def _image_features(settings: Settings) -> Check:
    """Optional: which image actions and image-prompt types have their model files."""
    from fooocusd.service.feature_files import feature_report

    try:
        ready, detail = feature_report(settings)
    except FooocusdError as exc:
        return Check("image features", "warn", exc.explain())
    return Check("image features", "ok" if ready else "warn", detail)


def _inotify() -> Check:
    limits = {}
    for name in ("max_user_watches", "max_user_instances", "max_queued_events"):
        try:
            limits[name] = int(Path(f"/proc/sys/fs/inotify/{name}").read_text())
        except (OSError, ValueError):
            return Check("inotify", "warn", "inotify limits unreadable (not Linux?): polling may be needed")
    level = "ok" if limits["max_user_watches"] >= 8192 else "warn"
    detail = ", ".join(f"{k}={v}" for k, v in limits.items())
    if level == "warn":
        detail += " — raise fs.inotify.max_user_watches for large inboxes"
    return Check("inotify", level, detail)
