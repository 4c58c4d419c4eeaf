"""The systemd units: valid for systemd itself, GPU-friendly hardening, and install-service."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fooocusd.cli import main
from fooocusd.service.install_service import (
    PACKAGED_SYSTEM_PATHS,
    UnitKind,
    UnitPaths,
    packaged_units,
    render_unit,
    unit_paths,
)
from fooocusd.settings import load_settings
from tests.daemon_harness import REPO, Sandbox

REAL_COMMAND = (sys.executable, "-m", "fooocusd.cli")


def _directives(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit, comments left out, values in file order."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def _verify(unit: Path) -> None:
    """``systemd-analyze verify``: needs neither root nor a running systemd. Warnings fail too."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (apt-get install systemd)"
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    ours = [line for line in result.stderr.splitlines() if unit.name in line or "fooocusd" in line]
    assert result.returncode == 0 and not ours, result.stderr


def _install(sandbox: Sandbox, unit_dir: Path, *extra: str) -> int:
    if "--instance" in extra and "--user" not in extra:
        _leave_the_state_folder_to_systemd(sandbox)
    return main(["install-service", "--config", str(sandbox.config), "--unit-dir", str(unit_dir), *extra])


def _leave_the_state_folder_to_systemd(sandbox: Sandbox) -> None:
    """Per-GPU instances each take their own StateDirectory=, so the shared config names none."""
    lines = sandbox.config.read_text().splitlines(keepends=True)
    sandbox.config.write_text("".join(line for line in lines if not line.startswith("state = ")))


@pytest.mark.parametrize(
    ("flags", "written", "verified_as"),
    [
        ((), "fooocusd.service", "fooocusd.service"),
        (("--instance", "0"), "fooocusd@.service", "fooocusd@0.service"),
        (("--user",), "fooocusd.service", "fooocusd.service"),
    ],
)
def test_unit_written_by_install_service_passes_systemd_analyze_verify(
    sandbox: Sandbox, tmp_path: Path, flags: tuple[str, ...], written: str, verified_as: str
) -> None:
    unit_dir = tmp_path / "units"
    assert _install(sandbox, unit_dir, *flags) == 0
    text = (unit_dir / written).read_text()
    assert f"--config {sandbox.config}" in text
    (unit_dir / written).rename(unit_dir / verified_as)
    _verify(unit_dir / verified_as)


@pytest.mark.parametrize("name", ["fooocusd.service", "fooocusd@.service", "fooocusd-user.service"])
def test_shipped_unit_files_are_what_install_service_renders(name: str) -> None:
    assert (REPO / "systemd" / name).read_text() == packaged_units()[name]


@pytest.mark.parametrize(
    ("name", "verified_as"),
    [
        ("fooocusd.service", "fooocusd.service"),
        ("fooocusd@.service", "fooocusd@1.service"),
        ("fooocusd-user.service", "fooocusd-user.service"),
    ],
)
def test_shipped_unit_files_pass_systemd_analyze_verify(name: str, verified_as: str, tmp_path: Path) -> None:
    text = (REPO / "systemd" / name).read_text()
    # The packaged executable isn't installed here; verify checks that ExecStart= exists.
    text = text.replace("/opt/fooocusd/.venv/bin/fooocusd", sys.executable).replace(
        "%h/.local/bin/fooocusd", sys.executable
    )
    (tmp_path / verified_as).write_text(text)
    _verify(tmp_path / verified_as)


@pytest.mark.parametrize("kind", ["system", "template"])
def test_system_units_are_hardened_but_still_reach_nvidia_devices(kind: UnitKind) -> None:
    unit = _directives(render_unit(kind, PACKAGED_SYSTEM_PATHS))
    assert "PrivateDevices" not in unit  # it would hide /dev/nvidia*
    assert "MemoryDenyWriteExecute" not in unit  # PyTorch's JIT needs W+X memory
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["User"] == ["fooocusd"] and unit["Group"] == ["fooocusd"]
    assert unit["ProtectSystem"] == ["strict"] and unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectHome"] == ["read-only"] and unit["PrivateTmp"] == ["yes"]
    assert unit["DevicePolicy"] == ["closed"]
    assert {"char-nvidia-uvm rw", "char-nvidia-caps rw"} <= set(unit["DeviceAllow"])
    assert unit["WatchdogSec"] and unit["Restart"] == ["on-failure"]
    assert unit["CacheDirectory"] == ["fooocusd"]
    folders = ("inbox", "outbox", "done", "failed")
    assert unit["ReadWritePaths"] == [f"-/srv/fooocusd/{name}" for name in folders]


def test_system_unit_allows_every_gpu_and_template_only_its_own() -> None:
    system = _directives(render_unit("system", PACKAGED_SYSTEM_PATHS))
    template = _directives(render_unit("template", PACKAGED_SYSTEM_PATHS))
    assert "char-nvidia rw" in system["DeviceAllow"]
    assert system["StateDirectory"] == ["fooocusd"]
    assert "char-nvidia rw" not in template["DeviceAllow"]
    assert "/dev/nvidia%i rw" in template["DeviceAllow"]
    assert "CUDA_VISIBLE_DEVICES=%i" in template["Environment"]
    assert template["StateDirectory"] == ["fooocusd/%i"]


