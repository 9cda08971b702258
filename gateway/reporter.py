"""Reporter: delivers what the gateway owes upstream accounts (receipts and MO) as deliver_sm.

Reports are committed before they get here; the store holds them all, memory at most
REPORTS_IN_MEMORY per account (the rest is paged in as those drain). Each is sent over one of
the account's receiver/transceiver binds and deleted only after a deliver_sm_resp OK, or
deleted undelivered once older than the report expiry (counted). A bind that leaves a
deliver_sm unanswered past its response timeout is unbound; its reports go to other binds.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
from collections import deque
from collections.abc import Collection, Iterable

import structlog
import trio

from gateway import metrics
from gateway.acks import ReportAcks
from gateway.clock import WallClock
from gateway.logs import LevelGate
from gateway.model import Event, Message, Report, ReportKind, State
from gateway.paging import Paging, claim_free
from gateway.store import Store, StoreError
from gateway.webhooks import rfc3339, webhook_report
from smpp.connection import Connection, ConnectionClosed, ResponseTimeout, Turns, WindowFull
from smpp.constants import Tag
from smpp.pdu import DeliverSm, Pdu, set_tlv_int, set_tlv_str
from smpp.receipt import Receipt, format_receipt
from smpp.session import SessionError
from smpp.text import decode_text

log = structlog.get_logger("gateway.reporter")

ESM_RECEIPT = 0x04
ESM_UDHI = 0x40
MAX_SHORT_MESSAGE = 254
RETRY_DELAY = 5.0  # seconds before a report refused or unanswered upstream is offered again
MAX_IN_FLIGHT = 512  # per account; each bind's window limits further
REPORTS_IN_MEMORY = 2048  # per account; more wait in the store and are paged in as these go
EXPIRY_SWEEP = 60.0  # seconds at least between two looks for expired reports in memory
# Several nodes sharing a PostgreSQL store: a node that has had no receiver bind of an account
# for RELEASE_AFTER seconds makes that account's reports free for the nodes that have one;
# those claim free reports when told, when a bind comes, and every CLAIM_POLL seconds.
RELEASE_AFTER = 2.0
RELEASE_AGAIN = 0.2  # seconds: reports stored here since the last release are released then
CLAIM_POLL = 1.0
UNBIND_TIMEOUT = 2.0  # seconds an unanswering bind gets to answer its unbind
OTHER_ACCOUNT = "other"  # metric label of reports for accounts no longer configured
# message_state TLV of a receipt (SMPP 3.4 5.2.28); a cancelled message's is DELETED (4).
_SMPP_STATE = {"DELIVERED": 2, "EXPIRED": 3, "CANCELLED": 4, "UNDELIVERABLE": 5, "REJECTED": 8}
# A vendor-specific TLV (SMPP 3.4 leaves 0x1400-0x3FFF to SMSC vendors) on an MO that was an
# opt-out keyword: "stop" or "start" (C-octet string). See README "Rules".
TAG_OPTOUT = 0x1501


STATE_TO_STAT = {
    State.DELIVERED: "DELIVRD",
    State.UNDELIVERABLE: "UNDELIV",
    State.EXPIRED: "EXPIRED",
    State.REJECTED: "REJECTD",
    State.CANCELLED: "DELETED",  # cancelled before it reached an operator
}


# One info line per delivered report: asked of the gate (gateway.logs.LevelGate) only while
# the logger may log info at all.
_INFO = LevelGate(log, logging.INFO)


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def receipt_report(msg: Message, state: State, now: float) -> Report:
    """The delivery receipt owed upstream for a message that reached a final state, as its
    upstream face wants it (the dispatcher's receipt_of): the SMPP receipt text (its TLVs are
    added by deliver_pdu), and for a message taken over HTTP the webhook's fields."""
    text = decode_text(msg.body, msg.data_coding)[:20] if not msg.esm_class & ESM_UDHI else ""
    receipt = Receipt(
        id=msg.id, sub=1, dlvrd=1 if state is State.DELIVERED else 0,
        submit_date=_utc(msg.created_at), done_date=_utc(msg.done_at or now),
        stat=STATE_TO_STAT[state], err=f"{msg.error % 1000:03d}", text=text,
    )
    report = Report(
        account=msg.account, kind=ReportKind.RECEIPT, message_id=msg.id,
        source_addr=msg.dest_addr, source_ton=msg.dest_ton, source_npi=msg.dest_npi,
        dest_addr=msg.source_addr, dest_ton=msg.source_ton, dest_npi=msg.source_npi,
        data_coding=0, body=format_receipt(receipt), created_at=now, state=state,
        error=msg.error,
    )
    if msg.origin == "http":  # a receipt goes back where its message came from: a webhook
        webhook_report(report, callback_url=msg.callback_url, client_ref=msg.client_ref,
                       submitted_at=rfc3339(msg.created_at), stat=receipt.stat)
    return report


