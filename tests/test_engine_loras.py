"""LoRAs on the tiny SDXL: both file layouts, weights, the adapter cache, and clear refusals."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import save_file

from fooocusd.engine.acceleration import AccelerationOptions, plan_acceleration
from fooocusd.engine.factory import create_engine
from fooocusd.engine.loras import MAX_LORAS_PER_IMAGE, LoraAdapters, lora_layout
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.models import SDXL_CONFIG_DIR
from fooocusd.engine.sdxl import SDXLEngine, _default_scheduler
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from fooocusd.errors import InvalidInput
from fooocusd.settings import EngineSettings
from tests.daemon_harness import Sandbox
from tests.engine_helpers import default_request

_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def random_lora_layers(seed: int, rank: int = 4) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Non-zero LoRA A/B matrices for the tiny UNet's attention and the first text encoder (peft names)."""
    pipeline = build_tiny_sdxl_pipeline(_default_scheduler(SDXL_CONFIG_DIR))
    generator = torch.Generator().manual_seed(seed)

    def layers(model: torch.nn.Module, targets: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(targets):
                down = torch.randn(rank, module.in_features, generator=generator)
                up = torch.randn(module.out_features, rank, generator=generator)
                out[f"{name}.lora_A.weight"], out[f"{name}.lora_B.weight"] = down * 0.3, up * 0.3
        return out

    return layers(pipeline.unet, _UNET_TARGETS), layers(pipeline.text_encoder, _TEXT_TARGETS)


def write_diffusers_lora(folder: Path, name: str, seed: int) -> Path:
    """A LoRA saved the way diffusers/peft trainers save it (``unet.*.lora_A.weight``)."""
    unet, text = random_lora_layers(seed)
    scratch = folder / f".{name}-save"
    StableDiffusionXLPipeline.save_lora_weights(
        scratch, unet_lora_layers=unet, text_encoder_lora_layers=text, weight_name=f"{name}.safetensors"
    )
    target = folder / f"{name}.safetensors"
    (scratch / f"{name}.safetensors").replace(target)
    scratch.rmdir()
    return target


def write_kohya_lora(folder: Path, name: str, seed: int) -> Path:
    """The same layers as ``write_diffusers_lora(seed)`` under kohya names (alpha = rank: scale 1)."""
    unet, text = random_lora_layers(seed)
    state: dict[str, torch.Tensor] = {}
    for prefix, layers, module_prefix in (("lora_unet", unet, ""), ("lora_te1", text, "text_model.")):
        for key, value in layers.items():
            module, part = key.rsplit(".lora_", 1)
            stem = f"{prefix}_{(module_prefix + module).replace('.', '_')}"
            state[f"{stem}.{'lora_down' if part.startswith('A') else 'lora_up'}.weight"] = value
            state[f"{stem}.alpha"] = torch.tensor(4.0)  # = rank
    path = folder / f"{name}.safetensors"
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora-models") / "models"
    loras = ModelDirs.of(root).folders("loras")[0]
    loras.mkdir(parents=True)
    write_diffusers_lora(loras, "ink", seed=1)
    write_kohya_lora(loras, "ink_kohya", seed=1)
    write_diffusers_lora(loras, "pastel", seed=2)
    (loras / "styles").mkdir()
    write_diffusers_lora(loras / "styles", "nested", seed=3)
    (loras / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(2)}, str(loras / "checkpoint.safetensors"))
    save_file({"encoder.conv_in.weight": torch.zeros(2)}, str(loras / "not_lora.safetensors"))
    (loras / "old.ckpt").write_bytes(b"pickle")
    return root


@pytest.fixture(scope="module")
def engine(models: Path) -> SDXLEngine:
    built = create_engine(EngineSettings(model="tiny-random", device="cpu"), models, models.parent / "cache")
    assert isinstance(built, SDXLEngine)
    built.load()
    return built


def _pixels(engine: SDXLEngine, **overrides: object) -> np.ndarray:
    return np.asarray(engine.generate(default_request(steps=3, **overrides)).image)


def test_a_lora_changes_the_image_and_weight_zero_equals_no_lora(engine: SDXLEngine) -> None:
    plain = _pixels(engine)
    with_lora = _pixels(engine, loras=(("ink", 1.0),))
    at_zero = _pixels(engine, loras=(("ink", 0.0),))
    assert not np.array_equal(plain, with_lora)
    assert np.array_equal(plain, at_zero)
    assert np.array_equal(plain, _pixels(engine))  # a job without LoRAs turns them all off again


