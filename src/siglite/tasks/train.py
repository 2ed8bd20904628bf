"""Train or fine-tune a SigLIP on image-text pairs with the sigmoid loss, and save it in the hub layout.

The loss is the pairwise sigmoid loss of "Sigmoid Loss for Language Image Pre-Training" (Zhai et al., 2023) as
transformers' `SiglipModel.forward(return_loss=True)` computes it (ported from big_vision
`big_vision/trainers/proj/image_text/siglip.py#L287`, commit 01edb81): logits = cos(img, txt) * exp(t) + b, labels
+1 on the diagonal and -1 elsewhere, loss = -sum_j logsigmoid(label_ij * logit_ij), averaged over the batch rows.
t and b are learned (initialised to log 10 and -10, the paper's values). Which pairs of a batch count as matches is a
choice (`match_labels`): the paper's diagonal, or also identical captions, or also pairs of one class.

The loop is small and CPU-friendly: AdamW, linear warm-up then cosine decay, gradient clipping, one process. It trains
siglite's own `model.Siglip`, either from scratch at a tiny `Arch` (with a SentencePiece tokenizer trained on the
captions, laid out like google/siglip's spiece.model) or from an existing checkpoint; the saved folder loads with
`siglite.load` and with transformers' `SiglipModel.from_pretrained`.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import shutil
import signal
import string
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SigliteError
from ..model import sigmoid_logits

log = logging.getLogger("siglite.train")

CAPTIONS_JSONL = "captions.jsonl"
CLASSNAMES_FILE = "classnames.txt"
# Captions made from a class name when a folder has no captions.jsonl (ImageNet-style layout).
FOLDER_TEMPLATES = ("{}", "a photo of a {}", "this is a photo of {}")
# Tokenizer and preprocessing files a fine-tuned checkpoint keeps from its initial one.
CARRIED_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "preprocessor_config.json", "processor_config.json")
POSITIVES = ("diagonal", "caption", "label")
INIT_LOGIT_SCALE = math.log(10.0)
INIT_LOGIT_BIAS = -10.0


# ------------------------------------------------------------------------------------------------------------ loss


def sigmoid_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                 logit_bias: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The SigLIP pairwise sigmoid loss of N matching (image, text) pairs.

    Args:
        image_embeds: (N, D) pooled image embeddings (not yet normalised).
        text_embeds: (N, D) pooled text embeddings; row i describes image i.
        logit_scale: t, the log of the temperature (scalar tensor, learned).
        logit_bias: b (scalar tensor, learned).
        labels: (N, N) of +1 (match) / -1 (no match); default `2 * eye(N) - 1`, the paper's. Passing more +1 entries
            (e.g. for identical captions in one batch) is the multi-positive form the sigmoid loss allows.

    Returns:
        The scalar loss, equal to transformers' `SiglipModel(..., return_loss=True).loss` on the same embeddings.
    """
    logits = sigmoid_logits(image_embeds, text_embeds, logit_scale, logit_bias)  # (N_img, N_txt)
    if labels is None:
        labels = 2 * torch.eye(logits.shape[0], dtype=logits.dtype, device=logits.device) - 1
    # transformers sums over the texts of each image-text row of logits_per_text; the diagonal labels are symmetric,
    # so summing over either axis and averaging gives the same value: sum of all terms / N.
    return -F.logsigmoid(labels.to(logits.dtype) * logits).sum(dim=-1).mean()


# ------------------------------------------------------------------------------------------------------- tokenizer


def canonicalize(text: str) -> str:
    """SiglipTokenizer's text canonicalisation (lowercase, drop ASCII punctuation, collapse spaces), applied to the
    tokenizer's training text so that pieces are learned from what the tokenizer will actually see."""
    return re.sub(r"\s+", " ", text.lower().translate(str.maketrans("", "", string.punctuation))).strip()


