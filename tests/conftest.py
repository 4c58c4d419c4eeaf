from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fooocusd.journal import Journal
    from tests.daemon_harness import Sandbox
    from tests.test_journal_helpers import FakeClock

# Tests never reach a model hub, and never see the developer's own configuration.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
for _name in [name for name in os.environ if name.startswith("FOOOCUSD_")]:
    del os.environ[_name]
# Without an NVIDIA GPU, Triton kernels (triton_group_norm.py) run in Triton's CPU interpreter. It
# must be chosen before anything imports triton (``import torch`` does), so here, not in a fixture.
if not Path("/dev/nvidiactl").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    from tests.daemon_harness import Sandbox

    box = Sandbox(tmp_path)
    box.write_config()
    return box


@pytest.fixture
def clock() -> FakeClock:
    """The journal tests' clock: it moves only when told to."""
    from tests.test_journal_helpers import FakeClock

    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite3"


@pytest.fixture
def journal(db_path: Path, clock: FakeClock) -> Iterator[Journal]:
    """A fresh journal on ``clock``, owned by ``gpu0``."""
    from fooocusd.journal import Journal

    with Journal.open(db_path, "gpu0", clock) as opened:
        yield opened


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """The messages logged at INFO and above while the test runs."""
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{message}")
    yield lines
    logger.remove(sink)


@pytest.fixture
def triton_device() -> object:
    """Where our Triton kernels run in tests: a CUDA GPU, or CPU tensors through Triton's
    interpreter, which this file chooses where there is none (slow: small sizes only)."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets TRITON_INTERPRET without a GPU"
    return torch.device("cpu")
