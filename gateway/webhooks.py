"""Webhooks: receipts and MO owed to HTTP accounts, POSTed as signed JSON events from the
reports table (the outbox) to the message's callback_url or the account's webhook_url; each
deleted only after a 2xx or a 410, or at the report expiry. Retried with backoff and jitter,
in order per message, at most `webhook_concurrency` POSTs in flight per account.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import hmac
import itertools
import json
import math
import random
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
import trio

from gateway import metrics
from gateway.acks import ReportAcks
from gateway.clock import WallClock
from gateway.config import AccountConfig
from gateway.model import Event, Report, ReportKind, new_message_id
from gateway.paging import Paging, claim_free
from gateway.store import Store, StoreError
from smpp.text import decode_text

log = structlog.get_logger("gateway.webhooks")

SIGNATURE_HEADER = "Smsgw-Signature"  # t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">
EVENT_ID_HEADER = "Smsgw-Event-Id"  # the event's id, the same on every retry
USER_AGENT = "smsgw-webhooks/1"
SIGNATURE_TOLERANCE = 300.0  # seconds: verify() refuses a timestamp further from now
EVENTS_IN_MEMORY = 1024  # per account; more wait in the store and are paged in as these go
PAGE_RETRY = 5.0  # seconds before a failed page read is tried again
ANSWER_READ_MAX = 64 * 1024  # octets of an answer's body read (and dropped) at most
DELETE_RETRY = 5.0  # seconds before a failed deletion commit is tried again
OTHER_ACCOUNT = "other"  # metric label of events for accounts no longer configured
CLAIM_POLL = 1.0  # seconds: nodes sharing a store look this often for events left free


# -- signing ----------------------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes, *previous: str) -> str:
    """The Smsgw-Signature header value: the HMAC-SHA256 (key: the account's webhook_secret)
    of the timestamp, a dot and the body, as lowercase hex; during a rotation, one more v1
    made with each previous secret (a receiver accepts the request if any v1 matches)."""
    macs = [hmac.new(key.encode(), b"%d." % timestamp + body, hashlib.sha256).hexdigest()
            for key in (secret, *previous) if key]
    return f"t={timestamp}," + ",".join(f"v1={mac}" for mac in macs)


def verify(secret: str, header: str, body: bytes, now: float,
           tolerance: float = SIGNATURE_TOLERANCE) -> bool:
    """What a receiver checks (README shows the same for an application): a v1 signature of
    the body with that secret, made at most `tolerance` seconds from `now` (replays of an old
    request are refused)."""
    fields: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, v) for v in fields.get("v1", ()))


# -- events -----------------------------------------------------------------------------------
def webhook_report(report: Report, **fields: str | None) -> Report:
    """Mark a report (before it is stored) for delivery by webhook: a fresh event id, and the
    given fields (callback_url, client_ref, submitted_at, stat) kept with it."""
    report.via = "http"
    report.extra = {"event_id": new_message_id(),
                    **{k: v for k, v in fields.items() if v is not None}}
    return report


def rfc3339(t: float) -> str:
    """UTC, milliseconds: 2026-12-24T08:00:00.000Z."""
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def event_id(report: Report) -> str:
    return report.extra.get("event_id") or f"{report.message_id}-{report.id}"


def event(report: Report) -> dict[str, Any]:
    """The JSON body of a report's webhook (see README, "Webhooks")."""
    extra = report.extra
    body: dict[str, Any] = {"event_id": event_id(report), "account": report.account,
                            "created_at": rfc3339(report.created_at)}
    if report.kind is ReportKind.RECEIPT:  # a receipt runs from the recipient to the sender
        body.update(type="receipt", message_id=report.message_id,
                    client_ref=extra.get("client_ref"), to=report.source_addr,
                    **{"from": report.dest_addr},
                    state=report.state.value if report.state is not None else None,
                    stat=extra.get("stat"), error=report.error,
                    submitted_at=extra.get("submitted_at"), done_at=rfc3339(report.created_at))
    else:
        body.update(type="mo", message_id=report.message_id, to=report.dest_addr,
                    **{"from": report.source_addr},
                    text=decode_text(report.body, report.data_coding),
                    optout=extra.get("optout"))
    return body


def backoff(failures: int, first: float, cap: float, rng: random.Random) -> float:
    """Seconds before the next try after `failures` failed ones: first * 2^(failures-1), at
    most cap, drawn between half and all of it (jitter)."""
    delay = min(cap, first * 2.0 ** min(failures - 1, 60))
    return delay * (0.5 + 0.5 * rng.random())


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One account's webhook settings (AccountConfig's webhook_* keys)."""

    url: str | None = None
    secret: str = ""
    timeout: float = 10.0
    concurrency: int = 4
    retry_delay: float = 5.0
    retry_delay_max: float = 1800.0
    secret_previous: str = ""  # during a rotation, also signed with

    @classmethod
    def of(cls, account: AccountConfig) -> Endpoint:
        return cls(account.webhook_url, account.webhook_secret, account.webhook_timeout,
                   account.webhook_concurrency, account.webhook_retry_delay,
                   account.webhook_retry_delay_max, account.webhook_secret_previous)


def endpoints(accounts: Iterable[AccountConfig]) -> dict[str, Endpoint]:
    return {a.system_id: Endpoint.of(a) for a in accounts}


class _Outbox:
    """One account's events in memory, and where the store's pages stand."""

    def __init__(self, name: str, label: str, endpoint: Endpoint) -> None:
        self.name = name
        self.label = label
        self.endpoint = endpoint
        self.pending: dict[int, Report] = {}  # in memory: waiting, due or in flight
        self.chains: dict[str, deque[int]] = {}  # message id -> its events in memory, in order
        self.due: list[tuple[float, int, str]] = []  # heap: (trio time, seq, message id)
        self.failures: dict[int, int] = {}  # report id -> failed tries so far
        self.in_flight = 0
        self.wake = trio.Event()
        self.count = 0  # stored and not yet done (the gauge)
        self.paging = Paging()


class Webhooks:
    """See the module docstring. `add()` must be called once for every committed report going
    via "http", right after its commit (no await in between), like Reporter.add."""

    def __init__(self, store: Store, clock: WallClock, endpoints: Mapping[str, Endpoint], *,
                 expiry: float = 72 * 3600.0, transport: httpx.AsyncBaseTransport | None = None,
                 rng: random.Random | None = None, memory: int = EVENTS_IN_MEMORY) -> None:
        self.store = store
        self.clock = clock
        self.endpoints = dict(endpoints)
        self.expiry = expiry
        self.memory = max(2, memory)
        self._transport = transport
        self._rng = rng or random.Random()
        self._client: httpx.AsyncClient | None = None
        self._outboxes: dict[str, _Outbox] = {}
        self._nursery: trio.Nursery | None = None
        self._seq = itertools.count()
        self._stopping = False
        self._idle = trio.Event()  # set when nothing is in flight (drain)
        self._acks = ReportAcks(store, DELETE_RETRY)  # events done with: deleted in batches
        self._counted_below = 0
        self._label_counts: dict[str, int] = {}

    # -- accounts and counts ------------------------------------------------------------------
    def _outbox(self, name: str) -> _Outbox:
        acc = self._outboxes.get(name)
        if acc is None:
            endpoint = self.endpoints.get(name)
            label = name if endpoint is not None else OTHER_ACCOUNT
            acc = self._outboxes[name] = _Outbox(name, label, endpoint or Endpoint())
            if self._nursery is not None:
                self._nursery.start_soon(self._serve, acc)
        return acc

    def configure(self, endpoints: Mapping[str, Endpoint]) -> None:
        """A reload changed the accounts' webhooks: events not yet POSTed go to the new
        endpoint (URL, secret, timeout); an account without one keeps its events stored
        until they expire or a webhook is configured again."""
        self.endpoints = dict(endpoints)
        for name, acc in self._outboxes.items():
            acc.endpoint = self.endpoints.get(name) or Endpoint()

    def _count(self, acc: _Outbox, delta: int) -> None:
        acc.count += delta
        total = self._label_counts[acc.label] = self._label_counts.get(acc.label, 0) + delta
        metrics.child(metrics.WEBHOOKS_PENDING, acc.label).set(total)

    def pending_count(self, account: str) -> int:
        acc = self._outboxes.get(account)
        return acc.count if acc else 0

    def pending_total(self) -> int:
        return sum(acc.count for acc in self._outboxes.values())

    def in_flight(self) -> int:
        return sum(acc.in_flight for acc in self._outboxes.values())

    # -- inputs ---------------------------------------------------------------------------------
    def add(self, report: Report, *, claimed: bool = False) -> None:
        """Take a committed report: in memory if there is room, else it waits for its page.
        ``claimed``: taken over from a node that died (never counted here before)."""
        assert report.id is not None and report.via == "http"
        acc = self._outbox(report.account)
        if claimed and report.id in acc.pending:
            return
        if claimed or report.id > self._counted_below:
            self._count(acc, 1)
        if report.id in acc.pending:
            return
        if acc.paging.admits(report.id, len(acc.pending), self.memory):
            self._keep(acc, report)

    def add_many(self, reports: Iterable[Report]) -> None:
        for report in reports:
            self.add(report)

    def forget_addresses(self, addresses: Collection[str]) -> int:
        """Erasure (GDPR): drop from memory the events from or to these numbers that are not
        in flight, so that none is POSTed after the store erased it; how many. (Those only
        in the store are erased there; the pending gauge still counts them until a
        restart.)"""
        forms = set(addresses)
        dropped = 0
        for acc in self._outboxes.values():
            for report in [r for r in acc.pending.values()
                           if r.source_addr in forms or r.dest_addr in forms]:
                assert report.id is not None
                chain = acc.chains.get(report.message_id)
                if chain is None or (chain[0] == report.id and report.message_id not in
                                     (key for _, _, key in acc.due)):
                    continue  # in flight: already on its way
                chain.remove(report.id)
                if not chain:
                    del acc.chains[report.message_id]
                del acc.pending[report.id]
                acc.failures.pop(report.id, None)
                self._count(acc, -1)
                dropped += 1
        return dropped

    def _keep(self, acc: _Outbox, report: Report) -> None:
        assert report.id is not None
        acc.pending[report.id] = report
        acc.paging.kept(report.id)
        chain = acc.chains.setdefault(report.message_id, deque())
        chain.append(report.id)
        if len(chain) == 1:  # the message's first event in memory: due now
            heapq.heappush(acc.due, (trio.current_time(), next(self._seq), report.message_id))
        acc.wake.set()

    # -- running ----------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for name in self.endpoints:
            metrics.child(metrics.WEBHOOKS_PENDING, name).set(0)
        counts, self._counted_below = await self.store.pending_report_counts("http", mine=True)
        async with httpx.AsyncClient(transport=self._transport, follow_redirects=False,
                                     trust_env=False, headers={"User-Agent": USER_AGENT},
                                     limits=httpx.Limits(max_connections=None,
                                                         max_keepalive_connections=64),
                                     ) as client, trio.open_nursery() as nursery:
            self._client = client
            self._nursery = nursery
            for name, n in counts.items():
                acc = self._outbox(name)
                acc.paging.backlog = True  # all of them are in the store only, for now
                self._count(acc, n)
            nursery.start_soon(self._acks.run)
            if self.store.shared:  # several nodes share the store
                nursery.start_soon(self._claim_loop)
            task_status.started()
            await trio.sleep_forever()

    async def _claim_loop(self) -> None:
        """Take the webhook events a dead node left free (any node may post them): when told,
        and every CLAIM_POLL seconds."""
        def take(report: Report) -> None:
            self.add(report, claimed=True)
            metrics.child(metrics.REPORTS_CLAIMED, self._outbox(report.account).label,
                          "http").inc()

        while True:
            if claimed := await claim_free(self.store, list(self.endpoints), "http", take):
                log.info("webhooks.claimed", events=claimed)
            await self.store.reports_notified("http", CLAIM_POLL)

    async def drain(self) -> None:
        """Graceful stop: start no new POST, wait for those in flight to be answered, commit
        the deletions. Cut short (cancelled), what was in flight is sent again after the
        restart."""
        self._stopping = True
        while self.in_flight():
            self._idle = trio.Event()
            await self._idle.wait()
        await self.flush_deletes()

    async def flush_deletes(self) -> None:
        """Return once the deletions of the events done so far are committed."""
        await self._acks.flush()

    async def _serve(self, acc: _Outbox) -> None:
        assert self._nursery is not None
        while True:
            acc.wake = trio.Event()
            page_again = math.inf
            while acc.paging.backlog and len(acc.pending) <= self.memory // 2:
                if not await self._page_in(acc):
                    page_again = trio.current_time() + PAGE_RETRY
                    break
            now = trio.current_time()
            wall = self.clock.now()
            while (acc.due and acc.due[0][0] <= now and not self._stopping
                   and acc.in_flight < acc.endpoint.concurrency):
                _, _, key = heapq.heappop(acc.due)
                chain = acc.chains.get(key)
                if not chain:
                    continue
                report = acc.pending[chain[0]]
                if report.created_at + self.expiry <= wall:
                    self._done(acc, report, "expired")
                    continue
                acc.in_flight += 1
                self._nursery.start_soon(self._post, acc, report)
            wake_at = page_again
            if acc.due and acc.in_flight < acc.endpoint.concurrency and not self._stopping:
                wake_at = min(wake_at, acc.due[0][0])
            with trio.move_on_at(wake_at):
                await acc.wake.wait()

    async def _page_in(self, acc: _Outbox) -> bool:
        room = self.memory - len(acc.pending)
        try:
            reports = await self.store.pending_reports(acc.name, room, after=acc.paging.cursor,
                                                       via="http")
        except StoreError:
            return False  # the store counts and logs it; tried again later
        wall = self.clock.now()
        for report in reports:
            assert report.id is not None
            acc.paging.read(report.id)
            if report.created_at + self.expiry <= wall:
                self._finish(acc, report, "expired")
            else:
                self._keep(acc, report)
        acc.paging.page_done(len(reports), room)
        return bool(reports)

    # -- one POST -------------------------------------------------------------------------------
    async def _post(self, acc: _Outbox, report: Report) -> None:
        try:
            outcome, status = await self._attempt(acc, report)
        finally:
            acc.in_flight -= 1
            acc.wake.set()
            if not self.in_flight():
                self._idle.set()
        assert report.id is not None
        metrics.child(metrics.WEBHOOK_ATTEMPTS, acc.label, outcome).inc()
        if outcome in ("delivered", "gone"):
            if outcome == "gone":
                log.warning("webhook.gone", account=acc.name, message_id=report.message_id,
                            event_id=event_id(report), kind=report.kind.value,
                            detail="410 Gone: the receiver wants no more of this event")
            else:
                metrics.child(metrics.WEBHOOK_DELAY, acc.label).observe(
                    max(0.0, self.clock.now() - report.created_at))
                log.info("webhook.delivered", account=acc.name, message_id=report.message_id,
                         event_id=event_id(report), kind=report.kind.value, status=status)
            self._done(acc, report, outcome, status)
            return
        failures = acc.failures[report.id] = acc.failures.get(report.id, 0) + 1
        ep = acc.endpoint
        delay = backoff(failures, ep.retry_delay, ep.retry_delay_max, self._rng)
        expires = self.clock.to_trio(report.created_at + self.expiry)
        at = min(trio.current_time() + delay, expires)
        heapq.heappush(acc.due, (at, next(self._seq), report.message_id))
        log.info("webhook.failed", account=acc.name, message_id=report.message_id,
                 event_id=event_id(report), outcome=outcome, status=status,
                 failures=failures, retry_in=round(at - trio.current_time(), 3))

    async def _attempt(self, acc: _Outbox, report: Report) -> tuple[str, int | None]:
        """POST the event once: (outcome, HTTP status or None)."""
        assert self._client is not None
        ep = acc.endpoint
        url = report.extra.get("callback_url") or ep.url
        if url is None or not ep.secret:
            log.warning("webhook.no_url", account=acc.name, message_id=report.message_id,
                        detail="neither the message's callback_url nor the account's "
                               "webhook_url (with a webhook_secret) is set: kept until the "
                               "report expiry")
            return "no_url", None
        body = json.dumps(event(report), separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: sign(ep.secret, int(self.clock.now()), body,
                                          ep.secret_previous),
                   EVENT_ID_HEADER: event_id(report)}
        started = trio.current_time()
        status: int | None = None
        outcome = "timeout"
        with trio.move_on_after(ep.timeout):
            try:
                async with self._client.stream("POST", url, content=body, headers=headers,
                                               timeout=ep.timeout) as resp:
                    status = resp.status_code
                    # Only the status matters; a short body is read to its end so that the
                    # connection is kept for the next POST (a longer one closes it).
                    read = 0
                    async for chunk in resp.aiter_raw():
                        read += len(chunk)
                        if read > ANSWER_READ_MAX:
                            break
            except httpx.TimeoutException:
                outcome = "timeout"
            except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
                outcome = "error"
                log.info("webhook.error", account=acc.name, host=urlsplit(url).hostname,
                         error=f"{type(exc).__name__}: {exc}")
        metrics.child(metrics.WEBHOOK_LATENCY, acc.label).observe(trio.current_time() - started)
        if status is None:
            return outcome, None
        if 200 <= status < 300:
            return "delivered", status
        if status == 410:
            return "gone", status
        if 400 <= status < 500:
            return "http_4xx", status
        if 500 <= status < 600:
            return "http_5xx", status
        return "http_other", status

    # -- done with an event -------------------------------------------------------------------
    def _done(self, acc: _Outbox, report: Report, outcome: str,
              status: int | None = None) -> None:
        """The head of its message's chain is done (delivered, gone, expired): the next event
        of that message, if any, is due now."""
        assert report.id is not None
        chain = acc.chains.get(report.message_id)
        if chain and chain[0] == report.id:
            chain.popleft()
            if chain:
                heapq.heappush(acc.due, (trio.current_time(), next(self._seq),
                                         report.message_id))
            else:
                del acc.chains[report.message_id]
        acc.pending.pop(report.id, None)
        failures = acc.failures.pop(report.id, 0)
        self._finish(acc, report, outcome, status, failures + (outcome != "expired"))

    def _finish(self, acc: _Outbox, report: Report, outcome: str, status: int | None = None,
                tries: int = 0) -> None:
        """Done with an event: counted, its deletion queued, and for a receipt a "webhook"
        line in its message's history (outcome, HTTP status, tries in this process)."""
        assert report.id is not None
        metrics.child(metrics.WEBHOOK_EVENTS, acc.label, report.kind.value, outcome).inc()
        line = Event(report.message_id, self.clock.now(), "webhook", detail={
            "event_id": event_id(report), "outcome": outcome, "status": status,
            "tries": tries}) if report.kind is ReportKind.RECEIPT else None
        if outcome == "expired":
            log.warning("webhook.expired", account=acc.name, message_id=report.message_id,
                        event_id=event_id(report), kind=report.kind.value,
                        age=round(self.clock.now() - report.created_at))
        self._count(acc, -1)
        self._acks.add(report.id, line)


def mo_by_webhook(accounts: Collection[AccountConfig]) -> frozenset[str]:
    """The accounts whose MO go by webhook (see AccountConfig.mo_via)."""
    return frozenset(a.system_id for a in accounts if a.mo_by_webhook)
