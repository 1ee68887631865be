"""A micro-batcher: concurrent requests share one forward pass, within a small latency budget.

One worker thread owns the model. It takes the first waiting item, waits at most ``window_ms`` for
more (up to ``max_batch``), runs them as one batch and hands each caller its own result. While a batch
runs, new requests queue up and form the next batch, so under load batches fill without waiting.
The thread is independent of any event loop: callers await ``run`` from asyncio (or block on
``submit(...).result()`` from threads). If a batch fails, its items are retried one by one, so a bad
item fails only its own request. A full queue is refused (``Overloaded``) rather than grown without bound.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_STOP = object()


class Overloaded(Exception):
    """The queue is full: the caller should answer 503 and the client retry later."""


@dataclass
class BatchStats:
    """Counters for /health, tests and the load test."""

    batches: int = 0
    items: int = 0
    failed: int = 0
    max_batch_seen: int = 0
    multi_item_batches: int = 0  # batches of more than one item: proof that batching happened
    busy_seconds: float = 0.0
    sizes: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "failed": self.failed,
            "max_batch_seen": self.max_batch_seen,
            "multi_item_batches": self.multi_item_batches,
            "busy_seconds": round(self.busy_seconds, 3),
            "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


class MicroBatcher(Generic[T, R]):
    """Run ``fn(list of items) -> list of results`` on batches of concurrently submitted items."""

    def __init__(
        self, fn: Callable[[list[T]], list[R]], *, window_ms: float = 5.0, max_batch: int = 8, max_queue: int = 256
    ):
        if max_batch < 1 or window_ms < 0 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1 and window_ms >= 0")
        self.fn = fn
        self.window = window_ms / 1000.0
        self.max_batch = max_batch
        self.stats = BatchStats()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="unetkit-batcher", daemon=True)
                self._thread.start()

    def submit(self, item: T) -> Future[R]:
        """Queue one item; its result (or exception) arrives on the returned future."""
        self._ensure_started()
        fut: Future[R] = Future()
        try:
            self._queue.put_nowait((item, fut))
        except queue.Full:
            raise Overloaded(f"{self._queue.maxsize} requests are already waiting; retry shortly") from None
        return fut

    async def run(self, item: T) -> R:
        """Await one item's result from asyncio; cancelling the caller drops the item if not yet started."""
        return await asyncio.wrap_future(self.submit(item))

    def close(self, timeout: float = 5.0) -> None:
        """Finish the queued batches and stop the worker thread."""
        with self._lock:
            thread = self._thread
            self._thread = None
        if thread is not None and thread.is_alive():
            self._queue.put(_STOP)
            thread.join(timeout)

    def _collect(self, first: Any) -> tuple[list[Any], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.window
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._collect(first)
            live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            if live:
                self._run(live)
            if stop:
                return

    def _run(self, live: list[tuple[T, Future[R]]]) -> None:
        start = time.perf_counter()
        try:
            results = self.fn([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
            for (_, fut), res in zip(live, results):
                fut.set_result(res)
        except Exception as batch_error:
            if len(live) == 1:
                live[0][1].set_exception(batch_error)
                self.stats.failed += 1
            else:  # find the culprit: every other item still gets its answer
                for item, fut in live:
                    try:
                        fut.set_result(self.fn([item])[0])
                    except Exception as e:
                        fut.set_exception(e)
                        self.stats.failed += 1
        s = self.stats
        s.batches += 1
        s.items += len(live)
        s.max_batch_seen = max(s.max_batch_seen, len(live))
        s.multi_item_batches += len(live) > 1
        s.sizes[len(live)] += 1
        s.busy_seconds += time.perf_counter() - start
