"""SMPP session state machine, sans-I/O: bytes in -> events out, PDUs in -> bytes out.

Everything that decides whether a PDU is legal, and what state a session moves to, lives in
the tables at the top of this file. The tables do not know which side they play: the
gateway's ESME-facing server and its operator-facing client obey the same rules.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from smpp.constants import RESPONSE_BIT, CommandId, Status
from smpp.pdu import (
    PDU_CLASSES,
    FrameReader,
    FramingError,
    GenericNack,
    Pdu,
    PduError,
    decode,
    encode,
    is_response,
)


class BindState(enum.Enum):
    # Members are singletons compared by identity: hashed by it too (Enum's own __hash__ is
    # Python code, and these key the tables below, looked up several times per PDU).
    __hash__ = object.__hash__

    OPEN = "OPEN"  # connected, not bound
    BINDING = "BINDING"  # bind_* sent or received, bind_*_resp pending
    BOUND_TX = "BOUND_TX"
    BOUND_RX = "BOUND_RX"
    BOUND_TRX = "BOUND_TRX"
    UNBINDING = "UNBINDING"  # unbind sent or received, unbind_resp pending
    CLOSED = "CLOSED"


class Side(enum.Enum):
    """Who sends a PDU: the ESME (client) or the SMSC (server)."""

    __hash__ = object.__hash__  # as BindState's

    ESME = "ESME"
    SMSC = "SMSC"


C = CommandId
S = BindState
_BOUND = frozenset({S.BOUND_TX, S.BOUND_RX, S.BOUND_TRX})
_CAN_TX = frozenset({S.BOUND_TX, S.BOUND_TRX})
_CAN_RX = frozenset({S.BOUND_RX, S.BOUND_TRX})
_ANY = frozenset(BindState) - {S.CLOSED}
UNBOUND = frozenset({S.OPEN, S.BINDING})

# (sender, request command) -> bind states in which that request is legal.
# A request received in any other state is answered with ESME_RINVBNDSTS (ESME_RALYBND for a
# second bind) once bound; before bind (OPEN, BINDING) only the requests legal there are
# answered, anything else is fatal: the connection is closed without an answer, so an
# unauthenticated peer cannot make us write for it. A request we would send in any other
# state is a programming error.
LEGAL_REQUESTS: dict[tuple[Side, CommandId], frozenset[BindState]] = {
    (Side.ESME, C.BIND_TRANSMITTER): frozenset({S.OPEN}),
    (Side.ESME, C.BIND_RECEIVER): frozenset({S.OPEN}),
    (Side.ESME, C.BIND_TRANSCEIVER): frozenset({S.OPEN}),
    (Side.SMSC, C.OUTBIND): frozenset({S.OPEN}),
    (Side.ESME, C.SUBMIT_SM): _CAN_TX,
    (Side.ESME, C.SUBMIT_MULTI): _CAN_TX,
    (Side.ESME, C.QUERY_SM): _CAN_TX,
    (Side.ESME, C.CANCEL_SM): _CAN_TX,
    (Side.ESME, C.REPLACE_SM): _CAN_TX,
    (Side.ESME, C.DATA_SM): _CAN_TX,
    (Side.SMSC, C.DATA_SM): _CAN_RX,
    (Side.SMSC, C.DELIVER_SM): _CAN_RX,
    (Side.SMSC, C.ALERT_NOTIFICATION): _CAN_RX,
    # enquire_link is accepted before bind too: many peers probe an open connection.
    (Side.ESME, C.ENQUIRE_LINK): _ANY - {S.UNBINDING},
    (Side.SMSC, C.ENQUIRE_LINK): _ANY - {S.UNBINDING},
    # unbind is answered before bind too (a peer giving up politely), then the link closes.
    (Side.ESME, C.UNBIND): _BOUND | {S.OPEN},
    (Side.SMSC, C.UNBIND): _BOUND | {S.OPEN},
}

# (bind state, command, ok) -> next state. Applies whichever side sends the PDU; "ok" is
# command_status == 0 for responses and always True for requests. Misses leave state as is.
TRANSITIONS: dict[tuple[BindState, CommandId, bool], BindState] = {
    **{(S.OPEN, bind, True): S.BINDING
       for bind in (C.BIND_TRANSMITTER, C.BIND_RECEIVER, C.BIND_TRANSCEIVER)},
    (S.BINDING, C.BIND_TRANSMITTER_RESP, True): S.BOUND_TX,
    (S.BINDING, C.BIND_RECEIVER_RESP, True): S.BOUND_RX,
    (S.BINDING, C.BIND_TRANSCEIVER_RESP, True): S.BOUND_TRX,
    # a refused bind (or a generic_nack answering it) leaves the session open, unbound
    **{(S.BINDING, resp, False): S.OPEN
       for resp in (C.BIND_TRANSMITTER_RESP, C.BIND_RECEIVER_RESP, C.BIND_TRANSCEIVER_RESP)},
    **{(st, C.UNBIND, True): S.UNBINDING for st in _BOUND | {S.OPEN}},
    **{(st, C.UNBIND_RESP, ok): S.CLOSED for st in _ANY for ok in (True, False)},
}

_BIND_REQUESTS = frozenset({C.BIND_TRANSMITTER, C.BIND_RECEIVER, C.BIND_TRANSCEIVER})
# The commands that may move a session (bind, unbind and their answers): for any other PDU
# (submit_sm, deliver_sm... the traffic) the TRANSITIONS lookup is skipped, it would miss.
_MOVES = frozenset(cid for _state, cid, _ok in TRANSITIONS)
# request command_id -> its response's CommandId (CommandId(x | RESPONSE_BIT) is Python code)
_RESPONSE_OF = {C(c & ~RESPONSE_BIT): c for c in CommandId
                if c & RESPONSE_BIT and (c & ~RESPONSE_BIT) in C._value2member_map_}
MAX_SEQUENCE = 0x7FFFFFFF


class SessionError(Exception):
    """We tried to send something the protocol forbids in the current state."""


# --- events handed to the I/O layer -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A legal request from the peer; the application must answer it."""

    pdu: Pdu


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response matching one of our outstanding requests (a generic_nack always with an
    error status: ESME_RSYSERR when the peer's says 0)."""

    request: Pdu
    response: Pdu


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer sent something we answered on our own (error status or generic_nack).

    fatal: the byte stream cannot be trusted any more; the connection must be closed once the
    queued answer is flushed.
    """

    status: int
    detail: str
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class UnexpectedResponse:
    """A response with no outstanding request (late, after we timed it out, or bogus)."""

    pdu: Pdu


Event = RequestReceived | ResponseReceived | ProtocolViolation | UnexpectedResponse


class Session:
    """One SMPP connection's protocol state, for either side.

    `feed(bytes)` then `next_event()` until it returns None (or `receive_data(bytes)` for
    both at once) yields events and may queue automatic answers; `send(pdu)` validates,
    numbers requests and queues their bytes; `data_to_send()` drains the queued bytes.

    Before bind (OPEN, BINDING) a peer is held short: frames longer than
    `prebind_max_pdu_size` and more than `prebind_limit` PDUs are fatal, and so is any
    request that is not legal there (it gets no answer).
    """

    def __init__(self, side: Side, *, max_pdu_size: int = 65536,
                 prebind_max_pdu_size: int = 1024, prebind_limit: int = 8) -> None:
        self.side = side
        self.peer = Side.SMSC if side is Side.ESME else Side.ESME
        self.state = BindState.OPEN
        self.outstanding: dict[int, Pdu] = {}
        self.max_pdu_size = max_pdu_size
        self.prebind_limit = prebind_limit
        self._reader = FrameReader(max_length=min(prebind_max_pdu_size, max_pdu_size))
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._next_seq = 1
        self._prebind_seen = 0
        self._fatal = False
        self.was_bound = False  # bound at some point (the peer authenticated)

    # -- sending --------------------------------------------------------------------------
    def next_sequence(self) -> int:
        seq = self._next_seq
        self._next_seq = 1 if seq >= MAX_SEQUENCE else seq + 1
        return seq

    def send(self, pdu: Pdu) -> int:
        """Queue a PDU. Requests get a fresh sequence number (returned) and are tracked.

        Nothing changes if the PDU cannot be encoded (PduError) or is illegal (SessionError).
        """
        cid = pdu.command_id
        if cid & RESPONSE_BIT:  # is_response(), inlined: every PDU comes here
            data = encode(pdu)
            if cid in _MOVES:
                self._transition(cid, pdu.status == 0)
        else:
            allowed = LEGAL_REQUESTS.get((self.side, cid))
            if allowed is None or self.state not in allowed:
                raise SessionError(f"{cid.name} may not be sent by {self.side.value} "
                                   f"in state {self.state.value}")
            seq = self._next_seq
            pdu.sequence = seq
            data = encode(pdu)
            self.next_sequence()
            self.outstanding[seq] = pdu
            if cid in _MOVES:
                self._transition(cid, True)
        self._queue(data)
        return pdu.sequence

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._out_bytes += len(data)

    @property
    def buffered(self) -> int:
        """Octets queued for sending and not yet taken by data_to_send()."""
        return self._out_bytes

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._out_bytes = 0
        return data

    def pdus_to_send(self) -> list[bytes]:
        """Drain the queued bytes as one item per PDU, in order (for a writer that sends
        each PDU on its own)."""
        pdus, self._out = self._out, []
        self._out_bytes = 0
        return pdus

    def abandon(self, sequence: int) -> Pdu | None:
        """Forget an outstanding request (its response timed out)."""
        return self.outstanding.pop(sequence, None)

    @property
    def bound(self) -> bool:
        return self.state in _BOUND

    def close(self) -> None:
        self.state = BindState.CLOSED

    # -- receiving ------------------------------------------------------------------------
    def feed(self, data: bytes | bytearray) -> None:
        """Take received bytes; next_event() turns them into events."""
        self._reader.feed(data)

    @property
    def pending_input(self) -> int:
        """Octets received but not yet turned into events."""
        return self._reader.buffered

    def next_event(self) -> Event | None:
        """The next event from the bytes fed so far, or None until more are fed (and for
        ever after a fatal violation: the stream cannot be trusted any more)."""
        if self._fatal:
            return None
        try:
            frame = self._reader.next_frame()
        except FramingError as exc:
            self._queue_nack(exc.status, exc.sequence)
            return self._die(exc.status, exc.detail)
        if frame is None:
            return None
        if self.state in UNBOUND:
            self._prebind_seen += 1
            if self._prebind_seen > self.prebind_limit:
                return self._die(Status.ESME_RINVBNDSTS,
                                 f"more than {self.prebind_limit} PDUs before bind")
        return self._receive_frame(frame)

    def receive_data(self, data: bytes) -> list[Event]:
        """feed() then every event it makes available."""
        self.feed(data)
        events: list[Event] = []
        while (event := self.next_event()) is not None:
            events.append(event)
        return events

    def _die(self, status: int, detail: str) -> ProtocolViolation:
        self._fatal = True
        self.state = BindState.CLOSED
        return ProtocolViolation(status, detail, fatal=True)

    def _receive_frame(self, frame: bytes) -> Event:
        try:
            pdu = decode(frame)
        except PduError as exc:
            # A request we can identify gets its own response with the error status
            # (e.g. submit_sm_resp ESME_RINVOPTPARSTREAM); anything else a generic_nack.
            # Before bind only a malformed bind is answered; anything else is fatal.
            if self.state in UNBOUND and exc.command_id not in _BIND_REQUESTS:
                return self._die(exc.status, f"malformed PDU before bind: {exc.detail}")
            cls = PDU_CLASSES.get(exc.command_id)
            resp_cls = cls.response_class if cls is not None else None
            if resp_cls is not None and not is_response(exc.command_id):
                self._queue(encode(resp_cls(sequence=exc.sequence, status=exc.status)))
            else:
                self._queue_nack(exc.status, exc.sequence)
            return ProtocolViolation(exc.status, exc.detail)
        cid = pdu.command_id
        if cid & RESPONSE_BIT:
            request = self.outstanding.pop(pdu.sequence, None)
            if request is None or not _answers(request, pdu):
                if request is not None:  # wrong kind of answer: keep waiting for the real one
                    self.outstanding[pdu.sequence] = request
                return UnexpectedResponse(pdu)
            # a generic_nack counts as a failed response to the request it answers, even
            # one whose command_status says 0 (it is handed up as ESME_RSYSERR)
            if cid == CommandId.GENERIC_NACK and pdu.status == 0:
                pdu.status = Status.ESME_RSYSERR
            answered = _RESPONSE_OF.get(request.command_id)
            if answered is None:
                answered = CommandId(request.command_id | RESPONSE_BIT)
            if answered in _MOVES:
                self._transition(answered, pdu.status == 0)
            return ResponseReceived(request, pdu)
        allowed = LEGAL_REQUESTS.get((self.peer, cid))
        if allowed is None or self.state not in allowed:
            if cid in _BIND_REQUESTS and self.state is not S.OPEN and \
                    (self.peer, cid) in LEGAL_REQUESTS:
                status: int = Status.ESME_RALYBND
            elif self.state in UNBOUND:
                return self._die(Status.ESME_RINVBNDSTS,
                                 f"{cid.name} from {self.peer.value} before bind")
            else:
                status = Status.ESME_RINVBNDSTS
            self._reject(pdu, status)
            return ProtocolViolation(
                status, f"{cid.name} from {self.peer.value} not allowed in {self.state.value}")
        if cid in _MOVES:
            self._transition(cid, True)
        return RequestReceived(pdu)

    def _reject(self, pdu: Pdu, status: int) -> None:
        try:
            resp = pdu.response(status=status)
        except (TypeError, ValueError):
            resp = GenericNack(sequence=pdu.sequence, status=status)
        self._queue(encode(resp))

    def _queue_nack(self, status: int, sequence: int) -> None:
        self._queue(encode(GenericNack(sequence=sequence, status=status)))

    def _transition(self, cid: CommandId, ok: bool) -> None:
        new = TRANSITIONS.get((self.state, cid, ok), self.state)
        if new is not self.state:
            self.state = new
            if new in _BOUND:
                self._reader.max_length = self.max_pdu_size
                self.was_bound = True


def _answers(request: Pdu, response: Pdu) -> bool:
    if response.command_id == CommandId.GENERIC_NACK:
        return True
    return response.command_id == (request.command_id | 0x80000000)
