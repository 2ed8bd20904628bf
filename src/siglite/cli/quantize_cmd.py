"""siglite quantize: INT8 post-training quantization with calibration images; writes an exported folder and a
report (quant_report.json / .md) that `siglite.load(DIR)` and every command serve like any model."""

from .common import add_format_arg, add_layer_args, emit, layer_value


def register(sub):
    from ..quant.int8 import RECIPES, Target
    from ..quant.quantize import ENGINES

    p = sub.add_parser("quantize", help="INT8 post-training quantization (calibrated, outlier-aware)",
                       description="Quantize the linear layers of both towers to INT8 (per-channel weights, "
                                   "SmoothQuant outlier migration chosen per layer, a measured sensitivity pass "
                                   "that keeps damaging layers in float32) and export ONNX graphs for the engine.",
                       epilog="example: siglite quantize --model google/siglip-base-patch16-224 --calib photos/ "
                              "--out siglip-int8\n         siglite classify cat.jpg --model siglip-int8 "
                              "--labels cat dog")
    p.add_argument("--model", "-m", required=True, help="checkpoint folder, hub id, or a name from `siglite list`")
    p.add_argument("--calib", required=True,
                   help="calibration images: folder, glob, list file, tar shards or parquet (as `siglite embed`)")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--engine", choices=ENGINES, default="onnxruntime", help="runtime that serves the INT8 graphs")
    p.add_argument("--num-calib", type=int, default=256, help="calibration images (default: %(default)s)")
    p.add_argument("--num-check", type=int, default=16,
                   help="further images and texts held out to measure fidelity (default: %(default)s)")
    p.add_argument("--calib-text", default=None, help="text file, one calibration text per line (default: built-in)")
    p.add_argument("--recipe", choices=list(RECIPES), default="siglite",
                   help="siglite (default); dynamic and naive are the plain conversions, for comparison")
    p.add_argument("--target", type=float, default=Target.mean,
                   help="cosine mean every output must reach on held-out inputs (default: %(default)s)")
    p.add_argument("--target-low", type=float, default=Target.low,
                   help="1%%-low cosine every output must reach (default: %(default)s)")
    p.add_argument("--sensitivity-samples", type=int, default=4,
                   help="held-out images (and texts) per per-layer measurement; 0 measures only when the fully "
                        "quantized model misses the target (default: %(default)s)")
    p.add_argument("--preprocess", choices=["resize", "letterbox"], default="resize")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    add_layer_args(p, "quantize the vision tower cut at a layer: its output is the tokens")
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    import sys

    from ..quant.int8 import Target
    from ..quant.quantize import quantize

    if args.num_calib < 1 or args.num_check < 1:
        raise ValueError("--num-calib and --num-check must be at least 1")
    rep = quantize(args.model, args.calib, args.out, engine=args.engine, recipe=args.recipe,
                   target=Target(args.target, args.target_low), num_calib=args.num_calib, num_check=args.num_check,
                   calib_texts=args.calib_text, preprocess=args.preprocess,
                   sensitivity_samples=args.sensitivity_samples, revision=args.revision,
                   progress=lambda line: print(line, file=sys.stderr), layer=layer_value(args),
                   post_norm=args.post_norm)
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
