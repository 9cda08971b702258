"""The gateway's message model: the records that flow from intake to store to dispatch.

Plain data only (no I/O): a Message as accepted from upstream, its Parts as submitted to an
operator, and the Reports (receipts and MO) owed to an upstream account.
"""

from __future__ import annotations

import enum
import operator
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING


class _StrEnum(enum.StrEnum):
    """A StrEnum whose `.value` is read without running Python code: enum's own `value` is a
    Python-level descriptor, and these values are read for every history row, report and
    receipt written (the store, the reporter, the metrics)."""

    if not TYPE_CHECKING:  # mypy keeps typing `.value` as enum's (the member's str)
        value = property(operator.attrgetter("_value_"))


class State(_StrEnum):
    """Message states; see DESIGN.md. The last five are final (CANCELLED: by its sender or
    an operator's admin, before any part reached an operator)."""

    ACCEPTED = "ACCEPTED"
    SCHEDULED = "SCHEDULED"
    QUEUED = "QUEUED"
    IN_FLIGHT = "IN_FLIGHT"
    DELIVERED = "DELIVERED"
    UNDELIVERABLE = "UNDELIVERABLE"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({State.DELIVERED, State.UNDELIVERABLE, State.EXPIRED, State.REJECTED,
                          State.CANCELLED})


class PartState(_StrEnum):
    """Outcome of one operator-side segment of a message."""

    PENDING = "PENDING"  # not yet acknowledged by the operator (or to be resent)
    SUBMITTED = "SUBMITTED"  # submit_sm_resp OK, operator id known, receipt awaited
    DELIVERED = "DELIVERED"
    UNDELIVERABLE = "UNDELIVERABLE"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"  # never sent: its message was cancelled


class ReportKind(_StrEnum):
    RECEIPT = "RECEIPT"
    MO = "MO"


def new_message_id() -> str:
    """A gateway message id: 32 lowercase hex digits (fits SMPP's 65-octet message_id), the
    time of its making in milliseconds (12 digits) then 80 random bits (20 digits).

    Ids grow with time, so the store's B-trees keyed by message id (messages, parts, the
    history's index) take new rows at their right end, where the pages are already in memory:
    with random ids each row dirtied a random page of each (measured: 13 us per history row
    against 4 us). The random part keeps ids unguessable; anything derived from an id must
    not use its first digits alone (they are shared by the messages of a minute)."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


@dataclass(slots=True)
class Message:
    """One upstream submission, as stored. Times are UNIX seconds (float, UTC)."""

    id: str
    account: str
    source_addr: str
    source_ton: int
    source_npi: int
    dest_addr: str
    dest_ton: int
    dest_npi: int
    data_coding: int
    esm_class: int
    protocol_id: int
    priority: int
    registered_delivery: int
    body: bytes  # short_message or message_payload octets as submitted (UDH included if UDHI)
    created_at: float
    expires_at: float
    not_before: float  # schedule_delivery_time, or created_at
    state: State = State.QUEUED
    attempts: int = 0
    next_attempt_at: float = 0.0
    error: int = 0  # last operator error / command_status, 0 if none
    done_at: float | None = None
    parts_total: int = 0  # set when first dispatched
    channel: str = "sms"
    connector: str | None = None  # connector name of the current/last attempt
    tlvs: bytes = b""  # upstream TLVs passed through to the operator (encoded, in order)
    origin: str = "smpp"  # the upstream interface it came in on: "smpp" or "http" ("rules":
    # made by the gateway for the account, e.g. a STOP confirmation)
    traffic: str = "alert"  # "alert" (transactional) or "marketing" (see DOMAIN.md)
    callback_url: str | None = None  # HTTP: where its receipt goes (else the account's default)
    client_ref: str | None = None  # HTTP: the upstream's own reference, echoed in reports
    service_type: str = ""  # SMPP service_type as submitted (cancel_sm matches it)
    # What the rules found out about the recipient (rules.recipient), for routers: its number
    # type ("mobile", "fixed_line", ... as phonenumbers names them) and its country (ISO
    # 3166 alpha-2, e.g. "FR"); "" when no rule said.
    number_type: str = ""
    country: str = ""
    # The duplicates rule's fingerprint of it (account, recipient, text), None when the rule
    # did not run: the gateway finds earlier copies by it, also after a restart.
    fingerprint: bytes | None = None
    # How the RCS platform bills it when it went over RCS ("basic", "single", "conversation":
    # routing.rcs), for the CDR; "" otherwise.
    billing: str = ""


@dataclass(slots=True)
class Event:
    """One line of a message's history: something that happened to it, and when.

    kind names the event ("accepted", "rule", "attempt", "retry", "receipt", "final",
    "cancelled", "replaced", ...: gateway/history.py lists them); from_state/to_state are set
    when the message changed state; detail holds the event's facts (connector, command_status,
    rule decision ...) as JSON-able values.
    """

    message_id: str
    at: float  # UNIX seconds (UTC)
    kind: str
    from_state: State | None = None
    to_state: State | None = None
    detail: dict[str, object] = field(default_factory=dict)
    id: int | None = None  # row id, assigned by the store (orders one message's events)


@dataclass(slots=True)
class Part:
    """One segment of a message as submitted to an operator."""

    message_id: str
    part_no: int  # 1-based
    connector: str
    smsc_id: str | None = None
    state: PartState = PartState.PENDING
    error: int = 0
    submitted_at: float | None = None
    done_at: float | None = None


@dataclass(slots=True)
class Report:
    """Something owed to an upstream account: a delivery receipt or an MO message."""

    account: str
    kind: ReportKind
    message_id: str  # receipts: the gateway message id; MO: a fresh id
    source_addr: str
    source_ton: int
    source_npi: int
    dest_addr: str
    dest_ton: int
    dest_npi: int
    data_coding: int
    body: bytes  # receipt text, or the MO's short_message
    created_at: float
    state: State | None = None  # receipts: the final message state
    error: int = 0
    id: int | None = None  # row id, assigned by the store
    extra: dict[str, str] = field(default_factory=dict)
    # How it reaches the account: "smpp" (deliver_sm over its receiver binds) or "http" (a
    # signed webhook, gateway.webhooks; extra then holds the event's id and fields).
    via: str = "smpp"


@dataclass(slots=True)
class OptOut:
    """One number's place on an account's opt-out list (STOP): opted_out False records a
    START (the number is back). source: "mo" (a reply), "cli" or "import"."""

    account: str
    msisdn: str  # E.164 digits, no '+'
    opted_out: bool
    at: float  # UNIX seconds
    source: str = "mo"
