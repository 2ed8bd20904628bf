"""Multi-label fine-tuning on generated scenes, from the trained fixture's tower: mAP / F1 on held-out scenes with a
random head, after full fine-tuning, and with a linear probe (frozen tower). Prints a markdown table.

    python benchmarks/finetune_multilabel.py [--train 2000] [--heldout 500] [--epochs 10] [--work /tmp/ml-demo]

Train scenes: `write_multilabel(seed=0)`; held-out scenes: seed 777 (never seen; the validation split used to pick
the best epoch is carved out of the training scenes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import siglite
from siglite.heads import Classifier
from siglite.checkpoints import load_model
from siglite.preprocess.image import preprocess_batch
from siglite.tasks.finetune import finetune, multilabel_metrics
from siglite.data.synthetic import SHAPES, generate_scenes, write_multilabel

TRAINED = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "trained-tiny"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--heldout", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--work", default="/tmp/ml-demo")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if not (work / "train" / "labels.csv").is_file():
        write_multilabel(work / "train", args.train, seed=0)
    scenes = generate_scenes(args.heldout, seed=777, image_size=32)
    targets = np.array([[s in sc.labels for s in SHAPES] for sc in scenes], np.float32)
    images = [sc.image for sc in scenes]
    rows = []

    # random head on the fixture's tower, initialised as finetune does (seed 0)
    _, net = load_model(TRAINED)
    torch.manual_seed(0)
    clf = Classifier(net.vision, len(SHAPES), multi_label=True).eval()
    cfg = siglite.load(TRAINED, device="cpu").image_config
    with torch.inference_mode():
        probs = torch.sigmoid(clf(torch.from_numpy(preprocess_batch(images, cfg, "resize")[0]))).numpy()
    rows.append(("random head (before)", multilabel_metrics(probs, targets), None))

    for name, kwargs in (("full fine-tune", {"epochs": args.epochs, "lr": 1e-3, "head_lr": 3e-3}),
                         ("linear probe (frozen tower)", {"freeze_tower": True, "head_lr": 1e-2})):
        out = work / name.split()[0]
        t0 = time.perf_counter()
        r = finetune(work / "train" / "labels.csv", out, init=TRAINED, multi_label=True, overwrite=True,
                     progress=False, device="cpu", **kwargs)
        seconds = time.perf_counter() - t0
        probs = siglite.load(out, device="cpu").predict(images)
        rows.append((f"{name}, best epoch {r.best_epoch}", multilabel_metrics(probs, targets), seconds))
    prevalence = float(targets.mean())
    print(f"held-out: {args.heldout} scenes (seed 777), {len(SHAPES)} labels, label prevalence {prevalence:.3f} "
          f"(= the mAP of random scores); train: {args.train} scenes (seed 0), 20% of them for validation")
    print("| head | mAP | F1 micro | F1 macro | exact match | train time |")
    print("|---|---|---|---|---|---|")
    for name, m, s in rows:
        print(f"| {name} | {m['mAP']:.3f} | {m['f1_micro']:.3f} | {m['f1_macro']:.3f} | {m['exact_match']:.3f} | "
              f"{'' if s is None else f'{s:.0f} s'} |")
    (work / "result.json").write_text(json.dumps([{"head": n, **m, "seconds": s} for n, m, s in rows], indent=2))


if __name__ == "__main__":
    main()
