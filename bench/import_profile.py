"""Where a fresh process's imports go: ``python -X importtime``, summed per top-level package.

The GPU check's ``warm_start`` runs this when a daemon's "interpreter and imports" step is long
(on the device machine it has been 13-28 s, against ~6 s on a 2-core CPU box): is it one package,
or every file read slowly?

    python bench/import_profile.py fooocusd.service.daemon fooocusd.engine.sdxl
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

DAEMON_MODULES = ("fooocusd.service.daemon", "fooocusd.engine.sdxl")
"""What a daemon imports before it is ready (the engine's modules load with the model)."""
SHOWN = 12
_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def parse_importtime(stderr: str) -> list[tuple[str, float, float]]:
    """(module, own seconds, seconds with its imports) per line of ``-X importtime`` output."""
    rows = []
    for line in stderr.splitlines():
        if match := _LINE.match(line):
            rows.append((match[4], int(match[1]) / 1e6, int(match[2]) / 1e6))
    return rows


def by_package(rows: Sequence[tuple[str, float, float]]) -> dict[str, float]:
    """Own seconds summed per top-level package, largest first."""
    totals: dict[str, float] = {}
    for module, own, _ in rows:
        package = module.split(".", 1)[0]
        totals[package] = totals.get(package, 0.0) + own
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def profile_imports(
    modules: Sequence[str] = DAEMON_MODULES, env: Mapping[str, str] | None = None, timeout: float = 300
) -> dict[str, Any]:
    """Import ``modules`` in a fresh interpreter under ``-X importtime``: its wall time, the
    packages' and the slowest modules' own seconds."""
    script = "; ".join(f"import {module}" for module in modules)
    mark = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", script],
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - mark
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr[-400:]}", "wall_s": round(wall, 2)}
    rows = parse_importtime(done.stderr)
    slowest = sorted(rows, key=lambda row: -row[1])[:SHOWN]
    return {
        "modules": list(modules),
        "wall_s": round(wall, 2),
        "own_s_total": round(sum(own for _, own, _ in rows), 2),
        "packages_s": {name: round(s, 3) for name, s in list(by_package(rows).items())[:SHOWN]},
        "slowest_modules_s": {module: round(own, 3) for module, own, _ in slowest},
    }


if __name__ == "__main__":
    print(json.dumps(profile_imports(sys.argv[1:] or DAEMON_MODULES), indent=2))
