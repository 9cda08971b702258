"""The RCS channel against the RBM platform simulator on real 127.0.0.1 sockets, in virtual
time: token caching, capability cache (negative answers too), send with the validity's time
left as ttl, the RBM error facts (404 and 400 not capable, 5xx temporary), revoke (200
revoked, 404 delivered), offline phones held until revoked or expired, events and replies
pushed back in Pub/Sub push format, and the billing class of each message."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from gateway.http_api import serve_http
from gateway.model import Message, PartState
from gateway.rbm_simulator import (
    CAPABLE,
    FAILING,
    NOT_CAPABLE,
    OFFLINE,
    SILENT,
    RbmSimConfig,
    RbmSimulator,
    config_from_args,
)
from routing.channel import Channel, MobileOriginated, ProviderReceipt, Revoked, SendResult
from routing.rcs import (
    BASIC,
    CAPABILITY_CACHE_MAX,
    CONVERSATION,
    REPLIED_MAX,
    SINGLE,
    Capability,
    ClientSecret,
    Credentials,
    RbmClient,
    RcsChannel,
    RcsPayload,
    ServiceAccount,
    TokenError,
    parse_push,
)
from smpp.constants import Status

CAPABLE_PHONE, OTHER_PHONE = "33612345678", "33698765432"


@pytest.fixture(autouse=True)
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.02)


@dataclass
class Webhook:
    """The gateway side of the pushes: every body parsed, answered 200."""

    items: list[ProviderReceipt | MobileOriginated | None] = field(default_factory=list)

    async def receive(self, request: Request) -> Response:
        self.items.append(parse_push(await request.body()).item)
        return Response(status_code=200)

    def receipts(self, provider_id: str) -> list[ProviderReceipt]:
        return [i for i in self.items
                if isinstance(i, ProviderReceipt) and i.provider_id == provider_id]


@dataclass
class Rig:
    sim: RbmSimulator
    client: RbmClient
    channel: RcsChannel
    webhook: Webhook
    nursery: trio.Nursery

    async def send(self, message: Message, deadline_in: float = 3600.0) -> SendResult:
        results: list[SendResult] = []
        unit, = self.channel.prepare(message)
        self.channel.submit_nowait(message, unit, trio.current_time() + deadline_in,
                                   results.append)
        await until(lambda: bool(results))
        return results[0]


async def until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.05)


@contextlib.asynccontextmanager
async def rig(credentials: Credentials | None = None, *, capability_ttl: float = 600.0,
              negative_ttl: float = 300.0, **sim_changes: Any) -> AsyncIterator[Rig]:
    webhook = Webhook()
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
        hook_app = Starlette(routes=[Route("/v1/rcs/events", webhook.receive,
                                           methods=["POST"])])
        hook_port = await nursery.start(serve_http, hook_app, "127.0.0.1", 0)
        config = RbmSimConfig(port=0, webhook_url=f"http://127.0.0.1:{hook_port}/v1/rcs/events",
                              **sim_changes)
        sim = RbmSimulator(config)
        port = await nursery.start(sim.serve)
        base = f"http://127.0.0.1:{port}"
        client = RbmClient(http, base_url=base, token_url=base + "/token",
                           agent_id=config.agent_id,
                           credentials=credentials or ClientSecret("smsgw", "smsgw-secret"),
                           capability_ttl=capability_ttl, negative_ttl=negative_ttl)
        channel = RcsChannel("rbm-demo", client, nursery)
        yield Rig(sim, client, channel, webhook, nursery)
        nursery.cancel_scope.cancel()


def message(text: str = "Your code is 1234", to: str = CAPABLE_PHONE, *,
            data_coding: int = 0, body: bytes | None = None, esm_class: int = 0) -> Message:
    return Message(id=uuid.uuid4().hex, account="omni", source_addr="ACME", source_ton=5,
                   source_npi=0, dest_addr=to, dest_ton=1, dest_npi=1,
                   data_coding=data_coding, esm_class=esm_class, protocol_id=0, priority=0,
                   registered_delivery=1,
                   body=text.encode("latin-1") if body is None else body,
                   created_at=0.0, expires_at=86400.0, not_before=0.0, channel="rcs")


# --------------------------------------------------------------------------- Channel shape
async def test_rcs_channel_is_a_channel_of_kind_rcs_with_one_unit_per_message() -> None:
    async with rig() as r:
        assert isinstance(r.channel, Channel)
        assert r.channel.kind == "rcs" and r.channel.is_up()
        units = r.channel.prepare(message("Hello"))
        assert [u.number for u in units] == [1]
        assert units[0].payload == RcsPayload("+33612345678", "Hello")


# --------------------------------------------------------------------------- token
async def test_the_token_is_fetched_once_and_reused_until_it_nears_expiry(
        clock: trio.testing.MockClock) -> None:
    async with rig(token_lifetime=600.0) as r:
        await r.client.capabilities(CAPABLE_PHONE)
        await r.client.capabilities(OTHER_PHONE)
        assert r.sim.tokens_issued == 1
        await trio.sleep(500)
        await r.client.capabilities("33611111111")
        assert r.sim.tokens_issued == 1
        await trio.sleep(600 - 60 - 500)  # refreshed a minute before it expires
        await r.client.capabilities("33622222222")
        assert r.sim.tokens_issued == 2


async def test_a_token_the_platform_no_longer_takes_is_replaced_once_on_401() -> None:
    async with rig() as r:
        await r.client.capabilities(CAPABLE_PHONE)
        r.sim._tokens.clear()  # the platform forgot it (revoked, rotated)
        assert (await r.client.capabilities(OTHER_PHONE)).capable
        assert r.sim.tokens_issued == 2


async def test_a_service_account_signs_a_jwt_bearer_grant_the_platform_verifies() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    async with rig(ServiceAccount("agent@example.iam.gserviceaccount.com", pem),
                   service_account_public_key=public) as r:
        assert (await r.client.capabilities(CAPABLE_PHONE)).capable
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    async with rig(ServiceAccount("intruder@example.com", other_pem),
                   service_account_public_key=public) as r:
        with pytest.raises(TokenError, match="bad signature"):
            await r.client.token()
        result = await r.send(message())
        assert result.temporary and not result.ok


async def test_an_unexpected_error_in_a_send_fails_that_send_once_not_the_gateway() -> None:
    """Rule: a send task lets no exception escape into the nursery it runs in (the daemon's
    root one): a service-account key that does not parse (ValueError when the JWT is signed)
    gives one temporary failure, logged with its traceback, and the channel goes on."""
    broken = ServiceAccount("agent@example.iam.gserviceaccount.com", "not a PEM key")
    async with rig(broken) as r:
        results: list[SendResult] = []
        msg = message()
        with capture_logs() as logs:
            r.channel.submit_nowait(msg, r.channel.prepare(msg)[0], trio.current_time() + 60,
                                    results.append)
            await until(lambda: bool(results))
            await trio.sleep(1)
        assert len(results) == 1  # done() exactly once
        assert results[0].temporary and not results[0].ok
        assert "ValueError" in results[0].detail and "private_key" in results[0].detail
        errors = [e for e in logs if e["event"] == "rcs.send_error"]
        assert errors and errors[0]["log_level"] == "error" and errors[0]["exc_info"]
        r.client.credentials = ClientSecret("smsgw", "smsgw-secret")
        assert (await r.send(message())).ok  # the channel (and its nursery) still works


async def test_wrong_client_credentials_make_sends_temporary_failures() -> None:
    async with rig(ClientSecret("smsgw", "wrong")) as r:
        result = await r.send(message())
        assert result.temporary and not result.ok and "token" in result.detail


# --------------------------------------------------------------------------- capability
async def test_capability_404_is_a_negative_answer_cached_for_the_negative_ttl(
        clock: trio.testing.MockClock) -> None:
    async with rig(phones={"+33698765432": NOT_CAPABLE}, negative_ttl=300.0) as r:
        assert not (await r.client.capabilities(OTHER_PHONE)).capable
        r.sim.set_state("+33698765432", CAPABLE)  # RCS switched on: not seen until the TTL
        assert not (await r.client.capabilities(OTHER_PHONE)).capable
        await trio.sleep(301)
        assert (await r.client.capabilities(OTHER_PHONE)).capable


async def test_a_positive_capability_is_cached_for_the_capability_ttl_with_its_features(
        clock: trio.testing.MockClock) -> None:
    async with rig(capability_ttl=600.0) as r:
        first = await r.client.capabilities(CAPABLE_PHONE)
        assert first.capable and "RICHCARD_STANDALONE" in first.features
        r.sim.set_state("+33612345678", NOT_CAPABLE)
        assert (await r.client.capabilities(CAPABLE_PHONE)).capable
        await trio.sleep(601)
        assert not (await r.client.capabilities(CAPABLE_PHONE)).capable


async def test_a_failing_capability_check_raises_and_is_not_cached() -> None:
    from routing.rcs import RbmError

    async with rig(phones={"+33612345678": FAILING}) as r:
        with pytest.raises(RbmError) as info:
            await r.client.capabilities(CAPABLE_PHONE)
        assert info.value.code == 503
        assert r.client.cached_capability(CAPABLE_PHONE) is None


def phones(count: int, start: int = 0) -> list[str]:
    return [f"336{n:08d}" for n in range(start, start + count)]


async def test_the_capability_cache_is_a_bounded_lru() -> None:
    """Rule: the capability cache holds CAPABILITY_CACHE_MAX phones at most, however fresh
    their answers: past it the least recently used is forgotten (O(1), no copy of the
    cache), so memory stays bounded and the trio loop is never stalled."""
    async with httpx.AsyncClient() as http:
        client = RbmClient(http, base_url="http://127.0.0.1:9", token_url="http://127.0.0.1:9",
                           agent_id="a", credentials=ClientSecret("a", "b"))
        assert client.cache_max == CAPABILITY_CACHE_MAX == 100_000
        first, *others = phones(CAPABILITY_CACHE_MAX + 10)
        client.remember(first, Capability(True))
        for n, phone in enumerate(others):
            client.remember(phone, Capability(False))
            if n == 100:
                assert client.cached_capability(first) is not None  # used: kept longer
        assert len(client._capabilities) == CAPABILITY_CACHE_MAX
        assert client.cached_capability(first) == Capability(True)
        assert client.cached_capability(others[0]) is None  # the least recently used: gone
        assert client.cached_capability(others[-1]) == Capability(False)


async def test_the_conversation_windows_kept_are_a_bounded_lru() -> None:
    """Rule: the phones whose last reply the channel keeps (conversation billing) are at most
    REPLIED_MAX, the one quiet the longest forgotten first."""
    async with rig() as r:
        assert r.channel.replied_max == REPLIED_MAX == 100_000
        now = r.channel.wall_clock()
        first, *others = phones(REPLIED_MAX + 10)
        r.channel.note_reply(first, now)
        for n, phone in enumerate(others):
            r.channel.note_reply(phone, now)
            if n == 100:
                r.channel.note_reply(first, now)  # it wrote again: kept longer
        assert len(r.channel._replied) == REPLIED_MAX
        assert r.channel.billing_class(RcsPayload("+" + first, "hi")) == CONVERSATION
        assert r.channel.billing_class(RcsPayload("+" + others[0], "hi")) == BASIC
        assert r.channel.billing_class(RcsPayload("+" + others[-1], "hi")) == CONVERSATION


# --------------------------------------------------------------------------- send
async def test_a_capable_phone_gets_the_message_and_delivered_then_read_come_back(
        clock: trio.testing.MockClock) -> None:
    async with rig(deliver_delay=1.0, read_delay=2.0) as r:
        result = await r.send(message("Your code is 1234"))
        assert result.ok and uuid.UUID(result.provider_id or "")
        assert result.detail == f"billing={BASIC}"
        assert r.sim.messages[result.provider_id or ""].text == "Your code is 1234"
        await until(lambda: len(r.webhook.receipts(result.provider_id or "")) == 2)
        delivered, read = r.webhook.receipts(result.provider_id or "")
        assert (delivered.outcome, delivered.word) == (PartState.DELIVERED, "DELIVERED")
        assert (read.outcome, read.word) == (None, "READ")


async def test_404_on_send_means_not_capable_at_once_and_is_remembered() -> None:
    async with rig(phones={"+33698765432": NOT_CAPABLE}) as r:
        result = await r.send(message(to=OTHER_PHONE))
        assert result.not_capable and not result.ok and not result.temporary
        assert result.status == Status.ESME_RINVDSTADR
        assert r.sim.messages == {}
    async with rig() as r:  # capable at the check, not at the send (agent unlaunched since)
        await r.client.capabilities(OTHER_PHONE)
        r.sim.set_state("+33698765432", NOT_CAPABLE)
        result = await r.send(message(to=OTHER_PHONE))
        assert result.not_capable and "NOT_FOUND" in result.detail
        cached = r.client.cached_capability(OTHER_PHONE)
        assert cached is not None and not cached.capable


async def test_400_invalid_argument_leaves_the_message_to_the_plans_next_channel() -> None:
    """Content RBM refuses (too long, unsupported) may still go as SMS: not capable, not
    the message's own fault."""
    async with rig() as r:
        result = await r.send(message("x" * 4000))
        assert result.not_capable and not result.temporary and not result.rejected
        assert "INVALID_ARGUMENT" in result.detail


