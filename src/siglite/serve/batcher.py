"""Dynamic batching across requests: one queue per model and modality, one engine thread per model.

Items (one image's pixels, one text) from any number of requests wait in a queue; a batch leaves when it has
`max_batch_size` items or when its oldest item has waited `max_wait_ms`, so under load batches fill at once and a lone
request waits at most `max_wait_ms`. Items of one request may land in different batches. The engine runs in its own
thread (one per model, shared by its modalities, so two batches never compete for the same cores), while the
event loop keeps accepting, decoding and queueing. Admission is bounded: `admit(n)` reserves room for a request's n
items (queued or still being decoded) or raises `QueueFull` (the server answers 429). Items whose request gave up
(deadline, bad sibling item) are dropped before they reach the engine. An exception from the engine fails
only the items of that batch; the worker keeps running.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """No room for a request's items; retry after `retry_after` seconds."""

    def __init__(self, name: str, depth: int, limit: int, retry_after: float):
        self.retry_after = retry_after
        super().__init__(f"{name}: queue is full ({depth} of {limit} items admitted); retry later")


class EngineFailed(Exception):
    """The engine raised on a batch (a server-side fault, 500); the message is one line."""


@dataclass
class _Item:
    payload: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """What one batch cost, passed to the `on_batch` observer (metrics)."""

    size: int
    seconds: float  # engine time of the batch
    waits: list[float]  # each item's time in the queue


class Batcher:
    """Collects items from concurrent requests into engine batches.

    Args:
        name: For messages and metrics, e.g. "my-model/image".
        run_batch: Called in `executor` with a list of payloads; returns one result per payload, in order.
        executor: Where `run_batch` runs (a one-thread pool per model).
        max_batch_size: Largest batch handed to `run_batch`.
        max_wait_ms: Longest time the oldest queued item waits for a batch to fill.
        max_queue: Most items admitted at once (waiting in the queue or still being decoded).
        on_batch: Observer called after every batch with its `BatchStats`.
    """

    def __init__(self, name: str, run_batch: Callable[[list], Sequence], executor: Executor, *,
                 max_batch_size: int = 32, max_wait_ms: float = 5.0, max_queue: int = 1024,
                 on_batch: Callable[[BatchStats], None] | None = None, retry_after_s: float = 1.0):
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        self.name = name
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.retry_after_s = retry_after_s
        self.admitted = 0  # items reserved by admit() and not yet released
        self._items: collections.deque[_Item] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in self._items:
            if not item.future.done():
                item.future.cancel()
        self._items.clear()

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued(self) -> int:
        return len(self._items)

    # -- admission ------------------------------------------------------------------------------------------------

    def admit(self, n: int) -> None:
        """Reserves room for n items or raises `QueueFull`; pair with `release(n)` when the request ends."""
        if self.admitted + n > self.max_queue:
            # A fixed hint; clients back off and retry (the openai client honours Retry-After).
            raise QueueFull(self.name, self.admitted, self.max_queue, self.retry_after_s)
        self.admitted += n

    def release(self, n: int) -> None:
        self.admitted = max(0, self.admitted - n)

    # -- items ----------------------------------------------------------------------------------------------------

    def submit(self, payload) -> asyncio.Future:
        """Queues one item; the future gets its result. Cancel the future to drop the item if it is still queued."""
        if not self.alive:
            raise EngineFailed(f"{self.name}: batch worker is not running")
        future = asyncio.get_running_loop().create_future()
        self._items.append(_Item(payload, future))
        self._wakeup.set()
        return future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._items:
                self._wakeup.clear()
                await self._wakeup.wait()
            # The oldest item's arrival starts the clock, so items that queued while the engine was busy leave at once.
            deadline = self._items[0].enqueued + self.max_wait_s
            while len(self._items) < self.max_batch_size and (remaining := deadline - time.monotonic()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:  # = TimeoutError from Python 3.11 on
                    break
            batch = []
            while self._items and len(batch) < self.max_batch_size:
                item = self._items.popleft()
                if not item.future.done():  # its request gave up: do not spend engine time on it
                    batch.append(item)
            if not batch:
                continue
            now = time.monotonic()
            waits = [now - i.enqueued for i in batch]
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [i.payload for i in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
            except asyncio.CancelledError:
                for item in batch:
                    item.future.cancel()
                raise
            except Exception as exc:  # the batch fails, the worker does not
                log.exception("%s: engine failed on a batch of %d", self.name, len(batch))
                err = EngineFailed(f"{self.name}: engine failed ({type(exc).__name__}: {' '.join(str(exc).split())})")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            seconds = time.perf_counter() - t0
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)
            if self.on_batch is not None:
                self.on_batch(BatchStats(size=len(batch), seconds=seconds, waits=waits))
