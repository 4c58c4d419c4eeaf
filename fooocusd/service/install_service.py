"""``fooocusd install-service``: render a systemd unit with this machine's real paths.

The files in ``systemd/`` are these same templates rendered with the packaging defaults
(a test keeps them identical), so there is one source of truth.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fooocusd.errors import ConfigError
from fooocusd.settings import FLAG_SETTINGS, LoadedSettings, describe_origin, flatten

UnitKind = Literal["system", "template", "user"]

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
USER_UNIT_DIR = Path("~/.config/systemd/user")
UNIT_FILE_NAMES: dict[UnitKind, str] = {
    "system": "fooocusd.service",
    "template": "fooocusd@.service",
    "user": "fooocusd.service",
}


@dataclass(frozen=True)
class UnitPaths:
    command: tuple[str, ...]
    """The ``fooocusd`` executable (or ``python -m fooocusd.cli``), without the ``run`` argument."""
    config_file: Path | None
    writable: tuple[Path, ...]
    """Folders the daemon writes besides its StateDirectory: they go into ReadWritePaths=."""
    flags: tuple[str, ...] = ()
    """Settings given as flags to ``install-service``, passed on to ``run`` so the service uses them."""


def find_command(argv0: str | None = None) -> tuple[str, ...]:
    """The command that started us, if it is the installed script; else whatever runs it."""
    started_as = Path(argv0 if argv0 is not None else sys.argv[0])
    if started_as.name == "fooocusd" and started_as.is_file():
        return (str(started_as.absolute()),)
    on_path = shutil.which("fooocusd")
    if on_path:
        return (str(Path(on_path).absolute()),)
    return (sys.executable, "-m", "fooocusd.cli")


def unit_paths(loaded: LoadedSettings, command: tuple[str, ...] | None = None) -> UnitPaths:
    paths = loaded.settings.paths
    resolved = paths.resolved()
    writable = [resolved.inbox, resolved.outbox, resolved.done, resolved.failed]
    if paths.state is not None:  # otherwise the daemon uses systemd's StateDirectory=
        writable.append(resolved.state)
    config = loaded.config_file.absolute() if loaded.config_file else None
    return UnitPaths(command or find_command(), config, tuple(dict.fromkeys(writable)), flags_given(loaded))


def flags_given(loaded: LoadedSettings) -> tuple[str, ...]:
    """``--inbox /srv/in`` given to install-service must reach the service's ``run`` too; folders
    are written absolute, since the service does not start in the folder the command ran in."""
    resolved = loaded.settings.paths.resolved()
    values = flatten(loaded.settings)
    words: list[str] = []
    for dest, key in FLAG_SETTINGS.items():
        if loaded.sources.get(key) != "cli":
            continue
        flag = "--" + dest.replace("_", "-")
        section, name = key.split(".")
        value = values[key]
        if section == "paths":
            path = resolved.models[0] if name == "models" else getattr(resolved, name)
            words += [flag, str(path)]
        elif isinstance(value, bool):
            words += [flag] if value else []
        else:
            words += [flag, str(value)]
    return tuple(words)


def settings_from_environment(loaded: LoadedSettings) -> list[str]:
    """The settings this shell's FOOOCUSD_* variables set, which the service will not see."""
    return [
        f"{key} comes from ${source.removeprefix('env:')}"
        for key, source in loaded.sources.items()
        if source.startswith("env:")
    ]


def render_unit(kind: UnitKind, paths: UnitPaths) -> str:
    words = [*paths.command, "run"]
    if paths.config_file is not None:
        words += ["--config", str(paths.config_file)]
    exec_start = " ".join(_exec_word(word) for word in (*words, *paths.flags))
    common = _COMMON_SERVICE.format(exec_start=exec_start)
    if kind == "user":
        return _USER_UNIT.format(common=common)
    read_write = "\n".join(f"ReadWritePaths={_path_word('-' + str(path))}" for path in paths.writable)
    mounts = " ".join(_path_word(str(path)) for path in paths.writable)
    template = _TEMPLATE_UNIT if kind == "template" else _SYSTEM_UNIT
    return template.format(common=common, hardening=_HARDENING, read_write=read_write, mounts=mounts)


PACKAGED_SYSTEM_PATHS = UnitPaths(
    command=("/opt/fooocusd/.venv/bin/fooocusd",),
    config_file=Path("/etc/fooocusd/fooocusd.toml"),
    writable=tuple(Path("/srv/fooocusd") / name for name in ("inbox", "outbox", "done", "failed")),
)


