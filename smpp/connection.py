"""Thin trio adapter that runs a sans-I/O Session over a byte stream, with backpressure.

It owns the socket: a reader feeding the session (it stops reading while the peer has too
many requests unanswered or too much output queued), a writer that coalesces queued PDUs
and closes a link whose writes make no progress, a window of our outstanding requests, and
one entry in the run's shared timer heap for every deadline (responses, enquire_link,
inactivity, bind). Requests from the peer go to a handler; our requests either await their
response (`request`) or hand it to a callback (`send_request`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
import trio

from smpp.constants import CommandId
from smpp.pdu import EnquireLink, Pdu, Unbind
from smpp.session import (
    BindState,
    ProtocolViolation,
    RequestReceived,
    ResponseReceived,
    Session,
    SessionError,
    Side,
    UnexpectedResponse,
)
from smpp.timers import TimerHandle, Timers, current_timers

log = structlog.get_logger("smpp.connection")

OUTPUT_LIMIT = 256 * 1024  # octets queued for a peer beyond which we stop reading from it
RECEIVE_SIZE = 65536  # octets asked of the socket per read
WRITE_CHUNK = 16384  # octets per send: write progress is judged chunk by chunk
UNBIND_DRAIN = 5.0  # seconds an unbind from the peer waits for its earlier requests' answers
LOG_BURST, LOG_PERIOD = 5, 60.0  # protocol problems logged per connection and period
LOG_FIELD_MAX = 120  # characters of a peer-supplied detail kept in a log line

RequestHandler = Callable[["Connection", Pdu], Awaitable[None]]
# Called exactly once per request sent with send_request: (response, None) or (None, error).
ResponseCallback = Callable[[Pdu | None, Exception | None], None]
BatchHandler = Callable[["Connection", list[Pdu]], Awaitable[None]]


class ConnectionClosed(Exception):
    """The connection is gone; outstanding and new requests fail with this."""


class ResponseTimeout(Exception):
    """The peer did not answer a request in time."""


class WindowFull(Exception):
    """send_request was called with every window slot taken."""


class _Waiter:
    __slots__ = ("callback", "command", "deadline")

    def __init__(self, deadline: float, callback: ResponseCallback, command: CommandId) -> None:
        self.deadline = deadline
        self.callback = callback
        self.command = command  # its name is read only if it times out (enum .name is slow)


class _Reply:
    """What request() waits for."""

    __slots__ = ("error", "event", "response")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.response: Pdu | None = None
        self.error: Exception | None = None

    def __call__(self, response: Pdu | None, error: Exception | None) -> None:
        self.response, self.error = response, error
        self.event.set()


class LogBudget:
    """At most `burst` log lines per `period` seconds; says how many it held back."""

    __slots__ = ("burst", "period", "start", "suppressed", "used")

    def __init__(self, burst: int = LOG_BURST, period: float = LOG_PERIOD) -> None:
        self.burst, self.period = burst, period
        self.start = -math.inf
        self.used = 0
        self.suppressed = 0

    def take(self, now: float) -> int | None:
        """None: do not log. Otherwise log, with this count of lines held back before."""
        if now - self.start >= self.period:
            self.start, self.used = now, 0
        if self.used >= self.burst:
            self.suppressed += 1
            return None
        self.used += 1
        held, self.suppressed = self.suppressed, 0
        return held


def shorten(text: str, limit: int = LOG_FIELD_MAX) -> str:
    """A peer-supplied string cut to `limit` characters for a log line (marked if cut)."""
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text)} chars]"


class Turns:
    """Round-robin over a pool of connections: the next one after the last chosen that can
    take a request now (open, bound, a free window slot)."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, pool: Sequence[Connection]) -> Connection | None:
        count = len(pool)
        for k in range(count):
            conn = pool[(self._next + k) % count]
            if self._can_take(conn):
                self._next = (self._next + k + 1) % count
                return conn
        return None

    def can_pick(self, pool: Sequence[Connection]) -> bool:
        """Whether pick() would find a connection now, without taking a turn."""
        return any(self._can_take(conn) for conn in pool)

    @staticmethod
    def _can_take(conn: Connection) -> bool:
        return conn.free_slots() > 0 and not conn.closed and conn.session.bound


