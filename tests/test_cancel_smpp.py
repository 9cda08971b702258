"""cancel_sm and replace_sm end to end: smpplib's Client as the upstream ESME, the real daemon
and the SMSC simulator. A message not yet sent (scheduled, or waiting for an operator that is
down) is cancelled for good (one DELETED receipt, nothing reaches the operator, still so
after a restart) or replaced (the operator gets the new text); the addresses must match the
original; another account's message is unknown; a message sent already is too late."""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import smpplib.consts
import trio

from gateway import daemon
from gateway.config import SimulatorConfig
from gateway.model import State
from gateway.simulator import SmscSimulator
from smpp.constants import MessageState, Status
from smpp.receipt import parse_receipt
from tests.smpplib_cancel import request
from tests.stack import SmpplibEsme, gateway_config, running_stack, wait_for

HOUR_LATER = "000000010000000R"  # schedule_delivery_time: one hour from now (relative)
DEST = "33612345678"


def _id(resp: Any) -> str:
    value = resp.message_id
    return value.decode() if isinstance(value, bytes) else str(value)


def _text(pdu: Any) -> bytes:
    return bytes(pdu.short_message or b"")


async def run(esme: SmpplibEsme, work: Callable[[], Any]) -> Any:
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(work)


def submit(esme: SmpplibEsme, *dests: str, **fields: Any) -> list[str]:
    """Submit one message to each destination; their ids (blocking)."""
    first = len(esme.resps)
    for dest in dests:
        esme.submit(dest, b"Your code is 123456", **fields)
    esme.read_until(lambda: len(esme.resps) >= first + len(dests))
    return [_id(r) for r in esme.resps[first:]]


def cancel(esme: SmpplibEsme, message_id: str = "", source: str = "ACME",
           dest: str = DEST, **fields: Any) -> int:
    return request(esme, "cancel_sm", message_id=message_id,
                   source_addr_ton=smpplib.consts.SMPP_TON_ALNUM, source_addr=source,
                   dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
                   dest_addr_npi=smpplib.consts.SMPP_NPI_ISDN, destination_addr=dest, **fields)


def deleted_receipts(esme: SmpplibEsme) -> list[str]:
    """Ids of the DELETED receipts received (checking their message_state TLV too)."""
    ids = []
    for pdu in esme.delivered:
        receipt = parse_receipt(_text(pdu))
        if receipt is not None and receipt.stat == "DELETED":
            assert pdu.message_state == MessageState.DELETED  # 4, SMPP 3.4 5.2.28
            ids.append(receipt.id)
    return ids


async def test_a_scheduled_message_cancelled_over_smpp_never_reaches_the_operator(
        tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, sim):
        esme = SmpplibEsme(gw.smpp_port)
        intruder = SmpplibEsme(gw.smpp_port, "other", "otherpw")

        def session() -> tuple[str, list[int]]:
            esme.bind()
            [mid] = submit(esme, DEST, schedule_delivery_time=HOUR_LATER)
            intruder.bind("transmitter")
            statuses = [cancel(intruder, mid)]  # another account's: unknown to it
            intruder.close()
            statuses += [cancel(esme, mid, source="OTHER"), cancel(esme, mid, dest="33600000000"),
                         cancel(esme, mid, service_type="WAP"), cancel(esme, "f" * 32),
                         cancel(esme, mid)]
            esme.read_until(lambda: len(esme.delivered) == 1)
            statuses.append(cancel(esme, mid))  # twice: it is final now
            esme.client.query_message(message_id=mid, source_addr_ton=5, source_addr="ACME")
            return mid, statuses

        queried: list[Any] = []
        esme.client.set_query_resp_handler(queried.append)
        mid, statuses = await run(esme, session)
        assert statuses == [Status.ESME_RINVMSGID, Status.ESME_RINVSRCADR,
                            Status.ESME_RINVDSTADR, Status.ESME_RINVSERTYP,
                            Status.ESME_RINVMSGID, Status.ESME_ROK, Status.ESME_RCANCELFAIL]
        assert deleted_receipts(esme) == [mid]
        await run(esme, lambda: esme.read_until(lambda: bool(queried)))
        assert queried[0].message_state == MessageState.DELETED
        stored = await gw.store.get_message(mid)
        assert stored is not None and stored.state is State.CANCELLED
        kinds = [e.kind for e in await gw.store.events_of(mid)]
        assert kinds[:2] == ["accepted", "cancelled"] and "attempt" not in kinds
        await run(esme, esme.close)
    async with running_stack(tmp_path) as (gw, sim):  # restarted: still cancelled, not sent
        assert mid not in gw.dispatcher.live
        stored = await gw.store.get_message(mid)
        assert stored is not None and stored.state is State.CANCELLED
        await trio.sleep(0.5)
        assert sim.submitted == []


