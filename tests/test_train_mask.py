"""`siglite train` trains SigLIP as it was trained: no padding mask, even when the tokenizer returns one."""

from __future__ import annotations

import siglite
from siglite.model import TextTower
from siglite.data import synthetic
from siglite.tasks.train import train


def test_fine_tuning_passes_no_padding_mask(tiny_gemma, tmp_path, monkeypatch):
    """tiny_gemma's Gemma tokenizer returns an attention_mask; the training forward must not use it."""
    _, mask = siglite.load(tiny_gemma, text_mask=True).tokenize(["red circle"])
    assert mask is not None and mask.min() == 0  # the tokenizer does return a (padding) mask
    seen = []
    forward = TextTower.forward

    def spy(self, ids, mask=None):
        seen.append(mask)
        return forward(self, ids, mask)

    monkeypatch.setattr(TextTower, "forward", spy)
    train(synthetic.generate(8, seed=5, image_size=32), tmp_path / "tuned", init=tiny_gemma, steps=2, batch_size=4)
    assert seen and all(m is None for m in seen), f"{sum(m is not None for m in seen)} of {len(seen)} calls masked"
