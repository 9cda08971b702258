"""Dispatcher: owns every unfinished message from commit to final state.

It schedules attempts (deferred, retried with backoff, failed over to the next attempt of the
route plan, revoked and failed over when an attempt's timeout passes without an outcome;
following its Routing: connectors' circuit breakers told every send result and asked before
an attempt, sender limits, the [retry] backoff, quality trackers told every receipt),
hands each message's units to the plan's channels (routing/channel.py: it speaks no
protocol), applies the providers' receipts, expires messages at the end of their validity,
and writes each final state with the report its upstream face makes of it (receipt_of: the
core knows when a receipt is owed, never what it looks like upstream). One task does it in
rounds: the send results and due messages of a round are handled together and their changes
written in one store call (no task or store call per message).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import heapq
import itertools
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import Protocol, runtime_checkable

import structlog
import trio

from gateway import history, metrics, transitions
from gateway.clock import WallClock
from gateway.config import RetryConfig
from gateway.intake import Replacement
from gateway.model import Event, Message, Part, PartState, Report, State
from gateway.routing_setup import Routing
from gateway.store import Forwarded, PendingWrite, Store, StoreError
from routing.backoff import Backoff, retry_delay
from routing.breaker import Breakers, BreakerState
from routing.channel import (
    RCS,
    Channel,
    ProviderReceipt,
    Revoked,
    SendResult,
    Unit,
    Unsendable,
)
from routing.core import Attempt, RoutePlan, Router, RoutingContext, sender_ton_npi

log = structlog.get_logger("gateway.dispatcher")

_FINAL_PARTS = frozenset({PartState.DELIVERED, PartState.UNDELIVERABLE, PartState.EXPIRED,
                          PartState.REJECTED})
NO_SMSC = "none"  # the smsc label of a message that never reached a connector
NO_ROUTE_ERROR = 0x0B  # reported as err:011 (ESME_RINVDSTADR's code) when no route matches
MAX_HELD_RECEIPTS = 10_000  # receipts waiting at once for their send's answer
HOLD_LOG_PERIOD = 10.0  # seconds between two warnings that the receipt hold is full
# An attempt with a timeout gives its provider this long beyond the timeout (the time to
# revoke it) as its deadline, so what a failed revoke leaves behind ends there.
ATTEMPT_DEADLINE_MARGIN = 30.0
MAX_SUPERSEDED = 100_000  # units of left attempts remembered for their late receipts
RECEIPT_HOLD = 10.0  # seconds a receipt of a channel that names none waits for its send
INBOX_BATCH = 1000  # receipts handed over by other nodes, read and applied at a time
INBOX_POLL = 1.0  # seconds: the inbox is read this often even if no notification came
# Nodes sharing a store: a held receipt is looked up in the store again after these seconds,
# doubling up to the last (its part may be another node's, committed since it came in).
HOLD_RECHECK = (0.02, 0.25)
ADOPT_INTERVAL = 1.0  # seconds between two looks for the work of dead nodes
RECEIPT_WORDS = 64  # distinct receipt words counted by name (per dispatcher); more: "OTHER"
SAVE_RETRY_MIN, SAVE_RETRY_MAX = 1.0, 30.0  # seconds between attempts at a failed store write


@dataclass(eq=False, slots=True)
class Live:
    """An unfinished message in memory: the store row's mirror plus dispatch bookkeeping."""

    msg: Message
    parts: list[Part] = field(default_factory=list)
    units: list[Unit] | None = None  # what the current channel sends it as
    # Connectors of its plan tried in this round and left (failure, timeout): the next
    # attempt takes an untried one first; when all were tried, a new round starts.
    tried: set[str] = field(default_factory=set)
    # An attempt on another channel than RCS has started: RCS is never tried again for it
    # (RCS or SMS, never both).
    left_rcs: bool = False
    sending: int = 0  # submits of the current attempt not answered yet
    refused: SendResult | None = None  # a temporary refusal seen in the current attempt
    not_capable: SendResult | None = None  # the current channel cannot reach the recipient
    incapable: set[str] = field(default_factory=set)  # connectors that said so: skipped
    timeout_at: float | None = None  # the current attempt's outcome is awaited until then
    revoking: bool = False  # its current attempt is being revoked (timeout)
    late: bool = False  # a part of the current attempt was not sent: validity over
    started: float | None = None  # when its current attempt began
    judging: str | None = None  # the half-open connector this attempt probes (a slot taken)
    last_delay: float | None = None  # the delay before its last retry (decorrelated jitter)
    due: float | None = None  # time of this message's one valid heap entry, if any
    held: bool = False  # a cancel or replacement of it is being committed: not attempted
    # Its history not yet handed to the store: written with the next write of the message
    # (an attempt's event with its results, in the same commit).
    events: list[Event] = field(default_factory=list)
    waiting: bool = False  # its "waiting" (for a connector) event is recorded
    plan: RoutePlan | None = None  # its plan, made at its first attempt (see Dispatcher._plan)
    # The message as the current attempt sends it, when the plan gave that attempt another
    # sender (an RCS agent's SMS fallback); None: the message as stored.
    sent_as: Message | None = None


class _Round:
    """What one round of the dispatcher changed: messages to save, messages finished, and
    (once its write is queued) the history events that write holds."""

    __slots__ = ("events", "finished", "touched")

    def __init__(self) -> None:
        self.touched: dict[str, Live] = {}
        self.finished: list[tuple[Live, list[Report]]] = []
        self.events: list[Event] | None = None

    def touch(self, live: Live) -> None:
        self.touched[live.msg.id] = live

    def finish(self, live: Live, reports: list[Report]) -> None:
        self.touched.pop(live.msg.id, None)
        self.finished.append((live, reports))

    def __bool__(self) -> bool:
        return bool(self.touched or self.finished)


def final_state_of(parts: Sequence[Part]) -> State | None:
    """A message's outcome once every part has one (delivered only if all parts were)."""
    if not parts or any(p.state not in _FINAL_PARTS for p in parts):
        return None
    states = {p.state for p in parts}
    if states == {PartState.DELIVERED}:
        return State.DELIVERED
    if PartState.REJECTED in states:
        return State.REJECTED
    if PartState.UNDELIVERABLE in states:
        return State.UNDELIVERABLE
    return State.EXPIRED


# The report an upstream face owes for a message that reached a final state (its format is
# that face's: SMPP receipt text and TLVs, a webhook's JSON), made when the state is written.
ReceiptOf = Callable[[Message, State, float], Report]


def wants_report(registered_delivery: int, state: State) -> bool:
    request = registered_delivery & 0x03
    return request == 1 or (request == 2 and state is not State.DELIVERED)


@runtime_checkable
class ReceiptIds(Protocol):
    """How a channel's receipts find their units (the SMS channel says; a channel that does
    not is matched on its ids as given, with RECEIPT_HOLD): how long a receipt that overtook
    its send's answer waits for it, the key a provider id is filed under, and every key a
    receipt's id may match (id_format: the channel's own word for its id spellings; "auto":
    converted spellings are trusted only once the channel has shown it converts)."""

    receipt_hold: float
    receipt_id_format: str

    def receipt_key(self, provider_id: str) -> str: ...

    def receipt_keys(self, provider_id: str, id_format: str) -> list[str]: ...


class _AsGiven:
    """The receipt matching of a channel that says nothing about it."""

    receipt_hold = RECEIPT_HOLD
    receipt_id_format = "as-is"

    def receipt_key(self, provider_id: str) -> str:
        return provider_id.strip()

    def receipt_keys(self, provider_id: str, id_format: str) -> list[str]:
        return [provider_id.strip()]


_AS_GIVEN = _AsGiven()


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def _sent_under(msg: Message, sender: str) -> Message:
    """The message as it goes out under another sender (its stored row keeps its own)."""
    ton, npi = sender_ton_npi(sender)
    return dataclasses.replace(msg, source_addr=sender, source_ton=ton, source_npi=npi)


class HoldFull(Exception):
    """MAX_HELD_RECEIPTS receipts wait for matching already: this one is refused for now."""


class NoRoute(Exception):
    """No route matches the message's destination."""


class NotCapable(Exception):
    """Every channel of the message's plan said it cannot reach the recipient."""


