"""``FamilyRouter``: one engine for every model family, with one model resident at a time.

Each job's model (or ``engine.model`` when the job names none) is resolved and classified from its
tensor names (``families.py``): SD 1.x and SD 2.x models are rendered by an ``SD1xEngine``,
everything else by the SDXL engine the router itself is (so SDXL keeps every feature, and
non-checkpoints such as a LoRA named as the model are refused there with the reason). When a job
needs the other family, the resident model is dropped and its memory freed *before* the next
one loads.

Batching (``batching.py``): SDXL requests get the SDXL engine's batch keys (family included);
SD 1.x/2.x requests get None and render one at a time, so ``batch_limit`` is the SDXL engine's.

A model that cannot be loaded is ``ModelNotFound`` (a configuration error) when it is the
configured ``engine.model``, and ``InvalidInput`` (the job fails, the daemon goes on) when only a
job names it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fooocusd.engine.base import GeneratedImage, GenerationRequest, ProgressCallback, StopCheck
from fooocusd.engine.batching import BatchKey, render_alone_reason, require_shared_key
from fooocusd.engine.families import FamilyInfo, detect_family
from fooocusd.engine.models import ModelLocation, job_model_errors
from fooocusd.engine.request_checks import validate_request
from fooocusd.engine.sd1x import SD1X_CONFIG_DIRS, SD1X_FAMILIES, SD1xEngine
from fooocusd.engine.sdxl import SDXLEngine
from fooocusd.errors import FooocusdError

_SDXL = FamilyInfo("sdxl", "epsilon", 1024, reason="built-in tiny-random")


class FamilyRouter(SDXLEngine):
    """The SDXL engine, handing SD 1.x/2.x jobs to an ``SD1xEngine`` (loaded in its place)."""

    def __init__(self, location: ModelLocation, **options: Any) -> None:
        """The same arguments as ``SDXLEngine`` (models_dir, hash_cache, device, dtype ...)."""
        super().__init__(location, **options)
        self._sd1x: SD1xEngine | None = None
        self._families: dict[ModelLocation, FamilyInfo] = {}

    # -- Engine protocol -----------------------------------------------------------------------

    def load(self) -> None:
        """Load ``engine.model``, whichever family it is."""
        info = self._family_of(self._default_location)
        if info.family in SD1X_FAMILIES:
            self._activate_sd1x(self._default_location, info).load()
        else:
            super().load()

    def generate(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> GeneratedImage:
        return self._generate_one(request, progress, should_stop, defer_decode=False)

    def _generate_one(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None,
        should_stop: StopCheck | None,
        *,
        defer_decode: bool,
    ) -> GeneratedImage:
        validate_request(request)
        target = self._target_location(request.model)
        with job_model_errors(configured=target == self._default_location):
            info = self._family_of(target)
            if info.family in SD1X_FAMILIES:
                return self._activate_sd1x(target, info).generate(request, progress, should_stop)
            self._drop_sd1x()
        if defer_decode:
            return super().generate_batch([request], progress, should_stop, defer_decode=True)[0]
        return super().generate(request, progress, should_stop)

    def warm_up(
        self, request_for: Callable[[], GenerationRequest | None], should_stop: StopCheck | None = None
    ) -> float | None:
        """The SDXL engine's warm-up; an SD 1.x/2.x model resident has nothing compiled to warm."""
        return None if self._sd1x is not None else super().warm_up(request_for, should_stop)

    def batch_key(self, request: GenerationRequest) -> BatchKey | None:
        """The SDXL engine's key (with the family) for an SDXL model; None for SD 1.x/2.x (rendered alone)."""
        if render_alone_reason(request) is not None:
            return None
        try:
            target = self._target_location(request.model)
            family = self._family_of(target).family
        except (FooocusdError, OSError):
            return None  # generate reports the unusable model for this request alone
        if family in SD1X_FAMILIES:
            return None
        return self._key_for(request, target, family=family)

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
        *,
        defer_decode: bool = False,
    ) -> list[GeneratedImage]:
        requests = list(requests)
        if len(requests) <= 1:
            return [
                self._generate_one(request, progress, should_stop, defer_decode=defer_decode)
                for request in requests
            ]
        require_shared_key(requests, [self.batch_key(request) for request in requests])
        self._drop_sd1x()  # equal keys: every request is an SDXL one
        return self._render_batch(requests, progress, should_stop, defer_decode)

    def describe(self) -> dict[str, Any]:
        if self._sd1x is not None:
            return self._sd1x.describe()
        facts = super().describe()
        facts["model_family"] = "sdxl"
        return facts

    @property
    def active_family(self) -> str:
        """``sd15``/``sd2`` while an SD 1.x/2.x model is resident, else ``sdxl``."""
        return self._sd1x.family.family if self._sd1x is not None else "sdxl"

    @property
    def is_loaded(self) -> bool:
        return self._sd1x is not None or super().is_loaded

    def unload(self) -> None:
        """Drop whichever model is resident, of either family, and free its memory; ``load`` or the
        next job loads one again."""
        self._drop_sd1x()
        super().unload()

    # -- switching -----------------------------------------------------------------------------

    def _activate_sd1x(self, location: ModelLocation, info: FamilyInfo) -> SD1xEngine:
        if self._sd1x is not None and self._sd1x.location == location:
            return self._sd1x
        self._drop_sd1x()
        super().unload()  # the SDXL pipeline goes first: one model resident at a time
        self._sd1x = SD1xEngine(
            location,
            info,
            model_dirs=self._model_dirs,
            hash_cache=self._hash_cache,
            device=self._device,
            dtype=self._dtype,
            attention=self._attention,
            config_dir=SD1X_CONFIG_DIRS[info.family],
            allow_unsafe_pickle=self._allow_unsafe_pickle,
        )
        return self._sd1x

    def _drop_sd1x(self) -> None:
        if self._sd1x is not None:
            self._sd1x.unload()
            self._sd1x = None

    def _family_of(self, location: ModelLocation) -> FamilyInfo:
        if location.is_tiny or location.path is None:
            return _SDXL
        known = self._families.get(location)
        if known is None:
            # A pickle reaching this point passed resolve_model's gate (engine.allow_unsafe_pickle).
            known = detect_family(location.path, allow_pickle=True)
            self._families[location] = known
        return known
