"""siglite synth: write the procedural coloured-shapes dataset (images, class folders, captions JSONL)."""

import argparse

from .common import add_format_arg, add_overwrite_arg, add_quiet_arg, emit, nonnegative_int, positive_int, \
    progress_bar

# Spelled here so that `siglite --help` does not import the generator (tests check them against data.synthetic).
N_CLASSES, DEFAULT_IMAGE_SIZE = 25, 32


def register(sub):
    p = sub.add_parser("synth", help="write a procedural image-caption dataset of coloured shapes",
                       description=f"Write {N_CLASSES} classes (colour x shape) of generated images as an "
                                   "ImageNet-style folder (one sub-folder per class, classnames.txt) and, with "
                                   "--jsonl, captions.jsonl for retrieval and training. Same seed -> same bytes.",
                       epilog="examples:\n  siglite synth --out shapes-train --per-class 400 --seed 0 --jsonl\n"
                              "  siglite synth --out shapes-test --per-class 20 --seed 1",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", "-o", required=True, help="output folder (new or empty; see --overwrite)")
    p.add_argument("--per-class", type=positive_int, default=20, help="images per class (default: 20)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default: 0)")
    p.add_argument("--image-size", type=positive_int, default=DEFAULT_IMAGE_SIZE,
                   help=f"image side in pixels (default: {DEFAULT_IMAGE_SIZE})")
    p.add_argument("--jsonl", action="store_true", help="also write captions.jsonl ({image, captions, label} per line)")
    add_overwrite_arg(p, "dataset (a folder holding classnames.txt)")
    add_quiet_arg(p)
    p.add_argument("--multi-label", action="store_true",
                   help="instead: --count scenes of 1-3 shapes, images/ + labels.csv (0/1 column per shape), for "
                        "`siglite finetune --multi-label`")
    p.add_argument("--count", type=positive_int, default=500, help="with --multi-label: number of scenes (default: 500)")
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    from ..data.synthetic import write_folder, write_multilabel
    from ..fileio import check_output_dir

    if args.multi_label:
        check_output_dir(args.out, overwrite=args.overwrite, markers=("labels.csv",), what="dataset")
        emit([write_multilabel(args.out, args.count, args.seed, args.image_size)], args.format)
        return

    check_output_dir(args.out, overwrite=args.overwrite, markers=("classnames.txt",), what="dataset")
    with progress_bar(args, args.per_class * N_CLASSES, "synth", "img") as bar:
        record = write_folder(args.out, args.per_class, args.seed, args.image_size, jsonl=args.jsonl,
                              overwrite=args.overwrite, progress=bar)
    emit([record], args.format)
