"""siglite eval: zero-shot classification, retrieval and fidelity, as tables or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import (add_batch_size_arg, add_format_arg, add_max_num_patches_arg, add_model_args, add_overwrite_arg,
                     add_quiet_arg, check_out_file, device, emit, existing_file, load_model,
                     nonnegative_int, positive_int, progress_bar)

EPILOG = """examples:
  siglite eval zeroshot --model M --data imagenet/val --classnames classnames.txt --templates templates.json
  siglite eval zeroshot --model M --data cifar-100-python --preprocess letterbox
  siglite eval retrieval --model M --data captions.jsonl
  siglite eval retrieval --model M --data annotations/captions_val2017.json --images-root val2017
  siglite eval fidelity --model M --precision float32 --candidate-precision bfloat16 --images photos/
  siglite eval fidelity --model M --candidate M-int8 --candidate-engine onnxruntime --data cifar-100-python --limit 1000

zeroshot and fidelity --data read the class names from classnames.txt beside the class folders when --classnames
is not given (as `siglite synth` writes it); otherwise the folder names are used.

fidelity: per-image cosine similarity and MSE of last_hidden_state (flattened per image) and pooler_output,
as mean ( min ~ max ), 1%-low, where 1%-low is the 1st percentile over images (1% of images score at or below it)."""


def register(sub):
    p = sub.add_parser("eval", help="evaluate: zero-shot accuracy, retrieval recall, fidelity between two runs",
                       description="Evaluate a model (metric names as CLIP_benchmark's).", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)

    z = tasks.add_parser("zeroshot", help="zero-shot classification: acc1, acc5, mean_per_class_recall")
    add_model_args(z)
    z.add_argument("--data", required=True, help="ImageNet-style folder (root/<class>/<image>) or CIFAR-100 python "
                                                 "folder (with 'test' and 'meta')")
    _add_classification_args(z)
    _add_common(z)
    z.set_defaults(run=run_zeroshot)

    r = tasks.add_parser("retrieval", help="image<->text retrieval recall@1/5/10")
    add_model_args(r)
    r.add_argument("--data", required=True, help='a .jsonl of {"image": path, "captions": [...]} or a COCO captions '
                                                 ".json")
    r.add_argument("--images-root", default=None, help="folder the image paths are relative to (default: the data "
                                                       "file's folder)")
    r.add_argument("--recall-k", type=positive_int, nargs="+", default=[1, 5, 10], help="cut-offs (default: 1 5 10)")
    _add_common(r)
    r.set_defaults(run=run_retrieval)

    f = tasks.add_parser("fidelity", help="how closely a candidate engine/precision reproduces the model",
                         description="Per-image cosine similarity and MSE of last_hidden_state and pooler_output, "
                                     "summarised as mean ( min ~ max ), 1%-low (the 1st percentile over images).",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(f)
    f.add_argument("--candidate", default=None, help="candidate checkpoint (default: --model)")
    f.add_argument("--candidate-engine", default=None, help="candidate engine (default: --engine)")
    f.add_argument("--candidate-precision", default=None, help="candidate precision (default: --precision)")
    f.add_argument("--candidate-device", type=device, default=None, help="candidate device (default: --device)")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", help="image files or folders (unlabelled)")
    src.add_argument("--data", help="a labelled set (as for zeroshot) to add top-1 agreement and accuracy")
    _add_classification_args(f)
    f.add_argument("--digits", type=nonnegative_int, default=3, help="decimals in the markdown table (default: 3)")
    _add_common(f)
    f.set_defaults(run=run_fidelity)


def _add_classification_args(p):
    p.add_argument("--classnames", type=existing_file, default=None,
                   help="class names: one per line, a JSON list, or a JSON dict folder -> name (default: "
                        "DATA/classnames.txt if present, else folder / CIFAR meta names)")
    p.add_argument("--templates", type=existing_file, default=None,
                   help='JSON list of prompt templates with {c} or {} (default: "This is a photo of {}.")')
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate at most N images, spread over the set")


def _add_common(p):
    p.add_argument("--preprocess", choices=["resize", "letterbox"], default="resize",
                   help="resize: the checkpoint's processor (default); letterbox: aspect-preserving, gray 127 padding")
    add_max_num_patches_arg(p)
    add_batch_size_arg(p, help="images and prompts per forward pass (default: 32)")
    p.add_argument("--out", "-o", default=None, help="also write the record as JSON to this file")
    add_overwrite_arg(p, "--out file")
    add_quiet_arg(p)
    add_format_arg(p)


def _templates(args):
    from ..pipeline import DEFAULT_TEMPLATE
    from ..data.datasets import read_templates

    return read_templates(args.templates) if args.templates else DEFAULT_TEMPLATE


def _finish(record: dict, args, text: str | None = None) -> None:
    if args.out:
        from ..fileio import write_json

        write_json(args.out, record)
    if args.format == "json":
        print(json.dumps(record, indent=2, default=str))
    elif text is not None:
        print(text)
    else:
        emit([{"metric": k, "value": v} for k, v in record.items() if not isinstance(v, (list, dict))], "table")
    for reason in record.get("failures", []) if args.format != "json" else []:
        print(f"skipped: {reason}")


def run_zeroshot(args):
    from ..data.datasets import read_classification
    from ..tasks.evaluate import zero_shot

    check_out_file(args, args.out)
    data = read_classification(args.data, args.classnames).subset(args.limit)
    templates = _templates(args)
    model = load_model(args)
    n_prompts = len(data.classnames) * (1 if isinstance(templates, str) else len(templates))
    with progress_bar(args, n_prompts + len(data), "zeroshot", "input") as bar:
        record = zero_shot(model, data, templates=templates, preprocess=args.preprocess, batch_size=args.batch_size,
                           progress=bar)
    _finish(record, args)


def run_retrieval(args):
    from ..data.datasets import read_retrieval
    from ..tasks.evaluate import retrieval

    check_out_file(args, args.out)
    items = read_retrieval(args.data, args.images_root)
    model = load_model(args)
    with progress_bar(args, len(items) + sum(len(it["captions"]) for it in items), "retrieval", "input") as bar:
        record = retrieval(model, items, k=args.recall_k, preprocess=args.preprocess, batch_size=args.batch_size,
                           progress=bar)
    _finish(record, args)


def run_fidelity(args):
    import siglite

    from ..data.datasets import list_images, read_classification
    from ..tasks.evaluate import fidelity, fidelity_markdown

    check_out_file(args, args.out)
    labels = classnames = None
    if args.data:
        data = read_classification(args.data, args.classnames).subset(args.limit)
        images, labels, classnames = data.images, data.labels, data.classnames
    else:
        images = [p for src in args.images for p in (list_images(src) if Path(src).is_dir() else [Path(src)])]
        images = images[:args.limit] if args.limit else images
    reference = load_model(args)
    candidate = siglite.load(args.candidate or args.model, engine=args.candidate_engine or args.engine,
                             device=args.candidate_device or args.device,
                             dtype=args.candidate_precision or args.precision,
                             revision=args.revision).set_patch_budget(args.max_num_patches)
    with progress_bar(args, len(images), "fidelity", "img") as bar:
        record = fidelity(reference, candidate, images, labels, classnames, templates=_templates(args),
                          preprocess=args.preprocess, batch_size=args.batch_size, progress=bar)
    header = f"reference: {record['reference']}\ncandidate: {record['candidate']}\nimages: {record['n']}"
    _finish(record, args, f"{header}\n\n{fidelity_markdown(record, digits=args.digits)}")
