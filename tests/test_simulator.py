"""Behaviour of the built-in SMSC simulator, over real sockets on 127.0.0.1.

Clients are smpplib's independent ESME (in a thread) and our own Connection(Side.ESME);
the control interface is exercised over HTTP with httpx.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import smpplib.client
import smpplib.consts
import trio

from gateway.config import SimulatorConfig
from gateway.simulator import ControlError, SmscSimulator, post_mo
from smpp.connection import Connection, ConnectionClosed
from smpp.constants import MessageState, Status, Tag
from smpp.pdu import (
    Bind,
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    DataSm,
    DeliverSm,
    MessageIdResp,
    Pdu,
    SmeDest,
    SubmitMulti,
    SubmitMultiResp,
    SubmitSm,
    tlv_int,
    tlv_str,
)
from smpp.receipt import parse_receipt
from smpp.session import Side
from smpp.text import decode_text

FAST = 0.05  # receipt delay of most tests, seconds


def sim_config(**overrides: Any) -> SimulatorConfig:
    values: dict[str, Any] = {"port": 0, "control_port": 0, "receipt_delay": FAST, "seed": 7}
    values.update(overrides)
    return SimulatorConfig(**values)


@asynccontextmanager
async def running(config: SimulatorConfig, **kwargs: Any) -> AsyncIterator[SmscSimulator]:
    sim = SmscSimulator(config, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve)
        yield sim
        nursery.cancel_scope.cancel()


@dataclass
class Esme:
    """A test ESME on our own Connection; records the deliver_sm it accepts."""

    conn: Connection
    bind_resp: Pdu
    answers: list[int] = field(default_factory=list)  # statuses for the next deliver_sm
    received: list[DeliverSm] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)

    async def handler(self, conn: Connection, pdu: Pdu) -> None:
        if isinstance(pdu, DeliverSm):
            status = self.answers.pop(0) if self.answers else 0
            conn.respond(pdu.response(status=status))
            if status == 0:
                self.received.append(pdu)
                self.arrived.set()

    async def next_deliver(self) -> DeliverSm:
        while not self.received:
            self.arrived = trio.Event()
            await self.arrived.wait()
        return self.received.pop(0)

    async def submit(self, **fields: Any) -> Pdu:
        values: dict[str, Any] = {
            "source_addr_ton": 5,
            "source_addr": "ACME",
            "dest_addr_ton": 1,
            "dest_addr_npi": 1,
            "destination_addr": "33612345678",
            "short_message": b"Hello from the tests",
        }
        values.update(fields)
        return await self.conn.request(SubmitSm(**values))


async def connect(
    nursery: trio.Nursery,
    sim: SmscSimulator,
    bind: type[Bind] = BindTransceiver,
    *,
    system_id: str = "sim",
    password: str = "simpass",
    answers: list[int] | None = None,
    window: int = 10,
) -> Esme:
    stream = await trio.open_tcp_stream("127.0.0.1", sim.port)
    conn = Connection(stream, Side.ESME, enquire_link_interval=math.inf, response_timeout=5,
                      window=window)
    esme = Esme(conn, bind_resp=Pdu(), answers=list(answers or []))
    nursery.start_soon(conn.run, esme.handler)
    esme.bind_resp = await conn.request(bind(system_id=system_id, password=password))
    return esme


async def wait_until_closed(conn: Connection) -> None:
    await eventually(lambda: conn.closed)


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait for a condition (e.g. a counter updated when our deliver_sm_resp arrives)."""
    while not condition():
        await trio.sleep(0.01)


def msg_id(resp: Pdu) -> str:
    assert isinstance(resp, MessageIdResp | SubmitMultiResp), resp
    return resp.message_id


