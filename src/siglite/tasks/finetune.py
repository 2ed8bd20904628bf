"""Fine-tune a classification head (and optionally the vision tower) on labelled images: transformers'
`SiglipForImageClassification`, saved in its hub layout (see `siglite.heads`).

Data: the seed's multi-label CSV (a column with the image file name, then one 0/1 column per label; other columns,
such as a free-text "Classes" column, are ignored and reported), or an ImageNet-style folder (one sub-folder per
class, single-label). A held-out split measures mAP and micro/macro F1 (multi-label) or top-1 accuracy (single-label)
before training (random head) and after every epoch; the best epoch's weights are what the output folder holds.
Images that cannot be read are skipped and listed, never fatal. With `freeze_tower` the tower's features are computed
once and only the linear head is trained (a linear probe: seconds).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import SigliteError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
RESULT_FILE = "finetune.json"


# -- data -------------------------------------------------------------------------------------------------------------


@dataclass
class LabelledImages:
    """Images with targets: (N, C) 0/1 for multi-label, (N,) class indices for single-label."""

    paths: list[str]
    targets: np.ndarray
    labels: list[str]
    multi_label: bool
    ignored_columns: list[str] = field(default_factory=list)


def read_data(data: str | Path, *, multi_label: bool = False, images_root: str | Path | None = None) -> LabelledImages:
    """A CSV (multi- or single-label) or an ImageNet-style folder (single-label) -> `LabelledImages`."""
    data = Path(data)
    if data.is_dir():
        if multi_label:
            raise SigliteError(f"{data}: a class-folder dataset is single-label; give a CSV for --multi-label")
        return _read_folder(data)
    if not data.is_file():
        raise SigliteError(f"{data}: no such file or folder")
    return _read_csv(data, multi_label=multi_label, images_root=images_root)


def _read_folder(folder: Path) -> LabelledImages:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise SigliteError(f"{folder}: expected at least two class sub-folders")
    paths, targets = [], []
    for k, name in enumerate(classes):
        for f in sorted((folder / name).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(f))
                targets.append(k)
    if not paths:
        raise SigliteError(f"{folder}: no images in the class sub-folders")
    return LabelledImages(paths, np.asarray(targets, np.int64), classes, multi_label=False)


def _read_csv(path: Path, *, multi_label: bool, images_root: str | Path | None) -> LabelledImages:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SigliteError(f"{path}: cannot read the CSV ({e})") from e
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise SigliteError(f"{path}: expected a header (image column, then label columns) and at least one row")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    for i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise SigliteError(f"{path}: line {i} has {len(r)} fields, the header {len(header)}")
    # label columns: every value 0 or 1; anything else (e.g. the seed's text "Classes" column) is not a label
    label_cols = [j for j in range(1, len(header)) if all(r[j].strip() in ("0", "1") for r in body)]
    ignored = [header[j] for j in range(1, len(header)) if j not in label_cols]
    if not label_cols:
        raise SigliteError(f"{path}: no label columns (columns after the image column holding only 0 and 1)")
    root = Path(images_root) if images_root is not None else path.parent
    paths = [str(root / r[0].strip()) for r in body]
    onehot = np.asarray([[int(r[j]) for j in label_cols] for r in body], np.float32)
    labels = [header[j] for j in label_cols]
    if multi_label:
        return LabelledImages(paths, onehot, labels, True, ignored)
    per_row = onehot.sum(1)
    if (per_row != 1).any():
        bad = int(np.flatnonzero(per_row != 1)[0]) + 2
        raise SigliteError(f"{path}: line {bad} has {int(per_row[bad - 2])} labels set; single-label data needs "
                           "exactly one per row (pass --multi-label for multi-label data)")
    return LabelledImages(paths, onehot.argmax(1).astype(np.int64), labels, False, ignored)


def split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic shuffle -> (train indices, validation indices)."""
    if not 0 <= val_fraction < 1:
        raise SigliteError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n_val == 0 and n > 1:
        n_val = 1
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# -- metrics ----------------------------------------------------------------------------------------------------------


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall curve as sklearn's `average_precision_score` (step-wise, no interpolation);
    NaN without positives."""
    n_pos = int(positives.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / n_pos)


def multilabel_metrics(probs: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict:
    """mAP (mean over labels with a positive), micro and macro F1 at `threshold` (macro over labels that have a
    positive or a prediction), and exact-match accuracy."""
    aps = [average_precision(probs[:, c], targets[:, c]) for c in range(targets.shape[1])]
    pred = probs >= threshold
    t = targets.astype(bool)
    tp, fp, fn = (pred & t).sum(0), (pred & ~t).sum(0), (~pred & t).sum(0)
    per_label = [2 * a / (2 * a + b + c) for a, b, c in zip(tp, fp, fn) if 2 * a + b + c > 0]
    micro_den = 2 * tp.sum() + fp.sum() + fn.sum()
    return {"mAP": float(np.nanmean(aps)) if not all(math.isnan(a) for a in aps) else float("nan"),
            "f1_micro": float(2 * tp.sum() / micro_den) if micro_den else float("nan"),
            "f1_macro": float(np.mean(per_label)) if per_label else float("nan"),
            "exact_match": float((pred == t).all(1).mean())}


def singlelabel_metrics(probs: np.ndarray, targets: np.ndarray) -> dict:
    top5 = np.argsort(-probs, axis=1)[:, :5]
    return {"acc1": float((probs.argmax(1) == targets).mean()),
            "acc5": float((top5 == targets[:, None]).any(1).mean())}


# -- training ---------------------------------------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    out: Path
    labels: list[str]
    multi_label: bool
    n_train: int
    n_val: int
    before: dict  # validation metrics with the random head
    after: dict  # validation metrics of the kept (best) epoch
    best_epoch: int
    history: list[dict]
    skipped: list[dict]  # {"image", "reason"} for every image that could not be read
    seconds: float
    ignored_columns: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"out": str(self.out), "labels": self.labels, "multi_label": self.multi_label,
                "n_train": self.n_train, "n_val": self.n_val, "before": self.before, "after": self.after,
                "best_epoch": self.best_epoch, "history": self.history, "skipped": self.skipped,
                "seconds": round(self.seconds, 2), "ignored_columns": self.ignored_columns}


class _Images:
    """Decodes rows of a `LabelledImages` into pixels batch by batch, remembering images that fail."""

    def __init__(self, data: LabelledImages, image_config, preprocess: str, max_pixels: int | None):
        self.data, self.cfg, self.preprocess, self.max_pixels = data, image_config, preprocess, max_pixels
        self.failed: dict[int, str] = {}

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (pixels (n, 3, H, W), the rows they belong to)."""
        from ..preprocess.image import preprocess_batch

        rows = np.asarray([r for r in rows if r not in self.failed], np.int64)
        if len(rows) == 0:
            return np.zeros((0, 3, self.cfg.height, self.cfg.width), np.float32), rows
        pixels, ok, failed = preprocess_batch([self.data.paths[r] for r in rows], self.cfg, self.preprocess,
                                              on_error="skip", max_pixels=self.max_pixels)
        for i, reason in failed:
            self.failed[int(rows[i])] = reason
        return pixels, rows[ok]


