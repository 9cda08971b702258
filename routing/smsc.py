"""SMS channel: one operator (SMSC) connection group, i.e. N SMPP client binds.

Keeps its binds up (over TLS when configured, the SMSC verified; reconnect with exponential
backoff), sends queued submits in order at no more than the configured rate over the bound
transmitters' windows (never once their message's validity is over, and carrying what is left
of it), classifies submit_sm_resp statuses (temporary: retry later; permanent: final), and
hands every deliver_sm / data_sm to a callback.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Protocol

import structlog
import trio

from routing.channel import SendResult
from routing.settings import SmscConfig
from smpp import tls
from smpp.connection import Connection, ConnectionClosed, ResponseTimeout, Turns, WindowFull
from smpp.constants import CommandId, Status
from smpp.pdu import (
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    Pdu,
    PduError,
    SubmitSm,
)
from smpp.session import BindState, SessionError, Side
from smpp.smpptime import format_relative

log = structlog.get_logger("routing.smsc")

# Statuses after which the same message may succeed later (or elsewhere).
TEMPORARY_STATUSES = frozenset({
    Status.ESME_RTHROTTLED, Status.ESME_RMSGQFUL, Status.ESME_RSYSERR, Status.ESME_RX_T_APPN,
    Status.ESME_RINVBNDSTS,  # the bind went away under us
})
# Permanent statuses that mean "this message is malformed" (REJECTED) rather than
# "this message cannot be delivered" (UNDELIVERABLE).
REJECTING_STATUSES = frozenset({
    Status.ESME_RINVMSGLEN, Status.ESME_RINVSRCADR, Status.ESME_RINVDSTADR,
    Status.ESME_RINVSRCTON, Status.ESME_RINVSRCNPI, Status.ESME_RINVDSTTON,
    Status.ESME_RINVDSTNPI, Status.ESME_RINVESMCLASS, Status.ESME_RINVPRTFLG,
    Status.ESME_RINVREGDLVFLG, Status.ESME_RINVEXPIRY, Status.ESME_RINVSCHED,
    Status.ESME_RINVSERTYP, Status.ESME_RINVOPTPARSTREAM, Status.ESME_ROPTPARNOTALLWD,
    Status.ESME_RINVPARLEN, Status.ESME_RMISSINGOPTPARAM, Status.ESME_RINVOPTPARAMVAL,
})
THROTTLE_PAUSE = 1.0  # seconds a connector holds back after ESME_RTHROTTLED
_YIELD_EVERY = 64  # submits sent back to back before the sender lets other tasks run
RECENT_ERRORS = 5  # failures each connector remembers for `smsgw status`


class SubmitResult(SendResult):
    """What became of one submit_sm: accepted (smsc_id), or refused (temporary or not). It is
    the SendResult the SMS channel reports (provider_id is the SMSC's id), so the channel hands
    it on as it is, with no copy per submit."""

    __slots__ = ()

    def __init__(self, smsc_id: str | None, status: int, temporary: bool = False,
                 rejected: bool = False, detail: str = "", expired: bool = False) -> None:
        # rejected: permanent and caused by the message itself; expired: not sent, the
        # message's validity ran out while it waited. SendResult's other fields keep their
        # defaults (not_capable, billing: nothing an SMSC says).
        SendResult.__init__(self, smsc_id, status, temporary=temporary, rejected=rejected,
                            expired=expired, detail=detail)

    @property
    def smsc_id(self) -> str | None:
        return self.provider_id


def classify(status: int, smsc_id: str | None) -> SubmitResult:
    if status == Status.ESME_ROK:
        return SubmitResult(smsc_id or "", status)
    return SubmitResult(None, status, temporary=status in TEMPORARY_STATUSES,
                        rejected=status in REJECTING_STATUSES)


NOT_BOUND = SubmitResult(None, Status.ESME_RINVBNDSTS, temporary=True, detail="not bound")
EXPIRED = SubmitResult(None, Status.ESME_RINVEXPIRY, expired=True, detail="validity over")
SubmitDone = Callable[[SubmitResult], None]


@dataclass(slots=True)
class Submission:
    """A queued submit_sm, its validity deadline (trio clock) and who hears the result."""

    pdu: SubmitSm
    deadline: float
    done: SubmitDone
    sent_at: float = 0.0  # trio time it went on the wire


BindKind = type[BindTransceiver] | type[BindTransmitter] | type[BindReceiver]
# Answers one deliver_sm/data_sm with a command_status (a second answer to it is ignored).
class Answer(Protocol):
    """How a deliver handler answers the operator's deliver_sm / data_sm of one read."""

    def __call__(self, pdu: Pdu, status: int) -> None:
        """Answer `pdu` with `status` (once; later answers to it are ignored)."""

    def defer(self, pdu: Pdu) -> None:
        """`pdu` will be answered later, after something that may need more PDUs read from
        this bind (a receipt held until its submit_sm_resp is read): it stops counting in the
        bind's incoming window. The caller bounds how many it defers."""
# Takes the deliver_sm/data_sm read together and answers each of them, through the Answer it
# is given, as soon as that PDU's own effect is stored (one slow PDU delays only itself).
DeliverHandler = Callable[["SmscConnector", list[Pdu], Answer], Awaitable[None]]
_DELIVERIES = frozenset({CommandId.DELIVER_SM, CommandId.DATA_SM})


class _Replies:
    """The Answer of one read's deliveries over one bind."""

    __slots__ = ("conn", "unanswered")

    def __init__(self, conn: Connection, pdus: list[Pdu]) -> None:
        self.conn = conn
        self.unanswered = {id(pdu): pdu for pdu in pdus}

    def __call__(self, pdu: Pdu, status: int) -> None:
        if self.unanswered.pop(id(pdu), None) is not None:
            self.conn.respond(pdu.response(status=status))

    def defer(self, pdu: Pdu) -> None:
        if id(pdu) in self.unanswered:
            self.conn.defer(pdu)


class SmscObserver(Protocol):
    """What one connector reports as it runs, for monitoring (the daemon exports it as its
    metrics). Each call is cheap and must not raise."""

    def bound(self, delta: int) -> None:
        """A session bound (+1), or a bound session ended (-1)."""

    def submit_latency(self, seconds: float) -> None:
        """A submit_sm got its submit_sm_resp `seconds` after it went on the wire."""

    def tls_failed(self, reason: str) -> None:
        """A TLS handshake with the SMSC failed, for one of smpp.tls.REASONS."""


class _Unobserved:
    """The SmscObserver of a connector given none: its reports go nowhere."""

    __slots__ = ()

    def bound(self, delta: int) -> None:
        pass

    def submit_latency(self, seconds: float) -> None:
        pass

    def tls_failed(self, reason: str) -> None:
        pass


UNOBSERVED: SmscObserver = _Unobserved()


class RateLimiter:
    """Evenly spaced slots at `rate` per second (0 or less: unlimited)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_slot = -math.inf
        self.paused_until = -math.inf

    async def acquire(self) -> None:
        now = trio.current_time()
        slot = max(now, self.next_slot, self.paused_until)
        self.next_slot = slot + self.interval
        if slot > now:
            await trio.sleep_until(slot)

    def limited(self) -> bool:
        """Whether acquire() may have to wait (a rate is set, or a pause was asked for)."""
        paused_until = self.paused_until  # -inf until a pause: no clock read per submit then
        return self.interval > 0 or (paused_until > -math.inf
                                     and paused_until > trio.current_time())

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, trio.current_time() + seconds)

    def set_rate(self, rate: float) -> None:
        """From now on `rate` per second (0 or less: unlimited); the next slot keeps its place."""
        self.interval = 1.0 / rate if rate > 0 else 0.0


class SmscConnector:
    """All binds to one operator. `run()` keeps them up and sends what `submit_nowait()`
    queues."""

    channel = "sms"

    def __init__(self, config: SmscConfig, on_deliver: DeliverHandler | None = None,
                 observer: SmscObserver = UNOBSERVED) -> None:
        self.config = config
        self.name = config.name
        self.on_deliver = on_deliver
        self.limiter = RateLimiter(config.throughput)
        self.observer = observer  # binds, submit latencies, TLS failures (the daemon's metrics)
        self._transmitters: list[Connection] = []
        self._receivers: list[Connection] = []
        self._turns = Turns()  # which transmitter sends next
        self._up_changed = trio.Event()
        self._queue: deque[Submission] = deque()
        self._queued = trio.Event()  # set when the queue gets an item
        self._slot = trio.Event()  # set when a window slot frees or the binds change
        self._sending = trio.CancelScope()  # the sender's: cancelled by stop_sending()
        self._sender_done = trio.Event()  # the sender's task has ended
        self._run_scope: trio.CancelScope | None = None  # run()'s: cancelled by close()
        self._run_done = trio.Event()  # run() has returned
        self._closing = False  # close() began: no more binds
        # The bind slots this process may use (several gateway nodes share the SMSC's binds
        # and throughput, see set_slots); None: all its configured binds.
        self._slots: frozenset[int] | None = None
        self._bind_scopes: dict[int, trio.CancelScope] = {}  # by index in _kinds()
        self._binds_nursery: trio.Nursery | None = None
        self._unanswered = 0  # submit_sm on the wire without their answer yet
        self._answer = trio.Event()  # set when one of them gets its answer
        self._delivering = 0  # reads of deliver_sm / data_sm being handled
        self._delivered = trio.Event()  # set when one of them is handled
        # The latest failures (connect, TLS, bind, submit), newest last, for `smsgw status`:
        # (trio time, what, detail).
        self.errors: deque[tuple[float, str, str]] = deque(maxlen=RECENT_ERRORS)
        self.tls_context = None
        if config.tls:
            self.tls_context = tls.client_context(config.tls_ca, config.tls_verify,
                                                  config.tls_cert, config.tls_key,
                                                  config.tls_min_version)

    # -- state --------------------------------------------------------------------------
    def is_up(self) -> bool:
        return bool(self._transmitters)

    def bound(self) -> tuple[int, int]:
        """(transmitting, receiving) sessions bound now (a transceiver counts in both)."""
        return len(self._transmitters), len(self._receivers)

    def _error(self, what: str, detail: str) -> None:
        self.errors.append((trio.current_time(), what, detail))

    @property
    def capacity(self) -> int:
        """How many submits may be outstanding at once over the configured binds."""
        return max(1, self.config.window * self.config.binds)

    async def wait_changed(self) -> None:
        """Return at the next bind or unbind of this connection group."""
        await self._up_changed.wait()

    def _changed(self) -> None:
        self._up_changed.set()
        self._up_changed = trio.Event()
        self._slot.set()

    def _slot_freed(self) -> None:
        self._slot.set()

    # -- binds ----------------------------------------------------------------------------
    def _kinds(self) -> list[BindKind]:
        """The binds to run, by index; slot i is index i (and binds + i for its receiver)."""
        cfg = self.config
        if cfg.bind_mode == "transceiver":
            return [BindTransceiver] * cfg.binds
        return [*([BindTransmitter] * cfg.binds), *([BindReceiver] * cfg.binds)]

    @property
    def slots(self) -> frozenset[int] | None:
        """The bind slots this process may use (set_slots); None: all its binds."""
        return self._slots

    def set_slots(self, slots: Collection[int]) -> None:
        """Run only the binds of these slots (0 to binds - 1), at their share of the
        configured throughput (throughput / binds each): several gateway nodes share the
        SMSC's binds and contract this way. Binds of slots taken away are unbound at once."""
        cfg = self.config
        allowed = frozenset(s for s in slots if 0 <= s < cfg.binds)
        if allowed == self._slots:
            return
        self._slots = allowed
        if cfg.throughput > 0:
            self.limiter.set_rate(cfg.throughput * len(allowed) / cfg.binds)
        log.info("smsc.slots", smsc=cfg.name, slots=sorted(allowed), of=cfg.binds)
        if self._binds_nursery is not None:
            self._start_binds(self._binds_nursery)

    def _start_binds(self, nursery: trio.Nursery) -> None:
        """Bind loops for the allowed slots not running, and an end to the others'."""
        binds = self.config.binds
        for index, kind in enumerate(self._kinds()):
            wanted = self._slots is None or index % binds in self._slots
            scope = self._bind_scopes.get(index)
            if wanted and scope is None and not self._closing:
                nursery.start_soon(self._run_bind, kind, index)
            elif not wanted and scope is not None:
                scope.cancel()

    async def _run_bind(self, kind: BindKind, index: int) -> None:
        with trio.CancelScope() as scope:
            self._bind_scopes[index] = scope
            try:
                await self._bind_loop(kind, index)
            finally:
                if self._bind_scopes.get(index) is scope:
                    del self._bind_scopes[index]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        if cfg.tls and not cfg.tls_verify:
            log.warning("smsc.tls_unverified", smsc=cfg.name,
                        detail=tls.UNVERIFIED.format(name=cfg.name))
        try:
            async with trio.open_nursery() as nursery:
                self._run_scope = nursery.cancel_scope
                if self._closing:  # closed before it ran
                    nursery.cancel_scope.cancel()
                self._binds_nursery = nursery
                self._start_binds(nursery)
                nursery.start_soon(self._sender)
                task_status.started()
        finally:
            self._run_done.set()

    async def _bind_loop(self, kind: BindKind, index: int) -> None:
        cfg = self.config
        delay = cfg.reconnect_delay
        name = f"{cfg.name}#{index}"
        while not self._closing:
            bound = await self._one_session(kind, name)
            if self._closing:
                return
            if bound:
                delay = cfg.reconnect_delay
            log.info("smsc.reconnect_wait", smsc=cfg.name, bind=name, delay=delay)
            await trio.sleep(delay)
            delay = min(delay * 2, cfg.reconnect_delay_max)

    async def _one_session(self, kind: BindKind, name: str) -> bool:
        cfg = self.config
        try:
            # bounded: a black-holed SMSC address would otherwise hang here for minutes
            with trio.fail_after(cfg.response_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(cfg.host, cfg.port)
        except (OSError, trio.TooSlowError) as exc:
            log.warning("smsc.connect_failed", smsc=cfg.name, bind=name,
                        error=str(exc) or "connect timed out")
            self._error("connect", str(exc) or "connect timed out")
            return False
        if self.tls_context is not None:
            secured = await self._tls_handshake(stream, name)
            if secured is None:
                return False
            stream = secured
        conn = Connection(stream, Side.ESME, window=cfg.window,
                          response_timeout=cfg.response_timeout,
                          enquire_link_interval=cfg.enquire_link_interval,
                          write_timeout=cfg.write_timeout,
                          incoming_window=cfg.incoming_window, name=name)
        conn.on_slot_freed = self._slot_freed
        bound = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(
                    conn.run, self._handle_request, batch_handler=self._handle_deliveries,
                    batch_commands=_DELIVERIES))
                bind = kind(system_id=cfg.system_id, password=cfg.password,
                            system_type=cfg.system_type, interface_version=cfg.interface_version,
                            address_range=cfg.address_range)
                try:
                    resp = await conn.request(bind)
                except (ResponseTimeout, ConnectionClosed, SessionError) as exc:
                    log.warning("smsc.bind_failed", smsc=cfg.name, bind=name, error=repr(exc))
                    self._error("bind", repr(exc))
                    await conn.aclose()
                    return False
                if resp.status != Status.ESME_ROK:
                    log.warning("smsc.bind_refused", smsc=cfg.name, bind=name,
                                status=f"0x{resp.status:08X}")
                    self._error("bind", f"refused: command_status 0x{resp.status:08X}")
                    await conn.aclose()
                    return False
                bound = True
                self.observer.bound(1)
                log.info("smsc.bound", smsc=cfg.name, bind=name, mode=kind.__name__)
                if conn.state in (BindState.BOUND_TX, BindState.BOUND_TRX):
                    self._transmitters.append(conn)
                if conn.state in (BindState.BOUND_RX, BindState.BOUND_TRX):
                    self._receivers.append(conn)
                self._changed()
        finally:
            for pool in (self._transmitters, self._receivers):
                if conn in pool:
                    pool.remove(conn)
            self._changed()
            if not conn.closed:
                with trio.CancelScope(shield=True):
                    await conn.unbind(timeout=2)
            if bound:
                self.observer.bound(-1)
                log.info("smsc.unbound", smsc=cfg.name, bind=name)
        return bound

    async def _tls_handshake(self, stream: trio.abc.Stream,
                             name: str) -> trio.SSLStream[trio.abc.Stream] | None:
        """The TLS stream once the SMSC is verified (within response_timeout); None, counted
        and logged, when the handshake failed: a failed connect, retried with backoff."""
        cfg = self.config
        assert self.tls_context is not None
        secured = trio.SSLStream(stream, self.tls_context,
                                 server_hostname=cfg.tls_server_name or cfg.host)
        try:
            failed = await tls.handshake(secured, cfg.response_timeout)
        except BaseException:  # cancelled: leave no socket behind
            await trio.aclose_forcefully(stream)
            raise
        if failed is None:
            return secured
        self.observer.tls_failed(failed.reason)
        log.warning("smsc.tls_failed", smsc=cfg.name, bind=name, reason=failed.reason,
                    detail=failed.detail)
        self._error("tls", f"{failed.reason}: {failed.detail}")
        await trio.aclose_forcefully(stream)
        return None

    async def _handle_deliveries(self, conn: Connection, pdus: list[Pdu]) -> None:
        """Receipts and MO: the handler answers each once its effect is committed. What it
        leaves unanswered (it failed, or forgot one) gets a temporary error: the SMSC resends."""
        self._delivering += 1
        try:
            await self._deliver(conn, pdus)
        finally:
            self._delivering -= 1
            self._delivered.set()

    async def _deliver(self, conn: Connection, pdus: list[Pdu]) -> None:
        replies = _Replies(conn, pdus)
        try:
            if self.on_deliver is None:  # no channel attached yet: the SMSC sends them again
                log.warning("smsc.deliver_unattached", smsc=self.name, pdus=len(pdus))
                return
            await self.on_deliver(self, pdus, replies)
        except Exception:
            log.exception("smsc.deliver_handler_failed", smsc=self.name)
        else:
            if replies.unanswered:
                log.error("smsc.deliver_unanswered", smsc=self.name,
                          pdus=len(replies.unanswered))
        for pdu in list(replies.unanswered.values()):
            replies(pdu, Status.ESME_RX_T_APPN)

    async def _handle_request(self, conn: Connection, pdu: Pdu) -> None:
        if pdu.command_id == CommandId.ALERT_NOTIFICATION:
            log.info("smsc.alert_notification", smsc=self.name)
        else:
            conn.respond(pdu.response(status=Status.ESME_RINVCMDID))

    # -- submitting -----------------------------------------------------------------------
    def submit_nowait(self, pdu: SubmitSm, deadline: float, done: SubmitDone) -> None:
        """Queue a submit_sm. `done` later gets its result exactly once (from the connector's
        tasks): accepted with the operator's id, refused, not bound, or expired (not sent
        because trio time reached `deadline` first). The PDU's validity_period is set, when
        it is sent, to the time left until the deadline."""
        self._queue.append(Submission(pdu, deadline, done))
        self._queued.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def _sender(self) -> None:
        """Send the queue in order until stop_sending()."""
        try:
            with self._sending:
                await self._send_queue()
        finally:
            self._sender_done.set()

    async def _send_queue(self) -> None:
        """Send the queue in order: rate limit, a free window slot, validity check, wire."""
        sent = 0
        while True:
            if not self._queue:
                self._queued = trio.Event()
                await self._queued.wait()
            # left queued while it waits for its turn: stop_sending() leaves it there (and
            # withdraw() hands it back)
            item = self._queue[0]
            try:
                if self.limiter.limited():
                    await self.limiter.acquire()
                # A free transmitter now (the usual case) is what _wait_ready would find first,
                # without a coroutine per submit. Neither takes a turn: _send takes the one turn
                # of the submit (two per submit sent every submit over the same one of two binds).
                ready = self._ready_now() or await self._wait_ready()
                self._queue.popleft()
                if not ready:
                    item.done(NOT_BOUND)
                    continue
                remaining = item.deadline - trio.current_time()
                if remaining <= 0:
                    item.done(EXPIRED)
                    continue
                item.pdu.validity_period = format_relative(max(1.0, remaining))
                self._send(item)
            except Exception:  # a bug must not stop the queue: the message is retried
                log.exception("smsc.submit_failed", smsc=self.name)
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()
                item.done(SubmitResult(None, Status.ESME_RSYSERR, temporary=True,
                                       detail="internal error"))
            sent += 1
            if sent % _YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()

    def _free_transmitter(self) -> Connection | None:
        """The transmitter whose turn it is to send (a free window slot); its turn taken."""
        return self._turns.pick(self._transmitters)

    def _ready_now(self) -> bool:
        """Whether a bound transmitter has a free window slot now; no turn taken."""
        return self._turns.can_pick(self._transmitters)

    async def _wait_ready(self) -> bool:
        """Wait until a bound transmitter has a free window slot; False if none is bound."""
        while not self._ready_now():
            if not self._transmitters:
                return False
            if self._slot.is_set():
                self._slot = trio.Event()
            await self._slot.wait()
        return True

    def _send(self, item: Submission) -> None:
        """Put one submit_sm on the wire (a slot is free: see _wait_ready); its answer
        reaches item.done through _answered."""
        conn = self._free_transmitter()
        if conn is None:
            item.done(NOT_BOUND)
            return
        try:
            item.sent_at = trio.current_time()
            conn.send_request(item.pdu, functools.partial(self._answered, item))
            self._unanswered += 1
        except (ConnectionClosed, SessionError, WindowFull) as exc:
            item.done(SubmitResult(None, Status.ESME_RINVBNDSTS, temporary=True,
                                   detail=repr(exc)))
        except PduError as exc:  # the message cannot be encoded: resending will not help
            log.warning("smsc.unencodable_submit", smsc=self.name, error=str(exc))
            item.done(SubmitResult(None, Status.ESME_RSYSERR, rejected=True, detail=str(exc)))

    def _answered(self, item: Submission, resp: Pdu | None, error: Exception | None) -> None:
        self._unanswered -= 1
        self._answer.set()
        if resp is None:
            if isinstance(error, ResponseTimeout):
                result = SubmitResult(None, Status.ESME_RSYSERR, temporary=True,
                                      detail="timeout")
            else:
                result = SubmitResult(None, Status.ESME_RINVBNDSTS, temporary=True,
                                      detail=repr(error))
        else:
            self.observer.submit_latency(trio.current_time() - item.sent_at)
            if resp.status == Status.ESME_RTHROTTLED:
                self.limiter.pause(THROTTLE_PAUSE)
            message_id = getattr(resp, "message_id", None)
            result = classify(resp.status, message_id if isinstance(message_id, str) else None)
            if result.ok and not result.smsc_id:
                # Accepted all the same: resending would duplicate. No receipt can be matched.
                log.warning("smsc.empty_message_id", smsc=self.name)
        if not result.ok:
            self._error("submit", result.detail or f"command_status 0x{result.status:08X}")
        item.done(result)

    # -- graceful shutdown -------------------------------------------------------------------
    def stop_sending(self) -> None:
        """Put nothing more on the wire: what is queued stays unsent (and unanswered: its
        messages are resumed from the store after the restart). Receipts are still taken."""
        self._sending.cancel()

    async def withdraw(self, result: SubmitResult) -> int:
        """Stop sending (see stop_sending) and hand every submit still queued back to its
        `done` with `result` (a connector removed by a reload: its messages are retried or
        fail over); how many were handed back. Submits on the wire keep their answers."""
        self.stop_sending()
        if self._run_scope is not None:  # its sender ran: wait until it let go of the queue
            await self._sender_done.wait()
        withdrawn = 0
        while self._queue:
            self._queue.popleft().done(result)
            withdrawn += 1
        return withdrawn

    @property
    def unanswered(self) -> int:
        """submit_sm sent and not answered yet (nor timed out, nor lost with their bind)."""
        return self._unanswered

    async def wait_answered(self) -> None:
        """Return once every submit_sm sent has its answer (each is bounded by
        response_timeout, or by its bind going down)."""
        while self._unanswered > 0:
            self._answer = trio.Event()
            await self._answer.wait()

    async def wait_delivered(self) -> None:
        """Return once no deliver_sm / data_sm read is being handled (each answered: its
        answer is queued before anything this connector sends later, e.g. an unbind)."""
        while self._delivering > 0:
            self._delivered = trio.Event()
            await self._delivered.wait()

    @property
    def sessions(self) -> int:
        """Sessions bound now (a transceiver counts once)."""
        return len(set(self._transmitters) | set(self._receivers))

    async def close(self) -> None:
        """Unbind every session, all at once, and bind no more (graceful shutdown, or a
        connector removed by a reload): run() then returns."""
        self._closing = True
        async with trio.open_nursery() as nursery:
            for conn in set(self._transmitters) | set(self._receivers):
                nursery.start_soon(conn.unbind, 2.0)
        if self._run_scope is not None:  # its bind loops may be waiting to reconnect
            self._run_scope.cancel()
            await self._run_done.wait()
