"""siglite.metrics: the summaries every fidelity number in the project is printed with, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from siglite.metrics import cosine_rows, cosine_summary, mse_rows, recall_at_k, summarize, topk_accuracy


def test_cosine_summary_by_hand():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    test = np.array([[2.0, 0.0], [1.0, 1.0], [-1.0, -1.0]])
    s = cosine_summary(ref, test)
    cos = np.array([1.0, 2 ** -0.5, -1.0])
    assert s["mean"] == pytest.approx(cos.mean())
    assert s["min"] == pytest.approx(-1.0) and s["max"] == pytest.approx(1.0)
    assert s["p1"] == pytest.approx(np.percentile(cos, 1)) and s["p99"] == pytest.approx(np.percentile(cos, 99))


def test_torch_inputs_of_any_dtype_read_as_float64():
    """Quantization and the GPU engine hand over tensors (bfloat16 has no numpy dtype); rows are flattened."""
    a = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]], dtype=torch.bfloat16)  # (2, 1, 2)
    b = torch.tensor([[[1.0, 1.0]], [[0.0, 3.0]]])
    np.testing.assert_allclose(cosine_rows(a, b), [2 ** -0.5, 1.0])
    np.testing.assert_allclose(mse_rows(a, b), [0.5, 0.5])
    assert cosine_rows(np.zeros((1, 3)), np.zeros((1, 3)))[0] == 1.0  # identical (both zero)
    with pytest.raises(ValueError, match="shapes differ"):
        cosine_rows(np.zeros((2, 3)), np.zeros((2, 4)))


def test_ranking_metrics_by_hand():
    scores = np.array([[0.1, 0.9, 0.5], [0.8, 0.1, 0.3]])
    assert topk_accuracy(scores, [2, 0], 1) == 0.5 and topk_accuracy(scores, [2, 0], 2) == 1.0
    positives = np.array([[True, False, True], [False, True, False]])
    np.testing.assert_allclose(recall_at_k(scores, positives, 2), [0.5, 0.0])
    assert summarize([1.0, 3.0])["mean"] == 2.0
