"""Rules of the reporter (gateway.reporter): every report owed upstream is delivered once
(at least once across a crash), memory holds a bounded page of them per account, a report
older than the expiry is deleted and counted, and a bind that leaves deliver_sm unanswered is
unbound. Real store and SMPP connections over in-memory streams, in virtual time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from io import StringIO
from pathlib import Path

import pytest
import structlog
import trio
import trio.testing
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from gateway import logs
from gateway import reporter as reporter_module
from gateway.clock import WallClock
from gateway.model import Report, ReportKind, new_message_id
from gateway.reporter import Reporter
from gateway.store import Store
from smpp.connection import Connection
from smpp.constants import Tag
from smpp.pdu import Bind, BindTransceiver, DeliverSm, Pdu
from smpp.session import Side
from tests.test_store import T0, make_report

HOUR = 3600.0


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Jumps only after 20 ms of real idleness, so SQLite's worker thread is not outrun.
    return trio.testing.MockClock(autojump_threshold=0.02)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Upstream:
    """An upstream ESME bound as transceiver; `answer` decides each deliver_sm's status
    (None: never answered)."""

    def __init__(self, answer: Callable[[DeliverSm], int | None]) -> None:
        self.answer = answer
        self.received: list[str] = []  # receipted message ids (handled concurrently)
        self.gateway_side: Connection | None = None

    async def _on_request(self, conn: Connection, pdu: Pdu) -> None:
        if isinstance(pdu, DeliverSm):
            self.received.append(pdu.tlvs[Tag.RECEIPTED_MESSAGE_ID].rstrip(b"\0").decode())
            status = self.answer(pdu)
            if status is not None:
                conn.respond(pdu.response(status=status))


async def bind(nursery: trio.Nursery, reporter: Reporter, upstream: Upstream,
               account: str = "acme", response_timeout: float = 30.0) -> Connection:
    """Connect the upstream to a gateway-side connection and register it with the
    reporter, as the SMPP server does after a receiver/transceiver bind."""
    a, b = trio.testing.memory_stream_pair()
    gw = Connection(a, Side.SMSC, window=10, response_timeout=response_timeout,
                    enquire_link_interval=1e9, name="gw")
    esme = Connection(b, Side.ESME, enquire_link_interval=1e9, name="esme")

    async def on_bind(conn: Connection, pdu: Pdu) -> None:
        if isinstance(pdu, Bind):
            conn.respond(pdu.response(system_id="gw"))

    nursery.start_soon(gw.run, on_bind)
    nursery.start_soon(esme.run, upstream._on_request)
    resp = await esme.request(BindTransceiver(system_id=account, password="x"))
    assert resp.status == 0
    upstream.gateway_side = gw
    reporter.bind_added(account, gw)
    return gw


@asynccontextmanager
async def running_reporter(path: Path, **kwargs: object) -> AsyncIterator[
        tuple[Store, Reporter, trio.Nursery]]:
    async with Store.open(path, synchronous="normal") as store, \
            trio.open_nursery() as nursery:
        reporter = Reporter(store, WallClock(T0 + 10), **kwargs)  # type: ignore[arg-type]
        await nursery.start(reporter.run)
        yield store, reporter, nursery
        nursery.cancel_scope.cancel()


async def store_reports(store: Store, n: int, **changes: object) -> list[Report]:
    reports = [make_report(new_message_id(), **changes) for _ in range(n)]
    await store.add_reports(reports)
    return reports


async def wait_until(condition: Callable[[], bool], timeout: float = 600.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.5)


async def stored_ids(store: Store, account: str = "acme") -> list[str]:
    return [r.message_id for r in await store.pending_reports(account, 1_000_000)]


async def test_reports_beyond_the_memory_bound_wait_in_the_store_and_each_is_sent_once(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async with running_reporter(tmp_path / "gw.sqlite", memory=10) as (store, reporter, nursery):
        peak = 0

        def answer(_pdu: DeliverSm) -> int:
            nonlocal peak
            peak = max(peak, reporter.in_memory("acme"))
            return 0

        produced: list[str] = []
        for _ in range(12):  # committed in batches, handed over right after each commit
            batch = await store_reports(store, 7)
            reporter.add_many(batch)
            produced += [r.message_id for r in batch]
        assert reporter.in_memory("acme") <= 10
        assert reporter.pending_count("acme") == 84
        upstream = Upstream(answer)
        await bind(nursery, reporter, upstream)
        for _ in range(6):  # more arrive while pages are read in
            batch = await store_reports(store, 9)
            reporter.add_many(batch)
            produced += [r.message_id for r in batch]
            await trio.sleep(0.01)
        await wait_until(lambda: len(upstream.received) >= len(produced))
        await trio.sleep(1)  # anything sent twice would have arrived by now
        assert sorted(upstream.received) == sorted(produced)
        assert len(set(upstream.received)) == len(produced)
        assert peak <= 10
        assert reporter.pending_count("acme") == 0
        await wait_until(lambda: reporter.in_memory("acme") == 0)
        with trio.fail_after(60):
            while await stored_ids(store):
                await trio.sleep(0.1)


async def test_a_report_handed_over_after_a_later_one_is_not_lost_by_paging(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async with running_reporter(tmp_path / "gw.sqlite", memory=2) as (store, reporter, nursery):
        first, second, third = await store_reports(store, 3)  # committed in this order
        reporter.add_many([second, third])  # memory full
        reporter.add(first)  # its commit came first, its hand-over last
        rest = await store_reports(store, 5)
        reporter.add_many(rest)  # these wait in the store
        assert reporter.in_memory("acme") == 3
        upstream = Upstream(lambda _pdu: 0)
        await bind(nursery, reporter, upstream)
        everything = [first, second, third, *rest]
        await wait_until(lambda: len(upstream.received) >= len(everything))
        await trio.sleep(1)
        assert sorted(upstream.received) == sorted(r.message_id for r in everything)


async def test_a_report_left_in_the_store_during_a_page_read_is_read_next(
        tmp_path: Path, clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_reporter(tmp_path / "gw.sqlite", memory=10) as (store, reporter, nursery):
        reports = await store_reports(store, 12)
        reporter.add_many(reports)  # 10 in memory, 2 in the store only
        late: list[Report] = []
        read = store.pending_reports

        async def read_then_commit_another(account: str, limit: int = 1000, *,
                                           after: int = 0) -> list[Report]:
            rows = await read(account, limit, after=after)
            if not late:  # committed and handed over after the read's snapshot
                late.extend(await store_reports(store, 1))
                reporter.add_many(late)
            return rows

        monkeypatch.setattr(store, "pending_reports", read_then_commit_another)
        upstream = Upstream(lambda _pdu: 0)
        await bind(nursery, reporter, upstream)
        await wait_until(lambda: len(upstream.received) >= 13)
        assert sorted(upstream.received) == sorted(r.message_id for r in reports + late)


async def test_reports_of_a_previous_run_are_counted_then_paged_in(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    path = tmp_path / "gw.sqlite"
    async with Store.open(path, synchronous="normal") as store:
        left = [r.message_id for r in await store_reports(store, 25)]
        await store_reports(store, 3, account="gone")  # an account no longer configured
    async with running_reporter(path, memory=8, accounts=["acme"]) as (_, reporter, nursery):
        assert reporter.pending_count("acme") == 25
        assert sample("smsgw_reports_pending", account="acme") == 25
        assert sample("smsgw_reports_pending", account="other") == 3
        await wait_until(lambda: reporter.in_memory("acme") > 0)
        assert reporter.in_memory("acme") <= 8
        upstream = Upstream(lambda _pdu: 0)
        await bind(nursery, reporter, upstream)
        await wait_until(lambda: len(upstream.received) >= 25)
        assert sorted(upstream.received) == sorted(left)
        await wait_until(lambda: reporter.pending_count("acme") == 0)
        assert sample("smsgw_reports_pending", account="acme") == 0


async def test_a_report_older_than_the_expiry_is_deleted_undelivered_and_counted(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async with running_reporter(tmp_path / "gw.sqlite", memory=4,
                                expiry=72 * HOUR) as (store, reporter, nursery):
        old = await store_reports(store, 10)
        reporter.add_many(old)
        mos = await store_reports(store, 2, kind=ReportKind.MO, state=None)
        reporter.add_many(mos)
        expired = sample("smsgw_reports_expired_total", account="acme", kind="RECEIPT")
        expired_mo = sample("smsgw_reports_expired_total", account="acme", kind="MO")
        await trio.sleep(71 * HOUR)  # nobody bound: everything waits
        assert reporter.pending_count("acme") == 12
        with capture_logs() as logs:
            late = await store_reports(store, 1, created_at=T0 + 71 * HOUR)
            reporter.add_many(late)
            await trio.sleep(2 * HOUR)  # the first 12 are now older than 72 h
            await wait_until(lambda: reporter.pending_count("acme") == 1)
        assert sample("smsgw_reports_expired_total", account="acme",
                      kind="RECEIPT") == expired + 10
        assert sample("smsgw_reports_expired_total", account="acme", kind="MO") == expired_mo + 2
        logged = {e["message_id"] for e in logs if e["event"] == "report.expired"}
        assert logged == {r.message_id for r in old + mos}
        with trio.fail_after(60):
            while await stored_ids(store) != [late[0].message_id]:
                await trio.sleep(0.1)
        queued = reporter._accounts["acme"]  # nothing of the expired ones stays in memory
        assert len(queued.ready) + len(queued.later) == reporter.in_memory("acme") == 1
        upstream = Upstream(lambda _pdu: 0)
        await bind(nursery, reporter, upstream)
        await wait_until(lambda: bool(upstream.received))
        await trio.sleep(1)
        assert upstream.received == [late[0].message_id]  # expired ones are never sent


async def test_a_bind_that_leaves_deliver_sm_unanswered_is_unbound_and_another_gets_them(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async with running_reporter(tmp_path / "gw.sqlite") as (store, reporter, nursery):
        before = sample("smsgw_upstream_unanswered_unbinds_total", account="acme")
        silent = Upstream(lambda _pdu: None)  # keeps the link alive, never answers
        silent_gw = await bind(nursery, reporter, silent, response_timeout=5.0)
        reports = await store_reports(store, 5)
        reporter.add_many(reports)
        await wait_until(lambda: len(silent.received) == 5)
        start = trio.current_time()
        await wait_until(lambda: silent_gw.closed)
        assert trio.current_time() - start <= 5.0 + 1.0 + 2.0  # timeout, sweeper, unbind
        assert sample("smsgw_upstream_unanswered_unbinds_total", account="acme") == before + 1
        good = Upstream(lambda _pdu: 0)
        await bind(nursery, reporter, good)
        await wait_until(lambda: len(good.received) >= 5)
        assert sorted(good.received) == sorted(r.message_id for r in reports)
        await wait_until(lambda: reporter.pending_count("acme") == 0)


async def test_a_refused_report_is_kept_and_sent_again(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async with running_reporter(tmp_path / "gw.sqlite") as (store, reporter, nursery):
        answers = iter([0x14, 0])  # ESME_RMSGQFUL once, then OK

        upstream = Upstream(lambda _pdu: next(answers))
        await bind(nursery, reporter, upstream)
        reports = await store_reports(store, 1)
        reporter.add_many(reports)
        await wait_until(lambda: len(upstream.received) == 2)
        assert upstream.received == [reports[0].message_id] * 2
        await wait_until(lambda: reporter.pending_count("acme") == 0)
        assert upstream.gateway_side is not None and not upstream.gateway_side.closed


@pytest.mark.parametrize("level, logged", [("info", True), ("warning", False)])
async def test_each_delivered_report_is_logged_at_info_also_once_the_logger_is_cached(
        level: str, logged: bool, tmp_path: Path, clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh proxy: the one cached here must not outlive the test.
    fresh = structlog.get_logger("gateway.reporter")
    monkeypatch.setattr(reporter_module, "log", fresh)
    monkeypatch.setattr(reporter_module, "_INFO", logs.LevelGate(fresh, logging.INFO))
    buffer = StringIO()
    logs.configure(level, file=buffer, cache=True)  # as the daemon configures it
    try:
        async with running_reporter(tmp_path / "gw.sqlite") as (store, reporter, nursery):
            reports = await store_reports(store, 3)
            reporter.add_many(reports)
            upstream = Upstream(lambda _pdu: 0)
            await bind(nursery, reporter, upstream)
            await wait_until(lambda: reporter.pending_count("acme") == 0)
    finally:
        structlog.reset_defaults()
    delivered = [line for line in buffer.getvalue().splitlines() if "report.delivered" in line]
    assert len(delivered) == (3 if logged else 0)
    assert all(r.message_id in "".join(delivered) for r in reports) is logged