def control(sim: SmscSimulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{sim.control_port}", timeout=5)


# --------------------------------------------------------------------------- smpplib


async def test_smpplib_esme_gets_submit_resp_then_delivrd_receipt_with_that_id() -> None:
    async with running(sim_config(receipt_delay=0.1)) as sim:

        def esme_session() -> tuple[str, Any]:
            client = smpplib.client.Client("127.0.0.1", sim.port, timeout=5,
                                           allow_unknown_opt_params=True)
            sent: list[str] = []
            receipts: list[Any] = []
            client.set_message_sent_handler(
                lambda pdu, **kw: sent.append(pdu.message_id.decode()))
            client.set_message_received_handler(lambda pdu, **kw: receipts.append(pdu))
            client.connect()
            try:
                client.bind_transceiver(system_id="sim", password="simpass")
                client.send_message(
                    source_addr_ton=smpplib.consts.SMPP_TON_ALNUM,
                    source_addr="ACME",
                    dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
                    dest_addr_npi=smpplib.consts.SMPP_NPI_ISDN,
                    destination_addr="33612345678",
                    short_message=b"Your code is 123456",
                    registered_delivery=1,
                )
                deadline = time.monotonic() + 5
                while not receipts and time.monotonic() < deadline:
                    client.read_once()
                client.unbind()
            finally:
                client.disconnect()
            assert sent and receipts, (sent, receipts)
            return sent[0], receipts[0]

        with trio.fail_after(10):
            message_id, receipt = await trio.to_thread.run_sync(esme_session,
                                                                abandon_on_cancel=True)
    assert re.fullmatch(r"[0-9a-f]{8,}", message_id)
    assert receipt.esm_class & 0x3C == 0x04
    assert receipt.receipted_message_id.rstrip(b"\0").decode() == message_id
    assert b"stat:DELIVRD" in receipt.short_message
    assert receipt.source_addr == b"33612345678" and receipt.destination_addr == b"ACME"
    parsed = parse_receipt(receipt.short_message)
    assert parsed is not None and parsed.id == message_id and parsed.text == "Your code is 123456"


# --------------------------------------------------------------------------- binds


@pytest.mark.parametrize(
    ("system_id", "password", "status"),
    [("sim", "wrong", Status.ESME_RINVPASWD), ("nobody", "simpass", Status.ESME_RINVSYSID)],
)
async def test_bind_with_bad_credentials_is_refused_then_closed(
    system_id: str, password: str, status: Status
) -> None:
    with trio.fail_after(5):
        async with running(sim_config()) as sim, trio.open_nursery() as nursery:
            esme = await connect(nursery, sim, system_id=system_id, password=password)
            assert esme.bind_resp.status == status
            await wait_until_closed(esme.conn)
            assert sim.stats.bind_failures == 1 and sim.stats.binds == 0


async def test_several_concurrent_binds_are_accepted() -> None:
    with trio.fail_after(5):
        async with running(sim_config()) as sim, trio.open_nursery() as nursery:
            kinds: list[type[Bind]] = [BindTransmitter, BindReceiver, BindTransceiver,
                                       BindTransceiver]
            esmes = [await connect(nursery, sim, kind) for kind in kinds]
            assert all(e.bind_resp.status == 0 for e in esmes)
            assert tlv_int(esmes[0].bind_resp, Tag.SC_INTERFACE_VERSION) == 0x34
            assert len(sim.bound_sessions()) == 4
            for esme in esmes:
                await esme.conn.unbind()


# --------------------------------------------------------------------------- submit failures


@pytest.mark.parametrize(
    ("share", "status"),
    [("throttle", Status.ESME_RTHROTTLED), ("error", Status.ESME_RSYSERR)],
)
async def test_failure_share_of_one_answers_every_submit_with_that_status(
    share: str, status: Status
) -> None:
    with trio.fail_after(5):
        async with running(sim_config(**{share: 1.0})) as sim, trio.open_nursery() as nursery:
            esme = await connect(nursery, sim)
            for _ in range(3):
                resp = await esme.submit(registered_delivery=1)
                assert resp.status == status
            assert sim.submitted == [] and sim.stats.submits == 3
            assert sim.stats.throttled + sim.stats.errors == 3
            await esme.conn.unbind()


async def test_disconnect_share_drops_the_connection_without_answering() -> None:
    with trio.fail_after(5):
        async with running(sim_config(disconnect=1.0)) as sim, trio.open_nursery() as nursery:
            esme = await connect(nursery, sim)
            with pytest.raises(ConnectionClosed):
                await esme.submit()
            assert sim.stats.disconnects == 1 and sim.submitted == []


async def test_slow_share_answers_only_after_slow_delay() -> None:
    with trio.fail_after(5):
        async with running(sim_config(slow=1.0, slow_delay=0.3)) as sim, \
                trio.open_nursery() as nursery:
            esme = await connect(nursery, sim)
            start = trio.current_time()
            resp = await esme.submit()
            assert resp.status == 0 and trio.current_time() - start >= 0.3
            assert sim.stats.slow == 1 and len(sim.submitted) == 1
            await esme.conn.unbind()


async def test_seeded_failure_draws_are_reproducible() -> None:
    async def statuses() -> list[int]:
        async with running(sim_config(throttle=0.5, seed=42)) as sim, \
                trio.open_nursery() as nursery:
            esme = await connect(nursery, sim)
            out = [(await esme.submit()).status for _ in range(20)]
            await esme.conn.unbind()
            return out

    with trio.fail_after(10):
        first, second = await statuses(), await statuses()
    assert first == second
    assert Status.ESME_RTHROTTLED in first and 0 in first


# --------------------------------------------------------------------------- message ids


@pytest.mark.parametrize(("fmt", "pattern"), [("hex", r"[0-9a-f]{8,}"), ("decimal", r"\d+")])
async def test_message_ids_are_unique_in_the_configured_format(fmt: str, pattern: str) -> None:
    with trio.fail_after(5):
        async with running(sim_config(message_id_format=fmt)) as sim, \
                trio.open_nursery() as nursery:
            esme = await connect(nursery, sim)
            ids = [msg_id(await esme.submit()) for _ in range(50)]
            assert len(set(ids)) == 50
            assert all(re.fullmatch(pattern, i) for i in ids)
            await esme.conn.unbind()


@pytest.mark.parametrize(("fmt", "other_base"), [
    ("hex", lambda i: str(int(i, 16))), ("decimal", lambda i: format(int(i), "x"))])
async def test_receipt_id_base_other_writes_the_receipt_id_in_the_other_base(
        fmt: str, other_base: Callable[[str], str]) -> None:
    with trio.fail_after(5):
        async with running(sim_config(message_id_format=fmt, receipt_id_base="other")) as sim, \
                trio.open_nursery() as nursery:
            esme = await connect(nursery, sim)
            for _ in range(20):  # past the ids whose two spellings are the same
                message_id = msg_id(await esme.submit(registered_delivery=1))
                receipt = await esme.next_deliver()
                shown = other_base(message_id)
                assert tlv_str(receipt, Tag.RECEIPTED_MESSAGE_ID) == shown
                parsed = parse_receipt(receipt.short_message)
                assert parsed is not None and parsed.id == shown
            assert shown != message_id
            await esme.conn.unbind()


async def test_data_sm_and_submit_multi_get_one_message_id() -> None:
    with trio.fail_after(5):
        async with running(sim_config()) as sim, trio.open_nursery() as nursery:
            esme = await connect(nursery, sim)
            data = DataSm(source_addr="ACME", destination_addr="33612345678",
                          registered_delivery=1, tlvs={Tag.MESSAGE_PAYLOAD: b"payload text"})
            resp = await esme.conn.request(data)
            assert resp.status == 0 and msg_id(resp)
            multi = SubmitMulti(source_addr="ACME", registered_delivery=1,
                                dests=[SmeDest(1, 1, "33611111111"), SmeDest(1, 1, "33622222222")],
                                short_message=b"to both")
            mresp = await esme.conn.request(multi)
            assert mresp.status == 0 and getattr(mresp, "unsuccess", None) == []
            multi_id = msg_id(mresp)
            assert sim.submitted[0].text == "payload text"
            assert sim.submitted[1].destinations == ("33611111111", "33622222222")
            receipts = [await esme.next_deliver() for _ in range(3)]
            to_multi = sorted(r.source_addr for r in receipts
                              if tlv_str(r, Tag.RECEIPTED_MESSAGE_ID) == multi_id)
            assert to_multi == ["33611111111", "33622222222"]
            await esme.conn.unbind()


# --------------------------------------------------------------------------- receipts


@pytest.mark.parametrize(
    ("shares", "stat", "state", "dlvrd"),
    [
        ({}, "DELIVRD", MessageState.DELIVERED, 1),
        ({"undeliverable": 1.0}, "UNDELIV", MessageState.UNDELIVERABLE, 0),
        ({"expired": 1.0, "delivered": 0.0}, "EXPIRED", MessageState.EXPIRED, 0),
    ],
)
async def test_outcome_shares_choose_the_receipt_stat(
    shares: dict[str, float], stat: str, state: MessageState, dlvrd: int
) -> None:
    with trio.fail_after(5):
        async with running(sim_config(**shares)) as sim, trio.open_nursery() as nursery:
            esme = await connect(nursery, sim)
            resp = await esme.submit(registered_delivery=1)
            receipt = await esme.next_deliver()
            message_id = msg_id(resp)
            assert receipt.esm_class == 0x04
            assert receipt.source_addr == "33612345678" and receipt.source_addr_ton == 1
            assert receipt.destination_addr == "ACME" and receipt.dest_addr_ton == 5
            assert tlv_str(receipt, Tag.RECEIPTED_MESSAGE_ID) == message_id
            assert receipt.tlvs[Tag.RECEIPTED_MESSAGE_ID].endswith(b"\0")
            assert tlv_int(receipt, Tag.MESSAGE_STATE) == state
            parsed = parse_receipt(receipt.short_message)
            assert parsed is not None
            assert (parsed.id, parsed.stat, parsed.dlvrd, parsed.sub) == (message_id, stat,
                                                                          dlvrd, 1)
            assert parsed.text == "Hello from the tests"
            await eventually(lambda: sim.stats.receipts_by_state[stat] == 1)
            await esme.conn.unbind()


async def test_no_receipt_outcome_and_unrequested_receipts_send_nothing() -> None:
    with trio.fail_after(5):
        async with running(sim_config()) as sim, trio.open_nursery() as nursery:
            esme = await connect(nursery, sim)
            await esme.submit(registered_delivery=0)
            sim.apply_config({"no_receipt": 1.0})
            await esme.submit(registered_delivery=1)
            await trio.sleep(FAST * 4)
            assert esme.received == [] and sim.stats.receipts_scheduled == 0
            assert sim.submitted[1].outcome == "NONE"
            await esme.conn.unbind()


async def test_registered_delivery_2_sends_receipts_for_failures_only() -> None:
    with trio.fail_after(5):
        async with running(sim_config()) as sim, trio.open_nursery() as nursery:
            esme = await connect(nursery, sim)
            await esme.submit(registered_delivery=2)  # delivered: no receipt wanted
            sim.apply_config({"undeliverable": 1.0})
            failed = await esme.submit(registered_delivery=2)
            receipt = await esme.next_deliver()
            assert tlv_str(receipt, Tag.RECEIPTED_MESSAGE_ID) == msg_id(failed)
            assert b"stat:UNDELIV" in receipt.short_message
            await trio.sleep(FAST * 4)
            assert esme.received == [] and sim.stats.receipts_sent == 1
            await esme.conn.unbind()


async def test_receipt_goes_to_another_bound_session_when_the_submitter_unbinds() -> None:
    with trio.fail_after(5):
        async with running(sim_config(receipt_delay=0.3)) as sim, \
                trio.open_nursery() as nursery:
            submitter = await connect(nursery, sim, BindTransceiver)
            other = await connect(nursery, sim, BindReceiver)
            resp = await submitter.submit(registered_delivery=1)
            await submitter.conn.unbind()
            receipt = await other.next_deliver()
            assert tlv_str(receipt, Tag.RECEIPTED_MESSAGE_ID) == msg_id(resp)
            assert submitter.received == []
            await other.conn.unbind()


async def test_receipt_is_queued_while_no_receiver_is_bound_then_sent_on_bind() -> None:
    with trio.fail_after(5):
        async with running(sim_config()) as sim, trio.open_nursery() as nursery:
            transmitter = await connect(nursery, sim, BindTransmitter)
            resp = await transmitter.submit(registered_delivery=1)
            await trio.sleep(FAST * 4)
            assert sim.queued == 1 and sim.stats.receipts_sent == 0
            receiver = await connect(nursery, sim, BindReceiver)
            receipt = await receiver.next_deliver()
            assert tlv_str(receipt, Tag.RECEIPTED_MESSAGE_ID) == msg_id(resp)
            assert sim.queued == 0
            await transmitter.conn.unbind()
            await receiver.conn.unbind()


async def test_nacked_receipt_is_retried_until_accepted() -> None:
    with trio.fail_after(5):
        async with running(sim_config(), retry_delay=0.05) as sim, \
                trio.open_nursery() as nursery:
            esme = await connect(nursery, sim, answers=[Status.ESME_RSYSERR, Status.ESME_RSYSERR])
            resp = await esme.submit(registered_delivery=1)
            receipt = await esme.next_deliver()
            assert tlv_str(receipt, Tag.RECEIPTED_MESSAGE_ID) == msg_id(resp)
            await eventually(lambda: sim.stats.receipts_sent == 1)
            assert sim.stats.deliver_retried == 2
            await esme.conn.unbind()


async def test_receipts_are_shared_between_bound_receivers() -> None:
    with trio.fail_after(5):
        async with running(sim_config()) as sim, trio.open_nursery() as nursery:
            first = await connect(nursery, sim, BindReceiver)
            second = await connect(nursery, sim, BindReceiver)
            transmitter = await connect(nursery, sim, BindTransmitter)
            for _ in range(10):
                await transmitter.submit(registered_delivery=1)
            while sim.stats.receipts_sent < 10:
                await trio.sleep(0.01)
            assert len(first.received) + len(second.received) == 10
            assert first.received and second.received
            for esme in (first, second, transmitter):
                await esme.conn.unbind()


# --------------------------------------------------------------------------- MO and control


@pytest.mark.parametrize(("text", "data_coding"), [("STOP", 0), ("Arrêt ✋", 8)])
async def test_mo_posted_to_control_interface_reaches_the_bound_client(
    text: str, data_coding: int
) -> None:
    with trio.fail_after(5):
        async with running(sim_config()) as sim, trio.open_nursery() as nursery, \
                control(sim) as http:
            esme = await connect(nursery, sim, BindReceiver)
            reply = await http.post("/mo", json={"from": "33612345678", "to": "36111",
                                                 "text": text})
            assert reply.status_code == 202
            mo = await esme.next_deliver()
            assert mo.esm_class == 0 and mo.data_coding == data_coding
            assert (mo.source_addr, mo.source_addr_ton) == ("33612345678", 1)
            assert mo.destination_addr == "36111"
            assert decode_text(mo.short_message, mo.data_coding) == text
            await eventually(lambda: sim.stats.mo_sent == 1)
            await esme.conn.unbind()


async def test_post_mo_helper_queues_mo_until_a_receiver_binds() -> None:
    with trio.fail_after(5):
        async with running(sim_config()) as sim, trio.open_nursery() as nursery:
            url = f"http://127.0.0.1:{sim.control_port}"
            await trio.to_thread.run_sync(post_mo, url, "+33612345678", "36111", "STOP SMS")
            with pytest.raises(ControlError, match="from"):
                await trio.to_thread.run_sync(post_mo, url, "", "36111", "STOP")
            assert sim.queued == 1
            esme = await connect(nursery, sim, BindTransceiver)
            mo = await esme.next_deliver()
            assert mo.short_message == b"STOP SMS" and mo.source_addr == "33612345678"
            await esme.conn.unbind()


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b"{}",
        b'{"throttle": 2}',
        b'{"throttle": "half"}',
        b'{"throttle": true}',
        b'{"receipt_delay": -1}',
        b'{"port": 1234}',
        b'{"delivered": 0.9, "undeliverable": 0.5}',
        b'{"undeliverable": 0.7, "expired": 0.7}',
        b'{"throttle": 0.6, "error": 0.6}',
        b'{"message_id_format": "base64"}',
        b'{"receipt_id_base": "octal"}',
    ],
)
async def test_post_config_with_bad_values_is_400_problem_json(body: bytes) -> None:
    with trio.fail_after(5):
        async with running(sim_config()) as sim, control(sim) as http:
            before = sim.config
            reply = await http.post("/config", content=body,
                                    headers={"content-type": "application/json"})
            assert reply.status_code == 400
            assert reply.headers["content-type"].startswith("application/problem+json")
            assert reply.json()["detail"]
            assert sim.config == before


