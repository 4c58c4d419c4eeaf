"""Prometheus metrics: scraped over HTTP from a running daemon with the tiny-random model."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from fooocusd.errors import ConfigError
from fooocusd.service.extras import DaemonExtras
from fooocusd.service.metrics import is_loopback
from fooocusd.service.pause import pause_queue
from fooocusd.settings import Settings, load_settings
from tests.daemon_harness import RunningDaemon, Sandbox, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode("utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _metrics_port(running: RunningDaemon) -> int:
    def listening() -> bool:
        extras = running.daemon.extras
        return extras is not None and extras.server is not None and extras.server.port > 0

    wait_for(listening, timeout=60, what="the metrics endpoint")
    extras = running.daemon.extras
    assert extras is not None and extras.server is not None
    return extras.server.port


def test_scrape_after_jobs_counts_jobs_images_steps_and_waits(sandbox: Sandbox) -> None:
    sandbox.write_config("\n[metrics]\nenabled = true\nport = 0\n")
    sandbox.drop("two.txt", "two cats\nseed: 3\nsteps: 3\nimages: 2\n")
    sandbox.drop("bad.toml", 'prompt = "x"\nmodel = "missing.safetensors"\n')
    sandbox.drop("typo.toml", 'prompt = "x"\nimagse = 2\n')  # refused at intake: never a job

    with RunningDaemon(sandbox.settings()) as running:
        port = _metrics_port(running)
        finished = ("fooocusd_inputs", (("state", "finished"),))
        refused = ("fooocusd_refused_files", (("state", "in_failed"),))
        wait_for(
            lambda: _scrape(port).get(finished) == 2 and _scrape(port).get(refused) == 1,
            what="both inputs to finish and the typo to be refused",
        )
        samples = _scrape(port)
        pause_queue(sandbox.state, None)
        wait_for(lambda: _scrape(port).get(("fooocusd_paused", ())) == 1, what="the pause to show")
        wait_for(
            lambda: _scrape(port).get(("fooocusd_model_loaded", ())) == 0,
            what="the model unloaded for the pause",
        )

    assert samples[("fooocusd_up", ())] == 1
    assert samples[("fooocusd_disk_free_bytes", (("folder", "outbox"),))] > 0
    assert samples[("fooocusd_disk_free_bytes", (("folder", "state"),))] > 0
    assert samples[("fooocusd_paused", ())] == 0
    assert samples[("fooocusd_ready", ())] == 1
    assert samples[("fooocusd_model_loaded", ())] == 1
    start = {
        labels[0][1]: value for (name, labels), value in samples.items() if name == "fooocusd_start_seconds"
    }
    assert samples[("fooocusd_start_total_seconds", ())] >= start["model"] > 0
    assert "interpreter and imports" in start and "total" not in start
    assert samples[("fooocusd_jobs", (("state", "done"),))] == 1
    assert samples[("fooocusd_jobs", (("state", "failed"),))] == 1
    assert samples[("fooocusd_jobs", (("state", "queued"),))] == 0
    assert samples[("fooocusd_inputs", (("state", "finished"),))] == 2
    assert samples[("fooocusd_refused_files", (("state", "returned"),))] == 0
    assert samples[("fooocusd_images_generated_total", ())] == 2
    assert samples[("fooocusd_image_generation_seconds_count", ())] == 2
    assert samples[("fooocusd_image_generation_seconds_sum", ())] > 0
    # Steps 2 and 3 of each image are timed; the first step includes prompt encoding.
    assert samples[("fooocusd_step_seconds_count", ())] == 4
    assert samples[("fooocusd_queue_wait_seconds_count", ())] == 2  # both jobs were started
    assert samples[("fooocusd_hook_events_dropped_total", ())] == 0
    # Counters with labels are there at 0 before anything happens, so rate() and alerts see them.
    for kind in ("command", "timeout", "webhook", "internal"):
        assert samples[("fooocusd_hook_failures_total", (("kind", kind),))] == 0
    for result in ("applied", "refused"):
        assert samples[("fooocusd_config_reloads_total", (("result", result),))] == 0
    gpu = [name for name, _ in samples if name.startswith("fooocusd_gpu_memory")]
    assert bool(gpu) == torch.cuda.is_available()


def test_metrics_are_off_by_default_and_nothing_listens(tmp_path: Path) -> None:
    extras = DaemonExtras(Settings(), tmp_path / "journal.sqlite3")
    assert extras.server is None and extras.metrics is None


def test_a_host_other_than_loopback_is_refused_unless_allowed(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[metrics]\nenabled = true\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert "metrics.allow_remote" in str(caught.value)

    config.write_text('[metrics]\nenabled = true\nhost = "0.0.0.0"\nallow_remote = true\n')
    assert load_settings(config, environ={}).settings.metrics.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False), ("192.168.1.5", False)],
)
def test_loopback_hosts_are_recognised(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_taken_port_stops_the_start_with_a_clear_reason(sandbox: Sandbox) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sandbox.write_config(f"\n[metrics]\nenabled = true\nport = {taken.getsockname()[1]}\n")
        with pytest.raises(ConfigError) as caught:
            sandbox.drain()
    assert caught.value.where == "metrics.port" and "cannot serve metrics" in caught.value.message
