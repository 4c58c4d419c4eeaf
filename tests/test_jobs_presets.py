"""Preset files: bundled set, user overrides, strict keys, and inbox-subfolder routing."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from loguru import logger

from fooocusd.engine.samplers import SAMPLERS, SIGMA_SCHEDULES
from fooocusd.engine.styles import load_styles
from fooocusd.errors import ConfigError, InvalidInput
from fooocusd.jobs.preset_check import (
    MissingFile,
    check_preset_models,
    job_files_warning,
    missing_default_files,
    missing_job_files,
)
from fooocusd.jobs.presets import (
    bundled_presets_dir,
    list_presets,
    load_all_presets,
    load_preset,
    pick_preset_name,
    preset_for_subfolder,
    preset_search_dirs,
)
from fooocusd.jobs.resolve import resolve_requests
from fooocusd.jobs.spec import JobSpec, LoraSpec
from fooocusd.settings import GenerationSettings, Settings
from tests.daemon_harness import Sandbox

FOOOCUS_PRESETS = {"realistic", "anime", "lightning", "lcm", "sai", "pony"}


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "presets"
    folder.mkdir()
    return folder


def test_bundled_frame_presets_set_only_a_frame_and_default_sets_nothing() -> None:
    presets = load_all_presets([bundled_presets_dir()])
    assert {"default", "portrait", "landscape", "square"} | FOOOCUS_PRESETS <= set(presets)
    assert all(preset.description for preset in presets.values())
    default = presets["default"]
    # The default preset defers everything to the config's [generation] section and engine.model.
    assert default.model_dump(exclude={"name", "path", "description"}, exclude_none=True) == {}
    assert presets["portrait"].aspect == "896*1152"
    assert presets["landscape"].aspect == "1344*768"
    assert presets["square"].aspect == "1024*1024"
    assert all(presets[name].model is None for name in ("portrait", "landscape", "square"))


@pytest.mark.parametrize("name", sorted(FOOOCUS_PRESETS))
def test_each_fooocus_preset_names_its_model_and_resolves_with_known_styles_and_samplers(name: str) -> None:
    preset = load_preset(name, [bundled_presets_dir()])
    assert preset.model and preset.model.endswith(".safetensors")
    assert preset.cfg is not None and preset.sharpness is not None and preset.aspect is not None
    assert preset.sampler in SAMPLERS and preset.scheduler in SIGMA_SCHEDULES
    load_styles().canonical_names(preset.styles or [])  # raises for an unknown style
    [request] = resolve_requests(
        JobSpec(prompt="a fox", seed=1), preset, GenerationSettings(), "mine.safetensors"
    )
    assert request.model == preset.model


def test_fooocus_presets_carry_fooocus_model_files_and_modes() -> None:
    presets = load_all_presets([bundled_presets_dir()])
    sai = presets["sai"]
    assert (sai.refiner, sai.refiner_switch) == ("sd_xl_refiner_1.0_0.9vae.safetensors", 0.75)
    assert sai.loras == [LoraSpec(name="sd_xl_offset_example-lora_1.0.safetensors", weight=0.5)]
    assert presets["pony"].vae == "ponyDiffusionV6XL_vae.safetensors"
    assert (presets["lightning"].performance, presets["lcm"].performance) == ("lightning", "extreme_speed")
    assert (presets["realistic"].cfg, presets["anime"].cfg, presets["pony"].cfg) == (3.0, 6.0, 7.0)


def test_preset_loras_refiner_and_vae_are_read_from_toml(user_dir: Path) -> None:
    (user_dir / "mix.toml").write_text(
        'refiner = "r.safetensors"\nrefiner_switch = 0.6\nvae = "v"\n\n'
        '[[loras]]\nname = "a.safetensors"\nweight = 0.4\n\n[[loras]]\nname = "b"\n'
    )
    preset = load_preset("mix", [user_dir])
    assert preset.loras == [LoraSpec(name="a.safetensors", weight=0.4), LoraSpec(name="b", weight=1.0)]
    assert (preset.refiner, preset.refiner_switch, preset.vae) == ("r.safetensors", 0.6, "v")


def test_preset_loras_take_the_job_files_spellings_and_fooocus_rows(user_dir: Path) -> None:
    (user_dir / "short.toml").write_text('loras = ["a.safetensors:0.4", "b"]\n')
    (user_dir / "rows.toml").write_text(
        'loras = [[true, "a.safetensors", 0.4], ["b", 1.0], [false, "c", 0.5], [true, "None", 1.0]]\n'
    )
    expected = [LoraSpec(name="a.safetensors", weight=0.4), LoraSpec(name="b", weight=1.0)]
    assert load_preset("short", [user_dir]).loras == expected
    assert load_preset("rows", [user_dir]).loras == expected


def test_bad_lora_entry_in_a_preset_names_file_and_key(user_dir: Path) -> None:
    (user_dir / "bad.toml").write_text('loras = [{ name = "a", weight = 5 }]\n')
    with pytest.raises(ConfigError) as caught:
        load_preset("bad", [user_dir])
    assert "bad.toml" in caught.value.message and "loras.0.weight" in caught.value.message


def test_user_preset_overrides_a_bundled_one_of_the_same_name(user_dir: Path) -> None:
    (user_dir / "portrait.toml").write_text('description = "mine"\naspect = "832*1216"\n')
    preset = load_preset("portrait", preset_search_dirs(user_dir))
    assert (preset.description, preset.aspect, preset.path) == (
        "mine",
        "832*1216",
        user_dir / "portrait.toml",
    )
    assert "default" in list_presets(preset_search_dirs(user_dir))


def test_preset_values_are_normalised_like_job_values(user_dir: Path) -> None:
    (user_dir / "fast.toml").write_text('performance = "Extreme Speed"\naspect = "16:9"\nformat = "jpg"\n')
    preset = load_preset("fast", [user_dir])
    assert (preset.performance, preset.aspect, preset.output_format) == ("extreme_speed", "1344*768", "jpeg")


def test_unknown_key_in_a_preset_is_a_config_error_naming_the_file(user_dir: Path) -> None:
    (user_dir / "bad.toml").write_text('promt = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load_preset("bad", [user_dir])
    assert str(user_dir / "bad.toml") in caught.value.message
    assert "'promt'" in caught.value.message


def test_invalid_value_in_a_preset_names_file_and_key(user_dir: Path) -> None:
    (user_dir / "bad.toml").write_text("cfg = 99\n")
    with pytest.raises(ConfigError) as caught:
        load_all_presets([user_dir])
    assert "bad.toml" in caught.value.message and "'cfg'" in caught.value.message


def test_missing_preset_is_invalid_input_listing_the_available_ones(user_dir: Path) -> None:
    (user_dir / "anime.toml").write_text('description = "x"\n')
    with pytest.raises(InvalidInput) as caught:
        load_preset("anmie", [user_dir])
    assert "did you mean 'anime'" in caught.value.message
    assert "anime" in caught.value.hint


@pytest.mark.parametrize(
    ("relpath", "expected"),
    [
        ("portrait/cat.txt", "portrait"),
        ("Portrait/cat.txt", "portrait"),
        ("portrait/2024/may/cat.txt", "portrait"),
        ("cat.txt", None),
        ("holiday/cat.txt", None),
        (".portrait/cat.txt", None),
    ],
)
def test_subfolder_named_after_a_preset_applies_it(relpath: str, expected: str | None) -> None:
    assert preset_for_subfolder(relpath, [bundled_presets_dir()]) == expected


def test_a_subfolder_made_on_a_mac_finds_its_preset_whatever_name_spelling(tmp_path: Path) -> None:
    typed, from_a_mac = unicodedata.normalize("NFC", "réaliste"), unicodedata.normalize("NFD", "Réaliste")
    (tmp_path / f"{typed}.toml").write_text('description = "mon préréglage"\n')
    assert preset_for_subfolder(f"{from_a_mac}/chat.txt", [tmp_path]) == typed
    assert load_preset(from_a_mac, [tmp_path]).description == "mon préréglage"


def test_job_preset_beats_subfolder_which_beats_the_configured_default() -> None:
    defaults = GenerationSettings(preset="default")
    assert pick_preset_name("square", "portrait", defaults) == "square"
    assert pick_preset_name(None, "portrait", defaults) == "portrait"
    assert pick_preset_name(None, None, defaults) == "default"
    assert pick_preset_name(None, None, GenerationSettings(preset="")) is None


# -- model files a preset needs ---------------------------------------------------------------------


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_missing_model_files_name_the_preset_each_file_its_folder_and_the_fetch_command(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    _touch(models / "checkpoints" / "sd_xl_base_1.0_0.9vae.safetensors")
    sai = load_preset("sai", [bundled_presets_dir()])
    with pytest.raises(InvalidInput) as caught:
        check_preset_models(sai, JobSpec(prompt="x"), models, "mine.safetensors")
    error = caught.value
    assert "preset 'sai'" in error.message
    assert "sd_xl_base_1.0_0.9vae" not in error.message  # present, so not reported
    assert "sd_xl_refiner_1.0_0.9vae.safetensors" in error.message
    assert str(models / "checkpoints") in error.message
    assert "sd_xl_offset_example-lora_1.0.safetensors" in error.message
    assert str(models / "loras") in error.message
    assert "`fooocusd models fetch sd_xl_refiner_1.0_0.9vae sd_xl_offset_example-lora_1.0`" in error.hint
    assert "sai" in error.where


def test_preset_with_every_file_present_passes(tmp_path: Path) -> None:
    models = tmp_path / "models"
    _touch(models / "checkpoints" / "ponyDiffusionV6XL.safetensors")
    _touch(models / "vae" / "ponyDiffusionV6XL_vae.safetensors")
    check_preset_models(load_preset("pony", [bundled_presets_dir()]), JobSpec(prompt="x"), models, "m")


def test_a_preset_fast_mode_needs_its_lora(tmp_path: Path) -> None:
    models = tmp_path / "models"
    _touch(models / "checkpoints" / "juggernautXL_v8Rundiffusion.safetensors")
    lightning = load_preset("lightning", [bundled_presets_dir()])
    with pytest.raises(InvalidInput) as caught:
        check_preset_models(lightning, JobSpec(prompt="x"), models, "m")
    assert "sdxl_lightning_4step_lora.safetensors" in caught.value.message
    assert "Lightning performance mode" in caught.value.message
    assert "fooocusd models fetch sdxl_lightning_4step_lora" in caught.value.hint
    # A job that picks its own performance does not use the preset's LoRA.
    check_preset_models(lightning, JobSpec(prompt="x", performance="speed"), models, "m")


def test_tiny_random_skips_checkpoint_refiner_and_vae_but_not_loras(tmp_path: Path) -> None:
    models = tmp_path / "models"
    check_preset_models(
        load_preset("pony", [bundled_presets_dir()]), JobSpec(prompt="x"), models, "tiny-random"
    )
    with pytest.raises(InvalidInput) as caught:
        check_preset_models(
            load_preset("sai", [bundled_presets_dir()]), JobSpec(prompt="x"), models, "tiny-random"
        )
    assert "sd_xl_offset_example-lora_1.0.safetensors" in caught.value.message
    assert "refiner" not in caught.value.message


def test_files_the_job_replaces_are_not_checked(tmp_path: Path) -> None:
    models = tmp_path / "models"
    spec = JobSpec(prompt="x", model="own.safetensors", vae="default")
    check_preset_models(load_preset("pony", [bundled_presets_dir()]), spec, models, "m")
    realistic = load_preset("realistic", [bundled_presets_dir()])
    off = JobSpec(
        prompt="x", model="own", loras=[LoraSpec(name="SDXL_FILM_PHOTOGRAPHY_STYLE_V1", weight=0.0)]
    )
    check_preset_models(realistic, off, models, "m")


def test_job_on_a_preset_with_a_missing_lora_fails_with_the_fetch_command_in_its_error_file(
    sandbox: Sandbox,
) -> None:
    sandbox.drop("sai/castle.txt", "a castle at dusk\nseed: 1\n")
    assert not sandbox.drain().ok
    [error_file] = sandbox.files(sandbox.failed, "**/*.error.txt")
    text = error_file.read_text(encoding="utf-8")
    assert "preset 'sai'" in text
    assert "sd_xl_offset_example-lora_1.0.safetensors" in text
    assert "fooocusd models fetch sd_xl_offset_example-lora_1.0" in text
    assert not sandbox.images()


def test_the_defaults_need_the_default_performance_lora_unless_the_preset_sets_its_own(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    bundled = [bundled_presets_dir()]
    default = load_preset("default", bundled)
    assert missing_default_files(default, "speed", models, "tiny-random") == []
    [lcm] = missing_default_files(default, "extreme_speed", models, "tiny-random")
    assert lcm.name == "sdxl_lcm_lora.safetensors" and lcm.folder == models / "loras"
    assert "generation.performance = 'extreme_speed'" in lcm.describe()
    # The lightning preset's own mode wins over the configured one.
    _touch(models / "checkpoints" / "juggernautXL_v8Rundiffusion.safetensors")
    [lightning] = missing_default_files(load_preset("lightning", bundled), "extreme_speed", models, "m")
    assert lightning.name == "sdxl_lightning_4step_lora.safetensors"
    _touch(models / "loras" / "sdxl_lcm_lora.safetensors")
    assert missing_default_files(default, "extreme_speed", models, "tiny-random") == []


# -- model files a job needs, checked when it is queued ---------------------------------------------


def _missing_for(
    spec: JobSpec, models: Path, preset: str = "default", engine_model: str = "tiny-random"
) -> list[MissingFile]:
    loaded = load_preset(preset, [bundled_presets_dir()])
    return missing_job_files(spec, loaded, Settings(engine={"model": engine_model}), load_styles(), models)


def test_a_job_s_own_model_refiner_vae_and_loras_are_listed_when_not_installed(tmp_path: Path) -> None:
    models = tmp_path / "models"
    spec = JobSpec(
        prompt="x",
        model="mine",
        refiner="ref",
        vae="myvae",
        loras=[LoraSpec(name="detail", weight=0.5), LoraSpec(name="off", weight=0.0)],
    )
    missing = _missing_for(spec, models)
    assert [(item.kind, item.name) for item in missing] == [
        ("checkpoints", "mine"),
        ("checkpoints", "ref"),
        ("vae", "myvae"),
        ("loras", "detail"),
    ]
    assert [item.purpose for item in missing] == [
        "the job's model",
        "the job's refiner",
        "the job's VAE",
        "at weight 0.5",
    ]
    _touch(models / "checkpoints" / "mine.safetensors")
    _touch(models / "checkpoints" / "sub" / "ref.safetensors")  # found in a subfolder, as the engine does
    _touch(models / "vae" / "myvae.safetensors")
    _touch(models / "loras" / "detail.pt")  # a pickle: there, and the engine says why it is refused
    assert _missing_for(spec, models) == []


def test_files_that_need_no_check_when_queued_are_left_out(tmp_path: Path) -> None:
    models = tmp_path / "models"
    # the configured model is checked at start; no refiner at switch 1.0; the tiny models are built in
    assert _missing_for(JobSpec(prompt="x", model="configured"), models, engine_model="configured") == []
    assert _missing_for(JobSpec(prompt="x", refiner="ref", refiner_switch=1.0), models) == []
    assert _missing_for(JobSpec(prompt="x", model="tiny-random", refiner="tiny-random-refiner"), models) == []
    assert _missing_for(JobSpec(prompt="x", vae="default", refiner="none"), models) == []


def test_a_preset_s_files_and_a_performance_lora_say_where_they_come_from(tmp_path: Path) -> None:
    models = tmp_path / "models"
    missing = _missing_for(JobSpec(prompt="x"), models, preset="pony", engine_model="m")
    assert {(item.name, item.purpose) for item in missing} == {
        ("ponyDiffusionV6XL.safetensors", "the model of preset 'pony'"),
        ("ponyDiffusionV6XL_vae.safetensors", "the VAE of preset 'pony'"),
    }
    [lora] = _missing_for(JobSpec(prompt="x", performance="lightning"), models)
    assert lora.name == "sdxl_lightning_4step_lora.safetensors"
    assert lora.purpose == "for the Lightning performance mode"


def test_the_warning_names_the_job_each_file_and_only_the_fetch_commands_that_exist(tmp_path: Path) -> None:
    models = tmp_path / "models"
    spec = JobSpec(prompt="x", performance="lightning", loras=[LoraSpec(name="detail", weight=1.0)])
    text = job_files_warning(_missing_for(spec, models), "job 2")
    assert text.startswith(", job 2, needs model files that are not installed: ")
    assert "LoRA detail.safetensors (at weight 1)" in text and str(models / "loras") in text
    assert "run `fooocusd models fetch sdxl_lightning_4step_lora` and copy the other into place" in text
    assert "fooocusd models fetch detail" not in text
    single = job_files_warning(_missing_for(JobSpec(prompt="x", vae="myvae"), models), "")
    assert single.startswith(" needs a model file that is not installed: VAE myvae.safetensors")
    assert "unless it is there by then: copy it into the folder named above" in single


def test_a_job_that_names_a_missing_lora_is_queued_with_a_warning_and_fails_only_when_it_runs(
    sandbox: Sandbox,
) -> None:
    sandbox.drop("owl.txt", "an owl\nseed: 1\nloras: detail:0.5\n")
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(str(message)), level="INFO", format="{message}")
    try:
        summary = sandbox.drain()
    finally:
        logger.remove(sink)

    assert summary.queued_jobs == 1 and summary.jobs_failed == 1
    log = " ".join(" ".join(messages).split())
    assert "owl.txt needs a model file that is not installed: LoRA detail.safetensors (at weight 0.5)" in log
    assert log.index("queued owl.txt") < log.index("owl.txt needs a model file")
    assert (sandbox.failed / "owl.txt.error.txt").exists()