def _probs(logits: torch.Tensor, multi_label: bool) -> np.ndarray:
    return (torch.sigmoid(logits) if multi_label else torch.softmax(logits, -1)).float().cpu().numpy()


def _metrics(probs: np.ndarray, targets: np.ndarray, multi_label: bool) -> dict:
    if len(targets) == 0:
        return {}
    return multilabel_metrics(probs, targets) if multi_label else singlelabel_metrics(probs, targets)


def _score(m: dict, multi_label: bool) -> float:
    value = m.get("mAP" if multi_label else "acc1", float("nan"))
    return -math.inf if value is None or math.isnan(value) else value


class Progress:
    """One stderr line per epoch, redrawn in place: bar, batches, running loss, images/s."""

    def __init__(self, enabled: bool, total: int, epoch: int, epochs: int):
        self.enabled, self.total, self.epoch, self.epochs = enabled, total, epoch, epochs
        self.t0, self.done, self.images, self.loss_sum = time.perf_counter(), 0, 0, 0.0

    def update(self, loss: float, n: int) -> None:
        self.done += 1
        self.images += n
        self.loss_sum += loss * n
        if self.enabled:
            width = 24
            fill = int(width * self.done / max(self.total, 1))
            rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
            sys.stderr.write(f"\repoch {self.epoch}/{self.epochs} [{'#' * fill}{'.' * (width - fill)}] "
                             f"{self.done}/{self.total} loss {self.loss:.4f} {rate:.1f} img/s")
            sys.stderr.flush()

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.images, 1)

    def close(self, note: str = "") -> None:
        if self.enabled:
            sys.stderr.write(f" {note}\n")
            sys.stderr.flush()


