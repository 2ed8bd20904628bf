"""The HTTP app: OpenAI-shaped embeddings, zero-shot classification, models, health and metrics.

Request path: validate -> admit (429 when the queue is full) -> per item, in a thread pool: base64 / guarded fetch,
decode (pixel count checked from the header first), preprocess -> the item's batch queue -> the engine thread ->
normalise / truncate -> JSON. Items of a request flow independently, so decoding overlaps the engine and one request's
items may share batches with other requests. The first bad item fails its request with a 4xx naming `input[i]`; its
siblings are dropped from the queue, and nothing else is touched. A per-request deadline answers 504 and drops the
request's remaining items.

The app only sees a `Service`: `LocalService` (batchers on this process, `siglite serve`) or the Ray Serve replica's
(`ray_app.py`, `@serve.batch`), so both serve the same routes.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import ImageError
from ..pipeline import DEFAULT_TEMPLATE, Model
from ..preprocess import naflex
from ..preprocess.image import PREPROCESS, decode
from .batcher import Batcher, BatchStats, EngineFailed, QueueFull
from .metrics import Metrics
from .schemas import ClassifyRequest, EmbeddingRequest
from .security import InputRefused, TooLarge, UrlPolicy, image_bytes

log = logging.getLogger("siglite.serve")

MODALITIES = ("text", "image")
OPEN_PATHS = ("/health/live", "/health/ready")  # probes work without the API key


@dataclass
class ServeSettings:
    """Limits and options of one server. Every bound a client can hit is here."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024  # items admitted per model and modality (queued or being decoded); beyond: 429
    max_items: int = 256  # inputs per request (embeddings) / images per request (classify)
    max_labels: int = 1000
    max_body_bytes: int = 64 * 1024 * 1024  # beyond: 413 before the body is parsed
    max_image_bytes: int = 16 * 1024 * 1024  # encoded bytes per image; beyond: 413
    max_image_pixels: int = 50_000_000  # width x height, read from the header before decoding; beyond: 413
    max_text_chars: int = 20_000
    request_timeout_s: float = 30.0  # per-request deadline: 504
    retry_after_s: int = 1
    workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))  # decode/preprocess threads
    preprocess: str = "resize"
    label_cache_size: int = 4096
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    allow_url_domains: list[str] = field(default_factory=list)
    url_timeout_s: float = 10.0
    max_redirects: int = 3
    graceful_timeout_s: float | None = None  # SIGTERM: longest wait for in-flight requests (default: the deadline + 5)

    def url_policy(self) -> UrlPolicy:
        return UrlPolicy(list(self.allow_url_domains), max_bytes=self.max_image_bytes, timeout_s=self.url_timeout_s,
                         max_redirects=self.max_redirects)


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def response(self):
        from fastapi.responses import JSONResponse

        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 401:
            kind = "authentication_error"
        elif self.status == 429:
            kind = "rate_limit_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# ---------------------------------------------------------------------------------------------------------------------
# Scoring hook
# ---------------------------------------------------------------------------------------------------------------------


def label_scores(model: Model, image_features: np.ndarray, text_features: np.ndarray) -> tuple[np.ndarray, str]:
    """The model's own zero-shot scores (N images, L labels) from raw pooled embeddings, and their description:
    `Model.scores` (SigLIP: a sigmoid per label with the learned scale and bias, labels independent; CLIP: a softmax
    over the offered labels), exactly what `Model.classify` returns."""
    scores = model.scores(model.logits(image_features, text_features))
    how = "softmax(exp(t) * cos) over labels" if model.logit_kind == "softmax" else "sigmoid(exp(t) * cos + b)"
    return scores, how


# ---------------------------------------------------------------------------------------------------------------------
# Served models
# ---------------------------------------------------------------------------------------------------------------------


