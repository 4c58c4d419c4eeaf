"""No host↔device synchronisation inside the denoising loop, checked without a GPU.

The loop runs under ``HostSyncAudit`` (a virtual CUDA device: values computed on the CPU, every read
back or blocking copy recorded; see fooocusd/engine/sync_audit.py) with the real diffusers schedulers
and a stand-in noise predictor, then again as a plain CPU run: the latents must match bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import pytest
import torch
import torchsde._brownian.brownian_interval as brownian_interval

from fooocusd.engine.conditioning import Conditioning, PromptEmbeddings, adm_time_ids
from fooocusd.engine.denoise import GuidanceSettings, NoisePredictor, StepBlend, denoise, initial_latents
from fooocusd.engine.inpaint import HoldKnownRegion
from fooocusd.engine.models import SDXL_CONFIG_DIR
from fooocusd.engine.refiner import LoadedRefiner, RefinerTimeIds, switching_noise_predictor
from fooocusd.engine.samplers import SAMPLERS, build_scheduler
from fooocusd.engine.step_noise import noise_pinned_step
from fooocusd.engine.sync_audit import HostSyncAudit, expected_host_read
from fooocusd.engine.tiny import TEXT_WIDTH_1, TEXT_WIDTH_2, build_tiny_refiner_unet
from fooocusd.errors import InvalidInput

STEPS = 5
LATENT = (1, 4, 8, 8)
TOKEN_WIDTH = TEXT_WIDTH_1 + TEXT_WIDTH_2  # the tiny SDXL's [CLIP-L | CLIP-G] token width
PRE_LOOP_READ = "the scheduler's state, copied to the host once before the loop"
# Fooocus's refinements all on: sharpness, adaptive CFG below the CFG, emphasized ADM early on.
REFINED = GuidanceSettings(cfg=7.0, sharpness=2.0, adaptive_cfg=5.0, adm_end=0.3)

# UniPC builds its solver coefficients on the device each step from host scalars
# (``self.sigmas[i].to(device)``) and solves the corrector's small linear system there with
# ``torch.linalg.solve``, which reads an error flag back. Avoiding both means rewriting diffusers'
# UniP/UniC updates, so UniPC is the one sampler that still synchronises every step.
SYNCING_SAMPLERS = {"uni_pc": "scheduling_unipc_multistep.py", "uni_pc_bh2": "scheduling_unipc_multistep.py"}


@pytest.fixture(scope="module")
def base_config() -> dict[str, Any]:
    return json.loads((SDXL_CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def device_side_brownian_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchsde draws Brownian-tree noise on a generator of the sample's device; without a GPU that
    generator cannot exist, so the audit's CUDA draws use a CPU generator with the same seed."""
    original = brownian_interval._randn

    def randn(size: Any, dtype: torch.dtype, device: Any, seed: int) -> torch.Tensor:
        if torch.device(device).type == "cpu":
            return original(size, dtype, device, seed)
        generator = torch.Generator("cpu").manual_seed(int(seed))
        return torch.randn(size, dtype=dtype, device=device, generator=generator)

    monkeypatch.setattr(brownian_interval, "_randn", randn)


def stand_in_predictor(
    model_input: torch.Tensor,
    timestep: torch.Tensor,
    tokens: torch.Tensor,
    pooled: torch.Tensor,
    ids: torch.Tensor,
) -> torch.Tensor:
    """A pure function of the UNet inputs, shaped like a noise prediction."""
    return 0.2 * model_input + 0.01 * tokens.mean() + 0.001 * pooled.mean() + 1e-5 * ids.mean()


def _conditioning(device: str) -> Conditioning:
    def embeddings(seed: int) -> PromptEmbeddings:
        generator = torch.Generator().manual_seed(seed)
        tokens = torch.randn(1, 77, TOKEN_WIDTH, generator=generator)
        pooled = torch.randn(1, TEXT_WIDTH_2, generator=generator)
        return PromptEmbeddings(tokens.to(device), pooled.to(device))

    ids = adm_time_ids(64, 64, positive_scale=1.5, negative_scale=0.8, dtype=torch.float32, device=device)
    return Conditioning(positive=embeddings(1), negative=embeddings(2), time_ids=ids)


