"""siglite train: train a SigLIP from scratch, or fine-tune one, on image-text pairs with the sigmoid loss."""

import logging
import sys

from .common import add_format_arg, emit

ARCH_ARGS = {"image_size": "--image-size", "patch_size": "--patch-size", "width": "--width", "depth": "--depth",
             "heads": "--heads", "text_length": "--text-length", "vocab_size": "--vocab-size"}


def register(sub):
    from ..tasks.train import POSITIVES, Arch

    defaults = Arch()
    p = sub.add_parser("train", help="train or fine-tune a SigLIP on image-text pairs (sigmoid loss)",
                       description="Train with the SigLIP sigmoid loss and save a hub-layout folder that siglite "
                                   "and transformers both load. Without --init a tiny model is trained from scratch, "
                                   "with a SentencePiece tokenizer learned from the captions.",
                       epilog="examples:\n  siglite synth --out shapes --per-class 400 --jsonl\n"
                              "  siglite train --data shapes/captions.jsonl --out my-siglip --steps 2000\n"
                              "  siglite train --data pairs.jsonl --init ./my-siglip --out tuned --steps 200 --lr 1e-4")
    p.add_argument("--data", required=True,
                   help="captions JSONL ({image, captions}), a folder with captions.jsonl, or class sub-folders")
    p.add_argument("--out", "-o", required=True, help="output checkpoint folder")
    p.add_argument("--init", default=None,
                   help="checkpoint to fine-tune (folder, hub id or name); default: train from scratch")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 10%% of --steps, at most 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--positives", choices=POSITIVES, default="label",
                   help="which pairs of a batch count as matches: only each image's own caption (diagonal, the "
                        "paper's), also identical captions (caption), also pairs of one class where the data has "
                        "labels (label, default)")
    for field, flag in ARCH_ARGS.items():
        p.add_argument(flag, type=int, default=None,
                       help=f"from scratch: {field.replace('_', ' ')} (default: {getattr(defaults, field)})")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    import torch

    from ..tasks.train import Arch, train

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.quiet:
        logger = logging.getLogger("siglite.train")
        logger.setLevel(logging.INFO)
        if not logger.handlers:
            logger.addHandler(logging.StreamHandler(sys.stderr))
    arch_fields = {f: getattr(args, f) for f in ARCH_ARGS if getattr(args, f) is not None}
    if args.init and arch_fields:
        raise ValueError(f"--init keeps the checkpoint's shape; drop {', '.join(ARCH_ARGS[f] for f in arch_fields)}")
    result = train(args.data, args.out, init=args.init, arch=Arch(**arch_fields), steps=args.steps,
                   batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
                   seed=args.seed, positives=args.positives, log_every=args.log_every)
    emit([{"out": str(result.folder), "pairs": result.pairs, "skipped": len(result.skipped), "steps": args.steps,
           "final_loss": result.final_loss, "seconds": result.seconds}], args.format)
