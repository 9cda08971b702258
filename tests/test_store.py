"""Rules the durable store (gateway.store) must keep: durability, group commit, atomicity,
isolation of a bad write, the queries the dispatcher relies on, survival of a SIGKILL,
private files, bounded admission, counted and quiet failures."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from gateway import store as store_module
from gateway import store_sqlite
from gateway.model import (
    Event,
    Message,
    Part,
    PartState,
    Report,
    ReportKind,
    State,
    new_message_id,
)
from gateway.store import (
    MESSAGE_COLUMNS,
    PART_COLUMNS,
    REPORT_COLUMNS,
    ConstraintError,
    IdempotencyRecord,
    SchemaError,
    Store,
    StoreBusy,
    StoreError,
)
from tests.conftest import StoreAt

REPO = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0


def make_message(account: str = "acme", **changes: object) -> Message:
    m = Message(
        id=new_message_id(), account=account, source_addr="ACME", source_ton=5, source_npi=0,
        dest_addr="33612345678", dest_ton=1, dest_npi=1, data_coding=8, esm_class=0x40,
        protocol_id=0, priority=1, registered_delivery=1, body=b"\x05\x00\x03\x01\x02\x01hi",
        created_at=T0, expires_at=T0 + 86400, not_before=T0, tlvs=b"\x14\x24\x00\x01x",
    )  # fmt: skip
    return dataclasses.replace(m, **changes)  # type: ignore[arg-type]


def make_report(message_id: str, account: str = "acme", **changes: object) -> Report:
    r = Report(
        account=account, kind=ReportKind.RECEIPT, message_id=message_id, source_addr="33612345678",
        source_ton=1, source_npi=1, dest_addr="ACME", dest_ton=5, dest_npi=0, data_coding=0,
        body=b"id:1 sub:001 dlvrd:001 stat:DELIVRD", created_at=T0 + 5, state=State.DELIVERED,
        extra={"operator": "20801"},
    )  # fmt: skip
    return dataclasses.replace(r, **changes)  # type: ignore[arg-type]


def test_columns_follow_the_model_fields() -> None:
    assert tuple(f.name for f in dataclasses.fields(Message)) == MESSAGE_COLUMNS
    assert tuple(f.name for f in dataclasses.fields(Part)) == PART_COLUMNS
    assert tuple(f.name for f in dataclasses.fields(Report)) == REPORT_COLUMNS


async def test_added_message_is_readable_at_once_and_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "gw.sqlite"  # parent dirs are created
    m = make_message(state=State.SCHEDULED, done_at=None, connector=None)
    async with Store.open(path) as store:
        await store.add_messages([m])
        got = await store.get_message(m.id)
        assert got == m
        assert got is not None and type(got.state) is State
    async with Store.open(path) as store:
        assert await store.get_message(m.id) == m
        assert await store.get_message("nope") is None


async def test_concurrent_adds_share_transactions_and_all_are_stored(store_at: StoreAt) -> None:
    msgs = [make_message() for _ in range(200)]
    async with Store.open(store_at) as store:
        async with trio.open_nursery() as nursery:
            for m in msgs:
                nursery.start_soon(store.add_messages, [m])
        assert store.commits < len(msgs) // 2
        for m in msgs:
            assert await store.get_message(m.id) == m
        assert (await store.stats())["QUEUED"] == 200


async def test_batch_max_bounds_a_transaction_but_never_splits_a_call(store_at: StoreAt) -> None:
    async with Store.open(store_at, batch_max=10) as store:
        big = [make_message() for _ in range(25)]
        small = [[make_message()] for _ in range(30)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.add_messages, big)
            for one in small:
                nursery.start_soon(store.add_messages, one)
        assert store.commits >= 4  # 25 alone, then 30 singles in batches of <= 10
        assert len(await store.unfinished_messages()) == 55


@pytest.mark.parametrize("one_call", [True, False], ids=["one-thread-call", "public-api"])
async def test_save_message_is_atomic_and_sets_report_ids(
        store_at: StoreAt, monkeypatch: pytest.MonkeyPatch, one_call: bool) -> None:
    # Both ways of running a transaction: one function on aiosqlite's thread, or statement
    # by statement through the public API (used if aiosqlite ever drops _execute).
    monkeypatch.setattr(store_sqlite, "_ONE_CALL", one_call)
    async with Store.open(store_at) as store:
        m = make_message()
        await store.add_messages([m])
        m.state = State.DELIVERED
        m.attempts = 2
        m.done_at = T0 + 10
        m.parts_total = 2
        m.connector = "orange"
        m.channel = "rcs"
        m.error = 0x45
        parts = [
            Part(m.id, 1, "orange", smsc_id="abc1", state=PartState.DELIVERED,
                 submitted_at=T0 + 1, done_at=T0 + 9),
            Part(m.id, 2, "orange", smsc_id="abc2", state=PartState.DELIVERED,
                 submitted_at=T0 + 1, done_at=T0 + 10),
        ]  # fmt: skip
        reports = [make_report(m.id), make_report(m.id, extra={})]
        await store.save_message(m, parts, reports)
        assert all(r.id is not None for r in reports)
        assert reports[0].id != reports[1].id
        assert await store.get_message(m.id) == m
        assert await store.get_parts(m.id) == parts
        assert await store.pending_reports("acme") == reports
        assert await store.accounts_with_pending_reports() == ["acme"]

        # A save that breaks a constraint writes none of its parts or reports.
        bad = make_report(m.id, id=reports[0].id)  # that id is taken
        m.state = State.UNDELIVERABLE
        with pytest.raises(ConstraintError):
            await store.save_message(m, [dataclasses.replace(parts[0], error=9)], [bad])
        got = await store.get_message(m.id)
        assert got is not None and got.state == State.DELIVERED
        assert (await store.get_parts(m.id))[0].error == 0
        assert len(await store.pending_reports("acme")) == 2


async def test_save_message_only_changes_mutable_fields(store_at: StoreAt) -> None:
    async with Store.open(store_at) as store:
        m = make_message()
        await store.add_messages([m])
        changed = dataclasses.replace(m, body=b"other", dest_addr="1", state=State.IN_FLIGHT)
        await store.save_message(changed)
        got = await store.get_message(m.id)
        assert got == dataclasses.replace(m, state=State.IN_FLIGHT)


async def test_reports_for_webhooks_and_for_smpp_are_paged_and_counted_apart(
        store_at: StoreAt) -> None:
    async with Store.open(store_at) as store:
        smpp = [make_report(new_message_id()) for _ in range(2)]
        http = [make_report(new_message_id(), via="http", extra={"event_id": "e1"})]
        await store.add_reports([smpp[0], http[0], smpp[1]])
        assert await store.pending_reports("acme") == smpp
        assert await store.pending_reports("acme", via="http") == http
        assert await store.pending_report_counts("smpp") == ({"acme": 2}, smpp[1].id)
        assert await store.pending_report_counts("http") == ({"acme": 1}, http[0].id)
        assert await store.pending_report_counts() == ({"acme": 3}, smpp[1].id)
    async with Store.open(store_at) as store:  # as stored
        assert await store.pending_reports("acme", via="http") == http


async def test_acked_reports_leave_pending_reports(store_at: StoreAt) -> None:
    async with Store.open(store_at) as store:
        mo = make_report(new_message_id(), kind=ReportKind.MO, state=None, account="beta")
        receipts = [make_report(new_message_id()) for _ in range(3)]
        await store.add_reports(receipts)
        await store.add_reports([mo])
        assert await store.pending_reports("beta") == [mo]
        assert await store.pending_reports("acme", limit=2) == receipts[:2]
        assert await store.accounts_with_pending_reports() == ["acme", "beta"]
        assert (await store.stats())["pending_reports"] == 4
        await store.ack_reports([r.id for r in receipts[:2] if r.id is not None])
        assert await store.pending_reports("acme") == receipts[2:]
        await store.ack_reports([receipts[2].id or 0, mo.id or 0])
        assert await store.accounts_with_pending_reports() == []
    # Ids are never reused, even after the newest report was acked and the file reopened.
    async with Store.open(store_at) as store:
        again = make_report(new_message_id())
        await store.add_reports([again])
        assert again.id is not None and mo.id is not None and again.id > mo.id


async def test_one_bad_call_fails_alone_and_the_others_commit(store_at: StoreAt) -> None:
    async with Store.open(store_at, batch_linger=0.05) as store:
        existing = make_message()
        await store.add_messages([existing])
        good = [make_message() for _ in range(50)]
        fresh_in_bad_call = make_message()
        failures: list[BaseException] = []

        async def bad() -> None:
            try:
                await store.add_messages([fresh_in_bad_call, dataclasses.replace(existing)])
            except ConstraintError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for i, m in enumerate(good):
                nursery.start_soon(store.add_messages, [m])
                if i == 25:
                    nursery.start_soon(bad)
        assert store.failed_batches == 1  # they did share one transaction
        assert len(failures) == 1
        for m in good:
            assert await store.get_message(m.id) == m
        assert await store.get_message(fresh_in_bad_call.id) is None  # no half-written call
        assert await store.get_message(existing.id) == existing


async def test_find_part_matches_any_variant_of_the_smsc_id(store_at: StoreAt) -> None:
    async with Store.open(store_at) as store:
        m = make_message()
        p = Part(m.id, 1, "sfr", smsc_id="0A1B", state=PartState.SUBMITTED, submitted_at=T0)
        other = Part(new_message_id(), 1, "orange", smsc_id="0A1B")
        await store.save_message(m, [p])
        await store.save_parts([other, Part(new_message_id(), 1, "sfr")])
        assert await store.find_part("sfr", ["0a1b", "2587", "0A1B"]) == p
        assert await store.find_part("orange", ["0A1B"]) == other
        assert await store.find_part("sfr", ["0a1b"]) is None
        assert await store.find_part("bouygues", ["0A1B"]) is None
        assert await store.find_part("sfr", []) is None


async def test_unfinished_and_expired_exclude_final_states(store_at: StoreAt) -> None:
    async with Store.open(store_at) as store:
        by_state = {s: make_message(state=s, expires_at=T0 + 100) for s in State}
        late = make_message(expires_at=T0 + 500)
        await store.add_messages([*by_state.values(), late])
        unfinished = {m.id for m in await store.unfinished_messages()}
        assert unfinished == {m.id for s, m in by_state.items() if not s.final} | {late.id}
        expired = await store.expired_candidates(T0 + 100)
        assert {m.id for m in expired} == {m.id for s, m in by_state.items() if not s.final}
        assert len(await store.expired_candidates(T0 + 1000, limit=2)) == 2
        assert (await store.expired_candidates(T0 + 1000))[-1] == late
        assert await store.expired_candidates(T0 + 99) == []


async def test_purge_deletes_only_final_messages_done_before_the_cutoff(store_at: StoreAt) -> None:
    async with Store.open(store_at) as store:
        old = make_message(state=State.DELIVERED, done_at=T0 + 10)
        recent = make_message(state=State.EXPIRED, done_at=T0 + 1000)
        open_ = make_message(state=State.IN_FLIGHT)
        await store.add_messages([old, recent, open_])
        for m in (old, recent, open_):
            await store.save_parts([Part(m.id, 1, "sfr", smsc_id=m.id)])
        await store.record_orphan_receipt("sfr", "ZZ", b"id:ZZ stat:DELIVRD", T0)
        assert await store.purge(T0 + 500) == 1
        assert await store.get_message(old.id) is None
        assert await store.get_parts(old.id) == []
        assert await store.get_message(recent.id) == recent
        assert await store.get_message(open_.id) == open_
        assert len(await store.get_parts(open_.id)) == 1
        assert await store.purge(T0 + 500) == 0
        stats = await store.stats()
        assert stats["DELIVERED"] == 0 and stats["EXPIRED"] == 1 and stats["IN_FLIGHT"] == 1


async def test_history_events_keep_their_order_commit_with_the_message_and_purge_with_it(
    store_at: StoreAt,
) -> None:
    async with Store.open(store_at) as store:
        m = make_message(state=State.QUEUED)
        other = make_message(state=State.QUEUED)
        await store.add_messages([m, other], events=[
            Event(m.id, T0, "accepted", None, State.QUEUED, {"interface": "smpp"}),
            Event(other.id, T0, "accepted", None, State.QUEUED)])
        m.state, m.done_at = State.DELIVERED, T0 + 10
        await store.save_message(m, events=[
            Event(m.id, T0 + 1, "attempt", detail={"connector": "sfr", "channel": "sms"}),
            Event(m.id, T0 + 10, "final", State.QUEUED, State.DELIVERED, {"stat": "DELIVRD"})])
        history = await store.events_of(m.id)
        assert [(e.kind, e.from_state, e.to_state) for e in history] == [
            ("accepted", None, State.QUEUED), ("attempt", None, None),
            ("final", State.QUEUED, State.DELIVERED)]
        assert history[1].detail == {"connector": "sfr", "channel": "sms"}
        assert type(history[2].to_state) is State and history[0].id is not None
        assert await store.purge(T0 + 500) == 1
        assert await store.events_of(m.id) == []
        assert [e.kind for e in await store.events_of(other.id)] == ["accepted"]


async def test_a_version_1_store_is_migrated_and_keeps_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite"
    conn = sqlite3.connect(path)  # a store as the previous release left it
    conn.executescript(store_sqlite.MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    m = make_message()
    v1_columns = store_module.MESSAGE_COLUMNS[:26]
    row = dataclasses.astuple(m)[:26]
    conn.execute(f"INSERT INTO messages ({', '.join(v1_columns)}) VALUES "
                 f"({', '.join('?' * 26)})", row)
    conn.commit()
    conn.close()
    async with Store.open(path) as store:
        got = await store.get_message(m.id)
        assert got == m and got.origin == "smpp" and got.traffic == "alert"
        await store.add_events([Event(m.id, T0, "accepted")])
        assert len(await store.events_of(m.id)) == 1


async def test_purge_works_through_many_chunks(
    store_at: StoreAt, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_PURGE_CHUNK", 3)
    async with Store.open(store_at) as store:
        done = [make_message(state=State.REJECTED, done_at=T0) for _ in range(10)]
        await store.add_messages(done)
        await store.save_parts([Part(m.id, 1, "sfr") for m in done])
        for i in range(7):
            await store.record_orphan_receipt("sfr", str(i), b"", T0)
        assert await store.purge(T0 + 1) == 10
        assert (await store.stats())["REJECTED"] == 0
        for m in done:
            assert await store.get_parts(m.id) == []


async def test_account_cannot_read_another_accounts_message(store_at: StoreAt) -> None:
    async with Store.open(store_at) as store:
        m = make_message(account="acme")
        await store.add_messages([m])
        assert await store.get_message_for_account("acme", m.id) == m
        assert await store.get_message_for_account("evil", m.id) is None


async def test_stats_count_messages_per_state_through_transitions(store_at: StoreAt) -> None:
    async with Store.open(store_at) as store:
        m = make_message(state=State.ACCEPTED)
        await store.add_messages([m, make_message()])
        m.state = State.DELIVERED
        await store.save_message(m)
        await store.save_message(m)  # no transition: counted once
        stats = await store.stats()
        assert stats["ACCEPTED"] == 0 and stats["DELIVERED"] == 1 and stats["QUEUED"] == 1
        assert set(stats) == {s.value for s in State} | {"pending_reports"}


async def test_cancelled_writer_caller_still_gets_its_write_committed(store_at: StoreAt) -> None:
    async with Store.open(store_at, batch_linger=0.05) as store:
        m = make_message()
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.add_messages([m])  # queued, then cancelled while waiting
        assert scope.cancelled_caught
    async with Store.open(store_at) as store:
        assert await store.get_message(m.id) == m


async def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database, just some bytes" * 100)
    with pytest.raises(StoreError):
        async with Store.open(junk):
            pass
    path = tmp_path / "gw.sqlite"
    async with Store.open(path):
        pass
    with path.open("r+b") as f:  # a newer gateway's schema: user_version in the file header
        f.seek(60)
        f.write((99).to_bytes(4, "big"))
    with pytest.raises(SchemaError, match="99"):
        async with Store.open(path):
            pass


async def test_errors_inside_the_store_block_come_out_unwrapped(store_at: StoreAt) -> None:
    with pytest.raises(KeyError):
        async with Store.open(store_at):
            raise KeyError("x")


async def test_a_closed_store_refuses_reads_and_writes(store_at: StoreAt) -> None:
    async with Store.open(store_at) as store:
        pass
    with pytest.raises(StoreError):
        await store.add_messages([make_message()])
    with pytest.raises(StoreError):
        await store.get_message("x")


async def test_two_stores_can_be_open_at_once(tmp_path: Path) -> None:
    m1, m2 = make_message(), make_message()
    async with Store.open(tmp_path / "a.sqlite") as a, Store.open(tmp_path / "b.sqlite") as b:
        await a.add_messages([m1])
        await b.add_messages([m2])
        assert await a.get_message(m2.id) is None
        assert await b.get_message(m2.id) == m2


async def test_a_second_process_cannot_open_the_same_file(store_at: StoreAt) -> None:
    async with Store.open(store_at):
        proc = await trio.run_process(
            [sys.executable, "-c", textwrap.dedent(f"""
                import trio
                from gateway.store import Store, StoreError
                async def main():
                    try:
                        async with Store.open({str(store_at)!r}):
                            pass
                    except StoreError:
                        raise SystemExit(3)
                trio.run(main)
            """)],
            cwd=REPO, check=False,
        )  # fmt: skip
        assert proc.returncode == 3


_KILLED_CHILD = """
import os, signal, sys, trio
sys.path.insert(0, sys.argv[2])
from tests.test_store import make_message
from gateway.store import Store

