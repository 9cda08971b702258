"""A message's history: every transition and decision is one stored event with its time and
its facts (connector, operator ids, status, next attempt, receipt stat), written in the commit
of the change it records, counted by (from, to) once stored, shown by GET /v1/messages/{id}
and `smsgw message show`. The dispatcher's rules run under virtual time with a scripted
operator; intake and reports upstream through the running gateway on real sockets."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY

from gateway import history
from gateway.config import HttpConfig, SimulatorConfig
from gateway.model import Event, Message, Part, State, new_message_id
from gateway.store import Store
from routing.smsc import Submission, SubmitResult
from smpp.constants import Status
from tests.dispatch_harness import HOUR, Harness, ScriptedSmsc, harness
from tests.stack import SmpplibEsme, running_stack, wait_for
from tests.test_store import make_message

A, Q, S, F = State.ACCEPTED, State.QUEUED, State.SCHEDULED, State.IN_FLIGHT


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Jumps after 100 ms of real idleness: these tests read the store while virtual time runs,
    # and a read outrun by a jump (on a loaded machine) would meet the deadline it waits under.
    return trio.testing.MockClock(autojump_threshold=0.1)


def steps(events: list[Event]) -> list[tuple[str, State | None, State | None]]:
    return [(e.kind, e.from_state, e.to_state) for e in events]


def moved(src: State, dst: State) -> float:
    return REGISTRY.get_sample_value("smsgw_message_transitions_total",
                                     {"from": src.value, "to": dst.value}) or 0.0


async def until(condition: Any, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def stored_events(h: Harness, msg_id: str, count: int) -> list[Event]:
    """The message's history once it holds `count` events (rounds commit asynchronously)."""
    events: list[Event] = []
    step = 0.01  # grows: each virtual step costs the autojump threshold in real time
    with trio.fail_after(60):
        while len(events := await h.store.events_of(msg_id)) < count:
            await trio.sleep(step)
            step = min(step * 2, 1.0)
    return events


# -- the dispatcher's events ----------------------------------------------------------------


