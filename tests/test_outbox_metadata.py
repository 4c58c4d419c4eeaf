from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from PIL import Image

import fooocusd
from fooocusd.engine.base import GeneratedImage, GenerationRequest
from fooocusd.outbox.metadata import (
    ImageFacts,
    a1111_parameters,
    a1111_sampler_name,
    build_record,
    fooocus_scheme,
)
from fooocusd.outbox.reader import parse_a1111_parameters

MODEL_SHA256 = "ABCDEF1234" + "5" * 54


def _facts(**overrides: object) -> ImageFacts:
    facts = ImageFacts(
        job_id="job-1",
        input_name="cat.txt",
        input_sha256="ab" * 32,
        prompt="a cat on a sofa",
        negative="blurry, lowres",
        seed=123,
        steps=30,
        sampler="dpmpp_2m_sde_gpu",
        scheduler="karras",
        cfg=4.0,
        sharpness=2.0,
        width=1152,
        height=896,
        performance="speed",
        model_name="juggernautXL_v8.safetensors",
        model_sha256=MODEL_SHA256,
        device="cuda:0",
        dtype="float16",
        image_index=1,
        image_count=4,
        output_name="cat_123_1.png",
        fmt="png",
        styles=("Fooocus V2", "Fooocus Sharp"),
        timings={"encode": 0.1234567, "denoise": 4.5},
        created=datetime(2025, 1, 31, 13, 3, 59, tzinfo=UTC),
    )
    return replace(facts, **overrides)


def test_record_holds_every_documented_fact_as_plain_json() -> None:
    record = build_record(_facts())

    assert json.loads(json.dumps(record)) == record
    assert record["job_id"] == "job-1"
    assert record["input_file"] == "cat.txt"
    assert record["input_sha256"] == "ab" * 32
    assert record["model"] == "juggernautXL_v8.safetensors"
    assert record["model_sha256"] == MODEL_SHA256.lower()
    assert record["model_hash"] == "abcdef1234"
    assert record["fooocusd_version"] == fooocusd.__version__
    assert record["created"] == "2025-01-31T13:03:59.000Z"
    assert (record["image_index"], record["image_count"]) == (1, 4)
    assert (record["output_file"], record["format"]) == ("cat_123_1.png", "png")
    assert record["timings"] == {"encode": 0.1235, "denoise": 4.5}
    assert record["styles"] == ["Fooocus V2", "Fooocus Sharp"]
    for key in (
        "prompt",
        "negative",
        "seed",
        "steps",
        "sampler",
        "scheduler",
        "cfg",
        "sharpness",
        "width",
        "height",
        "performance",
        "device",
        "dtype",
        "extra_prompts",
    ):
        assert key in record


def test_created_time_is_converted_to_utc() -> None:
    paris_winter = timezone(timedelta(hours=1))
    record = build_record(_facts(created=datetime(2025, 1, 31, 14, 3, 59, tzinfo=paris_winter)))

    assert record["created"] == "2025-01-31T13:03:59.000Z"


def test_full_prompt_defaults_to_prompt_and_extra_prompts() -> None:
    record = build_record(_facts(extra_prompts=("a hat",)))

    assert record["full_prompt"] == ["a cat on a sofa", "a hat"]
    assert record["full_negative_prompt"] == ["blurry, lowres"]


def test_facts_from_generation_combine_request_and_engine_report() -> None:
    request = GenerationRequest(
        prompt="a cat",
        negative="",
        seed=7,
        width=1024,
        height=1024,
        steps=8,
        cfg=1.0,
        sampler="euler",
        scheduler="sgm_uniform",
        model="models/lightning.safetensors",
        extra_prompts=("red hat",),
        styles=("Fooocus V2",),
        performance="lightning",
    )
    generated = GeneratedImage(
        image=Image.new("RGB", (8, 8)),
        width=1024,
        height=1024,
        model_name="lightning.safetensors",
        model_path="/m/lightning.safetensors",
        model_sha256="f" * 64,
        device="cpu",
        dtype="float32",
        timings={"total": 2.0},
        extra={"full_prompt": ["a cat, cinematic", "red hat"]},
    )

    record = build_record(
        request=request,
        generated=generated,
        job_id=17,
        input_name="sub/cat.txt",
        input_sha256="0" * 64,
        image_index=0,
        image_count=1,
        output_name="cat_7_0.webp",
        fmt="webp",
    )

    assert record["job_id"] == 17
    assert record["input_file"] == "sub/cat.txt"
    assert record["full_prompt"] == ["a cat, cinematic", "red hat"]
    assert record["extra_prompts"] == ["red hat"]
    assert (record["seed"], record["steps"], record["sampler"]) == (7, 8, "euler")
    assert record["performance"] == "lightning"
    assert record["model"] == "lightning.safetensors"
    assert record["model_hash"] == "ffffffffff"
    assert (record["device"], record["dtype"]) == ("cpu", "float32")
    assert record["timings"] == {"total": 2.0}
    assert record["created"].endswith("Z")


