"""The channel seam: what the dispatcher asks of a channel, and what channels tell it back.

A channel (SMS over SMPP binds, RCS over Google's RBM API, TTS over a voice provider's HTTP
API) turns a Message into its own protocol; the core schedules, fails over and keeps state,
and speaks only the types here. A channel instance is one configured connector (an SMSC
connection group, an RBM agent, a voice account); `Attempt.connector` names it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gateway.model import Message, PartState

SMS, RCS, TTS = "sms", "rcs", "tts"  # channel kinds (Attempt.channel, Message.channel)


@dataclass(frozen=True, slots=True)
class Unit:
    """One piece a channel sends for a message and follows on its own: an SMS segment, or the
    whole message for RCS and TTS. `number` is 1-based (the message's part number); `payload`
    is the channel's own (an SMS segment's octets and UDH), opaque to the core."""

    number: int
    payload: object = None


class Unsendable(Exception):
    """The message cannot go through this channel as it is (e.g. more parts than the SMSC
    takes): the message is REJECTED with `status` (an SMPP command_status) unless the plan
    has another attempt on another channel."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class SendResult:
    """What became of one unit handed to a channel.

    ok: the provider took it (provider_id, to match its receipts). Otherwise status is the
    provider's error as an SMPP command_status (the upstream sees it in its receipt's err),
    and the flags say what the core does next: temporary -> retry later or fail over;
    not_capable -> the recipient cannot take this channel (RCS: no RCS phone, agent not
    launched on its network): the next attempt of the plan at once, no retry; expired -> not
    sent, its validity ran out while it waited; otherwise permanent (rejected: the message
    itself is at fault -> REJECTED, else UNDELIVERABLE).
    """

    provider_id: str | None
    status: int = 0
    temporary: bool = False
    rejected: bool = False
    not_capable: bool = False
    expired: bool = False
    detail: str = ""
    billing: str = ""  # how the provider bills it, when it says (RCS: basic, single, ...)

    @property
    def ok(self) -> bool:
        return self.provider_id is not None


SendDone = Callable[[SendResult], None]


class Revoked(enum.StrEnum):
    """The answer to a revoke: REVOKED (it will never reach the phone), DELIVERED (too late:
    it reached the phone, so nothing else may be sent), UNSUPPORTED (the channel cannot revoke,
    e.g. SMS), FAILED (unknown: the provider did not answer; treat as not revoked)."""

    REVOKED = "revoked"
    DELIVERED = "delivered"
    UNSUPPORTED = "unsupported"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ProviderReceipt:
    """A channel-neutral delivery report for one unit: the provider's id for it, its outcome
    (None: intermediate, e.g. RCS "read" after "delivered", SMS ENROUTE), the provider's own
    word for it (SMS stat, RBM event type) and error code, and the raw report for the log."""

    provider_id: str
    outcome: PartState | None
    word: str
    error: int = 0
    raw: bytes = b""


@runtime_checkable
class Channel(Protocol):
    """One configured connector of one channel kind. Implementations: routing/sms.py (SMPP),
    routing/rcs.py (RBM), routing/tts.py (voice). All methods are called from the trio
    thread; submit_nowait never blocks and calls `done` exactly once, later."""

    name: str  # the connector's configured name
    kind: str  # SMS, RCS or TTS

    def is_up(self) -> bool:
        """Whether an attempt may be started on it now (bound, breaker closed...)."""
        ...

    @property
    def capacity(self) -> int:
        """How many units it can have unanswered at once (sizes the core's in-flight limit)."""
        ...

    async def wait_changed(self) -> None:
        """Return when is_up() may have changed."""
        ...

    def prepare(self, message: Message) -> Sequence[Unit]:
        """The units this message goes out as on this channel; raises Unsendable."""
        ...

    def submit_nowait(self, message: Message, unit: Unit, deadline: float,
                      done: SendDone) -> None:
        """Send one unit, never after `deadline` (trio time; the provider is given what is
        left of the validity) and report its fate to `done`."""
        ...

    async def revoke(self, message: Message, provider_id: str) -> Revoked:
        """Withdraw a unit the provider holds but has not delivered (before a failover)."""
        ...


@dataclass(frozen=True, slots=True)
class MobileOriginated:
    """A message from a phone, channel-neutral: an SMS MO, or an RCS user reply. Addresses as
    the provider gives them (`sender` is the phone); `body` is encoded as `data_coding` says
    (SMPP data_coding values: 0 GSM default alphabet / 8 UCS-2; an RCS reply is text, sent on
    as UCS-2 unless it fits the GSM alphabet)."""

    sender: str
    recipient: str
    body: bytes
    data_coding: int = 0
    sender_ton: int = 1
    sender_npi: int = 1
    recipient_ton: int = 0
    recipient_npi: int = 0


Answered = Callable[[int, bool], None]


class ChannelEvents(Protocol):
    """Where channels hand what their providers report. Each item's fate is told to
    answered(i, stored) as soon as it is known: stored=True once its effect is committed (the
    provider may be acknowledged: SMPP deliver_sm_resp OK, HTTP 2xx to a webhook push), False
    when it could not be stored (the provider must send it again: ESME_RX_T_APPN, HTTP 5xx)."""

    async def receipts(self, channel: Channel, receipts: Sequence[ProviderReceipt],
                       answered: Answered) -> None: ...

    async def mobile_originated(self, channel: Channel, messages: Sequence[MobileOriginated],
                                answered: Answered) -> None: ...
