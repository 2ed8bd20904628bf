"""siglite torch fp32 vs transformers SiglipVisionModel (SDPA) fp32, same random base-224 weights, same pixels.

Timings alternate siglite / transformers every iteration, so a loaded or throttling machine biases neither side;
the ratio is transformers' median latency over ours (> 1: siglite is faster). Also checks the outputs agree.

    python benchmarks/core_speed.py [--spec siglip-base-patch16-224] [--batch 8] [--iters 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    from transformers import SiglipVisionModel

    from siglite.registry import get_spec
    from siglite.checkpoints import random_model, save_checkpoint

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="siglip-base-patch16-224")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=8)
    args = ap.parse_args()
    spec = get_spec(args.spec)
    ours = random_model(spec, text=False)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ours, d, spec)
        ref = SiglipVisionModel.from_pretrained(d, attn_implementation="sdpa").eval()
    size = spec.vision["image_size"]
    x = torch.randn(args.batch, 3, size, size)
    times = {"siglite": [], "transformers": []}
    runs = {"siglite": lambda: ours.vision(x), "transformers": lambda: ref(pixel_values=x)}
    with torch.inference_mode():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(args.iters):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        diff = (ours.vision(x)[0] - ref(pixel_values=x).last_hidden_state).abs().max().item()
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(f"{args.spec}, batch {args.batch}, fp32, {torch.get_num_threads()} threads, {args.iters} alternating iters")
    for name, t in med.items():
        print(f"  {name:13s} p50 {t * 1000:8.1f} ms/batch  {args.batch / t:7.2f} img/s")
    print(f"  ratio (transformers p50 / siglite p50): {med['transformers'] / med['siglite']:.3f}")
    print(f"  worst |Δ| last_hidden_state: {diff:.2e}")


if __name__ == "__main__":
    main()
