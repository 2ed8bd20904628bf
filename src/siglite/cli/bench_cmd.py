"""siglite bench: latency and throughput of the vision tower per engine, precision, batch size and mode."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (add_format_arg, add_max_num_patches_arg, add_overwrite_arg, add_quiet_arg, check_out_file, device,
                     emit, nonnegative_int, positive_int, progress_bar)

EPILOG = """examples:
  siglite bench --spec siglip-base-patch16-224 --batch-sizes 8 --baseline transformers
  siglite bench --model ./my-siglip --precision float32 bfloat16 --mode model e2e --out bench.json bench.csv
  siglite bench --model ./my-siglip --engine torch onnxruntime --images photos/ --mode e2e --plot bench.png
  siglite bench --model ./my-siglip-int8 --batch-sizes 1 8          # engine and precision from its siglite.json
  siglite bench --spec siglip2-base-patch16-naflex --max-num-patches 256 --batch-sizes 8 --baseline transformers

--spec times random weights at a real architecture's shape (vision tower only; nothing is downloaded).
SigLIP 2 NaFlex runs at one fixed patch budget (--max-num-patches; default an exported folder's, else the
checkpoint's): every target gets the same patches, each image at its aspect ratio, padded to the budget.
ratio_vs_transformers = the transformers reference's median latency / ours, at the same precision, batch and mode
(> 1 means faster). peak_memory_mb = memory added during the timed run (CUDA: max allocated; CPU: peak RSS)."""


def register(sub):
    p = sub.add_parser("bench", help="benchmark latency (p50/p90/p99) and throughput of the vision tower",
                       description="Time the vision tower: model-only (preprocessed pixels) and end-to-end "
                                   "(decode + preprocess + encode), with warm-up and synchronised GPU timing.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", "-m", help="checkpoint folder, hub id, or a name from `siglite list`")
    what.add_argument("--spec", help="architecture name: random weights at its shape (e.g. siglip-base-patch16-224)")
    p.add_argument("--layers", type=positive_int, default=None,
                   help="with --spec: vision depth override for quick runs")
    p.add_argument("--engine", nargs="+", default=[None],
                   help="engines to time (default: the folder's own: an exported folder's siglite.json, else torch)")
    p.add_argument("--precision", nargs="+", default=[None],
                   help="precisions to time (default: the engine's; float32 for torch, fixed for an exported folder)")
    p.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--revision", default=None, help="hub revision (with --model and a hub id)")
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 8, 16, 32], help="default: 1 8 16 32")
    p.add_argument("--mode", nargs="+", choices=["model", "e2e"], default=["model"],
                   help="model: encode preprocessed pixels (default); e2e: decode + preprocess + encode")
    p.add_argument("--iters", type=positive_int, default=20, help="timed iterations per measurement (default: 20)")
    p.add_argument("--warmup", type=nonnegative_int, default=3, help="untimed iterations first (default: 3)")
    p.add_argument("--baseline", choices=["transformers"], default=None,
                   help="also time the transformers reference and report ratio_vs_transformers")
    p.add_argument("--images", nargs="+", default=None,
                   help="image files or folders for e2e (default: synthetic 640x480 JPEGs)")
    p.add_argument("--preprocess", choices=["resize", "letterbox"], default="resize")
    p.add_argument("--decode", choices=["cpu", "gpu"], default="cpu",
                   help="e2e: decode + preprocess on the CPU (default) or on the GPU (nvJPEG, needs torchvision)")
    add_max_num_patches_arg(p, "SigLIP 2 NaFlex models: the patch budget every target runs at (default: an exported "
                               "folder's, else the checkpoint's, 256 for the hub checkpoints); an error for others")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", "-o", nargs="+", default=[], help="write records to .json and/or .csv files")
    p.add_argument("--plot", default=None, help="write a throughput chart to this PNG (needs matplotlib)")
    add_overwrite_arg(p, "--out / --plot file")
    add_quiet_arg(p)
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    from ..errors import SigliteError
    from ..tasks.bench import RECORD_SUFFIXES, TABLE_COLUMNS, bench, bench_spec, plot_records, write_records

    for path in args.out:  # before the timing, which can take minutes
        if Path(path).suffix.lower() not in RECORD_SUFFIXES:
            raise SigliteError(f"--out {path}: records are written as .json or .csv")
        check_out_file(args, path)
    check_out_file(args, args.plot, "--plot")
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise SigliteError("--plot needs matplotlib; pip install 'siglite[plot]'")
    images = None
    if args.images:
        from ..data.datasets import list_images

        images = [p for src in args.images for p in (list_images(src) if Path(src).is_dir() else [Path(src)])]
    kw = dict(engines=args.engine, precisions=args.precision, batch_sizes=args.batch_sizes, modes=args.mode,
              iters=args.iters, warmup=args.warmup, device=args.device, baseline=args.baseline, images=images,
              preprocess=args.preprocess, threads=args.threads, decode=args.decode,
              max_num_patches=args.max_num_patches)
    if args.layers is not None and not args.spec:
        raise SigliteError("--layers applies to --spec (random weights), not to --model")
    targets = (len(args.engine) + (1 if args.baseline else 0)) * len(args.precision)
    total = targets * len(args.mode) * len(args.batch_sizes)
    with progress_bar(args, total, "bench", "run") as bar:
        if args.spec:
            records = bench_spec(args.spec, vision_layers=args.layers, progress=bar, **kw)
        else:
            from ..checkpoints import resolve

            records = bench(resolve(args.model, revision=args.revision), label=args.model, progress=bar, **kw)
    for path in args.out:
        write_records(records, path)
    if args.plot:
        plot_records(records, args.plot)
    emit(records, args.format, columns=None if args.format == "json" else TABLE_COLUMNS)
