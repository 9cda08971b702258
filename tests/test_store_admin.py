"""Rules of the store queries behind the admin CLI and retention: retention keeps counts
(cdr_daily) and nothing personal, erasure removes one person's number everywhere, the queue
and CDR reads page with bounded windows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway import store as store_module
from gateway.model import Event, Part, PartState, State
from gateway.store import Store
from tests.conftest import StoreAt
from tests.test_store import T0, make_message, make_report

PERSON = "33699887766"
DAY0 = "2023-11-14"  # the UTC day of T0


async def rows_naming(path: StoreAt, number: str) -> list[str]:
    """Every (table, column) whose stored value contains the number, read apart from the store
    (what a forensic look at the database would find, short of free pages)."""
    if isinstance(path, str):
        return pg_rows_naming(path, number)
    import sqlite3

    found = []
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            for column in columns:
                hits = conn.execute(
                    f"SELECT count(*) FROM {table} WHERE instr(CAST({column} AS BLOB), ?) > 0",
                    (number.encode(),)).fetchone()[0]
                if hits:
                    found.append(f"{table}.{column}")
    finally:
        conn.close()
    return found


async def test_retention_purge_keeps_daily_counts_without_numbers_or_text(
        store_at: StoreAt) -> None:
    async with Store.open(store_at) as store:
        done = [make_message(state=State.DELIVERED, done_at=T0 + 10, connector="sfr",
                             parts_total=2, dest_addr=PERSON) for _ in range(3)]
        failed = make_message(state=State.UNDELIVERABLE, done_at=T0 + 10, connector="sfr",
                              parts_total=1, dest_addr=PERSON)
        kept = make_message(state=State.QUEUED, dest_addr=PERSON)
        await store.add_messages([*done, failed, kept])
        assert await store.purge(T0 + 500) == 4
        totals = await store.daily_totals(DAY0, "2023-11-15")
        assert totals == [(DAY0, "acme", "sfr", "sms", "DELIVERED", 3, 6),
                          (DAY0, "acme", "sfr", "sms", "UNDELIVERABLE", 1, 1)]
        assert await store.purge(T0 + 500) == 0  # purging again counts nothing twice
        assert await store.daily_totals(DAY0, "2023-11-15") == totals
    # Only the unfinished message still holds the number.
    async with Store.open(store_at) as store:
        assert [m.id for _, m in await store.unfinished_page()] == [kept.id]
    assert await rows_naming(store_at, PERSON) == ["messages.dest_addr"]


def pg_rows_naming(dsn: str, number: str) -> list[str]:
    import psycopg

    found = []
    with psycopg.connect(dsn) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        ).fetchall()
        for table, column, data_type in columns:
            value = f"{column}" if data_type == "bytea" else f"convert_to({column}::text, 'UTF8')"
            row = conn.execute(f"SELECT count(*) FROM {table} WHERE position(%s IN {value}) > 0",
                               (number.encode(),)).fetchone()
            if row and row[0]:
                found.append(f"{table}.{column}")
    return found


async def test_erase_removes_the_number_everywhere_and_says_what_it_did(
    store_at: StoreAt, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_SCAN_WINDOW", 3)  # many windows, many chunks
    monkeypatch.setattr(store_module, "_PURGE_CHUNK", 2)
    path = store_at
    async with Store.open(path) as store:
        to_person = [make_message(state=State.DELIVERED, done_at=T0 + 1, dest_addr=PERSON,
                                  connector="sfr", parts_total=1) for _ in range(5)]
        from_person = make_message(state=State.REJECTED, done_at=T0 + 1,
                                   source_addr="+" + PERSON, source_ton=1)
        in_flight = make_message(state=State.IN_FLIGHT, dest_addr=PERSON)
        others = [make_message(state=State.DELIVERED, done_at=T0 + 1) for _ in range(4)]
        await store.add_messages([*to_person, from_person, in_flight, *others], events=[
            Event(m.id, T0, "accepted", None, State.QUEUED) for m in to_person] + [
            Event(others[0].id, T0, "rule", detail={"opt_out": PERSON, "n": 1})])
        await store.save_parts([Part(m.id, 1, "sfr", smsc_id=f"op{i}",
                                     state=PartState.DELIVERED)
                                for i, m in enumerate([*to_person, *others])])
        await store.add_reports([make_report(to_person[0].id, source_addr=PERSON),
                                 make_report(others[0].id)])
        await store.record_orphan_receipt("sfr", "x1", f"id:x1 from {PERSON}".encode(), T0)
        await store.record_orphan_receipt("sfr", "x2", b"id:x2 stat:DELIVRD", T0)

        result = await store.erase_addresses([PERSON, "+" + PERSON])

        assert (result.messages, result.parts, result.events) == (6, 5, 5)
        assert (result.reports, result.orphan_receipts, result.events_redacted) == (1, 1, 1)
        assert result.unfinished == [in_flight.id]
        assert result.wal_cleared == isinstance(path, Path)  # PostgreSQL: autovacuum's job
        for m in [*to_person, from_person]:
            assert await store.get_message(m.id) is None
        for m in others:
            assert await store.get_message(m.id) == m
        [rule] = await store.events_of(others[0].id)
        assert rule.detail == {"opt_out": "<erased>", "n": 1}
        assert len(await store.pending_reports("acme")) == 1
        totals = await store.daily_totals(DAY0, "2023-11-15")
        assert (DAY0, "acme", "sfr", "sms", "DELIVERED", 5, 5) in totals
    assert await rows_naming(path, PERSON) == ["messages.dest_addr"]  # the one in flight
    if isinstance(path, Path):
        raw = path.read_bytes()  # deleted rows are zeroed, not left in free space
        assert raw.count(PERSON.encode()) == 1  # the one in flight


async def test_queue_pages_the_unfinished_messages_with_filters(store_at: StoreAt) -> None:
    async with Store.open(store_at) as store:
        queued = [make_message(state=State.QUEUED, expires_at=T0 + i, created_at=T0 - i)
                  for i in range(7)]
        parked = make_message(account="other", state=State.QUEUED, connector="orange")
        flying = make_message(state=State.IN_FLIGHT, connector="sfr")
        final = make_message(state=State.DELIVERED, done_at=T0)
        await store.add_messages([*queued, parked, flying, final])
        seen: list[str] = []
        after = None
        while True:
            page = await store.unfinished_page(after=after, limit=3)
            if not page:
                break
            assert len(page) <= 3
            seen += [m.id for _, m in page]
            after = page[-1][0]
        assert sorted(seen) == sorted(m.id for m in [*queued, parked, flying])
        assert seen[:7] == [m.id for m in queued]  # soonest to expire first

        async def ids(**filters: object) -> set[str]:
            return {m.id for _, m in await store.unfinished_page(**filters)}  # type: ignore

        assert await ids(account="other") == {parked.id}
        assert await ids(state=State.IN_FLIGHT) == {flying.id}
        assert await ids(connector="orange") == {parked.id}
        assert await ids(created_before=T0 - 4.5) == {queued[5].id, queued[6].id}


async def test_cdr_export_pages_in_bounded_windows_and_covers_the_period(
    store_at: StoreAt, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_SCAN_WINDOW", 100)
    async with Store.open(store_at) as store:
        msgs = [make_message(created_at=T0 + i, state=State.DELIVERED, done_at=T0 + i + 1,
                             connector="sfr", parts_total=2) for i in range(1000)]
        await store.add_messages(msgs)
        await store.save_parts([Part(m.id, n, "sfr", smsc_id=f"{m.id[:6]}-{n}")
                                for m in msgs[:10] for n in (2, 1)])
        records: list[dict[str, object]] = []
        after, calls = None, 0
        while True:
            page = await store.cdr_page(T0 + 100, T0 + 900, after)
            calls += 1
            assert len(page.records) <= 100
            records += page.records
            if page.next is None:
                break
            assert page.start <= page.next <= page.end
            after = page.next
        assert calls == 10
        assert [r["id"] for r in records] == [m.id for m in msgs[100:900]]
        first = (await store.cdr_page(T0, T0 + 1)).records[0]
        assert first["operator_ids"] == f"{msgs[0].id[:6]}-1 {msgs[0].id[:6]}-2"
        assert dataclasses.asdict(msgs[0])["dest_addr"] == first["dest_addr"]
        assert first["state"] == "DELIVERED" and first["parts_total"] == 2
