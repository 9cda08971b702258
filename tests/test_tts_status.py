"""The gateway's voice status callback, POST /v1/voice/status/{connector} on the HTTP API: the
provider's statuses reach the channel events sink as ProviderReceipts, and the provider gets a
2xx only once the sink says each is stored (else 503, and it sends the status again). Real
sockets on 127.0.0.1 (the voice simulator posting to the gateway's HttpApi), virtual time."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import trio
from trio.testing import MockClock

from gateway.config import HttpConfig
from gateway.http_api import HttpApi, VoiceStatus, serve_http
from gateway.model import PartState
from gateway.voice_simulator import VoiceSimulator, serve_voice_simulator
from routing.channel import Answered, Channel, MobileOriginated, ProviderReceipt, SendResult
from routing.tts import VoiceChannel, open_voice_channel
from tests.stack import gateway_config
from tests.test_tts import message, settings, until


@dataclass
class FakeSink:
    """A ChannelEvents that keeps what it is given and answers each receipt as told: `refuse`
    first receipts are not stored; `delay` seconds before it answers; `silent`: never."""

    refuse: int = 0
    delay: float = 0.0
    silent: bool = False
    stored: list[tuple[Channel, ProviderReceipt]] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)
    nursery: trio.Nursery | None = None

    async def receipts(self, channel: Channel, receipts: Sequence[ProviderReceipt],
                       answered: Answered) -> None:
        fates = []
        for receipt in receipts:
            ok = self.refuse <= 0
            self.refuse -= 1
            if ok:
                self.stored.append((channel, receipt))
            fates.append(ok)
        if self.silent:
            return
        assert self.nursery is not None
        self.nursery.start_soon(self._answer, fates, answered)

    async def _answer(self, fates: list[bool], answered: Answered) -> None:
        await trio.sleep(self.delay)
        self.answered_at.append(trio.current_time())
        for i, ok in reversed(list(enumerate(fates))):  # any order will do
            answered(i, ok)

    async def mobile_originated(self, channel: Channel, messages: Sequence[MobileOriginated],
                                answered: Answered) -> None:
        raise AssertionError("a voice provider sends no MO")

    def words(self) -> list[tuple[str, PartState | None]]:
        return [(r.word, r.outcome) for _c, r in self.stored]


@dataclass
class Gateway:
    url: str
    sink: FakeSink
    channel: VoiceChannel
    simulator: VoiceSimulator

    async def call(self) -> str:
        results: list[SendResult] = []
        msg = message()
        (unit,) = self.channel.prepare(msg)
        self.channel.submit_nowait(msg, unit, trio.current_time() + 3600, results.append)
        await until(lambda: bool(results))
        assert results[0].provider_id is not None
        return results[0].provider_id


@asynccontextmanager
async def gateway(tmp_path: Path, sink: FakeSink, *, voice: bool = True,
                  token: str = "") -> AsyncIterator[Gateway]:
    """The HTTP API with the voice status endpoint over `sink` (none when not `voice`), the
    voice simulator, and a VoiceChannel calling through one and hearing back through the
    other. The API is made without store or dispatcher: the voice endpoint uses neither."""
    channels: dict[str, VoiceChannel] = {}
    config = gateway_config(tmp_path, 0, http=HttpConfig(port=0))
    api = HttpApi(config, cast(Any, None), cast(Any, None), cast(Any, None), {},
                  voice_status=VoiceStatus(channels, sink) if voice else None)
    simulator = VoiceSimulator(answer_delay=3, talk_time=20, token="voice-token",
                               callback_retry=2, callback_attempts=4)
    async with trio.open_nursery() as nursery:
        sink.nursery = nursery
        api_port = await nursery.start(serve_http, api.app, "127.0.0.1", 0)
        sim_port = await nursery.start(serve_voice_simulator, simulator)
        base = f"http://127.0.0.1:{api_port}"
        config_voice = settings(f"http://127.0.0.1:{sim_port}", base, callback_token=token,
                                callback_url=base + "/v1/voice/status/{connector}"
                                + ("?token={callback_token}" if token else ""))
        async with open_voice_channel(config_voice, lambda _account: "fr-FR") as channel:
            channels[channel.name] = channel
            yield Gateway(base, sink, channel, simulator)
        nursery.cancel_scope.cancel()


async def test_statuses_reach_the_sink_and_are_acknowledged_once_stored(
        tmp_path: Path, autojump_clock: MockClock) -> None:
    sink = FakeSink(delay=1.5)
    async with gateway(tmp_path, sink, token="s3cret") as gw:
        call_id = await gw.call()
        await until(lambda: len(sink.stored) == 3)
        await until(lambda: len(gw.simulator.calls[call_id].callbacks) == 3)
    assert sink.words() == [("ringing", None), ("answered", PartState.DELIVERED),
                            ("completed", PartState.DELIVERED)]
    assert all(channel is gw.channel for channel, _r in sink.stored)
    assert {r.provider_id for _c, r in sink.stored} == {call_id}
    assert gw.simulator.calls[call_id].callbacks == [("ringing", 204), ("answered", 204),
                                                     ("completed", 204)]


async def test_a_status_the_sink_could_not_store_is_answered_503_and_comes_again(
        tmp_path: Path, autojump_clock: MockClock) -> None:
    sink = FakeSink(refuse=1)
    async with gateway(tmp_path, sink) as gw:
        call_id = await gw.call()
        await until(lambda: len(sink.stored) == 3)
    assert gw.simulator.calls[call_id].callbacks[:2] == [("ringing", 503), ("ringing", 204)]
    assert sink.words()[0] == ("ringing", None)


async def test_no_2xx_before_the_sink_answers_and_503_when_it_never_does(
        tmp_path: Path, autojump_clock: MockClock) -> None:
    body = json.dumps({"call": {"id": "call-1", "status": "busy"}, "error": {"code": 486}})
    slow = FakeSink(delay=4)
    async with gateway(tmp_path, slow) as gw, httpx.AsyncClient() as client:
        start = trio.current_time()
        answer = await client.post(gw.url + "/v1/voice/status/voice-sim", content=body,
                                   headers={"content-type": "application/json"})
        assert answer.status_code == 204
        assert slow.answered_at and trio.current_time() - start >= 4
    assert [(r.provider_id, r.outcome, r.error) for _c, r in slow.stored] == [
        ("call-1", PartState.UNDELIVERABLE, 486)]
    async with gateway(tmp_path, FakeSink(silent=True)) as gw, \
            httpx.AsyncClient(timeout=30) as client:
        start = trio.current_time()
        answer = await client.post(gw.url + "/v1/voice/status/voice-sim", content=body)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert trio.current_time() - start >= VoiceStatus.PATIENCE


async def test_one_unstored_receipt_of_a_batch_fails_the_batch(
        tmp_path: Path, autojump_clock: MockClock) -> None:
    batch = json.dumps([{"call": {"id": "a", "status": "answered"}},
                        {"call": {"id": "b", "status": "busy"}}])
    sink = FakeSink()
    async with gateway(tmp_path, sink) as gw, httpx.AsyncClient() as client:
        sink.refuse = 1
        answer = await client.post(gw.url + "/v1/voice/status/voice-sim", content=batch)
        assert answer.status_code == 503
        answer = await client.post(gw.url + "/v1/voice/status/voice-sim", content=batch)
        assert answer.status_code == 204
    assert [r.provider_id for _c, r in sink.stored] == ["b", "a", "b"]


async def test_callbacks_that_cannot_be_believed_or_read_are_refused(
        tmp_path: Path, autojump_clock: MockClock) -> None:
    sink = FakeSink()
    good = json.dumps({"call": {"id": "c", "status": "answered"}})
    async with gateway(tmp_path, sink, token="s3cret") as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        path = "/v1/voice/status/voice-sim"
        cases = [
            (path + "?token=s3cret", "{nope", 400, "invalid-status", "not JSON"),
            (path + "?token=s3cret", '{"call": {"id": "c"}}', 400, "invalid-status",
             "no status word at 'call.status'"),
            (path, good, 403, "forbidden", "voice-sim"),
            (path + "?token=wrong", good, 403, "forbidden", "callback token"),
            ("/v1/voice/status/other?token=s3cret", good, 404, "unknown-connector", "'other'"),
            (path + "?token=s3cret", "x" * (VoiceStatus.BODY_LIMIT + 1), 413, "too-large",
             "octets"),
        ]
        for url, body, status, slug, detail in cases:
            answer = await client.post(url, content=body)
            assert answer.status_code == status, (url, body[:20])
            problem = answer.json()
            assert problem["type"] == "urn:smsgw:problem:" + slug
            assert detail in problem["detail"]
        assert not sink.stored
        assert (await client.post(path + "?token=s3cret", content=good)).status_code == 204
    assert sink.words() == [("answered", PartState.DELIVERED)]


async def test_without_voice_connectors_there_is_no_status_endpoint(
        tmp_path: Path, autojump_clock: MockClock) -> None:
    async with gateway(tmp_path, FakeSink(), voice=False) as gw, httpx.AsyncClient() as client:
        answer = await client.post(gw.url + "/v1/voice/status/voice-sim", content=b"{}")
    assert answer.status_code == 404 and answer.json()["type"] == "urn:smsgw:problem:not-found"

