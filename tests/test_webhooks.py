"""Rules of the webhook deliverer (gateway.webhooks): every event is signed, POSTed until a 2xx
or a 410 or its expiry, with exponential backoff, in order per message, with bounded
concurrency per account, and survives a restart (the store is the outbox). A Starlette
receiver in virtual time (httpx's ASGI transport), and one served by hypercorn on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.clock import WallClock
from gateway.http_api import serve_http
from gateway.model import Report, ReportKind, State, new_message_id
from gateway.store import Store
from gateway.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    Endpoint,
    Webhooks,
    backoff,
    rfc3339,
    sign,
    verify,
    webhook_report,
)
from tests.test_store import T0, make_message, make_report

SECRET = "whsec-0123456789abcdef0123456789abcdef"
HOUR = 3600.0


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Jumps only after 20 ms of real idleness, so SQLite's worker thread is not outrun.
    return trio.testing.MockClock(autojump_threshold=0.02)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class Hit:
    at: float  # trio time
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    """The account's application: records every POST; `answer` decides its status."""

    answer: Callable[[Hit], Awaitable[int]] | None = None
    hits: list[Hit] = field(default_factory=list)
    active: int = 0
    most_active: int = 0

    async def handle(self, request: Request) -> Response:
        hit = Hit(trio.current_time(), dict(request.headers), await request.body())
        self.hits.append(hit)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            status = 200 if self.answer is None else await self.answer(hit)
        finally:
            self.active -= 1
        return Response(b"thanks", status)

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hooks", self.handle, methods=["POST"])])

    def delivered(self, n: int) -> bool:
        return len(self.hits) >= n


def answers(*statuses: int) -> Callable[[Hit], Awaitable[int]]:
    """Answer these statuses in turn, then 200."""
    left = list(statuses)

    async def answer(_hit: Hit) -> int:
        return left.pop(0) if left else 200
    return answer


def endpoint(**changes: Any) -> Endpoint:
    base: dict[str, Any] = {"url": "http://app.test/hooks", "secret": SECRET, "timeout": 5.0,
                            "concurrency": 4, "retry_delay": 5.0, "retry_delay_max": 600.0}
    return Endpoint(**{**base, **changes})


@asynccontextmanager
async def running(path: Path, receiver: Receiver, *, ep: Endpoint | None = None,
                  expiry: float = 72 * HOUR, memory: int = 1024,
                  start: float = T0 + 10) -> AsyncIterator[tuple[Store, Webhooks]]:
    async with Store.open(path, synchronous="normal") as store, trio.open_nursery() as nursery:
        hooks = Webhooks(store, WallClock(start), {"acme": ep or endpoint()}, expiry=expiry,
                         transport=httpx.ASGITransport(app=receiver.app),
                         rng=random.Random(7), memory=memory)
        await nursery.start(hooks.run)
        yield store, hooks
        nursery.cancel_scope.cancel()


def receipt(message_id: str | None = None, **changes: Any) -> Report:
    report = make_report(message_id or new_message_id(), **changes)
    return webhook_report(report, client_ref="order-17", stat="DELIVRD",
                          submitted_at="2023-11-14T22:13:20.000Z")


async def stored(store: Store, hooks: Webhooks, *reports: Report) -> list[Report]:
    """Store the reports (and the messages they are about, so that their histories take the
    webhook lines), then hand them to the deliverer."""
    new = {r.message_id for r in reports}
    messages = [make_message(id=mid) for mid in sorted(new)
                if await store.get_message(mid) is None]
    if messages:
        await store.add_messages(messages)
    await store.add_reports(reports)
    hooks.add_many(reports)
    return list(reports)


async def wait_until(condition: Callable[[], bool], step: float = 0.5) -> None:
    """Poll (virtual time: each step costs the autojump threshold in real time)."""
    while not condition():
        await trio.sleep(step)


async def left_in_store(store: Store, hooks: Webhooks) -> list[Report]:
    await hooks.flush_deletes()
    return await store.pending_reports("acme", via="http")


