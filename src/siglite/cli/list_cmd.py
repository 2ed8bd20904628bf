"""siglite list: the known architectures."""

import argparse

from .common import add_format_arg, emit


def register(sub):
    p = sub.add_parser("list", help="list known SigLIP and CLIP architectures",
                       description="List the SigLIP and CLIP architectures siglite knows (hub id, resolution, widths).",
                       epilog="examples:\n  siglite list\n  siglite list --format json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    from ..registry import list_models

    rows = [{"name": s.name, "family": s.family, "hub_id": s.hub_id, "image": s.vision["image_size"],
             "patch": s.vision["patch_size"], "tokens": s.vision_config.num_tokens, "width": s.vision["hidden_size"],
             "text_len": s.text["max_position_embeddings"], "tokenizer": s.tokenizer} for s in list_models()]
    emit(rows, args.format)