async def test_5xx_is_a_temporary_failure() -> None:
    async with rig() as r:
        await r.client.capabilities(CAPABLE_PHONE)
        r.sim.set_state("+33612345678", FAILING)
        result = await r.send(message())
        assert result.temporary and not result.ok and result.status == Status.ESME_RSYSERR


async def test_no_answer_at_all_is_temporary() -> None:
    async with httpx.AsyncClient() as http, trio.open_nursery() as nursery:
        listener, = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listener.socket.getsockname()[1]
        await listener.aclose()  # nothing listens there any more: connection refused
        base = f"http://127.0.0.1:{port}"
        client = RbmClient(http, base_url=base, token_url=base + "/token", agent_id="a",
                           credentials=ClientSecret("a", "b"))
        channel = RcsChannel("rbm", client, nursery)
        results: list[SendResult] = []
        msg = message()
        channel.submit_nowait(msg, channel.prepare(msg)[0], trio.current_time() + 60,
                              results.append)
        await until(lambda: bool(results))
        assert results[0].temporary and not results[0].ok


async def test_a_send_left_unanswered_is_revoked_then_temporary_so_it_cannot_arrive_later(
        clock: trio.testing.MockClock) -> None:
    async with rig(phones={"+33612345678": SILENT}) as r:
        result = await r.send(message())
        assert result.temporary and not result.ok
        held, = r.sim.messages.values()  # the platform had taken it: now withdrawn
        assert held.state == "REVOKED"
        assert f"revoke of {held.id}: revoked" in result.detail
        r.sim.set_state("+33612345678", CAPABLE)
        await trio.sleep(10)
        assert r.webhook.items == []