# -- signing ----------------------------------------------------------------------------------
def test_signature_is_hmac_sha256_of_timestamp_dot_body_and_verifies_only_unchanged() -> None:
    body = b'{"event_id":"e1"}'
    header = sign(SECRET, 1_700_000_000, body)
    mac = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={mac}"
    assert verify(SECRET, header, body, now=1_700_000_100)
    assert not verify("another-secret-0123456789", header, body, now=1_700_000_100)
    assert not verify(SECRET, header, body + b" ", now=1_700_000_100)
    assert not verify(SECRET, header, body, now=1_700_000_000 + 301)  # a replay, too late
    assert not verify(SECRET, "v1=abc", body, now=1_700_000_000)
    # During a secret rotation a receiver may get, and accept, several v1 values.
    assert verify(SECRET, f"{header},v1=00ff", body, now=1_700_000_000)


def test_during_a_rotation_both_secrets_sign_and_either_verifies() -> None:
    body = b'{"event_id":"e2"}'
    header = sign("the-new-secret-0123456789", 1_700_000_000, body, SECRET)
    assert header.count("v1=") == 2
    assert verify("the-new-secret-0123456789", header, body, now=1_700_000_000)
    assert verify(SECRET, header, body, now=1_700_000_000)  # a receiver not yet switched
    assert not verify("a-third-secret-0123456789", header, body, now=1_700_000_000)