async def test_post_config_changes_failure_injection_on_the_fly() -> None:
    with trio.fail_after(5):
        async with running(sim_config()) as sim, trio.open_nursery() as nursery, \
                control(sim) as http:
            esme = await connect(nursery, sim)
            assert (await esme.submit()).status == 0
            reply = await http.post("/config", json={"throttle": 1.0, "undeliverable": 0.25})
            assert reply.status_code == 200
            assert reply.json()["throttle"] == 1.0 and reply.json()["delivered"] == 0.75
            assert (await esme.submit()).status == Status.ESME_RTHROTTLED
            assert (await http.get("/config")).json()["throttle"] == 1.0
            reply = await http.post("/config", json={"receipt_id_base": "other"})
            assert reply.status_code == 200 and sim.config.receipt_id_base == "other"
            await esme.conn.unbind()


async def test_control_interface_reports_stats_and_submitted_messages() -> None:
    with trio.fail_after(5):
        async with running(sim_config()) as sim, trio.open_nursery() as nursery, \
                control(sim) as http:
            esme = await connect(nursery, sim)
            udh = bytes((5, 0, 3, 0x2A, 2, 1))
            resp = await esme.submit(esm_class=0x40, short_message=udh + b"part one",
                                     validity_period="000001000000000R", registered_delivery=1)
            await esme.next_deliver()
            await eventually(lambda: sim.stats.receipts_sent == 1)
            message_id = msg_id(resp)
            listing = (await http.get("/messages", params={"limit": 5})).json()
            assert listing["count"] == 1
            record = listing["messages"][0]
            assert record["message_id"] == message_id and record["text"] == "part one"
            assert record["concat"] == {"ref": 0x2A, "total": 2, "seq": 1}
            assert record["validity_period"] == "000001000000000R"
            one = await http.get(f"/messages/{message_id}")
            assert one.status_code == 200 and one.json()["destination_addr"] == "33612345678"
            missing = await http.get("/messages/nope")
            assert missing.status_code == 404 and missing.json()["detail"]
            bad = await http.get("/messages", params={"limit": "x"})
            assert bad.status_code == 400
            stats = (await http.get("/stats")).json()
            assert stats["submits"] == 1 and stats["accepted"] == 1
            assert stats["receipts_sent"] == 1 and stats["receipts_by_state"]["DELIVRD"] == 1
            assert stats["bound_sessions"] == 1
            await esme.conn.unbind()


