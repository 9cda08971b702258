"""The shared timer heap: callbacks fire in time order, cancelled ones never, in one task."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from smpp.timers import Timers, current_timers


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_callbacks_fire_at_their_time_in_order_and_cancelled_ones_never(
        clock: trio.testing.MockClock) -> None:
    timers = Timers()
    fired: list[tuple[str, float]] = []

    def note(tag: str) -> None:
        fired.append((tag, trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        timers.call_at(5, lambda: note("b"))
        timers.call_at(2, lambda: note("a"))
        gone = timers.call_at(3, lambda: note("cancelled"))
        gone.cancel()
        await trio.sleep(1)
        timers.call_at(1.5, lambda: note("earlier than the sleep"))  # wakes the task up
        await trio.sleep(10)
        assert fired == [("earlier than the sleep", 1.5), ("a", 2), ("b", 5)]
        assert len(timers) == 0
        nursery.cancel_scope.cancel()


async def test_a_failing_callback_does_not_stop_the_others(
        clock: trio.testing.MockClock) -> None:
    timers = Timers()
    fired: list[int] = []

    def boom() -> None:
        raise RuntimeError("bug in a callback")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        timers.call_at(1, boom)
        timers.call_at(2, lambda: fired.append(2))
        await trio.sleep(3)
        assert fired == [2]
        nursery.cancel_scope.cancel()


async def test_cancelled_entries_are_compacted_so_the_heap_stays_small(
        clock: trio.testing.MockClock) -> None:
    timers = Timers()
    for i in range(10_000):
        timers.call_at(1000 + i, lambda: None).cancel()
    timers.call_at(5, lambda: None)
    assert len(timers._heap) < 5_000 and len(timers) == 1


async def test_the_run_has_one_shared_timer_task(clock: trio.testing.MockClock) -> None:
    fired: list[float] = []
    first = current_timers()
    assert current_timers() is first
    first.call_at(trio.current_time() + 7, lambda: fired.append(trio.current_time()))
    await trio.sleep(10)
    assert fired == [pytest.approx(7)]
