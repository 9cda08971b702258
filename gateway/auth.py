"""Deciding upstream binds: accept this system_id and password from this address or not, and
when to answer. Failures counted per address and per system_id get growing delays, then a
lockout of the address; scrypt runs a few at a time and once per verified password; an unknown
system_id costs and looks the same as a wrong password."""

from __future__ import annotations

import contextlib
import enum
import heapq
import hmac
import itertools
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import structlog
import trio

from gateway import metrics, passwords
from gateway.config import ListenerConfig
from smpp.constants import Status

log = structlog.get_logger("gateway.auth")

# The answer to a refused system_id/password pair, whether or not the system_id exists: SMPP
# has no status for "wrong system_id or password", and 0x0E is the one client logs explain
# best ("invalid password"). An address locked out gets ESME_RBINDFAIL, whatever it presents.
REFUSED_STATUS = Status.ESME_RINVPASWD
LOCKED_OUT_STATUS = Status.ESME_RBINDFAIL

# `verify(password, encoded_hash) -> bool`, awaited; the default runs scrypt in a thread.
Verify = Callable[[str, str], Awaitable[bool]]


class Verdict(enum.Enum):
    """The decision on one bind; the value is the metric label of a refusal's reason."""

    ACCEPTED = "accepted"
    UNKNOWN_ACCOUNT = "unknown_account"
    BAD_PASSWORD = "bad_password"
    LOCKED_OUT = "locked_out"

    @property
    def status(self) -> int:
        if self is Verdict.ACCEPTED:
            return int(Status.ESME_ROK)
        if self is Verdict.LOCKED_OUT:
            return int(LOCKED_OUT_STATUS)
        return int(REFUSED_STATUS)


@dataclass(slots=True)
class _Failures:
    count: int = 0
    last: float = 0.0  # trio time of the latest failure
    locked_until: float = 0.0


class _Ledger:
    """Failure records by key, forgotten `window` after their latest failure; at most `limit`
    records (beyond it the longest quiet ones go first)."""

    def __init__(self, window: float, limit: int) -> None:
        self.window = window
        self.limit = limit
        self._records: OrderedDict[object, _Failures] = OrderedDict()  # oldest failure first

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: object, now: float) -> _Failures | None:
        record = self._records.get(key)
        if record is not None and self._expired(record, now):
            del self._records[key]
            return None
        return record

    def add(self, key: object, now: float) -> _Failures:
        """Count one more failure under `key`; returns its record."""
        record = self.get(key, now) or _Failures()
        record.count += 1
        record.last = now
        self._records[key] = record
        self._records.move_to_end(key)
        while self._records:
            oldest = next(iter(self._records.values()))
            if len(self._records) <= self.limit and not self._expired(oldest, now):
                break
            self._records.popitem(last=False)
        return record

    def _expired(self, record: _Failures, now: float) -> bool:
        return now >= max(record.last + self.window, record.locked_until)


@dataclass(slots=True)
class _Ticket:
    event: trio.Event
    granted: bool = False
    abandoned: bool = False


