"""siglite predict: labels of images from a fine-tuned classifier (`siglite finetune`)."""

import argparse
from .common import add_format_arg, add_model_args, emit, load_model


def register(sub):
    p = sub.add_parser("predict", help="labels of images from a fine-tuned classifier",
                       description="Probabilities of a classifier made by `siglite finetune` (sigmoid per label for "
                                   "multi-label models, softmax otherwise); prints the labels at or over the "
                                   "threshold (multi-label) or the top label (single-label).",
                       epilog="examples:\n  siglite predict a.jpg b.jpg --model clf\n"
                              "  siglite predict photos/*.jpg --model clf --threshold 0.3 --format json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files")
    add_model_args(p)
    p.add_argument("--threshold", type=float, default=None,
                   help="probability a label needs (default 0.5 for multi-label; single-label: the top label)")
    p.add_argument("--preprocess", choices=["resize", "letterbox"], default="resize")
    p.add_argument("--batch-size", type=int, default=None)
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    import numpy as np

    model = load_model(args)
    probs = model.predict(args.images, preprocess=args.preprocess, batch_size=args.batch_size, on_error="skip")
    labels = model.labels
    rows, failed = [], 0
    for path, p in zip(args.images, probs):
        if np.isnan(p).any():
            failed += 1
            rows.append({"image": path, "labels": None, "error": "could not be read"})
            continue
        if args.threshold is None and not model.multi_label:
            chosen = [int(p.argmax())]
        else:
            threshold = 0.5 if args.threshold is None else args.threshold
            chosen = [int(i) for i in np.argsort(-p) if p[i] >= threshold]
        rows.append({"image": path, "labels": [labels[i] for i in chosen],
                     "scores": {labels[i]: round(float(p[i]), 4) for i in chosen},
                     **({"probabilities": {lab: round(float(v), 4) for lab, v in zip(labels, p)}}
                        if args.format == "json" else {})})
    if args.format == "json":
        emit(rows, "json")
    else:
        emit([{"image": r["image"], "labels": "(unreadable)" if r["labels"] is None else
               (", ".join(f"{lab} {r['scores'][lab]:.3f}" for lab in r["labels"]) or "(none)")} for r in rows],
             "table")
    return 1 if failed == len(rows) else 0
