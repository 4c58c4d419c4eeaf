"""The one settings model, and where each value comes from.

Precedence, lowest to highest: built-in defaults, the TOML file, ``FOOOCUSD_*`` environment
variables (nested with ``__``, e.g. ``FOOOCUSD_INTAKE__SETTLE_SECONDS=5``), then CLI flags.
The file is found at ``--config``, ``$FOOOCUSD_CONFIG``, ``$XDG_CONFIG_HOME/fooocusd/fooocusd.toml``,
then ``/etc/fooocusd/fooocusd.toml``. Every setting is documented in ``config/fooocusd.toml``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from fooocusd.errors import ConfigError, suggest

ENV_PREFIX = "FOOOCUSD_"
SYSTEM_CONFIG = Path("/etc/fooocusd/fooocusd.toml")

# Keys a preset (and a job) may set but [generation] may not: a default for them belongs in a preset.
PRESET_ONLY_KEYS = ("steps", "loras", "refiner", "refiner_switch", "vae", "output_format")
# Keys only a job file sets; each job has its own.
JOB_ONLY_KEYS = ("prompt", "seed", "image", "mask", "image_prompts", "denoise", "outpaint", "priority")

# Command-line flag (argparse dest) → the dotted setting it overrides.
FLAG_SETTINGS: dict[str, str] = {
    "inbox": "paths.inbox",
    "outbox": "paths.outbox",
    "done_dir": "paths.done",
    "failed_dir": "paths.failed",
    "state_dir": "paths.state",
    "models_dir": "paths.models",
    "model": "engine.model",
    "device": "engine.device",
    "settle_seconds": "intake.settle_seconds",
    "polling": "intake.polling",
    "log_level": "logging.level",
    "log_json": "logging.json",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsSettings(_Section):
    inbox: Path = Field(Path("~/fooocusd/inbox"), description="Folder watched for dropped files.")
    outbox: Path = Field(Path("~/fooocusd/outbox"), description="Where finished images go.")
    done: Path | None = Field(None, description="Inputs after success. Default: 'done' beside the inbox.")
    failed: Path | None = Field(None, description="Inputs after failure. Default: 'failed' beside the inbox.")
    state: Path | None = Field(
        None, description="Journal and claimed inputs. Default: $STATE_DIRECTORY or $XDG_STATE_HOME/fooocusd."
    )
    models: list[Path] = Field(
        default_factory=lambda: [Path("~/fooocusd/models")],
        description="Model folders, searched in order (one path or a list); downloads go to the first.",
    )
    presets: Path | None = Field(None, description="Extra user presets, beside the bundled ones.")
    styles: Path | None = Field(None, description="Extra user styles (.toml, or Fooocus .json arrays).")
    wildcards: Path | None = Field(
        None,
        description="Wildcard lists: <name>.txt, one choice per line, before the bundled ones. "
        "Default: 'wildcards' beside the inbox.",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _one_or_many_model_folders(cls, value: Any) -> Any:
        listed = [value] if isinstance(value, str | Path) else value
        if isinstance(listed, list | tuple) and not listed:
            raise ValueError("give at least one models folder")
        return listed

    def resolved(self) -> ResolvedPaths:
        inbox = _expand(self.inbox)
        state = _expand(self.state) if self.state else _default_state_dir()
        return ResolvedPaths(
            inbox=inbox,
            outbox=_expand(self.outbox),
            done=_expand(self.done) if self.done else inbox.parent / "done",
            failed=_expand(self.failed) if self.failed else inbox.parent / "failed",
            state=state,
            models=tuple(_expand(root) for root in self.models),
            presets=_expand(self.presets) if self.presets else None,
            styles=_expand(self.styles) if self.styles else None,
            wildcards=_expand(self.wildcards) if self.wildcards else inbox.parent / "wildcards",
        )


class ResolvedPaths(BaseModel):
    inbox: Path
    outbox: Path
    done: Path
    failed: Path
    state: Path
    models: tuple[Path, ...]  # search order; the first is where `fooocusd models fetch` saves files
    presets: Path | None
    styles: Path | None
    wildcards: Path | None


class IntakeSettings(_Section):
    settle_seconds: float = Field(
        2.0, ge=0.0, le=3600, description="Unchanged size/mtime/inode for this long."
    )
    open_write_wait_seconds: float = Field(
        120.0, ge=0.0, le=86400, description="With native events: wait this long for a writer to close."
    )
    editor_wait_seconds: float = Field(
        3600.0,
        ge=0.0,
        le=7 * 86400,
        description="A job file an editor marks as open (vim's .name.swp...) waits at most this long; "
        "0: never.",
    )
    rescan_seconds: float = Field(30.0, ge=1.0, le=86400, description="Full rescan interval (safety net).")
    polling: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: poll on network/FUSE mounts, native events elsewhere."
    )
    poll_interval_seconds: float = Field(2.0, ge=0.1, le=600)
    pair_wait_seconds: float = Field(
        10.0, ge=0.0, le=3600, description="How long an image waits for a same-stem .txt/.toml/.json partner."
    )
    follow_symlinks: bool = False
    conflict_copies: Literal["quarantine", "process"] = "quarantine"
    ignore_patterns: list[str] = Field(default_factory=list, description="Extra fnmatch patterns to ignore.")
    max_job_file_bytes: int = Field(
        1_000_000, ge=1024, description="Larger .txt/.toml/.json job files are refused."
    )
    max_image_pixels: int = Field(
        64_000_000, ge=1_000_000, description="Larger images are refused (decompression bombs)."
    )
    duplicates: Literal["skip", "rerun"] = Field(
        "rerun", description="A file whose content was seen before: run it again, or skip it into done/."
    )


class JournalSettings(_Section):
    max_attempts: int = Field(3, ge=1, le=100, description="Attempts for transient errors before failing.")
    retry_backoff_seconds: float = Field(10.0, ge=0.0, description="First retry delay; doubles each time.")
    lease_seconds: float = Field(
        120.0, ge=5.0, description="A running job whose worker is silent this long is requeued."
    )
    max_crashes: int = Field(
        2, ge=1, le=100, description="Daemon crashes during one job before it is quarantined in failed/."
    )
    keep_days: float = Field(
        90.0, ge=0.0, description="Forget files finished this many days ago; 0 keeps everything."
    )


class EngineSettings(_Section):
    model: str = Field(
        "",
        description="Checkpoint file or diffusers folder (absolute or under paths.models), or 'tiny-random'.",
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    attention: Literal["auto", "sdpa", "sdpa_cudnn", "sdpa_flash4", "xformers"] = Field(
        "auto",
        description="Attention kernels: sdpa (PyTorch's choice), sdpa_cudnn, sdpa_flash4, xformers; auto = "
        "the fastest of those measured at the model's shapes on a CUDA GPU, sdpa elsewhere.",
    )
    expansion: str = Field(
        "auto",
        min_length=1,
        description="Prompt expansion ('Fooocus V2') model: auto, off, tiny-random, or a GPT-2 folder.",
    )
    allow_unsafe_pickle: bool = Field(
        False, description="Load .ckpt/.pt/.pth/.bin checkpoints (pickles, which can run code); logged."
    )
    vram: Literal["auto", "high", "low"] = Field(
        "auto", description="low: stream the UNet, offload text encoders, tile VAE; auto: low under 10 GiB."
    )
    compile: Literal["auto", "off", "unet", "unet_full"] = Field(
        "auto",
        description="torch.compile the UNet's repeated blocks (unet) or the whole UNet (unet_full); "
        "auto = unet on a CUDA GPU with Triton, off elsewhere.",
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"] = Field(
        "default", description="torch.compile mode; reduce-overhead adds CUDA graphs (one per image size)."
    )
    compile_dynamic: bool = Field(False, description="One dynamic-shape graph instead of one per image size.")
    channels_last: bool = Field(True, description="channels_last UNet and VAE (CUDA only).")
    keep_channels_last: Literal["off", "on"] = Field(
        "on",
        description="Keep a channels_last UNet's and VAE's tensors channels_last through GroupNorm and "
        "the transformers' outputs instead of copying to NCHW and back (16 % faster on an H100).",
    )
    fuse_resnet_norms: Literal["auto", "off", "on"] = Field(
        "auto",
        description="Each resnet block's GroupNorm, time shift and SiLU as one pass over kept "
        "channels_last activations; auto = our Triton kernels on a GPU, off elsewhere.",
    )
    subpixel_upsample: Literal["auto", "off", "on"] = Field(
        "auto",
        description="The UNet's and VAE's 2× upsampling + 3×3 convolution as one convolution of 2×2 "
        "phase kernels (4/9 of the multiply-adds); auto = on where channels_last is (GPUs).",
    )
    fuse_qkv: bool = Field(True, description="Fused attention projections (CUDA only; off after a LoRA).")
    vae_upcast: Literal["auto", "always", "never"] = Field(
        "auto", description="VAE in fp32: auto = only for an fp16 pipeline whose VAE needs it."
    )
    quantize: Literal["off", "fp8", "auto"] = Field(
        "auto",
        description="fp8 UNet Linear weights (torchao, CUDA 8.9+); auto = off until fp8 quality is measured.",
    )
    warm_up: bool = Field(
        True,
        description="At start, render one discarded image at generation.aspect when compile or CUDA "
        "graphs are on, so that the daemon reports ready once the first job will not wait for compiling.",
    )
    unload_when_paused: bool = Field(
        True,
        description="While `fooocusd pause` holds the queue, unload the model from GPU memory; it is "
        "loaded again (and warmed up) when the pause ends.",
    )
    unload_after_idle_seconds: float = Field(
        0.0,
        ge=0.0,
        le=7 * 86400,
        description="Unload the model from GPU memory after this long without a job; the next job "
        "loads it again. 0: keep it loaded.",
    )
    cuda_graphs: Literal["auto", "off", "on"] = Field(
        "auto",
        description="Replay the base UNet (one graph per input shape) and the text encoders as "
        "captured CUDA graphs (NVIDIA GPUs, high-VRAM mode); auto: wherever they can be used, on a "
        "GPU with 16 GiB or more.",
    )
    overlap_decode: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Decode a finished image on the publisher thread while the next job denoises; "
        "auto = on for a CUDA GPU with 20 GiB or more in high-VRAM mode.",
    )
    expand_ahead: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Expand the prompts of the next queued jobs on a thread of their own while the "
        "current batch renders; auto = off (slower than expanding between renders on an H100).",
    )
    batch_size: Literal["auto"] | int = Field(
        "auto", description="Images per UNet batch, 1..16; auto = 4 on a CUDA GPU in high-VRAM mode, else 1."
    )

    @field_validator("batch_size")
    @classmethod
    def _batch_size_in_range(cls, value: Literal["auto"] | int) -> Literal["auto"] | int:
        if value != "auto" and not 1 <= value <= 16:
            raise ValueError("batch_size must be 'auto' or a whole number from 1 to 16")
        return value


class GenerationSettings(_Section):
    preset: str = Field("default", description="Preset applied when neither job nor subfolder names one.")
    image_action: Literal["vary_subtle", "vary_strong", "upscale_1.5x", "upscale_2x", "upscale_fast_2x"] = (
        Field("vary_subtle", description="What an image dropped alone asks for.")
    )
    use_recorded_prompt: bool = Field(
        True, description="An image job with no prompt takes the prompt recorded in its image, if any."
    )
    upscale_model: str = Field(
        "RealESRGAN_x4plus", description="Super-resolution model (.safetensors) in <models>/upscale_models."
    )
    inpaint_model: str = Field(
        "", max_length=500, description="SDXL inpainting checkpoint for inpaint/outpaint; '' = base model."
    )
    negative: str = ""
    images: int = Field(1, ge=1, le=32)
    aspect: str = "1152*896"
    performance: Literal["quality", "speed", "extreme_speed", "lightning", "hyper_sd"] = "speed"
    cfg: float = Field(4.0, ge=1.0, le=30.0)
    sharpness: float = Field(2.0, ge=0.0, le=30.0)
    adaptive_cfg: float = Field(7.0, ge=1.0, le=30.0)
    adm_scaler_positive: float = Field(1.5, ge=0.1, le=3.0)
    adm_scaler_negative: float = Field(0.8, ge=0.1, le=3.0)
    adm_scaler_end: float = Field(0.3, ge=0.0, le=1.0)
    clip_skip: int = Field(2, ge=1, le=12)
    sampler: str = "dpmpp_2m_sde_gpu"
    scheduler: str = "karras"
    styles: list[str] = Field(default_factory=list)

    @field_validator("aspect")
    @classmethod
    def _aspect_ok(cls, value: str) -> str:
        from fooocusd.jobs.spec import parse_aspect

        width, height = parse_aspect(value)
        return f"{width}*{height}"


class OutboxSettings(_Section):
    name_template: str = Field(
        "{stem}_{seed}_{index}", description="See config/fooocusd.toml for the fields. Never overwrites."
    )
    format: Literal["png", "jpeg", "webp"] = "png"

    @field_validator("name_template")
    @classmethod
    def _template_renders(cls, value: str) -> str:
        from fooocusd.outbox.naming import validate_template

        try:
            validate_template(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from exc
        return value

    quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality.")
    embed_metadata: bool = True
    after_success: Literal["move", "delete", "keep"] = Field(
        "move", description="move: to paths.done; delete; keep: leave a copy in paths.state/kept."
    )
    umask: int = Field(0o022, ge=0, le=0o777)
    save_control_images: bool = Field(
        False, description="Also save each ControlNet image prompt's preprocessed map beside the image."
    )
    background_writes: bool = Field(
        True, description="Encode and write each image on a background thread while the next ones render."
    )


class ControlNetSettings(_Section):
    canny: str = Field("controlnet-canny-sdxl-1.0", description="ControlNet for pyracanny image prompts.")
    cpds: str = Field("", description="ControlNet for cpds image prompts; empty: none configured.")
    depth: str = Field("controlnet-depth-sdxl-1.0", description="ControlNet for depth image prompts.")
    depth_estimator: str = Field(
        "Depth-Anything-V2-Small-hf", description="transformers depth model folder, in depth_estimator/."
    )
    softness: float = Field(0.25, ge=0.0, le=1.0, description="Fooocus's ControlNet softness.")


class MetricsSettings(_Section):
    enabled: bool = Field(False, description="Serve Prometheus metrics over HTTP.")
    host: str = Field("127.0.0.1", description="Listen address; loopback only unless allow_remote.")
    port: int = Field(9464, ge=0, le=65535, description="Listen port (0: any free port, logged).")
    allow_remote: bool = Field(False, description="Allow a host other than loopback (logged as a warning).")

    @model_validator(mode="after")
    def _loopback_unless_allowed(self) -> MetricsSettings:
        if not self.enabled or self.allow_remote:
            return self
        from fooocusd.service.metrics import is_loopback

        if not is_loopback(self.host):
            raise ValueError(
                f"metrics.host {self.host!r} is reachable from other machines; "
                "set metrics.allow_remote = true to allow that, or use 127.0.0.1"
            )
        return self


class HooksSettings(_Section):
    command: str | list[str] = Field(
        "", description="Run after each job (argv list, or a string split like a shell, no shell)."
    )
    webhook_url: str = Field("", description="POST each event as JSON to this http(s) URL.")
    on: list[Literal["done", "failed", "refused"]] = Field(
        default_factory=lambda: ["done", "failed", "refused"],
        description="Which outcomes fire the hooks ('refused': a file that never became a job).",
    )
    timeout_seconds: float = Field(30.0, gt=0.0, le=3600, description="A hook running longer is killed.")
    queue_size: int = Field(1000, ge=1, le=1_000_000, description="Events waiting beyond this are dropped.")

    @field_validator("command")
    @classmethod
    def _command_splits(cls, value: str | list[str]) -> str | list[str]:
        from fooocusd.service.hooks import command_argv

        command_argv(value)  # raises ValueError with the reason
        return value

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("webhook_url must start with http:// or https://")
        return value


class LoggingSettings(_Section):
    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"] = "INFO"
    json_logs: bool = Field(False, alias="json", description="One JSON object per line (--log-json).")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        populate_by_name=True,
    )

    paths: PathsSettings = Field(default_factory=PathsSettings)
    intake: IntakeSettings = Field(default_factory=IntakeSettings)
    journal: JournalSettings = Field(default_factory=JournalSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    hooks: HooksSettings = Field(default_factory=HooksSettings)
    controlnet: ControlNetSettings = Field(default_factory=ControlNetSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # ``load_settings`` merges file, environment and CLI itself (so errors can name the
        # source of each value); the model only validates what it is given.
        return (init_settings,)


class LoadedSettings(BaseModel):
    """Settings plus provenance: for each dotted key, 'default', 'file:<path>', 'env:<VAR>' or 'cli'."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    settings: Settings
    config_file: Path | None
    sources: dict[str, str]