def test_kohya_and_diffusers_layouts_of_the_same_lora_give_the_same_image(engine: SDXLEngine) -> None:
    diffusers_layout = _pixels(engine, loras=(("ink", 0.8),))
    kohya_layout = _pixels(engine, loras=(("ink_kohya", 0.8),))
    assert np.abs(diffusers_layout.astype(int) - kohya_layout.astype(int)).max() <= 1


def test_switching_loras_keeps_the_base_model_and_reuses_loaded_adapters(engine: SDXLEngine) -> None:
    pipeline = engine._pipeline
    assert pipeline is not None
    unet = pipeline.unet
    engine.generate(default_request(steps=1, loras=(("ink", 1.0),)))
    engine.generate(default_request(steps=1, loras=(("pastel", 0.5),)))
    loads = engine._components.loras.files_loaded
    first = _pixels(engine, loras=(("ink", 1.0), ("pastel", 0.5)))
    again = _pixels(engine, loras=(("ink", 1.0), ("pastel", 0.5)))
    assert engine._components.loras.files_loaded == loads  # both came from the cache
    assert engine._pipeline is pipeline and pipeline.unet is unet
    assert np.array_equal(first, again)
    assert not np.array_equal(first, _pixels(engine, loras=(("ink", 1.0),)))


def test_generated_image_reports_each_lora_with_its_hashes(engine: SDXLEngine, models: Path) -> None:
    result = engine.generate(default_request(steps=1, loras=(("styles/nested", 0.7), ("pastel", -0.5))))
    assert [(entry["name"], entry["weight"]) for entry in result.extra["loras"]] == [
        ("styles/nested", 0.7),
        ("pastel", -0.5),
    ]
    nested_file = ModelDirs.of(models).folders("loras")[0] / "styles" / "nested.safetensors"
    nested_sha = hashlib.sha256(nested_file.read_bytes()).hexdigest()
    assert result.extra["loras"][0]["sha256"] == nested_sha
    assert result.extra["loras"][0]["hash"] == nested_sha[:10]
    assert result.extra["vae"] == "default" and result.extra["refiner"] is None


def test_inline_style_name_finds_a_lora_in_a_subfolder_by_its_stem(engine: SDXLEngine) -> None:
    by_path = _pixels(engine, loras=(("styles/nested", 1.0),))
    by_stem = _pixels(engine, loras=(("nested", 1.0),))
    assert np.array_equal(by_path, by_stem)


def test_the_same_lora_twice_counts_as_one_with_the_weights_summed(engine: SDXLEngine) -> None:
    twice = engine.generate(default_request(steps=2, loras=(("ink", 0.5), ("ink.safetensors", 0.5))))
    once = engine.generate(default_request(steps=2, loras=(("ink", 1.0),)))
    assert np.array_equal(np.asarray(twice.image), np.asarray(once.image))
    assert [(entry["name"], entry["weight"]) for entry in twice.extra["loras"]] == [("ink", 1.0)]


# -- folding active LoRAs into the UNet's weights ---------------------------------------------


@contextmanager
def lora_calls(module: torch.nn.Module) -> Iterator[list[str]]:
    """Names of ``module``'s peft ``lora_A`` layers as they run (one entry per call)."""
    calls: list[str] = []
    handles = [
        layer.register_forward_hook(lambda *_, name=name: calls.append(name))
        for name, layer in module.named_modules()
        if ".lora_A." in f"{name}."
    ]
    assert handles, "no LoRA layers to watch: load the LoRAs first"
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def test_active_loras_are_folded_into_the_unet_so_its_lora_layers_never_run(engine: SDXLEngine) -> None:
    pipeline = engine._pipeline
    assert pipeline is not None
    engine.generate(default_request(steps=1, loras=(("ink", 1.0), ("pastel", 0.5))))  # loads both
    engine.generate(default_request(steps=1))
    with lora_calls(pipeline.unet) as unet_calls, lora_calls(pipeline.text_encoder) as text_calls:
        # A prompt not encoded before: an encoding kept from the first image would skip the encoders.
        engine.generate(
            default_request(prompt="a harbour at noon", steps=2, loras=(("ink", 1.0), ("pastel", 0.5)))
        )
    folded = engine._components.loras.folded
    assert [weight for _, weight in folded] == [1.0, 0.5]
    assert unet_calls == []  # no per-step LoRA matmuls: the deltas are in the weights
    assert text_calls  # the text encoders keep peft's layers (they run once per prompt)


