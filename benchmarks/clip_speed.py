"""CLIP ViT-B/32 image encoder on CPU: transformers fp32 vs siglite torch fp32 vs siglite INT8, in one run.

Seed 002 (a CLIP ViT-B/32 deployment) reports per-image latency (its `calculate time`, the batch's time divided by the
batch size) and FPS at several batch sizes; this prints the same table for this CPU. The model is the
`clip-vit-base-patch32` architecture (`siglite list`: 224 px, patch 32, 50 tokens, width 768, 12 layers) with random
weights (`siglite.checkpoints.random_model`), vision tower + `visual_projection` only, saved as a
`CLIPVisionModelWithProjection` folder that all three load:

* transformers `CLIPVisionModelWithProjection` (attn_implementation="sdpa"), fp32 — the baseline;
* siglite torch engine, fp32;
* siglite INT8 (`siglite.tasks.quantize.quantize`, recipe "siglite", ONNX Runtime) calibrated on `--calib` generated
  images (`siglite.data.synthetic`), its fidelity report (cosine of the last_hidden_state tokens and of the image
  embedding against fp32 on held-out images: mean and 1%-low) printed beside the table.

Timing: pixels in, image embeddings out (preprocessing excluded), one warm-up call each, then `--rounds` rounds in
which every engine runs once in turn (interleaved, so load from other processes hits all alike); the median round is
reported. Threads: torch and ONNX Runtime both at `--threads` (default 2). The 1-minute load average is printed before
and after, since other jobs on a shared machine inflate absolute times.

    python benchmarks/clip_speed.py                      # batch 8 and 32, markdown table + JSON records
    python benchmarks/clip_speed.py --batches 8 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from timing import add_speed_args, int8_summary, run_speed, speed_records, speed_table  # benchmarks/timing.py (scripts run with benchmarks/ on sys.path)

SPEC = "clip-vit-base-patch32"
TARGET_SPEEDUP = 2.0  # issue 12: INT8 >= 2x transformers fp32


def make_checkpoint(folder: Path, seed: int) -> Path:
    from siglite.checkpoints import random_model, save_checkpoint
    from siglite.registry import get_spec

    spec = get_spec(SPEC)
    save_checkpoint(random_model(spec, seed=seed, text=False), folder, spec)
    return folder


def run(args, work: Path) -> tuple[list[dict], dict]:
    from transformers import CLIPVisionModelWithProjection

    import siglite
    from siglite.data.synthetic import generate
    from siglite.tasks.quantize import quantize

    say = (lambda s: print(f"[clip_speed] {s}", file=sys.stderr, flush=True))
    torch.set_num_threads(args.threads)
    src = make_checkpoint(work / "fp32", args.seed)
    size = siglite.load(src).image_config.height
    calib = [s.image for s in generate(args.calib + args.check, 100, size)]
    say(f"quantizing on {args.calib} generated images ({args.check} held out)")
    t0 = time.perf_counter()
    report = quantize(src, calib, work / "int8", num_calib=args.calib, num_check=args.check, progress=say)
    quant_s = time.perf_counter() - t0

    hf = CLIPVisionModelWithProjection.from_pretrained(str(src), attn_implementation="sdpa").eval()
    fp32 = siglite.load(src, engine="torch", device="cpu")
    int8 = siglite.load(work / "int8", engine="onnxruntime", threads=args.threads)

    @torch.inference_mode()
    def transformers_fp32(px):
        return hf(pixel_values=torch.from_numpy(px)).image_embeds.numpy()

    fns = {"transformers CLIPVisionModelWithProjection (sdpa) fp32": transformers_fp32,
           "siglite torch fp32": lambda px: fp32.engine.encode_image(px)[0],
           "siglite INT8 (onnxruntime)": lambda px: int8.engine.encode_image(px)[0]}
    records = []
    for batch in args.batches:
        pixels = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
        say(f"timing batch {batch}, {args.rounds} interleaved rounds")
        records += speed_records(fns, pixels, batch, args.rounds, args.threads, model=SPEC)
    quant = int8_summary(report, quant_s, args.calib, args.check)
    return records, quant


def verdict(rec: dict) -> str:
    return "met" if rec["ratio_vs_transformers"] >= TARGET_SPEEDUP else "missed"


def markdown(records: list[dict], quant: dict) -> str:
    lines, loads = speed_table(records, "embeds")
    int8 = [r for r in records if "INT8" in r["engine"]]
    lines += ["", f"{SPEC} shape (224 px, patch 32), random weights, vision tower + projection, fp32 inputs, "
                  f"{records[0]['threads']} threads, median of {len(records[0]['rounds_s'])} interleaved rounds. "
                  f"1-minute load average during timing: {loads}. INT8 (calibrated on {quant['calib']} generated "
                  f"images, {quant['cpu_isa']}): tokens cosine mean {quant['tokens_cosine_mean']:.4f} / 1%-low "
                  f"{quant['tokens_cosine_p1']:.4f}, embedding cosine mean {quant['embed_cosine_mean']:.4f} / 1%-low "
                  f"{quant['embed_cosine_p1']:.4f} on {quant['check']} held-out images; "
                  f"{len(quant['float32_layers'])} layer(s) kept in fp32. Target INT8 ≥ {TARGET_SPEEDUP:.0f}× "
                  "transformers fp32: " + ", ".join(f"batch {r['batch_size']} " + verdict(r) for r in int8) + "."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_speed_args(p, [8, 32], "clip_speed.json")
    return run_speed(p.parse_args(argv), run, markdown)


if __name__ == "__main__":
    sys.exit(main())