async def test_a_send_left_unanswered_that_reached_the_phone_is_taken_not_a_failure(
        clock: trio.testing.MockClock) -> None:
    """Rule: no answer to the send and its revoke answered 404 (delivered meanwhile): the send
    is taken under its id, so its DELIVERED event is matched and the core does not fall back
    to SMS (the phone would get the message twice)."""
    async with rig(phones={"+33612345678": SILENT}) as r:
        results: list[SendResult] = []
        msg = message()
        r.channel.submit_nowait(msg, r.channel.prepare(msg)[0], trio.current_time() + 3600,
                                results.append)
        await until(lambda: bool(r.sim.messages))
        r.sim.set_state("+33612345678", CAPABLE)  # delivered while the send's answer is lost
        await until(lambda: bool(results))
        (result,), (held,) = results, r.sim.messages.values()
        assert held.state == "DELIVERED"
        assert result.ok and result.provider_id == held.id and not result.temporary
        assert result.billing == BASIC and "not found (delivered)" in result.detail
        await until(lambda: bool(r.webhook.receipts(held.id)))
        assert r.webhook.receipts(held.id)[0].outcome == PartState.DELIVERED


async def test_a_send_left_unanswered_whose_revoke_fails_is_taken_for_the_core_to_decide(
        clock: trio.testing.MockClock) -> None:
    """Rule: no answer to the send and no answer to its revoke either: RBM may hold it, so it
    is taken under its id (the core's wait, then its own revoke, decide on a fallback), not a
    temporary failure that would send the SMS at once beside a message that may arrive."""
    async with rig(phones={"+33612345678": SILENT}) as r:
        results: list[SendResult] = []
        msg = message()
        r.channel.submit_nowait(msg, r.channel.prepare(msg)[0], trio.current_time() + 3600,
                                results.append)
        await until(lambda: bool(r.sim.messages))
        r.sim.set_state("+33612345678", FAILING)  # the revoke gets 503
        await until(lambda: bool(results))
        (result,), (held,) = results, r.sim.messages.values()
        assert held.state == "PENDING"
        assert result.ok and result.provider_id == held.id and not result.temporary
        assert f"revoke of {held.id} failed" in result.detail
        r.sim.set_state("+33612345678", OFFLINE)
        assert await r.channel.revoke(msg, held.id) == Revoked.REVOKED  # the core's revoke


