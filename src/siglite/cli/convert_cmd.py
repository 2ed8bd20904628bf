"""siglite convert: any checkpoint layout siglite loads -> a hub-layout folder transformers 4.x/5.x and siglite load."""

import argparse

from .common import add_format_arg, emit


def register(sub):
    p = sub.add_parser("convert", help="rewrite a checkpoint (transformers 4.x/5.x, open_clip/timm) in the hub layout",
                       description="Write SRC (a folder in any layout siglite loads, a hub id or a name from "
                                   "`siglite list`) as config.json + model.safetensors + preprocessor_config.json + "
                                   "processor_config.json + tokenizer files, which transformers 4.x and 5.x and "
                                   "siglite all load. The result is loaded back and compared (parity printed).",
                       epilog="examples:\n  siglite convert ./ViT-B-16-SigLIP --out ./siglip-b16-hub\n"
                              "  siglite convert ./tf4-checkpoint --out ./hub --overwrite",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="checkpoint folder, hub id, or a name from `siglite list`")
    p.add_argument("--out", "-o", required=True, help="output folder (must not exist, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickle weights (*.bin) from a trusted source")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    from ..tasks.convert import convert

    result = convert(args.src, args.out, overwrite=args.overwrite, revision=args.revision,
                     allow_pickle=args.allow_pickle)
    if args.format == "json":
        emit([result], "json")
    else:
        emit([{"field": k, "value": f"{v:.2e}" if isinstance(v, float) else v} for k, v in result.items() if v != ""],
             "table")
