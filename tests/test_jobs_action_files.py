"""Model files a job needs, named when it is queued and when it fails: prompt tags, image actions."""

from __future__ import annotations

from pathlib import Path

from fooocusd.engine.controlnet.models import SETTING_FOR_TYPE
from fooocusd.engine.styles import load_styles
from fooocusd.jobs.action_files import CONTROL_SETTINGS
from fooocusd.jobs.preset_check import (
    MissingFile,
    failed_job_files_note,
    job_files_warning,
    missing_job_files,
)
from fooocusd.jobs.presets import bundled_presets_dir, load_preset
from fooocusd.jobs.spec import ImagePromptSpec, JobSpec, LoraSpec
from fooocusd.settings import ControlNetSettings, Settings
from tests.daemon_harness import Sandbox


def _missing(spec: JobSpec, models: Path, controlnet: ControlNetSettings | None = None) -> list[MissingFile]:
    preset = load_preset("default", [bundled_presets_dir()])
    settings = Settings(engine={"model": "tiny-random"}, controlnet=controlnet or ControlNetSettings())
    return missing_job_files(spec, preset, settings, load_styles(), models)


def _names(missing: list[MissingFile]) -> list[tuple[str, str]]:
    return [(item.kind, item.name) for item in missing]


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_a_lora_tag_in_the_prompt_is_checked_once_unless_the_job_lists_it_or_its_weight_is_zero(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    spec = JobSpec(
        prompt="an owl <lora:detail:0.6>, <lora:Detail> <lora:listed:1> <lora:muted:0>",
        loras=[LoraSpec(name="listed.safetensors", weight=0.5)],
    )
    missing = _missing(spec, models)
    assert _names(missing) == [("loras", "listed.safetensors"), ("loras", "detail")]
    assert missing[1].purpose == "named in the prompt as <lora:detail:0.6>"
    _touch(models / "loras" / "detail.safetensors")
    _touch(models / "loras" / "listed.safetensors")
    assert _missing(spec, models) == []


def test_embeddings_written_in_the_prompts_are_checked_once_each(tmp_path: Path) -> None:
    models = tmp_path / "models"
    spec = JobSpec(
        prompt="a cat, (embedding:tiny_xl:1.2). Embedding:tiny_xl.",
        extra_prompts=["embedding:neg/../../secret"],
        negative="embedding:neg/bad_hands, embedding:EasyNegative.pt",
    )
    missing = _missing(spec, models)
    assert _names(missing) == [
        ("embeddings", "tiny_xl"),
        ("embeddings", "neg/bad_hands"),
        ("embeddings", "EasyNegative.pt"),
    ]
    assert missing[1].describe() == (
        "embedding neg/bad_hands.safetensors (written embedding:neg/bad_hands in the negative), "
        f"which belongs in {models / 'embeddings'}"
    )
    _touch(models / "embeddings" / "tiny_xl.safetensors")
    _touch(models / "embeddings" / "neg" / "bad_hands.pt")  # the engine tries .pt and .bin too
    _touch(models / "embeddings" / "EasyNegative.pt")
    assert _missing(spec, models) == []


def test_embeddings_that_styles_or_any_line_of_a_wildcard_bring_in_are_checked(tmp_path: Path) -> None:
    models, wildcards, style_dir = tmp_path / "models", tmp_path / "wildcards", tmp_path / "styles"
    wildcards.mkdir()
    (wildcards / "look.txt").write_text("plain\n__fancy__\n")
    (wildcards / "fancy.txt").write_text("embedding:shiny, gold\n__look__\n")  # names itself back
    style_dir.mkdir()
    (style_dir / "mine.toml").write_text(
        '[[style]]\nname = "Clean"\nprompt = "{prompt}, crisp"\nnegative = "embedding:bad_hands"\n'
    )
    settings = Settings(engine={"model": "tiny-random"}, paths={"wildcards": str(wildcards)})
    preset = load_preset("default", [bundled_presets_dir()])
    spec = JobSpec(prompt="a cat, __look__", styles=["Clean", "Random Style"])
    missing = missing_job_files(spec, preset, settings, load_styles([style_dir]), models)
    assert [(item.name, item.purpose) for item in missing] == [
        ("bad_hands", "written embedding:bad_hands in style 'Clean'"),
        ("shiny", "written embedding:shiny in a line of __fancy__"),
    ]
    _touch(models / "embeddings" / "bad_hands.safetensors")
    _touch(models / "embeddings" / "shiny.safetensors")
    assert missing_job_files(spec, preset, settings, load_styles([style_dir]), models) == []


def test_a_lora_tag_in_a_choice_or_any_line_of_a_wildcard_is_checked(tmp_path: Path) -> None:
    models, wildcards = tmp_path / "models", tmp_path / "wildcards"
    wildcards.mkdir()
    (wildcards / "medium.txt").write_text("photo\n<lora:pastel:0.5> pastel\n")
    settings = Settings(engine={"model": "tiny-random"}, paths={"wildcards": str(wildcards)})
    preset = load_preset("default", [bundled_presets_dir()])
    spec = JobSpec(prompt="a cat, {<lora:ink:0.6> ink|__medium__}", negative="<lora:neg:1>")
    missing = missing_job_files(spec, preset, settings, load_styles(), models)
    assert [(item.name, item.purpose) for item in missing] == [
        ("ink", "named in the prompt as <lora:ink:0.6>"),
        ("pastel", "named in a line of __medium__ as <lora:pastel:0.5>"),
    ]


def test_an_upscale_job_needs_its_upscaler_and_a_vary_job_does_not(tmp_path: Path) -> None:
    models = tmp_path / "models"
    upscale = JobSpec(prompt="", image="in.png", image_action="upscale_2x")
    [upscaler] = _missing(upscale, models)
    assert (upscaler.kind, upscaler.name, upscaler.purpose) == (
        "upscale_models",
        "RealESRGAN_x4plus",
        "for upscale_2x",
    )
    assert upscaler.folder == models / "upscale_models"
    own = upscale.model_copy(update={"upscale_model": "4x-UltraSharp"})
    assert _names(_missing(own, models)) == [("upscale_models", "4x-UltraSharp")]
    _touch(models / "ESRGAN" / "4x-UltraSharp.safetensors")  # A1111's folder counts, as in the engine
    assert _missing(own, models) == []
    assert _missing(JobSpec(prompt="", image="in.png", image_action="vary_strong"), models) == []
    # An image dropped alone takes generation.image_action (vary_subtle by default).
    assert _missing(JobSpec(prompt="", image="in.png"), models) == []


def test_an_inpaint_job_needs_its_inpainting_model_only_when_one_is_named(tmp_path: Path) -> None:
    models = tmp_path / "models"
    base = JobSpec(prompt="a hat", image="in.png", mask="mask.png")
    assert _missing(base, models) == []  # generation.inpaint_model is empty: the base model repaints
    named = base.model_copy(update={"inpaint_model": "inpaint-xl"})
    [model] = _missing(named, models)
    assert (model.kind, model.name, model.purpose) == (
        "checkpoints",
        "inpaint-xl",
        "the inpainting model for inpaint",
    )
    assert _missing(named.model_copy(update={"inpaint_model": "none"}), models) == []


def test_image_prompts_need_the_adapter_the_encoder_and_for_faces_the_detector(tmp_path: Path) -> None:
    models = tmp_path / "models"
    spec = JobSpec(
        prompt="x",
        image_prompts=[
            ImagePromptSpec(image="a.png"),
            ImagePromptSpec(image="b.png"),
            ImagePromptSpec(image="c.png", type="face"),
        ],
    )
    assert _names(_missing(spec, models)) == [
        ("ipadapter", "ip-adapter-plus_sdxl_vit-h.safetensors"),
        ("clip_vision", "clip_vision_vit_h"),
        ("ipadapter", "ip-adapter-plus-face_sdxl_vit-h.safetensors"),
        ("face_detection", "face_detection_yunet_2023mar.onnx"),
    ]
    _touch(models / "ipadapter" / "ip-adapter-plus_sdxl_vit-h.safetensors")
    _touch(models / "ipadapter" / "ip-adapter-plus-face_sdxl_vit-h.safetensors")
    encoder = tmp_path / "models" / "clip_vision" / "clip-vit-h-14"  # the engine takes a folder too
    _touch(encoder / "config.json")
    _touch(encoder / "model.safetensors")
    [detector] = _missing(spec, models)
    assert detector.describe() == (
        "face detection model face_detection_yunet_2023mar.onnx (for image prompts of type face), "
        f"which belongs in {models / 'face_detection'}"
    )
    _touch(models / "face_detection" / "face_detection_yunet_2023mar.onnx")
    assert _missing(spec, models) == []


def test_control_image_prompts_need_the_configured_controlnet_and_depth_its_estimator(tmp_path: Path) -> None:
    models = tmp_path / "models"
    spec = JobSpec(
        prompt="x",
        image_prompts=[
            ImagePromptSpec(image="a.png", type="pyracanny"),
            ImagePromptSpec(image="b.png", type="depth"),
        ],
    )
    missing = _missing(spec, models)
    assert _names(missing) == [
        ("controlnet", "controlnet-canny-sdxl-1.0"),
        ("controlnet", "controlnet-depth-sdxl-1.0"),
        ("depth_estimator", "Depth-Anything-V2-Small-hf"),
    ]
    assert missing[0].purpose == "for image prompts of type pyracanny, controlnet.canny"
    assert missing[2].describe().startswith("depth estimator folder Depth-Anything-V2-Small-hf/ (for")
    _touch(models / "controlnet" / "controlnet-canny-sdxl-1.0.safetensors")
    _touch(models / "controlnet" / "controlnet-depth-sdxl-1.0" / "config.json")
    _touch(models / "depth_estimator" / "Depth-Anything-V2-Small-hf" / "config.json")
    assert _missing(spec, models) == []
    # cpds has no ControlNet unless configured; the job fails with its own message for that.
    cpds = JobSpec(prompt="x", image_prompts=[ImagePromptSpec(image="a.png", type="cpds")])
    assert _missing(cpds, models) == []
    assert _names(_missing(cpds, models, ControlNetSettings(cpds="union-promax"))) == [
        ("controlnet", "union-promax")
    ]


def test_the_warning_offers_the_fetch_command_for_catalogue_files_among_the_image_prompt_files(
    tmp_path: Path,
) -> None:
    spec = JobSpec(prompt="x <lora:grain>", image_prompts=[ImagePromptSpec(image="c.png", type="face")])
    text = job_files_warning(_missing(spec, tmp_path / "models"), "")
    assert (
        "run `fooocusd models fetch ip-adapter-plus-face_sdxl_vit-h clip_vision_vit_h "
        "face_detection_yunet_2023mar` and copy the other into place"
    ) in text


def test_a_job_that_fails_for_one_missing_file_reports_every_file_it_lacks(sandbox: Sandbox) -> None:
    # Fixing the LoRA the engine stopped at, only to fail next time on the embedding, is one round
    # trip too many: the report lists both.
    sandbox.drop("owl.txt", "an owl, embedding:owl_eyes <lora:feathers:0.5>\nseed: 1\n")
    assert sandbox.drain().jobs_failed == 1
    report = " ".join((sandbox.failed / "owl.txt.error.txt").read_text(encoding="utf-8").split())
    assert "What went wrong: LoRA 'feathers' was not found" in report
    assert (
        "Model files this job needs that are not installed: LoRA feathers.safetensors (named in the prompt "
        "as <lora:feathers:0.5>)"
    ) in report
    assert "embedding owl_eyes.safetensors (written embedding:owl_eyes in the prompt)" in report
    assert "To get them: copy them into the folders named above." in report


def test_the_failure_note_is_left_out_when_the_error_names_the_only_missing_file(tmp_path: Path) -> None:
    [upscaler] = _missing(JobSpec(prompt="", image="in.png", image_action="upscale_2x"), tmp_path)
    assert failed_job_files_note([upscaler], "the upscale model 'RealESRGAN_x4plus' was not found") == ""
    note = failed_job_files_note([upscaler], "the input image is not a picture")
    assert note.startswith("\nModel files this job needs that are not installed: upscale model RealESRGAN")
    assert note.endswith("To get them: run `fooocusd models fetch RealESRGAN_x4plus`.")
    assert failed_job_files_note([], "anything") == ""


def test_the_control_types_settings_agree_with_the_engines() -> None:
    assert CONTROL_SETTINGS == SETTING_FOR_TYPE
