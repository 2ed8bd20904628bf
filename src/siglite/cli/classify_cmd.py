"""siglite classify: zero-shot sigmoid probabilities for images against labels."""

import argparse

from .common import (add_batch_size_arg, add_format_arg, add_max_num_patches_arg, add_model_args, add_quiet_arg, emit,
                     existing_file, load_model, positive_int, progress_bar, template, warn)

EPILOG = """examples:
  siglite classify cat.jpg --model google/siglip-base-patch16-224 --labels cat dog "red car" --preprocess letterbox
  siglite classify photos/*.jpg --model M --labels-file imagenet-classes.txt --top 5 --format json
  siglite classify photos/*.jpg --model M --labels cat dog --skip-bad

--format json prints one record per image with its labels sorted best first: {"image", "labels": [{label, score}]}
(the form transformers' zero-shot-image-classification pipeline returns)."""


def register(sub):
    p = sub.add_parser("classify", help="zero-shot classify images (sigmoid probabilities)",
                       description="Score every image against every label independently (SigLIP's sigmoid).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files")
    add_model_args(p)
    p.add_argument("--labels", nargs="+", default=[], help="candidate labels")
    p.add_argument("--labels-file", type=existing_file, default=None,
                   help="file of candidate labels, one per non-blank line (added after --labels)")
    p.add_argument("--template", type=template, default="This is a photo of {}.",
                   help='prompt template with one {} for the label (default: "%(default)s")')
    p.add_argument("--preprocess", choices=["resize", "letterbox"], default="resize",
                   help="resize: the checkpoint's processor (default); letterbox: aspect-preserving, gray 127 padding")
    add_max_num_patches_arg(p)
    p.add_argument("--top", type=positive_int, default=None, help="show only the K most probable labels per image")
    add_batch_size_arg(p)
    p.add_argument("--skip-bad", action="store_true",
                   help="skip images that cannot be decoded (each reported on stderr) instead of stopping")
    add_quiet_arg(p)
    add_format_arg(p)
    p.set_defaults(run=run)


def read_labels(args) -> list[str]:
    """--labels then the lines of --labels-file; at least one label."""
    from ..errors import SigliteError
    from ..fileio import read_lines

    labels = list(args.labels)
    if args.labels_file:
        labels += read_lines(args.labels_file)
    if not labels:
        raise SigliteError("give --labels or --labels-file")
    return labels


def run(args):
    import numpy as np

    from ..errors import SigliteError
    from ..pipeline import check_batch_size, ranked_labels

    labels = read_labels(args)
    model = load_model(args)
    batch_size = check_batch_size(args.batch_size)
    with progress_bar(args, len(labels), "labels", "label") as bar:
        txt = model.text_features([args.template.format(x) for x in labels], batch_size=batch_size, progress=bar)
    with progress_bar(args, len(args.images), "images", "img") as bar:
        out = model.encode_images(args.images, preprocess=args.preprocess, batch_size=batch_size,
                                  on_error="skip" if args.skip_bad else "raise", progress=bar)
    for i, reason in out.failures:
        warn(args, f"skipped {reason}")
    if not out.indices:
        raise SigliteError(f"none of the {len(args.images)} images could be decoded")
    probs = 1.0 / (1.0 + np.exp(-model.logits(out.features, txt)))
    images = [args.images[i] for i in out.indices]
    if args.format == "json":
        emit([{"image": path, "labels": ranked_labels(p, labels, args.top)} for path, p in zip(images, probs)], "json")
    else:
        emit([{"image": path, "label": r["label"], "probability": r["score"]}
              for path, p in zip(images, probs) for r in ranked_labels(p, labels, args.top)], "table")
    return 0