def test_build_record_refuses_facts_and_keywords_together() -> None:
    with pytest.raises(TypeError):
        build_record(_facts(), job_id=1)  # type: ignore[call-overload]


def test_a1111_text_round_trips_through_the_parser() -> None:
    record = build_record(_facts())

    parsed = parse_a1111_parameters(a1111_parameters(record))

    assert parsed["prompt"] == "a cat on a sofa"
    assert parsed["negative"] == "blurry, lowres"
    params = parsed["params"]
    assert params["Seed"] == "123"
    assert params["Steps"] == "30"
    assert params["Size"] == "1152x896"
    assert params["Model hash"] == "abcdef1234"
    assert params["Model"] == "juggernautXL_v8"
    assert params["Sampler"] == "DPM++ 2M SDE Karras"
    assert params["Schedule type"] == "Karras"
    assert params["CFG scale"] == "4.0"
    assert params["Sharpness"] == "2.0"
    assert params["Version"] == f"fooocusd {fooocusd.__version__}"
    assert params["Styles"] == "Fooocus V2, Fooocus Sharp"


def test_a1111_text_has_the_three_part_layout_readers_expect() -> None:
    text = a1111_parameters(build_record(_facts()))

    prompt_line, negative_line, settings_line = text.split("\n")
    assert prompt_line == "a cat on a sofa"
    assert negative_line == "Negative prompt: blurry, lowres"
    assert settings_line.startswith(
        "Steps: 30, Sampler: DPM++ 2M SDE Karras, Schedule type: Karras, CFG scale: 4.0, Seed: 123, "
        "Size: 1152x896, Model hash: abcdef1234, Model: juggernautXL_v8, Sharpness: 2.0, Version: fooocusd"
    )


def test_values_with_commas_quotes_and_newlines_are_json_quoted_and_survive() -> None:
    record = build_record(
        _facts(
            prompt='a "cat", with: colons',
            extra_prompts=("second line",),
            full_prompt=("a cat, cinematic photo",),
            styles=("Style, with comma",),
        )
    )
    text = a1111_parameters(record)

    assert 'Styles: "Style, with comma"' in text
    parsed = parse_a1111_parameters(text)
    assert parsed["prompt"] == "a cat, cinematic photo"
    assert parsed["params"]["Raw prompt"] == 'a "cat", with: colons\nsecond line'
    assert parsed["params"]["Styles"] == "Style, with comma"


def test_empty_negative_prompt_leaves_out_the_negative_line() -> None:
    text = a1111_parameters(build_record(_facts(negative="")))

    assert "Negative prompt:" not in text
    assert parse_a1111_parameters(text)["negative"] == ""


def test_unknown_model_hash_is_left_out_rather_than_empty() -> None:
    text = a1111_parameters(build_record(_facts(model_sha256="", model_name="tiny-random")))

    assert "Model hash" not in text
    assert parse_a1111_parameters(text)["params"]["Model"] == "tiny-random"


@pytest.mark.parametrize(
    ("sampler", "scheduler", "expected"),
    [
        ("dpmpp_2m_sde_gpu", "karras", "DPM++ 2M SDE Karras"),
        ("dpmpp_2m_sde_gpu", "exponential", "DPM++ 2M SDE"),
        ("dpmpp_2m", "karras", "DPM++ 2M Karras"),
        ("euler_ancestral", "karras", "Euler a"),
        ("euler", "sgm_uniform", "Euler"),
        ("uni_pc", "karras", "UniPC"),
        ("my_new_sampler", "normal", "my_new_sampler"),
    ],
)
def test_sampler_names_follow_a1111(sampler: str, scheduler: str, expected: str) -> None:
    assert a1111_sampler_name(sampler, scheduler) == expected


def test_fooocus_scheme_is_sorted_ascii_json_in_fooocus_style() -> None:
    record = build_record(_facts(prompt="ein Kätzchen", seed=2**63 - 1))

    text = fooocus_scheme(record)
    scheme = json.loads(text)

    assert text.isascii()
    assert list(scheme) == sorted(scheme)
    assert scheme["prompt"] == "ein Kätzchen"
    assert scheme["negative_prompt"] == "blurry, lowres"
    assert scheme["full_prompt"] == ["ein Kätzchen"]
    with_extra = json.loads(fooocus_scheme({**record, "extra_prompts": ["im Schnee"]}))
    assert with_extra["prompt"] == "ein Kätzchen\nim Schnee"  # Fooocus's box: extra prompts a line each
    assert scheme["resolution"] == "(1152, 896)"
    assert scheme["seed"] == str(2**63 - 1)
    assert scheme["guidance_scale"] == 4.0
    assert scheme["sharpness"] == 2.0
    assert scheme["steps"] == 30
    assert scheme["performance"] == "Speed"
    assert (scheme["sampler"], scheme["scheduler"]) == ("dpmpp_2m_sde_gpu", "karras")
    assert (scheme["base_model"], scheme["base_model_hash"]) == ("juggernautXL_v8", "abcdef1234")
    assert scheme["styles"] == ["Fooocus V2", "Fooocus Sharp"]
    assert scheme["version"] == f"fooocusd {fooocusd.__version__}"