def deliver_pdu(report: Report) -> DeliverSm:
    """The deliver_sm carrying a report: receipt text + TLVs, or the MO as received."""
    pdu = DeliverSm(
        source_addr_ton=report.source_ton, source_addr_npi=report.source_npi,
        source_addr=report.source_addr, dest_addr_ton=report.dest_ton,
        dest_addr_npi=report.dest_npi, destination_addr=report.dest_addr,
        data_coding=report.data_coding,
    )
    if len(report.body) > MAX_SHORT_MESSAGE:
        pdu.tlvs[Tag.MESSAGE_PAYLOAD] = report.body  # a long MO
    else:
        pdu.short_message = report.body
    if report.kind is ReportKind.MO and report.extra.get("optout"):  # rules: STOP / START
        set_tlv_str(pdu, TAG_OPTOUT, report.extra["optout"])
    if report.kind is ReportKind.RECEIPT:
        pdu.esm_class = ESM_RECEIPT
        set_tlv_str(pdu, Tag.RECEIPTED_MESSAGE_ID, report.message_id)
        if report.state is not None:
            set_tlv_int(pdu, Tag.MESSAGE_STATE, _SMPP_STATE.get(report.state.value, 7), 1)
    return pdu


class _Account:
    """One account's reports: those in memory, and where the store's pages stand."""

    def __init__(self, label: str, expiry: float) -> None:
        self.label = label  # its metric label
        self.gauge = metrics.child(metrics.REPORTS_PENDING, label)  # set twice per report
        self.expiry = expiry
        self.next_expiry = math.inf  # wall time: the earliest a report in memory expires
        self.binds: list[Connection] = []
        self.pending: dict[int, Report] = {}  # in memory: ready, waiting to retry, in flight
        self.ready: deque[int] = deque()  # pending ids waiting to be sent, oldest first
        self.later: deque[tuple[float, int]] = deque()  # (trio time, id) to offer again
        self.sending: set[int] = set()  # ids sent and not answered yet
        self.wake = trio.Event()
        self.turns = Turns()  # which bind sends next
        self.count = 0  # stored and not yet delivered or expired (the gauge)
        self.paging = Paging()
        self.unbound_since = -math.inf  # trio time its last bind here went (never bound: -inf)
        self.release_after = -math.inf  # trio time: no release tried before (after a failure)

    def kick(self) -> None:
        self.wake.set()

    def slot_freed(self) -> None:
        """A bind's window has room again: worth a look only if reports wait for one (an
        answered enquire_link on each of 10,000 idle binds must not wake the account)."""
        if self.ready:
            self.wake.set()

    def keep(self, report: Report) -> None:
        assert report.id is not None
        self.pending[report.id] = report
        self.ready.append(report.id)
        self.paging.kept(report.id)
        self.next_expiry = min(self.next_expiry, report.created_at + self.expiry)
        self.wake.set()


