"""Textual-inversion embeddings: ``embedding:name`` in prompts, for SDXL (clip_l + clip_g) and SD 1.5."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fooocusd.engine.conditioning import encode_workloads
from fooocusd.engine.embeddings import Embeddings
from fooocusd.engine.factory import create_engine
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.prompt_syntax import embedding_names
from fooocusd.engine.sd1x_conditioning import encode_sd1x_workloads
from fooocusd.engine.tiny import TEXT_WIDTH_1, TEXT_WIDTH_2, build_tiny_sdxl_pipeline
from fooocusd.errors import InvalidInput
from fooocusd.settings import EngineSettings
from tests.engine_helpers import default_request, shrunk_sd1x_config_dir, tiny_sd1x_pipeline

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only wait on each other
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "embeddings"
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(11)
    save_file(
        {
            "clip_l": torch.randn(2, TEXT_WIDTH_1, generator=generator),
            "clip_g": torch.randn(2, TEXT_WIDTH_2, generator=generator),
        },
        str(folder / "tiny_xl.safetensors"),
    )
    (folder / "sd15").mkdir()
    save_file(
        {"emb_params": torch.randn(3, 32, generator=generator)}, str(folder / "sd15" / "tiny_v1.safetensors")
    )
    torch.save(
        {"string_to_param": {"*": torch.randn(1, 32, generator=generator)}, "name": "old"}, folder / "old.pt"
    )
    return tmp_path / "models"


def _embeddings(models: Path, *, allow_unsafe_pickle: bool = False) -> Embeddings:
    return Embeddings(
        ModelDirs.of(models), models.parent / "hashes.json", allow_unsafe_pickle=allow_unsafe_pickle
    )


def test_embedding_references_are_found_in_plain_and_weighted_prompt_text() -> None:
    assert embedding_names("a cat, embedding:tiny_xl, (embedding:neg/bad_hands:1.2). embedding:x.") == [
        "tiny_xl",
        "neg/bad_hands",
        "x",
    ]


def test_sdxl_embedding_loads_clip_l_and_clip_g_and_changes_the_encoding(models: Path) -> None:
    pipeline = build_tiny_sdxl_pipeline(_scheduler())
    embeddings = _embeddings(models)
    with torch.inference_mode():
        plain = encode_workloads(pipeline, ["a cat"], clip_skip=2, device=CPU)
    rewritten = embeddings.rewrite(pipeline, ["a cat embedding:tiny_xl"])
    with torch.inference_mode():
        with_embedding = encode_workloads(pipeline, rewritten, clip_skip=2, device=CPU)

    token = rewritten[0].split()[-1]
    assert token.startswith("<emb-") and "embedding:" not in rewritten[0]
    stored = load_file(str(models / "embeddings" / "tiny_xl.safetensors"))
    slots = {
        "clip_l": (pipeline.tokenizer, pipeline.text_encoder),
        "clip_g": (pipeline.tokenizer_2, pipeline.text_encoder_2),
    }
    for key, (tokenizer, encoder) in slots.items():
        ids = tokenizer.convert_tokens_to_ids([token, f"{token}_1"])
        assert torch.equal(encoder.get_input_embeddings().weight[ids], stored[key])
    assert not torch.equal(plain.tokens, with_embedding.tokens)
    assert not torch.equal(plain.pooled, with_embedding.pooled)
    assert [item["name"] for item in embeddings.record()] == ["tiny_xl"]
    assert len(embeddings.record()[0]["sha256"]) == 64

    again = embeddings.rewrite(pipeline, ["embedding:tiny_xl"])  # cached: loaded once per pipeline
    assert again == (token,) and embeddings.files_loaded == 1


def test_sd15_embedding_with_several_vectors_changes_the_encoding(models: Path, tmp_path: Path) -> None:
    pipeline = tiny_sd1x_pipeline(shrunk_sd1x_config_dir("sd15", tmp_path / "config"))
    embeddings = _embeddings(models)
    with torch.inference_mode():
        plain = encode_sd1x_workloads(pipeline, ["a cat"], clip_skip=1, family="sd15", device=CPU)
    rewritten = embeddings.rewrite(pipeline, ["a cat (embedding:sd15/tiny_v1:1.2)"])
    with torch.inference_mode():
        weighted = encode_sd1x_workloads(pipeline, rewritten, clip_skip=1, family="sd15", device=CPU)
    unweighted = embeddings.rewrite(pipeline, ["a cat embedding:sd15/tiny_v1"])
    with torch.inference_mode():
        plain_embedding = encode_sd1x_workloads(pipeline, unweighted, clip_skip=1, family="sd15", device=CPU)

    token = unweighted[0].split()[-1]
    assert pipeline.maybe_convert_prompt(token, pipeline.tokenizer).split() == [
        token,
        f"{token}_1",
        f"{token}_2",
    ]
    assert not torch.equal(plain.tokens, plain_embedding.tokens)
    assert not torch.equal(weighted.tokens, plain_embedding.tokens)
    assert embeddings.record()[0]["name"] == "sd15/tiny_v1"


def test_unknown_embedding_fails_the_job_naming_the_folders(models: Path) -> None:
    pipeline = build_tiny_sdxl_pipeline(_scheduler())
    with pytest.raises(InvalidInput) as caught:
        _embeddings(models).rewrite(pipeline, ["a cat embedding:nowhere"])
    error = caught.value
    assert "nowhere" in error.message and str(models / "embeddings") in (error.where or "")
    assert "nowhere.safetensors" in (error.hint or "")


def test_embedding_for_another_family_is_refused_with_the_reason(models: Path) -> None:
    pipeline = build_tiny_sdxl_pipeline(_scheduler())
    with pytest.raises(InvalidInput) as caught:
        _embeddings(models).rewrite(pipeline, ["embedding:tiny_v1"])
    assert "SD 1.x/2.x embedding" in caught.value.message and "SDXL" in caught.value.message


def test_pickle_embedding_is_refused_unless_allowed(models: Path, tmp_path: Path) -> None:
    pipeline = tiny_sd1x_pipeline(shrunk_sd1x_config_dir("sd15", tmp_path / "config"))
    with pytest.raises(InvalidInput) as caught:
        _embeddings(models).rewrite(pipeline, ["embedding:old"])
    assert "pickle" in caught.value.message and "allow_unsafe_pickle" in (caught.value.hint or "")

    allowed = _embeddings(models, allow_unsafe_pickle=True).rewrite(pipeline, ["embedding:old"])
    assert allowed[0].startswith("<emb-")


def test_engine_renders_with_an_embedding_and_records_its_name_and_hash(models: Path) -> None:
    engine = create_engine(EngineSettings(model="tiny-random", device="cpu"), models, models.parent / "cache")
    plain = engine.generate(default_request(prompt="a cat", steps=2, width=512, height=512))
    styled = engine.generate(
        default_request(prompt="a cat embedding:tiny_xl", steps=2, width=512, height=512)
    )
    assert plain.image.tobytes() != styled.image.tobytes()
    [record] = styled.extra["embeddings"]
    assert record["name"] == "tiny_xl" and record["hash"] == record["sha256"][:10]
    assert plain.extra["embeddings"] == []
    assert styled.extra["full_prompt"] == ["a cat embedding:tiny_xl"]  # what the user wrote


def _scheduler() -> object:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler()
