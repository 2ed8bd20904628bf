"""siglite quantize: INT8 post-training quantization with calibration images; writes an exported folder and a
report (quant_report.json / .md) that `siglite.load(DIR)` and every command serve like any model."""

import argparse

from .common import add_format_arg, add_layer_args, add_max_num_patches_arg, add_overwrite_arg, add_quiet_arg, \
    check_output_folder, emit, existing_file, layer_value, nonnegative_int, positive_int

# Spelled here, not imported: `siglite --help` must not import torch (tests/test_cli.py checks these against
# quant.int8.RECIPES / FidelityTarget and tasks.quantize.ENGINES).
RECIPES = ("siglite", "dynamic", "naive")
ENGINES = ("onnxruntime", "openvino")
TARGET_MEAN, TARGET_LOW = 0.998, 0.995


def register(sub):
    p = sub.add_parser("quantize", help="INT8 post-training quantization (calibrated, outlier-aware)",
                       description="Quantize the linear layers of both towers to INT8 (per-channel weights, "
                                   "SmoothQuant outlier migration chosen per layer, massive-activation channels of "
                                   "fc2 computed in float32 beside the INT8 product) and export ONNX graphs for the "
                                   "engine. The written model is measured in that runtime; only if it misses the "
                                   "target does a simulated sensitivity pass keep the most damaging layers in "
                                   "float32. Weights are 8-bit, stored for this CPU's integer kernels: signed where "
                                   "u8*s8 products accumulate exactly (VNNI, AMX, ARM dot product), offset by 128 "
                                   "for exact u8*u8 kernels where they saturate (AVX2 only); SIGLITE_CPU_ISA=avx2 or "
                                   "avx512_vnni quantizes for another CPU, and engines convert losslessly at load.",
                       epilog="examples:\n"
                              "  siglite quantize --model google/siglip-base-patch16-224 --calib photos/ "
                              "--out siglip-int8\n  siglite classify cat.jpg --model siglip-int8 --labels cat dog\n"
                              "  siglite quantize --model google/siglip2-base-patch16-naflex --calib photos/ "
                              "--max-num-patches 256 --out naflex-int8",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", required=True, help="checkpoint folder, hub id, or a name from `siglite list`")
    p.add_argument("--calib", required=True,
                   help="calibration images: folder, glob, list file, tar shards or parquet (as `siglite embed`)")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--engine", choices=ENGINES, default="onnxruntime", help="runtime that serves the INT8 graphs")
    p.add_argument("--num-calib", type=positive_int, default=64,
                   help="calibration images (default: %(default)s; 128 measured no better, and the statistics pass "
                        "over them is most of the time)")
    p.add_argument("--num-check", type=positive_int, default=16,
                   help="further images and texts held out to measure fidelity (default: %(default)s)")
    p.add_argument("--calib-text", type=existing_file, default=None,
                   help="text file, one calibration text per line (default: built-in)")
    p.add_argument("--weight-bits", type=int, choices=(8, 7), default=8,
                   help="8 (default): exact on every CPU, stored offset by 128 for u8*u8 kernels where u8*s8 ones "
                        "saturate (AVX2 without VNNI); 7: signed weights within +-63, exact with u8*s8 kernels "
                        "everywhere: on such CPUs ~15%% faster, with ~3x the error (measured on base-224)")
    p.add_argument("--recipe", choices=RECIPES, default="siglite",
                   help="siglite (default); dynamic and naive are the plain conversions, for comparison")
    p.add_argument("--target", type=float, default=TARGET_MEAN,
                   help="cosine mean every output must reach on held-out inputs (default: %(default)s)")
    p.add_argument("--target-low", type=float, default=TARGET_LOW,
                   help="1%%-low cosine every output must reach (default: %(default)s)")
    p.add_argument("--sensitivity-samples", type=nonnegative_int, default=0,
                   help="held-out images (and texts) per per-layer sensitivity measurement, reported per layer; 0 "
                        "(default) runs that pass only when the fully quantized model misses the target")
    p.add_argument("--preprocess", choices=["resize", "letterbox"], default="resize")
    add_max_num_patches_arg(p, "SigLIP 2 NaFlex models: the fixed patch budget of the INT8 vision graph; calibration "
                               "images are cut into at most N patches at their aspect ratio (default: the "
                               "checkpoint's, 256 for the hub checkpoints). An error for other models")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    add_overwrite_arg(p, "quantized folder")
    add_quiet_arg(p)
    add_layer_args(p, "quantize the vision tower cut at a layer: its output is the tokens")
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    import shutil
    import sys
    from pathlib import Path

    from ..quant.int8 import FidelityTarget
    from ..tasks.quantize import quantize

    check_output_folder(args, args.out, markers=("siglite.json", "quant_report.json"), what="quantized model")
    if args.overwrite and Path(args.out).is_dir():
        shutil.rmtree(args.out)  # checked above: a folder this command wrote
    rep = quantize(args.model, args.calib, args.out, engine=args.engine, recipe=args.recipe,
                   target=FidelityTarget(args.target, args.target_low), num_calib=args.num_calib,
                   num_check=args.num_check,
                   calib_texts=args.calib_text, preprocess=args.preprocess,
                   sensitivity_samples=args.sensitivity_samples, revision=args.revision,
                   progress=None if args.quiet else (lambda line: print(line, file=sys.stderr)),
                   layer=layer_value(args), post_norm=args.post_norm, max_num_patches=args.max_num_patches,
                   weight_bits=args.weight_bits)
    rows = []
    for output, s in rep["fidelity"]["runtime"].items():
        if isinstance(s, dict):
            rows.append({"output": output, "cosine_mean": s["mean"], "cosine_min": s["min"], "cosine_p1": s["p1"]})
        else:
            rows.append({"output": output, "cosine_mean": s})
    if args.format == "json":
        emit({"out": args.out, "float32_layers": rep["float32_layers"], "fidelity": rep["fidelity"]["runtime"],
              "report": f"{args.out}/quant_report.json"}, "json")
    else:
        emit(rows, "table", columns=["output", "cosine_mean", "cosine_min", "cosine_p1"])
        kept = rep["float32_layers"]
        print(f"{len(rep['layers']) - len(kept)}/{len(rep['layers'])} linear layers in INT8; report: "
              f"{args.out}/quant_report.md")
