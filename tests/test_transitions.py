"""The message life cycle (gateway/transitions.py): one table, and move(), the one way a state
changes: it refuses what the table does not list, records the move in the message's pending
history (written with its next store call) and the store counts it once committed."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import structlog
import structlog.testing
import trio
import trio.testing
from prometheus_client import REGISTRY

from gateway import logs, transitions
from gateway.model import FINAL_STATES, Event, Message, State
from routing.channel import RCS
from routing.core import Attempt
from tests.dispatch_harness import HOUR, ScriptedSmsc, harness
from tests.test_dispatch_channels import Plan, ScriptedChannel

Q, F = State.QUEUED, State.IN_FLIGHT


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.02)


def a_message(state: State) -> Message:
    return Message(id="m1", account="acme", source_addr="ACME", source_ton=5, source_npi=0,
                   dest_addr="33612345678", dest_ton=1, dest_npi=1, data_coding=0,
                   esm_class=0, protocol_id=0, priority=0, registered_delivery=1,
                   body=b"hi", created_at=0.0, expires_at=HOUR, not_before=0.0, state=state)


def moved(src: State, dst: State) -> float:
    return REGISTRY.get_sample_value("smsgw_message_transitions_total",
                                     {"from": src.value, "to": dst.value}) or 0.0


def test_a_move_is_recorded_in_the_pending_history_and_a_refused_one_changes_nothing() -> None:
    msg, pending = a_message(F), list[Event]()
    event = transitions.move(msg, "timeout", Q, 5.0, {"connector": "rbm"}, into=pending)
    assert pending == [event] and msg.state is Q
    assert (event.kind, event.from_state, event.to_state, event.at) == ("timeout", F, Q, 5.0)
    with pytest.raises(transitions.IllegalTransition):
        transitions.move(msg, "timeout", Q, 6.0, into=pending)  # only from IN_FLIGHT
    assert pending == [event] and msg.state is Q


@pytest.mark.parametrize("kind, to", [("timeout", Q), ("not_capable", Q),
                                      *(("revoke", s) for s in FINAL_STATES)])
def test_the_channel_events_move_only_a_message_in_flight(kind: str, to: State) -> None:
    assert transitions.allowed(F, kind, to)
    assert not any(transitions.allowed(s, kind, to) for s in State if s is not F)


async def test_every_move_of_a_failover_is_stored_and_counted_once_committed(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    rbm, smsc = ScriptedChannel("rbm"), ScriptedSmsc("opA")
    before = {m: moved(*m) for m in ((Q, F), (F, Q), (F, State.DELIVERED))}
    async with trio.open_nursery() as nursery, harness(
            tmp_path, {"opA": smsc}, nursery, others={"rbm": rbm},
            router=Plan(Attempt(RCS, "rbm", timeout=60.0), Attempt("sms", "opA"))) as h:
        msg = h.message()
        await h.submit(msg)
        with trio.fail_after(HOUR):
            while not smsc.sent:
                await trio.sleep(1)
        assert await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        await h.wait_final(msg.id)
        events = [e for e in await h.store.events_of(msg.id) if e.to_state is not None]
    assert [(e.kind, e.from_state, e.to_state) for e in events[1:]] == [
        ("attempt", Q, F), ("timeout", F, Q), ("attempt", Q, F), ("receipt", F, State.DELIVERED)]
    assert {m: moved(*m) - n for m, n in before.items()} == {
        (Q, F): 2, (F, Q): 1, (F, State.DELIVERED): 1}


def test_a_move_is_logged() -> None:
    msg = a_message(F)
    with structlog.testing.capture_logs() as logs:
        transitions.move(msg, "not_capable", Q, 1.0)
    assert {"event": "message.transition", "message_id": "m1", "kind": "not_capable",
            "from_state": F, "to_state": Q, "log_level": "debug"} in logs


@pytest.mark.parametrize("level, logged", [("debug", True), ("info", False)])
def test_a_move_is_logged_at_debug_only_also_once_the_logger_is_cached(
        level: str, logged: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh proxy: the one cached here must not outlive the test.
    fresh = structlog.get_logger("gateway.transitions")
    monkeypatch.setattr(transitions, "log", fresh)
    monkeypatch.setattr(transitions, "_DEBUG", logs.LevelGate(fresh, logging.DEBUG))
    buffer = io.StringIO()
    logs.configure(level, file=buffer, cache=True)  # as the daemon configures it
    try:
        for n in range(3):  # the later moves use the logger cached by the first
            transitions.move(a_message(F), "not_capable", Q, float(n))
    finally:
        structlog.reset_defaults()
    lines = buffer.getvalue().splitlines()
    assert len(lines) == (3 if logged else 0)
    assert all('"message.transition"' in line and '"debug"' in line for line in lines)


def test_a_reconfigured_level_applies_to_the_next_move_when_loggers_are_not_cached(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = structlog.get_logger("gateway.transitions")
    monkeypatch.setattr(transitions, "log", fresh)
    monkeypatch.setattr(transitions, "_DEBUG", logs.LevelGate(fresh, logging.DEBUG))
    buffer = io.StringIO()
    try:
        logs.configure("info", file=buffer, cache=False)
        transitions.move(a_message(F), "not_capable", Q, 1.0)
        logs.configure("debug", file=buffer, cache=False)
        transitions.move(a_message(F), "not_capable", Q, 2.0)
    finally:
        structlog.reset_defaults()
    [line] = buffer.getvalue().splitlines()
    assert '"message.transition"' in line
