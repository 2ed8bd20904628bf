"""The Ray backend of ``siglite embed --distributed ray``: an embed job's shards on a Ray cluster, through Ray Data.

Each pending shard becomes one row of a Ray dataset; ``map_batches`` hands rows to a fixed pool of `ShardWorker`
actors (one per GPU, else one per CPU slot). An actor loads the model once and runs `runner.run_shards` on each shard
it gets: the same batches, files and done markers as the single-process path, so the rows are the same and a killed
Ray job resumes like any other. Actors write into the output folder themselves (on a multi-node cluster it must be on
a filesystem every node sees, as must the inputs and the model folder); the driver only collects the shard records.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from typing import Callable

import numpy as np

from ...errors import SigliteError
from ...data.sources import Source
from .runner import EmbedConfig, Shard, make_step, run_shards
from .store import OutputDir


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SigliteError("--distributed ray needs Ray Data: pip install 'siglite[ray]'") from None
    return ray


class ShardWorker:
    """A Ray Data callable class: one model per actor, one shard per call."""

    def __init__(self, load_args: dict, source: Source, cfg: EmbedConfig, out: str, dims: dict):
        import siglite

        args = dict(load_args)
        budget = args.pop("max_num_patches", None)  # NaFlex patch budget (siglite embed --max-num-patches)
        model = siglite.load(args.pop("name_or_path"), **args).set_patch_budget(budget)
        self.step = make_step(model, source, cfg)
        self.out = OutputDir(out, source.modality)
        self.dims = dims

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards = [pickle.loads(p) for p in batch["shard"]]
        records = [json.dumps(r) for r in run_shards(self.step, shards, self.out, self.dims)]
        return {"record": np.array(records, dtype=object)}


def run_shards_ray(load_args: dict, source: Source, shards: list[Shard], cfg: EmbedConfig, out: str, dims: dict, *,
                   workers: int | None = None, on_shard: Callable[[dict], None] | None = None) -> list[dict]:
    """Runs `shards` on Ray actors; returns their done-marker records.

    Connects to RAY_ADDRESS when set (or to the Ray instance this process already started), else starts a local
    cluster and shuts it down afterwards.

    Args:
        load_args: ``siglite.load`` kwargs plus "name_or_path"; every actor loads the model with them.
        source: The job's source (pickled to every actor; items travel with their shard).
        shards: The shards still to do.
        cfg: The job's settings; ``workers`` is replaced by ``workers`` or the actor's CPU share.
        out: Output folder, seen by every actor.
        dims: Output dims from the driver's probe (for shards where every item failed).
        workers: Decode threads per actor (default: the CPUs reserved per actor).
        on_shard: Called with each shard's record as it completes.
    """
    if not shards:
        return []
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False)
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        actors = min(gpus or cpus, len(shards))
        cpus_per_actor = max(1, cpus // actors) if gpus else 1
        actor_cfg = dataclasses.replace(cfg, workers=workers or cpus_per_actor)
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts images, not blocks
        rows = [{"shard": pickle.dumps(s)} for s in shards]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map_batches(
            ShardWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={"load_args": load_args, "source": source, "cfg": actor_cfg, "out": out,
                                   "dims": dims},
            num_gpus=1 if gpus else 0, num_cpus=cpus_per_actor,
        )
        records = []
        for row in ds.iter_rows():
            record = json.loads(row["record"])
            records.append(record)
            if on_shard:
                on_shard(record)
        return records
    finally:
        if started:
            ray.shutdown()