class Dispatcher:
    """Schedules and drives every unfinished message; see the module docstring."""

    def __init__(
        self,
        store: Store,
        router: Router,
        channels: Mapping[str, Channel],
        retry: RetryConfig,
        clock: WallClock,
        on_report: Callable[[Report], None],
        *,
        receipt_of: ReceiptOf,
        max_in_flight: int | None = None,
        routing: Routing | None = None,
        rng: Random | None = None,
    ) -> None:
        self.store = store
        self.router = router
        self.channels = channels  # by connector name (Attempt.connector)
        self.retry = retry
        # What the attempts report to and ask (gateway.routing_setup): without a Routing, no
        # breaker, no sender limit, no quality tracker, and the backoff of `retry`.
        self.breakers = Breakers(())
        self.backoff: Backoff | None = None  # None: from self.retry (see _backoff)
        self.observe: Callable[[str, str, bool, float | None, float], None] | None = None
        self._routing: Routing | None = None
        self.rng = rng or Random()  # the retry delays' jitter
        self.clock = clock
        self.on_report = on_report
        self.receipt_of = receipt_of  # the upstream face's receipt for a final message
        self.live: dict[str, Live] = {}
        self._per_account: dict[str, int] = {}  # unfinished messages per account
        self._heap: list[tuple[float, int, str]] = []
        self._counter = itertools.count()
        self._wake = trio.Event()
        self._results: list[tuple[Live, Part, SendResult]] = []
        self._revoked: list[tuple[Live, str, list[Revoked]]] = []  # revokes answered
        self._by_smsc: dict[tuple[str, str], tuple[Live, Part]] = {}
        # Units of attempts a message left for the next one of its plan (timeout, failure):
        # (connector, id key) -> (message id, its expiry). Their late receipts are recorded
        # in the message's history, never turned into its outcome or an upstream receipt.
        self._superseded: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        # Channels a reload removed, by name, until one of that name is added again: their
        # timed-out attempts are still revoked through them.
        self._retired: dict[str, Channel] = {}
        # Receipts held for matching, by (connector, normalised id) they wait for: the events
        # of the receipts waiting for that key (a receipt may wait under several spellings).
        self._held: dict[tuple[str, str], list[trio.Event]] = {}
        self._held_count = 0
        self._held_log_at = -HOLD_LOG_PERIOD  # trio time of the last "hold full" warning
        self._held_refused = 0  # receipts refused since (the hold was full)
        self._ids: dict[str, ReceiptIds] = {}  # each channel's receipt matching, when first used
        self._words: set[str] = set()  # receipt words counted by name
        self._storing: dict[tuple[str, str], trio.Event] = {}  # receipts awaiting a commit
        self._parked: dict[str, Live] = {}  # waiting for a connector of their route to come up
        self._converting: set[str] = set()  # connectors seen writing receipt ids converted
        total = sum(c.capacity for c in channels.values())
        # messages with units unanswered at once, at most: given, or twice what the channels
        # can have unanswered (sized again when a channel joins or leaves: the daemon adds
        # its channels after making the dispatcher, a reload adds and removes some)
        self._max_given = max_in_flight
        self.max_in_flight = max_in_flight or max(64, 2 * total)
        self._in_flight = 0  # messages with submits not answered yet
        self._nursery: trio.Nursery | None = None
        self._following: dict[str, trio.CancelScope] = {}  # each channel's _follow task
        self._stopped = False  # stop_attempts(): no attempt is started any more
        self._saving = 0  # round writes queued and not committed yet
        self._adopting: set[str] = set()  # messages taken from dead nodes, not loaded yet
        self._idle = trio.Event()  # set after each round and each round's commit
        # rules (gateway.screening): when a SCHEDULED message falls due, the status to refuse
        # it with (an opt-out that arrived meanwhile), or None to send it
        self.recheck: Callable[[Message], int | None] | None = None
        # nodes sharing the store: cancels and replacements of the messages other nodes work
        # on go to them through it (gateway/cross_node.py)
        self.remote: Remote | None = None
        if routing is not None:
            self.routing = routing

    @property
    def routing(self) -> Routing | None:
        return self._routing

    @routing.setter
    def routing(self, routing: Routing) -> None:
        """Use this routing from now on (at start, and on a config reload): its router for
        the plans, its breakers, sender limits, backoff and quality trackers for the attempts
        and receipts that follow. Messages in flight keep their attempt."""
        self._routing = routing
        self.router = routing.router
        self.breakers = routing.breakers
        self.backoff = routing.backoff
        self.observe = routing.observe if routing.trackers else None
        self._unpark()  # a connector the new breakers admit may serve them now

    # -- intake side ------------------------------------------------------------------------
    def enqueue(self, msg: Message) -> None:
        """Take ownership of a committed message."""
        live = Live(msg)
        self._own(live)
        self._schedule(live, msg.next_attempt_at or msg.created_at)

    def _own(self, live: Live) -> None:
        if live.msg.id not in self.live:
            account = live.msg.account
            self._per_account[account] = self._per_account.get(account, 0) + 1
        self.live[live.msg.id] = live

    def unfinished_of(self, account: str) -> int:
        """Messages of that account not final yet (all in memory, see enqueue)."""
        return self._per_account.get(account, 0)

    def _schedule(self, live: Live, due: float) -> None:
        """Set the next attempt's time (and wake up for it, or for the expiry if earlier)."""
        live.msg.next_attempt_at = due
        self._watch(live, due)

    def _watch(self, live: Live, when: float) -> None:
        """Look at the message again at `when` (never later than its expiry).

        A message has at most one valid heap entry (time in live.due); an earlier one
        supersedes it, and superseded or finished messages' entries are skipped when popped.
        """
        msg = live.msg
        when = min(when, msg.expires_at)
        if live.due is not None and live.due <= when:
            return  # it will be looked at by then anyway
        if len(self._heap) > 2 * len(self.live) + 4096:
            self._heap = [e for e in self._heap if self._valid(e)]
            heapq.heapify(self._heap)
        live.due = when
        heapq.heappush(self._heap, (when, next(self._counter), msg.id))
        if self._heap[0][2] == msg.id:
            self._wake.set()

    def _valid(self, entry: tuple[float, int, str]) -> bool:
        live = self.live.get(entry[2])
        return live is not None and live.due == entry[0]

    async def load(self) -> int:
        """Resume every unfinished message from the store (at start-up)."""
        messages = await self.store.unfinished_messages()
        await self._resume(messages, await self.store.get_parts_of([m.id for m in messages]))
        return len(messages)

    async def adopt(self) -> int:
        """Take over the unfinished messages of nodes that died (several nodes share a
        PostgreSQL store) and resume them as at start-up: the parts they had not had
        answered are sent again (duplicates at the SMSC at most that node's in-flight
        windows), the others wait for their receipts, which reach this node. How many."""
        self._adopting.update(await self.store.adopt())
        ids = list(self._adopting)  # taken, not loaded yet (a failed load: tried again)
        messages = [m for m in await self.store.get_messages(ids) if m.id not in self.live]
        for msg in messages:  # IN_FLIGHT ones may reach the SMSC twice: counted apart
            metrics.child(metrics.ADOPTED, msg.state.value).inc()
        await self._resume(messages, await self.store.get_parts_of([m.id for m in messages]))
        self._adopting.difference_update(ids)
        if messages:
            self._wake.set()
            log.warning("dispatcher.adopted", messages=len(messages),
                        in_flight=sum(m.state is State.IN_FLIGHT for m in messages))
        return len(messages)

    async def _resume(self, messages: Sequence[Message],
                      parts: Mapping[str, list[Part]]) -> None:
        for msg in messages:
            live = Live(msg)
            live.parts = parts.get(msg.id, [])
            for part in live.parts:
                if part.state is PartState.SUBMITTED and part.smsc_id:
                    self._register(live, part)
            self._own(live)
            if msg.channel and msg.channel != RCS and msg.attempts:
                live.left_rcs = True  # another channel was tried: never RCS again
            if msg.state is State.IN_FLIGHT and live.parts and all(
                    p.state is not PartState.PENDING for p in live.parts):
                # its receipts, or its expiry; an attempt with a timeout (RCS waiting for its
                # delivered event) gets that timeout again from now: its fallback still goes
                timeout = self._resumed_timeout(live)
                if timeout is not None:
                    live.timeout_at = self.clock.now() + timeout
                self._watch(live, min(live.timeout_at or msg.expires_at, msg.expires_at))
            else:
                if msg.state is State.IN_FLIGHT:  # interrupted attempt: its pending parts go again
                    transitions.move(
                        msg, "resumed", State.QUEUED, self.clock.now(),
                        {"parts_pending": sum(p.state is PartState.PENDING for p in live.parts)
                         or len(live.parts)}, into=live.events)
                self._schedule(live, max(msg.next_attempt_at, msg.not_before))

    def _resumed_timeout(self, live: Live) -> float | None:
        """The timeout of the plan's attempt a resumed in-flight message was on, if any and
        another attempt follows it (after a restart, its wait starts again)."""
        msg = live.msg
        plan = self.router.plan(msg, RoutingContext(self.clock.now()))
        if plan is None:
            return None
        for i, attempt in enumerate(plan.attempts):
            if attempt.connector == msg.connector and i + 1 < len(plan.attempts):
                return attempt.timeout
        return None

    # -- the scheduling loop ----------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._size_in_flight()  # the channels given to it were filled in since
        count = await self.load()
        log.info("dispatcher.loaded", unfinished=count)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for channel in self.channels.values():
                self._start_following(channel)
            if self.store.shared:  # other nodes hand receipts over; some may die
                nursery.start_soon(self._follow_inbox)
                nursery.start_soon(self._adopt_orphans)
            task_status.started()
            while True:
                await self._wait_work()
                self._round()

    def _round(self) -> None:
        """Handle the submit results in, then the messages due (as far as the in-flight
        limit allows); queue the store write of everything that changed."""
        work = _Round()
        now = self.clock.now()
        results, self._results = self._results, []
        for live, part, result in results:
            self._guarded(self._on_result, live, part, result, now, work)
        revoked, self._revoked = self._revoked, []
        for live, name, answers in revoked:
            self._guarded(self._on_revoked, live, name, answers, now, work)
        while self._heap and self._heap[0][0] <= now and self._in_flight < self.max_in_flight \
                and not self._stopped:
            when, _, msg_id = heapq.heappop(self._heap)
            due = self.live.get(msg_id)
            if due is None or due.due != when:
                continue  # finished, or superseded by an earlier entry
            due.due = None
            self._guarded(self._step, due, now, work)
        if work:
            self._commit(work)
        self._idle.set()

    def _guarded(self, step: Callable[..., None], live: Live, *args: object) -> None:
        """Run one message's step; a bug in it costs that message a retry, not the loop."""
        try:
            step(live, *args)
        except Exception as exc:
            log.exception("dispatcher.step_failed", message_id=live.msg.id)
            msg = live.msg
            if live.sending == 0:  # a probe slot it took must not stay taken
                self._unjudged(live, self.clock.now())
            if not msg.state.final and live.sending == 0:
                now = self.clock.now()
                detail: dict[str, object] = {"detail": f"internal error ({type(exc).__name__}):"
                                                       " tried again"}
                if msg.state is not State.QUEUED and (
                        any(p.state is PartState.PENDING for p in live.parts) or not live.parts):
                    # so that the pending parts are tried again
                    transitions.move(msg, "error", State.QUEUED, now, detail,
                                     into=live.events)
                else:
                    transitions.note(msg, "error", now, detail, into=live.events)
                self._schedule(live, now + self.retry.initial_delay)

    async def _wait_work(self) -> None:
        """Return when there are submit results, or a message is due and may start."""
        self._wake = trio.Event()
        if self._results or self._revoked:
            await trio.lowlevel.checkpoint()
            return
        if self._heap and self._in_flight < self.max_in_flight and not self._stopped:
            at = self._heap[0][0]
            if at <= self.clock.now():
                await trio.lowlevel.checkpoint()
                return
            with trio.move_on_at(self.clock.to_trio(at)):
                await self._wake.wait()
        else:
            await self._wake.wait()

    async def _follow(self, channel: Channel) -> None:
        """Wake the parked messages when a channel goes from down to up."""
        was_up = channel.is_up()
        while True:
            await channel.wait_changed()
            up = channel.is_up()
            came_up, was_up = up and not was_up, up
            if came_up:
                self._unpark()

    def _unpark(self) -> None:
        """Look at the parked messages again now: a connector may serve them."""
        if self._parked:
            parked, self._parked = self._parked, {}
            now = self.clock.now()
            for live in parked.values():
                self._watch(live, now)

    def _step(self, live: Live, now: float, work: _Round) -> None:
        msg = live.msg
        if msg.state.final or live.held:
            return  # a held message is looked at again once its change is committed
        if now >= msg.expires_at:
            if self.observe is not None:  # submitted, no receipt: the quality routers learn
                for part in live.parts:
                    if part.state is PartState.SUBMITTED:
                        self.observe(part.connector, msg.dest_addr, False, None, now)
            self._finish(live, State.EXPIRED, now, work, {"reason": "validity over"})
        elif msg.state in (State.QUEUED, State.SCHEDULED, State.ACCEPTED) and \
                now >= msg.next_attempt_at:
            refused = self.recheck(msg) if msg.state is State.SCHEDULED and self.recheck \
                else None
            if refused is not None:  # rules: e.g. the recipient opted out meanwhile
                msg.error = refused
                self._finish(live, State.REJECTED, now, work,
                             {"rule": "optout", "reason": "opted out while deferred",
                              "error": f"0x{refused:08X}"})
                return
            self._attempt(live, now, work)
        elif msg.state is State.IN_FLIGHT:
            if live.timeout_at is None or now < live.timeout_at:
                self._watch(live, live.timeout_at or msg.expires_at)
            elif not live.sending:
                self._revoke(live, now)
            else:  # revoked once every unit is answered (_attempt_done looks at it again)
                self._watch(live, msg.expires_at)
        else:
            self._watch(live, msg.next_attempt_at)

    # -- one attempt --------------------------------------------------------------------------
    def _pick(self, live: Live, now: float) -> tuple[Channel, Attempt | None] | None:
        """The channel for this attempt and the plan's attempt it follows (None when the
        message stays on its channel), None if every one is down; raises NoRoute, or
        NotCapable when every channel of the plan said it cannot reach the recipient."""
        msg = live.msg
        if any(p.state is not PartState.PENDING for p in live.parts) and msg.connector:
            channel = self.channels.get(msg.connector)  # parts must stay on one operator
            return (channel, None) if channel is not None and self._up(channel, now) else None
        plan = self._plan(live, now)
        if plan is None or not plan.attempts:
            raise NoRoute(msg.dest_addr)
        order: Sequence[Attempt] = plan.attempts  # the usual case: a message's first attempt
        if live.incapable or live.tried or live.left_rcs:
            attempts = [a for a in plan.attempts if a.connector not in live.incapable
                        and not (live.left_rcs and a.channel == RCS)]
            if not attempts:
                raise NotCapable(msg.dest_addr)
            fresh = [a for a in attempts if a.connector not in live.tried]
            if not fresh:  # every connector of the plan was tried: a new round, in plan order
                live.tried.clear()
                fresh = attempts
            order = fresh + [a for a in attempts if a not in fresh]
        for attempt in order:
            channel = self.channels.get(attempt.connector)
            if channel is not None and channel.kind == attempt.channel and self._up(channel, now):
                return channel, attempt
        return None

    def _up(self, channel: Channel, now: float) -> bool:
        """Whether an attempt may start on this channel now: it is up and its connector's
        circuit breaker admits one (closed, or half-open with a probe slot free)."""
        return channel.is_up() and self.breakers.available(channel.name, now)

    def _another_attempt(self, live: Live, now: float, connector: str) -> bool:
        """Whether the message's plan has an attempt on another connector left to try."""
        plan = self._plan(live, now)
        return plan is not None and any(
            a.connector != connector and a.connector not in live.incapable
            for a in plan.attempts)

    def _plan(self, live: Live, now: float) -> RoutePlan | None:
        """The message's plan: made by the routers at its first attempt and kept for the next
        ones (a reload's new routes do not change a message in flight, e.g. the SMS fallback
        of an RCS attempt keeps the agent's sender), unless none of its connectors runs any
        more (then the routers are asked again)."""
        plan = live.plan
        if plan is None or not any(a.connector in self.channels for a in plan.attempts):
            plan = live.plan = self.router.plan(
                live.msg, RoutingContext(now, functools.partial(self._is_up, now)))
        return plan

    def _is_up(self, now: float, name: str) -> bool:
        channel = self.channels.get(name)
        return channel is not None and self._up(channel, now)

    def _reopens(self, now: float) -> float | None:
        """The earliest time an open breaker's cool-down ends (it then admits a probe)."""
        ends = [b.opened_at + b.options.cooldown for name in self.breakers.not_closed
                if (b := self.breakers[name]).state(now) is BreakerState.OPEN
                and b.opened_at is not None]
        return min(ends, default=None)

    def _judge(self, live: Live, connector: str, result: SendResult, now: float) -> None:
        """Tell the connector's breaker what a send result says of the connector: taken is a
        success; a temporary refusal (timeout, dropped bind, throttling, system error) or a
        permanent one that is not the message's fault is a failure; a refusal caused by the
        message itself (rejected), a recipient the channel cannot reach (not capable) or a
        unit not sent for its validity (expired) says nothing of the connector."""
        breaker = self.breakers.by_name.get(connector)
        if breaker is None:
            return
        before = (breaker.state(now), breaker.probes_out)
        if result.ok:
            breaker.success(now, live.started)
        elif result.temporary or not (result.rejected or result.not_capable or result.expired):
            breaker.failure(now, live.started)
        else:
            return
        if live.judging == connector:
            live.judging = None
        if before[0] is not BreakerState.CLOSED and (breaker.state(now), breaker.probes_out) \
                != before:
            self._unpark()  # closed again, or a probe slot freed: the parked may go

    def _unjudged(self, live: Live, now: float) -> None:
        """An attempt ended with no verdict on its connector: free its probe slot."""
        if live.judging is not None:
            breaker = self.breakers.by_name.get(live.judging)
            live.judging = None
            if breaker is not None and breaker.state(now) is BreakerState.HALF_OPEN:
                breaker.release(now)
                self._unpark()

    def _backoff(self, live: Live) -> float:
        """The delay before the message's next retry: [retry] backoff with its jitter."""
        backoff = self.backoff
        if backoff is None:
            r = self.retry
            backoff = Backoff(initial=r.initial_delay, cap=r.max_delay,
                              multiplier=r.multiplier, jitter=r.jitter)
        delay = retry_delay(max(1, live.msg.attempts), backoff, self.rng, live.last_delay)
        live.last_delay = delay
        return delay

    def _attempt(self, live: Live, now: float, work: _Round) -> None:
        """Hand the message's pending units to a channel; results come to _on_result."""
        msg = live.msg
        try:
            picked = self._pick(live, now)
        except NoRoute:
            msg.error = NO_ROUTE_ERROR
            log.warning("message.no_route", message_id=msg.id,
                        number_type=msg.number_type or None)
            why: dict[str, object] = {"reason": "no route for its destination"}
            if msg.number_type:  # routes may take some number types only
                why = {"reason": f"no route for its destination (a {msg.number_type} number)",
                       "number_type": msg.number_type}
            self._finish(live, State.REJECTED, now, work, why)
            return
        except NotCapable:
            if live.not_capable is not None:
                msg.error = live.not_capable.status
            self._finish(live, State.UNDELIVERABLE, now, work, {
                "reason": "no channel of its route can reach the recipient",
                "not_capable": sorted(live.incapable)})
            return
        if picked is None:  # every connector of the route is down: wait for one (or the expiry)
            self._parked[msg.id] = live
            if not live.waiting:
                live.waiting = True
                transitions.note(msg, "waiting", now, {
                    "reason": "no connector of its route is up"}, into=live.events)
            # a breaker whose cool-down ends admits a probe then: look again at that time
            self._watch(live, self._reopens(now) or msg.expires_at)
            return
        channel, planned = picked
        if planned is not None:
            live.sent_as = None if not planned.sender or planned.sender == msg.source_addr \
                else _sent_under(msg, planned.sender)
        out = live.sent_as or msg
        if live.parts and all(p.state is PartState.PENDING for p in live.parts) \
                and live.parts[0].connector != channel.name:
            live.units, live.parts = None, []  # failed over: cut again for the new channel
        if live.units is None:
            try:
                live.units = list(channel.prepare(out))
            except Unsendable as exc:  # e.g. more than 255 parts for this SMSC
                if planned is not None and self._another_attempt(live, now, channel.name):
                    # e.g. a message with a UDH cannot go over RCS: the plan's next channel
                    transitions.note(msg, "unsendable", now, {
                        "connector": channel.name, "detail": exc.detail}, into=live.events)
                    live.incapable.add(channel.name)
                    live.units, live.parts = None, []
                    self._attempt(live, now, work)
                    return
                log.warning("message.unsplittable", message_id=msg.id, detail=exc.detail)
                msg.error = exc.status
                self._finish(live, State.REJECTED, now, work, {
                    "reason": "cannot be split for this connector", "connector": channel.name,
                    "detail": exc.detail})
                return
        if not live.parts:
            live.parts = [Part(msg.id, unit.number, channel.name) for unit in live.units]
        msg.parts_total = len(live.parts)
        limiter = self._routing.limiter if self._routing is not None else None
        if limiter:  # the sender's throughput limit on this connector
            wait = limiter.delay_for(channel.name, out.source_addr, now)
            if wait > 0:  # later: not an error, no attempt counted
                self._watch(live, now + wait)
                return
        msg.attempts += 1
        msg.connector, msg.channel = channel.name, channel.kind
        transitions.move(msg, "attempt", State.IN_FLIGHT, now, {
            "attempt": msg.attempts, "channel": channel.kind, "connector": channel.name,
            "parts": sum(p.state is PartState.PENDING for p in live.parts),
            **({"sender": out.source_addr} if out is not msg else {})}, into=live.events)
        live.refused, live.not_capable, live.late, live.waiting = None, None, False, False
        if planned is not None:  # a new attempt of the plan (not the rest of an earlier one)
            live.timeout_at = None if planned.timeout is None else now + planned.timeout
        if channel.kind != RCS:
            live.left_rcs = True
        metrics.child(metrics.ATTEMPTS, channel.name).inc()
        live.started = now
        breaker = self.breakers.by_name.get(channel.name)
        if breaker is not None:
            probing = breaker.state(now) is BreakerState.HALF_OPEN
            if breaker.allow(now) and probing:  # a probe: it holds a slot until its verdict
                live.judging = channel.name
        # The provider is given the validity left, or, for an attempt with a timeout, little
        # more than the timeout: an RCS message the revoke could not withdraw still ends at
        # the platform soon after its SMS fallback, not at the end of the validity.
        until = msg.expires_at if live.timeout_at is None else \
            min(msg.expires_at, live.timeout_at + ATTEMPT_DEADLINE_MARGIN)
        deadline = self.clock.to_trio(until)
        for part, unit in zip(live.parts, live.units, strict=True):
            if part.state is not PartState.PENDING:
                continue
            part.connector = channel.name
            if not live.sending:
                self._in_flight += 1  # counted once, when its first unit is handed over
            live.sending += 1
            channel.submit_nowait(out, unit, deadline,
                                  functools.partial(self._submitted, live, part))
        if not live.sending:  # nothing was pending (cannot happen when queued, but never hang)
            self._unjudged(live, now)
            self._attempt_done(live, now, work)

    def _submitted(self, live: Live, part: Part, result: SendResult) -> None:
        """A channel's answer for one unit: handled in the next round."""
        self._results.append((live, part, result))
        self._wake.set()

    def _on_result(self, live: Live, part: Part, result: SendResult, now: float,
                   work: _Round) -> None:
        live.sending -= 1
        self._judge(live, part.connector, result, now)
        if live.sending == 0:
            self._in_flight -= 1
            self._unjudged(live, now)
        msg = live.msg
        if msg.state.final:  # finished meanwhile (expired, or failed on another part)
            return
        if result.ok:
            if result.billing:
                msg.billing = result.billing
            part.smsc_id = result.provider_id
            part.state = PartState.SUBMITTED
            part.submitted_at = now
            if result.provider_id:
                self._register(live, part)
        elif result.expired and now < msg.expires_at and live.timeout_at is not None:
            live.refused = result  # its attempt's deadline, not the message's: the next one
        elif result.expired:
            live.late = True
        elif result.not_capable:
            live.not_capable = result
        else:
            msg.error = result.status
            metrics.child(metrics.SUBMIT_ERRORS, part.connector,
                          metrics.status_label(result.status)).inc()
            if result.temporary:
                live.refused = result
            else:
                part.state = PartState.REJECTED if result.rejected else PartState.UNDELIVERABLE
                part.done_at = now
                self._finish(live, State.REJECTED if result.rejected else State.UNDELIVERABLE,
                             now, work, {"reason": "refused by the operator",
                                         "connector": part.connector, "part": part.part_no,
                                         "status": f"0x{result.status:08X}",
                                         **({"detail": result.detail} if result.detail else {})})
                return
        if live.sending:
            work.touch(live)  # the operator ids known so far are kept
        else:
            self._attempt_done(live, now, work)

    def _attempt_done(self, live: Live, now: float, work: _Round) -> None:
        """Every submit of the attempt is answered: in flight, retry later, or final."""
        msg = live.msg
        if live.late:
            self._finish(live, State.EXPIRED, now, work, {
                "reason": "validity over before every part was sent",
                "connector": msg.connector})
            return
        if live.not_capable is not None and not any(
                p.state is not PartState.PENDING for p in live.parts):
            self._next_attempt(live, now, work, "not_capable", {
                "attempt": msg.attempts, "connector": msg.connector,
                "status": f"0x{live.not_capable.status:08X}",
                "detail": live.not_capable.detail or "the recipient cannot take this channel"},
                skip=False)
            live.incapable.add(msg.connector or "")
            return
        refused = live.refused or live.not_capable
        if refused is not None:
            if not any(p.state is not PartState.PENDING for p in live.parts):
                live.tried.add(msg.connector or "")  # nothing sent yet: it may fail over
            delay = self._backoff(live)
            transitions.move(msg, "retry", State.QUEUED, now, {
                "attempt": msg.attempts, "connector": msg.connector,
                "status": f"0x{refused.status:08X}", "detail": refused.detail or
                "refused for now by the operator", "delay": delay,
                "next_attempt_at": history.iso(now + delay)}, into=live.events)
            log.info("message.retry", message_id=msg.id, smsc=msg.connector,
                     status=f"0x{refused.status:08X}", detail=refused.detail, delay=delay)
            self._schedule(live, now + delay)
            work.touch(live)
            return
        log.info("message.submitted", message_id=msg.id, smsc=msg.connector,
                 parts=len(live.parts), attempt=msg.attempts)
        operator_ids = [p.smsc_id for p in live.parts]
        attempt = live.events[-1] if live.events and live.events[-1].kind == "attempt" else None
        if attempt is not None:  # not written yet: the answer goes in the attempt's row
            attempt.detail.update(outcome="submitted", operator_ids=operator_ids,
                                  answered_in=round(now - attempt.at, 3))
        else:  # the attempt's row is written already (a part's receipt came in between)
            transitions.note(msg, "submitted", now, {
                "attempt": msg.attempts, "connector": msg.connector,
                "operator_ids": operator_ids}, into=live.events)
        self._watch(live, live.timeout_at or msg.expires_at)
        outcome = final_state_of(live.parts)  # every receipt may be in already
        if outcome is not None:
            self._finish(live, outcome, now, work, {"reason": "every part's receipt is in"})
        else:
            work.touch(live)

    def _next_attempt(self, live: Live, now: float, work: _Round, kind: str,
                      detail: dict[str, object], *, skip: bool = True) -> None:
        """Leave the current attempt for the plan's next one, at once: its units are
        forgotten (a receipt for one of them is then an orphan) and cut again."""
        msg = live.msg
        for part in live.parts:
            key = (part.connector, self._key(part.connector, part.smsc_id or ""))
            hit = self._by_smsc.get(key)
            if part.smsc_id and hit is not None and hit[1] is part:
                del self._by_smsc[key]
                self._supersede(key, msg)
        live.parts, live.units, msg.parts_total = [], None, 0
        if skip:  # (a connector that cannot reach the recipient leaves the plan instead)
            live.tried.add(msg.connector or "")
        live.timeout_at, live.revoking = None, False
        transitions.move(msg, kind, State.QUEUED, now, detail, into=live.events)
        log.info("message.next_attempt", message_id=msg.id, why=kind, smsc=msg.connector)
        self._schedule(live, now)
        work.touch(live)

    def _supersede(self, key: tuple[str, str], msg: Message) -> None:
        """Remember a left attempt's unit until its message expires (at most
        MAX_SUPERSEDED, the oldest forgotten first: a receipt for it is then an orphan)."""
        superseded = self._superseded
        superseded[key] = (msg.id, msg.expires_at)
        superseded.move_to_end(key)
        now = self.clock.now()
        while superseded:
            oldest, (_, expires_at) = next(iter(superseded.items()))
            if expires_at > now and len(superseded) <= MAX_SUPERSEDED:
                break
            del superseded[oldest]

    async def _after_fallback(self, connector: str, receipt: ProviderReceipt,
                              message_id: str) -> None:
        """A receipt for a unit of an attempt its message left (an RCS message delivered
        after its revoke failed and the SMS went): recorded in its history, nothing else."""
        outcome = receipt.outcome.value if receipt.outcome is not None else None
        log.info("receipt.after_fallback", message_id=message_id, smsc=connector,
                 smsc_id=receipt.provider_id, stat=receipt.word)
        await self.store.add_events([Event(message_id, self.clock.now(), "late_receipt", None,
                                           None, {"connector": connector,
                                                  "provider_id": receipt.provider_id,
                                                  "word": receipt.word, "outcome": outcome})])

    # -- attempt timeouts -----------------------------------------------------------------------
    def _revoke(self, live: Live, now: float) -> None:
        """The attempt's timeout passed without an outcome: withdraw what the channel holds
        (the answers come to _on_revoked), then the next attempt."""
        msg = live.msg
        channel = self.channels.get(msg.connector or "") or self._retired.get(msg.connector or "")
        live.timeout_at = None
        self._watch(live, msg.expires_at)  # it still expires while the revoke is answered
        if channel is None:
            return
        live.revoking = True
        ids = [p.smsc_id for p in live.parts if p.state is PartState.SUBMITTED and p.smsc_id]
        log.info("message.attempt_timeout", message_id=msg.id, smsc=channel.name, units=len(ids))
        assert self._nursery is not None
        self._nursery.start_soon(self._revoking, live, channel, ids)

    async def _revoking(self, live: Live, channel: Channel, ids: list[str]) -> None:
        answers: list[Revoked] = []
        for provider_id in ids:
            try:
                answers.append(await channel.revoke(live.msg, provider_id))
            except Exception:
                log.exception("dispatcher.revoke_failed", message_id=live.msg.id,
                              smsc=channel.name)
                answers.append(Revoked.FAILED)
        self._revoked.append((live, channel.name, answers))
        self._wake.set()

    def _on_revoked(self, live: Live, name: str, answers: list[Revoked], now: float,
                    work: _Round) -> None:
        """A timed-out attempt's revoke answered: no further attempt if it reached the phone
        (DELIVERED), else the plan's next attempt (at the risk of a duplicate when the
        channel could not withdraw it: UNSUPPORTED, FAILED)."""
        msg = live.msg
        live.revoking = False
        if msg.state is not State.IN_FLIGHT or msg.connector != name or live.held:
            return  # its outcome came meanwhile (or a change of it is being stored)
        words = [a.value for a in answers]
        if Revoked.DELIVERED in answers:  # too late to withdraw: it reached the phone
            submitted = [p for p in live.parts if p.state is PartState.SUBMITTED and p.smsc_id]
            for part, answer in zip(submitted, answers, strict=False):
                if answer is Revoked.DELIVERED:
                    part.state, part.done_at = PartState.DELIVERED, now
            detail: dict[str, object] = {
                "connector": name, "revoked": words,
                "reason": "no outcome before its timeout; revoke found it delivered: no "
                          "further attempt"}
            final = final_state_of(live.parts)
            if final is not None:
                work.finish(live, self._finalize(live, final, now, detail, kind="revoke"))
            else:
                transitions.note(msg, "revoke", now, detail, into=live.events)
                self._watch(live, msg.expires_at)
                work.touch(live)
            return
        detail = {"attempt": msg.attempts, "connector": name, "revoked": words,
                  "reason": "no outcome before its timeout"}
        if any(a is not Revoked.REVOKED for a in answers):
            detail["duplicate_risk"] = "not every unit could be withdrawn"
        self._next_attempt(live, now, work, "timeout", detail)

    # -- connectors added and removed while running (gateway.reload) ------------------------
    def add_channel(self, channel: Channel) -> None:
        """Attempts may go to `channel` from now on, under its name (one removed under that
        name may still be draining: its receipts are matched the new one's way)."""
        if not isinstance(self.channels, dict):
            raise TypeError("the dispatcher was given a read-only channel mapping")
        if channel.name in self.channels:
            raise ValueError(f"a channel named {channel.name!r} is running: remove it first")
        self.channels[channel.name] = channel
        self._size_in_flight()
        self._retired.pop(channel.name, None)
        self._ids.pop(channel.name, None)
        if self._nursery is not None:
            self._start_following(channel)

    def remove_channel(self, name: str) -> list[tuple[Live, Part]]:
        """No attempt goes to that channel any more (its receipts are still matched); the
        parts (with their message) submitted, or handed to it, through it: those SUBMITTED
        wait for their receipts, the others are answered by it (or withdrawn)."""
        if not isinstance(self.channels, dict):
            raise TypeError("the dispatcher was given a read-only channel mapping")
        channel = self.channels.pop(name)
        self._size_in_flight()
        self._retired[name] = channel  # a timed-out attempt on it is still revoked through it
        self._ids[name] = channel if isinstance(channel, ReceiptIds) else _AS_GIVEN
        scope = self._following.pop(name, None)
        if scope is not None:
            scope.cancel()
        open_parts = (PartState.PENDING, PartState.SUBMITTED)
        return [(live, part) for live in self.live.values() if live.msg.connector == name
                for part in live.parts if part.connector == name and part.state in open_parts]

    def retired(self, name: str) -> Channel | None:
        """The channel remove_channel took out under that name (until one is added again)."""
        return self._retired.get(name)

    def _size_in_flight(self) -> None:
        if not self._max_given:
            self.max_in_flight = max(64, 2 * sum(c.capacity for c in self.channels.values()))

    def _start_following(self, channel: Channel) -> None:
        assert self._nursery is not None
        scope = self._following[channel.name] = trio.CancelScope()

        async def follow() -> None:
            with scope:
                await self._follow(channel)
        self._nursery.start_soon(follow)

    # -- graceful shutdown ----------------------------------------------------------------------
    def stop_attempts(self) -> None:
        """Start no more attempts (graceful shutdown): due messages stay as stored, resumed
        after the restart; submit results and receipts are still handled and written."""
        self._stopped = True
        self._wake.set()

    async def settle(self) -> None:
        """Return once every submit result received so far is handled and its write is
        committed (after stop_attempts() and the connectors' answers: nothing is then left
        that a restart would send to an operator again)."""
        while self._results or self._saving:
            self._idle = trio.Event()
            if self._results:
                self._wake.set()
            await self._idle.wait()

    # -- writing a round ----------------------------------------------------------------------
    def _commit(self, work: _Round) -> None:
        """Queue the round's store write now (rows as they are now); a task waits for the
        commit, then hands on the finished messages' reports."""
        assert self._nursery is not None
        self._saving += 1
        self._nursery.start_soon(self._committed, work, *self._save(work))

    def _save(self, work: _Round) -> tuple[PendingWrite | None, list[Part]]:
        """Queue the write of a round's messages as they are now (None if refused at once),
        and the parts whose operator outcome that write holds (see _settled)."""
        # A held message is left out: its cancel or replacement writes it (and if that fails,
        # its state as it was is written by its next round), never a half-made change.
        items: list[tuple[Message, list[Part], list[Report]]] = \
            [(live.msg, live.parts, []) for live in work.touched.values() if not live.held] + \
            [(live.msg, live.parts, reports) for live, reports in work.finished]
        outcomes = [p for _, parts, _ in items for p in parts
                    if p.smsc_id and p.state in _FINAL_PARTS]
        if work.events is None:  # the first try: the messages' history goes with them
            work.events = []
            for live in itertools.chain(work.touched.values(), (f[0] for f in work.finished)):
                if live.events:
                    work.events += live.events
                    live.events = []
        try:
            return self.store.save_messages_nowait(items, existing=True,
                                                   events=work.events), outcomes
        except StoreError:
            log.exception("dispatcher.save_failed", messages=len(items))
            return None, []

    async def _committed(self, work: _Round, pending: PendingWrite | None,
                         outcomes: list[Part]) -> None:
        """Wait for a round's commit. If it failed (disk full...), write the same messages
        again, as they are by then, until it succeeds: memory is not left ahead of the store
        for good, and final states are handed on only once stored."""
        try:
            await self._save_until_stored(work, pending, outcomes)
        finally:
            self._saving -= 1
            self._idle.set()

    async def _save_until_stored(self, work: _Round, pending: PendingWrite | None,
                                 outcomes: list[Part]) -> None:
        delay = SAVE_RETRY_MIN
        while True:
            if pending is not None:
                try:
                    with trio.CancelScope(shield=True):
                        await pending.wait()
                    break
                except StoreError as exc:  # the store counts it and logs it, rate-limited
                    log.debug("dispatcher.save_failed", retry_in=delay, error=str(exc))
            await trio.sleep(delay)  # cancelled at shutdown: the store has the older state
            delay = min(delay * 2, SAVE_RETRY_MAX)
            pending, outcomes = self._save(work)
        self._settled(outcomes)
        for live, reports in work.finished:
            self._finalized(live, reports)

    # -- receipts -------------------------------------------------------------------------------
    # A submitted part is in _by_smsc (its provider id -> the part) from its send's answer
    # until the commit of a write holding its outcome (_settled). So a receipt that finds its
    # part there with an outcome already applied is one whose effect is not stored yet: it is
    # answered only once that write commits. One found only in the store is "late" if the
    # part's outcome is stored, an orphan otherwise.
    def _matching(self, connector: str) -> ReceiptIds:
        ids = self._ids.get(connector)
        if ids is None:
            channel = self.channels.get(connector)
            ids = channel if isinstance(channel, ReceiptIds) else _AS_GIVEN
            self._ids[connector] = ids
        return ids

    def _key(self, connector: str, provider_id: str) -> str:
        return self._matching(connector).receipt_key(provider_id)

    def _keys(self, connector: str, provider_id: str, id_format: str) -> list[str]:
        return self._matching(connector).receipt_keys(provider_id, id_format)

    def _register(self, live: Live, part: Part) -> None:
        assert part.smsc_id is not None
        key = (part.connector, self._key(part.connector, part.smsc_id))
        self._by_smsc[key] = (live, part)
        if self._held_count:
            for event in self._held.get(key, ()):
                event.set()

    def _settled(self, outcomes: Sequence[Part]) -> None:
        """After a commit: these parts' outcomes are stored; their receipts are answered."""
        for part in outcomes:
            key = (part.connector, self._key(part.connector, part.smsc_id or ""))
            hit = self._by_smsc.get(key)
            if hit is not None and hit[1] is part:
                del self._by_smsc[key]
            event = self._storing.pop(key, None)
            if event is not None:
                event.set()

    def _unsettled(self, part: Part) -> bool:
        hit = self._by_smsc.get((part.connector, self._key(part.connector, part.smsc_id or "")))
        return hit is not None and hit[1] is part

    async def _wait_settled(self, part: Part, deadline: float) -> bool:
        """Wait (until the trio time `deadline`) for the commit of the part's outcome,
        applied in memory already; whether it is stored."""
        if self._unsettled(part):
            key = (part.connector, self._key(part.connector, part.smsc_id or ""))
            event = self._storing.setdefault(key, trio.Event())
            with trio.move_on_at(deadline):
                await event.wait()
        return not self._unsettled(part)

    def _lookup(self, connector: str, variants: Sequence[str]) -> tuple[Live, Part] | None:
        for variant in variants:
            hit = self._by_smsc.get((connector, variant))
            if hit is not None:
                return hit
        return None

    def _match(self, connector: str, smsc_id: str, id_format: str) -> tuple[Live, Part] | None:
        """The submitted part a receipt id names. In "auto" mode, converted (hex/decimal)
        spellings are trusted only once this connector has shown that it converts ids:
        before that, "4096" must not match a live id "1000" (its hex form)."""
        hit = self._by_smsc.get((connector, self._key(connector, smsc_id)))  # same spelling
        if hit is not None or id_format == "as-is":
            return hit
        if id_format == "auto" and connector not in self._converting:
            return None
        return self._lookup(connector, self._keys(connector, smsc_id, id_format))

    async def receipts(self, channel: Channel, receipts: Sequence[ProviderReceipt],
                       answered: Callable[[int, bool], None],
                       parked: Callable[[int], None] | None = None) -> None:
        """ChannelEvents.receipts: see on_receipts."""
        await self.on_receipts(channel.name, receipts, answered, parked)

    async def on_receipts(self, connector: str, receipts: Sequence[ProviderReceipt],
                          answered: Callable[[int, bool], None],
                          parked: Callable[[int], None] | None = None, *,
                          hold: float | None = None, id_format: str | None = None) -> None:
        """Apply a channel's receipts read together.

        answered(i, stored) is called once for each receipt, as soon as its own fate is known:
        stored=True once its effect is committed (or it needs none: intermediate, late, or
        recorded as an orphan), so the provider may be answered OK; False if the store could
        not take it, so the provider must be told to send it again. Receipts whose part is
        known are applied in one store write; the others are held (up to `hold`, by default
        the channel's) and matched concurrently (parked(i) is called when receipt i starts
        waiting to be matched: its answer may need more of the provider's reports read). A
        receipt naming no id is recorded as an orphan.
        """
        matching = self._matching(connector)
        hold = matching.receipt_hold if hold is None else hold
        id_format = matching.receipt_id_format if id_format is None else id_format
        matched: list[tuple[Live, Part, ProviderReceipt, Callable[[bool], None]]] = []
        misses: list[tuple[int, ProviderReceipt]] = []
        for i, receipt in enumerate(receipts):
            hit = self._match(connector, receipt.provider_id, id_format) \
                if receipt.provider_id else None
            if hit is None:
                misses.append((i, receipt))
            else:
                matched.append((*hit, receipt, functools.partial(answered, i)))
        looked_up: set[int] = set()
        if misses and self.store.shared:  # other nodes' receipts: one read, one write
            misses, looked_up = await self._hand_over_misses(connector, misses, answered)
        if not misses:  # the usual case: every receipt's part is known, no nursery needed
            await self._apply_receipts(connector, matched, hold)
            return
        async with trio.open_nursery() as nursery:
            for i, receipt in misses:
                if not receipt.provider_id:
                    nursery.start_soon(self._unreadable, connector, receipt,
                                       functools.partial(answered, i))
                    continue
                nursery.start_soon(self._unmatched, connector, receipt, hold, id_format,
                                   functools.partial(answered, i),
                                   functools.partial(parked, i) if parked else None,
                                   i in looked_up)
            if matched:
                await self._apply_receipts(connector, matched, hold)

    async def _unreadable(self, connector: str, receipt: ProviderReceipt,
                          done: Callable[[bool], None]) -> None:
        """A receipt without a readable id: kept as an orphan (warned, counted)."""
        done(await self.record_orphan(connector, "", "UNKNOWN", receipt.raw))

    async def _unmatched(self, connector: str, receipt: ProviderReceipt, hold: float,
                         id_format: str, done: Callable[[bool], None],
                         parked: Callable[[], None] | None = None,
                         looked_up: bool = False) -> None:
        """A receipt for an id not in memory: late (its part's outcome is stored already),
        early (held up to `hold` seconds: its send's answer may still be on its way, e.g. on
        another bind), or else an orphan. ``looked_up``: the store was read for it already
        (_hand_over_misses), and had no other node's part for it."""
        smsc_id, word = receipt.provider_id, receipt.word
        try:
            left = self._superseded.get((connector, self._key(connector, smsc_id)))
            if left is not None:
                await self._after_fallback(connector, receipt, left[0])
                done(True)
                return
            as_is = self._keys(connector, smsc_id, "as-is")
            if self.store.shared:  # one read tells late, another node's, or this node's
                if not looked_up and await self._handed_over(connector, receipt, as_is):
                    done(True)
                    return
            elif await self._late(connector, as_is, smsc_id, word):
                done(True)
                return
            handed = False

            async def elsewhere() -> bool:  # another node's part, committed since?
                nonlocal handed
                handed = await self._handed_over(
                    connector, receipt, self._keys(connector, smsc_id, id_format))
                return handed

            hit = self._match(connector, smsc_id, id_format) or await self._hold(
                connector, smsc_id, hold, id_format, parked,
                elsewhere if self.store.shared else None)
            if handed:
                done(True)
            elif hit is not None:
                await self._apply_receipts(connector, [(*hit, receipt, done)], hold)
            elif self.store.shared and await self._handed_over(
                    connector, receipt, self._keys(connector, smsc_id, id_format)):
                done(True)  # late, or its part was committed by another node meanwhile
            elif not self.store.shared and await self._late(
                    connector, self._keys(connector, smsc_id, id_format), smsc_id, word):
                done(True)
            else:
                done(await self.record_orphan(connector, smsc_id, word, receipt.raw))
        except StoreError as exc:
            log.warning("receipt.not_stored", smsc=connector, smsc_id=smsc_id, error=str(exc))
            done(False)
        except HoldFull:
            done(False)  # the provider sends it again later (logged, rate-limited, in _hold)

    async def _hold(self, connector: str, smsc_id: str, hold: float, id_format: str,
                    parked: Callable[[], None] | None = None,
                    elsewhere: Callable[[], Awaitable[bool]] | None = None
                    ) -> tuple[Live, Part] | None:
        """Wait up to `hold` for the part a receipt names to be registered; that part. With
        `elsewhere` (nodes sharing the store), also ask it now and then (HOLD_RECHECK) whether
        the receipt was taken care of otherwise (another node's part: handed over): None then.

        At most MAX_HELD_RECEIPTS wait at once: beyond, HoldFull (the provider is told to
        send it again later) rather than an unbounded number of waiting receipts."""
        if self._held_count >= MAX_HELD_RECEIPTS:
            now = trio.current_time()
            self._held_refused += 1
            if now - self._held_log_at >= HOLD_LOG_PERIOD:
                log.warning("receipt.hold_full", smsc=connector, held=self._held_count,
                            refused=self._held_refused)
                self._held_log_at, self._held_refused = now, 0
            raise HoldFull(f"{self._held_count} receipts already held for matching")
        variants = self._keys(connector, smsc_id, id_format)
        own = self._key(connector, smsc_id)
        trusted = id_format != "auto" or connector in self._converting
        keys = [(connector, v) for v in (variants if trusted else [own])]
        event = trio.Event()
        for key in keys:
            self._held.setdefault(key, []).append(event)
        self._held_count += 1
        metrics.RECEIPTS_HELD.inc()
        if parked is not None:
            parked()
        try:
            deadline = trio.current_time() + hold
            pause, longest = HOLD_RECHECK
            while True:
                wake = deadline if elsewhere is None else min(deadline,
                                                               trio.current_time() + pause)
                with trio.move_on_at(wake):
                    await event.wait()
                if event.is_set() or wake >= deadline or elsewhere is None:
                    break
                if await elsewhere():
                    return None
                pause = min(pause * 2, longest)
        finally:
            self._held_count -= 1
            for key in keys:
                waiting = self._held[key]
                waiting.remove(event)
                if not waiting:
                    del self._held[key]
        hit = self._by_smsc.get((connector, own)) or self._lookup(connector, variants)
        if hit is not None and self._key(connector, hit[1].smsc_id or "") != own \
                and id_format == "auto" and connector not in self._converting:
            self._converting.add(connector)  # learnt: this provider converts its ids
            log.info("receipt.id_conversion_learnt", smsc=connector)
        return hit

    @staticmethod
    def _spellings(smsc_id: str, keys: Sequence[str]) -> list[str]:
        """The ways a stored part's id may be written for a receipt's id and its keys."""
        given = smsc_id.strip("\x00 \t\r\n")
        return list(dict.fromkeys(
            [given, given.lower(), given.upper(), *keys, *(k.upper() for k in keys)]))

    def _handover(self, connector: str, receipt: ProviderReceipt,
                  found: tuple[Part, int | None] | None) -> Forwarded | bool:
        """Several nodes share a PostgreSQL store: what a receipt whose part (with its owner)
        is `found` needs: True if the part's outcome is stored already (late, or a
        duplicate: taken); its Forwarded if the part belongs to a message another node works
        on (the SMSC sent it on this node's bind); False if neither (this node's own, or no
        part yet)."""
        if found is None:
            return False
        part, owner = found
        if part.state in _FINAL_PARTS:
            log.info("receipt.late", smsc=connector, smsc_id=receipt.provider_id,
                     stat=receipt.word, part_state=part.state.value)
            return True
        if owner is None:
            return False  # its message is final, this part not: as a lone node would
        if owner == self.store.epoch and part.message_id in self.live:
            return False  # this node's own (its part may be on its way: the hold)
        # Another node's, or one this node is taking over (not loaded yet): to the inbox of
        # whoever works on it, applied there once it is loaded.
        log.debug("receipt.handed_over", smsc=connector, smsc_id=receipt.provider_id,
                  message_id=part.message_id, node=owner or None)
        return Forwarded(part.message_id, part.part_no, connector, receipt.provider_id,
                         receipt.outcome, receipt.word, receipt.error, receipt.raw,
                         self.clock.now())

    async def _forward(self, connector: str, forwarded: Sequence[Forwarded]) -> None:
        """Store receipts in the inboxes of the nodes working on their messages (one
        commit); StoreError if it failed."""
        await self.store.forward_receipts(forwarded)
        metrics.child(metrics.RECEIPTS_HANDED_OVER, connector).inc(len(forwarded))

    async def _handed_over(self, connector: str, receipt: ProviderReceipt,
                           keys: Sequence[str]) -> bool:
        """One receipt's _handover, read and done: True if it was taken (late) or handed
        over, False if it is this node's own or has no part yet. StoreError if it could not
        be read or stored."""
        verdict = self._handover(connector, receipt, await self.store.find_part_owner(
            connector, self._spellings(receipt.provider_id, keys)))
        if isinstance(verdict, Forwarded):
            await self._forward(connector, [verdict])
            return True
        return verdict

    async def _hand_over_misses(self, connector: str,
                                misses: list[tuple[int, ProviderReceipt]],
                                answered: Callable[[int, bool], None]
                                ) -> tuple[list[tuple[int, ProviderReceipt]], set[int]]:
        """The _handover of a batch's receipts not matched in memory, with one read and one
        write: late ones are answered taken, other nodes' handed over in one commit (and
        answered when it is done). Returns the rest, and which of them were looked up (their
        part is this node's, or not stored yet: they are held)."""
        candidates = [(i, r) for i, r in misses if r.provider_id and (
            connector, self._key(connector, r.provider_id)) not in self._superseded]
        if not candidates:
            return misses, set()
        spellings = {i: self._spellings(r.provider_id, self._keys(connector, r.provider_id,
                                                                  "as-is"))
                     for i, r in candidates}
        try:
            found = await self.store.find_parts_owners(
                connector, [s for listed in spellings.values() for s in listed])
        except StoreError:  # counted and logged by the store: each is looked up alone
            return misses, set()
        by_id: dict[str, tuple[Part, int | None]] = {}
        for part, owner in found:
            by_id.setdefault(part.smsc_id or "", (part, owner))
        taken: set[int] = set()
        forwarded: list[tuple[int, Forwarded]] = []
        for i, receipt in candidates:
            hit = next((by_id[s] for s in spellings[i] if s in by_id), None)
            verdict = self._handover(connector, receipt, hit)
            if verdict is True:
                answered(i, True)
                taken.add(i)
            elif isinstance(verdict, Forwarded):
                forwarded.append((i, verdict))
                taken.add(i)
        if forwarded:
            try:
                await self._forward(connector, [f for _, f in forwarded])
                stored = True
            except StoreError as exc:
                log.warning("receipt.not_stored", smsc=connector, receipts=len(forwarded),
                            error=str(exc))
                stored = False
            for i, _ in forwarded:
                answered(i, stored)
        return [(i, r) for i, r in misses if i not in taken], \
            {i for i, _ in candidates if i not in taken}

    async def _adopt_orphans(self) -> None:
        """Every ADOPT_INTERVAL seconds, take over the work of dead nodes (Store.adopt)."""
        while True:
            await trio.sleep(ADOPT_INTERVAL)
            with contextlib.suppress(StoreError):  # counted and logged by the store
                await self.adopt()

    async def _follow_inbox(self) -> None:
        """Apply the receipts other nodes took for the messages this node works on, as its
        own (then delete them; one applied twice after a crash is a late receipt): on each
        notification of a commit that handed some over, and every INBOX_POLL seconds."""
        while True:
            try:
                forwarded = await self.store.inbox(INBOX_BATCH)
            except StoreError:  # counted and logged by the store; read again at the next poll
                forwarded = []
            if forwarded:
                await self._apply_handed_over(forwarded)
            if len(forwarded) < INBOX_BATCH:
                await self.store.inbox_notified(INBOX_POLL)

    async def _apply_handed_over(self, forwarded: Sequence[Forwarded]) -> None:
        by_connector: dict[str, list[Forwarded]] = {}
        for f in forwarded:
            by_connector.setdefault(f.connector, []).append(f)
        applied: list[int] = []
        for connector, items in by_connector.items():
            receipts = [ProviderReceipt(f.provider_id, f.outcome, f.word, f.error, f.raw)
                        for f in items]

            def answered(i: int, stored: bool, items: list[Forwarded] = items) -> None:
                rid = items[i].id
                if stored and rid is not None:
                    applied.append(rid)

            await self.on_receipts(connector, receipts, answered, hold=0.0)
        with contextlib.suppress(StoreError):  # else applied again next time: late receipts
            await self.store.drop_inbox(applied)

    async def _late(self, connector: str, keys: Sequence[str], smsc_id: str, word: str) -> bool:
        """Whether the store holds a part under one of these ids (normalised, see
        ReceiptIds) whose outcome is stored: the receipt is a duplicate or came late."""
        part = await self.store.find_part(connector, self._spellings(smsc_id, keys))
        if part is None or part.state not in _FINAL_PARTS:
            return False
        log.info("receipt.late", smsc=connector, smsc_id=smsc_id, stat=word,
                 part_state=part.state.value)
        return True

    async def record_orphan(self, connector: str, smsc_id: str, stat: str, raw: bytes) -> bool:
        """Store a receipt that matches no part (warned and counted: a misconfigured
        receipt_id_format shows on a dashboard); whether it was stored."""
        try:
            await self.store.record_orphan_receipt(connector, smsc_id, raw, self.clock.now())
        except StoreError as exc:
            log.warning("receipt.orphan_not_stored", smsc=connector, smsc_id=smsc_id,
                        error=str(exc))
            return False
        log.warning("receipt.orphan", smsc=connector, smsc_id=smsc_id, stat=stat)
        metrics.child(metrics.ORPHAN_RECEIPTS, connector).inc()
        return True

    def _word_label(self, word: str) -> str:
        """A receipt word as a metric label (the first RECEIPT_WORDS seen; then "OTHER")."""
        if word in self._words:
            return word
        if len(self._words) < RECEIPT_WORDS and len(word) <= 16:
            self._words.add(word)
            return word
        return "OTHER"

    async def _apply_receipts(
            self, connector: str,
            matched: Sequence[tuple[Live, Part, ProviderReceipt, Callable[[bool], None]]],
            hold: float) -> None:
        """Record receipts' outcomes on their parts; finish the messages that are complete;
        commit it all in one write, then tell each receipt's `done` whether it is stored. If
        that write failed, the outcomes stay in memory and are written again until the store
        takes them; the provider, told of the failure, sends the receipts again, which are
        answered once that write is stored (waiting up to `hold` for it)."""
        now = self.clock.now()
        work = _Round()
        applied: list[Callable[[bool], None]] = []
        pending: list[tuple[Part, Callable[[bool], None]]] = []  # outcome known, not stored
        for live, part, receipt, done in matched:
            outcome, word, error = receipt.outcome, receipt.word, receipt.error
            metrics.child(metrics.RECEIPTS, connector, self._word_label(word)).inc()
            if outcome is None:
                done(True)  # intermediate: nothing to store
                continue
            if part.state in _FINAL_PARTS:
                pending.append((part, done))  # a copy, or its message ended otherwise
                continue
            part.state = outcome
            part.error = error
            part.done_at = now
            applied.append(done)
            if self.observe is not None:  # the quality routers learn from every outcome
                self.observe(connector, live.msg.dest_addr, outcome is PartState.DELIVERED,
                             None if part.submitted_at is None else now - part.submitted_at,
                             now)
            final = final_state_of(live.parts)
            detail: dict[str, object] = {"part": part.part_no, "connector": connector,
                                         "stat": word, "err": error}
            if final is None:
                transitions.note(live.msg, "receipt", now, detail, into=live.events)
                work.touch(live)
                continue
            if final is State.DELIVERED:
                live.msg.error = 0  # an earlier attempt's temporary error is not its outcome
            elif error:
                live.msg.error = error
            work.finish(live, self._finalize(live, final, now, detail, kind="receipt"))
        if work:
            assert self._nursery is not None
            write, outcomes = self._save(work)
            try:
                if write is None:
                    raise StoreError("the store refused the write")
                # Shielded: a committed final state must reach _finalized (its report,
                # forgetting the message) even if the operator connection drops meanwhile.
                with trio.CancelScope(shield=True):
                    await write.wait()
            except StoreError as exc:
                log.warning("receipt.not_stored", smsc=connector, receipts=len(applied),
                            error=str(exc))
                self._saving += 1  # _committed counts it down, as for a round's write
                self._nursery.start_soon(self._committed, work, None, [])
                for done in applied:
                    done(False)
            else:
                self._settled(outcomes)
                for live, reports in work.finished:
                    self._finalized(live, reports)
                for done in applied:
                    done(True)
        deadline = trio.current_time() + hold
        for part, done in pending:
            done(await self._wait_settled(part, deadline))

    # -- final states ---------------------------------------------------------------------------
    def _finish(self, live: Live, state: State, now: float, work: _Round,
                detail: dict[str, object]) -> None:
        if not live.msg.state.final:
            work.finish(live, self._finalize(live, state, now, detail))

    def _finalize(self, live: Live, state: State, now: float, detail: dict[str, object],
                  kind: str = "final") -> list[Report]:
        """Move a message and its open parts to a final state (recorded in its history as an
        event of that kind, with that detail); the report owed upstream."""
        msg = live.msg
        transitions.move(msg, kind, state, now, detail, into=live.events)
        msg.done_at = now
        part_state = {State.EXPIRED: PartState.EXPIRED, State.REJECTED: PartState.REJECTED}.get(
            state, PartState.UNDELIVERABLE)
        for part in live.parts:
            if part.state in (PartState.PENDING, PartState.SUBMITTED):
                part.state = part_state
                part.done_at = now
        return [self.receipt_of(msg, state, now)] if wants_report(
            msg.registered_delivery, state) else []

    def _finalized(self, live: Live, reports: list[Report]) -> None:
        """After the commit of a final state: forget the message, hand its report on."""
        msg = live.msg
        if self.live.pop(msg.id, None) is not None:
            left = self._per_account.get(msg.account, 1) - 1
            if left > 0:
                self._per_account[msg.account] = left
            else:
                self._per_account.pop(msg.account, None)
        self._parked.pop(msg.id, None)
        log.info("message.final", message_id=msg.id, state=msg.state.value, error=msg.error,
                 attempts=msg.attempts, smsc=msg.connector)
        metrics.child(metrics.RECEIPT_SECONDS, msg.connector or NO_SMSC, msg.state.value) \
            .observe((msg.done_at or msg.created_at) - msg.created_at)
        for report in reports:
            self.on_report(report)

    # -- admin ----------------------------------------------------------------------------------
    @property
    def parked(self) -> int:
        """Messages waiting for a connector of their route to come up."""
        return len(self._parked)

    def is_parked(self, message_id: str) -> bool:
        return message_id in self._parked

    def retry_now(self, message_id: str) -> str:
        """Attempt a waiting message now (`smsgw message retry`): one waiting for its next
        attempt after a temporary refusal, or parked while every connector of its route is
        down (parked again if they still are). Says what it did; raises RetryRefused, saying
        why, for a message not unfinished here, in flight, or scheduled by its sender."""
        live = self.live.get(message_id)
        if live is None:
            raise RetryRefused("no unfinished message has this id (final, purged or unknown)")
        msg = live.msg
        now = self.clock.now()
        if msg.state is State.IN_FLIGHT:
            raise RetryRefused("in flight: submitted to the operator, its answer or receipt "
                               "is awaited (it expires at the end of its validity)")
        if msg.state is State.SCHEDULED and msg.not_before > now:
            when = f"{_utc(msg.not_before):%Y-%m-%d %H:%M:%S}"
            raise RetryRefused(f"scheduled by its sender for {when} UTC: it is not due yet")
        was_parked = self._parked.pop(message_id, None) is not None
        waited = msg.next_attempt_at
        transitions.note(msg, "retry_now", now, {
            "was": "waiting for a connector of its route" if was_parked else
            f"waiting for its next attempt at {history.iso(waited)}"}, into=live.events)
        msg.next_attempt_at = now
        self._watch(live, now)
        self._wake.set()
        log.info("message.retry_now", message_id=msg.id, parked=was_parked)
        if was_parked:
            return "was waiting for a connector of its route: attempted now"
        return f"next attempt moved from {_utc(waited):%Y-%m-%d %H:%M:%S} UTC to now"

    # -- cancel and replace (before any part reaches an operator) ------------------------------
    # Race-free by construction: the checks and the change below run without a checkpoint,
    # like a dispatcher round, so a message is either still unsent (the change is made, and
    # held out of every round until its commit) or already handed to a connector (too late).
    def _unsent(self, live: Live, action: str) -> None:
        """Raise ChangeRefused unless the message can still be changed: not final, no submit
        handed to an operator for it (in flight, answered or sent), no change being made."""
        msg = live.msg
        if live.held:
            raise ChangeRefused("busy", f"a cancel or replacement of message {msg.id} is being "
                                        "stored: try again", msg.state)
        if msg.state.final:
            raise ChangeRefused("too_late", f"message {msg.id} is {msg.state.value}: too late "
                                            f"to {action}", msg.state)
        if msg.state is State.IN_FLIGHT or live.sending or any(
                p.state is not PartState.PENDING for p in live.parts):
            raise ChangeRefused("too_late", f"message {msg.id} is {msg.state.value}: handed to "
                                            f"an operator already, too late to {action}",
                                msg.state)

    async def _not_live(self, message_id: str, account: str | None,
                        action: str) -> ChangeRefused:
        """Why a message that is not unfinished here cannot be changed (reads the store)."""
        if account is None:
            msg = await self.store.get_message(message_id)
        else:
            msg = await self.store.get_message_for_account(account, message_id)
        if msg is None:
            return ChangeRefused("unknown", f"no message {message_id[:80]!r}"
                                 + ("" if account is None else f" for account {account}"))
        if msg.state.final:
            return ChangeRefused("too_late", f"message {msg.id} is {msg.state.value}: too late "
                                             f"to {action}", msg.state)
        return ChangeRefused("busy", f"message {msg.id} is being accepted: try again",
                             msg.state)

    async def cancel(self, message_id: str, *, account: str | None, by: str,
                     check: Callable[[Message], None] | None = None,
                     here_only: bool = False) -> Message:
        """Cancel a message no part of which reached an operator: CANCELLED once committed,
        with its history event and, if it asked for one, its receipt (stat DELETED). account:
        only that account's message (None: any, for the admin); check(msg) may raise to refuse
        (e.g. a source address that does not match), before anything changes. A message
        another node works on is cancelled by it (self.remote), unless ``here_only``. Raises
        ChangeRefused (unknown, too late, busy) or StoreError (nothing changed)."""
        live = self.live.get(message_id)
        if live is None and self.remote is not None and not here_only:
            return await self.remote.cancel(message_id, account, by, check)
        if live is None or (account is not None and live.msg.account != account):
            raise await self._not_live(message_id, account, "cancel")
        self._unsent(live, "cancel")
        if check is not None:
            check(live.msg)
        [msg] = await self._cancel([live], by)
        return msg

    async def cancel_matching(self, account: str, match: Callable[[Message], bool], *,
                              by: str, dest_addrs: Sequence[str] = ()
                              ) -> tuple[list[Message], list[Message]]:
        """Cancel every unfinished message of the account that `match`es and can still be
        cancelled, in one commit; (those cancelled, those matched but too late or busy).
        With other nodes (self.remote), theirs to one of ``dest_addrs`` too, by them."""
        chosen: list[Live] = []
        left: list[Message] = []
        for live in self.live.values():
            if live.msg.account != account or not match(live.msg):
                continue
            try:
                self._unsent(live, "cancel")
            except ChangeRefused:
                left.append(live.msg)
            else:
                chosen.append(live)
        cancelled = await self._cancel(chosen, by) if chosen else []
        if self.remote is not None and dest_addrs:
            theirs, not_theirs = await self.remote.cancel_matching(account, dest_addrs,
                                                                   match, by)
            cancelled, left = cancelled + theirs, left + not_theirs
        return cancelled, left

    async def _cancel(self, lives: list[Live], by: str) -> list[Message]:
        now = self.clock.now()
        undo: list[tuple[Live, State, float | None, list[tuple[PartState, float | None]]]] = []
        items: list[tuple[Message, Sequence[Part], Sequence[Report]]] = []
        events: list[Event] = []
        for live in lives:
            msg = live.msg
            undo.append((live, msg.state, msg.done_at, [(p.state, p.done_at) for p in live.parts]))
            events += live.events  # its history not yet written goes first (kept on undo)
            transitions.move(msg, "cancelled", State.CANCELLED, now, {"by": by}, into=events)
            msg.done_at = now
            for part in live.parts:
                part.state, part.done_at = PartState.CANCELLED, now
            live.held, live.due = True, None  # its heap entries are void from now on
            self._parked.pop(msg.id, None)
            reports = [self.receipt_of(msg, State.CANCELLED, now)] if wants_report(
                msg.registered_delivery, State.CANCELLED) else []
            items.append((msg, live.parts, reports))
        try:
            write = self.store.save_messages_nowait(items, existing=True, events=events)
            with trio.CancelScope(shield=True):  # the change must be settled either way
                await write.wait()
        except StoreError:
            for live, state, done_at, parts in undo:  # the store holds them as they were
                live.msg.state, live.msg.done_at, live.held = state, done_at, False
                for part, (part_state, part_done) in zip(live.parts, parts, strict=True):
                    part.state, part.done_at = part_state, part_done
                self._schedule(live, live.msg.next_attempt_at)
            raise
        for live, (_, _, owed) in zip(lives, items, strict=True):
            live.held, live.events = False, []
            log.info("message.cancelled", message_id=live.msg.id, by=by)
            self._finalized(live, list(owed))
        return [live.msg for live in lives]

    async def replace(self, message_id: str, *, account: str, by: str,
                      plan: Callable[[Message], Replacement],
                      here_only: bool = False) -> Message:
        """Replace the text, schedule, validity and receipt request of a message no part of
        which reached an operator (replace_sm); plan(msg) gives the new values or raises to
        refuse, before anything changes. Returns the message once the change is committed
        (with a "replaced" history event); it is then attempted per its new schedule. A
        message another node works on is replaced by it (self.remote), unless ``here_only``.
        Raises ChangeRefused or StoreError (nothing changed)."""
        live = self.live.get(message_id)
        if live is None and self.remote is not None and not here_only:
            return await self.remote.replace(message_id, account, by, plan)
        if live is None or live.msg.account != account:
            raise await self._not_live(message_id, account, "replace")
        self._unsent(live, "replace")
        msg = live.msg
        new = plan(msg)
        now = self.clock.now()
        before = (msg.body, msg.registered_delivery, msg.expires_at, msg.not_before, msg.state,
                  msg.next_attempt_at, msg.parts_total, live.parts, live.units)
        changed = [name for name, old, value in (
            ("text", msg.body, new.body), ("registered_delivery", msg.registered_delivery,
                                           new.registered_delivery),
            ("expires_at", msg.expires_at, new.expires_at),
            ("not_before", msg.not_before, new.not_before)) if old != value]
        state = State.SCHEDULED if new.not_before > now else State.QUEUED
        event = transitions.move(msg, "replaced", state, now, {"by": by, "changed": changed})
        # After a temporary refusal the next attempt keeps its backoff; else the new schedule.
        waited = msg.next_attempt_at if msg.attempts else new.not_before
        msg.body, msg.registered_delivery = new.body, new.registered_delivery
        msg.expires_at, msg.not_before = new.expires_at, new.not_before
        msg.next_attempt_at = max(waited, new.not_before)
        msg.parts_total, live.parts, live.units = 0, [], None  # cut again from the new text
        live.held, live.due = True, None
        self._parked.pop(msg.id, None)
        try:
            write = self.store.replace_message_nowait(msg, [event])
            with trio.CancelScope(shield=True):
                await write.wait()
        except StoreError:
            (msg.body, msg.registered_delivery, msg.expires_at, msg.not_before, msg.state,
             msg.next_attempt_at, msg.parts_total, live.parts, live.units) = before
            raise
        finally:
            live.held = False
            self._schedule(live, msg.next_attempt_at)
        log.info("message.replaced", message_id=msg.id, by=by, changed=changed,
                 state=msg.state.value)
        metrics.child(metrics.REPLACED, msg.account).inc()
        return msg


class Remote(Protocol):
    """The other nodes, for the cancels and replacements of the messages they work on
    (gateway/cross_node.py CrossNode)."""

    async def cancel(self, message_id: str, account: str | None, by: str,
                     check: Callable[[Message], None] | None) -> Message: ...

    async def replace(self, message_id: str, account: str, by: str,
                      plan: Callable[[Message], Replacement]) -> Message: ...

    async def cancel_matching(self, account: str, dest_addrs: Sequence[str],
                              match: Callable[[Message], bool], by: str
                              ) -> tuple[list[Message], list[Message]]: ...


class RetryRefused(Exception):
    """retry_now cannot send this message now; the message says why."""


class ChangeRefused(Exception):
    """A cancel or replacement that cannot be made; str() says why. reason: "unknown" (no
    such message, or another account's), "too_late" (handed to an operator, or final; state
    says which), "busy" (being accepted, or another change of it is being stored: try
    again)."""

    def __init__(self, reason: str, detail: str, state: State | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.state = reason, detail, state
