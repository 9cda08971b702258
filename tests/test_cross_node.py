"""Rules of cancels and replacements across nodes (gateway/cross_node.py): an upstream behind
a load balancer may send its cancel_sm, replace_sm or DELETE to any node; the node working on
the message applies it and the answer is the one a single node would give."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from prometheus_client import REGISTRY

from gateway import cross_node
from gateway.dispatcher import ChangeRefused
from gateway.model import State
from smpp.constants import Status
from tests.smpplib_cancel import request
from tests.stack import SmpplibEsme
from tests.test_cancel_smpp import DEST, HOUR_LATER, cancel, deleted_receipts, run, submit
from tests.test_nodes import nodes


def changes(action: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("smsgw_cross_node_changes_total",
                                     {"action": action, "outcome": outcome}) or 0.0


async def test_a_cancel_sent_to_another_node_cancels_the_message_where_it_is_worked_on(
        tmp_path: Path, pg_dsn: str) -> None:
    before = changes("cancel", "done")
    async with nodes(tmp_path, pg_dsn, ("a", "b")) as cluster:
        (a, b), sim = cluster.running, cluster.simulator
        on_a, on_b = SmpplibEsme(a.smpp_port), SmpplibEsme(b.smpp_port)

        def session() -> tuple[str, list[int]]:
            on_a.bind()
            on_b.bind("transmitter")
            [mid] = submit(on_a, DEST, schedule_delivery_time=HOUR_LATER)
            statuses = [cancel(on_b, mid, source="OTHER"), cancel(on_b, "f" * 32),
                        cancel(on_b, mid)]
            on_a.read_until(lambda: len(on_a.delivered) == 1)  # its DELETED receipt
            statuses.append(cancel(on_b, mid))  # final now
            on_a.close()
            on_b.close()
            return mid, statuses

        mid, statuses = await run(on_a, session)
        assert statuses == [Status.ESME_RINVSRCADR, Status.ESME_RINVMSGID, Status.ESME_ROK,
                            Status.ESME_RCANCELFAIL]
        assert mid not in a.dispatcher.live  # final on its node
        stored = await b.store.get_message(mid)
        assert stored is not None and stored.state is State.CANCELLED
        assert deleted_receipts(on_a) == [mid]
        assert changes("cancel", "done") == before + 1
        assert sim.submitted == []
        assert await b.store._read("SELECT count(*) FROM change_requests") == [(0,)]


async def test_a_replacement_sent_to_another_node_changes_what_its_node_sends(
        tmp_path: Path, pg_dsn: str) -> None:
    async with nodes(tmp_path, pg_dsn, ("a", "b")) as cluster:
        (a, b), sim = cluster.running, cluster.simulator
        on_a, on_b = SmpplibEsme(a.smpp_port), SmpplibEsme(b.smpp_port)

        def session() -> tuple[str, int]:
            on_a.bind("transmitter")
            on_b.bind("transmitter")
            [mid] = submit(on_a, DEST, schedule_delivery_time=HOUR_LATER)
            status = request(on_b, "replace_sm", message_id=mid, source_addr_ton=5,
                             source_addr="ACME", short_message=b"Your code is 654321",
                             schedule_delivery_time="000000000001000R")  # in 1 s
            on_a.close()
            on_b.close()
            return mid, status

        mid, status = await run(on_a, session)
        assert status == Status.ESME_ROK
        with trio.fail_after(10):
            while not sim.submitted:
                await trio.sleep(0.05)
        assert bytes(sim.submitted[0].short_message) == b"Your code is 654321"
        kinds = [e.kind for e in await b.store.events_of(mid)]
        assert kinds[:2] == ["accepted", "replaced"]


async def test_a_message_another_node_has_sent_is_too_late_to_cancel_from_any_node(
        tmp_path: Path, pg_dsn: str) -> None:
    async with nodes(tmp_path, pg_dsn, ("a", "b"), receipt_delay=30.0) as cluster:
        (a, b), sim = cluster.running, cluster.simulator
        on_a = SmpplibEsme(a.smpp_port)
        await run(on_a, lambda: on_a.bind("transmitter"))
        [mid] = await run(on_a, lambda: submit(on_a, DEST))
        with trio.fail_after(10):
            while not (mid in a.dispatcher.live
                       and a.dispatcher.live[mid].msg.state is State.IN_FLIGHT):
                await trio.sleep(0.01)
        with pytest.raises(ChangeRefused, match="handed to an operator already") as refused:
            await b.dispatcher.cancel(mid, account=None, by="admin")  # `smsgw message cancel`
        assert refused.value.reason == "too_late"
        await run(on_a, on_a.close)
        assert len(sim.submitted) == 1


async def test_cancel_sm_without_message_id_on_one_node_cancels_the_matching_ones_of_all(
        tmp_path: Path, pg_dsn: str) -> None:
    async with nodes(tmp_path, pg_dsn, ("a", "b")) as cluster:
        (a, b), sim = cluster.running, cluster.simulator
        on_a, on_b = SmpplibEsme(a.smpp_port), SmpplibEsme(b.smpp_port)

        def session() -> tuple[list[str], list[str], int]:
            on_a.bind()
            on_b.bind()
            theirs = submit(on_a, DEST, "+" + DEST, schedule_delivery_time=HOUR_LATER)
            mine = submit(on_b, DEST, schedule_delivery_time=HOUR_LATER)
            submit(on_a, "33698765432", schedule_delivery_time=HOUR_LATER)  # elsewhere
            status = cancel(on_b)  # from ACME to DEST, every node's
            on_a.read_until(lambda: len(on_a.delivered) == 2)
            on_b.read_until(lambda: len(on_b.delivered) == 1)
            on_a.close()
            on_b.close()
            return theirs, mine, status

        theirs, mine, status = await run(on_a, session)
        assert status == Status.ESME_ROK
        assert sorted(deleted_receipts(on_a)) == sorted(theirs)
        assert deleted_receipts(on_b) == mine
        assert (await a.store.stats())["CANCELLED"] == 3
        assert (await a.store.stats())["SCHEDULED"] == 1
        assert sim.submitted == []


async def test_a_request_its_node_never_takes_is_withdrawn_and_answered_busy(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cross_node, "UNTAKEN_WAIT", 0.5)
    async with nodes(tmp_path, pg_dsn, ("a",)) as cluster:
        (a,) = cluster.running
        assert isinstance(a.dispatcher.remote, cross_node.CrossNode)
        with trio.fail_after(10):  # epoch 999: no such node, nobody takes it
            [answer] = await a.dispatcher.remote._ask([(999, "m1", {"action": "cancel"})])
        assert "busy" in answer
        assert await a.store._read("SELECT count(*) FROM change_requests") == [(0,)]
