"""A pixel budget: how many image pixels may be in flight at once, so memory stays bounded under load.

Each request holds its image's pixel count from decoding until its answer is encoded; requests
beyond the budget wait in arrival order (a single image larger than the budget still runs, alone).
Waiting is asyncio-native and works across event loops (the state is guarded by a thread lock and
waiters are woken with ``call_soon_threadsafe``), so no worker thread is ever parked on it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

_Waiter = tuple[int, asyncio.AbstractEventLoop, "asyncio.Future[None]"]  # pixels, its loop, woken when granted


class BudgetTimeout(Exception):
    """Waited too long for room: the caller answers 503."""


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class PixelBudget:
    """At most ``capacity`` pixels held at once; FIFO waiting with a timeout."""

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()

    def _fits(self, n: int) -> bool:
        return self.used == 0 or self.used + n <= self.capacity

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    async def acquire(self, n: int, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters and self._fits(n):
                self._take(n)
                return
            entry: _Waiter = (n, loop, loop.create_future())
            self._waiters.append(entry)
        try:
            await asyncio.wait_for(entry[2], timeout)
        except BaseException as e:  # timeout or cancellation: leave the queue, or give back what was granted
            with self._lock:
                waiting = entry in self._waiters
                if waiting:
                    self._waiters.remove(entry)
            if not waiting:
                self.release(n)
            if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
                raise BudgetTimeout(f"the server is busy ({self.used:,} pixels in flight); retry shortly") from None
            raise

    def release(self, n: int) -> None:
        with self._lock:
            self.used -= n
            while self._waiters and self._fits(self._waiters[0][0]):
                size, loop, fut = self._waiters.popleft()
                self._take(size)
                try:
                    loop.call_soon_threadsafe(_wake, fut)
                except RuntimeError:  # that waiter's event loop is gone: take its share back
                    self.used -= size
