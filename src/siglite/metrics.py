"""Metrics shared by evaluation, quantization and benchmarks: per-row cosine and MSE, their summaries (mean, min,
max, 1%-low), top-k accuracy, mean per-class recall, retrieval recall@k. numpy only; torch tensors are accepted
where noted and read as float64."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _rows(x) -> np.ndarray:
    """(N, ...) numpy array or torch tensor (any device or dtype) -> (N, -1) float64 numpy."""
    if hasattr(x, "detach"):  # a torch tensor: bfloat16 has no numpy dtype, and it may sit on a GPU
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`, every row flattened: (N, ...) -> (N,).

    Computed in float64; a zero row against a zero row counts as 1 (identical), against a non-zero row as 0.
    """
    a, b = _rows(a), _rows(b)
    if a.shape != b.shape:
        raise ValueError(f"cosine_rows: shapes differ, {a.shape} vs {b.shape}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.einsum("nd,nd->n", a, b)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, dot / np.maximum(na * nb, np.finfo(np.float64).tiny))


def mse_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared error of each row of `a` against the same row of `b`, rows flattened: (N, ...) -> (N,)."""
    a, b = _rows(a), _rows(b)
    if a.shape != b.shape:
        raise ValueError(f"mse_rows: shapes differ, {a.shape} vs {b.shape}")
    return np.mean((a - b) ** 2, axis=1)


def summarize(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """mean, min, max, p1 and p99 of per-image values.

    p1 is the seed's "1%-low": the 1st percentile (numpy's linear interpolation), the value 1% of images fall at or
    below. It is taken the same way for every metric, as the seed does; for MSE (lower is better) the bad tail is p99.
    """
    v = np.asarray(values, np.float64)
    if v.size == 0:
        raise ValueError("summarize: no values")
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
            "p1": float(np.percentile(v, 1)), "p99": float(np.percentile(v, 99))}


def _ranked(scores: np.ndarray) -> np.ndarray:
    # Descending; ties keep the lower index first (stable), so results do not depend on the sort implementation.
    return np.argsort(-np.asarray(scores), axis=1, kind="stable")


def topk_accuracy(scores: np.ndarray, labels: Sequence[int], k: int) -> float:
    """Fraction of rows whose label is among the k highest scores. scores (N, C), labels (N,)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if len(scores) == 0:
        raise ValueError("topk_accuracy: no rows")
    top = _ranked(scores)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def mean_per_class_recall(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Recall averaged over the classes that occur in `labels` (sklearn ``balanced_accuracy_score``, as
    CLIP_benchmark reports it); predicted classes that never occur in `labels` do not count."""
    pred, labels = np.asarray(predictions), np.asarray(labels)
    classes = np.unique(labels)
    if classes.size == 0:
        raise ValueError("mean_per_class_recall: no labels")
    return float(np.mean([np.mean(pred[labels == c] == c) for c in classes]))


def recall_at_k(scores: np.ndarray, positives: np.ndarray, k: int) -> np.ndarray:
    """Per query, the fraction of its positives found among the k highest-scoring candidates.

    Port of CLIP_benchmark's ``zeroshot_retrieval.recall_at_k``; its reported metric is ``(recall_at_k > 0).mean()``
    (any positive in the top k). scores (Q, M), positives (Q, M) bool; k larger than M is clipped to M.
    """
    scores, positives = np.asarray(scores), np.asarray(positives, bool)
    top = _ranked(scores)[:, :min(k, scores.shape[1])]
    hits = np.take_along_axis(positives, top, axis=1).sum(axis=1)
    return hits / np.maximum(positives.sum(axis=1), 1)


def cosine_summary(ref, test) -> dict[str, float]:
    """`summarize` of the per-row cosine of `test` against `ref` (numpy arrays or torch tensors, rows flattened):
    the fidelity measure the quantization reports, tests and benchmarks print (mean, min, max, p1 = 1%-low, p99)."""
    return summarize(cosine_rows(ref, test))
