"""siglite export: a checkpoint's towers as ONNX or OpenVINO graphs plus a sidecar, served by `siglite.load(DIR)`."""

from .common import add_layer_args, emit, layer_value


def register(sub):
    p = sub.add_parser("export", help="export to ONNX or OpenVINO (vision + text graphs and a sidecar)",
                       description="Export the vision tower (pooler_output and last_hidden_state, dynamic batch) "
                                   "and the text tower as separate graphs, with siglite.json carrying "
                                   "preprocessing, tokenizer, logit scale/bias, dims and the engine that "
                                   "serves it (siglite.load picks it up).",
                       epilog="example: siglite export --model google/siglip-base-patch16-224 --format onnx "
                              "--out siglip-onnx\n         siglite classify cat.jpg --model siglip-onnx "
                              "--labels cat dog")
    p.add_argument("--model", "-m", required=True, help="checkpoint folder, hub id, or a name from `siglite list`")
    p.add_argument("--format", dest="graph_format", choices=["onnx", "openvino"], default="onnx",
                   help="graph format (default: onnx)")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    add_layer_args(p, "export the vision tower cut at a layer: its output is the tokens")
    # --format names the graph format here (as the command line has it), so output is --output-format
    p.add_argument("--output-format", dest="format", choices=["table", "json"], default="table",
                   help="how to print the result (default: table)")
    p.set_defaults(run=run)


def run(args):
    from ..export import export

    sidecar = export(args.model, args.out, args.graph_format, revision=args.revision, layer=layer_value(args),
                     post_norm=args.post_norm)
    emit([{"out": args.out, "format": sidecar.format, "engine": sidecar.engine, "precision": sidecar.precision,
           "graphs": ", ".join(f"{k}={v}" for k, v in sidecar.files.items())}], args.format)