async def test_a_token_url_that_does_not_answer_fails_the_send_without_taking_it(
        clock: trio.testing.MockClock) -> None:
    """Rule: a send never made (its token did not come) is a temporary failure, never taken
    as a send RBM may hold."""
    async with rig() as r, trio.open_nursery() as nursery:
        listener, = await trio.open_tcp_listeners(0, host="127.0.0.1")
        accepted: list[trio.SocketStream] = []

        async def mute() -> None:  # accepts, never answers
            while True:
                accepted.append(await listener.accept())

        nursery.start_soon(mute)
        r.client.token_url = f"http://127.0.0.1:{listener.socket.getsockname()[1]}/token"
        r.client.remember(CAPABLE_PHONE, Capability(True))
        result = await r.send(message())
        assert result.temporary and not result.ok and "token" in result.detail
        assert r.sim.messages == {}
        nursery.cancel_scope.cancel()


async def test_max_in_flight_bounds_the_sends_unanswered_at_once(
        clock: trio.testing.MockClock) -> None:
    """Rule: the channel's capacity ([[rcs]] max_in_flight) is enforced: past it, a send waits
    for a slot (until its deadline: then it is expired, never sent)."""
    async with rig(phones={"+33612345678": SILENT}) as r:  # sends answered only by timeout
        r.client.timeout = 1.0  # each unanswered send holds its slot 1 s (virtual)
        channel = RcsChannel("rbm-demo", r.client, r.nursery, capacity=2)
        assert channel.capacity == 2
        results: list[SendResult] = []
        for _ in range(5):
            msg = message()
            channel.submit_nowait(msg, channel.prepare(msg)[0], trio.current_time() + 3600,
                                  results.append)
        await until(lambda: len(r.sim.messages) >= 2)
        hurried: list[SendResult] = []
        msg = message()
        channel.submit_nowait(msg, channel.prepare(msg)[0], trio.current_time() + 0.3,
                              hurried.append)
        await trio.sleep(r.client.timeout / 2)  # both slots still taken by unanswered sends
        assert len(r.sim.messages) == 2 and results == []
        assert [h.expired for h in hurried] == [True]  # its deadline came first
        await until(lambda: len(results) == 5, timeout=600)
        assert len(r.sim.messages) == 5  # the others went as slots freed


