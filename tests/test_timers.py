"""The shared timer heap: callbacks fire in time order, cancelled ones never, in one task."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from smpp.timers import RESOLUTION, Timers, current_timers


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


async def test_deadlines_within_one_tick_fire_together_at_its_end(
        clock: trio.testing.MockClock) -> None:
    """The rule: a wake-up of the timer task costs more than a callback; deadlines falling in
    one RESOLUTION tick fire in one wake-up, at most a tick late, never early."""
    timers = Timers()
    fired: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        for tag, when in (("a", 1.001), ("b", 1.004), ("c", 1.009), ("d", 1.011)):
            timers.call_at(when, lambda tag=tag: fired.append((tag, trio.current_time())))
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    tick = [t for tag, t in fired if tag in "abc"]
    assert len(set(tick)) == 1 and tick[0] == pytest.approx(1.01)
    assert fired[-1][0] == "d" and 1.011 <= fired[-1][1] <= 1.011 + RESOLUTION