class Reporter:
    """See the module docstring. `add()` must be called once for every committed report,
    right after its commit (no await in between): a page read cannot see a report before
    that, so paging never brings in one that add() brings too."""

    def __init__(self, store: Store, clock: WallClock, *, expiry: float = 72 * 3600.0,
                 accounts: Collection[str] | None = None,
                 memory: int = REPORTS_IN_MEMORY) -> None:
        self.store = store
        self.clock = clock
        self.expiry = expiry  # seconds from a report's creation to its deletion undelivered
        self.memory = max(2, memory)
        self._configured = accounts  # metric labels: these names, the others as "other"
        self._accounts: dict[str, _Account] = {}
        self._nursery: trio.Nursery | None = None
        self._acks = ReportAcks(store, RETRY_DELAY)  # delivered or expired: deleted in batches
        self._counted_below = 0  # reports with ids <= this were counted from the store
        self._label_counts: dict[str, int] = {}
        self._shared = store.shared  # other nodes deliver reports too

    def _account(self, name: str) -> _Account:
        acc = self._accounts.get(name)
        if acc is None:
            configured = self._configured is None or name in self._configured
            acc = self._accounts[name] = _Account(name if configured else OTHER_ACCOUNT,
                                                  self.expiry)
            if self._nursery is not None:
                self._nursery.start_soon(self._serve_account, name, acc)
        return acc

    def configure(self, accounts: Collection[str]) -> None:
        """A reload changed the accounts: their names label the metrics of reports seen from
        now on (reports of a removed account are still delivered if it binds, until expiry)."""
        self._configured = frozenset(accounts)

    def _count(self, acc: _Account, delta: int) -> None:
        acc.count += delta
        total = self._label_counts[acc.label] = self._label_counts.get(acc.label, 0) + delta
        acc.gauge.set(total)

    # -- inputs -------------------------------------------------------------------------------
    def add(self, report: Report, *, claimed: bool = False) -> None:
        """Take a committed report (it has its store id): in memory if there is room,
        otherwise it waits in the store for its page. ``claimed``: taken over from the free
        reports other nodes left (never counted here before)."""
        assert report.id is not None
        acc = self._account(report.account)
        if claimed and report.id in acc.pending:
            return
        if claimed or report.id > self._counted_below:
            self._count(acc, 1)
        if report.id in acc.pending:
            return
        if acc.paging.admits(report.id, len(acc.pending), self.memory):
            acc.keep(report)

    def add_many(self, reports: Iterable[Report]) -> None:
        for report in reports:
            self.add(report)

    def bind_added(self, account: str, conn: Connection) -> None:
        acc = self._account(account)
        acc.binds.append(conn)
        conn.on_slot_freed = acc.slot_freed
        acc.wake.set()
        if self._shared and self._nursery is not None:
            self._nursery.start_soon(self._claim)  # the reports others left free for it

    def bind_removed(self, account: str, conn: Connection) -> None:
        acc = self._accounts.get(account)  # never made here: this may run at shutdown
        if acc is not None and conn in acc.binds:
            acc.binds.remove(conn)
            if not acc.binds:
                acc.unbound_since = trio.current_time()
                acc.wake.set()

    def pending_count(self, account: str) -> int:
        """Reports of that account stored and not yet delivered or expired."""
        acc = self._accounts.get(account)
        return acc.count if acc else 0

    def pending_total(self) -> int:
        """Reports of every account stored and not yet delivered or expired."""
        return sum(acc.count for acc in self._accounts.values())

    async def flush_deletes(self) -> None:
        """Return once the deletions of the reports delivered so far are committed (graceful
        shutdown: a report the upstream answered is not sent again after the restart)."""
        await self._acks.flush()

    def in_memory(self, account: str) -> int:
        """Reports of that account held in memory (at most REPORTS_IN_MEMORY, plus the few
        committed while a page was being read)."""
        acc = self._accounts.get(account)
        return len(acc.pending) if acc else 0

    # -- delivery -------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for name in self._configured or ():
            metrics.child(metrics.REPORTS_PENDING, name).set(0)
        counts, self._counted_below = await self.store.pending_report_counts("smpp", mine=True)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for name, n in counts.items():
                acc = self._account(name)
                acc.paging.backlog = True  # all of them are in the store only, for now
                self._count(acc, n)
            nursery.start_soon(self._acks.run)
            if self._shared:
                nursery.start_soon(self._claim_loop)
            task_status.started()
            await trio.sleep_forever()  # keeps the nursery open for accounts seen later

    async def _claim_loop(self) -> None:
        while True:
            await self._claim()
            await self.store.reports_notified("smpp", CLAIM_POLL)

    async def _claim(self) -> None:
        """Take the free reports of the accounts bound here (several nodes share the store)."""
        def take(report: Report) -> None:
            self.add(report, claimed=True)
            metrics.child(metrics.REPORTS_CLAIMED, self._account(report.account).label,
                          "smpp").inc()

        names = [name for name, acc in self._accounts.items() if acc.binds]
        if claimed := await claim_free(self.store, names, "smpp", take):
            log.info("reports.claimed", reports=claimed)

    async def _release(self, name: str, acc: _Account) -> None:
        """No receiver bind of the account here for RELEASE_AFTER: its reports held here
        (but those being sent) become free for the nodes that have one."""
        acc.release_after = trio.current_time() + RELEASE_AGAIN
        try:
            released = await self.store.release_reports(name, "smpp", list(acc.sending))
        except StoreError:  # counted and logged by the store
            acc.release_after = trio.current_time() + RETRY_DELAY
            return
        for rid in [rid for rid in acc.pending if rid not in acc.sending]:
            del acc.pending[rid]
        acc.ready.clear()
        acc.later = deque(e for e in acc.later if e[1] in acc.pending)
        acc.paging = Paging()  # none of its reports is left here (but those added since)
        self._count(acc, -released)
        if released:
            log.info("reports.released", account=name, reports=released)

    async def _serve_account(self, name: str, acc: _Account) -> None:
        last_sweep = -math.inf
        while True:
            acc.wake = trio.Event()
            now = trio.current_time()
            if self.clock.now() >= acc.next_expiry and now >= last_sweep + EXPIRY_SWEEP:
                self._sweep(name, acc)
                last_sweep = now
            release_at = math.inf
            if self._shared and not acc.binds and acc.count > 0:
                release_at = max(acc.unbound_since + RELEASE_AFTER, acc.release_after)
                if now >= release_at:
                    await self._release(name, acc)
                    continue
            page_again = math.inf
            while acc.paging.backlog and len(acc.pending) <= self.memory // 2:
                if not await self._page_in(name, acc):
                    page_again = now + RETRY_DELAY  # the read failed or found nothing
                    break
            now = trio.current_time()
            while acc.later and acc.later[0][0] <= now:
                acc.ready.append(acc.later.popleft()[1])
            wall = self.clock.now()
            while acc.ready and len(acc.sending) < MAX_IN_FLIGHT:
                conn = acc.turns.pick(acc.binds)
                if conn is None:
                    break  # no bind, or every window full: woken by a bind or an answer
                report = acc.pending.get(acc.ready.popleft())
                if report is None:
                    continue  # expired meanwhile
                if report.created_at + self.expiry <= wall:
                    self._expire(name, acc, report)
                else:
                    self._send(name, acc, report, conn)
            sweep_at = max(self.clock.to_trio(acc.next_expiry), last_sweep + EXPIRY_SWEEP)
            wake_at = min(sweep_at, page_again, acc.later[0][0] if acc.later else math.inf,
                          release_at)
            with trio.move_on_at(wake_at):
                await acc.wake.wait()

    async def _page_in(self, name: str, acc: _Account) -> bool:
        """Read the account's next stored reports into memory; False if the read failed or
        found nothing."""
        room = self.memory - len(acc.pending)
        try:
            reports = await self.store.pending_reports(name, room, after=acc.paging.cursor)
        except StoreError:
            return False  # the store counts and logs it; tried again later
        wall = self.clock.now()
        for report in reports:
            assert report.id is not None
            acc.paging.read(report.id)
            if report.created_at + self.expiry <= wall:
                self._expire(name, acc, report)
            else:
                acc.keep(report)
        acc.paging.page_done(len(reports), room)
        return bool(reports)

    def _sweep(self, name: str, acc: _Account) -> None:
        """Expire the reports in memory that are too old and not in flight (those are
        expired if they come back unanswered); note when the next one expires."""
        limit = self.clock.now() - self.expiry
        old = [r for r in acc.pending.values() if r.created_at <= limit and r.id not in acc.sending]
        for report in old:
            self._expire(name, acc, report)
        if old:  # their ids leave the queues too: those stay as small as memory
            acc.ready = deque(i for i in acc.ready if i in acc.pending)
            acc.later = deque(e for e in acc.later if e[1] in acc.pending)
        acc.next_expiry = min((r.created_at for r in acc.pending.values()),
                              default=math.inf) + self.expiry

    def _expire(self, name: str, acc: _Account, report: Report) -> None:
        """Delete a report undelivered: it is older than the report expiry."""
        assert report.id is not None
        acc.pending.pop(report.id, None)
        now = self.clock.now()
        self._forget(acc, report, "report_expired", now, {
            "detail": "the upstream did not take it within the report expiry",
            "age": round(now - report.created_at)})
        metrics.child(metrics.REPORTS_EXPIRED, acc.label, report.kind.value).inc()
        log.warning("report.expired", account=name, message_id=report.message_id,
                    kind=report.kind.value, age=round(now - report.created_at))

    def _forget(self, acc: _Account, report: Report, kind: str, now: float,
                detail: dict[str, object]) -> None:
        """Delivered or expired: queue its deletion, and for a receipt the event saying so
        in its message's history (written with that deletion)."""
        assert report.id is not None
        self._count(acc, -1)
        self._acks.add(report.id, Event(report.message_id, now, kind, detail=detail)
                       if report.kind is ReportKind.RECEIPT else None)

    def _send(self, name: str, acc: _Account, report: Report, conn: Connection) -> None:
        assert report.id is not None
        try:
            conn.send_request(deliver_pdu(report),
                              functools.partial(self._answered, name, acc, report, conn))
        except (ConnectionClosed, SessionError, WindowFull):
            acc.ready.appendleft(report.id)  # this bind is going: another one takes it
            return
        except Exception:  # e.g. a report that cannot be encoded: never end the account loop
            log.exception("report.send_failed", account=name, message_id=report.message_id)
            acc.later.append((trio.current_time() + RETRY_DELAY, report.id))
            return
        acc.sending.add(report.id)

    def _answered(self, name: str, acc: _Account, report: Report, conn: Connection,
                  resp: Pdu | None, error: Exception | None) -> None:
        assert report.id is not None
        acc.sending.discard(report.id)
        acc.kick()
        if resp is not None and resp.status == 0:
            # Forgotten here at once; deleted from the store by the next delete batch. A
            # crash before that commit sends it again after the restart (at least once).
            if acc.pending.pop(report.id, None) is not None:
                self._forget(acc, report, "report_delivered", self.clock.now(),
                             {"interface": "smpp", "bind": conn.name})
            metrics.child(metrics.REPORTS_SENT, name, report.kind.value).inc()
            if log.bind is not _INFO.quiet and (bound := _INFO.bound()) is not None:
                bound.info("report.delivered", account=name, message_id=report.message_id,
                           kind=report.kind.value)
            return
        if resp is not None:
            log.info("report.refused", account=name, message_id=report.message_id,
                     status=f"0x{resp.status:08X}")
        else:
            log.info("report.unanswered", account=name, message_id=report.message_id,
                     error=repr(error))
            if isinstance(error, ResponseTimeout):
                self._drop_bind(name, acc, conn)
        acc.later.append((trio.current_time() + RETRY_DELAY, report.id))

    def _drop_bind(self, name: str, acc: _Account, conn: Connection) -> None:
        """Unbind and close a bind that left a deliver_sm unanswered: it gets no more."""
        if conn not in acc.binds:
            return  # already dropped, or gone
        acc.binds.remove(conn)
        metrics.child(metrics.UNANSWERED_UNBINDS, acc.label).inc()
        log.warning("report.bind_unanswering", account=name, conn=conn.name,
                    timeout=conn.response_timeout)
        assert self._nursery is not None
        self._nursery.start_soon(conn.unbind, UNBIND_TIMEOUT)