class Connection:
    """An SMPP connection over a trio stream. Call `run(handler)` in a nursery task.

    Backpressure: the reader stops taking PDUs from the peer while `incoming_window`
    requests of its are unanswered or more than OUTPUT_LIMIT octets wait to be written to
    it; its further requests then wait in its own socket, not in our memory. A write that
    makes no progress for `write_timeout` closes the connection. `bind_timeout` closes a
    connection not bound in time; `inactivity_timeout` one the peer left silent.
    `coalesce=False` writes every PDU in a send of its own (a peer that does no batching).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        side: Side,
        *,
        window: int = 10,
        response_timeout: float = 10.0,
        enquire_link_interval: float = 30.0,
        inactivity_timeout: float = math.inf,
        bind_timeout: float = math.inf,
        write_timeout: float = 30.0,
        incoming_window: int = 100,
        max_pdu_size: int = 65536,
        prebind_max_pdu_size: int = 1024,
        prebind_limit: int = 8,
        name: str = "",
        timers: Timers | None = None,
        unbound_log: LogBudget | None = None,
        coalesce: bool = True,
    ) -> None:
        self.stream = stream
        self.session = Session(side, max_pdu_size=max_pdu_size,
                               prebind_max_pdu_size=prebind_max_pdu_size,
                               prebind_limit=prebind_limit)
        self.window = max(1, window)
        self.response_timeout = response_timeout
        self.enquire_link_interval = enquire_link_interval
        self.inactivity_timeout = inactivity_timeout
        self.write_timeout = write_timeout
        self.incoming_window = max(1, incoming_window)
        self.name = name
        self.coalesce = coalesce  # False: every PDU in a send of its own, as it is queued
        self.closed = False
        now = trio.current_time()
        self.last_received = now
        self.bind_deadline = now + bind_timeout
        self._timers = timers if timers is not None else current_timers()
        self._timer: TimerHandle | None = None
        self._timer_at = math.inf
        self._probe: int | None = None  # sequence of our outstanding enquire_link
        self._waiters: dict[int, _Waiter] = {}
        self._slot_freed = trio.Event()
        self.on_slot_freed: Callable[[], None] | None = None  # e.g. a connector's sender
        self._incoming = 0  # requests of the peer handed to the handler, not yet answered
        self._deferred: dict[int, int] = {}  # sequence -> requests answered later, uncounted
        self._answer_waiter: trio.Event | None = None  # unbind() waiting for our answers
        self._reader_blocked = False
        self._unblocked = trio.Event()
        self._wake_writer = trio.Event()
        self._queued = 0  # generation of the latest queued bytes
        self._written = 0  # generation the writer has sent up to
        self._writing = 0  # octets taken by the writer and not yet sent
        self._write_since: float | None = None  # when the current send started
        self._close_when_flushed = False
        self._leave_by = math.inf  # close_soon(): closed by then, written or not
        self._progress = trio.Event()
        self._cancel: trio.CancelScope | None = None
        self._log_budget = LogBudget()
        # Before bind, problems are logged against a budget shared by all the connections of
        # a listener: a peer reconnecting for each bad PDU gets no fresh budget each time.
        self._unbound_log = unbound_log or self._log_budget
        self.extra: dict[str, Any] = {}  # owner's per-connection data (account, bind kind...)

    # -- public API -------------------------------------------------------------------------
    @property
    def state(self) -> BindState:
        return self.session.state

    def free_slots(self) -> int:
        """Requests that may be sent now without exceeding the window."""
        return self.window - len(self._waiters)

    @property
    def unanswered(self) -> int:
        """Requests of the peer handed to the handler and not answered yet."""
        return self._incoming

    def send_request(self, pdu: Pdu, callback: ResponseCallback,
                     timeout: float | None = None) -> int:
        """Send a request now; `callback` gets its response, or ResponseTimeout or
        ConnectionClosed, exactly once, later (never from inside this call).

        Raises (and sends nothing) if the connection is closed (ConnectionClosed), the window
        is full (WindowFull), or the PDU cannot be sent in this state (SessionError, PduError).
        The callback must not raise; it runs inside the connection's reader or timer.
        """
        if self.closed:
            raise ConnectionClosed(self.name)
        if len(self._waiters) >= self.window:
            raise WindowFull(self.name)
        limit = self.response_timeout if timeout is None else timeout
        seq = self.session.send(pdu)
        deadline = trio.current_time() + limit
        self._waiters[seq] = _Waiter(deadline, callback, pdu.command_id)
        self._arm(deadline)
        self._kick()
        return seq

    async def wait_slot(self) -> None:
        """Return once a window slot is free (or the connection is closed)."""
        while not self.closed and len(self._waiters) >= self.window:
            if self._slot_freed.is_set():
                self._slot_freed = trio.Event()
            await self._slot_freed.wait()

    async def request(self, pdu: Pdu, timeout: float | None = None) -> Pdu:
        """Send a request, wait for its response (which may carry an error status).

        Waits for a window slot first. Raises ResponseTimeout or ConnectionClosed.
        """
        await self.wait_slot()
        reply = _Reply()
        seq = self.send_request(pdu, reply, timeout)
        try:
            await reply.event.wait()
        finally:
            if not reply.event.is_set():  # we were cancelled: forget the request
                self._finish(seq, None, None)
        if reply.error is not None:
            raise reply.error
        assert reply.response is not None
        return reply.response

    def _finish(self, seq: int, response: Pdu | None, error: Exception | None) -> None:
        """Settle an outstanding request: free its slot, tell its callback (if any left)."""
        waiter = self._waiters.pop(seq, None)
        if waiter is None:
            return
        if response is None:
            self.session.abandon(seq)  # a late response is then reported as unexpected
        self._slot_freed.set()
        if self.on_slot_freed is not None:
            self.on_slot_freed()
        if response is None and error is None:
            return  # abandoned by a cancelled request(): nobody to tell
        try:
            waiter.callback(response, error)
        except Exception:  # a buggy callback must not take the connection down
            log.exception("smpp.response_callback_failed", conn=self.name, seq=seq)

    def respond(self, pdu: Pdu) -> None:
        """Queue the response to one of the peer's requests (sequence already set)."""
        deferred = self._deferred.get(pdu.sequence)
        if deferred:
            if deferred > 1:
                self._deferred[pdu.sequence] = deferred - 1
            else:
                del self._deferred[pdu.sequence]
        elif self._incoming:
            self._incoming -= 1
            if self._reader_blocked:
                self._unblocked.set()
        if self._answer_waiter is not None:
            self._answer_waiter.set()
        if self.closed:
            return
        self.session.send(pdu)
        self._kick()
        if self._timer is None and self.session.bound:
            self._check_timers()  # just bound: start the keepalive

    def defer(self, request: Pdu) -> None:
        """Stop counting an unanswered request of the peer in the incoming window: its
        answer (respond(), later) is waiting for something that may need more PDUs read from
        this very connection (e.g. a receipt held until its submit_sm_resp arrives). The
        caller bounds how many it defers."""
        if self._incoming:
            self._incoming -= 1
            self._deferred[request.sequence] = self._deferred.get(request.sequence, 0) + 1
            if self._reader_blocked:
                self._unblocked.set()

    def close_soon(self) -> None:
        """Leave without waiting: queue an unbind if bound, close once it is written (a
        write that stalls is cut by write_timeout). Safe to call from callbacks."""
        if self.closed or self._close_when_flushed:
            return
        if self.session.bound:
            with contextlib.suppress(SessionError):
                self.session.send(Unbind())  # no wait for the answer: we are leaving
        self._close_when_flushed = True
        self._leave_by = trio.current_time() + self.write_timeout
        self._arm(self._leave_by)
        self._kick()

    async def unbind(self, timeout: float = 5.0) -> None:
        """Graceful close: unbind (the peer's later requests are refused: not bound), wait
        for its unbind_resp and for our answers to its requests taken before (a submit
        waiting for its commit), written out, then close; `timeout` bounds it all."""
        with trio.move_on_after(timeout):
            if not self.closed and self.session.bound:
                with contextlib.suppress(ConnectionClosed, ResponseTimeout, SessionError):
                    await self.request(Unbind(), timeout=timeout)
            while (self._incoming or self._deferred) and not self.closed:
                self._answer_waiter = trio.Event()
                await self._answer_waiter.wait()
            self._answer_waiter = None
            if not self.closed:
                await self.flush(timeout)
        await self.aclose()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.session.close()
        if self._answer_waiter is not None:
            self._answer_waiter.set()
        self._progress.set()
        self._unblocked.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for seq in list(self._waiters):
            self._finish(seq, None, ConnectionClosed(self.name))
        if self._cancel is not None:
            self._cancel.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await self.stream.aclose()

    def _abort(self) -> None:
        """Close from synchronous code: cancel run(), whose exit closes the connection."""
        if self._cancel is not None:
            self._cancel.cancel()

    # -- the loops ---------------------------------------------------------------------------
    async def run(self, handler: RequestHandler, *, batch_handler: BatchHandler | None = None,
                  batch_commands: frozenset[CommandId] = frozenset()) -> None:
        """Serve the connection until it closes. Requests are handled concurrently.

        Requests whose command is in batch_commands and that arrive in one read are handed
        together, in order, to one batch_handler call (one task and e.g. one store commit for
        a whole window of submits, instead of one per PDU).
        """
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._writer)
                self._check_timers()
                await self._reader(nursery, handler, batch_handler, batch_commands)
                nursery.cancel_scope.cancel()
        finally:
            await self.aclose()

    def _kick(self) -> None:
        self._queued += 1
        self._wake_writer.set()

    def _output_full(self) -> bool:
        return self.session.buffered + self._writing >= OUTPUT_LIMIT

    async def _writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            await trio.lowlevel.checkpoint()  # let other ready tasks queue PDUs: fewer syscalls
            self._wake_writer = trio.Event()
            generation = self._queued
            if self.coalesce:
                data = self.session.data_to_send()
                pieces = [data] if data else []
            else:
                pieces = self.session.pdus_to_send()
            if pieces:
                self._writing = sum(map(len, pieces))
                try:
                    for data in pieces:
                        for start in range(0, len(data), WRITE_CHUNK):
                            chunk = data[start:start + WRITE_CHUNK] \
                                if len(data) > WRITE_CHUNK else data
                            self._write_since = trio.current_time()
                            self._arm(self._write_since + self.write_timeout)
                            await self.stream.send_all(chunk)
                            self._writing -= len(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.aclose()
                    return
                finally:
                    self._write_since = None
                    self._writing = 0
            self._written = generation
            self._progress.set()
            self._progress = trio.Event()
            if self._reader_blocked:
                self._unblocked.set()
            if self._close_when_flushed and not self.session.buffered:
                self._abort()
                return

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until everything queued so far has been handed to the socket."""
        self._kick()
        target = self._queued
        with trio.move_on_after(timeout):
            while not self.closed and self._written < target:
                await self._progress.wait()

    async def _reader(self, nursery: trio.Nursery, handler: RequestHandler,
                      batch_handler: BatchHandler | None,
                      batch_commands: frozenset[CommandId]) -> None:
        session = self.session
        while not self.closed:
            batch: list[Pdu] = []
            blocked = False
            while True:
                if self._incoming >= self.incoming_window or self._output_full():
                    blocked = True
                    break
                event = session.next_event()
                if event is None:
                    break
                if isinstance(event, RequestReceived):
                    pdu = event.pdu
                    if pdu.command_id == CommandId.ENQUIRE_LINK:
                        session.send(pdu.response())
                    elif pdu.command_id == CommandId.UNBIND:
                        if batch and batch_handler is not None:  # what came before still counts
                            nursery.start_soon(batch_handler, self, batch)
                        await self._drain(UNBIND_DRAIN)  # answer what came before first
                        session.send(pdu.response())
                        await self.flush()
                        await self.aclose()
                        return
                    elif batch_handler is not None and pdu.command_id in batch_commands:
                        self._incoming += 1
                        batch.append(pdu)
                    else:
                        self._incoming += 1
                        nursery.start_soon(handler, self, pdu)
                elif isinstance(event, ResponseReceived):
                    self._finish(event.response.sequence, event.response, None)
                    if self._timer is None and session.bound:
                        self._check_timers()  # just bound: start the keepalive
                elif isinstance(event, ProtocolViolation):
                    self._log_violation(event)
                    if event.fatal:
                        await self.flush()
                        await self.aclose()
                        return
                elif isinstance(event, UnexpectedResponse):
                    held = self._budget().take(trio.current_time())
                    if held is not None:
                        log.info("smpp.unexpected_response", conn=self.name,
                                 command=event.pdu.command_id.name, seq=event.pdu.sequence,
                                 suppressed=held)
            if batch and batch_handler is not None:
                nursery.start_soon(batch_handler, self, batch)
            if session.buffered:
                self._kick()
            if blocked:
                # Backpressure: take nothing more from this peer until it has been answered
                # or has read what we owe it (it waits in its socket, not in our memory).
                self._unblocked = trio.Event()
                self._reader_blocked = True
                try:
                    if self._incoming >= self.incoming_window or self._output_full():
                        await self._unblocked.wait()
                finally:
                    self._reader_blocked = False
                continue
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self.last_received = trio.current_time()
            session.feed(data)

    async def _drain(self, timeout: float) -> None:
        """Wait (bounded) until every request of the peer handed out has been answered."""
        with trio.move_on_after(timeout):
            while self._incoming and not self.closed:
                self._unblocked = trio.Event()
                self._reader_blocked = True
                try:
                    await self._unblocked.wait()
                finally:
                    self._reader_blocked = False

    def _budget(self) -> LogBudget:
        """This connection's log budget once bound; before, the one its listener shares."""
        return self._log_budget if self.session.was_bound else self._unbound_log

    def _log_violation(self, event: ProtocolViolation) -> None:
        held = self._budget().take(trio.current_time())
        if held is not None:
            log.warning("smpp.protocol_violation", conn=self.name, status=f"0x{event.status:08X}",
                        detail=shorten(event.detail), fatal=event.fatal, suppressed=held)

    # -- timers -------------------------------------------------------------------------------
    def _arm(self, when: float) -> None:
        """Make sure the connection's timer fires no later than `when`."""
        if when < self._timer_at and not self.closed:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._timers.call_at(when, self._check_timers)
            self._timer_at = when

    def _check_timers(self) -> None:
        """Act on every deadline that has passed, then arm the timer for the next one.

        Deadlines that moved later since the timer was armed (data received, responses in)
        cost nothing until then: the timer fires, finds nothing due, and is re-armed.
        """
        if self._timer is not None:
            self._timer.cancel()  # called directly (a fired timer is cancelled already)
        self._timer, self._timer_at = None, math.inf
        if self.closed:
            return
        now = trio.current_time()
        due = math.inf
        if self._write_since is not None:
            stall = self._write_since + self.write_timeout
            if now >= stall:
                log.warning("smpp.write_timeout", conn=self.name, queued=self._writing)
                self._abort()
                return
            due = stall
        if self.session.state in (BindState.OPEN, BindState.BINDING) \
                and self.bind_deadline < math.inf:
            if now >= self.bind_deadline:
                log.info("smpp.bind_timeout", conn=self.name)
                self._abort()
                return
            due = min(due, self.bind_deadline)
        if self._close_when_flushed:
            if now >= self._leave_by:  # the unbind could not be written in time
                self._abort()
                return
            due = min(due, self._leave_by)
        elif self.inactivity_timeout < math.inf:
            silent = self.last_received + self.inactivity_timeout
            if now >= silent:
                log.info("smpp.inactivity_timeout", conn=self.name)
                self.close_soon()
                due = min(due, self._leave_by)
            else:
                due = min(due, silent)
        if self._waiters:
            overdue = [seq for seq, w in self._waiters.items() if w.deadline <= now]
            for seq in overdue:
                waiter = self._waiters.get(seq)
                if waiter is not None:
                    self._finish(seq, None, ResponseTimeout(f"{waiter.command.name} seq {seq}"))
            if self.closed:
                return
            if self._waiters:
                due = min(due, min(w.deadline for w in self._waiters.values()))
        if self.enquire_link_interval < math.inf and self.session.bound \
                and self._probe is None:
            quiet_until = self.last_received + self.enquire_link_interval
            if now >= quiet_until:
                self._send_probe()
                quiet_until = now + self.enquire_link_interval
            due = min(due, quiet_until)
        if due < math.inf:
            self._arm(due)

    def _send_probe(self) -> None:
        """Probe a quiet peer with enquire_link; no answer in time closes the connection."""
        def answered(_resp: Pdu | None, error: Exception | None) -> None:
            self._probe = None
            if isinstance(error, ResponseTimeout):
                log.warning("smpp.enquire_link_timeout", conn=self.name)
                self._abort()

        # Window full: requests are outstanding already and their own timeouts watch the link.
        with contextlib.suppress(WindowFull, ConnectionClosed, SessionError):
            self._probe = self.send_request(EnquireLink(), answered)
