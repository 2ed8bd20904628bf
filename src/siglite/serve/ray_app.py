"""`siglite serve --distributed ray`: the same FastAPI app as a Ray Serve deployment.

Each replica (one per GPU, else one per CPU slot) loads the models and serves `create_app` as its ingress
(`@serve.ingress()` with `__serve_build_asgi_app__`, so the app, its lifespan and its middleware are built inside the
replica). Batching across requests is Ray Serve's `@serve.batch` on the replica (`max_batch_size`,
`batch_wait_timeout_s` = --max-wait-ms); decoding and preprocessing still run in the replica's thread pool before an
item joins a batch, and the engine runs in the model's engine thread, so the replica's event loop keeps serving.
Admission (429), deadlines (504), limits, the URL guard and the API key are the same code as the local server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time

from .app import LocalService, ServedModel, ServeSettings, create_app
from .batcher import Batcher
from .metrics import Metrics

log = logging.getLogger("siglite.serve")


class RayQueue(Batcher):
    """The Batcher interface (admit/release/submit/alive/queued) over a `@serve.batch` method of the replica."""

    def __init__(self, name: str, submit_one, *, max_queue: int, retry_after_s: float):
        super().__init__(name, lambda items: items, executor=None, max_queue=max_queue, retry_after_s=retry_after_s)
        self._submit_one = submit_one
        self._pending = 0
        self._started = False

    def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        self._started = False

    @property
    def alive(self) -> bool:
        return self._started

    @property
    def queued(self) -> int:
        return self._pending

    def submit(self, payload) -> asyncio.Future:
        self._pending += 1

        async def one():
            try:
                return await self._submit_one(payload)
            finally:
                self._pending -= 1

        return asyncio.ensure_future(one())


class RayService(LocalService):
    """LocalService whose queues are the replica's `@serve.batch` methods."""

    def __init__(self, models, settings: ServeSettings, metrics: Metrics, replica):
        super().__init__(models, settings, metrics)
        self.replica = replica

    def make_batcher(self, sm: ServedModel, modality: str) -> Batcher:
        method = self.replica.image_batch if modality == "image" else self.replica.text_batch
        return RayQueue(f"{sm.name}/{modality}", lambda payload: method((sm.name, payload)),
                        max_queue=self.settings.max_queue, retry_after_s=self.settings.retry_after_s)


def deployment(specs: dict[str, str], load_args: dict, settings: ServeSettings, *, replicas: int = 1,
               num_cpus: float = 1, num_gpus: float = 0):
    """A bound Ray Serve application serving `specs` ({name: checkpoint}) with `settings`."""
    from ray import serve

    batch = serve.batch(max_batch_size=settings.max_batch_size, batch_wait_timeout_s=settings.max_wait_ms / 1000.0)

    @serve.deployment(name="siglite", num_replicas=replicas,
                      ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
                      max_ongoing_requests=max(8, settings.max_queue),
                      graceful_shutdown_timeout_s=settings.request_timeout_s + 5)
    @serve.ingress()
    class SigliteDeployment:
        def __init__(self, specs: dict[str, str], load_args: dict, settings: ServeSettings):
            import siglite

            self.settings = settings
            self.metrics = Metrics()
            models = {name: siglite.load(path, **load_args) for name, path in specs.items()}
            self.service = RayService(models, settings, self.metrics, self)

        def __serve_build_asgi_app__(self):
            return create_app(lambda: self.service, self.settings, self.metrics)

        async def _run(self, modality: str, items: list[tuple[str, object]]) -> list:
            """One @serve.batch call: items may belong to several models; each model's run in its engine thread."""
            loop = asyncio.get_running_loop()
            out: list = [None] * len(items)
            by_model: dict[str, list[int]] = {}
            for i, (name, _) in enumerate(items):
                by_model.setdefault(name, []).append(i)
            for name, idx in by_model.items():
                sm = self.service.models[name]
                t0 = time.perf_counter()
                rows = await loop.run_in_executor(sm.engine_pool, sm.run_batch(modality), [items[i][1] for i in idx])
                self.metrics.stage_seconds.labels("model", name, modality).observe(time.perf_counter() - t0)
                self.metrics.batch_size.labels(name, modality).observe(len(idx))
                for i, row in zip(idx, rows):
                    out[i] = row
            return out

        @batch
        async def image_batch(self, items: list[tuple[str, object]]) -> list:
            return await self._run("image", items)

        @batch
        async def text_batch(self, items: list[tuple[str, object]]) -> list:
            return await self._run("text", items)

    return SigliteDeployment.bind(specs, load_args, settings)


def run_ray(specs: dict[str, str], load_args: dict, settings: ServeSettings, *, host: str = "127.0.0.1",
            port: int = 8000, replicas: int = 1) -> int:
    """Start (or join, with RAY_ADDRESS) a Ray cluster, deploy, serve until SIGTERM/SIGINT, shut down. Returns 0."""
    import ray
    from ray import serve

    specs = {name: os.path.abspath(p) if os.path.exists(p) else p for name, p in specs.items()}  # replicas' cwd
    started = not ray.is_initialized()
    if started:
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = gpus > 0 and load_args.get("device") != "cpu"
    try:
        serve.start(http_options={"host": host, "port": port})
        app = deployment(specs, load_args, settings, replicas=replicas, num_cpus=1, num_gpus=1 if use_gpu else 0)
        serve.run(app, name="siglite", route_prefix="/")
        log.warning("siglite serve (Ray Serve, %d replica(s)) on http://%s:%d", replicas, host, port)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, f: stop.set())
        while not stop.wait(1.0):
            pass
        serve.shutdown()  # replicas drain in-flight requests (graceful_shutdown_timeout_s)
    finally:
        if started:
            ray.shutdown()
    return 0