async def main() -> None:
    acked = 0
    async with Store.open(sys.argv[1]) as store:
        async def adder() -> None:
            nonlocal acked
            while True:
                m = make_message()
                await store.add_messages([m])
                os.write(1, ("acked " + m.id + "\\n").encode())
                acked += 1
                if acked == 300:
                    os.kill(os.getpid(), signal.SIGKILL)  # others are still in flight
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(adder)

trio.run(main)
"""


async def test_sigkill_loses_no_acknowledged_message(store_at: StoreAt) -> None:
    path = store_at
    proc = await trio.run_process(
        [sys.executable, "-c", _KILLED_CHILD, str(path), str(REPO)],
        capture_stdout=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL
    acked = [line.split()[1] for line in proc.stdout.decode().splitlines()
             if line.startswith("acked ")]
    assert len(acked) >= 300
    if isinstance(path, Path):
        assert Path(f"{path}-wal").exists()  # killed: no clean checkpoint on close
    async with Store.open(path) as store:
        for message_id in acked:
            assert await store.get_message(message_id) is not None, message_id


def test_module_is_the_only_sqlite_user() -> None:
    """DESIGN.md: one module owns the store; nothing else imports aiosqlite or sqlite3."""
    out = subprocess.run(
        ["grep", "-rlE", "--include=*.py", r"^\s*(import|from)\s+(aiosqlite|sqlite3)\b",
         "gateway", "routing", "smpp", "rules"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.stdout.split() == [os.path.join("gateway", "store_sqlite.py")]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def writer_pragma(store: Store, sql: str) -> list[tuple[object, ...]]:
    """Run a PRAGMA on the store's writer connection (to inject a fault)."""
    db = store._db
    assert isinstance(db, store_sqlite.SqliteBackend)
    return await db._loop.run_aio_coroutine(store_sqlite._aio_fetchall(db._writer, sql, ()))


