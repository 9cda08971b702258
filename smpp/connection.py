"""Thin trio adapter that runs a sans-I/O Session over a byte stream.

It owns the socket: a reader task feeding the session, a writer that coalesces queued PDUs
into few send_all calls, a window of outstanding requests, one sweeper for response timeouts,
periodic enquire_link and an inactivity timeout. Requests from the peer go to a handler; our
requests either await their response (`request`) or hand it to a callback (`send_request`).
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

log = structlog.get_logger("smpp.connection")

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
    __slots__ = ("callback", "deadline", "name")

    def __init__(self, deadline: float, callback: ResponseCallback, name: str) -> None:
        self.deadline = deadline
        self.callback = callback
        self.name = name


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
            if conn.free_slots() > 0 and not conn.closed and conn.session.bound:
                self._next = (self._next + k + 1) % count
                return conn
        return None


class Connection:
    """An SMPP connection over a trio stream. Call `run(handler)` in a nursery task."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        side: Side,
        *,
        window: int = 10,
        response_timeout: float = 10.0,
        enquire_link_interval: float = 30.0,
        inactivity_timeout: float = math.inf,
        max_pdu_size: int = 65536,
        name: str = "",
    ) -> None:
        self.stream = stream
        self.session = Session(side, max_pdu_size=max_pdu_size)
        self.window = max(1, window)
        self.response_timeout = response_timeout
        self.enquire_link_interval = enquire_link_interval
        self.inactivity_timeout = inactivity_timeout
        self.name = name
        self.closed = False
        self.last_received = trio.current_time()
        self._waiters: dict[int, _Waiter] = {}
        self._slot_freed = trio.Event()
        self.on_slot_freed: Callable[[], None] | None = None  # e.g. a connector's sender
        self._wake_writer = trio.Event()
        self._queued = 0  # generation of the latest queued bytes
        self._written = 0  # generation the writer has sent up to
        self._progress = trio.Event()
        self._cancel: trio.CancelScope | None = None
        self.extra: dict[str, Any] = {}  # owner's per-connection data (account, bind kind...)

    # -- public API -------------------------------------------------------------------------
    @property
    def state(self) -> BindState:
        return self.session.state

    def free_slots(self) -> int:
        """Requests that may be sent now without exceeding the window."""
        return self.window - len(self._waiters)

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
        self._waiters[seq] = _Waiter(trio.current_time() + limit, callback, pdu.command_id.name)
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
        """Queue a response (sequence already set from the request)."""
        if self.closed:
            return
        self.session.send(pdu)
        self._kick()

    async def unbind(self, timeout: float = 5.0) -> None:
        """Graceful close: unbind, wait for unbind_resp (bounded), close."""
        if not self.closed and self.session.bound:
            with trio.move_on_after(timeout):
                with contextlib.suppress(ConnectionClosed, ResponseTimeout, SessionError):
                    await self.request(Unbind(), timeout=timeout)
        await self.aclose()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.session.close()
        self._progress.set()
        for seq in list(self._waiters):
            self._finish(seq, None, ConnectionClosed(self.name))
        if self._cancel is not None:
            self._cancel.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await self.stream.aclose()

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
                nursery.start_soon(self._sweeper)
                if self.inactivity_timeout < math.inf:
                    nursery.start_soon(self._inactivity_watch)
                if self.enquire_link_interval < math.inf:
                    nursery.start_soon(self._keepalive)
                await self._reader(nursery, handler, batch_handler, batch_commands)
                nursery.cancel_scope.cancel()
        finally:
            await self.aclose()

    def _kick(self) -> None:
        self._queued += 1
        self._wake_writer.set()

    async def _sweeper(self) -> None:
        """Fail the requests whose response is overdue (one timer per connection, not per
        request: a cancel scope per PDU costs more than the rest of the request)."""
        interval = min(1.0, self.response_timeout / 4)
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            overdue = [(seq, w) for seq, w in self._waiters.items() if w.deadline <= now]
            for seq, waiter in overdue:
                self._finish(seq, None, ResponseTimeout(f"{waiter.name} seq {seq}"))

    async def _writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            await trio.lowlevel.checkpoint()  # let other ready tasks queue PDUs: fewer syscalls
            self._wake_writer = trio.Event()
            generation = self._queued
            data = self.session.data_to_send()
            if data:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.aclose()
                    return
            self._written = generation
            self._progress.set()
            self._progress = trio.Event()

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
        while not self.closed:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self.last_received = trio.current_time()
            batch: list[Pdu] = []
            for event in self.session.receive_data(bytes(data)):
                if isinstance(event, RequestReceived):
                    pdu = event.pdu
                    if pdu.command_id == CommandId.ENQUIRE_LINK:
                        self.session.send(pdu.response())
                    elif pdu.command_id == CommandId.UNBIND:
                        if batch and batch_handler is not None:  # what came before still counts
                            nursery.start_soon(batch_handler, self, batch)
                        self.session.send(pdu.response())
                        await self.flush()
                        await self.aclose()
                        return
                    elif batch_handler is not None and pdu.command_id in batch_commands:
                        batch.append(pdu)
                    else:
                        nursery.start_soon(handler, self, pdu)
                elif isinstance(event, ResponseReceived):
                    self._finish(event.response.sequence, event.response, None)
                elif isinstance(event, ProtocolViolation):
                    log.warning("smpp.protocol_violation", conn=self.name,
                                status=event.status, detail=event.detail, fatal=event.fatal)
                    if event.fatal:
                        await self.flush()
                        await self.aclose()
                        return
                elif isinstance(event, UnexpectedResponse):
                    log.info("smpp.unexpected_response", conn=self.name,
                             command=event.pdu.command_id.name, seq=event.pdu.sequence)
            if batch and batch_handler is not None:
                nursery.start_soon(batch_handler, self, batch)
            self._kick()

    async def _inactivity_watch(self) -> None:
        """Close the connection when the peer has sent nothing for inactivity_timeout (one
        timer for the connection, not a cancel scope per read)."""
        while True:
            deadline = self.last_received + self.inactivity_timeout
            if trio.current_time() < deadline:
                await trio.sleep_until(deadline)
                continue
            log.info("smpp.inactivity_timeout", conn=self.name)
            if self.session.bound:
                self.session.send(Unbind())  # no wait for the answer: we are leaving
                await self.flush()
            if self._cancel is not None:
                self._cancel.cancel()
            return

    async def _keepalive(self) -> None:
        """Probe the peer with enquire_link when the link has been quiet for an interval."""
        while not self.closed:
            quiet_for = trio.current_time() - self.last_received
            if quiet_for < self.enquire_link_interval:
                await trio.sleep(self.enquire_link_interval - quiet_for)
                continue
            if self.session.state is BindState.UNBINDING:
                return
            try:
                await self.request(EnquireLink())
            except ResponseTimeout:
                log.warning("smpp.enquire_link_timeout", conn=self.name)
                await self.aclose()
                return
            except (ConnectionClosed, SessionError):
                return
            self.last_received = trio.current_time()
