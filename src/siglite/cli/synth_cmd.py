"""siglite synth: write the procedural coloured-shapes dataset (images, class folders, captions JSONL)."""

from .common import add_format_arg, emit


def register(sub):
    from ..tasks.synthetic import CLASSNAMES, DEFAULT_IMAGE_SIZE

    p = sub.add_parser("synth", help="write a procedural image-caption dataset of coloured shapes",
                       description=f"Write {len(CLASSNAMES)} classes (colour x shape) of generated images as an "
                                   "ImageNet-style folder (one sub-folder per class, classnames.txt) and, with "
                                   "--jsonl, captions.jsonl for retrieval and training. Same seed -> same bytes.",
                       epilog="examples:\n  siglite synth --out shapes-train --per-class 400 --seed 0 --jsonl\n"
                              "  siglite synth --out shapes-test --per-class 20 --seed 1")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--per-class", type=int, default=20, help="images per class (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                   help=f"image side in pixels (default: {DEFAULT_IMAGE_SIZE})")
    p.add_argument("--jsonl", action="store_true", help="also write captions.jsonl ({image, captions, label} per line)")
    p.add_argument("--multi-label", action="store_true",
                   help="instead: --count scenes of 1-3 shapes, images/ + labels.csv (0/1 column per shape), for "
                        "`siglite finetune --multi-label`")
    p.add_argument("--count", type=int, default=500, help="with --multi-label: number of scenes (default: 500)")
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    from ..tasks.synthetic import write_folder, write_multilabel

    if args.multi_label:
        if args.count < 1:
            raise ValueError(f"--count must be >= 1, got {args.count}")
        emit([write_multilabel(args.out, args.count, args.seed, args.image_size)], args.format)
        return

    if args.per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {args.per_class}")
    emit([write_folder(args.out, args.per_class, args.seed, args.image_size, jsonl=args.jsonl)], args.format)