def _generation_with_components() -> dict[str, object]:
    request = GenerationRequest(
        prompt="a fox",
        negative="",
        seed=7,
        width=1024,
        height=1024,
        steps=30,
        cfg=4.0,
        sampler="dpmpp_2m_sde_gpu",
        scheduler="karras",
        model="juggernautXL_v8",
        performance="quality",
        loras=(("ink", 0.6),),
        refiner="sd_xl_refiner_1.0",
        refiner_switch=0.8,
        vae="sdxl_vae",
    )
    generated = GeneratedImage(
        image=Image.new("RGB", (8, 8)),
        width=1024,
        height=1024,
        model_name="juggernautXL_v8",
        model_path="/m/juggernautXL_v8.safetensors",
        model_sha256=MODEL_SHA256,
        device="cpu",
        dtype="float32",
        extra={
            "loras": [
                {"name": "styles/ink", "weight": 0.6, "sha256": "c" * 64, "hash": "c" * 10},
                {"name": "pastel.safetensors", "weight": -0.5, "sha256": "d" * 64, "hash": "d" * 10},
            ],
            "refiner": {
                "name": "sd_xl_refiner_1.0",
                "sha256": "e" * 64,
                "hash": "e" * 10,
                "switch": 0.8,
                "switch_step": 24,
            },
            "refiner_switch": 0.8,
            "vae": "sdxl_vae",
            "vae_sha256": "f" * 64,
        },
    )
    return {
        "request": request,
        "generated": generated,
        "job_id": 1,
        "input_name": "fox.txt",
        "input_sha256": "0" * 64,
        "image_index": 0,
        "image_count": 1,
        "output_name": "fox.png",
        "fmt": "png",
    }


def test_record_lists_loras_with_hashes_refiner_and_vae() -> None:
    record = build_record(**_generation_with_components())  # type: ignore[arg-type]
    assert [(entry["name"], entry["weight"], entry["hash"]) for entry in record["loras"]] == [
        ("styles/ink", 0.6, "c" * 10),
        ("pastel.safetensors", -0.5, "d" * 10),
    ]
    assert record["refiner"]["name"] == "sd_xl_refiner_1.0" and record["refiner"]["switch_step"] == 24
    assert (record["refiner_switch"], record["vae"], record["vae_hash"]) == (0.8, "sdxl_vae", "f" * 10)
    json.dumps(record)


def test_a1111_parameters_carry_lora_hashes_refiner_vae_performance_and_adm() -> None:
    record = build_record(**_generation_with_components())  # type: ignore[arg-type]
    record["adm_guidance"] = [1.5, 0.8, 0.3]
    text = a1111_parameters(record)
    assert f'Lora hashes: "ink: {"c" * 10}, pastel: {"d" * 10}"' in text
    assert 'Lora weights: "ink: 0.6, pastel: -0.5"' in text
    assert f"Refiner: sd_xl_refiner_1.0, Refiner hash: {'e' * 10}, Refiner switch: 0.8" in text
    assert "VAE: sdxl_vae" in text and "Performance: Quality" in text and "Sharpness: 2.0" in text
    assert 'ADM Guidance: "(1.5, 0.8, 0.3)"' in text
    parsed = parse_a1111_parameters(text)
    assert parsed is not None


def test_fooocus_scheme_has_refiner_vae_and_lora_triples() -> None:
    record = build_record(**_generation_with_components())  # type: ignore[arg-type]
    scheme = json.loads(fooocus_scheme(record))
    assert scheme["loras"] == [["ink", 0.6, "c" * 10], ["pastel", -0.5, "d" * 10]]
    assert (scheme["refiner_model"], scheme["refiner_model_hash"]) == ("sd_xl_refiner_1.0", "e" * 10)
    assert scheme["refiner_switch"] == 0.8 and scheme["vae"] == "sdxl_vae"


def test_fooocus_scheme_without_refiner_or_vae_says_none_and_default() -> None:
    record = build_record(_facts())
    scheme = json.loads(fooocus_scheme(record))
    assert scheme["refiner_model"] == "None" and scheme["vae"] == "Default (model)" and scheme["loras"] == []
