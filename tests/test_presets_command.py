"""``fooocusd presets``: every preset a job may name, what it sets, and whether its files are here."""

from __future__ import annotations

import json

import pytest

from fooocusd.cli import main
from tests.daemon_harness import Sandbox


def _rows(out: str) -> dict[str, str]:
    return {
        line.split("│")[1].strip(): line
        for line in out.splitlines()
        if line.startswith("│ ") and line[2] != " "
    }


def test_presets_lists_the_bundled_and_the_users_presets_with_what_they_lack(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    sandbox.write_config()
    mine = sandbox.root / "presets" / "noir.toml"
    mine.parent.mkdir()
    mine.write_text('description = "Black and white"\ncfg = 5\nloras = ["grain:0.4"]\n', encoding="utf-8")
    text = sandbox.config.read_text()
    sandbox.config.write_text(text.replace("[intake]", f'presets = "{mine.parent}"\n\n[intake]', 1))

    assert main(["presets", "--config", str(sandbox.config)]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert {"default", "realistic", "lightning", "noir"} <= rows.keys()
    assert "Black and white" in rows["noir"] and "cfg: 5.0; loras: grain 0.4" in rows["noir"]
    assert "lacks grain" in rows["noir"] and str(mine) in rows["noir"]
    # With engine.model = "tiny-random" the checkpoints are not used; the LoRAs still are.
    assert "lacks SDXL_FILM_PHOTOGRAPHY_STYLE_V1" in rows["realistic"]
    assert "│ ready" in rows["default"]
    assert "`fooocusd models fetch --preset PRESET` downloads the files a preset lacks" in out


def test_presets_json_gives_each_presets_settings_and_lacking_files(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.write_config()
    assert main(["presets", "--json", "--config", str(sandbox.config)]) == 0
    listing = json.loads(capsys.readouterr().out)
    presets = {row["name"]: row for row in listing["presets"]}
    assert listing["default"] == "default"
    realistic = presets["realistic"]
    assert realistic["sets"]["cfg"] == 3.0 and realistic["sets"]["aspect"] == "896*1152"
    assert realistic["sets"]["loras"] == [
        {"name": "SDXL_FILM_PHOTOGRAPHY_STYLE_V1.safetensors", "weight": 0.25}
    ]
    assert realistic["lacks"] == ["SDXL_FILM_PHOTOGRAPHY_STYLE_V1"]
    assert presets["default"]["lacks"] == [] and realistic["file"].endswith("realistic.toml")