def finetune(data: str | Path, out: str | Path, *, init: str | Path, multi_label: bool = False,
             epochs: int | None = None, lr: float | None = None, head_lr: float | None = None,
             batch_size: int = 32, freeze_tower: bool = False, val_fraction: float = 0.2,
             images_root: str | Path | None = None, seed: int = 0, overwrite: bool = False,
             weight_decay: float = 0.01, preprocess: str = "resize", device: str | None = None,
             revision: str | None = None, progress: bool = True) -> FinetuneResult:
    """Train a `SiglipForImageClassification` on `data` and save the best epoch to `out`.

    Args:
        data: CSV (image name, then 0/1 label columns) or a class-folder dataset.
        out: output folder (hub layout; `siglite.load(out).predict(...)`, and transformers'
            `AutoModelForImageClassification.from_pretrained(out)`). Refused if it holds files, unless `overwrite`.
        init: the checkpoint whose vision tower is fine-tuned (folder, hub id or name; or a classifier folder).
        multi_label: BCE-with-logits on several labels per image (sigmoid at inference) instead of cross-entropy.
        epochs: passes over the training split (default 5; 100 with `freeze_tower`, where an epoch is a pass over
            cached features and takes milliseconds).
        lr: learning rate of the vision tower (default 5e-5, the seed's); the head uses `head_lr`.
        head_lr: learning rate of the new linear head (default 1e-3: it starts from random).
        batch_size: images per step.
        freeze_tower: compute the tower's features once and train only the head (linear probe).
        val_fraction: held-out share for validation (0: none; the last epoch is kept).
        images_root: folder the CSV's file names are relative to (default: the CSV's folder).
        seed: split, shuffling and head initialisation.
        overwrite: write into a non-empty `out`.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorms).
        preprocess: "resize" (the checkpoint's processor) or "letterbox".
        device: "cpu", "cuda" ... (default: CUDA when available).
        revision: hub revision of `init`.
        progress: progress bar on stderr.
    """
    from ..heads import Classifier, is_classifier, labels_of, load_network, save_classifier
    from ..checkpoints import CONFIG, read_json, resolve
    from ..checkpoints.layout import read_image_processor
    from ..preprocess.image import MAX_PIXELS_DEFAULT, ImageConfig

    t_start = time.perf_counter()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise SigliteError(f"{out}: exists and is not empty; choose another --out or pass --overwrite")
    if batch_size < 1:
        raise SigliteError(f"--batch-size must be >= 1, got {batch_size}")
    epochs = epochs if epochs is not None else (100 if freeze_tower else 5)
    if epochs < 1:
        raise SigliteError(f"--epochs must be >= 1, got {epochs}")
    lr = 5e-5 if lr is None else lr
    head_lr = 1e-3 if head_lr is None else head_lr

    ds = read_data(data, multi_label=multi_label, images_root=images_root)
    train_rows, val_rows = split(len(ds.paths), val_fraction, seed)
    if len(train_rows) == 0:
        raise SigliteError(f"{data}: no rows left for training after the validation split")

    source = resolve(init, revision=revision)
    base_config = read_json(source / CONFIG)
    image_config = ImageConfig.from_hf(read_image_processor(source))
    net = load_network(source)
    if getattr(net, "vision", None) is None:
        raise SigliteError(f"{init}: has no vision tower to fine-tune")
    torch.manual_seed(seed)
    model = Classifier(net.vision, len(ds.labels), multi_label=ds.multi_label)
    if is_classifier(base_config) and labels_of(base_config) == ds.labels:  # continue training the same head
        model.classifier.load_state_dict(net.classifier.state_dict())
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(dev).float()
    images = _Images(ds, image_config, preprocess, MAX_PIXELS_DEFAULT)
    targets = torch.from_numpy(ds.targets)

    def evaluate_rows(rows: np.ndarray, feats: dict | None = None) -> dict:
        """Validation metrics (and loss) of the current model on `rows`."""
        model.eval()
        probs, seen, loss_sum = [], [], 0.0
        with torch.inference_mode():
            for i in range(0, len(rows), batch_size):
                if feats is not None:
                    got = np.asarray([r for r in rows[i:i + batch_size] if r in feats], np.int64)
                    if len(got) == 0:
                        continue
                    logits = model.classifier(torch.stack([feats[r] for r in got]).to(dev))
                else:
                    pixels, got = images.batch(rows[i:i + batch_size])
                    if len(got) == 0:
                        continue
                    logits = model(torch.from_numpy(pixels).to(dev))
                loss_sum += float(model.loss(logits, targets[got].to(dev))) * len(got)
                probs.append(_probs(logits, ds.multi_label))
                seen.append(got)
        if not seen:
            return {}
        seen_rows = np.concatenate(seen)
        m = _metrics(np.concatenate(probs), ds.targets[seen_rows], ds.multi_label)
        return {"loss": loss_sum / len(seen_rows), **m, "n": int(len(seen_rows))}

    feats = None
    if freeze_tower:  # linear probe: the tower's features once, then only the head trains
        for p in model.vision.parameters():
            p.requires_grad_(False)
        feats = {}
        model.eval()
        with torch.inference_mode():
            all_rows = np.concatenate([train_rows, val_rows])
            bar = Progress(progress, math.ceil(len(all_rows) / batch_size), 0, epochs)
            for i in range(0, len(all_rows), batch_size):
                pixels, got = images.batch(all_rows[i:i + batch_size])
                if len(got):
                    f = model.features(torch.from_numpy(pixels).to(dev)).float().cpu()
                    feats.update(zip(got.tolist(), f))
                bar.update(0.0, len(got))
            bar.close("features computed")
        params = [{"params": model.classifier.parameters(), "lr": head_lr, "weight_decay": weight_decay}]
    else:
        decay, no_decay = [], []
        for p in model.vision.parameters():
            (no_decay if p.ndim < 2 else decay).append(p)  # biases and LayerNorm gains
        params = [{"params": decay, "lr": lr, "weight_decay": weight_decay},
                  {"params": no_decay, "lr": lr, "weight_decay": 0.0},
                  {"params": model.classifier.parameters(), "lr": head_lr, "weight_decay": weight_decay}]
    optimizer = torch.optim.AdamW(params)
    for g in optimizer.param_groups:
        g["initial_lr"] = g["lr"]

    before = evaluate_rows(val_rows, feats) if len(val_rows) else {}
    history: list[dict] = []
    best_score, best_epoch, best_head = -math.inf, 0, None
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    total_steps, step = steps_per_epoch * epochs, 0
    warmup = max(1, total_steps // 20)
    rng = np.random.default_rng(seed + 1)
    pool = ThreadPoolExecutor(max_workers=1)  # decode the next batch while this one trains
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            order = rng.permutation(train_rows)
            chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
            bar = Progress(progress and (not freeze_tower or epoch == epochs or epoch % 10 == 0), len(chunks),
                           epoch, epochs)
            pending = pool.submit(images.batch, chunks[0]) if feats is None else None
            for k, chunk in enumerate(chunks):
                if feats is None:
                    pixels, got = pending.result()
                    if k + 1 < len(chunks):
                        pending = pool.submit(images.batch, chunks[k + 1])
                    x = torch.from_numpy(pixels).to(dev) if len(got) else None
                else:
                    got = np.asarray([r for r in chunk if r in feats], np.int64)
                    x = torch.stack([feats[r] for r in got]).to(dev) if len(got) else None
                step += 1
                scale = step / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) /
                                                                                 max(1, total_steps - warmup)))
                for g in optimizer.param_groups:
                    g["lr"] = g["initial_lr"] * scale
                if x is None:
                    continue
                logits = model.classifier(x) if feats is not None else model(x)
                loss = model.loss(logits, targets[got].to(dev))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update(loss.item(), len(got))
            if bar.images == 0:
                first = next(iter(images.failed.items()), (None, "no rows"))
                raise SigliteError(f"{data}: no training image could be read (e.g. "
                                   f"{ds.paths[first[0]] if first[0] is not None else ''}: {first[1]}); "
                                   "check --images-root")
            record = {"epoch": epoch, "train_loss": bar.loss}
            if len(val_rows):
                val = evaluate_rows(val_rows, feats)
                record["val"] = val
                score = _score(val, ds.multi_label)
            else:
                score = epoch  # no validation split: keep the last epoch
            improved = score > best_score or (best_epoch == 0 and epoch == epochs)  # always keep one
            if improved:
                best_score, best_epoch = score, epoch
                if feats is None:  # a tower's worth of weights: on disk at once, so a crash keeps the best epoch
                    save_classifier(model, out, base_config, ds.labels, source=source)
                else:  # a probe only changes the head: keep it in memory, write once at the end
                    best_head = {k: v.detach().clone() for k, v in model.classifier.state_dict().items()}
            bar.close(_brief(record.get("val", {}), ds.multi_label) + (" (best, saved)" if improved else ""))
            history.append(record)
    finally:
        pool.shutdown(wait=True)
    if feats is not None:
        model.classifier.load_state_dict(best_head)
        save_classifier(model, out, base_config, ds.labels, source=source)
    skipped = [{"image": ds.paths[r], "reason": reason} for r, reason in sorted(images.failed.items())]
    after = next((h.get("val", {}) for h in history if h["epoch"] == best_epoch), {})
    result = FinetuneResult(out, ds.labels, ds.multi_label, len(train_rows), len(val_rows), before, after, best_epoch,
                            history, skipped, time.perf_counter() - t_start, ds.ignored_columns)
    (out / RESULT_FILE).write_text(json.dumps({**result.to_dict(), "args": {
        "data": str(data), "init": str(init), "epochs": epochs, "lr": lr, "head_lr": head_lr,
        "batch_size": batch_size, "freeze_tower": freeze_tower, "val_fraction": val_fraction, "seed": seed}},
        indent=2, default=str) + "\n")
    return result


def _brief(m: dict, multi_label: bool) -> str:
    if not m:
        return ""
    keys = ("mAP", "f1_micro", "f1_macro") if multi_label else ("acc1",)
    return "val " + " ".join(f"{k} {m[k]:.4f}" for k in keys if k in m)
