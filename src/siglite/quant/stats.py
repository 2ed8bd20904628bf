"""Calibration statistics of linear-layer inputs, gathered in one pass over the calibration batches and shared by
the INT8 and FP8 recipes: per input channel the min and max (hence amax, what SmoothQuant needs, and the static
activation range), and a random sample of input rows on which each recipe measures its own quantization error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import SigliteError


@dataclass
class InputStats:
    """One linear layer's input over the calibration set.

    Attributes:
        sample_rows: rows kept in all for the error measurements.
        per_batch: rows kept from each forward call at most, so that the sample spreads over the first batches.
        lo, hi: (K,) per-channel min and max.
        rows: sampled (m, K) float32 input rows, on the device the model runs on.
    """

    sample_rows: int
    per_batch: int
    lo: torch.Tensor | None = None
    hi: torch.Tensor | None = None
    rows: list = field(default_factory=list)
    kept: int = 0

    def update(self, x: torch.Tensor, gen: torch.Generator) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1]).float()  # (M, K)
        lo, hi = x2.amin(0), x2.amax(0)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        take = min(self.sample_rows - self.kept, self.per_batch)
        if take > 0:
            idx = torch.randperm(x2.shape[0], generator=gen)[:take].to(x2.device)  # CPU generator: same on any device
            self.rows.append(x2[idx])
            self.kept += len(idx)

    @property
    def amax(self) -> torch.Tensor:
        """(K,) per-channel max |x|."""
        return torch.maximum(self.hi.abs(), self.lo.abs())

    def sample(self) -> torch.Tensor:
        """The sampled rows, (<= sample_rows, K)."""
        return torch.cat(self.rows)

    def permute(self, perm: torch.Tensor) -> None:
        """The statistics of the input with its channels reordered (new position i holds old channel perm[i])."""
        self.lo, self.hi = self.lo[perm.to(self.lo.device)], self.hi[perm.to(self.hi.device)]
        self.rows = [r[:, perm.to(r.device)] for r in self.rows]

    def scale(self, s: torch.Tensor) -> None:
        """The statistics of the input divided channel-wise by `s` (> 0), as SmoothQuant migration leaves it."""
        s = s.to(self.lo.device)
        self.lo, self.hi = self.lo / s, self.hi / s


def collect(layers: dict[str, nn.Module], run: Callable[[], object], *, sample_rows: int,
            per_batch: int) -> dict[str, InputStats]:
    """Record the inputs of `layers` (name -> module) while `run()` runs the calibration set once.

    Raises:
        SigliteError: a layer the calibration never reached (named).
    """
    stats = {n: InputStats(sample_rows, per_batch) for n in layers}
    gen = torch.Generator().manual_seed(0)  # one stream in execution order: the same rows on every run
    hooks = [m.register_forward_pre_hook(lambda _m, args, s=stats[n]: s.update(args[0], gen))
             for n, m in layers.items()]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n, s in stats.items() if s.lo is None]
    if missing:
        raise SigliteError(f"calibration never reached layer(s) {', '.join(missing[:3])}")
    return stats
