"""`siglite embed --distributed ray` on a local 2-CPU Ray cluster gives the same rows as the single-process path.

Each Ray actor holds one CPU, so torch runs it with one intra-op thread; the single-process reference runs with one
thread too, because the thread count changes fp32 summation order (about 3e-7 here) and the claim tested is bit
equality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import siglite
from siglite.tasks.embed import embed
from test_embed import read_output, write_images

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'siglite[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'siglite[ray]')")


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_matches_single_process(tiny_spiece, tmp_path, local_ray):
    write_images(tmp_path / "in", 9, seed=4)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    model = siglite.load(tiny_spiece, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = embed(model, tmp_path / "in", tmp_path / "local", shard_size=3, batch_size=2, progress=False)
    finally:
        torch.set_num_threads(threads)
    dist = embed(model, tmp_path / "in", tmp_path / "ray", shard_size=3, batch_size=2, distributed="ray",
                 progress=False)

    emb, meta, errors, manifest = read_output(tmp_path / "ray")
    ref_emb, ref_meta, ref_errors, ref_manifest = read_output(tmp_path / "local")
    assert (dist["shards_run"], dist["embedded"], dist["errors"]) == (4, 9, 1)
    assert meta == ref_meta and errors == ref_errors and manifest == ref_manifest
    print(f"ray vs single process: worst |Δ| = {float(np.abs(emb - ref_emb).max()):.2e}")
    assert emb.tobytes() == ref_emb.tobytes()
    assert local["settings_hash"] == dist["settings_hash"]