async def test_synchronous_full_is_the_default_and_normal_must_be_asked_for(
        tmp_path: Path) -> None:
    async with Store.open(tmp_path / "a.sqlite") as store:
        assert await store.durability() == ("wal", "full")
    async with Store.open(tmp_path / "b.sqlite", synchronous="normal") as store:
        assert await store.durability() == ("wal", "normal")
    with pytest.raises(ValueError, match="synchronous"):
        async with Store.open(tmp_path / "c.sqlite", synchronous="off"):  # type: ignore[arg-type]
            pass


async def test_database_wal_and_shm_are_created_private_in_private_directories(
        tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # the usual umask: files 0644 and directories 0755 otherwise
    try:
        path = tmp_path / "state" / "smsgw" / "gw.sqlite"
        async with Store.open(path, synchronous="normal") as store:
            await store.add_messages([make_message()])
            for suffix in ("", "-wal", "-shm", ".lock"):
                assert Path(f"{path}{suffix}").stat().st_mode & 0o777 == 0o600, suffix
        for directory in (path.parent, path.parent.parent):
            assert directory.stat().st_mode & 0o777 == 0o700, directory
        path.chmod(0o644)  # an operator's choice is left alone, but reported
        with capture_logs() as logs:
            async with Store.open(path, synchronous="normal"):
                pass
        assert path.stat().st_mode & 0o777 == 0o644
        assert [e["mode"] for e in logs if e["event"] == "store.file_mode"] == ["0644"]
    finally:
        os.umask(old_umask)


async def test_new_messages_get_store_busy_while_the_write_queue_is_over_its_bound(
        store_at: StoreAt) -> None:
    async with Store.open(store_at, queue_max=10, synchronous="normal") as store:
        m = make_message()
        await store.add_messages([m])
        busy = sample("smsgw_store_busy_total", reason="queue")
        # Internal writes (a dispatcher's rounds) are never refused, even beyond the bound.
        pending = [store.save_messages_nowait([(dataclasses.replace(m, attempts=i), [], [])],
                                              existing=True) for i in range(15)]
        assert store.queued_rows == 15
        refused = make_message()
        with capture_logs() as logs:
            for _ in range(3):
                with pytest.raises(StoreBusy, match="queue_max 10"):
                    await store.add_messages([refused])
            assert sample("smsgw_store_busy_total", reason="queue") == busy + 3
            for write in pending:
                await write.wait()
            assert store.queued_rows == 0
            assert await store.get_message(refused.id) is None  # refused: nothing written
            later = make_message()
            await store.add_messages([later])  # the queue drained: admitted again
        assert [(e["event"], e["count"]) for e in logs] == [("store.busy", 1),
                                                            ("store.admitting", 2)]
        assert await store.get_message(later.id) == later
        got = await store.get_message(m.id)
        assert got is not None and got.attempts == 14


async def test_new_messages_get_store_busy_at_the_unfinished_cap_until_one_finishes(
        store_at: StoreAt) -> None:
    path = store_at
    async with Store.open(path, unfinished_max=3, synchronous="normal") as store:
        first = make_message()
        await store.add_messages([first, make_message(state=State.DELIVERED, done_at=T0)])
        assert store.unfinished == 1
        # Concurrent admissions count as soon as they are queued: 2 of 4 fit.
        outcomes: list[str] = []

        async def submit() -> None:
            try:
                await store.add_messages([make_message()])
                outcomes.append("ok")
            except StoreBusy:
                outcomes.append("busy")

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(submit)
        assert sorted(outcomes) == ["busy", "busy", "ok", "ok"]
        assert store.unfinished == 3
        first.state, first.done_at = State.DELIVERED, T0 + 1
        await store.save_message(first)  # a final state frees a place
        assert store.unfinished == 2
        await store.add_messages([make_message()])
        with pytest.raises(StoreBusy, match="unfinished_max 3"):
            await store.add_messages([make_message()])
    async with Store.open(path, unfinished_max=3, synchronous="normal") as store:
        assert store.unfinished == 3  # counted from the file when reopened
        with pytest.raises(StoreBusy):
            await store.add_messages([make_message()])


async def test_store_failures_are_counted_and_logged_once_per_interval_without_traceback(
        tmp_path: Path) -> None:
    async with Store.open(tmp_path / "gw.sqlite", synchronous="normal") as store:
        await store.add_messages([make_message()])
        pages = (await writer_pragma(store, "PRAGMA page_count"))[0][0]
        await writer_pragma(store, f"PRAGMA max_page_count = {pages}")  # the disk is full
        before = sample("smsgw_store_failures_total", operation="write")
        with capture_logs() as logs:
            for _ in range(40):
                with pytest.raises(StoreError, match="full"):
                    await store.add_messages([make_message(body=b"x" * 8000)])
            await writer_pragma(store, "PRAGMA max_page_count = 1000000")  # space again
            await store.add_messages([make_message()])
        assert sample("smsgw_store_failures_total", operation="write") == before + 40
        lines = [e for e in logs if e["event"].startswith("store.")]
        assert [e["event"] for e in lines] == ["store.failed", "store.recovered"]
        assert lines[0]["count"] == 1 and "full" in lines[0]["detail"]
        assert lines[1]["count"] == 39  # the ones not logged one by one
        assert not any("exc_info" in e for e in logs)


async def test_pending_reports_page_by_id_and_are_counted_per_account(store_at: StoreAt) -> None:
    async with Store.open(store_at, synchronous="normal") as store:
        reports = [make_report(new_message_id()) for _ in range(5)]
        await store.add_reports(reports)
        await store.add_reports([make_report(new_message_id(), account="beta")])
        first = await store.pending_reports("acme", limit=2)
        assert first == reports[:2]
        assert first[-1].id is not None
        rest = await store.pending_reports("acme", limit=10, after=first[-1].id)
        assert rest == reports[2:]
        beta = (await store.pending_reports("beta"))[0].id
        assert await store.pending_report_counts() == ({"acme": 5, "beta": 1}, beta)


async def test_an_idempotency_key_commits_with_its_messages_once_and_is_purged_by_age(
        store_at: StoreAt, monkeypatch: pytest.MonkeyPatch) -> None:
    path = store_at
    first, second = make_message(), make_message()
    record = IdempotencyRecord("acme", "key-1", "f" * 64, '{"messages":[]}', T0)
    async with Store.open(path) as store:
        await store.add_messages([first], idempotency=record)
        with pytest.raises(ConstraintError):  # the same account and key: nothing written
            await store.add_messages([second], idempotency=record)
        assert await store.get_message(second.id) is None
        await store.add_messages([second], idempotency=dataclasses.replace(record,
                                                                           account="other"))
    async with Store.open(path) as store:  # durable
        assert await store.idempotency_record("acme", "key-1") == record
        assert await store.idempotency_record("acme", "key-2") is None
        assert await store.purge_idempotency(T0) == 0  # not older than the cutoff
        monkeypatch.setattr(store_module, "_PURGE_CHUNK", 1)  # one key per transaction
        assert await store.purge_idempotency(T0 + 1) == 2
        assert await store.idempotency_record("acme", "key-1") is None
        assert await store.get_message(first.id) is not None  # the messages stay


async def test_fingerprints_of_the_duplicates_window_are_read_back_by_time(
        store_at: StoreAt) -> None:
    old = make_message(created_at=T0 - 700, fingerprint=b"\x01" * 16)
    recent = make_message(created_at=T0 - 10, fingerprint=b"\x02" * 16)
    plain = make_message(created_at=T0 - 5)  # the duplicates rule did not run
    async with Store.open(store_at) as store:
        await store.add_messages([old, recent, plain])
        assert await store.fingerprints(T0 - 600) == [(b"\x02" * 16, T0 - 10, recent.id)]
        got = await store.get_message(recent.id)
        assert got is not None and got.fingerprint == b"\x02" * 16
        if isinstance(store_at, Path):
            plan = await store._read(
                "EXPLAIN QUERY PLAN SELECT fingerprint, created_at, id FROM messages"
                " WHERE fingerprint IS NOT NULL AND created_at >= ? ORDER BY created_at", (T0,))
        else:  # a table this small is scanned whatever the indexes: the index must exist
            plan = await store._read("SELECT indexdef FROM pg_indexes WHERE tablename = ?",
                                     ("messages",))
        assert any("messages_fingerprint" in str(row) for row in plan)
