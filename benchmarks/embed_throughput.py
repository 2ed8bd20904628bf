"""End-to-end `siglite embed` throughput against engine-only throughput, same engine and batch, one run.

Writes N photo-like 640x480 JPEGs to a temp folder, saves a random-weight vision tower at a real shape (default
siglip-base-patch16-224), then measures:

* ``engine``: ``engine.encode_image`` on pixels preprocessed beforehand (the ceiling: no file reading or decoding);
* ``embed-<executor>``: ``siglite.tasks.embed.embed`` on the folder (list, read, decode, preprocess, encode, write
  shards, manifest), with decode workers in threads and/or processes.

The issue's target is embed >= 90% of engine. Usage::

    python benchmarks/embed_throughput.py                       # base-224, 256 images, batch 32, threads
    python benchmarks/embed_throughput.py --executor both --json results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import siglite
from siglite.preprocess.image import preprocess_batch
from siglite.registry import get_spec
from siglite.tasks.embed import default_workers, embed
from siglite.checkpoints import random_model, save_checkpoint


def write_photos(folder: Path, n: int, size=(640, 480), seed: int = 0) -> list[Path]:
    """Photo-like JPEGs (smooth gradients, shapes, sensor noise; quality 90) so decoding costs what a real one does."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx * np.cos(i) + yy * np.sin(i)) / (w + h) + 0.5
        base = c0 * (1 - t[..., None]) + c1 * t[..., None]
        img = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            box = (x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200)))
            draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        path = folder / f"photo_{i:05d}.jpg"
        img.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def engine_throughput(model, paths: list[Path], batch_size: int) -> dict:
    pixels, _, _ = preprocess_batch([str(p) for p in paths], model.image_config, "resize")
    model.engine.encode_image(pixels[:batch_size])  # warm-up
    t0 = time.perf_counter()
    for start in range(0, len(pixels), batch_size):
        model.engine.encode_image(pixels[start:start + batch_size])
    seconds = time.perf_counter() - t0
    return {"mode": "engine", "images": len(pixels), "seconds": round(seconds, 3),
            "images_per_s": round(len(pixels) / seconds, 2)}


def embed_throughput(model, folder: Path, out: Path, batch_size: int, workers: int, executor: str) -> dict:
    t0 = time.perf_counter()
    record = embed(model, folder, out, batch_size=batch_size, workers=workers, executor=executor, progress=False)
    seconds = time.perf_counter() - t0
    return {"mode": f"embed-{executor}", "images": record["embedded"], "seconds": round(seconds, 3),
            "images_per_s": round(record["embedded"] / seconds, 2)}


def run(spec_name: str, n_images: int, batch_size: int, workers: int, executors: list[str], engine: str,
        precision: str | None, vision_layers: int | None) -> list[dict]:
    """Returns flat records (one per mode) with engine, shape, batch, workers and the ratio to engine-only."""
    spec = get_spec(spec_name)
    with tempfile.TemporaryDirectory(prefix="siglite-embed-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "photos").mkdir()
        paths = write_photos(tmp / "photos", n_images)
        folder = save_checkpoint(random_model(spec, text=False, vision_layers=vision_layers), tmp / "model", spec)
        model = siglite.load(folder, engine=engine, dtype=precision)
        # The engine once over the data before timing anything: first-call allocations and page cache.
        engine_throughput(model, paths[:batch_size], batch_size)
        records = [engine_throughput(model, paths, batch_size)]
        for executor in executors:
            records.append(embed_throughput(model, tmp / "photos", tmp / f"out-{executor}", batch_size, workers,
                                            executor))
    base = records[0]["images_per_s"]
    common = {"spec": spec_name, "engine": model.engine.name, "precision": model.engine.precision,
              "batch_size": batch_size, "workers": workers}
    return [{**common, **r, "vs_engine": round(r["images_per_s"] / base, 3)} for r in records]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="siglip-base-patch16-224")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--executor", choices=["thread", "process", "both"], default="thread")
    p.add_argument("--engine", default="torch")
    p.add_argument("--precision", default=None)
    p.add_argument("--vision-layers", type=int, default=None, help="fewer blocks for a quick check (default: all)")
    p.add_argument("--json", default=None, help="also write the records to this file")
    args = p.parse_args(argv)
    executors = ["thread", "process"] if args.executor == "both" else [args.executor]
    records = run(args.spec, args.images, args.batch_size, args.workers, executors, args.engine, args.precision,
                  args.vision_layers)
    cols = ["mode", "images", "seconds", "images_per_s", "vs_engine"]
    print(f"{args.spec}, engine {records[0]['engine']} {records[0]['precision']}, batch {args.batch_size}, "
          f"{args.workers} decode workers, {args.images} JPEGs 640x480")
    print("  ".join(f"{c:>13}" for c in cols))
    for r in records:
        print("  ".join(f"{r[c]:>13}" for c in cols))
    worst = min(r["vs_engine"] for r in records[1:])
    print(f"end-to-end / engine-only: {worst:.1%} (target >= 90%)")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
