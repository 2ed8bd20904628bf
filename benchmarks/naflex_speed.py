"""SigLIP 2 NaFlex image encoder on CPU at a fixed patch budget: transformers fp32 vs siglite torch fp32 vs siglite
INT8, in one run, with the INT8 fidelity against float32.

The model is the `siglip2-base-patch16-naflex` architecture (`siglite list`: patch 16, width 768, 12 layers, a 16x16
position grid) with random weights (`siglite.checkpoints.random_model`), vision tower only, saved as the transformers
`Siglip2VisionModel` layout with its NaFlex processor. Inputs are NaFlex patches of generated images
(`siglite.data.synthetic`) resized to several aspect ratios (1:1, 4:3, 3:4, 16:9, 1:3), each cut at its own aspect
ratio into at most `--max-num-patches` patches and padded to that budget, the same arrays for all three:

* transformers `Siglip2VisionModel` (attn_implementation="sdpa") with `pixel_attention_mask` and `spatial_shapes`,
  fp32 — the baseline;
* siglite torch engine, fp32;
* siglite INT8 (`siglite.tasks.quantize.quantize`, recipe "siglite", ONNX Runtime) at the same budget, calibrated on
  `--calib` generated images of those aspect ratios; its fidelity report is printed beside the table.

Timing as benchmarks/clip_speed.py: patches in, pooled embeddings out (preprocessing excluded), one warm-up call each,
then `--rounds` interleaved rounds; the median round is reported with the 1-minute load average.

    python benchmarks/naflex_speed.py                          # budget 256, batch 8
    python benchmarks/naflex_speed.py --layers 4 --rounds 3    # quicker
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from timing import add_speed_args, int8_summary, run_speed, speed_records, speed_table  # benchmarks/timing.py (scripts run with benchmarks/ on sys.path)

SPEC = "siglip2-base-patch16-naflex"
ASPECTS = [(1, 1), (3, 4), (4, 3), (9, 16), (3, 1)]  # (height, width) ratios


def images(n: int, seed: int, side: int = 320) -> list:
    from siglite.data.synthetic import generate

    out = []
    for i, s in enumerate(generate(n, seed, side)):
        h, w = ASPECTS[i % len(ASPECTS)]
        scale = side / max(h, w)
        out.append(s.image.resize((max(16, int(w * scale)), max(16, int(h * scale)))))
    return out


def run(args, work: Path) -> tuple[list[dict], dict]:
    from transformers import Siglip2VisionModel

    import siglite
    from siglite.checkpoints import random_model, save_checkpoint
    from siglite.preprocess import naflex
    from siglite.registry import get_spec
    from siglite.tasks.quantize import quantize

    say = (lambda s: print(f"[naflex_speed] {s}", file=sys.stderr, flush=True))
    torch.set_num_threads(args.threads)
    spec = get_spec(SPEC)
    src = save_checkpoint(random_model(spec, seed=args.seed, vision_layers=args.layers, text=False), work / "fp32",
                          spec)
    say(f"quantizing at max_num_patches={args.max_num_patches} on {args.calib} generated images "
        f"({args.check} held out)")
    t0 = time.perf_counter()
    report = quantize(src, images(args.calib + args.check, 100), work / "int8", num_calib=args.calib,
                      num_check=args.check, max_num_patches=args.max_num_patches, progress=say)
    quant_s = time.perf_counter() - t0

    hf = Siglip2VisionModel.from_pretrained(str(src), attn_implementation="sdpa").eval()
    fp32 = siglite.load(src, engine="torch", device="cpu")
    int8 = siglite.load(work / "int8", engine="onnxruntime", threads=args.threads)

    @torch.inference_mode()
    def transformers_fp32(b):
        return hf(pixel_values=torch.from_numpy(b.patches), pixel_attention_mask=torch.from_numpy(b.mask),
                  spatial_shapes=torch.from_numpy(b.spatial_shapes)).pooler_output.numpy()

    fns = {"transformers Siglip2VisionModel (sdpa) fp32": transformers_fp32,
           "siglite torch fp32": lambda b: fp32.engine.encode_image(b.patches, spatial_shapes=b.spatial_shapes)[0],
           "siglite INT8 (onnxruntime)": lambda b: int8.engine.encode_image(b.patches,
                                                                         spatial_shapes=b.spatial_shapes)[0]}
    records = []
    cfg = fp32.image_config
    for bs in args.batches:
        batch, _, _ = naflex.preprocess_batch(images(bs, bs), cfg, max_num_patches=args.max_num_patches,
                                              pad_to=args.max_num_patches)
        say(f"timing batch {bs} (grids {[tuple(int(v) for v in s) for s in batch.spatial_shapes[:5]]}), "
            f"{args.rounds} interleaved rounds")
        records += speed_records(fns, batch, bs, args.rounds, args.threads, model=SPEC, layers=args.layers or 12,
                                 max_num_patches=args.max_num_patches)
    quant = int8_summary(report, quant_s, args.calib, args.check)
    return records, quant


def markdown(records: list[dict], quant: dict) -> str:
    lines, loads = speed_table(records, "pooled")
    r0 = records[0]
    lines += ["", f"{SPEC} shape ({r0['layers']} layers), random weights, vision tower, max_num_patches "
                  f"{r0['max_num_patches']} (aspect ratios 1:1, 3:4, 4:3, 9:16, 3:1), {r0['threads']} threads, median "
                  f"of {len(r0['rounds_s'])} interleaved rounds. 1-minute load average during timing: {loads}. INT8 "
                  f"(calibrated on {quant['calib']} generated images, {quant['cpu_isa']}): tokens cosine mean "
                  f"{quant['tokens_cosine_mean']:.4f} / 1%-low {quant['tokens_cosine_p1']:.4f}, pooled cosine mean "
                  f"{quant['embed_cosine_mean']:.4f} / 1%-low {quant['embed_cosine_p1']:.4f} on {quant['check']} "
                  f"held-out images; {len(quant['float32_layers'])} layer(s) kept in fp32."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_speed_args(p, [8], "naflex_speed.json")
    p.add_argument("--max-num-patches", type=int, default=256)
    p.add_argument("--layers", type=int, default=None, help="vision depth override (default: the spec's 12)")
    return run_speed(p.parse_args(argv), run, markdown)


if __name__ == "__main__":
    sys.exit(main())
