"""Store rules for cancel and replace: a store of the previous schema gets the CANCELLED state
(its count, and the partial indexes of unfinished and finished messages rebuilt so that SQLite
still uses them), a cancelled message is final everywhere, and a replacement changes the text
and times of a message and drops the parts cut from its old text, in one commit."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from gateway import store as store_module
from gateway import store_sql, store_sqlite
from gateway.model import Event, Part, State
from gateway.store import Store
from tests.conftest import StoreAt
from tests.test_store import T0, make_message

V4 = 4  # the schema before CANCELLED


def _previous_release(path: Path) -> None:
    """A store as the release before CANCELLED left it: its four migrations, with the final
    list and state counts that release wrote."""
    old_final = store_sql.FINAL_SQL.replace(f"'{State.CANCELLED.value}', ", "")
    assert old_final != store_sql.FINAL_SQL
    conn = sqlite3.connect(path)
    for script in store_sqlite.MIGRATIONS[:V4]:
        script = script.replace(store_sql.FINAL_SQL, old_final)
        script = script.replace(f", ('{State.CANCELLED.value}', 0)", "")
        conn.executescript(script)
    conn.execute(f"PRAGMA user_version = {V4}")
    # no service_type yet, nor the columns that came after it
    columns = store_module.MESSAGE_COLUMNS[:store_module.MESSAGE_COLUMNS.index("service_type")]
    for m in (make_message(), make_message(state=State.DELIVERED, done_at=T0)):
        conn.execute(f"INSERT INTO messages ({', '.join(columns)}) VALUES "
                     f"({', '.join('?' * len(columns))})",
                     dataclasses.astuple(m)[:len(columns)])
    conn.commit()
    assert conn.execute("SELECT count(*) FROM state_counts WHERE state = 'CANCELLED'"
                        ).fetchone()[0] == 0
    conn.close()


def _plan(path: Path, where: str) -> str:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(f"EXPLAIN QUERY PLAN SELECT id FROM messages WHERE {where}")
        return " ".join(str(r[-1]) for r in rows)
    finally:
        conn.close()


async def test_a_previous_store_gets_the_cancelled_state_and_keeps_using_its_indexes(
        tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite"
    _previous_release(path)
    async with Store.open(path) as store:
        stats = await store.stats()
        assert stats["CANCELLED"] == 0 and stats["QUEUED"] == 1 and stats["DELIVERED"] == 1
        [open_msg] = await store.unfinished_messages()
        assert open_msg.service_type == ""
        open_msg.state, open_msg.done_at = State.CANCELLED, T0 + 5
        await store.save_message(open_msg, events=[
            Event(open_msg.id, T0 + 5, "cancelled", State.QUEUED, State.CANCELLED)])
        assert (await store.stats())["CANCELLED"] == 1
        assert await store.unfinished_messages() == []
        assert await store.unfinished_page() == []  # INDEXED BY messages_open still plans
    # The queries' WHERE (with CANCELLED) matches the rebuilt indexes': SQLite uses them.
    assert "messages_open" in _plan(path, store_sql.OPEN_SQL + " AND expires_at < 1e12")
    assert "messages_done" in _plan(path, store_sql.DONE_SQL + " AND done_at < 1e12")
    async with Store.open(path) as store:  # and a cancelled message is final for good
        assert await store.unfinished_messages() == []
        assert await store.purge(T0 + 10) == 2
        assert (await store.stats())["CANCELLED"] == 0


async def test_a_new_store_counts_cancelled_and_keeps_the_service_type(store_at: StoreAt) -> None:
    async with Store.open(store_at) as store:
        m = make_message(service_type="CMT")
        await store.add_messages([m])
        got = await store.get_message(m.id)
        assert got is not None and got.service_type == "CMT"
        assert (await store.stats())["CANCELLED"] == 0


async def test_a_replacement_changes_text_times_and_receipt_request_and_drops_old_parts(
        store_at: StoreAt) -> None:
    async with Store.open(store_at) as store:
        m = make_message(state=State.QUEUED, attempts=1, parts_total=2)
        other = make_message()
        await store.add_messages([m, other])
        await store.save_parts([Part(m.id, 1, "sfr"), Part(m.id, 2, "sfr"),
                                Part(other.id, 1, "sfr")])
        m.body, m.registered_delivery = b"new text", 0
        m.not_before, m.expires_at, m.next_attempt_at = T0 + 60, T0 + 3600, T0 + 60
        m.state, m.parts_total = State.SCHEDULED, 0
        await store.replace_message_nowait(
            m, [Event(m.id, T0 + 1, "replaced", State.QUEUED, State.SCHEDULED)]).wait()
        got = await store.get_message(m.id)
        assert got == m
        assert await store.get_parts(m.id) == []
        assert len(await store.get_parts(other.id)) == 1  # another message's parts stay
        assert [e.kind for e in await store.events_of(m.id)] == ["replaced"]
        assert (await store.stats())["SCHEDULED"] == 1
