from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from fooocusd.errors import ConfigError
from fooocusd.settings import Settings, find_config_file, flatten, load_settings

REPO = Path(__file__).resolve().parent.parent
DOCUMENTED = REPO / "config" / "fooocusd.toml"


def test_documented_config_file_loads_to_exactly_the_defaults() -> None:
    loaded = load_settings(DOCUMENTED, environ={})
    assert loaded.settings == Settings()


def test_documented_config_file_mentions_every_setting() -> None:
    text = DOCUMENTED.read_text()
    sections = {section: set() for section in Settings.model_fields}
    current = None
    for line in text.splitlines():
        if match := re.match(r"^\[(\w+)\]", line):
            current = match.group(1)
        elif current and (match := re.match(r"^#?\s*(\w+)\s*=", line)):
            sections[current].add(match.group(1))
    for dotted in flatten(Settings()):
        section, key = dotted.split(".")
        assert key in sections[section], f"{dotted} is not documented in config/fooocusd.toml"


def test_cli_beats_environment_which_beats_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[intake]\nsettle_seconds = 5\nrescan_seconds = 60\npoll_interval_seconds = 3\n")
    env = {"FOOOCUSD_INTAKE__SETTLE_SECONDS": "7", "FOOOCUSD_INTAKE__RESCAN_SECONDS": "90"}
    loaded = load_settings(config, {"intake.settle_seconds": 9.0}, env)
    assert loaded.settings.intake.settle_seconds == 9.0
    assert loaded.settings.intake.rescan_seconds == 90.0
    assert loaded.settings.intake.poll_interval_seconds == 3.0
    assert loaded.sources["intake.settle_seconds"] == "cli"
    assert loaded.sources["intake.rescan_seconds"] == "env:FOOOCUSD_INTAKE__RESCAN_SECONDS"
    assert loaded.sources["intake.poll_interval_seconds"] == f"file:{config}"
    assert loaded.sources["intake.follow_symlinks"] == "default"


def test_unknown_key_error_names_key_file_and_valid_keys(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[intake]\nsettle_secs = 5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    message = str(caught.value)
    assert "intake.settle_secs" in message and str(config) in message and "settle_seconds" in message
    assert "did you mean 'settle_seconds'?" in message


def test_a_misspelled_section_is_named_with_its_file_and_the_section_meant(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[engin]\nmodel = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert f"unknown key 'engin' (from file {config}) — did you mean 'engine'?" in str(caught.value)


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        ("steps = 12", ["'steps' cannot be a [generation] default", "generation.preset"]),
        ('model = "x"', ["set by engine.model"]),
        ("seed = 3", ["'seed' belongs in each job file"]),
    ],
    ids=["preset-key", "model", "job-key"],
)
def test_a_job_or_preset_key_in_generation_says_where_it_belongs(
    tmp_path: Path, generation: str, expected: list[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[generation]\n{generation}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    message = str(caught.value)
    assert all(fragment in message for fragment in expected), message
    assert "did you mean" not in message


def test_the_preset_only_keys_are_exactly_what_a_preset_adds_to_generation() -> None:
    from fooocusd.jobs.presets import Preset
    from fooocusd.jobs.spec import JobSpec
    from fooocusd.settings import JOB_ONLY_KEYS, PRESET_ONLY_KEYS, GenerationSettings

    assert set(JOB_ONLY_KEYS) <= set(JobSpec.model_fields)

    bookkeeping = {"name", "description", "path", "model"}
    added = set(Preset.model_fields) - set(GenerationSettings.model_fields) - bookkeeping
    assert added == set(PRESET_ONLY_KEYS)


def test_invalid_value_error_names_key_source_and_expectation(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[outbox]\nformat = "gif"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    message = str(caught.value)
    assert "outbox.format" in message and str(config) in message and "'png'" in message


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="FOOOCUSD_INTAKE__SETTLE_SECONDS"):
        load_settings(None, environ={"FOOOCUSD_INTAKE__SETTLE_SECONDS": "soon", "HOME": "/nonexistent"})


def test_unknown_environment_variable_is_refused() -> None:
    with pytest.raises(ConfigError, match="FOOOCUSD_INTAKE_SETTLE"):
        load_settings(None, environ={"FOOOCUSD_INTAKE_SETTLE": "1", "HOME": "/nonexistent"})


def test_config_file_search_order(tmp_path: Path) -> None:
    explicit, from_env = tmp_path / "explicit.toml", tmp_path / "env.toml"
    xdg = tmp_path / "xdg" / "fooocusd" / "fooocusd.toml"
    for path in (explicit, from_env, xdg):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    env = {"FOOOCUSD_CONFIG": str(from_env), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert find_config_file(explicit, env) == explicit
    assert find_config_file(None, env) == from_env
    assert find_config_file(None, {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}) == xdg


def test_invalid_toml_reports_the_line(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[intake]\nsettle_seconds = \n")
    with pytest.raises(ConfigError, match="line 2"):
        load_settings(config, environ={})


def test_a_config_file_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    config = tmp_path / "fooocusd.toml"
    config.write_bytes(b'\xef\xbb\xbf[paths]\r\ninbox = "/srv/in"\r\n')
    assert load_settings(config, environ={}).settings.paths.inbox == Path("/srv/in")


def test_state_dir_follows_systemd_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/fooocusd")
    assert Settings().paths.resolved().state == Path("/var/lib/fooocusd")
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert Settings().paths.resolved().state == tmp_path / "fooocusd"


def test_documented_file_is_valid_toml() -> None:
    assert "paths" in tomllib.loads(DOCUMENTED.read_text())


def test_bad_output_name_template_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[outbox]\nname_template = "{stem}_{colour}"\n')
    with pytest.raises(ConfigError, match=r"outbox\.name_template"):
        load_settings(config, environ={})
