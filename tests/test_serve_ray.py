"""`siglite serve --distributed ray`: the same app as a Ray Serve deployment on a local 2-CPU Ray cluster gives the
library's embeddings and scores and the same 4xx answers.

Slow (starting Ray and Serve takes tens of seconds on the shared 2-core machine; ~100 s here):
`pytest -m slow tests/test_serve_ray.py`.
"""

from __future__ import annotations

import base64
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import siglite
from siglite.serve.app import ServeSettings

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'siglite[ray]')")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'ray[serve]')")
openai = pytest.importorskip("openai")

FIXTURE = Path(__file__).parent / "fixtures" / "trained-tiny"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_server():
    from siglite.serve.ray_app import deployment

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = ServeSettings(max_batch_size=4, max_wait_ms=20, max_items=8, workers=1)
        serve.run(deployment({"tiny": str(FIXTURE)}, {"device": "cpu"}, settings), name="siglite", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        while httpx.get(f"{url}/health/ready", timeout=10).status_code != 200:
            assert time.monotonic() - t0 < 120, "Ray Serve app not ready"
            time.sleep(0.2)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def test_ray_serve_same_api_same_numbers(ray_server, sample_images):
    reference = siglite.load(FIXTURE)
    client = openai.OpenAI(base_url=f"{ray_server}/v1", api_key="unused", max_retries=0, timeout=60)
    texts = ["a red circle", "blue square", "green triangle"]
    got = np.array([d.embedding for d in client.embeddings.create(model="tiny", input=texts).data])
    want = reference.text_features(texts)
    want = want / np.linalg.norm(want, axis=1, keepdims=True)
    d_text = float(np.abs(got - want).max())
    uris = [f"data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}" for p in sample_images]
    resp = client.embeddings.create(model="tiny", input=uris, extra_body={"modality": "image"})
    got = np.array([d.embedding for d in resp.data])
    want = reference.image_features([str(p) for p in sample_images])
    want = want / np.linalg.norm(want, axis=1, keepdims=True)
    d_img = float(np.abs(got - want).max())
    print(f"Ray Serve vs library: text worst |delta| = {d_text:.3e}, image worst |delta| = {d_img:.3e}")
    assert d_text <= 1e-5 and d_img <= 1e-5

    r = httpx.post(f"{ray_server}/v1/classify", json={"model": "tiny", "images": uris[:2], "labels": texts},
                   timeout=60)
    assert r.status_code == 200, r.text
    probs = reference.classify([str(p) for p in sample_images[:2]], texts)
    got = np.array([[{s["label"]: s["score"] for s in row["scores"]}[t] for t in texts] for row in r.json()["data"]])
    assert float(np.abs(got - probs).max()) <= 1e-5

    bad = httpx.post(f"{ray_server}/v1/embeddings", json={"model": "tiny", "modality": "image",
                                                          "input": [uris[0], "http://127.0.0.1/x.png"]}, timeout=60)
    assert bad.status_code == 400 and "input[1]" in bad.json()["error"]["message"]
    ok = httpx.post(f"{ray_server}/v1/embeddings", json={"model": "tiny", "input": "ok"}, timeout=60)
    assert ok.status_code == 200
    metrics = httpx.get(f"{ray_server}/metrics", timeout=30).text
    assert 'siglite_batch_size_count{modality="image",model="tiny"}' in metrics
