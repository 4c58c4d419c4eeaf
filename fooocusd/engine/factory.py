"""Build the engine the settings ask for."""

from __future__ import annotations

from pathlib import Path

from fooocusd.engine.base import Engine
from fooocusd.engine.models import resolve_model
from fooocusd.engine.sdxl import SDXLEngine
from fooocusd.settings import EngineSettings

HASH_CACHE_NAME = "model_hashes.json"


def create_engine(engine_settings: EngineSettings, models_dir: Path, cache_dir: Path) -> Engine:
    """An unloaded engine for ``engine.model``; call ``load()`` before the first job.

    Raises ``ModelNotFound`` (a ``ConfigError``) when the model cannot be found, and ``ConfigError``
    for an unusable device or dtype, so the daemon refuses to start with a reason and a hint.
    ``cache_dir`` holds the model hash cache (``model_hashes.json``).
    """
    location = resolve_model(engine_settings.model, models_dir)
    return SDXLEngine(
        location,
        models_dir=models_dir,
        hash_cache=cache_dir / HASH_CACHE_NAME,
        device=engine_settings.device,
        dtype=engine_settings.dtype,
        attention=engine_settings.attention,
        configured_model=engine_settings.model,
    )
