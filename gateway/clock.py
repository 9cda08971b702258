"""Wall-clock time that follows trio's clock, so virtual time (MockClock) drives every timer.

Messages carry UNIX timestamps; trio sleeps on its own clock. A WallClock is created inside
trio.run and converts between the two with one fixed offset.
"""

from __future__ import annotations

import time

import trio


class WallClock:
    def __init__(self, start: float | None = None) -> None:
        wall = time.time() if start is None else start
        self.offset = wall - trio.current_time()

    def now(self) -> float:
        return self.offset + trio.current_time()

    def to_trio(self, wall: float) -> float:
        return wall - self.offset

    async def sleep_until(self, wall: float) -> None:
        await trio.sleep_until(self.to_trio(wall))