def test_folded_loras_give_the_image_peft_layers_give(engine: SDXLEngine) -> None:
    loras = (("ink", 0.8), ("pastel", -0.5))
    folded = _pixels(engine, loras=loras)  # (loads both LoRAs first)
    engine._components.loras.fold = False
    try:
        pipeline = engine._pipeline
        assert pipeline is not None
        with lora_calls(pipeline.unet) as unet_calls:
            layered = _pixels(engine, loras=loras)
        assert unet_calls  # the peft layers ran this time
    finally:
        engine._components.loras.fold = True
    assert np.abs(folded.astype(int) - layered.astype(int)).max() <= 2


def test_many_lora_switches_leave_the_base_weights_bit_for_bit_as_loaded(engine: SDXLEngine) -> None:
    pipeline = engine._pipeline
    assert pipeline is not None
    engine.generate(default_request(steps=1))
    before = {name: p.detach().clone() for name, p in pipeline.unet.named_parameters() if "lora_" not in name}
    plain = _pixels(engine)
    switches = [(("ink", 1.0),), (("pastel", 0.37),), (("ink", -1.3), ("pastel", 0.9)), (("ink", 0.1),)]
    for loras in switches * 5:
        engine.generate(default_request(steps=1, loras=loras))
    assert np.array_equal(_pixels(engine), plain)
    # (peft moves a wrapped layer's weight to ``<layer>.base_layer.weight`` at the first LoRA)
    after = {name.replace(".base_layer", ""): p for name, p in pipeline.unet.named_parameters()}
    assert all(torch.equal(after[name.replace(".base_layer", "")], value) for name, value in before.items())


def test_loras_stay_unfolded_on_fp8_and_streamed_weights() -> None:
    cpu = torch.device("cpu")
    high = plan_acceleration(AccelerationOptions(vram="high", compile="off"), cpu, torch.float32)
    low = plan_acceleration(AccelerationOptions(vram="low", compile="off"), cpu, torch.float32)
    assert high.folds_loras and not low.folds_loras
    high.quantize = "fp8"
    assert not high.folds_loras


def test_low_vram_engine_runs_loras_as_peft_layers(models: Path) -> None:
    settings = EngineSettings(model="tiny-random", device="cpu", vram="low")
    low = create_engine(settings, models, models.parent / "cache-low")
    assert isinstance(low, SDXLEngine)
    low.load()
    assert low._pipeline is not None and not low._components.loras.fold
    low.generate(default_request(steps=1, loras=(("ink", 1.0),)))  # loads it
    with lora_calls(low._pipeline.unet) as unet_calls:
        with_lora = np.asarray(low.generate(default_request(steps=2, loras=(("ink", 1.0),))).image)
    assert unet_calls and low._components.loras.folded == ()
    assert not np.array_equal(with_lora, np.asarray(low.generate(default_request(steps=2)).image))