class ServedModel:
    """One loaded Model: its engine thread, the batch functions, the label-embedding cache."""

    def __init__(self, name: str, model: Model, settings: ServeSettings):
        self.name = name
        self.model = model
        self.settings = settings
        self.modalities = [m for m, ok in (("text", model.tokenizer is not None),
                                           ("image", model.image_config is not None)) if ok]
        self.engine_pool = ThreadPoolExecutor(1, thread_name_prefix=f"siglite-engine-{name}")
        self.batchers: dict[str, Batcher] = {}
        self.dimension: int | None = _config_dimension(model)
        self.label_cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "owned_by": "siglite",
                "family": self.model.config.get("model_type"), "modalities": self.modalities,
                "dimension": self.dimension, "precision": self.model.engine.precision, "engine": self.model.engine.name}

    def tokens_per_item(self, modality: str) -> int:
        """Tokens the encoder runs per item (for `usage`): the fixed text length, or the image's patch count."""
        cfg = self.model.config
        if modality == "text":
            return int((cfg.get("text_config") or {}).get("max_position_embeddings") or 0)
        if isinstance(self.model.image_config, naflex.NaflexConfig):  # at most the budget (a batch is padded to it)
            return self.model.patch_budget()
        vc = cfg.get("vision_config") or cfg
        size, patch = vc.get("image_size"), vc.get("patch_size")
        return int((size // patch) ** 2) if size and patch else 0

    # Batch functions: run in the engine thread.
    def run_images(self, pixels: list) -> list[np.ndarray]:
        cfg = self.model.image_config
        if isinstance(cfg, naflex.NaflexConfig):  # items are (patches, (rows, cols)): pad the batch, pass the grids
            batch = naflex.pad(pixels, cfg.patch_size**2 * 3, getattr(self.model.engine, "num_patches", None))
            pooled, _ = self.model.engine.encode_image(batch.patches, spatial_shapes=batch.spatial_shapes)
            return list(pooled)
        pooled, _ = self.model.engine.encode_image(np.stack(pixels))
        return list(pooled)

    def run_texts(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.model.text_features(texts, batch_size=len(texts)))

    def run_batch(self, modality: str) -> Callable[[list], list]:
        return self.run_images if modality == "image" else self.run_texts

    def cached_labels(self, prompts: list[str]) -> dict[str, np.ndarray]:
        found = {}
        for p in prompts:
            if p in self.label_cache:
                self.label_cache.move_to_end(p)
                found[p] = self.label_cache[p]
        return found

    def cache_labels(self, embeddings: dict[str, np.ndarray]) -> None:
        for p, e in embeddings.items():
            self.label_cache[p] = e
            self.label_cache.move_to_end(p)
        while len(self.label_cache) > self.settings.label_cache_size:
            self.label_cache.popitem(last=False)


def _config_dimension(model: Model) -> int | None:
    for key in ("vision_config", "text_config"):
        tower = model.config.get(key)
        if isinstance(tower, dict):
            return tower.get("projection_size") or tower.get("hidden_size")
    return model.config.get("hidden_size")


class LocalService:
    """Models, their batchers (this process) and the decode pool."""

    def __init__(self, models: dict[str, Model], settings: ServeSettings, metrics: Metrics | None = None):
        if not models:
            raise ValueError("serve needs at least one model")
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.models = {name: ServedModel(name, m, settings) for name, m in models.items()}
        self.pool: ThreadPoolExecutor | None = None
        self.warmed = False
        self.warmup_error: str | None = None
        self._warmup: asyncio.Task | None = None

    def make_batcher(self, sm: ServedModel, modality: str) -> Batcher:
        s = self.settings
        hist = self.metrics.batch_size.labels(sm.name, modality)
        model_t = self.metrics.stage_seconds.labels("model", sm.name, modality)
        queue_t = self.metrics.stage_seconds.labels("queue", sm.name, modality)

        def observe(stats: BatchStats) -> None:
            hist.observe(stats.size)
            model_t.observe(stats.seconds)
            for w in stats.waits:
                queue_t.observe(w)

        return Batcher(f"{sm.name}/{modality}", sm.run_batch(modality), sm.engine_pool,
                       max_batch_size=s.max_batch_size, max_wait_ms=s.max_wait_ms, max_queue=s.max_queue,
                       on_batch=observe, retry_after_s=s.retry_after_s)

    async def start(self) -> None:
        self.pool = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="siglite-decode")
        for sm in self.models.values():
            for modality in sm.modalities:
                b = self.make_batcher(sm, modality)
                b.start()
                sm.batchers[modality] = b
                self.metrics.watch_batcher(sm.name, modality, b)
        self._warmup = asyncio.get_running_loop().create_task(self.warm_up())

    async def warm_up(self) -> None:
        """One item through every queue, so the first client does not pay for lazy initialisation; sets ready."""
        try:
            for sm in self.models.values():
                for modality, b in sm.batchers.items():
                    if modality == "image":
                        c = sm.model.image_config
                        payload = ((np.zeros((1, c.patch_size**2 * 3), np.float32), (1, 1))
                                   if isinstance(c, naflex.NaflexConfig)
                                   else np.zeros((3, c.height, c.width), np.float32))
                    else:
                        payload = "warm-up"
                    out = await b.submit(payload)
                    sm.dimension = int(np.asarray(out).shape[-1])
            self.warmed = True
        except Exception as exc:  # reported by /health/ready
            self.warmup_error = f"{type(exc).__name__}: {exc}"
            log.exception("warm-up failed")

    async def stop(self) -> None:
        if self._warmup is not None:
            self._warmup.cancel()
        for sm in self.models.values():
            for b in sm.batchers.values():
                await b.stop()
            sm.engine_pool.shutdown(wait=False, cancel_futures=True)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def readiness(self) -> tuple[bool, str]:
        if self.warmup_error:
            return False, f"warm-up failed: {self.warmup_error}"
        if not self.warmed:
            return False, "warming up"
        dead = [b.name for sm in self.models.values() for b in sm.batchers.values() if not b.alive]
        if dead:
            return False, f"batch worker stopped: {', '.join(dead)}"
        return True, "ready"


# ---------------------------------------------------------------------------------------------------------------------
# Request processing (shared by every Service)
# ---------------------------------------------------------------------------------------------------------------------


def prepare_image(value: str, index: int, sm: ServedModel, settings: ServeSettings, policy: UrlPolicy,
                  metrics: Metrics, param: str) -> np.ndarray:
    """One image string -> (3, H, W) pixels, in a pool thread. Raises ApiError naming `param[index]`."""
    where = f"{param}[{index}]"
    t0 = time.perf_counter()
    try:
        data = image_bytes(value, max_bytes=settings.max_image_bytes, policy=policy)
    except TooLarge as exc:
        raise ApiError(413, f"{where}: {exc}", param=where, code="image_too_large") from None
    except InputRefused as exc:
        raise ApiError(400, f"{where}: {exc}", param=where, code="invalid_image") from None
    t1 = time.perf_counter()
    try:
        rgb = decode(data, max_pixels=settings.max_image_pixels, background=sm.model.background)
    except ImageError as exc:
        if "pixel limit" in exc.reason:
            raise ApiError(413, f"{where}: {exc.reason}", param=where, code="image_too_large") from None
        raise ApiError(400, f"{where}: {exc.reason}", param=where, code="invalid_image") from None
    t2 = time.perf_counter()
    try:
        cfg = sm.model.image_config
        if isinstance(cfg, naflex.NaflexConfig):  # NaFlex keeps the aspect ratio: patches at the model's budget
            pixels = naflex.preprocess(rgb, cfg, sm.model.patch_budget())
        else:
            pixels = PREPROCESS[settings.preprocess](rgb, cfg)
    except ImageError as exc:
        raise ApiError(400, f"{where}: {exc.reason}", param=where, code="invalid_image") from None
    t3 = time.perf_counter()
    stage = metrics.stage_seconds
    stage.labels("read", sm.name, "image").observe(t1 - t0)
    stage.labels("decode", sm.name, "image").observe(t2 - t1)
    stage.labels("preprocess", sm.name, "image").observe(t3 - t2)
    return pixels


async def encode_items(service, sm: ServedModel, modality: str, inputs: list[str], deadline: float,
                       param: str) -> np.ndarray:
    """Raw pooled embeddings (N, D) of a request's inputs, through the model's batch queue."""
    s = service.settings
    if modality not in sm.batchers:
        raise ApiError(400, f"model {sm.name!r} has no {modality} tower", param="modality")
    batcher = sm.batchers[modality]
    try:
        batcher.admit(len(inputs))
    except QueueFull as exc:
        raise ApiError(429, str(exc), code="queue_full", headers={"Retry-After": str(int(exc.retry_after))}) from None
    loop = asyncio.get_running_loop()
    policy = service.url_policy
    async def one(index: int, value: str):
        payload = value
        if modality == "image":
            payload = await loop.run_in_executor(service.pool, prepare_image, value, index, sm, s, policy,
                                                 service.metrics, param)
        return await batcher.submit(payload)

    tasks = [asyncio.ensure_future(one(i, v)) for i, v in enumerate(inputs)]
    try:
        remaining = deadline - time.monotonic()
        rows = await asyncio.wait_for(asyncio.gather(*tasks), timeout=max(remaining, 0.001))
    except asyncio.TimeoutError:
        raise ApiError(504, f"request did not finish within its deadline of {s.request_timeout_s:g} s",
                       code="timeout") from None
    except EngineFailed as exc:
        raise ApiError(500, str(exc), code="engine_error") from None
    finally:
        for t in tasks:  # a failed sibling or the deadline: drop what is still queued
            _settle(t)
        batcher.release(len(inputs))
    return np.stack([np.asarray(r, dtype=np.float32) for r in rows])


def _settle(task: asyncio.Future) -> None:
    """Cancel a task still running; mark a finished one's exception as seen (the request already answered)."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


def finish_embeddings(raw: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    if dimensions is not None:
        if dimensions > raw.shape[1]:
            raise ApiError(400, f"dimensions={dimensions} is larger than the model's {raw.shape[1]}",
                           param="dimensions")
        raw = raw[:, :dimensions]
    if normalize:
        raw = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    return raw.astype(np.float32)


def _model(service, name: str) -> ServedModel:
    sm = service.models.get(name)
    if sm is None:
        raise ApiError(404, f"model {name!r} is not served here; available: {', '.join(service.models)}",
                       param="model", code="model_not_found")
    return sm


def _check_texts(texts: list[str], s: ServeSettings, param: str) -> None:
    for i, t in enumerate(texts):
        if len(t) > s.max_text_chars:
            raise ApiError(413, f"{param}[{i}]: text has {len(t)} characters, over the limit of {s.max_text_chars}",
                           param=f"{param}[{i}]")


# ---------------------------------------------------------------------------------------------------------------------
# ASGI middleware: body limit, API key, request metrics
# ---------------------------------------------------------------------------------------------------------------------


class GuardMiddleware:
    """Counts every response by route and status; refuses bodies over the limit (413) and, when an API key is set,
    requests without `Authorization: Bearer KEY` (401) except the health probes."""

    def __init__(self, app, settings: ServeSettings, metrics: Metrics):
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = self.metrics.route(scope["path"])
        status = {"code": 500}
        t0 = time.perf_counter()

        async def send_counting(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            error = self._refuse(scope)
            if error is not None:
                return await error.response()(scope, receive, send_counting)
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body, error = await self._read_body(scope, receive)
                if error is not None:
                    return await error.response()(scope, receive, send_counting)
                receive = _replay(body, receive)
            await self.app(scope, receive, send_counting)
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - t0)

    def _refuse(self, scope) -> ApiError | None:
        key = self.settings.api_key
        if not key or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            return None
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            return ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", code="invalid_api_key",
                            headers={"WWW-Authenticate": "Bearer"})
        return None

    async def _read_body(self, scope, receive) -> tuple[bytes, ApiError | None]:
        limit = self.settings.max_body_bytes
        too_big = ApiError(413, f"request body is over the limit of {limit} bytes", code="body_too_large")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return b"", too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", too_big
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return b"".join(chunks), None


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# ---------------------------------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------------------------------


def create_app(service_factory: Callable[[], object], settings: ServeSettings, metrics: Metrics | None = None):
    """The FastAPI app over the Service `service_factory()` returns (called at start-up, in the serving process).

    The service must offer `models` ({name: ServedModel} with `batchers`), `settings`, `metrics`, `pool`,
    `url_policy`, `start()`, `stop()` and `readiness()`.
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    metrics = metrics or Metrics()
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service = service_factory()
        service.url_policy = settings.url_policy()
        state["service"] = service
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="siglite", version=_version(), lifespan=lifespan)

    def svc():
        return state["service"]

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        field_name = ".".join(loc) or "body"
        extra = "; unknown field" if first.get("type") == "extra_forbidden" else ""
        return ApiError(400, f"{field_name}: {first.get('msg')}{extra}", param=field_name).response()

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest):
        service = svc()
        s = service.settings
        deadline = time.monotonic() + s.request_timeout_s
        sm = _model(service, req.model)
        inputs = [req.input] if isinstance(req.input, str) else req.input
        if not inputs:
            raise ApiError(400, "input: empty list", param="input")
        if len(inputs) > s.max_items:
            raise ApiError(413, f"input: {len(inputs)} items, over the limit of {s.max_items} per request",
                           param="input", code="too_many_items")
        if req.modality == "text":
            _check_texts(inputs, s, "input")
        raw = await encode_items(service, sm, req.modality, inputs, deadline, "input")
        vecs = finish_embeddings(raw, req.dimensions, req.normalize)
        if req.encoding_format == "base64":
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vecs]
        else:
            data = vecs.tolist()
        tokens = sm.tokens_per_item(req.modality) * len(inputs)
        body = {"object": "list", "model": sm.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)]}
        return JSONResponse(body)

    @app.post("/v1/classify")
    async def classify(req: ClassifyRequest):
        service = svc()
        s = service.settings
        deadline = time.monotonic() + s.request_timeout_s
        sm = _model(service, req.model)
        if len(req.images) > s.max_items:
            raise ApiError(413, f"images: {len(req.images)} items, over the limit of {s.max_items} per request",
                           param="images", code="too_many_items")
        if len(req.labels) > s.max_labels:
            raise ApiError(413, f"labels: {len(req.labels)} labels, over the limit of {s.max_labels}",
                           param="labels", code="too_many_items")
        template = DEFAULT_TEMPLATE if req.template is None else req.template
        if "{}" not in template:
            raise ApiError(400, "template: must contain {} where the label goes", param="template")
        _check_texts(req.labels, s, "labels")
        # str.replace, not str.format: a client's template must not reach format-string attribute lookups.
        prompts = [template.replace("{}", label) for label in req.labels]
        cached = sm.cached_labels(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in cached))
        images_task = asyncio.ensure_future(encode_items(service, sm, "image", req.images, deadline, "images"))
        try:
            if missing:
                new = await encode_items(service, sm, "text", missing, deadline, "labels")
                fresh = dict(zip(missing, new))
                sm.cache_labels(fresh)
                cached.update(fresh)
            img = await images_task
        finally:
            _settle(images_task)
        txt = np.stack([cached[p] for p in prompts])
        scores, how = label_scores(sm.model, img, txt)
        k = min(req.top_k or len(req.labels), len(req.labels))
        data = []
        for i, row in enumerate(scores):
            order = np.argsort(-row, kind="stable")[:k]
            data.append({"index": i, "scores": [{"label": req.labels[j], "score": float(row[j])} for j in order]})
        return JSONResponse({"object": "list", "model": sm.name, "scoring": how, "data": data})

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [sm.card() for sm in svc().models.values()]}

    @app.get("/health/live")
    async def live():
        return {"status": "live"}

    @app.get("/health/ready")
    async def ready():
        ok, why = svc().readiness() if "service" in state else (False, "starting")
        return JSONResponse({"status": "ready" if ok else "not ready", "reason": why}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics_route():
        return Response(metrics.render(), media_type=metrics.content_type)

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(GuardMiddleware, settings=settings, metrics=metrics)
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    else:
        app.add_middleware(GuardMiddleware, settings=settings, metrics=metrics)
    return app


def build_local_app(models: dict[str, Model], settings: ServeSettings):
    """The app served by `siglite serve` (one process, dynamic batching in it)."""
    metrics = Metrics()
    return create_app(lambda: LocalService(models, settings, metrics), settings, metrics)


def run_server(models: dict[str, Model], settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000,
               log_level: str = "info", sock=None) -> int:
    """Serve until SIGTERM/SIGINT; in-flight requests finish first. Returns 0 after a graceful stop."""
    import signal

    import uvicorn

    app = build_local_app(models, settings)
    grace = settings.graceful_timeout_s if settings.graceful_timeout_s is not None else settings.request_timeout_s + 5
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace,
                            limit_concurrency=None, server_header=False)
    server = uvicorn.Server(config)
    # uvicorn re-raises the caught signal once it has shut down gracefully; a handler of our own turns that into a
    # normal return, so a SIGTERM'd server exits 0.
    stopped = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: stopped.append(s))
    server.run(sockets=[sock] if sock is not None else None)
    return 0


def _version() -> str:
    from .. import __version__

    return __version__