def find_config_file(explicit: Path | None = None, environ: dict[str, str] | None = None) -> Path | None:
    environ = dict(os.environ if environ is None else environ)
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist", hint="check the --config path")
        return explicit
    if environ.get("FOOOCUSD_CONFIG"):
        path = Path(environ["FOOOCUSD_CONFIG"]).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"config file {path} (from $FOOOCUSD_CONFIG) does not exist",
                hint="unset FOOOCUSD_CONFIG or point it at a file",
            )
        return path
    xdg = Path(environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "fooocusd" / "fooocusd.toml"
    for candidate in (xdg, SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def load_settings(
    config_file: Path | None = None,
    cli_overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> LoadedSettings:
    """Build the effective settings. Raises ``ConfigError`` naming the key, source and expectation."""
    environ = dict(os.environ if environ is None else environ)
    path = find_config_file(config_file, environ)
    file_data: dict[str, Any] = {}
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8").removeprefix("\ufeff")  # a BOM, as Notepad writes
            file_data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}", hint="fix the syntax at that line") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc

    env_data, env_names = _env_overrides(environ)
    cli_data = _nest(cli_overrides or {})

    sources: dict[str, str] = {}
    for key in _leaf_keys(file_data):
        sources[key] = f"file:{path}"
    for key in _leaf_keys(env_data):
        sources[key] = f"env:{env_names[key]}"
    for key in _leaf_keys(cli_data):
        sources[key] = "cli"

    merged = _deep_merge(_deep_merge(file_data, env_data), cli_data)
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(
            _explain_validation(exc, sources), hint="see config/fooocusd.toml for every key"
        ) from exc
    for key in _leaf_keys(settings.model_dump(by_alias=True)):
        sources.setdefault(key, "default")
    return LoadedSettings(settings=settings, config_file=path, sources=sources)


def _env_overrides(environ: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    data: dict[str, Any] = {}
    names: dict[str, str] = {}
    sections = set(Settings.model_fields)
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        looks_like_setting = len(parts) > 1 or any(parts[0].startswith(f"{s}_") for s in sections)
        if not looks_like_setting:
            continue  # FOOOCUSD_CONFIG, the set-up scripts' FOOOCUSD_VENV, test hooks...
        if parts[0] not in sections or len(parts) != 2:
            raise ConfigError(
                f"unknown environment variable {name}",
                hint="use FOOOCUSD_<SECTION>__<KEY>, e.g. FOOOCUSD_INTAKE__SETTLE_SECONDS=5",
            )
        data.setdefault(parts[0], {})[parts[1]] = _env_value(value)
        names[".".join(parts)] = name
    return data, names


def _env_value(raw: str) -> Any:
    # JSON-ish lists are allowed for list settings; everything else pydantic coerces from str.
    text = raw.strip()
    if text.startswith("["):
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            return raw
    return raw


def _explain_validation(exc: ValidationError, sources: dict[str, str]) -> str:
    lines = ["invalid configuration:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        where = describe_origin(_origin(key, sources))
        if error["type"] == "extra_forbidden":
            section = str(error["loc"][0]) if len(error["loc"]) > 1 else ""
            name = str(error["loc"][-1])
            known = _known_keys(section)
            advice = _misplaced_key_advice(section, name) or suggest(name, known, limit=1)
            known_text = ", ".join(known)
            lines.append(f"  - unknown key '{key}' (from {where}){advice}; known keys here: {known_text}")
        else:
            lines.append(f"  - '{key}' = {error.get('input')!r} (from {where}): {error['msg']}")
    return "\n".join(lines)


def _misplaced_key_advice(section: str, name: str) -> str:
    """Why a job or preset key is not a ``[generation]`` default, and where it goes instead."""
    if section != "generation":
        return ""
    if name == "model":
        return " — the checkpoint is set by engine.model (under [engine]); a preset or a job may name another"
    if name in PRESET_ONLY_KEYS:
        return (
            f" — '{name}' cannot be a [generation] default: set it in a preset (NAME.toml in the"
            " paths.presets folder) and name that preset in generation.preset, or set it in each job file"
        )
    if name in JOB_ONLY_KEYS:
        return f" — '{name}' belongs in each job file, not in the configuration"
    return ""


def describe_origin(origin: str) -> str:
    """``file:/etc/x.toml`` → ``file /etc/x.toml``, ``env:NAME`` → ``environment variable NAME``,
    ``cli`` → ``the command line``."""
    if origin == "cli":
        return "the command line"
    return origin.replace("file:", "file ", 1).replace("env:", "environment variable ", 1)


def _origin(key: str, sources: dict[str, str]) -> str:
    """Where ``key`` was set; for a whole unknown section, where its first key was set."""
    if key in sources:
        return sources[key]
    return next((origin for name, origin in sources.items() if name.startswith(f"{key}.")), "default")


def _known_keys(section: str) -> list[str]:
    if section and section in Settings.model_fields:
        annotation = Settings.model_fields[section].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [f.alias or name for name, f in annotation.model_fields.items()]
    return list(Settings.model_fields)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        nested.setdefault(section, {})[key] = value
    return nested


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _leaf_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            keys.extend(_leaf_keys(value, f"{dotted}."))
        else:
            keys.append(dotted)
    return keys


def flatten(settings: Settings) -> dict[str, Any]:
    """Dotted key → value, for ``config show``."""
    out: dict[str, Any] = {}
    for section, values in settings.model_dump(by_alias=True, mode="json").items():
        for key, value in values.items():
            out[f"{section}.{key}"] = value
    return out


def _expand(path: Path) -> Path:
    return Path(os.path.expandvars(str(path))).expanduser().absolute()


def _default_state_dir() -> Path:
    # systemd's StateDirectory= sets $STATE_DIRECTORY (e.g. /var/lib/fooocusd).
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fooocusd"
