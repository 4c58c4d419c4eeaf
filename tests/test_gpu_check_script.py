"""``bench/gpu_check.sh``, the one command a GPU session runs, works before it costs a GPU lease.

It runs here on the CPU with the tiny model and a time budget of 0 s: the script installs nothing
(no wheel folder), skips the anchor, and hands its default case list to the benchmark, which
refuses an unknown case name before doing anything and otherwise records each case as skipped. And
a case that crashes the benchmark, or leaves the GPU unusable, costs only itself: the script carries
on with the other cases in a fresh process.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def test_the_gpu_check_script_hands_every_default_case_to_the_benchmark_by_a_known_name(
    tmp_path: Path,
) -> None:
    default = re.search(r"CASES=\$\{CASES:-([^}]*)\}", SCRIPT.read_text(encoding="utf-8"))
    assert default is not None
    cases = default.group(1).split(",")
    env = _script_env(tmp_path, BUDGET_S="0")
    done = subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "fooocusd_bench.json").read_text(encoding="utf-8"))
    assert list(report["cases"]) == cases
    assert all("skipped" in case for case in report["cases"].values())


def _script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # python3 = this one
        "OUT": str(tmp_path / "out"),
        "SKIP_ANCHOR": "1",
        "WHEELS": str(tmp_path / "no-wheels"),
        "BENCH_DEVICE": "cpu",
        "BENCH_SIZE": "tiny",
        "BENCH_WORKDIR": str(tmp_path / "work"),
        "SITE": str(tmp_path / "site"),
        "FLASH4_PARTS": str(tmp_path / "flash4-parts"),
        "FLASH4_PARKED": str(tmp_path / "flash4-parked"),
        "FLASH4_SITE": str(tmp_path / "site-flash4"),
        **extra,
    }


def test_the_gpu_check_resumes_in_a_fresh_process_after_a_case_kills_the_benchmark(tmp_path: Path) -> None:
    env = _script_env(tmp_path, CASES="setup,selftest_crash,attention_backends", BUDGET_S="200")
    done = subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    out = tmp_path / "out"
    report = json.loads((out / "fooocusd_bench.json").read_text(encoding="utf-8"))
    cases = report["cases"]
    assert list(cases) == ["setup", "selftest_crash", "attention_backends"]
    assert cases["selftest_crash"]["error"].startswith("the benchmark process died during this case")
    assert not {"error", "skipped"} & set(cases["attention_backends"]), cases["attention_backends"]
    assert [restart["after_case"] for restart in report["restarts"]] == ["selftest_crash"]
    assert "reused" in report["restarts"][0]["setup"]  # the checkpoint the first process wrote
    log = (out / "bench.log").read_text(encoding="utf-8")
    assert "Fatal Python error: Aborted" in log  # faulthandler: where the process died
    assert "resuming in a fresh process (1)" in log
    assert (
        "Restarted in a fresh process after the case selftest_crash."
        in (out / "fooocusd_bench.md").read_text()
    )


def test_a_case_that_leaves_the_gpu_unusable_ends_the_benchmark_process_for_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    bench = importlib.import_module("fooocusd_bench")
    sticky = "CUDA error: an illegal memory access was encountered"

    def failing_synchronize(device: object = None) -> None:
        raise RuntimeError(sticky)

    monkeypatch.setattr(torch.cuda, "synchronize", failing_synchronize)
    assert bench.gpu_context_lost(torch.device("cpu")) == ""
    assert bench.gpu_context_lost(torch.device("cuda")) == f"RuntimeError: {sticky}"

    args = argparse.Namespace(
        device="cpu",
        dtype="float32",
        size="tiny",
        workdir=tmp_path / "work",
        runs=1,
        resume=False,
        out=tmp_path / "out",
        budget_s=60,
    )
    runner = bench.Bench(args)
    runner.device = torch.device("cuda")  # the case below never touches a device

    def broken_case() -> dict[str, object]:
        raise RuntimeError(sticky)

    monkeypatch.setattr(bench, "gpu_context_lost", lambda device: "")
    runner.case("failure_with_a_healthy_gpu", broken_case)
    monkeypatch.setattr(bench, "gpu_context_lost", lambda device: sticky)
    with pytest.raises(SystemExit) as ended:
        runner.case("graphs", broken_case)
    assert ended.value.code == bench.RESTART_EXIT
    saved = json.loads((tmp_path / "out" / "fooocusd_bench.json").read_text(encoding="utf-8"))["cases"]
    assert saved["failure_with_a_healthy_gpu"] == {"error": f"RuntimeError: {sticky}"}
    assert saved["graphs"] == {"error": f"RuntimeError: {sticky}", "gpu_context_lost": sticky}


def _run_without_bench(tmp_path: Path, carried: Path) -> subprocess.CompletedProcess[str]:
    """The script as a device call that carried the parts under ``carried``, up to the benchmark."""
    env = _script_env(tmp_path, FLASH4_PARTS=str(carried), SKIP_BENCH="1")
    return subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def _flash4_parts(tmp_path: Path) -> Path:
    """What bench/flash4_wheels.sh leaves for two device calls: one xz stream of an installed
    package folder, cut in two, and the manifest (the part count and the whole stream's checksum)."""
    installed = tmp_path / "installed"
    (installed / "flash_attn" / "cute").mkdir(parents=True)
    (installed / "flash_attn" / "cute" / "__init__.py").write_text("KERNELS = 'stand-in'\n")
    (installed / "nvidia_cutlass_dsl" / "dsl_packages").mkdir(parents=True)
    stream = subprocess.run(
        f"tar -C {installed} -cf - . | xz", shell=True, capture_output=True, check=True
    ).stdout
    parts = tmp_path / "flash4-parts"
    for index, chunk in enumerate((stream[: len(stream) // 2], stream[len(stream) // 2 :])):
        folder = parts / f".fa4-part{index + 1}"
        folder.mkdir(parents=True)
        (folder / f"flash4.tar.xz.part{index}").write_bytes(chunk)
    digest = hashlib.sha256(stream).hexdigest()
    (parts / ".fa4-part2" / "flash4.manifest").write_text(
        f"parts=2\nsha256={digest}\nflash-attn-4=4.0.0b36\n"
    )
    return parts


def test_flashattention_4_arrives_in_two_calls_and_is_unpacked_once_every_part_is_here(
    tmp_path: Path,
) -> None:
    parts = _flash4_parts(tmp_path)
    second = tmp_path / "second-call"
    (second / ".fa4-part2").mkdir(parents=True)
    for name in ("flash4.tar.xz.part1", "flash4.manifest"):
        (parts / ".fa4-part2" / name).rename(second / ".fa4-part2" / name)
    probe = "import flash_attn.cute as k; print('loaded', k.KERNELS)"

    def call(carried: Path) -> subprocess.CompletedProcess[str]:
        env = _script_env(tmp_path, FLASH4_PARTS=str(carried), SKIP_BENCH="1")
        done = subprocess.run(
            ["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    call(parts)  # the first call brings part 1 only: parked, nothing unpacked
    assert not (tmp_path / "site-flash4").exists()
    assert (tmp_path / "flash4-parked" / "flash4.tar.xz.part0").is_file()

    done = call(second)
    assert "flash4: 4.0.0b36 on PYTHONPATH" in done.stdout
    site = tmp_path / "site-flash4"
    pythonpath = f"{site}{os.pathsep}{site / 'nvidia_cutlass_dsl' / 'dsl_packages'}"
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
    )
    assert loaded.stdout.strip() == "loaded stand-in"


def test_flashattention_4_parts_that_do_not_match_their_checksum_are_not_installed(tmp_path: Path) -> None:
    parts = _flash4_parts(tmp_path)
    manifest = parts / ".fa4-part2" / "flash4.manifest"
    manifest.write_text(re.sub(r"sha256=\w+", "sha256=" + "0" * 64, manifest.read_text()))
    env = _script_env(tmp_path, FLASH4_PARTS=str(parts), SKIP_BENCH="1")
    done = subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "2 of 2 parts here (or a checksum mismatch): not installed" in done.stdout
    assert not (tmp_path / "site-flash4").exists()


def _tiny_wheel(folder: Path) -> Path:
    """A one-module pure-Python wheel, as pip installs it."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "tinypkg-1.0-py3-none-any.whl"
    files = {
        "tinypkg/__init__.py": "VALUE = 1\n",
        "tinypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        "tinypkg-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},,\n" for name in files) + "tinypkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr("tinypkg-1.0.dist-info/RECORD", record)
    return wheel


def test_carried_wheels_are_installed_with_their_bytecode_though_python_writes_none(tmp_path: Path) -> None:
    _tiny_wheel(tmp_path / "wheels")
    env = _script_env(tmp_path, WHEELS=str(tmp_path / "wheels"), SKIP_BENCH="1", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert list((tmp_path / "site" / "tinypkg" / "__pycache__").glob("__init__.*.pyc"))
    assert "compiled in" in done.stdout
    facts = (tmp_path / "out" / "gpu.txt").read_text(encoding="utf-8")
    assert "dont_write_bytecode True" in facts and "torch bytecode:" in facts and "kernel:" in facts


def test_the_gpu_check_brings_every_runtime_dependency_the_device_image_lacks() -> None:
    # tomli-w joined pyproject without joining the wheel list, and every queue case of the
    # 2026-11-29 check failed at intake on the device ("No module named 'tomli_w'").
    import tomllib

    prepare = (ROOT / "bench" / "prepare_gpu_check.sh").read_text(encoding="utf-8")
    on_image = re.search(r'^DEVICE_IMAGE_HAS="([^"]*)"', prepare, re.MULTILINE)
    fetched = re.search(r"^for pkg in (.*?); do", prepare, re.MULTILINE | re.DOTALL)
    assert on_image is not None and fetched is not None
    brought = {_package_name(word) for word in fetched.group(1).replace("\\\n", " ").split()}
    available = brought | {_package_name(word) for word in on_image.group(1).split()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    needed = {_package_name(requirement) for requirement in project["dependencies"]}

    assert needed - available == set()


def _package_name(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert name is not None, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()
