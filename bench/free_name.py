"""Cost of choosing a free output name in a large outbox folder, on the render thread.

``choose_free_name`` compares names case-insensitively, which takes a listing of the folder. This
times one name choice per simulated image in a folder that already holds ``--files`` outputs
(half images, half sidecars), the way the worker does it: listed afresh for every image (no
``FolderNames``), and with the worker's ``FolderNames`` (a kept listing, listed again when the
folder changed and its turn has come).

    python bench/free_name.py --files 100000 --out bench/results/free-name-cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fooocusd.outbox.folder_names import FolderNames
from fooocusd.outbox.naming import choose_free_name, sidecar_path_for


def fill(folder: Path, files: int) -> None:
    for index in range(files // 2):
        (folder / f"old_{index}_0.png").touch()
        (folder / f"old_{index}_0.json").touch()


def time_names(folder: Path, images: int, names: FolderNames | None) -> list[float]:
    """Seconds per name choice; each chosen name is then written (image and sidecar), as the
    publisher would, which changes the folder."""
    seconds = []
    for index in range(images):
        started = time.perf_counter()
        target = choose_free_name(folder, f"new_{index}_0", "png", names=names)
        seconds.append(time.perf_counter() - started)
        target.touch()
        sidecar_path_for(target).touch()
        time.sleep(0.05)  # a render
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results: dict[str, dict[str, float | int]] = {}
    with tempfile.TemporaryDirectory(prefix="fooocusd-free-name-") as work:
        for label, names in (("listed_each_time", None), ("folder_names", FolderNames())):
            folder = Path(work) / label
            folder.mkdir()
            fill(folder, args.files)
            seconds = time_names(folder, args.images, names)
            results[label] = {
                "median_ms": round(1000 * statistics.median(seconds), 3),
                "max_ms": round(1000 * max(seconds), 3),
                "listings": names.listings if names is not None else args.images,
            }
    report = {
        "files_in_folder": args.files,
        "images": args.images,
        "machine": f"{platform.node()} {platform.machine()}, Python {platform.python_version()}",
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "free_name.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    rows = ["| method | median ms per name | max ms | folder listings |", "|---|---|---|---|"]
    for label, result in results.items():
        rows.append(f"| {label} | {result['median_ms']} | {result['max_ms']} | {result['listings']} |")
    table = "\n".join(rows)
    (args.out / "free_name.md").write_text(
        f"# Free output name in a folder of {args.files} files\n\n{table}\n\n{report['machine']}\n",
        encoding="utf-8",
    )
    print(table)


if __name__ == "__main__":
    main()