def test_user_unit_starts_with_the_login_session_and_skips_system_only_sandboxing() -> None:
    unit = _directives(packaged_units()["fooocusd-user.service"])
    assert unit["WantedBy"] == ["default.target"]
    assert unit["Type"] == ["notify"]
    assert unit["ExecStart"] == ["%h/.local/bin/fooocusd run"]
    for system_only in ("User", "DeviceAllow", "ProtectSystem", "ReadWritePaths", "PrivateDevices"):
        assert system_only not in unit


def test_unit_names_the_folders_from_the_effective_settings(sandbox: Sandbox) -> None:
    loaded = load_settings(sandbox.config, {"paths.outbox": sandbox.root / "my 100% outbox"}, environ={})
    paths = unit_paths(loaded, command=REAL_COMMAND)
    unit = _directives(render_unit("system", paths))
    outbox = f'"{sandbox.root}/my 100%% outbox"'
    assert unit["ExecStart"] == [
        f"{sys.executable} -m fooocusd.cli run --config {sandbox.config} --outbox {outbox}"
    ]
    assert f"-{sandbox.inbox}" in unit["ReadWritePaths"]
    assert f'"-{sandbox.root}/my 100%% outbox"' in unit["ReadWritePaths"]
    assert f"-{sandbox.state}" in unit["ReadWritePaths"]  # set in the config, so not StateDirectory's
    [mounts] = unit["RequiresMountsFor"]  # started before a share, it would write on the mount point
    assert mounts.startswith(f"{sandbox.inbox} ") and f'"{sandbox.root}/my 100%% outbox"' in mounts


def test_settings_flags_given_to_install_service_reach_the_services_run_with_absolute_folders(
    sandbox: Sandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FOOOCUSD_ENGINE__DEVICE", "cpu")
    unit_dir = tmp_path / "units"
    assert _install(sandbox, unit_dir, "--inbox", "drop here", "--log-level", "DEBUG", "--log-json") == 0
    [exec_start] = _directives((unit_dir / "fooocusd.service").read_text())["ExecStart"]
    assert exec_start.endswith(f'--inbox "{tmp_path}/drop here" --log-level DEBUG --log-json')
    assert "FOOOCUSD_ENGINE__DEVICE, which the service will not see" in capsys.readouterr().err
    _verify(unit_dir / "fooocusd.service")


def test_special_characters_in_the_command_stay_literal() -> None:
    paths = UnitPaths(command=("/opt/a b/50%$x/fooocusd",), config_file=None, writable=())
    [exec_start] = _directives(render_unit("user", paths))["ExecStart"]
    assert exec_start == '"/opt/a b/50%%$$x/fooocusd" run'


def test_install_service_refuses_to_overwrite_an_existing_unit(sandbox: Sandbox, tmp_path: Path) -> None:
    existing = tmp_path / "fooocusd.service"
    existing.write_text("# hand-tuned\n")
    assert _install(sandbox, tmp_path) == 2
    assert existing.read_text() == "# hand-tuned\n"
    assert _install(sandbox, tmp_path, "--force") == 0
    assert "Type=notify" in existing.read_text()


def test_install_service_says_what_to_run_next(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _install(sandbox, tmp_path, "--instance", "1") == 0
    out = capsys.readouterr().out
    assert "systemctl daemon-reload" in out and "enable --now fooocusd@1" in out
    assert _install(sandbox, tmp_path / "user", "--user") == 0
    out = capsys.readouterr().out
    assert "systemctl --user enable --now fooocusd" in out and "loginctl enable-linger" in out


def test_print_shows_the_unit_and_writes_nothing(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _install(sandbox, tmp_path, "--print") == 0
    assert "[Service]" in capsys.readouterr().out
    assert list(tmp_path.glob("*.service")) == []


def test_an_instance_of_the_user_unit_is_refused_with_a_reason(sandbox: Sandbox, tmp_path: Path) -> None:
    assert _install(sandbox, tmp_path, "--user", "--instance", "0") == 2
    assert list(tmp_path.rglob("*.service")) == []


def test_instances_are_refused_a_state_folder_that_all_of_them_would_share(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["install-service", "--config", str(sandbox.config), "--unit-dir", str(tmp_path)]
    assert main([*command, "--instance", "0"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"paths.state is set ({sandbox.state}, from file {sandbox.config})" in err
    assert "leave paths.state unset" in err
    _leave_the_state_folder_to_systemd(sandbox)
    assert main([*command, "--instance", "0", "--state-dir", str(tmp_path / "s")]) == 2
    assert "from the command line" in capsys.readouterr().err
    assert list(tmp_path.glob("*.service")) == []
    assert main([*command, "--instance", "0"]) == 0
