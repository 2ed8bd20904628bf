"""`siglite serve` end to end: the real server (uvicorn on a 127.0.0.1 ephemeral port) called with the official
`openai` client and with plain httpx, on the committed trained-tiny fixture.

One main server for the module; a second, "gated" one whose engine a test can hold (threading.Event) to make queue
full (429), deadline (504), readiness-before-warm-up and cross-request batching deterministic instead of timing-bound.
"""

from __future__ import annotations

import base64
import http.server as http_server
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import siglite
from siglite.serve.app import ServeSettings, build_local_app
from siglite.serve.security import InputRefused, TooLarge, UrlPolicy, fetch, image_bytes, is_public

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

FIXTURE = Path(__file__).parent / "fixtures" / "trained-tiny"
NAME = "tiny"
KEY = "test-key"
TOL = 1e-5


# -- helpers ---------------------------------------------------------------------------------------------------------


class ThreadServer:
    """uvicorn in a background thread on 127.0.0.1:<ephemeral>."""

    def __init__(self, app):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self):
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() - t0 < 60, "server did not start"
            time.sleep(0.02)
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


class GatedEngine:
    """Wraps a real engine: records batch sizes, can hold every call until `gate` is set, can fail the next call."""

    def __init__(self, inner):
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.image_batches: list[int] = []
        self.fail_next = False

    def encode_image(self, pixels, tokens=False):
        self.image_batches.append(len(pixels))
        assert self.gate.wait(60)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("injected engine fault")
        return self.inner.encode_image(pixels, tokens=tokens)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def wait_ready(url: str, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready after {timeout} s")


def l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def worst(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# -- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    return siglite.load(FIXTURE)


@pytest.fixture(scope="module")
def server():
    settings = ServeSettings(max_batch_size=4, max_wait_ms=10, max_items=8, max_body_bytes=512 * 1024,
                             max_image_bytes=64 * 1024, max_image_pixels=1_000_000, max_text_chars=1000,
                             request_timeout_s=30, api_key=KEY, workers=2)
    srv = ThreadServer(build_local_app({NAME: siglite.load(FIXTURE)}, settings)).start()
    wait_ready(srv.url)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def gated():
    """Server whose engine starts held: warm-up cannot finish until a test opens the gate."""
    model = siglite.load(FIXTURE)
    engine = GatedEngine(model.engine)
    engine.gate.clear()
    model.engine = engine
    settings = ServeSettings(max_batch_size=4, max_wait_ms=1, max_queue=4, max_items=4, request_timeout_s=60,
                             workers=2)
    srv = ThreadServer(build_local_app({NAME: model}, settings)).start()
    srv.engine = engine
    srv.settings = settings  # the service reads it per request: the deadline test shortens it
    yield srv
    engine.gate.set()
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c


# -- parity ----------------------------------------------------------------------------------------------------------

TEXTS = ["a red circle", "A small blue square on the left.", "green triangle", "", "striped yellow star"]


def test_openai_client_text_embeddings_equal_library(client, reference):
    resp = client.embeddings.create(model=NAME, input=TEXTS)  # the client asks for base64 and decodes it
    got = np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)])
    want = l2(reference.text_features(TEXTS))
    print(f"text embeddings via openai client: worst |delta| = {worst(got, want):.3e}")
    assert got.shape == want.shape and worst(got, want) <= TOL
    assert resp.usage.prompt_tokens == 16 * len(TEXTS) and resp.model == NAME


def test_openai_client_image_embeddings_equal_library(client, reference, sample_images):
    # 5 images with max_batch_size 4: the request's items span two batches
    uris = [data_uri(p.read_bytes(), "image/jpeg" if p.suffix == ".jpg" else "image/png") for p in sample_images]
    resp = client.embeddings.create(model=NAME, input=uris, extra_body={"modality": "image"})
    got = np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)])
    want = l2(reference.image_features([str(p) for p in sample_images]))
    print(f"image embeddings via openai client: worst |delta| = {worst(got, want):.3e}")
    assert got.shape == want.shape and worst(got, want) <= TOL
    # bare base64 (no data: prefix) gives the same rows
    bare = [base64.b64encode(p.read_bytes()).decode() for p in sample_images[:2]]
    resp2 = client.embeddings.create(model=NAME, input=bare, extra_body={"modality": "image"})
    assert worst([d.embedding for d in resp2.data], want[:2]) <= TOL


