"""ESME-facing SMPP server: upstream systems bind here and submit messages.

Authenticates binds against the configured accounts (gateway.auth decides; max binds per
account here), enforces each account's submit rate, turns submits into stored
messages (answered only after the commit that holds them), answers query_sm from the store,
cancels and replaces messages not sent yet (cancel_sm, replace_sm, through the dispatcher),
and registers receiver/transceiver binds with the reporter for receipts and MO.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog
import trio

from gateway import history, metrics
from gateway.auth import Authenticator, Verdict
from gateway.clock import WallClock
from gateway.config import AccountConfig, ListenerConfig, cleartext_listener
from gateway.dispatcher import ChangeRefused, Dispatcher
from gateway.intake import (
    IntakeError,
    IntakePolicy,
    MultiResult,
    Replacement,
    accept_multi,
    accept_replace,
    accept_submit,
)
from gateway.model import Event, Message, State
from gateway.reporter import Reporter
from gateway.screening import Screening
from gateway.store import Store, StoreBusy, StoreError
from smpp import tls
from smpp.connection import Connection, LogBudget, shorten
from smpp.constants import CommandId, MessageState, Status, Tag
from smpp.pdu import (
    Bind,
    BindReceiver,
    BindTransceiver,
    CancelSm,
    DataSm,
    Pdu,
    QuerySm,
    ReplaceSm,
    SubmitMulti,
    SubmitSm,
    UnsuccessSme,
    set_tlv_int,
)
from smpp.session import BindState, Side
from smpp.smpptime import format_absolute

log = structlog.get_logger("gateway.server")

# A message's state as query_sm tells it (SMPP 3.4 5.2.28).
STATE_TO_SMPP = {
    State.DELIVERED: MessageState.DELIVERED,
    State.UNDELIVERABLE: MessageState.UNDELIVERABLE,
    State.EXPIRED: MessageState.EXPIRED,
    State.REJECTED: MessageState.REJECTED,
    State.CANCELLED: MessageState.DELETED,
    State.QUEUED: MessageState.ENROUTE,
    State.SCHEDULED: MessageState.ENROUTE,
    State.IN_FLIGHT: MessageState.ENROUTE,
    State.ACCEPTED: MessageState.ACCEPTED,
}


_BATCHED = frozenset({CommandId.SUBMIT_SM, CommandId.DATA_SM})
# The metric label of each bind's mode (smsgw_upstream_binds{account,mode}).
UPSTREAM_BIND_MODES = {CommandId.BIND_TRANSMITTER: "tx", CommandId.BIND_RECEIVER: "rx",
                       CommandId.BIND_TRANSCEIVER: "trx"}
UNBOUND_GRACE = 1.0  # seconds a new connection may take to send its bind before it is evictable
# accept() errors that mean "out of resources for now", not "the listener is broken"
_ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class TokenBucket:
    """Admission at `rate` per second with bursts of up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = trio.current_time()

    def take(self, count: int = 1) -> bool:
        """Admit `count` messages (a submit_multi's destinations) when the bucket holds
        min(count, capacity) tokens; a request larger than a burst runs the bucket into debt,
        repaid at `rate` before anything else is admitted, so the average rate holds."""
        if self.rate <= 0:
            return True
        now = trio.current_time()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= min(count, self.capacity):
            self.tokens -= count
            return True
        return False

    def set_rate(self, rate: float) -> None:
        """From now on `rate` per second (several nodes share the account's throughput: this
        node's share); the tokens held stay, up to the new burst."""
        self.take(0)  # the tokens earned so far at the old rate
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = min(self.tokens, self.capacity)

    def retry_after(self, count: int = 1) -> float:
        """Seconds until take(count) would admit (0.0 when it would now)."""
        if self.rate <= 0:
            return 0.0
        tokens = min(self.capacity,
                     self.tokens + (trio.current_time() - self.stamp) * self.rate)
        return max(0.0, (min(count, self.capacity) - tokens) / self.rate)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def address_group(address: str) -> str:
    """The key connections are counted under: the IPv4 address, or the /64 network of an
    IPv6 address (one customer or attacker typically holds a whole /64, so counting single
    IPv6 addresses would count nothing). Failed binds are counted per address, not group: a
    neighbour in a shared /64 must not lock a customer out."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ip in _NAT64:  # an IPv4 client through a NAT64 translator: that IPv4 address
            return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(eq=False, slots=True)
class _Unbound:
    """A connection accepted and not bound yet: its scope, to close it to make room."""

    address: str  # its address group (see address_group)
    peer: str  # its own address
    since: float = field(default_factory=trio.current_time)  # accepted, or TLS established
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    conn: Connection | None = None  # None during the TLS handshake
    refused: bool = False  # its bind is refused: it only waits out the failure delay


@dataclass(eq=False)
class _AccountState:
    config: AccountConfig
    bucket: TokenBucket
    binds: set[Connection] = field(default_factory=set)
    admitting: int = 0  # messages accepted by intake, not yet handed to the dispatcher


def account_states(accounts: Mapping[str, AccountConfig]) -> dict[str, _AccountState]:
    """The live state of each account (rate bucket, binds, messages being admitted): make it
    once and give it to every listener, so that an account's throughput, max_binds and
    max_unfinished are the account's, not each listener's."""
    return {name: account_state(cfg) for name, cfg in accounts.items()}


def account_state(config: AccountConfig) -> _AccountState:
    return _AccountState(config, TokenBucket(config.throughput))


class SmppServer:
    """One SMPP listener. `serve()` runs until cancelled."""

    def __init__(
        self,
        listener: ListenerConfig,
        accounts: Mapping[str, AccountConfig],
        store: Store,
        dispatcher: Dispatcher,
        reporter: Reporter,
        clock: WallClock,
        *,
        validity: float,
        node: str = "smsgw",
        states: dict[str, _AccountState] | None = None,
        screening: Screening | None = None,
    ) -> None:
        self.listener = listener
        self.screening = screening  # the rules (rules/): None runs none
        self.store = store
        self.dispatcher = dispatcher
        self.reporter = reporter
        self.clock = clock
        self.validity = validity
        self.node = node
        self.accounts = states if states is not None else account_states(accounts)
        self.port: int | None = None
        self.connections: set[Connection] = set()
        self._starting = 0  # accepted, Connection not made yet
        self._unbound: dict[_Unbound, None] = {}  # accepted, not bound yet, oldest first
        self._per_address: dict[str, int] = {}  # open connections per source address
        self._label = f"{listener.host}:{listener.port}"
        self._accepting = trio.CancelScope()  # the accept loops': cancelled by stop_accepting()
        self._refusal_log = LogBudget()
        self._unbound_log = LogBudget()  # protocol problems of unbound peers, all together
        self._tls_log = LogBudget()
        self.auth = Authenticator(listener)
        self.tls_context = None
        if listener.tls_cert is not None and listener.tls_key is not None:
            self.tls_context = tls.server_context(listener.tls_cert, listener.tls_key,
                                                  listener.tls_client_ca,
                                                  listener.tls_min_version)

    def policy(self, account: AccountConfig) -> IntakePolicy:
        return IntakePolicy(self.validity, account.validity, account.max_parts)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.listener
        listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
        sock = listeners[0].socket
        self.port = int(sock.getsockname()[1])
        log.info("listener.ready", host=cfg.host, port=self.port,
                 tls=self.tls_context is not None)
        cleartext = cleartext_listener(cfg)
        if cleartext is not None:
            log.warning("listener.cleartext", listener=self._label, detail=cleartext)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_until_stopped, listener, nursery)
            task_status.started(self.port)

    async def _accept_until_stopped(self, listener: trio.SocketListener,
                                    nursery: trio.Nursery) -> None:
        with self._accepting:
            await self._accept_loop(listener, nursery)
        await listener.aclose()  # new connections are refused, not left in the backlog

    def stop_accepting(self) -> None:
        """Graceful shutdown: close the listening socket and the connections not bound yet
        (their bind is not answered); bound sessions go on until close_all()."""
        self._accepting.cancel()
        for pending in list(self._unbound):
            pending.scope.cancel()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept connections; over a limit one is closed at once, before any allocation
        (no task, no session): per listener, per source address, and on connections not
        bound yet (see _make_room)."""
        cfg = self.listener
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                    raise
                # out of file descriptors or memory: wait for connections to go, don't spin
                self._note_refusal("resources", f"accept failed: {exc.strerror}")
                await trio.sleep(0.1)
                continue
            try:
                peer = str(stream.socket.getpeername()[0])
            except OSError:  # already gone
                stream.socket.close()
                continue
            address = address_group(peer)
            reason = None
            if len(self.connections) + self._starting >= cfg.max_connections:
                reason = "listener"
            elif self._per_address.get(address, 0) >= cfg.max_connections_per_address:
                reason = "address"
            elif self._unbound_of(address) >= cfg.max_unbound_per_address:
                reason = "unbound_address"
            elif len(self._unbound) >= cfg.max_unbound_connections:
                if self.auth.locked_out(peer):
                    reason = "locked_out"  # the lowest claim to a place: none is made for it
                elif not self._make_room():
                    reason = "unbound"
            if reason is not None:
                stream.socket.close()
                self._note_refusal(reason, address)
                continue
            self._per_address[address] = self._per_address.get(address, 0) + 1
            self._starting += 1
            pending = _Unbound(address, peer)
            self._unbound[pending] = None
            nursery.start_soon(self._handle_stream, stream, address, pending)

    def _make_room(self) -> bool:
        """At the unbound-connection limit, close to make room, the oldest of the first kind
        found: a connection waiting out the delay of its refused bind; one that has sent no
        bind UNBOUND_GRACE seconds after connecting (a client binds at once; one that doesn't
        is holding a place); one from an address locked out or with failed binds. False if
        there is none: every unbound connection is a bind being decided for a clean address
        (the newcomer is refused)."""
        now = trio.current_time()
        kinds: tuple[Callable[[_Unbound], bool], ...] = (
            lambda p: p.refused,
            lambda p: now - p.since >= UNBOUND_GRACE and (
                p.conn is None or p.conn.state is BindState.OPEN),
            lambda p: self.auth.failing(p.peer),
        )
        for kind in kinds:
            victim = next((p for p in self._unbound if kind(p)), None)
            if victim is not None:
                del self._unbound[victim]
                victim.scope.cancel()
                metrics.child(metrics.CONNECTIONS_REFUSED, self._label, "evicted").inc()
                return True
        return False

    def _unbound_of(self, address: str) -> int:
        return sum(1 for p in self._unbound if p.address == address)

    def _note_refusal(self, reason: str, address: str) -> None:
        metrics.child(metrics.CONNECTIONS_REFUSED, self._label, reason).inc()
        held = self._refusal_log.take(trio.current_time())
        if held is not None:
            log.warning("listener.connection_refused", listener=self._label, reason=reason,
                        peer=shorten(address), connections=len(self.connections),
                        suppressed=held)

    async def close_all(self) -> None:
        """Unbind every upstream session (graceful shutdown)."""
        async with trio.open_nursery() as nursery:
            for conn in list(self.connections):
                nursery.start_soon(conn.unbind, 2.0)

    async def _handle_stream(self, stream: trio.SocketStream, address: str,
                             pending: _Unbound) -> None:
        try:
            with pending.scope:
                await self._serve_stream(stream, address, pending)
        except Exception:  # a bug with one connection must not take the listener down
            log.exception("upstream.connection_failed", address=shorten(address))
        finally:
            self._unbound.pop(pending, None)
            conn = pending.conn
            if conn is None:
                self._starting -= 1
                stream.socket.close()
            else:
                if not conn.closed:
                    with trio.CancelScope(shield=True):
                        await conn.aclose()
                self.connections.discard(conn)
                self._unregister(conn)
            left = self._per_address.get(address, 1) - 1
            if left > 0:
                self._per_address[address] = left
            else:
                self._per_address.pop(address, None)

    async def _serve_stream(self, stream: trio.SocketStream, address: str,
                            pending: _Unbound) -> None:
        """TLS handshake (if any), then the SMPP session until it ends; the Connection is
        left in pending.conn."""
        cfg = self.listener
        try:
            port = stream.socket.getpeername()[1]
        except OSError:
            port = 0
        name = f"{address}:{port}"
        smpp_stream: trio.abc.Stream = stream
        bind_timeout = cfg.bind_timeout  # for the TLS handshake and the bind together
        if self.tls_context is not None:
            started = trio.current_time()
            secured = await self._tls_handshake(stream, name)
            if secured is None:
                return
            smpp_stream = secured
            bind_timeout -= trio.current_time() - started
            pending.since = trio.current_time()  # the grace to send a bind starts now
        conn = Connection(smpp_stream, Side.SMSC, window=cfg.window,
                          response_timeout=cfg.response_timeout,
                          enquire_link_interval=cfg.enquire_link_interval,
                          inactivity_timeout=cfg.inactivity_timeout,
                          bind_timeout=bind_timeout, write_timeout=cfg.write_timeout,
                          incoming_window=cfg.incoming_window,
                          max_pdu_size=cfg.max_pdu_size, name=name,
                          unbound_log=self._unbound_log)
        conn.extra["address"] = address
        conn.extra["peer"] = pending.peer
        conn.extra["pending"] = pending
        pending.conn = conn
        self.connections.add(conn)
        self._starting -= 1
        await conn.run(self._handle, batch_handler=self._submit_batch,
                       batch_commands=_BATCHED)

    async def _tls_handshake(self, stream: trio.SocketStream,
                             name: str) -> trio.SSLStream[trio.SocketStream] | None:
        """The TLS stream once the handshake is done within bind_timeout; None (counted, and
        logged within a budget) when it failed."""
        assert self.tls_context is not None
        secured = trio.SSLStream(stream, self.tls_context, server_side=True)
        failed = await tls.handshake(secured, self.listener.bind_timeout)
        if failed is None:
            return secured
        metrics.child(metrics.TLS_HANDSHAKE_FAILURES, self._label, failed.reason).inc()
        held = self._tls_log.take(trio.current_time())
        if held is not None:
            log.warning("listener.tls_handshake_failed", listener=self._label, conn=name,
                        reason=failed.reason, detail=shorten(failed.detail), suppressed=held)
        return None

    def _unregister(self, conn: Connection) -> None:
        account = conn.extra.get("account")
        if account is None:
            return
        state = self.accounts.get(account)  # None: a reload removed the account
        if state is not None:
            state.binds.discard(conn)
        self.reporter.bind_removed(account, conn)
        metrics.UPSTREAM_BINDS.labels(account, conn.extra["mode"]).dec()
        log.info("upstream.unbound", account=account, conn=conn.name)

    # -- requests -----------------------------------------------------------------------------
    async def _handle(self, conn: Connection, pdu: Pdu) -> None:
        try:
            if isinstance(pdu, Bind):
                await self._bind(conn, pdu)
            elif isinstance(pdu, SubmitSm | DataSm):
                await self._submit_batch(conn, [pdu])
            elif isinstance(pdu, SubmitMulti):
                await self._submit_multi(conn, pdu)
            elif isinstance(pdu, QuerySm):
                await self._query(conn, pdu)
            elif isinstance(pdu, CancelSm):
                await self._cancel(conn, pdu)
            elif isinstance(pdu, ReplaceSm):
                await self._replace(conn, pdu)
            else:
                conn.respond(pdu.response(status=Status.ESME_RINVCMDID))
        except Exception:
            log.exception("upstream.handler_failed", conn=conn.name,
                          command=pdu.command_id.name)
            conn.respond(pdu.response(status=Status.ESME_RSYSERR))

    async def _bind(self, conn: Connection, pdu: Bind) -> None:
        # A second bind while this one is being decided is answered by the session
        # (ESME_RALYBND): it is never handed here.
        state = self.accounts.get(pdu.system_id)
        source = conn.extra["peer"]
        pending: _Unbound = conn.extra["pending"]

        def refused() -> None:
            pending.refused = True  # waiting out a delay: evictable for a newcomer

        verdict = await self.auth.check(source, pdu.system_id, pdu.password,
                                        state.config.password_hash if state else None,
                                        refused)
        reason, status = verdict.value, verdict.status
        if state is not None and verdict is Verdict.ACCEPTED \
                and len(state.binds) >= state.config.max_binds:
            reason, status = "max_binds", Status.ESME_RBINDFAIL
        if status != Status.ESME_ROK or state is None:
            metrics.child(metrics.BIND_FAILURES, reason).inc()
            if verdict is not Verdict.LOCKED_OUT:  # a lockout is logged once, when it starts
                log.warning("upstream.bind_refused", system_id=shorten(pdu.system_id, 32),
                            conn=conn.name, reason=reason, status=f"0x{status:08X}")
            conn.respond(pdu.response(status=status))
            await conn.flush()
            await conn.aclose()
            return
        resp = pdu.response(system_id=self.node)
        set_tlv_int(resp, Tag.SC_INTERFACE_VERSION, 0x34, 1)
        conn.respond(resp)
        mode = UPSTREAM_BIND_MODES[pdu.command_id]
        conn.extra.update(account=pdu.system_id, mode=mode)
        self._unbound.pop(conn.extra["pending"], None)  # bound: no longer evictable
        state.binds.add(conn)
        metrics.UPSTREAM_BINDS.labels(pdu.system_id, mode).inc()
        if isinstance(pdu, BindReceiver | BindTransceiver):
            self.reporter.bind_added(pdu.system_id, conn)
        log.info("upstream.bound", account=pdu.system_id, mode=mode, conn=conn.name)

    def _admit(self, conn: Connection, pdu: Pdu, count: int = 1,
               submits: bool = True) -> _AccountState | None:
        """The account's state if it may submit `count` messages now; else answered:
        ESME_RTHROTTLED over its throughput, ESME_RMSGQFUL when it has max_unfinished
        messages not final yet (one account cannot fill the gateway for the others)."""
        account = conn.extra.get("account")
        state = self.accounts.get(account) if account else None
        if state is None:
            conn.respond(pdu.response(status=Status.ESME_RINVBNDSTS))
            return None
        unfinished = self.dispatcher.unfinished_of(state.config.system_id) + state.admitting
        if submits and unfinished + count > state.config.max_unfinished:
            metrics.child(metrics.REFUSED, state.config.system_id,
                          metrics.status_label(Status.ESME_RMSGQFUL)).inc()
            conn.respond(pdu.response(status=Status.ESME_RMSGQFUL))
            return None
        if not state.bucket.take(count):
            metrics.child(metrics.REFUSED, state.config.system_id, "throttled").inc()
            conn.respond(pdu.response(status=Status.ESME_RTHROTTLED))
            return None
        return state

    def _refuse(self, conn: Connection, pdu: Pdu, account: str, exc: IntakeError) -> None:
        log.info("upstream.submit_refused", account=account, status=f"0x{exc.status:08X}",
                 detail=exc.detail)
        metrics.child(metrics.REFUSED, account, metrics.status_label(exc.status)).inc()
        conn.respond(pdu.response(status=exc.status))

    def _store_failed(self, account: str, messages: int, exc: Exception) -> int:
        """The status for submits the store did not take: ESME_RMSGQFUL (temporary: try
        again later) when it pushes back, ESME_RSYSERR when it failed (the store counts and
        logs its own failures; anything else is a bug, logged here)."""
        status = Status.ESME_RMSGQFUL if isinstance(exc, StoreBusy) else Status.ESME_RSYSERR
        if not isinstance(exc, StoreError):
            log.error("upstream.store_failed", account=account, messages=messages,
                      exc_info=exc)
        metrics.child(metrics.REFUSED, account, f"0x{status:08X}").inc(messages)
        return status

    def _refuse_rule(self, conn: Connection, pdu: Pdu, account: str, status: int,
                     reason: str) -> None:
        log.info("upstream.submit_refused", account=account, status=f"0x{status:08X}",
                 detail=f"refused by rule: {reason}")
        metrics.child(metrics.REFUSED, account, metrics.status_label(status)).inc()
        conn.respond(pdu.response(status=status))

    async def _store(self, messages: list[Message], interface: str,
                     events: list[Event] | None = None) -> None:
        """Store the messages with their history: the rules' decisions, then "accepted"."""
        await self.store.add_messages(
            messages, [*(events or ()), *(history.accepted(m, interface) for m in messages)])
        for msg in messages:
            log.info("message.accepted", message_id=msg.id, account=msg.account,
                     state=msg.state.value, interface=interface)
            metrics.child(metrics.ACCEPTED, msg.account, interface).inc()

    async def _submit_batch(self, conn: Connection, pdus: list[Pdu]) -> None:
        """submit_sm / data_sm read together: validated one by one, stored in one commit,
        each answered with its id once that commit is done."""
        accepted: list[tuple[Pdu, Message]] = []
        events: list[Event] = []
        owner: _AccountState | None = None  # the bound account (one per connection)
        started = trio.current_time()
        stored = False
        try:
            now = self.clock.now()
            for pdu in pdus:
                assert isinstance(pdu, SubmitSm | DataSm)
                state = self._admit(conn, pdu)
                if state is None:
                    continue
                account = state.config.system_id
                try:
                    msg = accept_submit(account, pdu, now, self.policy(state.config))
                except IntakeError as exc:
                    self._refuse(conn, pdu, account, exc)
                    continue
                if self.screening is not None:
                    verdict = self.screening.check(msg, now, "smpp", pdu.service_type)
                    events += self.screening.record([verdict], now)
                    if verdict.rejected is not None:
                        self._refuse_rule(conn, pdu, account, verdict.rejected.smpp_status,
                                          verdict.rejected.reason)
                        continue
                accepted.append((pdu, msg))
                owner = state
                owner.admitting += 1
            if not accepted:
                return
            # Shielded: once queued the insert is committed anyway, so the dispatcher must
            # get the messages even if the upstream disconnects meanwhile (else unsent).
            with trio.CancelScope(shield=True):
                try:
                    await self._store([msg for _, msg in accepted], "smpp", events)
                except Exception as exc:
                    status = self._store_failed(accepted[0][1].account, len(accepted), exc)
                    for pdu, _ in accepted:
                        conn.respond(pdu.response(status=status))
                    return
                stored = True
                latency = metrics.child(metrics.SUBMIT_SECONDS, "smpp")
                took = trio.current_time() - started
                for pdu, msg in accepted:
                    conn.respond(pdu.response(message_id=msg.id))
                    latency.observe(took)
                    self.dispatcher.enqueue(msg)
        finally:
            if owner is not None:  # whatever happened, these are no longer being admitted
                owner.admitting -= len(accepted)
            if self.screening is not None:
                self.screening.settle([msg for _, msg in accepted], stored)

    async def _submit_multi(self, conn: Connection, pdu: SubmitMulti) -> None:
        started = trio.current_time()
        state = self._admit(conn, pdu, max(1, len(pdu.dests)))  # charged per destination
        if state is None:
            return
        account = state.config.system_id
        now = self.clock.now()
        try:
            result = accept_multi(account, pdu, now, self.policy(state.config))
        except IntakeError as exc:
            self._refuse(conn, pdu, account, exc)
            return
        events: list[Event] = []
        if self.screening is not None:
            result, events = self._screen_multi(result, now, pdu.service_type)
            if not result.messages:
                status = result.unsuccess[0][3] if result.unsuccess else Status.ESME_RINVDSTADR
                self._refuse_rule(conn, pdu, account, status, "every destination refused")
                return
        state.admitting += len(result.messages)
        with trio.CancelScope(shield=True):  # see _submit_batch
            stored = False
            try:
                await self._store(result.messages, "smpp", events)
                stored = True
            except Exception as exc:
                conn.respond(pdu.response(
                    status=self._store_failed(account, len(result.messages), exc)))
                return
            finally:
                state.admitting -= len(result.messages)
                if self.screening is not None:
                    self.screening.settle(result.messages, stored)
            unsuccess = [UnsuccessSme(ton, npi, addr, status)
                         for ton, npi, addr, status in result.unsuccess]
            conn.respond(pdu.response(message_id=result.messages[0].id, unsuccess=unsuccess))
            metrics.child(metrics.SUBMIT_SECONDS, "smpp").observe(trio.current_time() - started)
            for msg in result.messages:
                self.dispatcher.enqueue(msg)

    def _screen_multi(self, result: MultiResult, now: float, service_type: str
                      ) -> tuple[MultiResult, list[Event]]:
        """The rules applied to each destination of a submit_multi: refused ones join
        unsuccess_sme with their rule's status; destinations that are the same number once
        normalised are sent once; the ids are given again in order (<id>, <id>:2, ...)."""
        assert self.screening is not None
        base = result.messages[0].id
        kept, verdicts = [], []
        unsuccess = list(result.unsuccess)
        seen: set[str] = set()
        for msg in result.messages:
            raw = (msg.dest_ton, msg.dest_npi, msg.dest_addr)
            verdict = self.screening.check(msg, now, "smpp", service_type)
            if verdict.rejected is not None:
                unsuccess.append((*raw, verdict.rejected.smpp_status))
            elif msg.dest_addr not in seen:
                seen.add(msg.dest_addr)
                kept.append(msg)
            else:  # the same number written another way: sent once, nothing recorded
                self.screening.settle([msg], stored=False)
                continue
            verdicts.append(verdict)
        for n, msg in enumerate(kept, start=1):
            msg.id = base if n == 1 else f"{base}:{n}"
        return MultiResult(kept, unsuccess), self.screening.record(verdicts, now)

    async def _query(self, conn: Connection, pdu: QuerySm) -> None:
        # Charged to the account's throughput like a submit: each may cost a store read.
        state = self._admit(conn, pdu, submits=False)
        if state is None:
            return
        account = state.config.system_id
        live = self.dispatcher.live.get(pdu.message_id)
        msg = live.msg if live is not None and live.msg.account == account else None
        if msg is None:
            msg = await self.store.get_message_for_account(account, pdu.message_id)
        if msg is None:
            conn.respond(pdu.response(status=Status.ESME_RQUERYFAIL))
            return
        final_date = format_absolute(msg.done_at) if msg.state.final and msg.done_at else ""
        conn.respond(pdu.response(message_id=msg.id, final_date=final_date,
                                  message_state=int(STATE_TO_SMPP[msg.state]),
                                  error_code=msg.error & 0xFF))

    # -- cancel_sm, replace_sm ----------------------------------------------------------------
    def _changed(self, conn: Connection, pdu: CancelSm | ReplaceSm, account: str,
                 status: int, detail: str) -> None:
        """Answer a cancel_sm / replace_sm; a refusal is logged with its reason."""
        if status != Status.ESME_ROK:
            log.info("upstream.change_refused", account=account, command=pdu.command_id.name,
                     message_id=shorten(pdu.message_id, 80), status=f"0x{status:08X}",
                     detail=detail)
        conn.respond(pdu.response(status=status))

    @staticmethod
    def _refusal(exc: Exception, failed: int) -> tuple[int, str]:
        """The command_status and log detail of a cancel or replacement not made."""
        if isinstance(exc, IntakeError):
            return exc.status, exc.detail
        if isinstance(exc, ChangeRefused):
            return (Status.ESME_RINVMSGID if exc.reason == "unknown" else failed), exc.detail
        if isinstance(exc, StoreError):
            return Status.ESME_RSYSERR, f"the store failed: {exc}"
        raise exc

    async def _cancel(self, conn: Connection, pdu: CancelSm) -> None:
        """SMPP 3.4 4.9: a message_id cancels that message (its source address must match,
        and its destination and service_type when given); an empty one cancels every message
        of the account from source_addr to destination_addr (and of that service_type when
        given). Only messages no part of which reached an operator can be cancelled."""
        state = self._admit(conn, pdu, submits=False)  # charged like a query_sm
        if state is None:
            return
        account = state.config.system_id

        def matches(msg: Message) -> bool:
            return _same(msg.source_addr, pdu.source_addr) \
                and _same(msg.dest_addr, pdu.destination_addr) \
                and (not pdu.service_type or msg.service_type == pdu.service_type)

        if not pdu.message_id:
            if not pdu.destination_addr:
                self._changed(conn, pdu, account, Status.ESME_RINVDSTADR,
                              "no message_id: a destination_addr is needed")
                return
            try:
                cancelled, left = await self.dispatcher.cancel_matching(
                    account, matches, by="smpp", dest_addrs=_variants(pdu.destination_addr))
            except StoreError as exc:
                self._changed(conn, pdu, account, *self._refusal(exc, Status.ESME_RCANCELFAIL))
                return
            if left or not cancelled:
                detail = (f"{len(left)} matching messages are already with an operator "
                          f"({len(cancelled)} cancelled)" if left else
                          "no message of this account from this source to this destination "
                          "is waiting to be sent")
                self._changed(conn, pdu, account, Status.ESME_RCANCELFAIL, detail)
            else:
                self._changed(conn, pdu, account, Status.ESME_ROK, "")
            return

        def check(msg: Message) -> None:
            if not _same(msg.source_addr, pdu.source_addr):
                raise IntakeError(Status.ESME_RINVSRCADR,
                                  "source_addr is not the message's source address")
            if pdu.destination_addr and not _same(msg.dest_addr, pdu.destination_addr):
                raise IntakeError(Status.ESME_RINVDSTADR,
                                  "destination_addr is not the message's destination")
            if pdu.service_type and pdu.service_type != msg.service_type:
                raise IntakeError(Status.ESME_RINVSERTYP,
                                  "service_type is not the message's service_type")

        try:
            await self.dispatcher.cancel(pdu.message_id, account=account, by="smpp",
                                         check=check)
        except (IntakeError, ChangeRefused, StoreError) as exc:
            self._changed(conn, pdu, account, *self._refusal(exc, Status.ESME_RCANCELFAIL))
        else:
            self._changed(conn, pdu, account, Status.ESME_ROK, "")

    async def _replace(self, conn: Connection, pdu: ReplaceSm) -> None:
        """SMPP 3.4 4.10: replace the text, schedule_delivery_time, validity_period and
        registered_delivery of a message not sent yet (its source address must match; an
        empty time keeps the message's own)."""
        state = self._admit(conn, pdu, submits=False)
        if state is None:
            return
        account = state.config.system_id
        policy = self.policy(state.config)

        def plan(msg: Message) -> Replacement:
            if not _same(msg.source_addr, pdu.source_addr):
                raise IntakeError(Status.ESME_RINVSRCADR,
                                  "source_addr is not the message's source address")
            return accept_replace(msg, pdu, self.clock.now(), policy)

        try:
            await self.dispatcher.replace(pdu.message_id, account=account, by="smpp",
                                          plan=plan)
        except (IntakeError, ChangeRefused, StoreError) as exc:
            self._changed(conn, pdu, account, *self._refusal(exc, Status.ESME_RREPLACEFAIL))
        else:
            self._changed(conn, pdu, account, Status.ESME_ROK, "")


def _variants(address: str) -> tuple[str, ...]:
    """The stored forms an address given in a cancel_sm may have (see _same)."""
    bare = address.removeprefix("+")
    return (bare, f"+{bare}")


def _same(stored: str, given: str) -> bool:
    """Whether an address given in a cancel_sm / replace_sm is the message's (a leading '+'
    aside: the HTTP API stores numbers without it)."""
    return stored.removeprefix("+") == given.removeprefix("+")