def train_tokenizer(texts: Sequence[str], folder: str | Path, vocab_size: int = 256, max_length: int = 16) -> Path:
    """Train a SentencePiece tokenizer on `texts` and write it as google/siglip checkpoints ship theirs.

    Writes spiece.model ("<pad>"=0, "</s>"=1, "<unk>"=2, no bos, nmt_nfkc), tokenizer_config.json (SiglipTokenizer,
    lowercase, eos = pad = "</s>", input_ids only) and special_tokens_map.json into `folder`. `vocab_size` is an upper
    bound: a small corpus yields fewer pieces. Returns the folder.

    The model is BPE, not google/siglip's unigram: on a small, repetitive caption corpus SentencePiece's unigram
    trainer prunes down to ~60 mostly single-character pieces (measured), so a 16-token context cannot hold
    "this is a photo of purple triangle"; BPE keeps whole words. SiglipTokenizer reads either kind.
    """
    import sentencepiece as spm

    corpus = sorted({canonicalize(t) for t in texts} - {""})
    if not corpus:
        raise SigliteError("train_tokenizer: no non-empty texts to learn a vocabulary from")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
        hard_vocab_limit=False, character_coverage=1.0, normalization_rule_name="nmt_nfkc",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        num_threads=1, minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(buf.getvalue())
    special = {"lstrip": True, "normalized": False, "rstrip": True, "single_word": False}
    config = {
        "added_tokens_decoder": {"1": {"content": "</s>", **special, "special": True},
                                 "2": {"content": "<unk>", **special, "special": True}},
        "additional_special_tokens": [], "clean_up_tokenization_spaces": True, "do_lower_case": True,
        "eos_token": "</s>", "model_input_names": ["input_ids"], "model_max_length": max_length,
        "pad_token": "</s>", "processor_class": "SiglipProcessor", "sp_model_kwargs": {},
        "tokenizer_class": "SiglipTokenizer", "unk_token": "<unk>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    stm = {k: {"content": v, **special} for k, v in (("eos_token", "</s>"), ("pad_token", "</s>"),
                                                      ("unk_token", "<unk>"))}
    (folder / "special_tokens_map.json").write_text(json.dumps(stm, indent=2, sort_keys=True))
    return folder


# ------------------------------------------------------------------------------------------------------------ data


@dataclass
class Pair:
    """One image with one or more captions (a training step samples one of them)."""

    image: Any  # path, bytes, PIL image or uint8 array: anything `preprocess.image.decode` takes
    captions: list[str]
    label: str | int | None = None  # class, where known: pairs of one class can count as matches (see `train`)


def load_pairs(path: str | Path) -> list[Pair]:
    """Image-text pairs from a captions JSONL or a folder.

    A JSONL has one object per line, {"image": path, "captions": [...]} (or "caption": "..."), image paths relative
    to the JSONL's folder (read by `datasets.read_captions_jsonl`, as the retrieval evaluator reads it), and an
    optional "label" (the class, as `synthetic.write_folder` writes it). A folder with a captions.jsonl is read
    through it; otherwise it is taken as ImageNet-style (`datasets.read_image_folder`: one sub-folder per class, names
    from classnames.txt when present, else the folder names with "_" as spaces) and each image gets captions made
    from its class name by FOLDER_TEMPLATES.
    """
    from ..data.datasets import read_captions_jsonl, read_classnames, read_image_folder

    path = Path(path)
    if path.is_dir() and not (path / CAPTIONS_JSONL).is_file():
        names = read_classnames(path / CLASSNAMES_FILE) if (path / CLASSNAMES_FILE).is_file() else None
        data = read_image_folder(path, names)
        classnames = [c.replace("_", " ") for c in data.classnames]
        return [Pair(image, [t.format(classnames[label]) for t in FOLDER_TEMPLATES], label)
                for image, label in zip(data.images, data.labels)]
    if path.is_dir():
        path = path / CAPTIONS_JSONL
    items = read_captions_jsonl(path)
    # the reader keeps image and captions only; "label" is read here from the same non-blank lines
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    return [Pair(item["image"], item["captions"], row.get("label")) for item, row in zip(items, rows)]


def as_pairs(data: str | Path | Sequence) -> list[Pair]:
    """A path (see `load_pairs`), or a sequence of `Pair`s or tuples (image, caption or list of captions[, label]),
    such as `synthetic.generate`'s samples."""
    if isinstance(data, (str, Path)):
        return load_pairs(data)
    pairs = []
    for i, item in enumerate(data):
        if isinstance(item, Pair):
            pairs.append(item)
            continue
        image, captions = item[0], item[1]
        captions = [captions] if isinstance(captions, str) else list(captions)
        if not captions:
            raise SigliteError(f"pair {i}: no captions")
        pairs.append(Pair(image, captions, item[2] if len(item) > 2 else None))
    if not pairs:
        raise SigliteError("no training pairs")
    return pairs