def test_missing_lora_names_the_file_and_the_folders_and_fetch_only_for_catalogued_ones(
    engine: SDXLEngine,
) -> None:
    with pytest.raises(InvalidInput) as caught:
        engine.generate(default_request(steps=1, loras=(("no_such_style", 1.0),)))
    error = caught.value
    assert "no_such_style" in error.message and "not found" in error.message
    assert "loras" in error.where
    assert "no_such_style.safetensors" in error.hint and "models fetch" not in error.hint
    with pytest.raises(InvalidInput) as caught:
        engine.generate(default_request(steps=1, loras=(("SDXL_LCM_LORA", 1.0),)))
    assert caught.value.hint.endswith("or run fooocusd models fetch sdxl_lcm_lora")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("old", "pickle"),
        ("old.ckpt", "pickle"),
        ("broken", "not a LoRA"),
        ("checkpoint", "full model checkpoint"),
        ("not_lora", "not a LoRA"),
    ],
)
def test_wrong_lora_files_are_refused_with_the_reason(engine: SDXLEngine, name: str, expected: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        engine.generate(default_request(steps=1, loras=((name, 1.0),)))
    assert expected in caught.value.message
    assert caught.value.hint


def test_weights_outside_minus_two_to_two_and_too_many_loras_are_refused(engine: SDXLEngine) -> None:
    with pytest.raises(InvalidInput, match=r"outside -2\.\.2"):
        engine.generate(default_request(steps=1, loras=(("ink", 2.5),)))
    with pytest.raises(InvalidInput, match=f"at most {MAX_LORAS_PER_IMAGE}"):
        engine.generate(default_request(steps=1, loras=(("ink", 0.1),) * (MAX_LORAS_PER_IMAGE + 1)))


def test_layout_detection_names_kohya_diffusers_and_lycoris() -> None:
    assert lora_layout(["lora_unet_down_blocks_0.lora_down.weight"], "a") == "kohya"
    assert lora_layout(["unet.down_blocks.0.to_q.lora_A.weight"], "b") == "diffusers"
    assert lora_layout(["unet.down_blocks.0.to_q.lora.down.weight"], "c") == "diffusers"
    with pytest.raises(InvalidInput, match="LyCORIS"):
        lora_layout(["lora_unet_x.hada_w1_a"], "d")


def test_least_recently_used_adapters_are_deleted_beyond_the_cache_bound(models: Path) -> None:
    class FakePipeline:
        def __init__(self) -> None:
            self.deleted: list[str] = []

        def load_lora_weights(self, state: object, adapter_name: str) -> None: ...
        def delete_adapters(self, name: str) -> None:
            self.deleted.append(name)

        def enable_lora(self) -> None: ...
        def set_adapters(self, names: list[str], weights: list[float]) -> None: ...

    cache = models.parent / "cache" / "lru.json"
    adapters = LoraAdapters(ModelDirs.of(models), cache, capacity=8, fold=False)  # no UNet to fold into
    adapters._capacity = 2  # the public bound is 8 per image; shrink it to see evictions with three files
    pipeline = FakePipeline()
    adapters.apply(pipeline, [("ink", 1.0)])
    first = adapters.loaded[0]
    adapters.apply(pipeline, [("pastel", 1.0)])
    adapters.apply(pipeline, [("nested", 1.0)])
    assert pipeline.deleted == [first]
    assert len(adapters.loaded) == 2


def test_inline_lora_tag_runs_end_to_end_and_the_sidecar_lists_it_with_its_hash(sandbox: Sandbox) -> None:
    loras = ModelDirs.of(sandbox.root / "models").folders("loras")[0]
    loras.mkdir(parents=True)
    write_diffusers_lora(loras, "ink", seed=1)
    sandbox.drop("fox.txt", "a red fox <lora:ink:0.6>, snow\nsteps: 2\n")
    sandbox.drain()
    sidecars = sandbox.sidecars()
    assert len(sidecars) == 1, sandbox.files(sandbox.failed)
    record = json.loads(sidecars[0].read_text())
    assert record["prompt"] == "a red fox, snow"
    assert [(entry["name"], entry["weight"]) for entry in record["loras"]] == [("ink", 0.6)]
    assert len(record["loras"][0]["sha256"]) == 64
    assert record["loras"][0]["hash"] == record["loras"][0]["sha256"][:10]


def test_a_prompt_kept_encoded_without_loras_is_encoded_again_under_each_text_encoder_lora(
    engine: SDXLEngine,
) -> None:
    pipeline = engine._pipeline
    assert pipeline is not None
    _pixels(engine, loras=(("ink", 1.0),))  # loads the adapter
    engine.encodings.clear()
    _pixels(engine)  # the default prompt and negative, encoded without a LoRA
    for weight in (1.0, 0.5):  # the weight changes the text encoders' output too
        with lora_calls(pipeline.text_encoder) as text_calls:
            inked = _pixels(engine, loras=(("ink", weight),))
        assert text_calls, f"ink at {weight}: the encoding kept without it was reused"
        engine.encodings.clear()
        assert np.array_equal(_pixels(engine, loras=(("ink", weight),)), inked)


def test_a_lora_tag_drawn_from_an_array_or_a_wildcard_is_that_images_own_lora(sandbox: Sandbox) -> None:
    loras = ModelDirs.of(sandbox.root / "models").folders("loras")[0]
    loras.mkdir(parents=True)
    write_diffusers_lora(loras, "ink", seed=1)
    write_diffusers_lora(loras, "pastel", seed=2)
    wildcards = sandbox.inbox.parent / "wildcards"
    wildcards.mkdir()
    (wildcards / "medium.txt").write_text("<lora:pastel:0.5> pastel drawing\n", encoding="utf-8")
    sandbox.drop("fox.txt", "a red fox, [[<lora:ink:0.6> ink, __medium__, photo]]\nimages: 3\nsteps: 2\n")
    assert sandbox.drain().ok
    records = [json.loads(path.read_text()) for path in sandbox.sidecars()]
    records.sort(key=lambda record: record["image_index"])
    assert [record["prompt"] for record in records] == [
        "a red fox, ink",
        "a red fox, pastel drawing",
        "a red fox, photo",
    ]
    assert [[(lora["name"], lora["weight"]) for lora in record["loras"]] for record in records] == [
        [("ink", 0.6)],
        [("pastel", 0.5)],
        [],
    ]
