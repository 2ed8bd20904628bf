"""siglite export: a checkpoint's towers as ONNX or OpenVINO graphs plus a sidecar, served by `siglite.load(DIR)`."""

import argparse

from .common import (add_layer_args, add_max_num_patches_arg, add_overwrite_arg, add_quiet_arg, check_output_folder,
                     emit, layer_value, warn)

EPILOG = """examples:
  siglite export --model google/siglip-base-patch16-224 --graph-format onnx --out siglip-onnx
  siglite classify cat.jpg --model siglip-onnx --labels cat dog
  siglite export --model google/siglip2-base-patch16-naflex --max-num-patches 576 --out naflex-576

--format is table or json, as in every command (--format onnx|openvino still works, deprecated: use --graph-format).
The folder is built beside OUT and moved into place when complete; an existing export is replaced only with
--overwrite."""


def register(sub):
    p = sub.add_parser("export", help="export to ONNX or OpenVINO (vision + text graphs and a sidecar)",
                       description="Export the vision tower (pooler_output and last_hidden_state, dynamic batch) "
                                   "and the text tower as separate graphs, with siglite.json carrying "
                                   "preprocessing, tokenizer, logit scale/bias, dims and the engine that "
                                   "serves it (siglite.load picks it up).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", required=True, help="checkpoint folder, hub id, or a name from `siglite list`")
    p.add_argument("--graph-format", "--to", choices=["onnx", "openvino"], default=None,
                   help="graph format (default: onnx)")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    add_layer_args(p, "export the vision tower cut at a layer: its output is the tokens")
    add_max_num_patches_arg(p, "SigLIP 2 NaFlex models: the fixed patch budget of the vision graph (default: the "
                               "checkpoint's, 256 for the hub checkpoints); smaller budgets are padded up to it at "
                               "run time. An error for other models")
    p.add_argument("--format", choices=["table", "json", "onnx", "openvino"], default="table",
                   help="how to print the result: table (default) or json")
    p.add_argument("--output-format", dest="format", choices=["table", "json"], help=argparse.SUPPRESS)  # deprecated
    add_overwrite_arg(p, "export")
    add_quiet_arg(p)
    p.set_defaults(run=run)


def run(args):
    import time

    from ..errors import SigliteError
    from ..export import export
    from ..fileio import staged_dir

    if args.format in ("onnx", "openvino"):
        if args.graph_format not in (None, args.format):
            raise SigliteError(f"--format {args.format} and --graph-format {args.graph_format} disagree")
        warn(args, f"--format {args.format} is deprecated for the graph format; use --graph-format {args.format}")
        args.graph_format, args.format = args.format, "table"
    graph_format = args.graph_format or "onnx"
    from ..progress import enabled

    check_output_folder(args, args.out, markers=("siglite.json",), what="export")
    t0 = time.perf_counter()
    show = enabled(args.quiet)  # the exporter reports no steps: a start and an end line, for a person watching
    if show:
        warn(args, f"exporting {args.model} to {graph_format} (vision + text graphs; a minute for a base model) ...")
    with staged_dir(args.out) as tmp:
        sidecar = export(args.model, tmp, graph_format, revision=args.revision, layer=layer_value(args),
                         post_norm=args.post_norm, max_num_patches=args.max_num_patches)
    if show:
        warn(args, f"exported in {time.perf_counter() - t0:.1f} s")
    emit([{"out": args.out, "format": sidecar.format, "engine": sidecar.engine, "precision": sidecar.precision,
           "graphs": ", ".join(f"{k}={v}" for k, v in sidecar.files.items())}], args.format)
