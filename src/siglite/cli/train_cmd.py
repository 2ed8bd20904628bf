"""siglite train: train a SigLIP from scratch, or fine-tune one, on image-text pairs with the sigmoid loss."""

import argparse
import logging
import sys

from .common import add_format_arg, add_overwrite_arg, add_quiet_arg, emit, nonnegative_int, positive_int, \
    progress_bar

ARCH_ARGS = {"image_size": "--image-size", "patch_size": "--patch-size", "width": "--width", "depth": "--depth",
             "heads": "--heads", "text_length": "--text-length", "vocab_size": "--vocab-size"}
# Spelled here so that `siglite --help` does not import torch (tests check them against tasks.train).
POSITIVES = ("diagonal", "caption", "label")
ARCH_DEFAULTS = {"image_size": 32, "patch_size": 8, "width": 64, "depth": 2, "heads": 4, "text_length": 16,
                 "vocab_size": 256}

EPILOG = """examples:
  siglite synth --out shapes --per-class 400 --jsonl
  siglite train --data shapes/captions.jsonl --out my-siglip --steps 2000
  siglite train --data pairs.jsonl --init ./my-siglip --out tuned --steps 200 --lr 1e-4

The model is saved to OUT every --save-every steps and on Ctrl-C (each file replaced atomically, so OUT always loads);
training.json says which step it holds and whether training completed. Ctrl-C lets the running step finish, saves,
and prints the command that continues: the same one with --resume (the result equals an uninterrupted run). An
existing model in OUT is replaced only with --overwrite."""


def register(sub):
    p = sub.add_parser("train", help="train or fine-tune a SigLIP on image-text pairs (sigmoid loss)",
                       description="Train with the SigLIP sigmoid loss and save a hub-layout folder that siglite "
                                   "and transformers both load. Without --init a tiny model is trained from scratch, "
                                   "with a SentencePiece tokenizer learned from the captions.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True,
                   help="captions JSONL ({image, captions}), a folder with captions.jsonl, or class sub-folders")
    p.add_argument("--out", "-o", required=True, help="output checkpoint folder")
    p.add_argument("--init", default=None,
                   help="checkpoint to fine-tune (folder, hub id or name); default: train from scratch")
    p.add_argument("--steps", type=positive_int, default=1000)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=nonnegative_int, default=None,
                   help="warm-up steps (default: 10%% of --steps, at most 200)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--positives", choices=POSITIVES, default="label",
                   help="which pairs of a batch count as matches: only each image's own caption (diagonal, the "
                        "paper's), also identical captions (caption), also pairs of one class where the data has "
                        "labels (label, default)")
    for field, flag in ARCH_ARGS.items():
        p.add_argument(flag, type=positive_int, default=None,
                       help=f"from scratch: {field.replace('_', ' ')} (default: {ARCH_DEFAULTS[field]})")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--log-every", type=positive_int, default=50)
    p.add_argument("--save-every", type=positive_int, default=None,
                   help="save the model every N steps (default: every 10%% of --steps)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its last save (give the same other arguments)")
    add_overwrite_arg(p, "model in --out")
    add_quiet_arg(p)
    add_format_arg(p)
    p.set_defaults(run=run)


def run(args):
    import contextlib

    import torch

    from ..tasks.train import Arch, TrainingInterrupted, train

    if args.threads:
        torch.set_num_threads(args.threads)
    logger = logging.getLogger("siglite.train")
    if not args.quiet:
        logger.setLevel(logging.INFO)
        if not logger.handlers:
            logger.addHandler(logging.StreamHandler(sys.stderr))
    arch_fields = {f: getattr(args, f) for f in ARCH_ARGS if getattr(args, f) is not None}
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out; --overwrite would replace it: give one of them")
    if args.init and arch_fields:
        raise ValueError(f"--init keeps the checkpoint's shape; drop {', '.join(ARCH_ARGS[f] for f in arch_fields)}")
    if args.batch_size < 2:
        raise ValueError("--batch-size must be at least 2 (the other pairs of a batch are its negatives)")
    with progress_bar(args, args.steps, "train", "step") as bar:
        redirect = contextlib.nullcontext()
        if bar._bar is not None:  # log lines above the bar instead of through it
            from tqdm.contrib.logging import logging_redirect_tqdm

            redirect = logging_redirect_tqdm([logger])
        try:
            with redirect:
                result = train(args.data, args.out, init=args.init, arch=Arch(**arch_fields), steps=args.steps,
                               batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                               warmup=args.warmup, seed=args.seed, positives=args.positives,
                               log_every=args.log_every, overwrite=args.overwrite, save_every=args.save_every,
                               resume=args.resume, progress=bar)
        except TrainingInterrupted as e:
            if e.resumable:
                args.interrupt_hint = (f"saved the model and training state as of step {e.step}/{e.steps} to "
                                       f"{e.folder}; to continue, run the same command with --resume")
            elif e.saved:
                args.interrupt_hint = (f"saved the model as of step {e.step}/{e.steps} to {e.folder} (stopped inside "
                                       f"a step, so not resumable); to go on, fine-tune it: siglite train --data "
                                       f"{args.data} --init {e.folder} --out NEW --steps {e.steps - e.step}")
            else:
                args.interrupt_hint = "before the first step finished; nothing saved"
            raise
    emit([{"out": str(result.folder), "pairs": result.pairs, "skipped": len(result.skipped), "steps": args.steps,
           "final_loss": result.final_loss, "seconds": result.seconds}], args.format)
