"""``bench/gpu_check.sh``, the one command a GPU session runs, works before it costs a GPU lease.

It runs here on the CPU with the tiny model and a time budget of 0 s: the script installs nothing
(no wheel folder), skips the anchor, and hands its default case list to the benchmark, which
refuses an unknown case name before doing anything and otherwise records each case as skipped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def test_the_gpu_check_script_hands_every_default_case_to_the_benchmark_by_a_known_name(
    tmp_path: Path,
) -> None:
    default = re.search(r"CASES=\$\{CASES:-([^}]*)\}", SCRIPT.read_text(encoding="utf-8"))
    assert default is not None
    cases = default.group(1).split(",")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # python3 = this one
        "OUT": str(tmp_path / "out"),
        "SKIP_ANCHOR": "1",
        "WHEELS": str(tmp_path / "no-wheels"),
        "BENCH_DEVICE": "cpu",
        "BENCH_SIZE": "tiny",
        "BENCH_WORKDIR": str(tmp_path / "work"),
        "BUDGET_S": "0",
    }
    done = subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "fooocusd_bench.json").read_text(encoding="utf-8"))
    assert list(report["cases"]) == cases
    assert all("skipped" in case for case in report["cases"].values())