# ------------------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Arch:
    """Shape of a SigLIP trained from scratch; both towers share width, depth and heads (as SigLIP B/L/So do)."""

    image_size: int = 32
    patch_size: int = 8
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    text_length: int = 16
    vocab_size: int = 256  # upper bound for the tokenizer trained on the captions

    def spec(self, vocab_size: int):
        """A registry `Spec` at this shape with the tokenizer's actual vocabulary size."""
        from ..registry import Spec

        tower = {"hidden_size": self.width, "intermediate_size": self.mlp_ratio * self.width,
                 "num_hidden_layers": self.depth, "num_attention_heads": self.heads}
        if self.width % self.heads:
            raise SigliteError(f"width {self.width} is not divisible by heads {self.heads}")
        return Spec(
            name=f"siglip-tiny-w{self.width}-d{self.depth}-p{self.patch_size}-{self.image_size}", hub_id="",
            vision={**tower, "image_size": self.image_size, "patch_size": self.patch_size},
            text={**tower, "vocab_size": vocab_size, "max_position_embeddings": self.text_length},
            tokenizer="spiece",
            image={"height": self.image_size, "width": self.image_size, "resample": 3,
                   "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
        )


def _from_scratch(arch: Arch, captions: Sequence[str], out: Path, seed: int):
    """A randomly initialised Siglip at `arch`, its tokenizer trained on `captions` and written to `out`."""
    from ..checkpoints import random_model
    from ..preprocess.image import ImageConfig
    from ..preprocess.text import load_tokenizer

    train_tokenizer(captions, out, arch.vocab_size, arch.text_length)
    tokenizer = load_tokenizer(out, arch.text_length)
    spec = arch.spec(tokenizer.settings()["vocab_size"])
    model = random_model(spec, seed=seed)
    with torch.no_grad():
        model.logit_scale.fill_(INIT_LOGIT_SCALE)
        model.logit_bias.fill_(INIT_LOGIT_BIAS)
    preprocessor = spec.hf_preprocessor_config()
    return model, tokenizer, ImageConfig.from_hf(preprocessor), preprocessor


def _from_checkpoint(init: str | Path, out: Path):
    """Load `init` for fine-tuning; its tokenizer and preprocessing files are copied to `out` unchanged."""
    from ..checkpoints import load_model, resolve
    from ..checkpoints.layout import load_text_tokenizer as load_tokenizer, read_image_processor
    from ..preprocess.image import ImageConfig

    folder = resolve(init)
    ckpt, model = load_model(folder)
    if ckpt.vision is None or ckpt.text is None:
        raise SigliteError(f"{folder}: training needs both towers; this checkpoint has only one")
    if folder.resolve() != out.resolve():
        for name in CARRIED_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, out / name)
    preprocessor = read_image_processor(folder)
    return model, load_tokenizer(folder, ckpt.text.max_position_embeddings), ImageConfig.from_hf(preprocessor), \
        preprocessor


# ------------------------------------------------------------------------------------------------------ the loop


@dataclass
class TrainResult:
    """Where the model went and how training went (one record per logged step)."""

    folder: Path
    pairs: int
    skipped: list[tuple[int, str]]
    seconds: float
    history: list[dict] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else float("nan")


