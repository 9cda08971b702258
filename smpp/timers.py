"""One heap of deadlines for every SMPP connection of a trio run, fired by one task.

Connections keep a single entry each (their earliest deadline: response, inactivity,
enquire_link, bind or write stall) and re-arm it from the callback, so an idle connection
costs a heap entry and a wake-up per interval, not a task or a periodic timer of its own.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

import structlog
import trio

log = structlog.get_logger("smpp.timers")

_RUN_TIMERS: trio.lowlevel.RunVar[Timers] = trio.lowlevel.RunVar("smpp_timers")
RESOLUTION = 0.01  # seconds: timers fire on a 10 ms grid, the ones of a tick together


class TimerHandle:
    """A scheduled callback; cancel() makes it a no-op (removed from the heap lazily)."""

    __slots__ = ("_owner", "callback", "cancelled", "when")

    def __init__(self, owner: Timers, when: float, callback: Callable[[], None]) -> None:
        self._owner = owner
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._owner._dead += 1


class Timers:
    """Deadlines on trio's clock; callbacks are plain functions run by the `run()` task.

    A callback must be quick and must not raise (an exception is logged and swallowed).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._counter = itertools.count()
        self._wake = trio.Event()
        self._next = math.inf  # the time the run() task sleeps until
        self._dead = 0  # cancelled entries still in the heap

    def __len__(self) -> int:
        return len(self._heap) - self._dead

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run `callback()` once trio's clock reaches `when`."""
        handle = TimerHandle(self, when, callback)
        heapq.heappush(self._heap, (when, next(self._counter), handle))
        if when < self._next:
            self._wake.set()
        if self._dead > 1024 and self._dead > len(self._heap) // 2:
            self._heap = [e for e in self._heap if not e[2].cancelled]
            heapq.heapify(self._heap)
            self._dead = 0
        return handle

    def _fire_due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            handle = heapq.heappop(heap)[2]
            if handle.cancelled:
                self._dead -= 1
                continue
            handle.cancelled = True  # fired: a late cancel() must not count it as dead
            try:
                handle.callback()
            except Exception:
                log.exception("timers.callback_failed")

    async def run(self) -> None:
        """Fire callbacks as their time comes (up to RESOLUTION late: deadlines falling in one
        tick fire in one wake-up, which costs a cancel scope and an exception); runs until
        cancelled."""
        while True:
            self._fire_due(trio.current_time())
            first = self._heap[0][0] if self._heap else math.inf
            self._next = math.ceil(first / RESOLUTION) * RESOLUTION if first < math.inf else first
            self._wake = trio.Event()
            with trio.move_on_at(self._next):
                await self._wake.wait()
            self._next = -math.inf  # awake: new entries need no wake-up until we sleep again


def current_timers() -> Timers:
    """The Timers of the current trio run, started (as a trio system task) on first use."""
    try:
        return _RUN_TIMERS.get()
    except LookupError:
        timers = Timers()
        _RUN_TIMERS.set(timers)
        trio.lowlevel.spawn_system_task(timers.run, name="smpp.timers")
        return timers
