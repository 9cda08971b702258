"""POST /v1/rcs/events (gateway/http_api.RcsEvents) on real 127.0.0.1 sockets with a fake
ChannelEvents sink: a push is answered 2xx only once the sink says it is stored, 5xx when it
could not be or did not say in time; malformed pushes, unknown agents and wrong push tokens
are refused; user replies reach the sink addressed to the agent's sender; and the RBM
simulator's own pushes land in the sink."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from starlette.applications import Starlette

from gateway.http_api import RcsEvents, serve_http
from gateway.model import Message, PartState
from gateway.rbm_simulator import RbmSimConfig, RbmSimulator
from routing.channel import Answered, Channel, MobileOriginated, ProviderReceipt, SendResult
from routing.rcs import (
    CONVERSATION,
    ClientSecret,
    RbmClient,
    RcsChannel,
    RcsPayload,
    encode_push,
)

AGENT = "smsgw-demo-agent"


@pytest.fixture(autouse=True)
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.02)


@dataclass
class FakeSink:
    """A ChannelEvents that records what it is handed and answers as told: `stored` (True /
    False), or None to never answer; `later` answers from another task after receipts()
    returned."""

    stored: bool | None = True
    later: bool = False
    nursery: trio.Nursery | None = None
    receipts_seen: list[tuple[Channel, ProviderReceipt]] = field(default_factory=list)
    mo_seen: list[tuple[Channel, MobileOriginated]] = field(default_factory=list)

    def _answer(self, count: int, answered: Answered) -> None:
        if self.stored is None:
            return
        stored = self.stored

        def answer_all() -> None:
            for i in range(count):
                answered(i, stored)

        if self.later and self.nursery is not None:
            async def soon() -> None:
                await trio.sleep(1)
                answer_all()
            self.nursery.start_soon(soon)
        else:
            answer_all()

    async def receipts(self, channel: Channel, receipts: Sequence[ProviderReceipt],
                       answered: Answered) -> None:
        self.receipts_seen += [(channel, r) for r in receipts]
        self._answer(len(receipts), answered)

    async def mobile_originated(self, channel: Channel, messages: Sequence[MobileOriginated],
                                answered: Answered) -> None:
        self.mo_seen += [(channel, m) for m in messages]
        self._answer(len(messages), answered)


@dataclass
class Gateway:
    url: str
    sink: FakeSink
    channel: RcsChannel
    http: httpx.AsyncClient
    nursery: trio.Nursery

    async def push(self, event: dict[str, Any], query: str = "") -> httpx.Response:
        body = encode_push(event, message_id="1", publish_time="2026-12-02T10:00:00Z")
        return await self.http.post(self.url + query, content=body)


@contextlib.asynccontextmanager
async def gateway(sink: FakeSink | None = None, *, push_token: str | None = None
                  ) -> AsyncIterator[Gateway]:
    sink = sink or FakeSink()
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=60) as http:
        sink.nursery = nursery
        client = RbmClient(http, base_url="http://127.0.0.1:9", token_url="http://127.0.0.1:9",
                           agent_id=AGENT, credentials=ClientSecret("a", "b"))
        channel = RcsChannel("rbm-demo", client, nursery, sender="ACME")
        events = RcsEvents({AGENT: channel}, sink, store_timeout=5.0,
                           push_tokens={AGENT: push_token} if push_token else None)
        port = await nursery.start(serve_http, Starlette(routes=[events.route()]),
                                   "127.0.0.1", 0)
        yield Gateway(f"http://127.0.0.1:{port}{RcsEvents.PATH}", sink, channel, http,
                      nursery)
        nursery.cancel_scope.cancel()


def delivered(message_id: str = "0b8b5c8e-8a43-4a8f-9d1b-0f3a1d3e8c11",
              agent: str = AGENT) -> dict[str, Any]:
    return {"senderPhoneNumber": "+33612345678", "eventType": "DELIVERED", "eventId": "e1",
            "messageId": message_id, "agentId": agent}


async def test_a_receipt_is_answered_2xx_once_the_sink_stored_it() -> None:
    async with gateway() as gw:
        resp = await gw.push(delivered())
        assert resp.status_code == 204
        (channel, receipt), = gw.sink.receipts_seen
        assert channel is gw.channel and receipt.outcome == PartState.DELIVERED


async def test_an_answer_given_after_the_sink_returned_is_waited_for() -> None:
    async with gateway(FakeSink(later=True)) as gw:
        assert (await gw.push(delivered())).status_code == 204


async def test_a_push_the_sink_could_not_store_is_answered_5xx_to_be_pushed_again() -> None:
    async with gateway(FakeSink(stored=False)) as gw:
        resp = await gw.push(delivered())
        assert resp.status_code == 503 and resp.json()["type"].endswith("not-stored")


async def test_a_sink_that_never_answers_gets_5xx_after_the_store_timeout() -> None:
    async with gateway(FakeSink(stored=None)) as gw:
        started = trio.current_time()
        resp = await gw.push(delivered())
        assert resp.status_code == 503
        assert trio.current_time() - started >= 5.0


async def test_a_reply_reaches_the_sink_as_mo_to_the_agents_sender_and_opens_a_window() -> None:
    async with gateway() as gw:
        resp = await gw.push({"senderPhoneNumber": "+33612345678", "messageId": "u1",
                              "agentId": AGENT, "text": "Oui"})
        assert resp.status_code == 204
        (_, mo), = gw.sink.mo_seen
        assert (mo.sender, mo.recipient, mo.recipient_ton, mo.body) == (
            "33612345678", "ACME", 5, b"Oui")
        payload, = [u.payload for u in gw.channel.prepare(_message())]
        assert isinstance(payload, RcsPayload)
        assert gw.channel.billing_class(payload) == CONVERSATION


async def test_malformed_pushes_are_400_and_never_reach_the_sink() -> None:
    async with gateway() as gw:
        resp = await gw.http.post(gw.url, content=b'{"message": {"data": "%%%"}}')
        assert resp.status_code == 400 and "base64" in resp.json()["detail"]
        assert gw.sink.receipts_seen == [] and gw.sink.mo_seen == []


async def test_an_agent_no_connector_serves_is_404() -> None:
    async with gateway() as gw:
        resp = await gw.push(delivered(agent="someone-else"))
        assert resp.status_code == 404 and gw.sink.receipts_seen == []


async def test_events_with_nothing_for_the_core_are_acknowledged_without_the_sink() -> None:
    async with gateway() as gw:
        resp = await gw.push({**delivered(), "eventType": "IS_TYPING"})
        assert resp.status_code == 204 and gw.sink.receipts_seen == []


async def test_with_a_push_token_only_pushes_carrying_it_are_taken() -> None:
    async with gateway(push_token="s3cret") as gw:
        assert (await gw.push(delivered())).status_code == 401
        assert (await gw.push(delivered(), "?token=wrong")).status_code == 401
        assert (await gw.push(delivered(), "?token=s3cret")).status_code == 204
        assert len(gw.sink.receipts_seen) == 1


async def test_the_simulators_delivered_event_reaches_the_sink_through_the_endpoint() -> None:
    async with gateway() as gw:
        sim = RbmSimulator(RbmSimConfig(port=0, webhook_url=gw.url, deliver_delay=1.0,
                                        read_delay=1.0))
        port = await gw.nursery.start(sim.serve)
        base = f"http://127.0.0.1:{port}"
        gw.channel.client = RbmClient(gw.http, base_url=base, token_url=base + "/token",
                                      agent_id=AGENT,
                                      credentials=ClientSecret("smsgw", "smsgw-secret"))
        results: list[SendResult] = []
        msg = _message()
        gw.channel.submit_nowait(msg, gw.channel.prepare(msg)[0], trio.current_time() + 600,
                                 results.append)
        with trio.fail_after(30):
            while len(gw.sink.receipts_seen) < 2:
                await trio.sleep(0.1)
        assert results[0].ok
        assert [(r.provider_id, r.word) for _, r in gw.sink.receipts_seen] == [
            (results[0].provider_id, "DELIVERED"), (results[0].provider_id, "READ")]
        assert sim.pushed and sim.push_failures == 0


def _message() -> Message:
    return Message(id=uuid.uuid4().hex, account="omni", source_addr="ACME", source_ton=5,
                   source_npi=0, dest_addr="33612345678", dest_ton=1, dest_npi=1,
                   data_coding=0, esm_class=0, protocol_id=0, priority=0,
                   registered_delivery=1, body=b"Hello", created_at=0.0, expires_at=1.0,
                   not_before=0.0)