def packaged_units() -> dict[str, str]:
    """The example units shipped in ``systemd/``: the packaging defaults, for reading and copying."""
    user = UnitPaths(command=("HOME/.local/bin/fooocusd",), config_file=None, writable=())
    return {
        "fooocusd.service": render_unit("system", PACKAGED_SYSTEM_PATHS),
        "fooocusd@.service": render_unit("template", PACKAGED_SYSTEM_PATHS),
        # %h is systemd's home directory specifier; rendering would escape it, so it goes in last.
        "fooocusd-user.service": render_unit("user", user).replace("HOME/.local", "%h/.local"),
    }


def write_unit(text: str, target: Path, *, force: bool) -> None:
    if target.exists() and not force:
        raise ConfigError(
            f"{target} already exists; it was left as it is",
            hint="compare it with 'fooocusd install-service --print', or pass --force to replace it",
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except PermissionError as exc:
        raise ConfigError(
            f"no permission to write {target}",
            hint="run it with sudo, or use --print and copy the unit yourself (or --user for a user unit)",
        ) from exc


def next_steps(kind: UnitKind, instance: str | None) -> str:
    if kind == "user":
        return (
            "next: systemctl --user daemon-reload && systemctl --user enable --now fooocusd\n"
            "to keep it running while you are logged out: loginctl enable-linger $USER"
        )
    name = f"fooocusd@{instance}" if kind == "template" else "fooocusd"
    return (
        f"next: sudo systemctl daemon-reload && sudo systemctl enable --now {name}\n"
        "the service runs as user 'fooocusd' (useradd --system --create-home fooocusd): "
        "it needs write access to the folders listed in ReadWritePaths="
    )


def refuse_a_shared_state_folder(loaded: LoadedSettings) -> None:
    """Per-GPU instances share the configuration; a ``paths.state`` in it would give them all one
    state folder, which only the first to start may hold: the others would fail in a loop."""
    if loaded.settings.paths.state is None:
        return
    origin = describe_origin(loaded.sources.get("paths.state", "the configuration"))
    raise ConfigError(
        f"paths.state is set ({loaded.settings.paths.resolved().state}, from {origin}), so every "
        "instance would use that one state folder; the first to start holds it and the others "
        "could not start",
        hint="leave paths.state unset (remove it from the config file, or drop --state-dir): each "
        "instance then keeps its journal in /var/lib/fooocusd/<GPU>",
    )


def install_service(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    """The CLI handler: ``install-service [--user] [--instance N] [--print] [--force] [--unit-dir D]``."""
    if args.user and args.instance is not None:
        raise ConfigError(
            "--instance is for the system unit (one service per GPU)",
            hint="drop --user, or drop --instance",
        )
    kind: UnitKind = "user" if args.user else "template" if args.instance is not None else "system"
    if kind == "template":
        refuse_a_shared_state_folder(loaded)
    text = render_unit(kind, unit_paths(loaded))
    for note in settings_from_environment(loaded):
        print(f"note: {note}, which the service will not see: put it in the config file", file=sys.stderr)
    if args.print:
        sys.stdout.write(text)
        return 0
    unit_dir = args.unit_dir or (USER_UNIT_DIR if args.user else SYSTEM_UNIT_DIR)
    target = Path(unit_dir).expanduser() / UNIT_FILE_NAMES[kind]
    write_unit(text, target, force=args.force)
    print(f"wrote {target}")
    if loaded.config_file is None:
        print("note: no configuration file was found; the service will run with the default settings")
    print(next_steps(kind, args.instance))
    return 0


def add_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "install-service", parents=parents, help="write a systemd unit for this installation"
    )
    parser.add_argument("--user", action="store_true", help="a user unit (~/.config/systemd/user)")
    parser.add_argument("--instance", metavar="GPU", help="the per-GPU template unit fooocusd@.service")
    parser.add_argument("--print", action="store_true", help="print the unit instead of writing it")
    parser.add_argument("--force", action="store_true", help="replace an existing unit file")
    parser.add_argument("--unit-dir", type=Path, help="write here instead of the systemd default")
    parser.set_defaults(handler=install_service)


def _exec_word(word: str) -> str:
    # '%' starts a specifier and '$' a variable in ExecStart=; both are doubled to stay literal.
    escaped = word.replace("%", "%%").replace("$", "$$")
    return _quoted(escaped) if any(ch in escaped for ch in " \t\"'\\;") else escaped


def _path_word(word: str) -> str:
    escaped = word.replace("%", "%%")
    return _quoted(escaped) if any(ch in escaped for ch in " \t\"'\\") else escaped


def _quoted(word: str) -> str:
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


_COMMON_SERVICE = """\
Type=notify
NotifyAccess=main
ExecStart={exec_start}
# systemctl reload: re-read the configuration, presets and styles; applied between jobs,
# nothing queued is lost. An invalid file is refused and the running settings stay.
ExecReload=kill -HUP $MAINPID
# Loading an SDXL checkpoint from a slow disk takes minutes; the daemon also asks for more
# time (EXTEND_TIMEOUT_USEC) while it loads.
TimeoutStartSec=10min
# SIGTERM lets the current image finish (the daemon extends this while the worker moves);
# the rest of the job stays queued for the next start.
TimeoutStopSec=180s
KillMode=mixed
# Pinged only while the GPU worker shows progress: a hung CUDA call gets the service restarted.
WatchdogSec=60s
Restart=on-failure
RestartSec=5s
Environment=PYTHONUNBUFFERED=1
Environment=CUDA_DEVICE_ORDER=PCI_BUS_ID"""

_HARDENING = """\
# --- sandboxing that still reaches the GPU ---
# No PrivateDevices=: it hides /dev/nvidia*. Devices are limited with DevicePolicy= instead.
# No MemoryDenyWriteExecute=: PyTorch's oneDNN JIT needs writable+executable memory.
# No ProcSubset=pid: CUDA reads /proc/driver/nvidia at start.
# NoNewPrivileges= stops the setuid nvidia-modprobe: load nvidia-uvm at boot (nvidia-persistenced).
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
ProtectHostname=yes
ProtectClock=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
SystemCallArchitectures=native
CapabilityBoundingSet=
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
DevicePolicy=closed
DeviceAllow=char-nvidia-caps rw
DeviceAllow=char-nvidia-uvm rw"""

_SYSTEM_UNIT = """\
# fooocusd as a system service. Written by 'fooocusd install-service'; create the service user
# first (useradd --system --create-home fooocusd), then:
#   systemctl daemon-reload && systemctl enable --now fooocusd
[Unit]
Description=fooocusd watch-folder image generation daemon
After=local-fs.target nvidia-persistenced.service
# Start only once the disks and shares holding the folders are mounted: started before a share,
# the daemon would make its folders on the bare mount point, on the local disk.
RequiresMountsFor={mounts}
StartLimitIntervalSec=10min
StartLimitBurst=5

[Service]
{common}
User=fooocusd
Group=fooocusd
# The journal lives in /var/lib/fooocusd (local disk), model caches in /var/cache/fooocusd.
StateDirectory=fooocusd
CacheDirectory=fooocusd
Environment=HF_HOME=%C/fooocusd/huggingface
{hardening}
# Every NVIDIA GPU (major 195 is registered as 'nvidia'; 'char-nvidia-frontend' matches nothing).
DeviceAllow=char-nvidia rw
# The folders the daemon writes ('-': a missing one is reported by fooocusd, not by the sandbox).
{read_write}

[Install]
WantedBy=multi-user.target
"""

_TEMPLATE_UNIT = """\
# fooocusd, one instance per GPU: the instance name is the GPU index (nvidia-smi order).
# Written by 'fooocusd install-service --instance N'; all instances share one inbox (claims are
# atomic renames, so each file is taken by exactly one of them). Then, e.g.:
#   systemctl daemon-reload && systemctl enable --now fooocusd@0 fooocusd@1
[Unit]
Description=fooocusd watch-folder image generation daemon on GPU %i
After=local-fs.target nvidia-persistenced.service
# Start only once the disks and shares holding the folders are mounted: started before a share,
# the daemon would make its folders on the bare mount point, on the local disk.
RequiresMountsFor={mounts}
StartLimitIntervalSec=10min
StartLimitBurst=5

[Service]
{common}
Environment=CUDA_VISIBLE_DEVICES=%i
User=fooocusd
Group=fooocusd
# Each GPU keeps its own journal in /var/lib/fooocusd/<index>; the model cache is shared.
StateDirectory=fooocusd/%i
CacheDirectory=fooocusd
Environment=HF_HOME=%C/fooocusd/huggingface
{hardening}
# This GPU only, plus the control devices every CUDA process opens.
DeviceAllow=/dev/nvidiactl rw
DeviceAllow=/dev/nvidia-modeset rw
DeviceAllow=/dev/nvidia%i rw
# The folders the daemon writes ('-': a missing one is reported by fooocusd, not by the sandbox).
{read_write}

[Install]
WantedBy=multi-user.target
"""

_USER_UNIT = """\
# fooocusd as a user service, for your own synced folders: it runs as you, so the files it
# writes are yours. Written by 'fooocusd install-service --user'; then:
#   systemctl --user daemon-reload && systemctl --user enable --now fooocusd
#   loginctl enable-linger $USER    # keep it running while you are logged out
# No sandboxing beyond NoNewPrivileges=: in user units it needs user namespaces, which can
# hide the GPU's device nodes, and device filtering (DeviceAllow=) is for system units only.
[Unit]
Description=fooocusd watch-folder image generation daemon
After=local-fs.target

[Service]
{common}
# The journal lives in ~/.local/state/fooocusd, model caches in ~/.cache/fooocusd.
StateDirectory=fooocusd
CacheDirectory=fooocusd
NoNewPrivileges=yes

[Install]
WantedBy=default.target
"""