def test_httpx_float_raw_and_dimensions(http, reference, sample_images):
    raw = reference.text_features(TEXTS[:2])
    r = http.post("/v1/embeddings", json={"model": NAME, "input": TEXTS[:2], "encoding_format": "float",
                                          "normalize": False})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    print(f"raw text embeddings via httpx: worst |delta| = {worst(got, raw):.3e}")
    assert worst(got, raw) <= TOL
    r = http.post("/v1/embeddings", json={"model": NAME, "input": TEXTS[:2], "dimensions": 8})
    got = np.array([d["embedding"] for d in r.json()["data"]])
    assert got.shape == (2, 8) and worst(got, l2(raw[:, :8])) <= TOL
    # base64 by hand: little-endian float32, as OpenAI's
    img = sample_images[0].read_bytes()
    r = http.post("/v1/embeddings", json={"model": NAME, "input": data_uri(img), "modality": "image",
                                          "encoding_format": "base64"})
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    assert worst(vec[None], l2(reference.image_features([str(sample_images[0])]))) <= TOL


def test_classify_matches_model_classify_and_caches_labels(http, server, reference, sample_images):
    labels = ["red circle", "blue square", "green triangle"]
    uris = [data_uri(p.read_bytes()) for p in sample_images[:3]]
    r = http.post("/v1/classify", json={"model": NAME, "images": uris, "labels": labels})
    assert r.status_code == 200, r.text
    body = r.json()
    want = reference.classify([str(p) for p in sample_images[:3]], labels)
    got = np.array([[{s["label"]: s["score"] for s in row["scores"]}[lab] for lab in labels] for row in body["data"]])
    print(f"classify vs Model.classify: worst |delta| = {worst(got, want):.3e}")
    assert worst(got, want) <= TOL
    for row in body["data"]:
        scores = [s["score"] for s in row["scores"]]
        assert scores == sorted(scores, reverse=True)
    assert body["scoring"].startswith("sigmoid")
    text_batches = _metric(http, 'siglite_batch_size_count{modality="text",model="tiny"}')
    r = http.post("/v1/classify", json={"model": NAME, "images": uris[:1], "labels": labels, "top_k": 1})
    assert r.status_code == 200 and len(r.json()["data"][0]["scores"]) == 1
    assert _metric(http, 'siglite_batch_size_count{modality="text",model="tiny"}') == text_batches  # cached


def _metric(http, line_prefix: str) -> float:
    text = http.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_prefix} not in /metrics")


# -- hostile input ---------------------------------------------------------------------------------------------------