async def test_events_are_signed_with_the_previous_secret_too_during_a_rotation(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    receiver = Receiver()
    ep = endpoint(secret="the-new-secret-0123456789", secret_previous=SECRET)
    async with running(tmp_path / "gw.sqlite", receiver, ep=ep, start=time.time()) as (
            store, hooks):
        await stored(store, hooks, receipt(created_at=time.time()))
        await wait_until(lambda: hooks.pending_total() == 0)
    hit = receiver.hits[0]
    for secret in ("the-new-secret-0123456789", SECRET):
        assert verify(secret, hit.headers[SIGNATURE_HEADER.lower()], hit.body, now=time.time())


def test_backoff_doubles_up_to_its_cap_with_jitter_between_half_and_all() -> None:
    rng = random.Random(1)
    for failures, full in [(1, 5.0), (2, 10.0), (3, 20.0), (8, 600.0), (80, 600.0)]:
        for _ in range(50):
            assert full / 2 <= backoff(failures, 5.0, 600.0, rng) <= full


# -- delivery ---------------------------------------------------------------------------------
async def test_receipt_webhook_reaches_a_real_receiver_signed_and_is_deleted_after_2xx(
        tmp_path: Path) -> None:
    receiver = Receiver()
    async with trio.open_nursery() as servers:
        port = await servers.start(serve_http, receiver.app, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{port}/hooks"
        before = sample("smsgw_webhook_events_total", account="acme", kind="RECEIPT",
                        outcome="delivered")
        async with Store.open(tmp_path / "gw.sqlite", synchronous="normal") as store, \
                trio.open_nursery() as nursery:
            hooks = Webhooks(store, WallClock(), {"acme": endpoint(url=url)})
            await nursery.start(hooks.run)
            now = time.time()
            report, = await stored(store, hooks, receipt(state=State.DELIVERED, error=0,
                                                          created_at=now))
            with trio.fail_after(10):
                await wait_until(lambda: hooks.pending_total() == 0, step=0.01)
            assert await left_in_store(store, hooks) == []
            nursery.cancel_scope.cancel()
        servers.cancel_scope.cancel()
    hit = receiver.hits[0]
    assert hit.headers["content-type"] == "application/json"
    assert verify(SECRET, hit.headers[SIGNATURE_HEADER.lower()], hit.body, now=time.time())
    assert hit.headers[EVENT_ID_HEADER.lower()] == report.extra["event_id"]
    assert hit.event == {
        "event_id": report.extra["event_id"], "type": "receipt", "account": "acme",
        "created_at": rfc3339(now), "message_id": report.message_id,
        "client_ref": "order-17", "to": "33612345678", "from": "ACME", "state": "DELIVERED",
        "stat": "DELIVRD", "error": 0, "submitted_at": "2023-11-14T22:13:20.000Z",
        "done_at": rfc3339(now)}
    assert sample("smsgw_webhook_events_total", account="acme", kind="RECEIPT",
                  outcome="delivered") == before + 1
    assert sample("smsgw_webhook_latency_seconds_count", account="acme") >= 1


async def test_mo_event_carries_the_decoded_text(tmp_path: Path,
                                                 clock: trio.testing.MockClock) -> None:
    receiver = Receiver()
    async with running(tmp_path / "gw.sqlite", receiver) as (store, hooks):
        mo = webhook_report(make_report(new_message_id(), kind=ReportKind.MO, state=None,
                                        source_addr="33612345678", dest_addr="36111",
                                        data_coding=8, body="Arrêt".encode("utf-16-be")))
        await stored(store, hooks, mo)
        await wait_until(lambda: hooks.pending_total() == 0)
    event = receiver.hits[0].event
    assert (event["type"], event["from"], event["to"], event["text"]) == (
        "mo", "33612345678", "36111", "Arrêt")


async def test_failed_posts_are_retried_with_exponential_backoff_until_a_2xx(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    receiver = Receiver(answers(500, 503, 429, 301))
    async with running(tmp_path / "gw.sqlite", receiver) as (store, hooks):
        report, = await stored(store, hooks, receipt())
        await wait_until(lambda: receiver.delivered(5))
        await wait_until(lambda: hooks.pending_total() == 0)
        assert await left_in_store(store, hooks) == []
        # Its message's history says so (GET /v1/messages/{id} shows it).
        [line] = await store.events_of(report.message_id)
        assert (line.kind, line.detail) == ("webhook", {
            "event_id": report.extra["event_id"], "outcome": "delivered", "status": 200,
            "tries": 5})
    gaps = [b.at - a.at for a, b in zip(receiver.hits, receiver.hits[1:], strict=False)]
    for n, gap in enumerate(gaps):  # 5 s, 10 s, 20 s, 40 s, each jittered to half..all
        full = 5.0 * 2 ** n
        assert full / 2 <= gap <= full + 0.1, gaps
    ids = {h.headers[EVENT_ID_HEADER.lower()] for h in receiver.hits}
    assert ids == {report.extra["event_id"]}  # one event, however many tries


async def test_410_gone_stops_the_retries_and_deletes_the_event(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    receiver = Receiver(answers(500, 410))
    before = sample("smsgw_webhook_events_total", account="acme", kind="RECEIPT",
                    outcome="gone")
    async with running(tmp_path / "gw.sqlite", receiver) as (store, hooks):
        report, = await stored(store, hooks, receipt())
        await wait_until(lambda: hooks.pending_total() == 0)
        assert await left_in_store(store, hooks) == []
        [line] = await store.events_of(report.message_id)
        assert (line.detail["outcome"], line.detail["status"], line.detail["tries"]) == (
            "gone", 410, 2)
        await trio.sleep(3600)  # and nothing more comes
    assert len(receiver.hits) == 2
    assert sample("smsgw_webhook_events_total", account="acme", kind="RECEIPT",
                  outcome="gone") == before + 1


async def test_an_event_never_answered_2xx_is_deleted_at_the_report_expiry_and_counted(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async def down(_hit: Hit) -> int:
        return 502

    receiver = Receiver(down)
    before = sample("smsgw_webhook_events_total", account="acme", kind="RECEIPT",
                    outcome="expired")
    # created_at T0 + 5, now T0 + 10, expiry 1 h: gone from the store by T0 + 3605.
    async with running(tmp_path / "gw.sqlite", receiver, expiry=HOUR) as (store, hooks):
        report, = await stored(store, hooks, receipt())
        start = trio.current_time()
        await wait_until(lambda: hooks.pending_total() == 0, step=30)
        assert trio.current_time() - start == pytest.approx(HOUR - 5, abs=31)
        assert await left_in_store(store, hooks) == []
        [line] = await store.events_of(report.message_id)
        assert (line.detail["outcome"], line.detail["status"]) == ("expired", None)
        assert line.detail["tries"] == len(receiver.hits)
    # 5, 10, 20 ... then 600 s apart (each jittered to half..all) for an hour, then no more
    assert 8 <= len(receiver.hits) <= 20
    assert receiver.hits[-1].at - receiver.hits[0].at <= HOUR
    assert sample("smsgw_webhook_events_total", account="acme", kind="RECEIPT",
                  outcome="expired") == before + 1


async def test_a_timeout_is_a_failure_retried_later(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async def slow_once(hit: Hit) -> int:
        if len(receiver.hits) == 1:
            await trio.sleep(60)
        return 204

    receiver = Receiver(slow_once)
    before = sample("smsgw_webhook_attempts_total", account="acme", outcome="timeout")
    async with running(tmp_path / "gw.sqlite", receiver, ep=endpoint(timeout=2.0)) as (
            store, hooks):
        await stored(store, hooks, receipt())
        await wait_until(lambda: hooks.pending_total() == 0)
    assert len(receiver.hits) == 2
    assert 2.0 + 2.5 <= receiver.hits[1].at - receiver.hits[0].at <= 2.0 + 5.1
    assert sample("smsgw_webhook_attempts_total", account="acme", outcome="timeout") == \
        before + 1


async def test_events_of_one_message_go_in_order_the_next_only_after_the_first_succeeded(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    message_id = new_message_id()
    first_tries = 0

    async def answer(hit: Hit) -> int:
        nonlocal first_tries
        if hit.event["event_id"] == first.extra["event_id"]:
            first_tries += 1
            return 500 if first_tries <= 3 else 200
        return 200

    receiver = Receiver(answer)
    first = receipt(message_id, state=State.UNDELIVERABLE)
    second = receipt(message_id, state=State.DELIVERED)
    other = receipt()
    async with running(tmp_path / "gw.sqlite", receiver) as (store, hooks):
        await stored(store, hooks, first, second, other)
        await wait_until(lambda: hooks.pending_total() == 0)
    order = [h.event["event_id"] for h in receiver.hits]
    assert order.count(first.extra["event_id"]) == 4
    assert order.index(second.extra["event_id"]) > len(order) - 2  # after the 4th try
    assert order[0] in (first.extra["event_id"], other.extra["event_id"])
    assert order.index(other.extra["event_id"]) < 3  # another message is not held up


async def test_posts_in_flight_per_account_stay_within_webhook_concurrency(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async def slow(_hit: Hit) -> int:
        await trio.sleep(1)
        return 200

    receiver = Receiver(slow)
    async with running(tmp_path / "gw.sqlite", receiver, ep=endpoint(concurrency=3)) as (
            store, hooks):
        await stored(store, hooks, *[receipt() for _ in range(10)])
        await wait_until(lambda: hooks.pending_total() == 0)
    assert len(receiver.hits) == 10
    assert receiver.most_active == 3


async def test_events_survive_a_restart_and_one_in_flight_at_the_stop_is_sent_again(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async def hang(_hit: Hit) -> int:
        await trio.sleep_forever()
        raise AssertionError

    path = tmp_path / "gw.sqlite"
    hanging = Receiver(hang)
    async with running(path, hanging) as (store, hooks):
        reports = await stored(store, hooks, receipt(), receipt())
        await wait_until(lambda: hanging.delivered(2))  # both in flight: then the crash
    receiver = Receiver()
    async with running(path, receiver) as (store, hooks):
        assert hooks.pending_total() == 2  # counted from the store at start
        await wait_until(lambda: hooks.pending_total() == 0)
        assert await left_in_store(store, hooks) == []
    assert sorted(h.event["event_id"] for h in receiver.hits) == sorted(
        r.extra["event_id"] for r in reports)


async def test_more_events_than_memory_are_paged_in_from_the_store(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    receiver = Receiver()
    path = tmp_path / "gw.sqlite"
    async with Store.open(path, synchronous="normal") as store:
        await store.add_reports([receipt() for _ in range(25)])
    async with running(path, receiver, memory=4) as (store, hooks):
        assert hooks.pending_total() == 25
        await stored(store, hooks, *[receipt() for _ in range(5)])
        await wait_until(lambda: hooks.pending_total() == 0)
        assert await left_in_store(store, hooks) == []
    assert len({h.headers[EVENT_ID_HEADER.lower()] for h in receiver.hits}) == 30


async def test_drain_lets_posts_in_flight_finish_and_commits_their_deletion(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async def slow(_hit: Hit) -> int:
        await trio.sleep(2)
        return 200

    receiver = Receiver(slow)
    async with running(tmp_path / "gw.sqlite", receiver, ep=endpoint(concurrency=2)) as (
            store, hooks):
        await stored(store, hooks, *[receipt() for _ in range(5)])
        await wait_until(lambda: receiver.delivered(2))
        await hooks.drain()
        assert hooks.in_flight() == 0
        left = await store.pending_reports("acme", via="http")
        await trio.sleep(60)
        assert len(receiver.hits) == 2  # no new POST once the drain began
    assert len(left) == 3  # the two answered are deleted, the three others kept


async def test_without_any_url_the_event_is_kept_until_expiry(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    receiver = Receiver()
    before = sample("smsgw_webhook_attempts_total", account="acme", outcome="no_url")
    async with running(tmp_path / "gw.sqlite", receiver, ep=endpoint(url=None)) as (
            store, hooks):
        await stored(store, hooks, receipt())
        await trio.sleep(30)
        assert hooks.pending_total() == 1 and len(await left_in_store(store, hooks)) == 1
    assert receiver.hits == []
    assert sample("smsgw_webhook_attempts_total", account="acme", outcome="no_url") > before


async def test_callback_url_of_the_message_wins_over_the_account_url(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    seen: list[str] = []

    async def handle(request: Request) -> Response:
        seen.append(request.url.path)
        return Response(b"", 200)

    app = Starlette(routes=[Route("/hooks", handle, methods=["POST"]),
                            Route("/mine", handle, methods=["POST"])])
    async with Store.open(tmp_path / "gw.sqlite", synchronous="normal") as store, \
            trio.open_nursery() as nursery:
        hooks = Webhooks(store, WallClock(T0 + 10), {"acme": endpoint()},
                         transport=httpx.ASGITransport(app=app))
        await nursery.start(hooks.run)
        mine = webhook_report(make_report(new_message_id()),
                              callback_url="http://app.test/mine")
        await stored(store, hooks, mine, receipt())
        await wait_until(lambda: hooks.pending_total() == 0)
        nursery.cancel_scope.cancel()
    assert sorted(seen) == ["/hooks", "/mine"]


def test_an_mo_webhook_says_whether_the_text_was_an_optout_keyword() -> None:
    from gateway.webhooks import event
    from tests.openapi_check import DOC, _validator

    schema = DOC["webhooks"]["mo"]["post"]["requestBody"]["content"]["application/json"]
    for mark in ("stop", "start", None):
        report = webhook_report(make_report("mo-1", kind=ReportKind.MO, body=b"Stop",
                                            state=None, dest_addr="36111"))
        if mark is not None:
            report.extra["optout"] = mark  # as Inbound marks a keyword before storing it
        body = event(report)
        assert (body["type"], body["text"], body["optout"]) == ("mo", "Stop", mark)
        _validator(schema["schema"]).validate(body)


async def test_erasure_drops_the_waiting_events_of_the_number_but_not_one_in_flight(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async def answer(hit: Hit) -> int:
        if hit.event["event_id"] == flying.extra["event_id"]:
            await trio.sleep(3)  # in flight while the erasure runs (timeout: 5 s)
            return 200
        return 200 if up else 503

    up = False
    receiver = Receiver(answer)
    person = "33699999999"
    flying = receipt(source_addr=person)
    waiting = [receipt(source_addr=person), receipt(source_addr=person)]
    other = receipt()
    async with running(tmp_path / "gw.sqlite", receiver, ep=endpoint(concurrency=1)) as (
            store, hooks):
        await stored(store, hooks, flying)
        await wait_until(lambda: receiver.delivered(1))  # flying is on its way
        await stored(store, hooks, *waiting, other)
        assert hooks.forget_addresses([person, "+" + person]) == 2
        assert hooks.pending_total() == 2  # flying (in flight) and other
        up = True
        await wait_until(lambda: hooks.pending_total() == 0)
    sent = {h.event["event_id"] for h in receiver.hits}
    assert sent == {flying.extra["event_id"], other.extra["event_id"]}