def _run(
    sampler: str,
    schedule: str,
    base_config: dict[str, Any],
    audit: HostSyncAudit | None,
    *,
    settings: GuidanceSettings = REFINED,
    predictor: NoisePredictor = stand_in_predictor,
    blend: Callable[[Any, str], StepBlend] | None = None,
) -> torch.Tensor:
    device = "cuda" if audit is not None else "cpu"
    with audit if audit is not None else nullcontext():
        with audit.phase("setup") if audit is not None else nullcontext():
            scheduler = build_scheduler(sampler, schedule, base_config).scheduler
            conditioning = _conditioning(device)
            generator = torch.Generator().manual_seed(11)
            latents = initial_latents(
                scheduler,
                STEPS,
                LATENT,
                generator=generator,
                device=torch.device(device),
                dtype=torch.float32,
            )
            hold = blend(scheduler, device) if blend is not None else None
        with audit.phase("loop") if audit is not None else nullcontext():
            result = denoise(
                predictor,
                scheduler,
                latents,
                conditioning,
                settings,
                generator=generator,
                progress=audit.step_done if audit is not None else None,
                blend=hold,
            )
    return result


def _representative_schedule(sampler: str, base_config: dict[str, Any]) -> str:
    """karras for the k-diffusion style samplers, sgm_uniform for the consistency ones."""
    for schedule in ("karras", "sgm_uniform", "normal"):
        try:
            build_scheduler(sampler, schedule, base_config)
        except InvalidInput:
            continue
        return schedule
    raise AssertionError(f"{sampler} builds on no schedule")


def _describe(audit: HostSyncAudit) -> str:
    return "\n".join(str(event) for event in audit.findings())


# --- the detector ---------------------------------------------------------------------------------


def test_detector_records_reads_masks_and_blocking_copies_of_device_tensors() -> None:
    with HostSyncAudit() as audit:
        x = torch.arange(4.0).to("cuda")
        assert x.device == torch.device("cuda") and x.is_cuda
        x[0].item()
        bool(x[1] > 0)
        (x > 1).nonzero()
        x.cpu()
        torch.tensor([1.0, 2.0], device="cuda")
    kinds = [event.kind for event in audit.findings()]
    assert kinds == [
        "blocking host→device copy",  # .to("cuda") from pageable memory
        "device→host read",  # item
        "device→host read",  # bool
        "data-dependent shape",  # nonzero
        "device→host read",  # cpu()
        "blocking host→device copy",  # torch.tensor(data, device=cuda)
    ]
    assert all("test_engine_host_syncs.py" in event.where for event in audit.findings())


def test_host_work_pinned_copies_and_declared_reads_are_not_findings() -> None:
    with HostSyncAudit() as audit:
        host = torch.linspace(0, 1, 5)
        float(host[2]), host.tolist(), host.nonzero()  # all on the host: free
        on_device = host.pin_memory().to("cuda", non_blocking=True)
        scaled = on_device * host[1]  # a 0-dim host scalar in a device op is fine
        with expected_host_read("one copy of the schedule"):
            scaled.tolist()
    assert audit.findings() == []
    assert [event.expected for event in audit.expected()] == ["one copy of the schedule"]


def test_a_host_tensor_with_elements_in_a_device_operation_is_reported_as_a_mismatch() -> None:
    with HostSyncAudit() as audit:
        torch.zeros(3, device="cuda") + torch.ones(3)
    assert [event.kind for event in audit.findings()] == ["device mismatch"]


# --- the loop -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("device_side_brownian_noise")
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_denoise_loop_makes_no_host_sync_per_step_and_keeps_its_results(
    sampler: str, base_config: dict[str, Any]
) -> None:
    schedule = _representative_schedule(sampler, base_config)
    audit = HostSyncAudit()
    audited = _run(sampler, schedule, base_config, audit)
    plain = _run(sampler, schedule, base_config, None)

    assert torch.equal(audited, plain), "the audited run must compute exactly what a plain CPU run computes"
    before_loop = audit.expected("loop")
    assert before_loop, "the schedule's one copy to the host is expected"
    assert all(event.expected == PRE_LOOP_READ and event.step == 0 for event in before_loop)
    findings = audit.findings("loop")
    if sampler in SYNCING_SAMPLERS:
        assert findings, f"{sampler} is listed as syncing; if diffusers fixed it, drop it from the list"
        assert {event.kind for event in findings} <= {"blocking host→device copy", "error check"}
        assert all(SYNCING_SAMPLERS[sampler] in event.where for event in findings), _describe(audit)
    else:
        assert findings == [], f"{sampler} + {schedule} synchronises in the loop:\n{_describe(audit)}"


