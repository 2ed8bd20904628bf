"""Evaluation: zero-shot classification, image-text retrieval, and fidelity between two runs of one model.

Metric names and definitions follow CLIP_benchmark (https://github.com/LAION-AI/CLIP_benchmark,
``clip_benchmark/metrics/zeroshot_classification.py`` and ``zeroshot_retrieval.py``): ``acc1``, ``acc5``,
``mean_per_class_recall`` (sklearn's ``balanced_accuracy_score``), ``image_retrieval_recall@k`` (text -> image) and
``text_retrieval_recall@k`` (image -> text). Fidelity is reported as the seed ``shared/seeds/000_b64b46afb15a8577.txt``
does: per-image cosine similarity and MSE of ``last_hidden_state`` (flattened per image) and ``pooler_output``,
summarised as mean (min ~ max) and 1%-low.

The metric helpers at the top are small pure numpy functions; the task functions return flat dict records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..errors import SigliteError
from ..metrics import cosine_rows, mean_per_class_recall, mse_rows, recall_at_k, summarize, topk_accuracy
from ..pipeline import DEFAULT_BATCH, DEFAULT_TEMPLATE, Model
from ..preprocess import naflex
from ..preprocess.image import preprocess_batch
from ..data.datasets import LabelledImages

log = logging.getLogger(__name__)

RECALL_K = (1, 5, 10)
MAX_FAILURES_LISTED = 20  # records keep the first failures' reasons; the count is always complete
FIDELITY_OUTPUTS = {"hidden": "last_hidden_state", "pooled": "pooler_output"}


# -- metric helpers (pure numpy) --------------------------------------------------------------------------------------


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# -- zero-shot classification ----------------------------------------------------------------------------------------


def class_embeddings(model: Model, classnames: Sequence[str], templates: Sequence[str] | str = DEFAULT_TEMPLATE,
                     *, batch_size: int | None = None, progress=None) -> np.ndarray:
    """Unit-norm (C, P) class embeddings: each class's prompt embeddings normalised, averaged over the templates and
    renormalised (CLIP_benchmark ``zero_shot_classifier``). Templates use ``{c}`` (CLIP_benchmark) or ``{}``."""
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not classnames or not templates:
        raise SigliteError("zero-shot needs at least one class name and one template")
    prompts = [t.format(c, c=c) for c in classnames for t in templates]
    emb = _normalize(model.text_features(prompts, batch_size=batch_size, progress=progress))
    return _normalize(emb.reshape(len(classnames), len(templates), -1).mean(axis=1))


def _model_fields(model: Model) -> dict:
    return {"model": model.name, "engine": model.engine.name, "precision": model.engine.precision}


def _failure_fields(failures: list[tuple[int, str]]) -> dict:
    for _, reason in failures[:MAX_FAILURES_LISTED]:
        log.warning("skipped image: %s", reason)
    return {"n_failed": len(failures), "failures": [reason for _, reason in failures[:MAX_FAILURES_LISTED]]}


def zero_shot(model: Model, dataset: LabelledImages, classnames: Sequence[str] | None = None,
              templates: Sequence[str] | str = DEFAULT_TEMPLATE, *, preprocess: str = "resize",
              batch_size: int | None = None, progress=None) -> dict:
    """Zero-shot classification accuracy.

    Images are ranked against the class embeddings by their logits (the sigmoid is monotonic, so probabilities
    rank the same). Images that cannot be decoded are skipped, counted in ``n_failed`` and left out of the metrics.

    Args:
        model: A loaded model with both towers.
        dataset: Images and integer labels (`read_image_folder`, `read_cifar100`, or any `LabelledImages`).
        classnames: Names in label order; default ``dataset.classnames``.
        templates: One template or a list (an ensemble), e.g. from `read_templates`.
        preprocess: "resize" (the checkpoint's processor) or "letterbox" (the seed's aspect-preserving recipe).
        batch_size: Images and prompts per forward pass.
        progress: Called with the number of prompts, then images, done after each batch (`siglite.progress`).

    Returns:
        A flat record with ``acc1``, ``acc5`` (None when there are fewer than 5 classes, where CLIP_benchmark
        reports NaN), ``mean_per_class_recall``, ``n`` (images scored), ``n_failed`` and the first failures' reasons.
    """
    classnames = list(classnames if classnames is not None else dataset.classnames)
    if dataset.labels and max(dataset.labels) >= len(classnames):
        raise SigliteError(f"{dataset.source}: label {max(dataset.labels)} but only {len(classnames)} class names")
    classes = class_embeddings(model, classnames, templates, batch_size=batch_size, progress=progress)
    out = model.encode_images(dataset.images, preprocess=preprocess, batch_size=batch_size, on_error="skip",
                              progress=progress)
    n_templates = 1 if isinstance(templates, str) else len(templates)
    record = {"task": "zeroshot", **_model_fields(model), "dataset": dataset.source, "preprocess": preprocess,
              "n_classes": len(classnames), "n_templates": n_templates, "n": len(out.indices)}
    if not out.indices:
        raise SigliteError(f"{dataset.source}: no image could be decoded ({len(out.failures)} failed)")
    labels = np.asarray(dataset.labels)[out.indices]
    logits = model.logits(out.features, classes)
    record.update({
        "acc1": topk_accuracy(logits, labels, 1),
        "acc5": topk_accuracy(logits, labels, 5) if len(classnames) >= 5 else None,
        "mean_per_class_recall": mean_per_class_recall(logits.argmax(axis=1), labels),
        **_failure_fields(out.failures),
    })
    return record


# -- retrieval -------------------------------------------------------------------------------------------------------


def retrieval(model: Model, items: Sequence[dict], k: Sequence[int] = RECALL_K, *, preprocess: str = "resize",
              batch_size: int | None = None, progress=None) -> dict:
    """Image-text retrieval recall@k, as CLIP_benchmark computes and names it.

    ``image_retrieval_recall@k``: for each caption (text -> image), is its image among the k best images.
    ``text_retrieval_recall@k``: for each image (image -> text), is any of its captions among the k best captions.
    Scores are cosine similarities (the logits' order). An image that cannot be decoded is left out with its
    captions and counted in ``n_failed``.

    Args:
        model: A loaded model with both towers.
        items: ``[{"image": path-or-array, "captions": [str, ...]}, ...]``, e.g. from `read_retrieval`.
        k: The cut-offs.
        preprocess: "resize" or "letterbox".
        batch_size: Images and captions per forward pass.
        progress: Called with the number of images, then captions, done after each batch.
    """
    if not items:
        raise SigliteError("retrieval: no items")
    out = model.encode_images([it["image"] for it in items], preprocess=preprocess, batch_size=batch_size,
                              on_error="skip", progress=progress)
    if not out.indices:
        raise SigliteError(f"retrieval: no image could be decoded ({len(out.failures)} failed)")
    texts, text_image = [], []  # text_image[t] = row of caption t's image in the image embeddings
    for row, i in enumerate(out.indices):
        texts += items[i]["captions"]
        text_image += [row] * len(items[i]["captions"])
    text_emb = _normalize(model.text_features(texts, batch_size=batch_size, progress=progress))
    scores = text_emb @ _normalize(out.features).T  # (T, I)
    positives = np.zeros(scores.shape, bool)
    positives[np.arange(len(texts)), text_image] = True
    record = {"task": "retrieval", **_model_fields(model), "preprocess": preprocess, "n_images": len(out.indices),
              "n_texts": len(texts)}
    for kk in k:
        record[f"image_retrieval_recall@{kk}"] = float(np.mean(recall_at_k(scores, positives, kk) > 0))
        record[f"text_retrieval_recall@{kk}"] = float(np.mean(recall_at_k(scores.T, positives.T, kk) > 0))
    record.update(_failure_fields(out.failures))
    return record


# -- fidelity --------------------------------------------------------------------------------------------------------


def _summary_fields(prefix: str, cos: np.ndarray, mse: np.ndarray) -> dict:
    fields = {}
    for metric, values in (("cosine", cos), ("mse", mse)):
        fields.update({f"{prefix}_{metric}_{stat}": v for stat, v in summarize(values).items()})
    return fields


def fidelity(reference: Model, candidate: Model, images: Sequence, labels: Sequence[int] | None = None,
             classnames: Sequence[str] | None = None, *, templates: Sequence[str] | str = DEFAULT_TEMPLATE,
             preprocess: str = "resize", batch_size: int | None = None, per_image: bool = False,
             progress=None) -> dict:
    """How closely `candidate` (another engine or precision of the same model) reproduces `reference`.

    Both see the same preprocessed pixels (SigLIP 2 NaFlex: the same patches, at the candidate's patch budget, e.g. an
    INT8 graph's; each image's own rows*cols tokens are compared). Per image: cosine similarity and MSE of
    ``last_hidden_state`` flattened to one vector (the seed's measure) and of ``pooler_output``. Each is summarised
    as mean, min, max, p1 (the "1%-low": the 1st percentile, see `summarize`) and p99, in fields
    ``{hidden|pooled}_{cosine|mse}_{stat}``.
    With `labels` and `classnames`, also each model's zero-shot ``acc1``/``acc5`` and ``top1_agreement`` (fraction
    of images both rank the same class first). A candidate without a text tower is scored with the reference's
    class embeddings.

    Args:
        reference: The model taken as truth (e.g. float32).
        candidate: The model under test (e.g. bfloat16, INT8, ONNX).
        images: Inputs accepted by `Model.encode_images`; undecodable ones are skipped and counted.
        labels: Class index per image (optional).
        classnames: Names in label order (needed with `labels`).
        templates: Prompt template(s) for the classification part.
        preprocess: "resize" or "letterbox" (the seed measured with letterbox).
        batch_size: Images per forward pass.
        per_image: Also return the per-image arrays under ``"per_image"`` (not a flat field).
        progress: Called with the number of images done after each batch.
    """
    if reference.image_config is None or candidate.image_config is None:
        raise SigliteError("fidelity needs two models with a vision tower")
    if labels is not None and (classnames is None or len(labels) != len(images)):
        raise SigliteError("fidelity: labels need class names and one label per image")
    batch_size = batch_size or DEFAULT_BATCH
    same_pixels = reference.image_config == candidate.image_config
    patches = isinstance(reference.image_config, naflex.NaflexConfig)
    budget = candidate.patch_budget() if patches else None
    metrics: dict[str, list] = {f"{o}_{m}": [] for o in FIDELITY_OUTPUTS for m in ("cosine", "mse")}
    pooled_ref, pooled_cand, kept, failures = [], [], [], []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        if patches:  # NaFlex: token counts vary per image, so both run through Model.encode_images
            ref = reference.encode_images(chunk, preprocess=preprocess, tokens=True, batch_size=len(chunk),
                                          max_num_patches=budget)
            ok, failed = ref.indices, ref.failures
            failures += [(start + i, reason) for i, reason in failed]
            if not ok:
                continue
            cand = candidate.encode_images([chunk[i] for i in ok], preprocess=preprocess, tokens=True,
                                           batch_size=len(ok), on_error="raise", max_num_patches=budget)
            p_ref, p_cand = (ref.features, cand.features) if ref.features.size else (None, None)
            pairs = [(a[None], b[None]) for a, b in zip(ref.tokens, cand.tokens)]  # one image at a time
            metrics["hidden_cosine"].append(np.concatenate([cosine_rows(a, b) for a, b in pairs]))
            metrics["hidden_mse"].append(np.concatenate([mse_rows(a, b) for a, b in pairs]))
        else:
            pixels, ok, failed = preprocess_batch(chunk, reference.image_config, preprocess, on_error="skip",
                                                  max_pixels=reference.max_pixels, background=reference.background)
            failures += [(start + i, reason) for i, reason in failed]
            if not ok:
                continue
            cand_pixels = pixels if same_pixels else preprocess_batch(
                [chunk[i] for i in ok], candidate.image_config, preprocess, max_pixels=candidate.max_pixels,
                background=candidate.background)[0]
            p_ref, h_ref = reference.engine.encode_image(pixels, tokens=True)
            p_cand, h_cand = candidate.engine.encode_image(cand_pixels, tokens=True)
            metrics["hidden_cosine"].append(cosine_rows(h_ref, h_cand))
            metrics["hidden_mse"].append(mse_rows(h_ref, h_cand))
        if p_ref is not None and p_cand is not None:
            metrics["pooled_cosine"].append(cosine_rows(p_ref, p_cand))
            metrics["pooled_mse"].append(mse_rows(p_ref, p_cand))
            pooled_ref.append(p_ref)
            pooled_cand.append(p_cand)
        kept += [start + i for i in ok]
        if progress is not None:
            progress(len(chunk))
    if not kept:
        raise SigliteError(f"fidelity: no image could be decoded ({len(failures)} failed)")
    values = {name: np.concatenate(v) for name, v in metrics.items() if v}
    record = {"task": "fidelity", "reference": _describe(reference), "candidate": _describe(candidate),
              "preprocess": preprocess, "n": len(kept)}
    for out in FIDELITY_OUTPUTS:
        if f"{out}_cosine" in values:
            record.update(_summary_fields(out, values[f"{out}_cosine"], values[f"{out}_mse"]))
    if labels is not None and pooled_ref:
        record.update(_agreement(reference, candidate, np.concatenate(pooled_ref), np.concatenate(pooled_cand),
                                 np.asarray(labels)[kept], classnames, templates, batch_size))
    record.update(_failure_fields(failures))
    if per_image:
        record["per_image"] = {"index": kept, **{k: v.tolist() for k, v in values.items()}}
    return record


def _describe(model: Model) -> str:
    return f"{model.name} ({model.engine.name}, {model.engine.precision})"


def _agreement(reference: Model, candidate: Model, pooled_ref: np.ndarray, pooled_cand: np.ndarray,
               labels: np.ndarray, classnames, templates, batch_size: int) -> dict:
    ref_classes = class_embeddings(reference, classnames, templates, batch_size=batch_size)
    cand_classes = (class_embeddings(candidate, classnames, templates, batch_size=batch_size)
                    if candidate.tokenizer is not None else ref_classes)
    ref_logits = reference.logits(pooled_ref, ref_classes)
    cand_logits = candidate.logits(pooled_cand, cand_classes)
    fields = {"top1_agreement": float(np.mean(ref_logits.argmax(1) == cand_logits.argmax(1)))}
    for who, logits in (("reference", ref_logits), ("candidate", cand_logits)):
        fields[f"{who}_acc1"] = topk_accuracy(logits, labels, 1)
        fields[f"{who}_acc5"] = topk_accuracy(logits, labels, 5) if len(classnames) >= 5 else None
    return fields


def text_fidelity(reference: Model, candidate: Model, texts: Sequence[str], *,
                  batch_size: int | None = None) -> dict:
    """Cosine similarity and MSE of the pooled text embeddings of `candidate` against `reference`, summarised like
    `fidelity` in fields ``text_{cosine|mse}_{stat}``."""
    if not texts:
        raise SigliteError("text_fidelity: no texts")
    ref = reference.text_features(texts, batch_size=batch_size)
    cand = candidate.text_features(texts, batch_size=batch_size)
    return {"task": "text_fidelity", "reference": _describe(reference), "candidate": _describe(candidate),
            "n": len(texts), **_summary_fields("text", cosine_rows(ref, cand), mse_rows(ref, cand))}


def _fmt(v: float, digits: int) -> str:
    # The seed prints 3 decimals; values too small for that (MSE of near-identical runs) switch to e-notation.
    if v != 0 and abs(v) < 10 ** -digits:
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}f}"


def _cell(summary: dict, prefix: str, digits: int) -> str:
    if prefix.endswith("cosine"):  # near-identical runs: add decimals until the mean shows its gap from 1
        mean = summary[f"{prefix}_mean"]
        while digits < 6 and round(mean, 6) < 1.0 and round(mean, digits) >= 1.0:
            digits += 1
    g = {s: _fmt(summary[f"{prefix}_{s}"], digits) for s in ("mean", "min", "max", "p1")}
    return f"{g['mean']} ( {g['min']} ~ {g['max']} ), {g['p1']}"


def fidelity_markdown(summary: dict, *, digits: int = 3) -> str:
    """A markdown table of a `fidelity` (or `text_fidelity`) record in the seed's format:
    ``mean ( min ~ max ), 1%-low`` per output, then the top-1/top-5 table when labels were given.

    Numbers have `digits` decimals (the seed's 3); a cosine row whose mean would round to 1 gets more (up to
    6), and values under ``10**-digits`` switch to e-notation, so a near-perfect run never reads as exactly 1 or 0.
    """
    lines = ["| Output | Cosine Similarity <br/> mean (min ~ max), 1% low | MSE <br/> mean (min ~ max), 1% low |",
             "|---|---|---|"]
    outputs = {**FIDELITY_OUTPUTS, "text": "text pooler_output"}
    for prefix, name in outputs.items():
        if f"{prefix}_cosine_mean" in summary:
            lines.append(f"| {name} | {_cell(summary, prefix + '_cosine', digits)} "
                         f"| {_cell(summary, prefix + '_mse', digits)} |")
    if "top1_agreement" in summary:
        def acc(who):
            a5 = summary.get(f"{who}_acc5")
            return f"{summary[f'{who}_acc1']:.4f} / " + (f"{a5:.4f}" if a5 is not None else "n/a")

        lines += ["", "| Reference TOP1 / TOP5 | Candidate TOP1 / TOP5 | TOP1 agreement |", "|---|---|---|",
                  f"| {acc('reference')} | {acc('candidate')} | {summary['top1_agreement']:.4f} |"]
    return "\n".join(lines)
