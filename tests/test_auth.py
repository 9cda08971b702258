"""Deciding binds under attack (gateway.auth), in virtual time with a stand-in for scrypt:
refusals look and last the same whether the system_id exists or not, delays grow, addresses
lock out, a clean address always gets in, scrypt runs few at a time and not again for a
password already verified."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import structlog
import trio
from prometheus_client import REGISTRY
from trio.testing import MockClock

from gateway.auth import LOCKED_OUT_STATUS, REFUSED_STATUS, Authenticator, Verdict
from gateway.config import ListenerConfig
from smpp.constants import Status

HASH = "plain:secret"  # the stand-in's hash of the password "secret"
POLICY = ListenerConfig(auth_failure_delay=1.0, auth_failure_delay_multiplier=2.0,
                        auth_failure_delay_max=16.0, auth_lockout_threshold=5,
                        auth_lockout_window=300.0, auth_concurrency=2)


class FakeScrypt:
    """Stands in for scrypt: takes `cost` seconds of virtual time (`dummy_cost` for any hash not
    of the form "plain:<password>"), records each run and the most running at once."""

    def __init__(self, cost: float = 0.1, dummy_cost: float | None = None) -> None:
        self.cost = cost
        self.dummy_cost = cost if dummy_cost is None else dummy_cost
        self.runs: list[tuple[str, str]] = []  # (password, hash) in the order they started
        self.running = 0
        self.peak = 0

    async def __call__(self, password: str, encoded: str) -> bool:
        self.runs.append((password, encoded))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await trio.sleep(self.cost if encoded.startswith("plain:") else self.dummy_cost)
        finally:
            self.running -= 1
        return encoded == f"plain:{password}"


def make(fake: FakeScrypt, **changes: object) -> Authenticator:
    return Authenticator(dataclasses.replace(POLICY, **changes), verify=fake)


async def timed(auth: Authenticator, source: str, system_id: str = "demo",
                password: str = "wrong", password_hash: str | None = HASH) -> tuple[Verdict, float]:
    start = trio.current_time()
    verdict = await auth.check(source, system_id, password, password_hash)
    return verdict, trio.current_time() - start


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def flood(auth: Authenticator, nursery: trio.Nursery, source: str, count: int,
                verdicts: list[Verdict], system_id: str = "demo") -> None:
    async def one() -> None:
        verdicts.append(await auth.check(source, system_id, "guess", HASH))

    for _ in range(count):
        nursery.start_soon(one)


async def test_unknown_system_id_and_wrong_password_get_the_same_status_after_the_same_delay(
        autojump_clock: MockClock) -> None:
    fake = FakeScrypt(cost=0.05, dummy_cost=0.3)  # even when the checks themselves differ
    auth = make(fake)
    wrong, t_wrong = await timed(auth, "10.0.0.1", "demo", "wrong", HASH)
    unknown, t_unknown = await timed(auth, "10.0.0.2", "ghost", "wrong", None)
    assert (wrong, unknown) == (Verdict.BAD_PASSWORD, Verdict.UNKNOWN_ACCOUNT)
    assert wrong.status == unknown.status == REFUSED_STATUS == Status.ESME_RINVPASWD
    assert t_wrong == pytest.approx(t_unknown) == pytest.approx(1.0)
    # the unknown system_id paid for a check too (against a hash that matches nothing)
    assert len(fake.runs) == 2 and fake.runs[1][1].startswith("scrypt$")


async def test_failure_delay_grows_per_failure_from_one_address_up_to_the_cap(
        autojump_clock: MockClock) -> None:
    auth = make(FakeScrypt(), auth_lockout_threshold=100)
    delays = [(await timed(auth, "10.0.0.1"))[1] for _ in range(7)]
    assert delays == pytest.approx([1, 2, 4, 8, 16, 16, 16])


async def test_failure_delay_grows_per_system_id_across_addresses(
        autojump_clock: MockClock) -> None:
    auth = make(FakeScrypt())
    delays = [(await timed(auth, f"10.0.0.{i}"))[1] for i in range(1, 5)]
    assert delays == pytest.approx([1, 2, 4, 8])
    # another system_id (existing or not) from another fresh address starts again
    assert (await timed(auth, "10.0.0.9", "ghost", password_hash=None))[1] == pytest.approx(1)


async def test_failures_are_forgotten_a_window_after_the_last_one(
        autojump_clock: MockClock) -> None:
    auth = make(FakeScrypt())
    assert [(await timed(auth, "10.0.0.1"))[1] for _ in range(2)] == pytest.approx([1, 2])
    await trio.sleep(POLICY.auth_lockout_window)
    assert (await timed(auth, "10.0.0.1"))[1] == pytest.approx(1)


async def test_lockout_after_the_threshold_refuses_without_scrypt_logs_once_and_counts(
        autojump_clock: MockClock) -> None:
    fake = FakeScrypt()
    auth = make(fake, auth_lockout_threshold=3)
    lockouts = sample("smsgw_bind_lockouts_total")
    with structlog.testing.capture_logs() as logs:
        first = [await auth.check("10.0.0.1", "demo", "wrong", HASH) for _ in range(3)]
        # locked out: refused without a check, even the right password
        locked, elapsed = await timed(auth, "10.0.0.1", password="secret")
        later = [await auth.check("10.0.0.1", "demo", "wrong", HASH) for _ in range(5)]
    assert first == [Verdict.BAD_PASSWORD] * 3
    assert locked is Verdict.LOCKED_OUT and locked.status == LOCKED_OUT_STATUS
    assert elapsed == pytest.approx(POLICY.auth_failure_delay_max)
    assert later == [Verdict.LOCKED_OUT] * 5
    assert len(fake.runs) == 3
    assert [e["event"] for e in logs] == ["upstream.bind_lockout"]
    assert logs[0]["source"] == "10.0.0.1" and logs[0]["failures"] == 3
    assert sample("smsgw_bind_lockouts_total") == lockouts + 1
    # after the window the address may try again; failing again is a new lockout, logged again
    await trio.sleep(POLICY.auth_lockout_window)
    assert await auth.check("10.0.0.1", "demo", "secret", HASH) is Verdict.ACCEPTED
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            await auth.check("10.0.0.1", "demo", "wrong", HASH)
    assert [e["event"] for e in logs] == ["upstream.bind_lockout"]
    assert sample("smsgw_bind_lockouts_total") == lockouts + 2


async def test_correct_password_from_a_clean_address_is_accepted_during_a_300_way_flood(
        autojump_clock: MockClock) -> None:
    fake = FakeScrypt(cost=0.1)
    auth = make(fake, auth_lockout_threshold=10)
    verdicts: list[Verdict] = []
    async with trio.open_nursery() as nursery:
        await flood(auth, nursery, "203.0.113.9", 300, verdicts)
        await trio.sleep(0.05)
        verdict, elapsed = await timed(auth, "198.51.100.1", password="secret")
        assert verdict is Verdict.ACCEPTED
        assert elapsed <= 2 * fake.cost  # at most one of the attacker's checks ahead of it
    # the attacker got 10 checks; the other 290, queued before the lockout, none
    assert len(fake.runs) == 11
    assert verdicts.count(Verdict.BAD_PASSWORD) == 10
    assert verdicts.count(Verdict.LOCKED_OUT) == 290


async def test_failures_of_others_against_a_system_id_never_lock_its_customer_out(
        autojump_clock: MockClock) -> None:
    auth = make(FakeScrypt(), auth_lockout_threshold=3)
    for i in range(50):  # a distributed attack: each address below the threshold
        await timed(auth, f"10.0.{i}.1")
    verdict, elapsed = await timed(auth, "198.51.100.1", password="secret")
    assert verdict is Verdict.ACCEPTED and elapsed == pytest.approx(0.1)


async def test_the_limiter_never_runs_more_than_its_size_at_once(autojump_clock: MockClock) -> None:
    fake = FakeScrypt()
    auth = make(fake, auth_concurrency=3, auth_lockout_threshold=100)
    verdicts: list[Verdict] = []
    async with trio.open_nursery() as nursery:
        for i in range(20):
            await flood(auth, nursery, f"10.0.0.{i}", 3, verdicts)
    assert len(fake.runs) == 60 and fake.peak == 3


async def test_one_check_in_flight_per_address(autojump_clock: MockClock) -> None:
    fake = FakeScrypt()
    auth = make(fake, auth_concurrency=8, auth_lockout_threshold=100)
    verdicts: list[Verdict] = []
    async with trio.open_nursery() as nursery:
        await flood(auth, nursery, "10.0.0.1", 10, verdicts)
    assert len(fake.runs) == 10 and fake.peak == 1


async def test_addresses_without_failures_are_checked_before_failing_ones(
        autojump_clock: MockClock) -> None:
    fake = FakeScrypt(cost=1.0)
    auth = make(fake, auth_concurrency=1)
    await timed(auth, "10.0.0.1", password="fail-1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(auth.check, "10.0.0.2", "demo", "busy", HASH)  # holds the one slot
        await trio.sleep(0.1)
        nursery.start_soon(auth.check, "10.0.0.1", "demo", "fail-2", HASH)  # 1 failure: waits
        await trio.sleep(0.1)
        nursery.start_soon(auth.check, "10.0.0.3", "demo", "clean", HASH)  # arrives last
    assert [password for password, _ in fake.runs] == ["fail-1", "busy", "clean", "fail-2"]


async def test_a_cached_reconnect_runs_no_check_and_never_waits_for_the_limiter(
        autojump_clock: MockClock) -> None:
    fake = FakeScrypt(cost=0.1)
    auth = make(fake, auth_lockout_threshold=100)
    assert (await timed(auth, "10.0.0.1", password="secret"))[0] is Verdict.ACCEPTED
    cached = sample("smsgw_bind_verifications_total", how="cached")
    verdicts: list[Verdict] = []
    async with trio.open_nursery() as nursery:
        for i in range(5):  # the limiter busy with other addresses' checks
            await flood(auth, nursery, f"10.0.1.{i}", 2, verdicts)
        await trio.sleep(0.01)
        runs = len(fake.runs)
        verdict, elapsed = await timed(auth, "10.0.0.1", password="secret")
        assert verdict is Verdict.ACCEPTED and elapsed == 0
        assert len(fake.runs) == runs
    assert sample("smsgw_bind_verifications_total", how="cached") == cached + 1


async def test_parallel_binds_of_one_customer_cost_one_check(autojump_clock: MockClock) -> None:
    fake = FakeScrypt()
    auth = make(fake)
    verdicts: list[Verdict] = []

    async def bind() -> None:
        verdicts.append(await auth.check("10.0.0.1", "demo", "secret", HASH))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(bind)
    assert verdicts == [Verdict.ACCEPTED] * 8 and len(fake.runs) == 1


async def test_a_changed_password_hash_is_checked_again(autojump_clock: MockClock) -> None:
    fake = FakeScrypt()
    auth = make(fake)
    assert await auth.check("10.0.0.1", "demo", "secret", HASH) is Verdict.ACCEPTED
    # the account's password changed: the old one is refused, not served from the cache
    assert await auth.check("10.0.0.1", "demo", "secret", "plain:new") is Verdict.BAD_PASSWORD
    assert len(fake.runs) == 2


async def test_the_cache_holds_per_process_keyed_digests_never_the_password(
        autojump_clock: MockClock) -> None:
    first, second = make(FakeScrypt()), make(FakeScrypt())
    for auth in (first, second):
        assert await auth.check("10.0.0.1", "demo", "secret", HASH) is Verdict.ACCEPTED
    [key1], [key2] = list(first._cache), list(second._cache)
    assert key1 != key2  # another process (another random key): another digest
    unkeyed = {hashlib.new(name, b"secret").digest() for name in ("sha256", "sha512", "md5")}
    assert key1 not in unkeyed and b"secret" not in key1


async def test_failure_records_stay_bounded_under_many_addresses(autojump_clock: MockClock) -> None:
    auth = Authenticator(dataclasses.replace(POLICY, auth_failure_delay=0.0),
                         verify=FakeScrypt(cost=0.0), max_records=100)
    for i in range(1000):
        await auth.check(f"10.{i // 256}.{i % 256}.1", f"id{i}", "wrong", None)
    assert len(auth._sources) <= 100 and len(auth._system_ids) <= 100