async def test_submitted_records_are_bounded() -> None:
    with trio.fail_after(5):
        async with running(sim_config(), max_records=10) as sim, \
                trio.open_nursery() as nursery:
            esme = await connect(nursery, sim)
            ids = [msg_id(await esme.submit()) for _ in range(30)]
            assert 10 <= len(sim.submitted) <= 11
            assert sim.submitted[-1].message_id == ids[-1]
            async with control(sim) as http:
                assert (await http.get(f"/messages/{ids[0]}")).status_code == 404
                assert (await http.get(f"/messages/{ids[-1]}")).status_code == 200
            await esme.conn.unbind()


# --------------------------------------------------------------------------- pipelining


async def pipeline(conn: Connection, count: int, **fields: Any) -> list[Pdu | Exception]:
    """Send `count` submit_sm back to back (one socket read for the simulator); their outcomes
    (response or error) in submission order."""
    values: dict[str, Any] = {"source_addr": "ACME", "destination_addr": "33612345678",
                              "short_message": b"pipelined"}
    values.update(fields)
    outcomes: dict[int, Pdu | Exception] = {}
    done = trio.Event()

    def settle(k: int, resp: Pdu | None, error: Exception | None) -> None:
        outcomes[k] = resp if resp is not None else error or ConnectionClosed()
        if len(outcomes) == count:
            done.set()

    for k in range(count):
        conn.send_request(SubmitSm(**values), lambda r, e, k=k: settle(k, r, e))
    await done.wait()
    return [outcomes[k] for k in range(count)]


