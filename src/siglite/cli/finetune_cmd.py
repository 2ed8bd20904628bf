"""siglite finetune: train a classification head (and the vision tower) on labelled images; multi-label or not."""

import argparse
from .common import add_format_arg, emit


def register(sub):
    p = sub.add_parser("finetune", help="fine-tune a SigLIP image classifier (multi-label or single-label)",
                       description="Train transformers' SiglipForImageClassification (mean patch token -> linear) "
                                   "from a checkpoint's vision tower and save it in the hub layout: siglite.load(DIR)"
                                   ".predict(...) and AutoModelForImageClassification.from_pretrained(DIR) both "
                                   "load it. DATA: a CSV (image file name, then one 0/1 column per label) or a "
                                   "folder with one sub-folder per class.",
                       epilog="examples:\n"
                              "  siglite synth --multi-label --count 600 --out scenes\n"
                              "  siglite finetune --data scenes/labels.csv --multi-label --init M --out clf\n"
                              "  siglite finetune --data imagenet-style/ --init M --out clf --freeze-tower\n"
                              "  siglite predict photo.jpg --model clf",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="CSV (image, 0/1 label columns) or class-folder dataset")
    p.add_argument("--out", "-o", required=True, help="output folder (must be new or empty, unless --overwrite)")
    p.add_argument("--init", required=True,
                   help="checkpoint whose vision tower to fine-tune (folder, hub id or name from `siglite list`)")
    p.add_argument("--multi-label", action="store_true",
                   help="several labels per image: BCE-with-logits, sigmoid probabilities")
    p.add_argument("--epochs", type=int, default=None, help="default 5 (100 with --freeze-tower)")
    p.add_argument("--lr", type=float, default=None, help="vision tower learning rate (default 5e-5)")
    p.add_argument("--head-lr", type=float, default=None, help="classification head learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--freeze-tower", action="store_true",
                   help="linear probe: compute the tower's features once, train only the head")
    p.add_argument("--val-fraction", type=float, default=0.2, help="held-out share for validation (default 0.2)")
    p.add_argument("--images-root", default=None, help="folder the CSV's image names are relative to "
                                                       "(default: the CSV's folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--preprocess", choices=["resize", "letterbox"], default="resize")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--revision", default=None, help="hub revision of --init")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    import sys

    import torch

    from ..tasks.finetune import finetune

    if args.threads:
        torch.set_num_threads(args.threads)
    r = finetune(args.data, args.out, init=args.init, multi_label=args.multi_label, epochs=args.epochs, lr=args.lr,
                 head_lr=args.head_lr, batch_size=args.batch_size, freeze_tower=args.freeze_tower,
                 val_fraction=args.val_fraction, images_root=args.images_root, seed=args.seed,
                 overwrite=args.overwrite, preprocess=args.preprocess, device=args.device, revision=args.revision,
                 progress=not args.no_progress)
    for s in r.skipped:
        print(f"skipped {s['image']}: {s['reason']}", file=sys.stderr)
    if r.ignored_columns:
        print(f"ignored non-label column(s): {', '.join(r.ignored_columns)}", file=sys.stderr)
    if args.format == "json":
        emit(r.to_dict(), "json")
        return
    keys = ["mAP", "f1_micro", "f1_macro"] if r.multi_label else ["acc1", "acc5"]
    rows = [{"": name, "loss": m.get("loss", float("nan")), **{k: m.get(k, float("nan")) for k in keys}}
            for name, m in (("before (random head)", r.before), (f"after (best epoch {r.best_epoch})", r.after))]
    emit(rows, "table")
    print(f"{r.n_train} train / {r.n_val} validation images, {len(r.labels)} labels, {len(r.skipped)} skipped, "
          f"{r.seconds:.1f} s; saved to {r.out}")
