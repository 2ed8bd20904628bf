"""siglite info: what a checkpoint is and how it preprocesses."""

import argparse

from .common import add_format_arg, add_model_args, emit, load_model


def register(sub):
    p = sub.add_parser("info", help="show a checkpoint's shapes, preprocessing and tokenizer",
                       description="Load a checkpoint and show its towers, preprocessing and tokenizer settings.",
                       epilog="examples:\n  siglite info --model google/siglip-so400m-patch14-384\n"
                              "  siglite info --model ./my-siglip --format json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    model = load_model(args)
    info = model.describe()
    if args.format == "json":
        emit(info, "json")
    else:
        emit([{"field": k, "value": v} for k, v in info.items()], "table")
