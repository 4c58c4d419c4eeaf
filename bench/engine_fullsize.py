"""Full-size check of the real loading path and the engine, on random weights (no download).

1. Builds SDXL base from the configs fooocusd ships, with random weights, directly on the device.
2. Writes it as one sgm-layout single-file ``.safetensors`` checkpoint, like the files users download.
3. Loads that file through fooocusd's own engine (``from_single_file`` fully offline with the shipped
   configs and tokenizers), hashes it, and renders 1024² images at 30 steps with Fooocus's
   refinements on and off, reporting time per stage and peak device memory.

    python bench/engine_fullsize.py --out report.json            # a CUDA machine
    python bench/engine_fullsize.py --tiny --device cpu --out r.json   # the plumbing, on a CPU

Writes a JSON report. Timings are wall-clock after one warm-up image.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

import fooocusd
from fooocusd.engine.base import GenerationRequest
from fooocusd.engine.models import SDXL_CONFIG_DIR, ModelLocation
from fooocusd.engine.sdxl import SDXLEngine, _default_scheduler
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from tests.engine_helpers import save_sgm_checkpoint, write_tiny_checkpoint


def build_fullsize(device: str, dtype: torch.dtype) -> StableDiffusionXLPipeline:
    config = SDXL_CONFIG_DIR
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder"))
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(config / "text_encoder_2")
        )
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(config / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(config / "tokenizer_2"),
        unet=unet,
        scheduler=_default_scheduler(config),
        add_watermarker=False,
    )
    return pipeline.to(dtype=dtype)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="tiny random model (CPU plumbing check)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fooocusd-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {
        "fooocusd": fooocusd.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device_name": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor(),
        "dtype": args.dtype,
        "size": args.size,
        "steps": args.steps,
        "tiny": args.tiny,
    }

    mark = time.perf_counter()
    if args.tiny:
        source = build_tiny_sdxl_pipeline(_default_scheduler(SDXL_CONFIG_DIR))
    else:
        source = build_fullsize(args.device, dtype)
    report["build_s"] = round(time.perf_counter() - mark, 2)
    report["params_m"] = round(sum(p.numel() for p in source.unet.parameters()) / 1e6, 2)

    checkpoint = work / "sdxl-random.safetensors"
    config_dir = work / "tiny-config" if args.tiny else SDXL_CONFIG_DIR
    mark = time.perf_counter()
    if args.tiny:
        write_tiny_checkpoint(source, checkpoint, config_dir)
    else:
        save_sgm_checkpoint(source, checkpoint)
    report["write_checkpoint_s"] = round(time.perf_counter() - mark, 2)
    report["checkpoint_bytes"] = checkpoint.stat().st_size
    del source
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    engine = SDXLEngine(
        ModelLocation(kind="single_file", name=checkpoint.name, path=checkpoint),
        models_dir=work,
        hash_cache=work / "hashes.json",
        device=args.device,
        dtype=args.dtype,
        config_dir=config_dir,
    )
    mark = time.perf_counter()
    engine.load()  # from_single_file, offline, shipped configs + tokenizers, then sha256
    report["load_and_hash_s"] = round(time.perf_counter() - mark, 2)
    report["engine"] = engine.describe()

    fooocus = GenerationRequest(
        prompt="a lighthouse on a rocky coast at dusk",
        negative="blurry, text",
        seed=1,
        width=args.size,
        height=args.size,
        steps=args.steps,
        cfg=7.0,
        sampler="dpmpp_2m_sde_gpu",
        scheduler="karras",
        model=str(checkpoint),
        sharpness=2.0,
    )
    plain = replace(
        fooocus,
        sharpness=0.0,
        adaptive_cfg=30.0,
        adm_scaler_positive=1.0,
        adm_scaler_negative=1.0,
        adm_scaler_end=0.0,
    )
    engine.generate(fooocus)  # warm-up: kernels, allocator
    for label, request in (("fooocus_refinements", fooocus), ("refinements_off", plain)):
        runs = []
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        for repeat in range(args.repeats):
            result = engine.generate(replace(request, seed=repeat + 2))
            runs.append(result.timings)
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        report[label] = {
            "runs": runs,
            "median_total_s": sorted(r["total"] for r in runs)[len(runs) // 2],
            "peak_gib": round(peak, 2) if peak is not None else None,
        }
        result.image.save(work / f"{label}.png")
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