def _bad_cases(sample_images):
    good_png = sample_images[1].read_bytes()
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    big_bytes = png_bytes(noise)
    assert len(big_bytes) > 64 * 1024
    huge = png_bytes(Image.new("L", (2000, 2000)))  # 4 Mpx of black: a few KB on the wire
    assert len(huge) < 64 * 1024
    img = lambda inp: {"model": NAME, "input": inp, "modality": "image"}  # noqa: E731
    return [
        ("invalid base64", img(["!!!not base64!!!"]), 400, "input[0]"),
        ("not an image", img([data_uri(b"hello world, not a picture")]), 400, "not a recognised image format"),
        ("truncated png", img([data_uri(good_png[: len(good_png) // 2])]), 400, "input[0]"),
        ("empty string", img([""]), 400, "input[0]"),
        ("empty data uri", img(["data:image/png;base64,"]), 400, "input[0]"),
        ("bad item in the middle", img([data_uri(good_png), data_uri(b"junk"), data_uri(good_png)]), 400,
         "input[1]"),
        ("too many items", img([data_uri(good_png)] * 9), 413, "over the limit of 8"),
        ("image bytes over limit", img([data_uri(big_bytes)]), 413, "input[0]"),
        ("pixels over limit", img([data_uri(huge)]), 413, "4000000 pixels"),
        ("text over limit", {"model": NAME, "input": ["x" * 1001]}, 413, "input[0]"),
        ("unknown model", {"model": "nope", "input": "x"}, 404, "nope"),
        ("bad modality", {"model": NAME, "input": "x", "modality": "audio"}, 400, "modality"),
        ("bad encoding", {"model": NAME, "input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
        ("dimensions 0", {"model": NAME, "input": "x", "dimensions": 0}, 400, "dimensions"),
        ("dimensions too big", {"model": NAME, "input": "x", "dimensions": 100000}, 400, "dimensions"),
        ("token ids", {"model": NAME, "input": [[1, 2, 3]]}, 400, "input"),
        ("empty input list", {"model": NAME, "input": []}, 400, "input"),
        ("unknown field", {"model": NAME, "input": "x", "modalty": "image"}, 400, "modalty"),
        ("url to loopback", img(["http://127.0.0.1:9/cat.png"]), 400, "not fetched"),
        ("file url", img(["file:///etc/passwd"]), 400, "input[0]"),
        ("file path", img([str(sample_images[1])]), 400, "file paths are refused"),
        ("classify no labels", {"model": NAME, "images": [data_uri(good_png)], "labels": []}, 400, "labels"),
        ("classify bad template", {"model": NAME, "images": [data_uri(good_png)], "labels": ["a"],
                                   "template": "no slot"}, 400, "template"),
        ("classify bad image", {"model": NAME, "images": [data_uri(good_png), "%%%"], "labels": ["a"]}, 400,
         "images[1]"),
    ]


def test_every_bad_input_gets_its_4xx_and_the_next_request_succeeds(http, sample_images):
    good = {"model": NAME, "input": [data_uri(sample_images[0].read_bytes())], "modality": "image"}
    for name, body, status, needle in _bad_cases(sample_images):
        route = "/v1/classify" if "images" in body else "/v1/embeddings"
        r = http.post(route, json=body)
        assert r.status_code == status, (name, r.status_code, r.text)
        err = r.json()["error"]
        assert needle in err["message"], (name, err)
        ok = http.post("/v1/embeddings", json=good)
        assert ok.status_code == 200, (name, ok.text)
    assert http.get("/health/ready").status_code == 200


def test_bad_requests_do_not_harm_concurrent_good_ones(server, reference, sample_images):
    """Good and bad requests in flight together: each bad one gets its 400, each good one its exact rows."""
    good_uris = [data_uri(p.read_bytes()) for p in sample_images[:3]]
    want = l2(reference.image_features([str(p) for p in sample_images[:3]]))
    bad_uris = [good_uris[0], data_uri(b"\x89PNG\r\n\x1a\n garbage"), good_uris[1]]
    results: list = []
    headers = {"Authorization": f"Bearer {KEY}"}

    def post(uris, kind):
        r = httpx.post(f"{server.url}/v1/embeddings", json={"model": NAME, "input": uris, "modality": "image"},
                       headers=headers, timeout=60)
        results.append((kind, r))

    threads = [threading.Thread(target=post, args=(good_uris if i % 2 else bad_uris, "good" if i % 2 else "bad"))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8
    for kind, r in results:
        if kind == "bad":
            assert r.status_code == 400 and r.json()["error"]["param"] == "input[1]", r.text
        else:
            assert r.status_code == 200, r.text
            assert worst([d["embedding"] for d in r.json()["data"]], want) <= TOL


def test_tiny_and_odd_images_are_fine(http):
    # a 1x1 image broke another server until restart (infinity #609); 16-bit, CMYK, palette+alpha decode too
    imgs = [Image.new("RGB", (1, 1), (255, 0, 0)), Image.new("I;16", (5, 3), 40000), Image.new("P", (9, 9)),
            Image.new("LA", (7, 4), (100, 50))]
    uris = [data_uri(png_bytes(i)) for i in imgs]
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(buf, "JPEG")
    uris.append(data_uri(buf.getvalue(), "image/jpeg"))
    r = http.post("/v1/embeddings", json={"model": NAME, "input": uris, "modality": "image"})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 5


def test_protocol_level_refusals(server, http):
    r = httpx.post(f"{server.url}/v1/embeddings", json={"model": NAME, "input": "x"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{server.url}/v1/embeddings", json={"model": NAME, "input": "x"},
                   headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert httpx.get(f"{server.url}/health/live").status_code == 200  # probes need no key
    json_type = {"Content-Type": "application/json"}
    r = http.post("/v1/embeddings", content=b'{"model": "tiny", "input": ', headers=json_type)
    assert r.status_code == 400
    r = http.post("/v1/embeddings", content=b"x" * (600 * 1024), headers=json_type)
    assert r.status_code == 413 and "body" in r.json()["error"]["message"]
    # no CORS unless --cors-origin
    r = http.options("/v1/embeddings",
                     headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    assert http.post("/v1/embeddings", json={"model": NAME, "input": "ok"}).status_code == 200


def test_loopback_url_never_contacted_and_file_never_read(http, tmp_path, sample_images):
    hits = []

    class Handler(http_server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(sample_images[1].read_bytes())

        def log_message(self, *a):
            pass

    httpd = http_server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/cat.png"
        r = http.post("/v1/embeddings", json={"model": NAME, "input": [url], "modality": "image"})
        assert r.status_code == 400 and "input[0]" in r.json()["error"]["message"]
        # a valid image file, by path: refused, not read
        path = tmp_path / "real.png"
        path.write_bytes(sample_images[1].read_bytes())
        for p in (str(path), f"file://{path}", "../../etc/passwd", "C:\\Windows\\win.ini"):
            r = http.post("/v1/embeddings", json={"model": NAME, "input": [p], "modality": "image"})
            assert r.status_code == 400, (p, r.text)
    finally:
        httpd.shutdown()
    assert hits == []


# -- URL guard (opt-in fetching) --------------------------------------------------------------------------------------


def test_url_guard_refuses_loopback_even_when_its_domain_is_allowed():
    policy = UrlPolicy(["127.0.0.1", "localhost"])
    for url in ("http://127.0.0.1/x.png", "http://localhost:8000/x.png", "https://127.0.0.1/x.png"):
        with pytest.raises(InputRefused, match="non-public address"):
            image_bytes(url, max_bytes=1000, policy=policy)
    assert not any(is_public(a) for a in ("127.0.0.1", "10.0.0.1", "192.168.1.1", "169.254.169.254", "::1",
                                          "fe80::1", "::ffff:127.0.0.1", "0.0.0.0", "100.64.0.1"))
    assert is_public("93.184.216.34")
    with pytest.raises(InputRefused, match="not fetched"):  # default: no domains, no fetching
        image_bytes("http://example.com/x.png", max_bytes=1000, policy=UrlPolicy())


def test_url_guard_rechecks_every_redirect_and_caps_size():
    png = png_bytes(Image.new("RGB", (4, 4)))
    addresses = {"img.example": ["93.184.216.34"], "evil.example": ["93.184.216.35"],
                 "rebind.img.example": ["10.0.0.7"]}
    policy = UrlPolicy(["img.example"], max_bytes=len(png) + 10,
                       resolve=lambda host, port: addresses.get(host, []))
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers["host"], request.url.path))
        routes = {"/ok.png": httpx.Response(200, content=png),
                  "/to-ok": httpx.Response(302, headers={"location": "/ok.png"}),
                  "/to-loopback": httpx.Response(302, headers={"location": "http://127.0.0.1/x.png"}),
                  "/to-other": httpx.Response(301, headers={"location": "http://evil.example/x.png"}),
                  "/to-private": httpx.Response(307, headers={"location": "http://rebind.img.example/x.png"}),
                  "/loop": httpx.Response(302, headers={"location": "/loop"}),
                  "/big.png": httpx.Response(200, content=png + b"\0" * 100)}
        return routes[request.url.path]

    transport = httpx.MockTransport(handler)
    assert fetch("http://img.example/to-ok", policy, transport=transport) == png
    # connected to the checked address, Host header kept
    assert seen[-1] == ("93.184.216.34", "img.example", "/ok.png")
    for path, match in (("/to-loopback", "not in the allowed domains|non-public"), ("/to-other", "allowed domains"),
                        ("/to-private", "non-public address 10.0.0.7"), ("/loop", "redirects")):
        with pytest.raises(InputRefused, match=match):
            fetch(f"http://img.example{path}", policy, transport=transport)
    with pytest.raises(TooLarge):
        fetch("http://img.example/big.png", policy, transport=transport)
    with pytest.raises(InputRefused, match="scheme"):
        policy.check("ftp://img.example/x.png")
    with pytest.raises(InputRefused, match="credentials"):
        policy.check("http://user:pw@img.example/x.png")


# -- batching, bounds, readiness (gated engine) -----------------------------------------------------------------------


def _metric_value(url: str, prefix: str, headers: dict | None = None) -> float:
    for line in httpx.get(f"{url}/metrics", headers=headers, timeout=10).text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def _queue_depth(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith('siglite_queue_depth{modality="image",model="tiny"}'):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def _wait_for(cond, timeout: float = 30.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.02)


def _post_async(url: str, body: dict, out: list, timeout: float = 30):
    def go():
        try:
            out.append(httpx.post(f"{url}/v1/embeddings", json=body, timeout=timeout))
        except Exception as exc:  # recorded, asserted by the caller
            out.append(exc)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_gated_server(gated, sample_images):
    """Readiness before warm-up, cross-request batching, queue full -> 429, deadline -> 504, engine fault -> 500,
    and the server healthy after each."""
    url, engine = gated.url, gated.engine
    one = {"model": NAME, "input": [data_uri(sample_images[0].read_bytes())], "modality": "image"}

    # not ready while warm-up is held; live all along
    assert httpx.get(f"{url}/health/live").status_code == 200
    r = httpx.get(f"{url}/health/ready")
    assert r.status_code == 503 and r.json()["reason"] == "warming up"
    engine.gate.set()
    wait_ready(url, 30)

    # six single-image requests queued while the engine is held leave in full batches, not one by one
    engine.gate.clear()
    engine.image_batches.clear()
    first: list = []
    threads = [_post_async(url, one, first)]
    while not engine.image_batches:  # the engine now holds a batch of 1
        time.sleep(0.01)
    for _ in range(3):
        threads.append(_post_async(url, one, first))
    _wait_for(lambda: _queue_depth(url) == 3)  # the three wait in the queue (limit 4 items: 1 running + 3 queued)
    # queue full -> 429 with Retry-After, without touching the admitted requests
    r = httpx.post(f"{url}/v1/embeddings", json=one, timeout=10)
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["type"] == "rate_limit_error"
    engine.gate.set()
    for t in threads:
        t.join(30)
    assert all(getattr(x, "status_code", None) == 200 for x in first), first
    print(f"engine batches while held: {engine.image_batches}")
    assert engine.image_batches[0] == 1 and max(engine.image_batches[1:]) == 3

    # deadline: a held engine -> 504 after a 1.5 s deadline; the worker and later requests are fine
    gated.settings.request_timeout_s = 1.5
    engine.gate.clear()
    t0 = time.monotonic()
    r = httpx.post(f"{url}/v1/embeddings", json=one, timeout=30)
    elapsed = time.monotonic() - t0
    assert r.status_code == 504 and "deadline" in r.json()["error"]["message"], r.text
    assert elapsed < 10
    gated.settings.request_timeout_s = 60
    engine.gate.set()
    assert httpx.post(f"{url}/v1/embeddings", json=one, timeout=30).status_code == 200

    # an engine exception fails that batch's request with 500 and nothing else
    engine.fail_next = True
    r = httpx.post(f"{url}/v1/embeddings", json=one, timeout=30)
    assert r.status_code == 500 and "injected engine fault" in r.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/embeddings", json=one, timeout=30).status_code == 200
    assert httpx.get(f"{url}/health/ready").status_code == 200


def test_models_health_metrics(http):
    cards = http.get("/v1/models").json()["data"]
    assert cards == [{"id": NAME, "object": "model", "owned_by": "siglite", "family": "siglip",
                      "modalities": ["text", "image"], "dimension": 64, "precision": "float32", "engine": "torch"}]
    assert http.get("/health/ready").json()["status"] == "ready"
    text = http.get("/metrics").text
    for name in ('siglite_requests_total{route="/v1/embeddings",status="200"}', "siglite_queue_depth{",
                 "siglite_batch_size_bucket{",
                 'siglite_stage_seconds_count{modality="image",model="tiny",stage="decode"}',
                 'stage="preprocess"', 'stage="model"', 'siglite_requests_total{route="/v1/embeddings",status="400"}'):
        assert name in text, name


# -- process-level: CLI, SIGTERM --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a fresh process imports torch and loads the model: 20-40 s on the shared 2-core machine
def test_sigterm_finishes_inflight_requests_and_exits_0(sample_images):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "SIGLITE_API_KEY": KEY}
    # a 3 s batch window keeps the requests in flight when SIGTERM arrives
    proc = subprocess.Popen([sys.executable, "-m", "siglite.cli.main", "serve", "--model", f"{NAME}={FIXTURE}",
                             "--port", str(port), "--max-wait-ms", "3000", "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, 90)
        body = {"model": NAME, "input": [data_uri(p.read_bytes()) for p in sample_images[:2]], "modality": "image"}
        results: list = []
        threads = []
        for _ in range(3):
            t = threading.Thread(target=lambda: results.append(httpx.post(
                f"{url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)))
            t.start()
            threads.append(t)
        # SIGTERM only once the server holds all six images (admitted, waiting for their batch)
        auth = {"Authorization": f"Bearer {KEY}"}
        _wait_for(lambda: _metric_value(url, 'siglite_admitted_items{modality="image",model="tiny"}', auth) >= 6)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = proc.stdout.read().decode(errors="replace")
    assert [r.status_code for r in results] == [200, 200, 200], out
    assert all(len(r.json()["data"]) == 2 for r in results)
    assert rc == 0, out
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health/live", timeout=2)


def test_cli_serve_refuses_bad_arguments(capsys):
    from siglite.cli.main import main

    assert main(["serve", "--model", "/no/such/model"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("siglite serve: error:") and len(err.strip().splitlines()) == 1
    assert main(["serve", "--model", str(FIXTURE), "--max-batch-size", "0"]) == 1


# -- units: batcher, readiness, CORS ----------------------------------------------------------------------------------


def test_batcher_skips_abandoned_items_and_survives_engine_errors():
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from siglite.serve.batcher import Batcher, EngineFailed, QueueFull

    calls: list[list] = []
    gate = threading.Event()

    def run(items):
        calls.append(list(items))
        gate.wait(10)
        if "boom" in items:
            raise ValueError("bad batch")
        return [x * 2 for x in items]

    async def main():
        b = Batcher("t", run, ThreadPoolExecutor(1), max_batch_size=3, max_wait_ms=1, max_queue=5)
        b.start()
        first = b.submit(1)  # occupies the engine while the rest queue
        while not calls:
            await asyncio.sleep(0.01)
        b.admit(5)
        with pytest.raises(QueueFull):
            b.admit(1)
        b.release(5)
        rest = [b.submit(x) for x in (2, 3, 4, 5, 6)]
        rest[1].cancel()  # its request gave up: never reaches the engine
        gate.set()
        assert await first == 2
        assert [await f for i, f in enumerate(rest) if i != 1] == [4, 8, 10, 12]
        bad = b.submit("boom")
        with pytest.raises(EngineFailed, match="bad batch"):
            await bad
        assert b.alive and await b.submit(7) == 14
        await b.stop()
        return calls

    calls = asyncio.run(main())
    assert calls[:3] == [[1], [2, 4, 5], [6]]  # 3 dropped; 5 items after the first span two batches of <= 3


def test_not_ready_when_a_batch_worker_died():
    import asyncio

    from siglite.serve.app import LocalService

    async def main():
        service = LocalService({NAME: siglite.load(FIXTURE)}, ServeSettings(workers=1))
        service.url_policy = UrlPolicy()
        await service.start()
        await service._warmup
        assert service.readiness() == (True, "ready")
        service.models[NAME].batchers["image"]._task.cancel()
        await asyncio.sleep(0.05)
        ok, why = service.readiness()
        await service.stop()
        return ok, why

    ok, why = asyncio.run(main())
    assert not ok and why == "batch worker stopped: tiny/image"


def test_cors_only_for_configured_origins():
    from fastapi.testclient import TestClient

    app = build_local_app({}, ServeSettings(cors_origins=["https://app.example"]))  # preflight needs no model
    client = TestClient(app)
    pre = {"Access-Control-Request-Method": "POST"}
    ok = client.options("/v1/embeddings", headers={"Origin": "https://app.example", **pre})
    assert ok.headers.get("access-control-allow-origin") == "https://app.example"
    other = client.options("/v1/embeddings", headers={"Origin": "https://evil.example", **pre})
    assert "access-control-allow-origin" not in other.headers