async def test_the_control_endpoints_set_a_phones_fate_and_list_what_the_platform_holds(
        ) -> None:
    async with rig() as r, httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{r.sim.port}") as http:
        resp = await http.post("/control/phones", json={"phone": "33612345678",
                                                        "state": "offline"})
        assert resp.json() == {"phone": "+33612345678", "state": OFFLINE}
        bad = await http.post("/control/phones", json={"phone": "1", "state": "asleep"})
        assert bad.status_code == 400 and "asleep" in bad.json()["error"]
        result = await r.send(message())
        listed, = (await http.get("/control/messages")).json()
        assert (listed["messageId"], listed["state"]) == (result.provider_id, "PENDING")


async def test_the_ttl_given_to_rbm_is_the_time_left_until_the_deadline(
        clock: trio.testing.MockClock) -> None:
    async with rig(phones={"+33612345678": OFFLINE}) as r:
        sent_at = trio.current_time()
        result = await r.send(message(), deadline_in=120.0)
        held = r.sim.messages[result.provider_id or ""]
        assert sent_at + 119 <= held.expires_at <= sent_at + 120


async def test_a_deadline_already_past_is_expired_without_a_request() -> None:
    async with rig() as r:
        result = await r.send(message(), deadline_in=-1.0)
        assert result.expired and not result.ok
        assert r.sim.messages == {} and r.sim.tokens_issued == 0


async def test_a_unit_not_prepared_by_rcs_is_refused() -> None:
    from routing.channel import Unit

    async with rig() as r:
        with pytest.raises(TypeError):
            r.channel.submit_nowait(message(), Unit(1, b"segment"), 1e9, lambda _r: None)


# --------------------------------------------------------------------------- offline phones
async def test_an_offline_phone_holds_the_message_until_it_comes_back_within_the_ttl(
        clock: trio.testing.MockClock) -> None:
    async with rig(phones={"+33612345678": OFFLINE}) as r:
        result = await r.send(message(), deadline_in=4 * 3600)
        assert result.ok
        await trio.sleep(3 * 3600)
        assert r.webhook.receipts(result.provider_id or "") == []  # retried, not delivered
        r.sim.set_state("+33612345678", CAPABLE)
        await until(lambda: bool(r.webhook.receipts(result.provider_id or "")))
        assert r.webhook.receipts(result.provider_id or "")[0].outcome == PartState.DELIVERED


