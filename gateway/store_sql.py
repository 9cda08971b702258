"""What the store's backends share: the tables' columns, the write statements (one list, in
the order a group commit runs them), the errors, and the Backend protocol that SQLite
(gateway/store_sqlite.py) and PostgreSQL (gateway/store_pg.py) implement for gateway/store.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from gateway.model import FINAL_STATES

Row = tuple[Any, ...]
Committed = tuple[list[int], dict[str, int]]  # rowcount of each group, messages per state


class StoreError(Exception):
    """A write or read the store could not carry out; the message says why."""


class ConstraintError(StoreError):
    """A write broke a constraint (e.g. a message id that already exists). Nothing of it was
    written."""


class SchemaError(StoreError):
    """The database file has a schema this version does not know (newer, or foreign)."""


class StoreBusy(StoreError):
    """New messages refused for now, nothing written: the write queue is over its bound (the
    disk lags) or the unfinished messages have reached their cap. A temporary condition: the
    upstream should submit again later (ESME_RMSGQFUL)."""


class NodeFenced(StoreError):
    """This gateway node's work was taken over by another node (its database session was gone:
    the other node found its epoch lock free). Nothing it writes is committed any more; the
    process must stop (and start again as a new node)."""


class StoreUnavailable(StoreBusy):
    """The database could not be reached (a PostgreSQL server down or restarting, the
    connection lost): temporary, like StoreBusy; the store reconnects by itself at its next
    call. A write that fails so may still have been committed just before the connection
    went (nothing is acknowledged that was not committed; the reverse can happen)."""


# --------------------------------------------------------------------------- schema


MESSAGE_COLUMNS = (
    "id", "account", "source_addr", "source_ton", "source_npi", "dest_addr", "dest_ton",
    "dest_npi", "data_coding", "esm_class", "protocol_id", "priority", "registered_delivery",
    "body", "created_at", "expires_at", "not_before", "state", "attempts", "next_attempt_at",
    "error", "done_at", "parts_total", "channel", "connector", "tlvs", "origin", "traffic",
    "callback_url", "client_ref", "service_type", "number_type", "country",
    "fingerprint", "billing",
)  # fmt: skip
# What save_message may change on an existing row; everything else is fixed at intake.
MESSAGE_MUTABLE = (
    "state", "attempts", "next_attempt_at", "error", "done_at", "parts_total", "connector",
    "channel", "billing",
)  # fmt: skip
PART_COLUMNS = (
    "message_id", "part_no", "connector", "smsc_id", "state", "error", "submitted_at", "done_at",
)  # fmt: skip
# A receipt handed from the node whose bind it arrived on to the node working on its message.
INBOX_COLUMNS = (
    "id", "message_id", "part_no", "connector", "provider_id", "outcome", "word", "error",
    "raw", "received_at",
)  # fmt: skip
REPORT_COLUMNS = (
    "account", "kind", "message_id", "source_addr", "source_ton", "source_npi", "dest_addr",
    "dest_ton", "dest_npi", "data_coding", "body", "created_at", "state", "error", "id", "extra",
    "via",
)  # fmt: skip

FINAL_SQL = "(" + ", ".join(f"'{s.value}'" for s in sorted(FINAL_STATES)) + ")"
# Written identically in the partial indexes and in the queries, so SQLite uses the indexes.
OPEN_SQL = f"state NOT IN {FINAL_SQL}"
DONE_SQL = f"state IN {FINAL_SQL}"

def placeholders(n: int) -> str:
    return ", ".join("?" * n)


# Write statements. A batch runs them in this order (each as one executemany), which is also
# the order within every call, so grouping concurrent calls never reorders one call's writes.
# Across calls, a message's insert always comes before its updates; upsert and update of one
# message should not be mixed (the gateway updates; the upsert is for tools and tests).
INSERT_MESSAGE = 0
UPSERT_MESSAGE = 1
UPDATE_MESSAGE = 2
UPSERT_PART = 3
INSERT_REPORT = 4
DELETE_REPORT = 5
INSERT_ORPHAN = 6
PURGE_MESSAGES = 7
PURGE_PARTS = 8
PURGE_ORPHANS = 9
INSERT_EVENT = 10
PURGE_EVENTS = 11
INSERT_IDEMPOTENCY = 12
PURGE_IDEMPOTENCY = 13
COUNT_RETIRED = 14
DELETE_ORPHAN = 15
REDACT_EVENT = 16
REPLACE_MESSAGE = 17
DELETE_PARTS = 18
INSERT_EVENT_IF_MESSAGE = 19  # events of messages that may be gone (erased) meanwhile
UPSERT_OPTOUT = 20
DELETE_OPTOUT = 21
INSERT_INBOX = 22  # a receipt for a message another node works on (see Store.forward_receipts)
DELETE_INBOX = 23


def write_statements(day_of_created: str) -> tuple[str, ...]:
    """The write statements, in the order of their indexes above; ``day_of_created`` is the
    dialect's expression of a message's day of acceptance (UTC, "YYYY-MM-DD")."""
    return (
        f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)})"
        f" VALUES ({placeholders(len(MESSAGE_COLUMNS))})",
        f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)})"
        f" VALUES ({placeholders(len(MESSAGE_COLUMNS))})"
        " ON CONFLICT (id) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in MESSAGE_MUTABLE),
        f"UPDATE messages SET {', '.join(f'{c} = ?' for c in MESSAGE_MUTABLE)} WHERE id = ?",
        f"INSERT INTO parts ({', '.join(PART_COLUMNS)}) VALUES ({placeholders(len(PART_COLUMNS))})"
        " ON CONFLICT (message_id, part_no) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in PART_COLUMNS[2:]),
        f"INSERT INTO reports ({', '.join(REPORT_COLUMNS)})"
        f" VALUES ({placeholders(len(REPORT_COLUMNS))})",
        "DELETE FROM reports WHERE id = ?",
        "INSERT INTO orphan_receipts (connector, smsc_id, body, received_at) VALUES (?, ?, ?, ?)",
        f"DELETE FROM messages WHERE id = ? AND {DONE_SQL}",
        "DELETE FROM parts WHERE message_id = ?1"
        " AND NOT EXISTS (SELECT 1 FROM messages WHERE id = ?1)",
        "DELETE FROM orphan_receipts WHERE id IN"
        " (SELECT id FROM orphan_receipts WHERE received_at < ? LIMIT ?)",
        "INSERT INTO events (message_id, at, kind, from_state, to_state, detail)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        "DELETE FROM events WHERE message_id = ?1"
        " AND NOT EXISTS (SELECT 1 FROM messages WHERE id = ?1)",
        "INSERT INTO idempotency_keys (account, key, fingerprint, response, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        "DELETE FROM idempotency_keys WHERE (account, key) IN"
        " (SELECT account, key FROM idempotency_keys WHERE created_at < ? LIMIT ?)",
        # Before a final message is deleted (retention, erasure): counted in its day's totals.
        "INSERT INTO cdr_daily (day, account, smsc, channel, state, messages, parts)"
        f" SELECT {day_of_created}, account, coalesce(connector, ''), channel, state,"
        f" 1, parts_total FROM messages WHERE id = ? AND {DONE_SQL}"
        " ON CONFLICT (day, account, smsc, channel, state) DO UPDATE SET"
        " messages = cdr_daily.messages + excluded.messages,"
        " parts = cdr_daily.parts + excluded.parts",
        "DELETE FROM orphan_receipts WHERE id = ?",
        "UPDATE events SET detail = replace(detail, ?2, ?3) WHERE id = ?1",
        # replace_sm: what intake fixed and a replacement changes (after UPDATE_MESSAGE).
        "UPDATE messages SET body = ?, registered_delivery = ?, not_before = ?, expires_at = ?"
        " WHERE id = ?",
        # replace_sm: the parts cut from the old text go (none was sent: see Dispatcher.replace).
        # After UPSERT_PART: a batch holding an older write of that message's parts ends without
        # them.
        "DELETE FROM parts WHERE message_id = ?",
        "INSERT INTO events (message_id, at, kind, from_state, to_state, detail)"
        " SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM messages WHERE id = ?1)",
        "INSERT INTO optouts (account, msisdn, opted_out, at, source) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (account, msisdn) DO UPDATE SET opted_out = excluded.opted_out,"
        " at = excluded.at, source = excluded.source",
        "DELETE FROM optouts WHERE msisdn = ?",
        f"INSERT INTO inbox ({', '.join(INBOX_COLUMNS[1:])})"
        f" VALUES ({placeholders(len(INBOX_COLUMNS) - 1)})",
        "DELETE FROM inbox WHERE id = ?",
    )


INBOX_CHANNEL = "smsgw_inbox"  # NOTIFY'd once by each commit that forwards receipts
# NOTIFY'd by each commit that changes opt-out lists, with the changes as JSON:
# {"set": [[account, msisdn, opted_out 0 or 1, at, source], ...]}, or {"reload": true} when
# they do not fit (or a number was erased from every list).
OPTOUTS_CHANNEL = "smsgw_optouts"
CONFIG_CHANNEL = "smsgw_config"  # NOTIFY'd (payload: the version) by a shared config push
# Cancels and replacements of messages another node works on (gateway/cross_node.py):
# NOTIFY'd with the epoch of the node asked, and of the node answered.
CHANGES_CHANNEL = "smsgw_changes"
ANSWERS_CHANNEL = "smsgw_answers"
SHARED_CONFIG_KEPT = 50  # versions of the shared configuration kept (the older go)


class SharedConfig(NamedTuple):
    """One version of the configuration the nodes of a shared database run alike (the
    SHARED_SECTIONS of gateway/config.py, canonical JSON): who pushed it, when (epoch s)."""

    version: int
    document: str
    pushed_at: float
    pushed_by: str


def reports_channel(via: str) -> str:
    """NOTIFY'd (payload: the account) when reports going ``via`` ("smpp", "http") are made
    free for another node to claim."""
    return f"smsgw_reports_{via}"

@dataclass(frozen=True, slots=True)
class Dialect:
    """The few places where the store's SQL differs between engines. Statements are written
    with ``?`` placeholders (``?N`` where one value is used twice); a backend translates them
    to its driver's style."""

    name: str  # "sqlite" or "postgresql"
    day_of_created: str  # a message's day of acceptance, UTC, "YYYY-MM-DD"
    contains: str  # "{col} contains the ? value" (bytes in bytes, text in text)
    operator_ids: str  # the parts' smsc_id values of message m, space-separated
    open_index_hint: str  # appended to "FROM messages" where the open-messages index is meant

    def has(self, column: str) -> str:
        return self.contains.format(col=column)