async def test_cancel_sm_without_message_id_cancels_what_goes_from_source_to_destination(
        tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, _sim):
        esme = SmpplibEsme(gw.smpp_port)

        def session() -> tuple[list[str], list[str], list[int]]:
            esme.bind()
            to_dest = submit(esme, DEST, DEST, "+" + DEST, schedule_delivery_time=HOUR_LATER)
            elsewhere = submit(esme, "33698765432", schedule_delivery_time=HOUR_LATER)
            statuses = [cancel(esme, dest=""), cancel(esme, source="OTHER"), cancel(esme)]
            esme.read_until(lambda: len(esme.delivered) == 3)
            statuses.append(cancel(esme))  # nothing left to cancel there
            esme.close()
            return to_dest, elsewhere, statuses

        to_dest, elsewhere, statuses = await run(esme, session)
        assert statuses == [Status.ESME_RINVDSTADR, Status.ESME_RCANCELFAIL, Status.ESME_ROK,
                            Status.ESME_RCANCELFAIL]
        assert sorted(deleted_receipts(esme)) == sorted(to_dest)
        assert gw.dispatcher.live[elsewhere[0]].msg.state is State.SCHEDULED
        assert (await gw.store.stats())["CANCELLED"] == 3


async def test_a_message_with_the_operator_already_cannot_be_cancelled(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, sim):
        esme = SmpplibEsme(gw.smpp_port)

        def session() -> list[int]:
            esme.bind()
            [mid] = submit(esme, DEST)
            esme.read_until(lambda: bool(esme.delivered))  # DELIVRD
            statuses = [cancel(esme, mid),
                        request(esme, "replace_sm", message_id=mid, source_addr_ton=5,
                                source_addr="ACME", short_message=b"too late")]
            esme.close()
            return statuses

        statuses = await run(esme, session)
        assert statuses == [Status.ESME_RCANCELFAIL, Status.ESME_RREPLACEFAIL]
        assert len(sim.submitted) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_message_waiting_for_a_down_operator_cancelled_is_not_sent_when_it_is_back(
        tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there yet: the operator is down
    config = gateway_config(tmp_path, port)
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        gw: daemon.Running = await nursery.start(functools.partial(daemon.run, config,
                                                                   stop.wait))
        esme = SmpplibEsme(gw.smpp_port)

        def first() -> str:
            esme.bind()
            [mid] = submit(esme, DEST)
            return mid

        mid = await run(esme, first)
        await wait_for(lambda: gw.dispatcher.is_parked(mid))
        status = await run(esme, lambda: cancel(esme, mid))
        assert status == Status.ESME_ROK
        await run(esme, lambda: esme.read_until(lambda: bool(esme.delivered)))
        assert deleted_receipts(esme) == [mid]
        sim = SmscSimulator(SimulatorConfig(port=port, control_port=0, receipt_delay=0.05,
                                            seed=7))
        await nursery.start(sim.serve)  # the operator is back
        await wait_for(lambda: all(c.is_up() for c in gw.connectors.values()))
        await run(esme, lambda: submit(esme, "33698765432"))
        await wait_for(lambda: len(sim.submitted) == 1)
        await trio.sleep(0.3)
        assert [r.destination_addr for r in sim.submitted] == ["33698765432"]
        await run(esme, esme.close)
        stop.set()
        nursery.cancel_scope.cancel()


async def test_replace_sm_changes_the_text_schedule_and_receipt_request_before_sending(
        tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, sim):
        esme = SmpplibEsme(gw.smpp_port)

        def replace(mid: str, source: str = "ACME", **fields: Any) -> int:
            params: dict[str, Any] = {"message_id": mid, "source_addr_ton": 5,
                                      "source_addr": source, "registered_delivery": 1,
                                      "short_message": b"Your code is 654321"}
            params.update(fields)
            return request(esme, "replace_sm", **params)

        def session() -> tuple[list[str], list[int]]:
            esme.bind()
            ids = submit(esme, DEST, "33698765432", schedule_delivery_time=HOUR_LATER)
            statuses = [replace(ids[0], source="OTHER"), replace("f" * 32),
                        replace(ids[0], validity_period="000000000001000R",
                                schedule_delivery_time="000000000002000R"),
                        replace(ids[0], registered_delivery=3),
                        replace(ids[0], sm_default_msg_id=4),
                        replace(ids[0], schedule_delivery_time="000000000001000R"),
                        replace(ids[1], registered_delivery=0, short_message=b"quiet",
                                schedule_delivery_time="000000000001000R")]
            esme.read_until(lambda: bool(esme.delivered))
            return ids, statuses

        ids, statuses = await run(esme, session)
        assert statuses == [Status.ESME_RINVSRCADR, Status.ESME_RINVMSGID,
                            Status.ESME_RINVSCHED, Status.ESME_RINVREGDLVFLG,
                            Status.ESME_RINVDFTMSGID, Status.ESME_ROK, Status.ESME_ROK]
        await wait_for(lambda: len(sim.submitted) == 2)
        texts = {r.destination_addr: r.short_message for r in sim.submitted}
        assert texts == {DEST: b"Your code is 654321", "33698765432": b"quiet"}
        [receipt] = esme.delivered  # the second asked for none any more
        parsed = parse_receipt(_text(receipt))
        assert parsed is not None and parsed.id == ids[0] and parsed.stat == "DELIVRD"
        events = await gw.store.events_of(ids[0])
        assert [e.kind for e in events][:2] == ["accepted", "replaced"]
        assert events[1].detail["changed"] == ["text", "not_before"]
        await trio.sleep(0.3)
        assert len(esme.delivered) == 1  # nothing for the quiet one
        await run(esme, esme.close)