async def test_an_offline_phone_past_the_ttl_gets_nothing_and_expired_is_reported(
        clock: trio.testing.MockClock) -> None:
    async with rig(phones={"+33612345678": OFFLINE}) as r:
        result = await r.send(message(), deadline_in=600.0)
        await trio.sleep(599)
        assert r.webhook.receipts(result.provider_id or "") == []
        await until(lambda: bool(r.webhook.receipts(result.provider_id or "")), timeout=700)
        expired, = r.webhook.receipts(result.provider_id or "")
        assert (expired.outcome, expired.word) == (PartState.EXPIRED, "TTL_EXPIRATION_REVOKED")
        r.sim.set_state("+33612345678", CAPABLE)
        await trio.sleep(10)
        assert r.sim.messages[result.provider_id or ""].state == "EXPIRED"
        assert len(r.webhook.receipts(result.provider_id or "")) == 1


# --------------------------------------------------------------------------- revoke
async def test_revoke_200_means_revoked_and_the_phone_never_gets_it(
        clock: trio.testing.MockClock) -> None:
    async with rig(phones={"+33612345678": OFFLINE}) as r:
        msg = message()
        result = await r.send(msg)
        assert await r.channel.revoke(msg, result.provider_id or "") == Revoked.REVOKED
        r.sim.set_state("+33612345678", CAPABLE)
        await trio.sleep(10)
        assert r.sim.messages[result.provider_id or ""].state == "REVOKED"
        assert r.webhook.receipts(result.provider_id or "") == []


async def test_revoke_404_means_it_was_already_delivered(
        clock: trio.testing.MockClock) -> None:
    async with rig(deliver_delay=1.0) as r:
        msg = message()
        result = await r.send(msg)
        await until(lambda: bool(r.webhook.receipts(result.provider_id or "")))
        assert await r.channel.revoke(msg, result.provider_id or "") == Revoked.DELIVERED


async def test_revoke_without_an_answer_is_failed() -> None:
    async with rig() as r:
        msg = message()
        result = await r.send(msg)
        r.sim.set_state("+33612345678", FAILING)
        assert await r.channel.revoke(msg, result.provider_id or "") == Revoked.FAILED


# --------------------------------------------------------------------------- replies, billing
async def test_a_user_reply_comes_back_as_mo_and_opens_a_conversation_window(
        clock: trio.testing.MockClock) -> None:
    async with rig() as r:
        assert (await r.send(message("a" * 160))).detail == f"billing={BASIC}"
        assert (await r.send(message("a" * 161))).detail == f"billing={SINGLE}"
        async with httpx.AsyncClient() as http:
            resp = await http.post(f"http://127.0.0.1:{r.sim.port}/control/replies",
                                   json={"phone": "+33612345678", "text": "Oui, merci é"})
            assert resp.status_code == 200
        await until(lambda: any(isinstance(i, MobileOriginated) for i in r.webhook.items))
        mo, = [i for i in r.webhook.items if isinstance(i, MobileOriginated)]
        assert (mo.sender, mo.recipient, mo.sender_ton) == ("33612345678",
                                                            r.sim.config.agent_id, 1)
        assert mo.data_coding == 0  # fits the GSM alphabet
        r.channel.note_reply(mo.sender, r.channel.wall_clock())
        assert (await r.send(message("a" * 161))).detail == f"billing={CONVERSATION}"
        assert (await r.send(message("hi", to=OTHER_PHONE))).detail == f"billing={BASIC}"


def test_the_simulator_listens_on_2778_by_default_and_takes_phone_fates_on_its_command_line(
        ) -> None:
    config = config_from_args(["--webhook", "http://127.0.0.1:8080/v1/rcs/events",
                               "--phone", "33698765432=not_capable", "--phone", "+1555=offline"])
    assert (config.host, config.port) == ("127.0.0.1", 2778)
    assert config.phones == {"+33698765432": NOT_CAPABLE, "+1555": OFFLINE}
    with pytest.raises(SystemExit):
        config_from_args(["--phone", "+1555=asleep"])
