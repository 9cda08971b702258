"""Admission limits per account: throughput (a submit_multi pays per destination), parts per
message, and metric labels an operator or upstream cannot multiply."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY

from gateway.config import AccountConfig, ListenerConfig
from gateway.intake import IntakeError, IntakePolicy, accept_multi, accept_submit
from gateway.metrics import status_label
from gateway.server import TokenBucket
from routing.smsc import SubmitResult
from smpp.connection import Connection
from smpp.constants import Status
from smpp.pdu import BindTransmitter, Pdu, QuerySm, SmeDest, SubmitMulti, SubmitSm
from smpp.session import Side
from tests.dispatch_harness import HOUR, ScriptedSmsc, harness
from tests.stack import password_hash, running_stack

DAY = 86400.0


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def _submit(body: bytes, **fields: object) -> SubmitSm:
    return SubmitSm(source_addr="ACME", source_addr_ton=5, destination_addr="33612345678",
                    dest_addr_ton=1, dest_addr_npi=1, short_message=b"", **fields,  # type: ignore[arg-type]
                    tlvs={0x0424: body})


@pytest.mark.parametrize(("body", "data_coding", "parts"), [
    (b"a" * 1530, 0, 10),  # GSM: 153 characters a part
    (b"a" * 1531, 0, 11),
    (b"\x00a" * 670, 8, 10),  # UCS-2: 67 characters a part
    (b"\x00a" * 671, 8, 11),
    (b"\x01" * 1340, 4, 10),  # 8-bit data: 134 octets a part
    (b"\x01" * 1341, 4, 11),
])
def test_a_message_needing_more_parts_than_the_account_allows_is_refused(
        body: bytes, data_coding: int, parts: int) -> None:
    policy = IntakePolicy(DAY, max_parts=10)
    pdu = _submit(body, data_coding=data_coding)
    if parts <= 10:
        accept_submit("acme", pdu, 0.0, policy)
        return
    with pytest.raises(IntakeError) as err:
        accept_submit("acme", pdu, 0.0, policy)
    assert err.value.status == Status.ESME_RINVMSGLEN
    assert f"{parts} SMS parts" in err.value.detail and "max_parts" in err.value.detail


def test_a_message_the_client_already_split_counts_one_part_per_140_octets() -> None:
    udh = bytes([5, 0, 3, 7, 2, 1])
    accept_submit("acme", _submit(udh + b"a" * 134, esm_class=0x40), 0.0,
                  IntakePolicy(DAY, max_parts=1))
    with pytest.raises(IntakeError) as err:  # UDHI is no way around max_parts
        accept_submit("acme", _submit(udh + b"a" * 2000, esm_class=0x40), 0.0,
                      IntakePolicy(DAY, max_parts=10))
    assert "15 SMS parts" in err.value.detail


def test_a_submit_multi_is_held_to_max_parts_too() -> None:
    pdu = SubmitMulti(source_addr="ACME", source_addr_ton=5,
                      dests=[SmeDest(1, 1, "33612345678")], tlvs={0x0424: b"a" * 400})
    with pytest.raises(IntakeError):
        accept_multi("acme", pdu, 0.0, IntakePolicy(DAY, max_parts=2))
    assert len(accept_multi("acme", pdu, 0.0, IntakePolicy(DAY, max_parts=3)).messages) == 1


async def test_a_submit_multi_pays_one_token_per_destination(
        clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(10)  # 10/s, bursts of 10
    assert bucket.take(255)  # a full bucket admits even more than a burst, into debt...
    assert not bucket.take(1)  # ...which is paid back before anything else passes
    await trio.sleep(24.0)
    assert not bucket.take(1)  # 245 owed: 24.5 s of the rate
    await trio.sleep(0.6)
    assert bucket.take(1)
    await trio.sleep(1.0)
    assert bucket.take(5) and bucket.take(5) and not bucket.take(1)


def test_accounts_are_rate_limited_by_default() -> None:
    assert AccountConfig("a", "x").throughput == 100.0
    assert AccountConfig("a", "x").max_parts == 10


async def _ignore(_conn: Connection, _pdu: Pdu) -> None:
    return None


async def _bound(nursery: trio.Nursery, port: int, system_id: str, password: str) -> Connection:
    """A transmitter bound as system_id (our Connection, run in `nursery`)."""
    conn = Connection(await trio.open_tcp_stream("127.0.0.1", port), Side.ESME)
    nursery.start_soon(conn.run, _ignore)
    resp = await conn.request(BindTransmitter(system_id=system_id, password=password))
    assert resp.status == 0
    return conn


async def test_a_submit_multi_to_many_destinations_is_throttled_like_as_many_submits(
        tmp_path: Path) -> None:
    accounts = {"demo": AccountConfig("demo", password_hash("demopass"), throughput=5)}
    async with running_stack(tmp_path, accounts=accounts) as (gw, _sim), \
            trio.open_nursery() as nursery:
        conn = await _bound(nursery, gw.smpp_port, "demo", "demopass")
        multi = SubmitMulti(source_addr="ACME", source_addr_ton=5, short_message=b"hi",
                            dests=[SmeDest(1, 1, f"336123456{i:02d}") for i in range(20)])
        assert (await conn.request(multi)).status == 0
        single = SubmitSm(source_addr="ACME", source_addr_ton=5, dest_addr_ton=1,
                          dest_addr_npi=1, destination_addr="33612345678", short_message=b"hi")
        assert (await conn.request(single)).status == Status.ESME_RTHROTTLED  # 15 owed
        await conn.unbind()
        nursery.cancel_scope.cancel()


@pytest.fixture
def sqlite_clock() -> trio.testing.MockClock:
    # Jumps only after 20 ms of real idleness, so SQLite's worker thread is not outrun.
    return trio.testing.MockClock(autojump_threshold=0.02)


def test_status_labels_are_the_statuses_smpp_defines_and_other() -> None:
    assert status_label(Status.ESME_RTHROTTLED) == "0x00000058"
    assert status_label(0x12345678) == "other"
    assert status_label(0x0400) == "other"


async def test_an_operator_inventing_statuses_cannot_multiply_metric_series(
        tmp_path: Path, sqlite_clock: trio.testing.MockClock) -> None:
    weird = iter(range(0x7000_0000, 0x7000_0100))
    # A name of its own: other tests' connectors count real statuses in the same registry.
    smsc = ScriptedSmsc("opInventive", lambda _p: SubmitResult(None, next(weird)))
    async with trio.open_nursery() as nursery, \
            harness(tmp_path, {"opInventive": smsc}, nursery) as h:
        for _ in range(5):
            msg = h.message()
            await h.submit(msg)
            await h.wait_final(msg.id, timeout=HOUR)
    labels = {s.labels["status"] for m in REGISTRY.collect() if m.name == "smsgw_submit_errors"
              for s in m.samples if s.labels.get("smsc") == "opInventive"}
    assert labels == {"other"}


async def test_query_sm_is_charged_to_the_accounts_throughput(tmp_path: Path) -> None:
    accounts = {"demo": AccountConfig("demo", password_hash("demopass"), throughput=3)}
    async with running_stack(tmp_path, accounts=accounts) as (gw, _sim), \
            trio.open_nursery() as nursery:
        conn = await _bound(nursery, gw.smpp_port, "demo", "demopass")
        statuses = [(await conn.request(QuerySm(message_id="0" * 32))).status
                    for _ in range(10)]
        assert statuses.count(Status.ESME_RQUERYFAIL) <= 4  # a burst of ~3, then the rate
        assert statuses.count(Status.ESME_RTHROTTLED) >= 6
        await conn.unbind()
        nursery.cancel_scope.cancel()


async def test_an_account_at_its_unfinished_cap_gets_msgqful_while_others_go_on(
        tmp_path: Path) -> None:
    """The rule: one account (its operator down, or a big scheduled campaign) cannot take
    every unfinished-message slot of the gateway: beyond its max_unfinished it is told to
    come back later (ESME_RMSGQFUL), and other accounts are served."""
    accounts = {
        "demo": AccountConfig("demo", password_hash("demopass"), throughput=0,
                              max_unfinished=3),
        "other": AccountConfig("other", password_hash("otherpw"), throughput=0),
    }
    schedule = "000000010000000R"  # in an hour: the messages stay unfinished meanwhile
    async with running_stack(tmp_path, accounts=accounts) as (gw, _sim), \
            trio.open_nursery() as nursery:
        def later() -> SubmitSm:
            return SubmitSm(source_addr="ACME", source_addr_ton=5, dest_addr_ton=1,
                            dest_addr_npi=1, destination_addr="33612345678",
                            short_message=b"hi", schedule_delivery_time=schedule)

        demo = await _bound(nursery, gw.smpp_port, "demo", "demopass")
        other = await _bound(nursery, gw.smpp_port, "other", "otherpw")
        statuses = [(await demo.request(later())).status for _ in range(5)]
        assert statuses == [0, 0, 0, Status.ESME_RMSGQFUL, Status.ESME_RMSGQFUL]
        multi = SubmitMulti(source_addr="ACME", source_addr_ton=5, short_message=b"hi",
                            dests=[SmeDest(1, 1, "33612345678")])
        assert (await demo.request(multi)).status == Status.ESME_RMSGQFUL
        assert (await other.request(later())).status == 0
        assert gw.dispatcher.unfinished_of("demo") == 3
        for conn in (demo, other):
            await conn.unbind()
        nursery.cancel_scope.cancel()


async def test_an_accounts_limits_hold_across_all_listeners(tmp_path: Path) -> None:
    """The rule: throughput and max_binds are the account's, whichever listeners (a plain
    one for local clients and a TLS one, say) its binds use."""
    accounts = {"demo": AccountConfig("demo", password_hash("demopass"), throughput=3,
                                      max_binds=2)}
    listeners = tuple(ListenerConfig(port=0, auth_failure_delay=0.01) for _ in range(2))
    async with running_stack(tmp_path, accounts=accounts, listeners=listeners) as (gw, _sim), \
            trio.open_nursery() as nursery:
        a = await _bound(nursery, gw.servers[0].port or 0, "demo", "demopass")
        b = await _bound(nursery, gw.servers[1].port or 0, "demo", "demopass")
        third = Connection(await trio.open_tcp_stream("127.0.0.1", gw.servers[1].port or 0),
                           Side.ESME)
        nursery.start_soon(third.run, _ignore)
        resp = await third.request(BindTransmitter(system_id="demo", password="demopass"))
        assert resp.status == Status.ESME_RBINDFAIL  # max_binds 2, over both listeners

        def single() -> SubmitSm:
            return SubmitSm(source_addr="ACME", source_addr_ton=5, dest_addr_ton=1,
                            dest_addr_npi=1, destination_addr="33612345678",
                            short_message=b"hi")

        statuses = [(await conn.request(single())).status for conn in (a, b) * 4]
        assert statuses.count(0) <= 4  # a burst of 3 a second, shared by both listeners
        assert statuses.count(Status.ESME_RTHROTTLED) >= 4
        for conn in (a, b):
            await conn.unbind()
        nursery.cancel_scope.cancel()