def test_real_ddim_and_ddpm_on_their_own_timesteps_make_no_host_sync(base_config: dict[str, Any]) -> None:
    for sampler in ("ddim", "ddpm"):
        audit = HostSyncAudit()
        audited = _run(sampler, "normal", base_config, audit)
        assert torch.equal(audited, _run(sampler, "normal", base_config, None))
        assert audit.findings("loop") == [], _describe(audit)


def test_plain_cfg_and_cfg_one_paths_make_no_host_sync(base_config: dict[str, Any]) -> None:
    for settings in (GuidanceSettings(cfg=4.0), GuidanceSettings(cfg=1.0)):
        audit = HostSyncAudit()
        _run("dpmpp_2m_sde_gpu", "karras", base_config, audit, settings=settings)
        assert audit.findings("loop") == [], _describe(audit)


def test_refiner_switch_mid_run_makes_no_host_sync(base_config: dict[str, Any]) -> None:
    refiner_unet = build_tiny_refiner_unet().eval()
    loaded = LoadedRefiner("tiny-refiner", None, "0" * 64, refiner_unet)
    assert loaded.attends_to_clip_g_only

    def switching(audit: HostSyncAudit | None) -> NoisePredictor:
        time_ids = RefinerTimeIds.for_size(64, 64, dtype=torch.float32, device=torch.device("cpu"))
        if audit is not None:
            audit.place(refiner_unet)
            with audit:
                time_ids = RefinerTimeIds(time_ids.negative.to("cuda"), time_ids.positive.to("cuda"))
        # The base is the stand-in; from model call 2 on, the real tiny refiner UNet runs.
        return switching_noise_predictor(stand_in_predictor, loaded, 2, time_ids)

    with torch.inference_mode():
        audit = HostSyncAudit()
        audited = _run("dpmpp_2m_sde_gpu", "karras", base_config, audit, predictor=switching(audit))
        plain = _run("dpmpp_2m_sde_gpu", "karras", base_config, None, predictor=switching(None))
    assert torch.equal(audited, plain)
    assert audit.findings("loop") == [], _describe(audit)


@pytest.mark.parametrize(("sampler", "schedule"), [("dpmpp_2m_sde_gpu", "karras"), ("ddpm", "normal")])
def test_inpaint_hold_of_the_known_region_makes_no_host_sync(
    sampler: str, schedule: str, base_config: dict[str, Any]
) -> None:
    def hold(scheduler: Any, device: str) -> StepBlend:
        generator = torch.Generator().manual_seed(5)
        known = torch.randn(LATENT, generator=generator).to(device)
        repaint = torch.zeros(1, 1, LATENT[2], LATENT[3])
        repaint[..., 2:6, 2:6] = 1.0
        return HoldKnownRegion(scheduler, known, repaint.to(device), torch.Generator().manual_seed(6))

    audit = HostSyncAudit()
    audited = _run(sampler, schedule, base_config, audit, blend=hold)
    plain = _run(sampler, schedule, base_config, None, blend=hold)
    assert torch.equal(audited, plain)
    assert audit.findings("loop") == [], _describe(audit)


# --- pinned step noise ----------------------------------------------------------------------------


def test_pinned_step_noise_draws_the_same_numbers_from_the_same_generator(
    base_config: dict[str, Any],
) -> None:
    scheduler = build_scheduler("euler_ancestral", "normal", base_config).scheduler
    scheduler.set_timesteps(STEPS)
    sample = torch.randn(LATENT, generator=torch.Generator().manual_seed(3))
    output = 0.5 * sample

    def one_step(step: Any) -> torch.Tensor:
        scheduler.set_timesteps(STEPS)
        scheduler.set_begin_index(0)
        return step(output, scheduler.timesteps[0], sample, generator=torch.Generator().manual_seed(5))[0]

    assert torch.equal(one_step(noise_pinned_step(scheduler)), one_step(scheduler.step))
    with HostSyncAudit() as audit:
        audit_sample, audit_output = sample.to("cuda"), output.to("cuda")
        with audit.phase("step"):
            scheduler.set_timesteps(STEPS)
            scheduler.set_begin_index(0)
            step = noise_pinned_step(scheduler)
            step(audit_output, scheduler.timesteps[0].cpu(), audit_sample, generator=torch.Generator())
    assert audit.findings("step") == [], _describe(audit)