class Backend(Protocol):
    """One open database, as gateway/store.py drives it. The Store serialises writes (one
    transaction at a time) and reads (one at a time); both methods raise StoreError (or
    ConstraintError) and nothing else for a database failure."""

    dialect: Dialect
    state_counts: dict[str, int]  # messages per state at opening

    @property
    def epoch(self) -> int | None:
        """This process as a node of a database (None: SQLite)."""
        ...

    @property
    def shared(self) -> bool:
        """Other nodes may work on the database at the same time."""
        ...

    async def transaction(self, groups: Sequence[tuple[int, list[Row]]],
                          counted: bool = False) -> Committed:
        """Run each (statement index, rows) group as one executemany, all in one transaction,
        committed durably; the rows each group changed (exact when ``counted``, else as the
        engine tells cheaply) and the messages per state as committed. Rolled back entirely if
        any statement fails."""
        ...

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of one query (``?`` placeholders), seeing every committed write."""
        ...

    async def checkpoint(self) -> bool:
        """Make deleted rows' old copies go (SQLite: empty the WAL); True if done now."""
        ...

    async def durability(self) -> tuple[str, str]:
        """(journal, synchronous) as the engine reports them, for the start-up log and tests."""
        ...

    def owned(self, column: str = "id") -> tuple[str, tuple[Any, ...]]:
        """The condition (`` AND ...``, and its parameters) that keeps the rows whose message
        id (in ``column``) is one this node works on: all of them where one process has the
        database."""
        ...

    def owner_of(self, column: str) -> str:
        """An SQL expression: the epoch of the node working on the message whose id is in
        ``column`` (qualify it: the expression is a subquery); 0 if it is unfinished and no
        node has it yet; NULL if it is final (or the store has no nodes)."""
        ...

    async def notified(self, channel: str, timeout: float) -> None:
        """Return when another node notified ``channel`` (a NOTIFY committed), or after
        ``timeout`` seconds (SQLite: no other node, always the timeout)."""
        ...

    def subscribe(self, channel: str, handler: Callable[[str | None], None]) -> None:
        """Call handler(payload) for each notification of ``channel`` committed by any node
        (this one too), and handler(None) when notifications may have been missed (the
        listening connection was made again). SQLite: never called."""
        ...

    async def adopt(self) -> list[str]:
        """Take over the unfinished messages no live node works on; their ids."""
        ...

    async def report_ids(self) -> tuple[int, int]:
        """A block [start, end) of report ids no other process will use."""
        ...

    async def live_nodes(self, lease: float) -> int:
        """The nodes whose heartbeat is younger than ``lease`` seconds (at least 1)."""
        ...

    async def lease_slots(self, smsc: str, total: int, want: int, lease: float) -> list[int]:
        """Hold up to ``want`` of the SMSC's ``total`` bind slots for ``lease`` seconds (those
        held already renewed first); the slots held. One process: all of them."""
        ...

    async def account_binds(self, mine: Mapping[str, int],
                            lease: float) -> tuple[dict[str, int], int]:
        """Record this node's upstream binds per account; the binds per account of all live
        nodes and how many nodes live. One process: its own, and 1."""
        ...

    async def push_shared_config(self, document: str, by: str, at: float,
                                 if_version: int | None) -> tuple[int, bool]:
        """Store ``document`` as the next version of the shared configuration, unless it is
        the latest's already, and NOTIFY CONFIG_CHANNEL; (latest version, whether stored).
        ``if_version``: only if the latest is that one (0: none yet), else (latest, False)
        and nothing stored. SQLite: StoreError (one process, configured by its file)."""
        ...

    async def ask_changes(self, asks: Sequence[tuple[int, str, str]]) -> list[int]:
        """Store (owner epoch, message id, request JSON) rows for their owners, in one commit
        that notifies them (CHANGES_CHANNEL); the requests' ids, in order."""
        ...

    async def take_changes(self, limit: int) -> list[tuple[int, str, str]]:
        """The requests asked of this node and not taken yet, now taken: (id, message id,
        request JSON)."""
        ...

    async def answer_changes(self, answers: Sequence[tuple[int, str]]) -> None:
        """Write (id, answer JSON) for requests this node took, notifying their askers
        (ANSWERS_CHANNEL)."""
        ...

    async def collect_changes(self, ids: Sequence[int],
                              withdraw: bool) -> tuple[dict[int, str], set[int]]:
        """The answers written for these requests of this node's, those requests deleted;
        with ``withdraw``, the requests not taken yet are deleted too (never applied).
        (answers by id, ids withdrawn)."""
        ...

    def held(self) -> tuple[str, tuple[Any, ...]]:
        """The condition (`` AND ...`` on reports, and its parameters) that keeps the reports
        this node delivers: all of them where one process has the database."""
        ...

    async def claim_reports(self, accounts: Sequence[str], via: str, limit: int) -> list[Row]:
        """Free reports of these accounts going ``via`` (REPORT_COLUMNS rows, oldest first),
        now held by this node: none where one process has the database."""
        ...

    async def release_reports(self, account: str, via: str, keep: Sequence[int]) -> int:
        """This node's reports of the account going ``via`` (but ``keep``) made free for
        others to claim; how many (none where one process has the database)."""
        ...

    def singleton(self, job: str) -> AbstractAsyncContextManager[bool]:
        """While inside: True if this process is the one node doing ``job`` now (retention,
        ...), False if another node is at it (then skip it this time)."""
        ...