def _prepare_images(pairs: list[Pair], cfg) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Decode every image once and resize it to the model size: (N_ok, H, W, 3) uint8, kept indices, failures.

    Kept as uint8 (a quarter of float32's memory); `preprocess_batch` rescales and normalises each batch."""
    from PIL import Image

    from ..preprocess.image import ImageError, decode

    out, ok, failures = [], [], []
    for i, pair in enumerate(pairs):
        try:
            rgb = decode(pair.image)
        except ImageError as e:
            failures.append((i, str(e)))
            log.warning("skipping pair %d: %s", i, e)
            continue
        if cfg.do_resize and rgb.shape[:2] != (cfg.height, cfg.width):
            rgb = np.asarray(Image.fromarray(rgb).resize((cfg.width, cfg.height), resample=cfg.resample))
        out.append(rgb)
        ok.append(i)
    if not out:
        raise SigliteError(f"none of the {len(pairs)} images could be decoded (first: {failures[0][1]})")
    return np.stack(out), ok, failures


def _schedule(step: int, steps: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to 0 at `steps`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms, embeddings, the probe, t or b."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name and "probe" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def match_labels(captions: torch.Tensor, classes: torch.Tensor | None, positives: str) -> torch.Tensor | None:
    """The (B, B) +1/-1 target of a batch: which image-text pairs count as matches.

    Args:
        captions: (B,) caption ids (equal ids = identical text).
        classes: (B,) class ids, -1 where unknown; None when no pair has one.
        positives: "diagonal" (only pair i with caption i: the paper's 2 * eye - 1, returned as None), "caption"
            (also pairs whose caption text is identical) or "label" (also pairs of one known class, as UniCL,
            Yang et al. 2022, treats image-label-text data).
    """
    if positives not in POSITIVES:
        raise SigliteError(f"unknown positives {positives!r}; choose one of {', '.join(POSITIVES)}")
    if positives == "diagonal":
        return None
    match = captions[:, None] == captions[None, :]  # (B, B), diagonal always True
    if positives == "label" and classes is not None:
        match |= (classes[:, None] == classes[None, :]) & (classes[:, None] >= 0)
    return 2 * match.float() - 1


def train(data: str | Path | Sequence, out: str | Path, *, init: str | Path | None = None, arch: Arch | None = None,
          steps: int = 1000, batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.05,
          warmup: int | None = None, seed: int = 0, positives: str = "label", log_every: int = 50,
          callback: Callable[[dict, torch.nn.Module], None] | None = None, overwrite: bool = False,
          save_every: int | None = None, resume: bool = False,
          progress: Callable[[int], None] | None = None) -> TrainResult:
    """Train a SigLIP with the sigmoid loss and save it in the hub layout.

    Args:
        data: image-text pairs: a captions JSONL or folder (see `load_pairs`) or a sequence (see `as_pairs`).
        out: folder to write (config.json, model.safetensors, tokenizer files, preprocessor_config.json,
            training.json).
        init: checkpoint (folder, hub id or name) to fine-tune; None trains from scratch at `arch`.
        arch: shape of a model trained from scratch (default `Arch()`); ignored with `init`.
        steps: optimizer steps.
        batch_size: pairs per step (all other pairs of a batch are its negatives); capped at the data size.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay on weight matrices.
        warmup: linear warm-up steps (default: 10% of `steps`, at most 200).
        seed: seeds the initialisation, batch order and caption choice.
        positives: which pairs of a batch are matches, see `match_labels`. The default "label" matters when a batch
            holds many images of one class (25 shape classes in a batch of 128): counted as negatives, the
            paraphrased captions of one class pull and push an image the same way and shape was never learned
            (measured); with all-distinct captions and no labels every choice is the paper's 2 * eye - 1.
        log_every: record (and log) loss, learning rate, t and b every this many steps.
        callback: called as callback(record, model) at every logged step, e.g. to evaluate on held-out data (the
            model is in training mode; switch to eval and back, and use no_grad).
        overwrite: replace a model already in `out` (refused by default; only a folder holding a model or a
            training.json is ever replaced).
        save_every: write the model to `out` every this many steps (default: every 10% of `steps`), so a crash
            or Ctrl-C loses at most that much; each file is replaced atomically, so `out` always loads. With it goes
            ``train_state.pt`` (optimizer, schedule, data order and random state; removed when training completes).
        resume: continue the unfinished run in `out` from its last saved step, with the same arguments; the result
            equals an uninterrupted run bit for bit (tested).
        progress: called with 1 after every step (`siglite.progress`).

    Returns:
        A `TrainResult`; the same summary is written to `out/training.json`.

    Raises:
        TrainingInterrupted: on Ctrl-C (a KeyboardInterrupt). The first Ctrl-C lets the running step finish, then
            the model and training state are saved to `out` (``"complete": false`` in training.json) and `resume`
            continues from there; a second Ctrl-C stops at once (the last periodic checkpoint is kept).
    """
    from ..preprocess.image import preprocess_batch

    if steps < 1 or batch_size < 2:
        raise SigliteError(f"need steps >= 1 and batch_size >= 2, got steps={steps}, batch_size={batch_size}")
    if positives not in POSITIVES:
        raise SigliteError(f"unknown positives {positives!r}; choose one of {', '.join(POSITIVES)}")
    if save_every is not None and (isinstance(save_every, bool) or save_every < 1):
        raise SigliteError(f"save_every must be a positive integer, got {save_every!r}")
    from ..fileio import check_output_dir

    start = time.perf_counter()
    out = Path(out)
    same_folder = init is not None and Path(init).is_dir() and Path(init).resolve() == out.resolve()
    state = _read_state(out) if resume else None
    if not resume:
        check_output_dir(out, overwrite=overwrite or same_folder, markers=MODEL_MARKERS, what="model")
    pairs = as_pairs(data)  # read (and checked) before anything in `out` is touched
    if overwrite and out.is_dir() and not same_folder and not resume:
        shutil.rmtree(out)  # checked above: a model folder; its tokenizer must not mix with the new one
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    captions = sorted({c for p in pairs for c in p.captions})
    if resume:
        model, tokenizer, image_cfg, preprocessor = _from_checkpoint(out, out)
        with torch.no_grad():  # fresh, aligned storage: kernels on loaded (file-offset) memory can round differently
            for p in model.parameters():
                p.data = p.data.clone()
    elif init is not None:
        model, tokenizer, image_cfg, preprocessor = _from_checkpoint(init, out)
    else:
        model, tokenizer, image_cfg, preprocessor = _from_scratch(arch or Arch(), captions, out, seed)
    model.train()

    images, kept, skipped = _prepare_images(pairs, image_cfg)
    caption_index = {c: i for i, c in enumerate(captions)}
    pair_captions = [[caption_index[c] for c in pairs[i].captions] for i in kept]
    class_index = {c: i for i, c in enumerate(sorted({str(pairs[i].label) for i in kept
                                                      if pairs[i].label is not None}))}
    classes = torch.tensor([class_index.get(str(pairs[i].label), -1) if pairs[i].label is not None else -1
                            for i in kept]) if class_index else None
    ids, _ = tokenizer(captions)  # every distinct caption once: (C, L)
    ids = torch.from_numpy(ids)
    # No padding mask, whatever the tokenizer returns: SigLIP is trained attending to padding and pooling the last
    # position (big_vision models/proj/image_text/text_transformer.py), and `siglite.load` runs it that way by default.
    mask = None

    n = len(kept)
    batch_size = min(batch_size, n)
    warmup = warmup if warmup is not None else min(200, steps // 10)
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, steps, max(1, warmup)))

    history: list[dict] = []
    save_every = save_every or max(1, steps // 10)
    summary = {"init": str(init) if init is not None else None,
               "arch": asdict(arch or Arch()) if init is None else None, "steps": steps, "batch_size": batch_size,
               "lr": lr, "weight_decay": weight_decay, "warmup": warmup, "seed": seed, "positives": positives,
               "pairs": n, "skipped": len(skipped), "classes": len(class_index)}
    done = 0
    order, cursor = rng.permutation(n), 0
    if state is not None:
        if state["settings"] != summary:
            diff = next(f"{k}: {state['settings'].get(k)!r} there, {summary.get(k)!r} now"
                        for k in sorted(set(state["settings"]) | set(summary))
                        if state["settings"].get(k) != summary.get(k))
            raise SigliteError(f"{out}: the interrupted run had other arguments ({diff}); resume with the same ones")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        order, cursor = np.asarray(state["order"], dtype=np.int64), int(state["cursor"])
        history, done = list(state["history"]), int(state["step"])
        log.info("resuming %s at step %d/%d", out, done, steps)

    def checkpoint(complete: bool, with_state: bool = True) -> None:
        was_training = model.training
        model.eval()
        _save_atomic(model, out, preprocessor)
        model.train(was_training)
        if with_state:  # written after the weights: a state file never describes newer weights than are on disk
            from ..fileio import atomic_write

            blob = {"step": done, "settings": summary, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": rng.bit_generator.state, "order": order.tolist(),
                    "cursor": cursor, "history": history}
            atomic_write(out / TRAIN_STATE, lambda tmp: torch.save(blob, tmp))
        final = history[-1]["loss"] if history else None
        _write_json(out / "training.json", {**summary, "step": done, "complete": complete, "resumable": with_state,
                                            "seconds": round(time.perf_counter() - start, 2), "final_loss": final,
                                            "history": history})

    log.info("training %s on %d pairs (%d distinct captions, %d classes): %d steps of %d",
             "from scratch" if init is None else init, n, len(captions), len(class_index), steps, batch_size)
    def _train_step(step: int) -> int:
        nonlocal order, cursor
        if cursor + batch_size > n:  # next epoch: reshuffle, drop the ragged tail
            order, cursor = rng.permutation(n), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        pixels, _, _ = preprocess_batch(list(images[idx]), image_cfg)
        cap = torch.tensor([pair_captions[i][rng.integers(len(pair_captions[i]))] for i in idx])
        labels = match_labels(cap, classes[idx] if classes is not None else None, positives)

        _, img_emb = model.vision(torch.from_numpy(pixels))
        _, txt_emb = model.text(ids[cap], mask[cap] if mask is not None else None)
        loss = sigmoid_loss(img_emb, txt_emb, model.logit_scale, model.logit_bias, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()

        if (step + 1) % log_every == 0 or step == 0 or step + 1 == steps:
            record = {"step": step + 1, "loss": loss.item(), "lr": optimizer.param_groups[0]["lr"],
                      "logit_scale": model.logit_scale.item(), "logit_bias": model.logit_bias.item(),
                      "seconds": round(time.perf_counter() - start, 2)}
            history.append(record)
            log.info("step %(step)d  loss %(loss).4f  lr %(lr).2e  t %(logit_scale).3f  b %(logit_bias).3f  "
                     "%(seconds).1fs", record)
            if callback is not None:
                callback(record, model)
        return step + 1

    # Ctrl-C is taken between steps: the first one lets the running step finish (so the saved weights, optimizer and
    # data position agree, and --resume is exact); a second one stops at once.
    stop_requested: list[bool] = []

    def on_sigint(signum, frame):
        if stop_requested:
            raise KeyboardInterrupt
        stop_requested.append(True)
        log.warning("Ctrl-C: finishing this step, then saving (Ctrl-C again to stop now)")

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    stepping = False
    try:
        if progress is not None and done:
            progress(done)
        for step in range(done, steps):
            stepping = True
            done = _train_step(step)
            stepping = False
            if stop_requested:
                raise KeyboardInterrupt
            if done % save_every == 0 and done < steps:
                checkpoint(complete=False)
            if progress is not None:
                progress(1)
    except KeyboardInterrupt:
        # stopped inside a step: its update may be half applied, so keep the weights but not a resumable state
        if done:
            checkpoint(complete=False, with_state=not stepping)
        raise TrainingInterrupted(out, done, steps, saved=done > 0, resumable=done > 0 and not stepping) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    model.eval()
    _save_atomic(model, out, preprocessor)
    (out / TRAIN_STATE).unlink(missing_ok=True)
    result = TrainResult(out, n, skipped, round(time.perf_counter() - start, 2), history)
    _write_json(out / "training.json", {**summary, "step": steps, "complete": True, "seconds": result.seconds,
                                        "final_loss": result.final_loss, "history": history})
    return result



# What makes `out` a model folder, the only kind --overwrite may replace.
MODEL_MARKERS = ("config.json", "model.safetensors", "training.json")


TRAIN_STATE = "train_state.pt"  # optimizer, schedule, data order, random state of an unfinished run


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `train`: the model as of `step` (of `steps`) was saved to `folder` when `saved`, with the state
    `train(..., resume=True)` continues from when `resumable`."""

    def __init__(self, folder: Path, step: int, steps: int, saved: bool, resumable: bool = False):
        super().__init__(f"interrupted at step {step}/{steps}")
        self.folder, self.step, self.steps, self.saved, self.resumable = folder, step, steps, saved, resumable


def _read_state(out: Path) -> dict:
    path = out / TRAIN_STATE
    if not path.is_file():
        raise SigliteError(f"{out}: nothing to resume (no {TRAIN_STATE}: the run finished, or stopped before its "
                           f"first save or inside a step)")
    try:
        return torch.load(path, weights_only=True)  # plain tensors and Python values: no unpickling of code
    except Exception as e:  # noqa: BLE001 - any unreadable state is the same one-line error
        raise SigliteError(f"{path}: unreadable training state ({type(e).__name__}: {e})") from None


def _save_atomic(model: torch.nn.Module, out: Path, preprocessor: dict) -> None:
    """save_checkpoint into a hidden folder inside `out`, then each file renamed over its old version: a reader (or a
    crash mid-save) sees the previous checkpoint's files or the new ones, never a truncated model.safetensors."""
    from ..checkpoints import save_checkpoint

    tmp = out / f".checkpoint.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        save_checkpoint(model, tmp, image_config=preprocessor)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_json(path: Path, obj: dict) -> None:
    from ..fileio import write_json

    write_json(path, obj)