async def test_pipelined_submits_are_answered_in_order_with_the_same_draws_as_one_by_one(
) -> None:
    async def statuses(pipelined: bool) -> tuple[list[int], list[str]]:
        async with running(sim_config(throttle=0.5, seed=42)) as sim, \
                trio.open_nursery() as nursery:
            esme = await connect(nursery, sim, window=20)
            if pipelined:
                answers = await pipeline(esme.conn, 20)
                resps = [a for a in answers if isinstance(a, Pdu)]
            else:
                resps = [await esme.submit(short_message=b"pipelined") for _ in range(20)]
            await esme.conn.unbind()
            ok_ids = [msg_id(r) for r in resps if r.status == 0]
            assert [r.message_id for r in sim.submitted] == ok_ids
            return [r.status for r in resps], ok_ids

    with trio.fail_after(10):
        one_by_one, pipelined = await statuses(False), await statuses(True)
    assert len(pipelined[0]) == 20 and pipelined == one_by_one
    assert Status.ESME_RTHROTTLED in pipelined[0] and 0 in pipelined[0]


@dataclass
class Sends:
    """Every send_all the simulator's SMPP sockets make: (when, octets)."""

    client_streams: set[int] = field(default_factory=set)  # id() of the test's own streams
    writes: list[tuple[float, bytes]] = field(default_factory=list)

    def of(self, command_id: int) -> list[tuple[float, bytes]]:
        return [(t, d) for t, d in self.writes if int.from_bytes(d[4:8], "big") == command_id]


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> Sends:
    """Count the simulator's writes through the socket layer (the test's own are left out)."""
    record = Sends()
    original = trio.SocketStream.send_all

    async def counting(self: trio.SocketStream, data: bytes | bytearray | memoryview) -> None:
        if id(self) not in record.client_streams:
            record.writes.append((trio.current_time(), bytes(data)))
        await original(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", counting)
    return record


async def pipelined_with_receipts(sim: SmscSimulator, sends: Sends, count: int
                                  ) -> tuple[float, list[DeliverSm]]:
    """Bind, send `count` submit_sm (asking receipts) back to back, wait for every receipt;
    (when the submits were queued, the receipts)."""
    async with trio.open_nursery() as nursery:
        stream = await trio.open_tcp_stream("127.0.0.1", sim.port)
        sends.client_streams.add(id(stream))
        conn = Connection(stream, Side.ESME, enquire_link_interval=math.inf, response_timeout=5,
                          window=count)
        esme = Esme(conn, bind_resp=Pdu())
        nursery.start_soon(conn.run, esme.handler)
        esme.bind_resp = await conn.request(BindTransceiver(system_id="sim", password="simpass"))
        sent_at = trio.current_time()
        answers = await pipeline(conn, count, registered_delivery=1)
        assert all(isinstance(a, Pdu) and a.status == 0 for a in answers), answers
        await eventually(lambda: len(esme.received) == count)
        await conn.unbind()
    return sent_at, esme.received


async def test_independent_peer_writes_each_submit_resp_and_each_receipt_in_its_own_send(
        sends: Sends) -> None:
    delay = 0.2
    with trio.fail_after(10):
        async with running(sim_config(peer="independent", receipt_delay=delay)) as sim:
            sent_at, receipts = await pipelined_with_receipts(sim, sends, 10)
    assert len(receipts) == 10
    for _, data in sends.writes:  # one whole PDU per send, never two, never a part
        assert int.from_bytes(data[:4], "big") == len(data), data.hex()
    assert len(sends.of(0x80000004)) == 10  # submit_sm_resp
    receipt_writes = sends.of(0x00000005)  # deliver_sm
    assert len(receipt_writes) == 10
    assert all(t >= sent_at + delay for t, _ in receipt_writes)  # not before it falls due


async def test_batching_peer_answers_the_submits_of_one_read_in_fewer_sends(
        sends: Sends) -> None:
    with trio.fail_after(10):
        async with running(sim_config(receipt_delay=0.05)) as sim:
            await pipelined_with_receipts(sim, sends, 10)
    resp_octets = sum(len(d) for _, d in sends.of(0x80000004))
    assert len(sends.of(0x80000004)) < 10 and resp_octets > 10 * 16  # several per send


async def test_a_slow_submit_does_not_hold_back_the_others_of_its_read() -> None:
    with trio.fail_after(5):
        async with running(sim_config(slow=0.5, slow_delay=0.5, seed=2)) as sim, \
                trio.open_nursery() as nursery:
            esme = await connect(nursery, sim)
            start = trio.current_time()
            answered_at: list[float] = []
            conn = esme.conn
            for _ in range(8):
                conn.send_request(SubmitSm(source_addr="ACME", destination_addr="33612345678",
                                           short_message=b"x"),
                                  lambda r, e: answered_at.append(trio.current_time() - start))
            await eventually(lambda: len(answered_at) == 8)
            slow = sim.stats.slow
            assert 0 < slow < 8
            assert sum(t < 0.3 for t in answered_at) == 8 - slow
            assert sum(t >= 0.5 for t in answered_at) == slow
            assert len(sim.submitted) == 8 and sim.stats.accepted == 8
            await conn.unbind()


async def test_a_disconnect_drops_the_rest_of_its_read_unanswered() -> None:
    with trio.fail_after(5):
        async with running(sim_config(disconnect=1.0)) as sim, trio.open_nursery() as nursery:
            esme = await connect(nursery, sim)
            answers = await pipeline(esme.conn, 5, registered_delivery=1)
            assert all(isinstance(a, ConnectionClosed) for a in answers)
            assert sim.stats.disconnects == 1 and sim.stats.submits == 1
            assert sim.submitted == [] and sim.queued == 0


# --------------------------------------------------------------------------- deliver_sm fail-safe


async def mute_receiver(nursery: trio.Nursery, sim: SmscSimulator,
                        got: list[DeliverSm]) -> Connection:
    """A receiver that takes deliver_sm and never answers them."""
    stream = await trio.open_tcp_stream("127.0.0.1", sim.port)
    conn = Connection(stream, Side.ESME, enquire_link_interval=math.inf, response_timeout=5)

    async def handler(conn: Connection, pdu: Pdu) -> None:
        if isinstance(pdu, DeliverSm):
            got.append(pdu)

    nursery.start_soon(conn.run, handler)
    assert (await conn.request(BindReceiver(system_id="sim", password="simpass"))).status == 0
    return conn


async def test_deliver_sm_outstanding_on_a_dropped_receiver_goes_to_the_next_one() -> None:
    with trio.fail_after(5):
        async with running(sim_config()) as sim, trio.open_nursery() as nursery:
            unanswered: list[DeliverSm] = []
            mute = await mute_receiver(nursery, sim, unanswered)
            transmitter = await connect(nursery, sim, BindTransmitter)
            resp = await transmitter.submit(registered_delivery=1)
            await eventually(lambda: len(unanswered) == 1)
            other = await connect(nursery, sim, BindReceiver)
            await trio.sleep(FAST)
            assert other.received == [] and sim.queued == 0  # still out on the mute one
            await mute.aclose()
            receipt = await other.next_deliver()
            assert tlv_str(receipt, Tag.RECEIPTED_MESSAGE_ID) == msg_id(resp)
            await eventually(lambda: sim.stats.receipts_sent == 1)
            assert sim.stats.deliver_retried == 0 and sim.queued == 0
            await transmitter.conn.unbind()
            await other.conn.unbind()


async def test_unanswered_deliver_sm_times_out_and_is_retried() -> None:
    with trio.fail_after(5):
        async with running(sim_config(), delivery_timeout=0.2, retry_delay=0.05) as sim, \
                trio.open_nursery() as nursery:
            unanswered: list[DeliverSm] = []
            mute = await mute_receiver(nursery, sim, unanswered)
            transmitter = await connect(nursery, sim, BindTransmitter)
            resp = await transmitter.submit(registered_delivery=1)
            await eventually(lambda: len(unanswered) == 1)
            other = await connect(nursery, sim, BindReceiver)
            receipt = await other.next_deliver()
            assert tlv_str(receipt, Tag.RECEIPTED_MESSAGE_ID) == msg_id(resp)
            await eventually(lambda: sim.stats.receipts_sent == 1)
            assert sim.stats.deliver_retried == len(unanswered) >= 1
            assert sim.stats.deliver_abandoned == 0
            await mute.aclose()
            await transmitter.conn.unbind()
            await other.conn.unbind()


# --------------------------------------------------------------------------- receipt text


async def test_configured_window_bounds_the_deliver_sm_outstanding_per_receiver() -> None:
    with trio.fail_after(5):
        async with running(sim_config(window=2)) as sim, trio.open_nursery() as nursery:
            unanswered: list[DeliverSm] = []
            mute = await mute_receiver(nursery, sim, unanswered)
            transmitter = await connect(nursery, sim, BindTransmitter)
            for _ in range(3):
                await transmitter.submit(registered_delivery=1)
            await eventually(lambda: len(unanswered) == 2)
            await trio.sleep(FAST * 2)
            assert len(unanswered) == 2 and sim.queued == 1
            await mute.aclose()
            await transmitter.conn.unbind()
