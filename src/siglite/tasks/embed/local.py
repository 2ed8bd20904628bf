"""The local backend of `siglite embed`: the pending shards in this process, decode threads feeding one engine."""

from __future__ import annotations

from typing import Callable

from .runner import Shard, run_shards
from .store import OutputDir


def run_local(step, shards: list[Shard], out: OutputDir, dims: dict,
              on_batch: Callable[[int], None] | None = None) -> list[dict]:
    """Runs `shards` with `step` (see `runner.make_step`); returns their done-marker records."""
    return list(run_shards(step, shards, out, dims, on_batch=on_batch))
