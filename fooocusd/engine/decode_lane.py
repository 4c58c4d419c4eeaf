"""VAE decodes that run after the render has returned, on whichever thread first needs the picture.

With ``engine.overlap_decode`` on, the SDXL engine hands a text-to-image result back undecoded when
its caller asks for that (``generate_batch(..., defer_decode=True)``, which only the worker does):
the image is a ``DeferredImage`` holding the latents and the decode to run. The worker's publisher
thread runs it (``GeneratedImage.finished()``) while the render thread goes on with the next batch,
so the decode overlaps the next denoising instead of following it.

The rules that keep the shared VAE safe:

* decodes run one at a time, under the lane's lock, whichever thread runs them;
* each decode holds the VAE and image processor it was handed out with, so a VAE override chosen
  by the next job does not change it;
* before the render thread touches a VAE itself (an immediate decode, an image task's encode or
  tiling, a model switch, a CUDA graph capture) it calls ``drain()``, which runs, or waits for,
  every decode handed out so far.

A decode's error stays with its image and is raised to whoever asks for the picture (the publisher,
which charges it to the image's job), never to the render thread's next job.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable

from PIL import Image


class DeferredImage:
    """One image's pending decode; it runs once, on the first thread that asks for the picture."""

    def __init__(
        self, decode: Callable[[], Image.Image], lock: threading.Lock, size: tuple[int, int]
    ) -> None:
        self.size = size
        """(width, height) the decode will produce."""
        self.seconds = 0.0
        """How long the decode took, once it ran."""
        self._decode: Callable[[], Image.Image] | None = decode
        self._lock = lock
        self._image: Image.Image | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._decode is None

    def result(self) -> Image.Image:
        """The decoded picture (running the decode now if no thread has); raises the decode's error."""
        with self._lock:
            decode = self._decode
            if decode is not None:
                mark = time.perf_counter()
                try:
                    self._image = decode()
                except Exception as exc:
                    self._error = exc
                finally:
                    if self._image is None and self._error is None:
                        self._error = RuntimeError("the decode was interrupted")
                    self.seconds = time.perf_counter() - mark
                    self._decode = None  # lets go of the latents and the VAE
        if self._error is not None:
            raise self._error
        assert self._image is not None
        return self._image

    def settle_quietly(self) -> None:
        """Run or wait for the decode; its error is kept for whoever asks for the picture."""
        with contextlib.suppress(Exception):
            self.result()


class DecodeLane:
    """The decodes one engine has handed out and not yet run. Used from the render thread only;
    the decodes themselves may run on any thread. It holds them weakly: a result its caller dropped
    (a cancelled job's image) is never decoded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[weakref.ref[DeferredImage]] = []

    @property
    def pending(self) -> int:
        """Decodes handed out, still wanted, that have not run yet."""
        return len(self._still_pending())

    def defer(self, decode: Callable[[], Image.Image], size: tuple[int, int]) -> DeferredImage:
        """Hand out ``decode`` to run later; ``size`` is the (width, height) it will produce."""
        deferred = DeferredImage(decode, self._lock, size)
        self._pending = [weakref.ref(each) for each in self._still_pending()]
        self._pending.append(weakref.ref(deferred))
        return deferred

    def drain(self) -> None:
        """Run, or wait for, every decode handed out so far, oldest first (the VAE is then free)."""
        pending, self._pending = self._still_pending(), []
        for each in pending:
            each.settle_quietly()

    def _still_pending(self) -> list[DeferredImage]:
        alive = (ref() for ref in self._pending)
        return [each for each in alive if each is not None and not each.done]