async def test_an_attempt_its_operator_answer_and_the_receipt_are_recorded_with_their_times(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    before = {m: moved(*m) for m in ((A, Q), (Q, F), (F, State.DELIVERED))}
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message()
        await h.submit(msg)
        # The attempt is written with the operator's answer (one row), in the commit that
        # stores the message IN_FLIGHT: the store never shows one without the other.
        events = await stored_events(h, msg.id, 2)
        row = await h.store.get_message(msg.id)
        assert row is not None and row.state is F
        await trio.sleep(30)
        await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        await h.wait_final(msg.id, timeout=60)
        events = await h.store.events_of(msg.id)
    assert steps(events) == [("accepted", A, Q), ("attempt", Q, F),
                             ("receipt", F, State.DELIVERED)]
    accepted, attempt, receipt = events
    assert accepted.detail == {"interface": "smpp"} and accepted.at == msg.created_at
    assert attempt.detail == {"attempt": 1, "channel": "sms", "connector": "opA", "parts": 1,
                              "outcome": "submitted", "operator_ids": ["opA-1"],
                              "answered_in": 0.0}
    assert receipt.detail == {"part": 1, "connector": "opA", "stat": "DELIVRD", "err": 0}
    assert attempt.at - msg.created_at < 1 and 30 <= receipt.at - attempt.at < 31
    # Counted by (from, to), once stored.
    assert {m: moved(*m) - n for m, n in before.items()} == {m: 1 for m in before}


async def test_a_temporary_refusal_is_recorded_with_its_status_and_the_next_attempts_time(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    answers = iter([Status.ESME_RTHROTTLED, 0])

    def answer(_pdu: object) -> SubmitResult:
        status = next(answers)
        return SubmitResult("id-1" if status == 0 else None, status, temporary=status != 0,
                            detail="" if status == 0 else "throttled")

    smsc = ScriptedSmsc("opA", answer)
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message()
        await h.submit(msg)
        events = await stored_events(h, msg.id, 4)
    assert steps(events) == [("accepted", A, Q), ("attempt", Q, F), ("retry", F, Q),
                             ("attempt", Q, F)]
    retry, second = events[2], events[3]
    assert retry.detail == {"attempt": 1, "connector": "opA", "status": "0x00000058",
                            "detail": "throttled", "delay": 5.0,
                            "next_attempt_at": history.iso(retry.at + 5)}
    assert second.detail["attempt"] == 2 and second.at == pytest.approx(retry.at + 5, abs=0.05)
    assert second.detail["outcome"] == "submitted" and "outcome" not in events[1].detail


async def test_a_permanent_refusal_ends_the_message_with_the_reason_and_status(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA", lambda _p: SubmitResult(None, Status.ESME_RINVDSTADR,
                                                        rejected=True))
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message()
        await h.submit(msg)
        await h.wait_final(msg.id, timeout=HOUR)
        events = await h.store.events_of(msg.id)
    assert steps(events) == [("accepted", A, Q), ("attempt", Q, F), ("final", F, State.REJECTED)]
    assert events[2].detail == {"reason": "refused by the operator", "connector": "opA",
                                "part": 1, "status": "0x0000000B"}


async def test_waiting_for_a_connector_then_expiry_is_recorded_once_each(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    down = ScriptedSmsc("opA", up=False)
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": down}, nursery) as h:
        msg = h.message(validity=HOUR)
        await h.submit(msg)
        await until(lambda: h.dispatcher.is_parked(msg.id))
        h.dispatcher.retry_now(msg.id)  # still down: parked again, "waiting" not repeated
        final = await h.wait_final(msg.id, timeout=2 * HOUR)
        events = await h.store.events_of(msg.id)
    assert final.state is State.EXPIRED
    assert steps(events) == [("accepted", A, Q), ("waiting", None, None),
                             ("retry_now", None, None), ("final", Q, State.EXPIRED)]
    assert events[1].detail == {"reason": "no connector of its route is up"}
    assert events[2].detail == {"was": "waiting for a connector of its route"}
    assert events[3].detail == {"reason": "validity over"}
    assert events[3].at == pytest.approx(msg.expires_at, abs=0.05)


async def test_each_parts_receipt_is_recorded_and_the_last_one_ends_the_message(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message("x" * 300)  # 2 GSM parts
        await h.submit(msg)
        await stored_events(h, msg.id, 2)
        await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        await h.receipt("opA", "opA-2", "UNDELIV", 1, hold=1)
        await h.wait_final(msg.id, timeout=60)
        events = await h.store.events_of(msg.id)
    assert steps(events) == [("accepted", A, Q), ("attempt", Q, F),
                             ("receipt", None, None), ("receipt", F, State.UNDELIVERABLE)]
    assert events[1].detail["parts"] == 2
    assert events[1].detail["operator_ids"] == ["opA-1", "opA-2"]
    assert [e.detail["part"] for e in events[2:]] == [1, 2]
    assert events[3].detail == {"part": 2, "connector": "opA", "stat": "UNDELIV", "err": 1}


async def test_an_answer_after_the_attempt_was_written_gets_a_row_of_its_own(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """Part 1 answered and its receipt in (written with the attempt) before part 2 is
    answered: the operator's answer to the attempt is then a "submitted" row."""
    held: list[Submission] = []

    class SlowSecondPart(ScriptedSmsc):
        def _send(self, item: Submission) -> None:
            if self.sent:
                held.append(item)  # the second part's answer waits for the test
            else:
                super()._send(item)

    smsc = SlowSecondPart("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msg = h.message("x" * 300)  # 2 GSM parts
        await h.submit(msg)
        await until(lambda: held and h.dispatcher.live[msg.id].parts[0].smsc_id)
        await h.receipt("opA", "opA-1", "DELIVRD", 0, hold=1)
        await stored_events(h, msg.id, 3)
        held[0].done(SubmitResult("opA-2", 0))
        await stored_events(h, msg.id, 4)
        await h.receipt("opA", "opA-2", "DELIVRD", 0, hold=1)
        await h.wait_final(msg.id, timeout=60)
        events = await h.store.events_of(msg.id)
    assert steps(events) == [("accepted", A, Q), ("attempt", Q, F), ("receipt", None, None),
                             ("submitted", None, None), ("receipt", F, State.DELIVERED)]
    assert "outcome" not in events[1].detail
    assert events[3].detail == {"attempt": 1, "connector": "opA",
                                "operator_ids": ["opA-1", "opA-2"]}


async def test_an_attempt_cut_by_a_restart_is_recorded_as_resumed_before_the_next_attempt(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async with Store.open(tmp_path / "db.sqlite3") as store:  # as a crash left it
        msg = current_message()
        await store.add_messages([msg])
        await store.save_message(dataclasses.replace(msg, state=F, attempts=1, connector="opA"),
                                 [Part(msg.id, 1, "opA")])
    smsc = ScriptedSmsc("opA")
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        events = await stored_events(h, msg.id, 2)
    assert steps(events) == [("resumed", F, Q), ("attempt", Q, F)]
    assert events[0].detail == {"parts_pending": 1} and events[1].detail["attempt"] == 2


def current_message() -> Message:
    """A one-part message accepted now (the harness' clock starts at the real time)."""
    now = time.time()
    return make_message(created_at=now, not_before=now, expires_at=now + 86400)


# -- the state machine's table --------------------------------------------------------------


def test_the_state_table_refuses_a_move_it_does_not_list() -> None:
    msg = current_message()
    assert msg.state is Q
    with pytest.raises(history.IllegalTransition, match="'retry' cannot move it from QUEUED"):
        history.transition(msg, "retry", Q, 0.0)
    event = history.transition(msg, "attempt", F, 1.0, {"attempt": 1})
    assert (event.from_state, event.to_state, msg.state) == (Q, F, F)
    history.transition(msg, "receipt", State.DELIVERED, 2.0)
    for kind in ("final", "retry", "attempt", "error"):  # nothing leaves a final state
        with pytest.raises(history.IllegalTransition):
            history.transition(msg, kind, Q if kind != "final" else State.EXPIRED, 3.0)
    with pytest.raises(history.IllegalTransition, match="not an event without"):
        history.note(msg, "attempt", 3.0)
    assert msg.state is State.DELIVERED


async def test_a_report_event_is_not_written_for_a_message_gone_meanwhile(
        tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db.sqlite3") as store:
        kept = current_message()
        await store.add_messages([kept])
        await store.ack_reports([], [Event(kept.id, 5.0, "report_delivered"),
                                     Event("f" * 32, 5.0, "report_delivered")])
        assert steps(await store.events_of(kept.id)) == [("report_delivered", None, None)]
        assert await store.events_of("f" * 32) == []


# -- through the running gateway --------------------------------------------------------------


async def test_smpp_and_http_messages_get_their_whole_history_through_the_gateway(
        tmp_path: Path) -> None:
    sim = SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, seed=7)  # all DELIVRD
    async with running_stack(tmp_path, sim, http=HttpConfig(port=0)) as (running, _sim):
        esme = SmpplibEsme(running.smpp_port)
        await trio.to_thread.run_sync(esme.submit_one, "33612345678", b"Hello")
        smpp_id = esme.resps[0].message_id
        if isinstance(smpp_id, bytes):
            smpp_id = smpp_id.decode()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.http_port}") as c:
            auth = {"Authorization": "Bearer demo-token"}
            r = await c.post("/v1/messages", json={"to": "33612345679", "from": "ACME",
                                                   "text": "Hi"}, headers=auth)
            assert r.status_code == 202, r.text
            http_id = r.json()["messages"][0]["id"]
            await wait_for(lambda: http_id not in running.dispatcher.live)

            async def smpp_history() -> list[Event]:
                return await running.store.events_of(smpp_id)

            with trio.fail_after(10):  # the report's event comes with its deletion's commit
                while len(events := await smpp_history()) < 4:
                    await trio.sleep(0.01)
            view = (await c.get(f"/v1/messages/{http_id}", headers=auth)).json()
    assert steps(events) == [("accepted", A, Q), ("attempt", Q, F),
                             ("receipt", F, State.DELIVERED), ("report_delivered", None, None)]
    assert events[0].detail == {"interface": "smpp"}
    attempt = events[1].detail
    assert {k: attempt[k] for k in ("attempt", "channel", "connector", "parts", "outcome")} \
        == {"attempt": 1, "channel": "sms", "connector": "sim", "parts": 1,
            "outcome": "submitted"}
    operator_ids = attempt["operator_ids"]
    assert isinstance(operator_ids, list) and len(operator_ids) == 1 and operator_ids[0]
    assert events[3].detail["interface"] == "smpp"
    assert [(e["kind"], e["from_state"], e["to_state"]) for e in view["history"]] == [
        ("accepted", "ACCEPTED", "QUEUED"), ("attempt", "QUEUED", "IN_FLIGHT"),
        ("receipt", "IN_FLIGHT", "DELIVERED")]
    assert view["history"][0]["detail"] == {"interface": "http"}
    assert [(a["connector"], a["outcome"]) for a in view["attempts"]] == [("sim", "submitted")]


# -- message ids --------------------------------------------------------------------------------


def test_message_ids_grow_with_time_and_keep_80_random_bits() -> None:
    """Time-ordered ids keep the history's index (and the messages' and parts' keys) taking
    new rows at their end; the random part keeps ids unguessable."""
    first = new_message_id()
    time.sleep(0.002)
    ids = [new_message_id() for _ in range(1000)]
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in ids)
    assert first < min(ids)
    assert int(ids[0][:12], 16) == pytest.approx(time.time() * 1000, abs=5000)
    assert len({i[12:] for i in ids}) == 1000


async def test_long_messages_accepted_together_get_different_concatenation_references(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """A phone joins parts by their reference: two long messages to it must not share one,
    although their ids begin with the same time."""
    smsc = ScriptedSmsc("opA", udh_ref16=True)
    async with trio.open_nursery() as nursery, harness(tmp_path, {"opA": smsc}, nursery) as h:
        msgs = [h.message("x" * 300) for _ in range(20)]
        for msg in msgs:
            await h.submit(msg)
        await until(lambda: len(smsc.sent) == 40)
    udhs = [pdu.short_message[:7] for _, pdu in smsc.sent]
    assert all(udh[:3] == b"\x06\x08\x04" for udh in udhs)  # 16-bit references
    refs = {udh[3:5] for udh in udhs if udh[6] == 1}
    # 20 of 65,534: two messages may share one (p = 0.3 %), three or more never in practice
    assert len(refs) >= 19
