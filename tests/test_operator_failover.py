"""Operator failover, end to end: smpplib as the ESME, two SMSC simulators as operators A and
B on 127.0.0.1, the route listing A then B.

Rule protected here: a submit left unanswered because its SMSC connection dropped is a
temporary failure; the message goes to the next connector of its route (B), and the
upstream gets one receipt. The gateway cannot know whether A took the dropped submit before
the drop: resending it elsewhere risks a duplicate on the phone, which is preferred to
losing it (README "Operator failover").
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from gateway.config import RouteConfig, SimulatorConfig, SmscConfig
from gateway.simulator import SmscSimulator
from tests.stack import SmpplibEsme, running_stack, wait_for


@contextlib.asynccontextmanager
async def operator_a(**shares: float) -> AsyncIterator[SmscSimulator]:
    config = SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, seed=3, **shares)
    async with trio.open_nursery() as nursery:
        sim = SmscSimulator(config, window=config.window)
        await nursery.start(sim.serve)
        yield sim
        nursery.cancel_scope.cancel()


def smsc_a(sim: SmscSimulator) -> SmscConfig:
    assert sim.port is not None
    return SmscConfig(name="a", host="127.0.0.1", port=sim.port, system_id="sim",
                      password="simpass", binds=1, window=10, reconnect_delay=0.05,
                      reconnect_delay_max=0.5, response_timeout=5, receipt_hold=2)


A_THEN_B = (RouteConfig("default", (), ("a", "sim")),)


async def test_a_submit_lost_with_its_dropped_connection_is_sent_again_through_the_next_smsc(
        tmp_path: Path) -> None:
    async with operator_a(disconnect=1.0) as a, running_stack(
            tmp_path, extra_smscs=(smsc_a(a),), routes=A_THEN_B) as (gw, b):
        esme = SmpplibEsme(gw.smpp_port)
        await trio.to_thread.run_sync(esme.submit_one, "33612345678", b"hello")
        # A dropped the connection on the submit, unanswered; B took it and delivered it.
        assert a.stats.disconnects == 1 and not a.submitted
        assert [r.destination_addr for r in b.submitted] == ["33612345678"]
        assert len(esme.delivered) == 1  # one receipt upstream
        # delivered: the dropped attempt's temporary error is not the receipt's
        assert b"stat:DELIVRD err:000" in esme.delivered[0].short_message
        message_id = esme.delivered[0].receipted_message_id.rstrip(b"\0").decode()
        kinds = [(e.kind, e.detail.get("connector"))
                 for e in await gw.store.events_of(message_id)]
        assert kinds.index(("attempt", "a")) < kinds.index(("retry", "a")) \
            < kinds.index(("attempt", "sim")), kinds
        await wait_for(lambda: gw.connectors["a"].is_up())  # A binds again by itself


async def test_submits_in_flight_on_a_dropped_connection_each_get_one_outcome(
        tmp_path: Path) -> None:
    """Several submits on the wire when A's connection drops: none is lost, none is left
    in flight: each is resent through B and each gets exactly one receipt upstream."""
    async with operator_a(disconnect=1.0) as a, running_stack(
            tmp_path, extra_smscs=(smsc_a(a),), routes=A_THEN_B) as (gw, b):
        esme = SmpplibEsme(gw.smpp_port)

        def session() -> None:
            esme.bind()
            for n in range(5):
                esme.submit(f"3361234567{n}", b"hello")
            esme.read_until(lambda: len(esme.resps) >= 5 and len(esme.delivered) >= 5)
            esme.client.disconnect()

        await trio.to_thread.run_sync(session)
        assert a.stats.disconnects >= 1 and not a.submitted
        assert sorted(r.destination_addr for r in b.submitted) == [
            f"3361234567{n}" for n in range(5)]
        receipted = {d.receipted_message_id for d in esme.delivered}
        assert len(esme.delivered) == 5 and len(receipted) == 5
        assert gw.store.unfinished == 0

