"""Build the engine the settings ask for."""

from __future__ import annotations

from pathlib import Path

from fooocusd.engine.acceleration import AccelerationOptions
from fooocusd.engine.base import Engine
from fooocusd.engine.controlnet.models import ControlNetConfig
from fooocusd.engine.models import HASH_CACHE_NAME, ModelRoots, resolve_model
from fooocusd.engine.router import FamilyRouter
from fooocusd.settings import ControlNetSettings, EngineSettings


def create_engine(
    engine_settings: EngineSettings,
    models_dir: ModelRoots,
    cache_dir: Path,
    controlnet: ControlNetSettings | None = None,
) -> Engine:
    """An unloaded engine for ``engine.model``; call ``load()`` before the first job.

    It renders SDXL, SD 1.x and SD 2.x models, switching per job (``router.py``).

    Raises ``ModelNotFound`` (a ``ConfigError``) when the model cannot be found, and ``ConfigError``
    for an unusable device or dtype, so the daemon refuses to start with a reason and a hint.
    ``cache_dir`` holds the model hash cache (``model_hashes.json``). ``models_dir`` is ``paths.models``
    resolved: one folder or the tuple of roots, searched in order.
    """
    allow_pickle = engine_settings.allow_unsafe_pickle
    location = resolve_model(engine_settings.model, models_dir, allow_pickle=allow_pickle)
    return FamilyRouter(
        location,
        models_dir=models_dir,
        hash_cache=cache_dir / HASH_CACHE_NAME,
        device=engine_settings.device,
        dtype=engine_settings.dtype,
        attention=engine_settings.attention,
        acceleration=AccelerationOptions.from_settings(engine_settings, cache_dir),
        configured_model=engine_settings.model,
        allow_unsafe_pickle=allow_pickle,
        controlnet=ControlNetConfig.from_settings(controlnet or ControlNetSettings()),
        batch_size=engine_settings.batch_size,
    )