class _Gate:
    """At most `size` holders at a time; waiters are let in lowest priority value first (then
    in arrival order), so addresses without failures go ahead of those already failing."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.holders = 0
        self._waiting: list[tuple[int, int, _Ticket]] = []
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        if self.holders < self.size and not self._waiting:
            self.holders += 1
        else:
            ticket = _Ticket(trio.Event())
            heapq.heappush(self._waiting, (priority, next(self._order), ticket))
            try:
                await ticket.event.wait()
            except BaseException:
                if ticket.granted:
                    self._release()
                else:
                    ticket.abandoned = True
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            ticket = heapq.heappop(self._waiting)[2]
            if not ticket.abandoned:
                ticket.granted = True  # the slot passes on: holders stays the same
                ticket.event.set()
                return
        self.holders -= 1


class Authenticator:
    """Decides the binds of one listener. `check()` returns when the answer is due."""

    def __init__(self, policy: ListenerConfig, *, verify: Verify | None = None,
                 max_records: int = 65536, cache_size: int = 4096) -> None:
        self.policy = policy
        self._key = os.urandom(32)  # per process: cache keys mean nothing outside it
        self._gate = _Gate(policy.auth_concurrency)
        self._threads = trio.CapacityLimiter(policy.auth_concurrency)  # not trio's shared one
        self._verify = verify or self._scrypt
        self._sources = _Ledger(policy.auth_lockout_window, max_records)
        self._system_ids = _Ledger(policy.auth_lockout_window, max_records)
        self._turns: dict[str, trio.Lock] = {}  # source address -> its one verification turn
        self._cache: OrderedDict[bytes, None] = OrderedDict()  # keyed digests, verified OK
        self._cache_size = cache_size
        self._dummy_hash = passwords.unmatchable_hash()  # checked for unknown system_ids
        for how in ("run", "cached"):
            metrics.BIND_VERIFICATIONS.labels(how)

    async def check(self, source: str, system_id: str, password: str,
                    password_hash: str | None,
                    refused: Callable[[], None] | None = None) -> Verdict:
        """Decide a bind from address `source`; `password_hash` is the account's, None when
        no account has that system_id. A refusal returns no earlier than its delay after the
        call (so neither the account's existence nor scrypt's run time shows); an acceptance
        returns as soon as it is known. `refused()`, if given, is called once a refusal is
        decided, before its delay (the connection waiting it out holds nothing worth keeping).
        """
        arrival = trio.current_time()
        verdict, delay = await self._decide(source, system_id, password, password_hash)
        if verdict is not Verdict.ACCEPTED:
            if refused is not None:
                refused()
            await trio.sleep_until(arrival + delay)
        return verdict

    def failing(self, source: str) -> bool:
        """True while `source` has failed binds on record (locked out or not)."""
        return self._sources.get(source, trio.current_time()) is not None

    def locked_out(self, source: str) -> bool:
        """True while `source` is locked out."""
        record = self._sources.get(source, trio.current_time())
        return record is not None and record.locked_until > trio.current_time()

    async def _decide(self, source: str, system_id: str, password: str,
                      password_hash: str | None) -> tuple[Verdict, float]:
        # The longest delay: an address that keeps trying while locked out reconnects slowly.
        locked_out = (Verdict.LOCKED_OUT, self.policy.auth_failure_delay_max)
        if self.locked_out(source):
            return locked_out
        # Computed for unknown system_ids too, against the dummy hash: the same work either way.
        key = self._cache_key(system_id, password, password_hash or self._dummy_hash)
        if self._cached(key):
            return Verdict.ACCEPTED, 0.0
        async with self._turn(source):
            # The address's earlier attempts may have locked it out, or verified this password.
            if self.locked_out(source):
                return locked_out
            if self._cached(key):
                return Verdict.ACCEPTED, 0.0
            record = self._sources.get(source, trio.current_time())
            priority = record.count if record is not None else 0
            async with self._gate.slot(priority):
                metrics.child(metrics.BIND_VERIFICATIONS, "run").inc()
                ok = await self._verify(password, password_hash or self._dummy_hash)
            if ok and password_hash is not None:
                self._cache[key] = None
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
                return Verdict.ACCEPTED, 0.0
            delay = self._fail(source, system_id)
        unknown = password_hash is None
        return (Verdict.UNKNOWN_ACCOUNT if unknown else Verdict.BAD_PASSWORD), delay

    def _fail(self, source: str, system_id: str) -> float:
        """Count a failed check; returns the delay owed to its answer."""
        now = trio.current_time()
        by_source = self._sources.add(source, now)
        by_id = self._system_ids.add(self._digest(b"system_id", system_id), now)
        policy = self.policy
        if by_source.count >= policy.auth_lockout_threshold:
            by_source.locked_until = now + policy.auth_lockout_window
            metrics.BIND_LOCKOUTS.inc()
            log.warning("upstream.bind_lockout", source=source, failures=by_source.count,
                        window=policy.auth_lockout_window)
        return failure_delay(policy, max(by_source.count, by_id.count))

    def _cached(self, key: bytes) -> bool:
        if key not in self._cache:
            return False
        self._cache.move_to_end(key)
        metrics.child(metrics.BIND_VERIFICATIONS, "cached").inc()
        return True

    def _cache_key(self, system_id: str, password: str, password_hash: str) -> bytes:
        # The hash is part of the key: a changed password_hash makes old entries useless.
        return self._digest(b"verified", system_id, password_hash, password)

    def _digest(self, *parts: str | bytes) -> bytes:
        """HMAC of the parts under this process's random key (NUL cannot occur in them)."""
        data = b"\0".join(p if isinstance(p, bytes) else p.encode("utf-8", "surrogatepass")
                          for p in parts)
        return hmac.digest(self._key, data, "sha256")

    @contextlib.asynccontextmanager
    async def _turn(self, source: str) -> AsyncIterator[None]:
        """One verification in flight per source address; its other binds wait here, holding
        no limiter slot."""
        lock = self._turns.get(source)
        if lock is None:
            lock = self._turns[source] = trio.Lock()
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._turns.get(source) is lock:
                del self._turns[source]

    async def _scrypt(self, password: str, encoded: str) -> bool:
        return await trio.to_thread.run_sync(passwords.verify_password, password, encoded,
                                             limiter=self._threads)


def failure_delay(policy: ListenerConfig, failures: int) -> float:
    """Delay owed to the answer of the `failures`-th failure in a row (1-based)."""
    try:
        delay = policy.auth_failure_delay * policy.auth_failure_delay_multiplier ** (failures - 1)
    except OverflowError:
        delay = policy.auth_failure_delay_max
    return min(delay, policy.auth_failure_delay_max)
