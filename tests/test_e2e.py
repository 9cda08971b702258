"""End to end: smpplib's Client (upstream ESME) -> gateway -> built-in simulator -> receipts back.

Real sockets on 127.0.0.1, real store on disk, real clock with short delays; every wait is
bounded by a deadline.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import pytest
import smpplib.exceptions
import trio
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from gateway import daemon
from gateway.config import AccountConfig, BreakerConfig, SimulatorConfig
from gateway.model import State
from gateway.simulator import SmscSimulator
from gateway.store import StoreError
from routing.smsc import SmscConnector
from smpp.connection import Connection
from smpp.constants import Status
from smpp.pdu import BindTransmitter, QuerySm, SubmitSm
from smpp.receipt import parse_receipt
from smpp.session import Side
from tests.stack import SmpplibEsme, gateway_config, password_hash, running_stack, wait_for
from tests.test_store import make_message, writer_pragma


def _receipt_ids(esme: SmpplibEsme) -> list[str]:
    return [p.receipted_message_id.rstrip(b"\0").decode() for p in esme.delivered
            if p.esm_class & 0x04]


async def _every_acked_message_delivered(gw: daemon.Running, esme: SmpplibEsme) -> None:
    """Each acknowledged message got its receipt, and is stored DELIVERED."""
    assert sorted(_receipt_ids(esme)) == sorted(r.message_id.decode() for r in esme.resps)
    for message_id in _receipt_ids(esme):
        stored = await gw.store.get_message(message_id)
        assert stored is not None and stored.state is State.DELIVERED


async def _roundtrip(esme: SmpplibEsme, count: int, text: bytes, prefix: str = "336555000",
                     timeout: float = 30) -> None:
    """Bind, submit `count` messages (long ones in message_payload), wait for every receipt."""
    def session() -> None:
        esme.bind()
        for i in range(count):
            if len(text) > 254:
                esme.submit(f"{prefix}{i:02d}", b"", message_payload=text)
            else:
                esme.submit(f"{prefix}{i:02d}", text)
        esme.read_until(lambda: len(esme.delivered) >= count, timeout=timeout)
        esme.close()

    with trio.fail_after(timeout + 10):
        await trio.to_thread.run_sync(session)


async def test_submit_is_acked_with_an_id_then_a_delivrd_receipt_comes_back(
        tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, sim):
        esme = SmpplibEsme(gw.smpp_port)
        with trio.fail_after(20):
            await trio.to_thread.run_sync(esme.submit_one, "33612345678", b"Your code is 123456")
        message_id = esme.resps[0].message_id.decode()
        assert re.fullmatch(r"[0-9a-f]{32}", message_id)
        stored = await gw.store.get_message(message_id)
        assert stored is not None and stored.state is State.DELIVERED
        [record] = sim.submitted
        assert record.destination_addr == "33612345678" and record.short_message.endswith(b"123456")
        [receipt] = esme.delivered
        assert receipt.receipted_message_id.rstrip(b"\0").decode() == message_id
        parsed = parse_receipt(receipt.short_message)
        assert parsed is not None and parsed.id == message_id and parsed.stat == "DELIVRD"
        assert receipt.source_addr == b"33612345678" and receipt.destination_addr == b"ACME"
        # By default the answer came after the fsync of the commit holding the message.
        assert await gw.store.durability() == ("wal", "full")


async def test_wrong_password_and_unknown_system_id_are_both_refused_with_rinvpaswd(
        tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, _sim):
        esme = SmpplibEsme(gw.smpp_port, password="nope")
        with pytest.raises(smpplib.exceptions.PDUError) as err:
            await trio.to_thread.run_sync(esme.bind)
        assert err.value.args[1] == Status.ESME_RINVPASWD
        esme.client.disconnect()
        unknown = SmpplibEsme(gw.smpp_port, system_id="ghost")
        with pytest.raises(smpplib.exceptions.PDUError) as err:
            await trio.to_thread.run_sync(unknown.bind)
        assert err.value.args[1] == Status.ESME_RINVPASWD  # not telling which accounts exist
        unknown.client.disconnect()


async def test_undeliverable_operator_outcome_reaches_upstream_as_undeliv(tmp_path: Path) -> None:
    sim_cfg = SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, delivered=0.0,
                              undeliverable=1.0, seed=1)
    async with running_stack(tmp_path, sim_cfg) as (gw, _sim):
        esme = SmpplibEsme(gw.smpp_port)

        def session() -> None:
            esme.bind()
            esme.submit("33612345678", b"hello")
            esme.read_until(lambda: bool(esme.delivered))
            esme.close()

        with trio.fail_after(20):
            await trio.to_thread.run_sync(session)
        parsed = parse_receipt(esme.delivered[0].short_message)
        assert parsed is not None and parsed.stat == "UNDELIV"


async def test_receipt_waits_for_a_receiver_bind_and_is_delivered_after_reconnect(
        tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, _sim):
        tx = SmpplibEsme(gw.smpp_port)

        def submit_only() -> None:
            tx.bind("transmitter")
            tx.submit("33612345678", b"hello")
            tx.read_until(lambda: bool(tx.resps))
            tx.close()

        await trio.to_thread.run_sync(submit_only)
        message_id = tx.resps[0].message_id.decode()
        await wait_for(lambda: gw.reporter.pending_count("demo") == 1)
        rx = SmpplibEsme(gw.smpp_port)

        def receive() -> None:
            rx.bind("receiver")
            rx.read_until(lambda: bool(rx.delivered))
            rx.close()

        with trio.fail_after(20):
            await trio.to_thread.run_sync(receive)
        assert _receipt_ids(rx) == [message_id]
        await wait_for(lambda: gw.reporter.pending_count("demo") == 0)
        with trio.fail_after(5):  # deleted from the store by the next ack batch
            while await gw.store.pending_reports("demo"):
                await trio.sleep(0.01)


async def test_mo_to_the_accounts_short_code_reaches_its_receiver(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, sim):
        rx = SmpplibEsme(gw.smpp_port)
        await trio.to_thread.run_sync(rx.bind, "receiver")
        await sim.inject_mo("33612345678", "36111", "STOP")

        with trio.fail_after(20):
            await trio.to_thread.run_sync(rx.read_until, lambda: bool(rx.delivered))
        rx.close()
        [mo] = rx.delivered
        assert mo.esm_class & 0x3C == 0
        assert mo.short_message == b"STOP"
        assert mo.source_addr == b"33612345678" and mo.destination_addr == b"36111"


async def test_long_message_goes_out_in_parts_and_gives_one_receipt(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, sim):
        esme = SmpplibEsme(gw.smpp_port)
        text = ("0123456789" * 30).encode()  # 300 GSM characters: 2 parts

        def session() -> None:
            esme.bind()
            esme.submit("33612345678", b"", message_payload=text)
            esme.read_until(lambda: bool(esme.delivered))
            esme.close()

        with trio.fail_after(20):
            await trio.to_thread.run_sync(session)
        assert len(sim.submitted) == 2
        assert all(r.esm_class & 0x40 for r in sim.submitted)
        # in the order of their UDH sequence numbers (octet 5): the parts may go over two
        # binds, and so reach the SMSC in either order
        in_order = sorted(sim.submitted, key=lambda r: r.short_message[5])
        assert b"".join(r.short_message[6:] for r in in_order) == text
        assert len(esme.delivered) == 1
        message_id = esme.resps[0].message_id.decode()
        parts = await gw.store.get_parts(message_id)
        assert len(parts) == 2 and all(p.smsc_id for p in parts)


async def test_query_sm_answers_the_stored_state(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, _sim), trio.open_nursery() as nursery:
        stream = await trio.open_tcp_stream("127.0.0.1", gw.smpp_port)
        conn = Connection(stream, Side.ESME)
        nursery.start_soon(conn.run, _ignore)
        assert (await conn.request(BindTransmitter(system_id="demo", password="demopass"))
                ).status == 0
        resp = await conn.request(SubmitSm(source_addr="ACME", source_addr_ton=5,
                                           destination_addr="33612345678", dest_addr_ton=1,
                                           dest_addr_npi=1, short_message=b"hi",
                                           registered_delivery=1))
        message_id = resp.message_id  # type: ignore[attr-defined]
        stored = None
        with trio.fail_after(10):
            while stored is None or stored.state is not State.DELIVERED:
                await trio.sleep(0.02)
                stored = await gw.store.get_message(message_id)
        answer = await conn.request(QuerySm(message_id=message_id, source_addr="ACME"))
        assert answer.status == 0
        assert answer.message_state == 2  # type: ignore[attr-defined]
        assert answer.final_date  # type: ignore[attr-defined]
        missing = await conn.request(QuerySm(message_id="0" * 32))
        assert missing.status == Status.ESME_RQUERYFAIL
        await conn.unbind()
        nursery.cancel_scope.cancel()


async def _ignore(conn: Connection, pdu: object) -> None:
    return None


async def test_invalid_destination_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, sim):
        esme = SmpplibEsme(gw.smpp_port)

        def session() -> None:
            esme.bind()
            esme.submit("not-a-number", b"hello")
            esme.read_until(lambda: bool(esme.errors))
            esme.close()

        with trio.fail_after(20):
            await trio.to_thread.run_sync(session)
        assert esme.errors[0].status == Status.ESME_RINVDSTADR
        assert (await gw.store.stats())["QUEUED"] == 0
        assert sim.submitted == []


async def test_account_over_its_rate_gets_throttled(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, _sim):
        esme = SmpplibEsme(gw.smpp_port, system_id="other", password="otherpw")
        elapsed = 0.0

        def burst() -> None:
            nonlocal elapsed
            esme.bind("transmitter")
            start = time.monotonic()
            for _ in range(20):
                esme.submit("33612345678", b"x", registered_delivery=0)
            # smpplib hands every submit_sm_resp, errors included, to the sent handler
            esme.read_until(lambda: len(esme.resps) >= 20)
            elapsed = time.monotonic() - start
            esme.close()

        with trio.fail_after(20):
            await trio.to_thread.run_sync(burst)
        statuses = [r.status for r in esme.resps]
        accepted = statuses.count(0)
        throttled = statuses.count(Status.ESME_RTHROTTLED)
        assert accepted + throttled == 20
        # 5/s with a burst of 5: at least the burst, at most the burst plus what time allowed
        assert 5 <= accepted <= 5 + 5 * elapsed + 1
        assert throttled >= 1


async def test_binds_beyond_the_account_maximum_are_refused(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, _sim):
        first = SmpplibEsme(gw.smpp_port, system_id="other", password="otherpw")
        await trio.to_thread.run_sync(first.bind)
        second = SmpplibEsme(gw.smpp_port, system_id="other", password="otherpw")
        with pytest.raises(smpplib.exceptions.PDUError) as err:
            await trio.to_thread.run_sync(second.bind)
        assert err.value.args[1] == Status.ESME_RBINDFAIL
        second.client.disconnect()
        await trio.to_thread.run_sync(first.close)


async def test_operator_throttling_and_errors_are_retried_until_every_receipt_is_in(
        tmp_path: Path) -> None:
    sim_cfg = SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, throttle=0.3,
                              error=0.2, seed=3)
    async with running_stack(tmp_path, sim_cfg) as (gw, sim):
        esme = SmpplibEsme(gw.smpp_port)
        count = 30
        await _roundtrip(esme, count, b"hello", prefix="336123456")
        assert sorted(_receipt_ids(esme)) == sorted(r.message_id.decode() for r in esme.resps)
        assert sim.stats.throttled > 0
        assert len({r.destination_addr for r in sim.submitted}) == count


async def test_operator_dropping_connections_is_survived_by_reconnecting_and_retrying(
        tmp_path: Path) -> None:
    sim_cfg = SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, disconnect=0.15,
                              seed=5)
    # The lone SMSC drops a connection every few submits: its circuit breaker would open and
    # hold every message for its cool-down (tests/test_breaker_failover.py); here the rule is
    # reconnecting and retrying, so the breaker is kept out of the way.
    async with running_stack(tmp_path, sim_cfg, breaker=BreakerConfig(failures=1000)) as (
            gw, sim):
        esme = SmpplibEsme(gw.smpp_port)
        count = 20
        await _roundtrip(esme, count, b"hello", prefix="336987654", timeout=40)
        assert sim.stats.disconnects > 0
        await _every_acked_message_delivered(gw, esme)



async def test_receipts_on_the_receiver_bind_match_submits_made_on_the_transmitter(
        tmp_path: Path) -> None:
    smsc = {"bind_mode": "transmitter+receiver", "binds": 2}
    async with running_stack(tmp_path, smsc_changes=smsc) as (gw, sim):
        esme = SmpplibEsme(gw.smpp_port)
        await _roundtrip(esme, 10, b"hello")
        await _every_acked_message_delivered(gw, esme)
        assert len(sim.submitted) == 10


@pytest.mark.parametrize("method", ["sar", "payload"])
async def test_long_message_segmentation_per_smsc_setting(tmp_path: Path, method: str) -> None:
    text = ("abcdefghij" * 25).encode()  # 250 GSM characters: 2 parts
    async with running_stack(tmp_path, smsc_changes={"segmentation": method}) as (gw, sim):
        esme = SmpplibEsme(gw.smpp_port)
        await _roundtrip(esme, 1, text)
        parsed = parse_receipt(esme.delivered[0].short_message)
        assert parsed is not None and parsed.stat == "DELIVRD"
        if method == "sar":
            assert len(sim.submitted) == 2  # parts may arrive in any order (two binds)
            parts = sorted(sim.submitted, key=lambda r: r.sar[2] if r.sar else 0)
            ref = parts[0].sar[0] if parts[0].sar else None
            assert [r.sar for r in parts] == [(ref, 2, 1), (ref, 2, 2)]
            assert not any(r.esm_class & 0x40 for r in parts)
            assert b"".join(r.short_message for r in parts) == text
        else:  # one submit_sm, the whole text in message_payload
            [record] = sim.submitted
            assert record.body == text


async def test_long_mo_reaches_the_account_in_message_payload(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, sim):
        rx = SmpplibEsme(gw.smpp_port)
        await trio.to_thread.run_sync(rx.bind, "receiver")
        text = "x" * 300
        await sim.inject_mo("33612345678", "36111", text)
        with trio.fail_after(20):
            await trio.to_thread.run_sync(rx.read_until, lambda: bool(rx.delivered))
        rx.close()
        [mo] = rx.delivered
        assert mo.short_message in (b"", None)
        assert mo.message_payload == text.encode()


def _other_base_sim() -> SimulatorConfig:
    """An SMSC answering hex ids and writing them in decimal in its receipts."""
    return SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, seed=11,
                           receipt_id_base="other")


@pytest.mark.parametrize("id_format", ["decimal", "auto"])
async def test_smsc_writing_receipt_ids_in_decimal_is_matched_by_its_id_format(
        tmp_path: Path, id_format: str) -> None:
    smsc = {"receipt_id_format": id_format, "receipt_hold": 0.5}
    async with running_stack(tmp_path, _other_base_sim(), smsc_changes=smsc) as (gw, _sim):
        esme = SmpplibEsme(gw.smpp_port)
        await _roundtrip(esme, 10, b"hello", prefix="336444000")
        await _every_acked_message_delivered(gw, esme)


async def test_receipts_a_wrong_id_format_cannot_match_are_orphans_not_silently_dropped(
        tmp_path: Path) -> None:
    count = 10
    smsc = {"receipt_id_format": "as-is", "receipt_hold": 0.2}
    async with running_stack(tmp_path, _other_base_sim(), smsc_changes=smsc) as (gw, sim):
        before = REGISTRY.get_sample_value("smsgw_orphan_receipts_total", {"smsc": "sim"}) or 0
        esme = SmpplibEsme(gw.smpp_port)

        def session() -> None:
            esme.bind()
            for i in range(count):
                esme.submit(f"336333000{i:02d}", b"hello")
            esme.read_until(lambda: len(esme.resps) >= count)
            esme.close()

        with trio.fail_after(30):
            await trio.to_thread.run_sync(session)
        await wait_for(lambda: sim.stats.receipts_sent == count)  # each answered OK
        orphans = REGISTRY.get_sample_value("smsgw_orphan_receipts_total", {"smsc": "sim"})
        assert orphans == before + count
        for resp in esme.resps:  # not "late": their messages still wait for a receipt
            stored = await gw.store.get_message(resp.message_id.decode())
            assert stored is not None and stored.state is State.IN_FLIGHT


async def test_submits_beyond_the_unfinished_cap_get_esme_rmsgqful(tmp_path: Path) -> None:
    no_receipts = SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, seed=7,
                                  delivered=0.0, no_receipt=1.0)  # messages stay unfinished
    store = dataclasses.replace(gateway_config(tmp_path, 0).store, unfinished_max=3)
    refused = REGISTRY.get_sample_value(
        "smsgw_submits_refused_total", {"account": "demo", "status": "0x00000014"}) or 0.0
    async with running_stack(tmp_path, sim=no_receipts, store=store) as (gw, sim):
        esme = SmpplibEsme(gw.smpp_port)

        def session() -> None:
            esme.bind("transmitter")
            for i in range(5):
                esme.submit(f"3361234567{i}", b"hello")
                esme.read_until(lambda n=i: len(esme.resps) > n)  # one at a time: known order
            esme.close()

        with trio.fail_after(20):
            await trio.to_thread.run_sync(session)
        assert [r.status for r in esme.resps] == [0, 0, 0, Status.ESME_RMSGQFUL,
                                                  Status.ESME_RMSGQFUL]
        assert REGISTRY.get_sample_value(
            "smsgw_submits_refused_total", {"account": "demo", "status": "0x00000014"}
        ) == refused + 2
        assert gw.store.unfinished == 3
        await wait_for(lambda: len(sim.submitted) == 3)  # the refused ones were never stored


async def test_a_full_disk_gives_esme_rsyserr_counted_and_logged_once_not_per_submit(
        tmp_path: Path) -> None:
    # 3,000-octet messages (20 parts) are what fills pages: the account allows them
    accounts = {"demo": AccountConfig("demo", password_hash("demopass"), throughput=0,
                                      max_parts=255)}
    async with running_stack(tmp_path, accounts=accounts) as (gw, _sim):
        pages = (await writer_pragma(gw.store, "PRAGMA page_count"))[0][0]
        await writer_pragma(gw.store, f"PRAGMA max_page_count = {pages}")  # the disk is full
        esme = SmpplibEsme(gw.smpp_port)

        def session() -> None:
            esme.bind("transmitter")
            for i in range(20):
                esme.submit(f"3361234567{i % 10}", b"", message_payload=b"x" * 3000)
                esme.read_until(lambda n=i: len(esme.resps) > n)
            esme.close()

        with capture_logs() as logs:
            with pytest.raises(StoreError):  # ... once the last free bytes of its pages are used
                for _ in range(100):
                    await gw.store.add_messages([make_message(body=b"x" * 3000)])
            failures = REGISTRY.get_sample_value(
                "smsgw_store_failures_total", {"operation": "write"}) or 0.0
            with trio.fail_after(30):
                await trio.to_thread.run_sync(session)
        assert [r.status for r in esme.resps] == [Status.ESME_RSYSERR] * 20
        assert REGISTRY.get_sample_value(
            "smsgw_store_failures_total", {"operation": "write"}) == failures + 20
        assert [e["event"] for e in logs if e["event"].startswith("store.")] == ["store.failed"]
        assert not [e for e in logs if "exc_info" in e or (e["log_level"] == "error"
                    and e["event"] != "store.failed")]


async def test_submits_take_the_binds_in_turn_so_none_carries_them_all(tmp_path: Path) -> None:
    """The rule: a connector's submits go round-robin over its bound transmitters, one turn
    per submit. (Taking two turns per submit sent every submit over the same one of two binds:
    a dropped bind then failed them all at once, and they were all retried together.)"""
    sim = SmscSimulator(SimulatorConfig(port=0, control_port=0, slow=1.0, slow_delay=60,
                                        seed=1))
    cfg = dataclasses.replace(gateway_config(tmp_path, 1).smscs["sim"], binds=2, window=50)

    async def ignore(*_args: object) -> None:
        return None

    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve)
        connector = SmscConnector(dataclasses.replace(cfg, port=sim.port), ignore)
        await nursery.start(connector.run)
        await wait_for(lambda: connector.bound() == (2, 2))
        for i in range(20):  # answered after slow_delay: all still on the wire when counted
            pdu = SubmitSm(source_addr="ACME", source_addr_ton=5, dest_addr_ton=1,
                           dest_addr_npi=1, destination_addr=f"336120000{i:02d}",
                           short_message=b"hello")
            connector.submit_nowait(pdu, trio.current_time() + 60, lambda _result: None)
        await wait_for(lambda: connector.unanswered == 20)
        per_bind = [len(conn.session.outstanding) for conn in connector._transmitters]
        nursery.cancel_scope.cancel()
    assert per_bind == [10, 10]


async def test_a_connect_to_an_smsc_that_never_answers_is_cut_and_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule: a black-holed SMSC address costs a connect attempt bounded by the SMSC's
    response_timeout, then the usual reconnect backoff, never a connector hung for minutes."""
    attempts: list[float] = []

    async def black_hole(host: str, port: int) -> trio.SocketStream:
        attempts.append(trio.current_time())
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    monkeypatch.setattr("routing.smsc.trio.open_tcp_stream", black_hole)
    cfg = dataclasses.replace(gateway_config(tmp_path, 1).smscs["sim"], response_timeout=0.2,
                              reconnect_delay=0.05, reconnect_delay_max=0.1, binds=1)

    async def ignore(*_args: object) -> None:
        return None

    connector = SmscConnector(cfg, ignore)
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.run)
        await wait_for(lambda: len(attempts) >= 3, timeout=5)
        nursery.cancel_scope.cancel()
    assert attempts[2] - attempts[0] < 2.0
