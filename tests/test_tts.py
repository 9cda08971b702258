"""The TTS channel against the voice provider simulator over real sockets (127.0.0.1, ephemeral
ports, virtual time): each provider behaviour maps to the SendResult, Revoked or receipt outcome
the core expects, the call rings for what is left of the validity, and the simulator's status
callbacks reach the gateway side in order (retried until it takes them)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from trio.testing import MockClock

from gateway.model import Message, PartState, new_message_id
from gateway.voice_simulator import VoiceSimulator, serve_voice_simulator
from routing.channel import TTS, ProviderReceipt, Revoked, SendResult
from routing.tts import (
    HttpTemplate,
    StatusFormat,
    VoiceChannel,
    VoiceSettings,
    open_voice_channel,
    parse_status,
)
from smpp.constants import Status
from smpp.text import encode_text

FIXED = "33140000000"  # a French fixed-line number, as the message carries it
TOKEN = "voice-token"
STATUS = StatusFormat(id_field="call.id", status_field="call.status", error_field="error.code")
LANGUAGES = {"omni": "fr-FR"}


async def serve_app(app: Starlette, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serve, app, config)
        task_status.started(int(binds[0].rsplit(":", 1)[1]))


@dataclass
class Receiver:
    """The gateway's side of the status callbacks: parses each with the channel's format and
    keeps the receipts; answers 500 to the first `refuse` callbacks."""

    refuse: int = 0
    receipts: list[ProviderReceipt] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        if self.refuse:
            self.refuse -= 1
            return Response(status_code=500)
        self.paths.append(request.url.path)
        self.receipts.extend(parse_status(STATUS, await request.body(),
                                          request.headers.get("content-type", "")))
        return Response(status_code=204)

    def of(self, call_id: str) -> list[tuple[str, PartState | None, int]]:
        return [(r.word, r.outcome, r.error) for r in self.receipts if r.provider_id == call_id]


@dataclass
class World:
    simulator: VoiceSimulator
    receiver: Receiver
    channel: VoiceChannel
    control: httpx.AsyncClient

    async def behave(self, number: str, behaviour: str) -> None:
        answer = await self.control.post("/control/numbers",
                                         json={"number": number, "behaviour": behaviour})
        assert answer.status_code == 200, answer.text

    async def send(self, msg: Message, validity_left: float = 3600) -> SendResult:
        results: list[SendResult] = []
        (unit,) = self.channel.prepare(msg)
        self.channel.submit_nowait(msg, unit, trio.current_time() + validity_left,
                                   results.append)
        await until(lambda: bool(results))
        return results[0]

    async def final(self, call_id: str) -> list[tuple[str, PartState | None, int]]:
        """The receipts of a call once the simulator has reported its final status."""
        await until(lambda: any(w in ("completed", "busy", "no-answer", "failed", "canceled")
                                for w, _o, _e in self.receiver.of(call_id)))
        return self.receiver.of(call_id)


async def until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(3600):  # virtual seconds
        while not condition():
            await trio.sleep(0.05)


def settings(sim_base: str, callback_base: str, **changes: Any) -> VoiceSettings:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    return replace(VoiceSettings(
        name="voice-sim",
        place=HttpTemplate(url=f"{sim_base}/v1/calls", headers=auth, body={
            "to": "{to_e164}", "from": "{from}", "ring_timeout": "{timeout}",
            "tts": {"text": "{text}", "language": "{language}", "voice": "{voice}"},
            "status_callback": "{callback_url}", "client_ref": "{message_id}"}),
        cancel=HttpTemplate(url=sim_base + "/v1/calls/{call_id}", method="DELETE",
                            headers=auth),
        call_id_field="call.id", status=STATUS,
        callback_url=callback_base + "/v1/voice/status/{connector}",
        caller_id="+33100000000", voices={"fr": "Celine"}, max_ring=45, min_ring=5,
        request_timeout=5), **changes)


@asynccontextmanager
async def world(*, mount: str = "", refuse: int = 0, token: str = TOKEN,
                **changes: Any) -> AsyncIterator[World]:
    """The simulator (served alone, or mounted at `mount` in another app; wanting `token`),
    the receiver, and a VoiceChannel pointed at both."""
    simulator = VoiceSimulator(answer_delay=3, talk_time=20, token=token, callback_retry=2)
    receiver = Receiver(refuse=refuse)
    async with trio.open_nursery() as nursery:
        if mount:
            await nursery.start(simulator.run)
            host = Starlette(routes=[Mount(mount, app=simulator.app)])
            sim_port = await nursery.start(serve_app, host)
        else:
            sim_port = await nursery.start(serve_voice_simulator, simulator)
        gw_port = await nursery.start(serve_app, Starlette(routes=[
            Route("/v1/voice/status/{connector}", receiver.handle, methods=["POST"])]))
        sim_base = f"http://127.0.0.1:{sim_port}{mount}"
        config = settings(sim_base, f"http://127.0.0.1:{gw_port}", **changes)
        async with httpx.AsyncClient(base_url=sim_base) as control, \
                open_voice_channel(config, lambda account: LANGUAGES.get(account, "")) as ch:
            yield World(simulator, receiver, ch, control)
        nursery.cancel_scope.cancel()


def message(text: str = "Votre rendez-vous est confirmé", dest: str = FIXED,
            **changes: Any) -> Message:
    data_coding, body = encode_text(text)
    return replace(Message(
        id=new_message_id(), account="omni", source_addr="ACME", source_ton=5, source_npi=0,
        dest_addr=dest, dest_ton=1, dest_npi=1, data_coding=data_coding, esm_class=0,
        protocol_id=0, priority=0, registered_delivery=1, body=body, created_at=0.0,
        expires_at=86400.0, not_before=0.0, channel=TTS), **changes)


async def test_an_answered_call_is_delivered_in_the_accounts_language(
        autojump_clock: MockClock) -> None:
    async with world() as w:
        msg = message()
        result = await w.send(msg)
        assert result.ok and result.provider_id is not None
        call_id = result.provider_id
        assert await w.final(call_id) == [("ringing", None, 0),
                                          ("answered", PartState.DELIVERED, 0),
                                          ("completed", PartState.DELIVERED, 0)]
        call = (await w.control.get(f"/v1/calls/{call_id}")).json()["call"]
    assert call["to"] == "+" + FIXED and call["from"] == "+33100000000"
    assert call["tts"] == {"text": "Votre rendez-vous est confirmé", "language": "fr-FR",
                           "voice": "Celine"}
    assert call["ring_timeout"] == 45  # a day of validity left: max_ring
    assert call["client_ref"] == msg.id
    assert w.receiver.paths[0] == "/v1/voice/status/voice-sim"


@pytest.mark.parametrize(("behaviour", "word", "error"), [
    ("busy", "busy", 486), ("unreachable", "failed", 404),
])
async def test_a_call_that_fails_at_the_phone_is_undeliverable(
        autojump_clock: MockClock, behaviour: str, word: str, error: int) -> None:
    async with world() as w:
        await w.behave("+" + FIXED, behaviour)
        result = await w.send(message())
        assert result.ok and result.provider_id is not None
        assert await w.final(result.provider_id) == [("ringing", None, 0),
                                                     (word, PartState.UNDELIVERABLE, error)]


async def test_an_unanswered_call_rings_for_the_validity_left_then_is_undeliverable(
        autojump_clock: MockClock) -> None:
    async with world() as w:
        await w.behave("+" + FIXED, "no-answer")
        start = trio.current_time()
        result = await w.send(message(), validity_left=20.5)
        assert result.provider_id is not None
        assert await w.final(result.provider_id) == [("ringing", None, 0),
                                                     ("no-answer", PartState.UNDELIVERABLE, 480)]
        assert 20 <= trio.current_time() - start < 21  # rang 20 s, not max_ring's 45
        assert w.simulator.calls[result.provider_id].ring_timeout == 20


@pytest.mark.parametrize(("behaviour", "expect"), [
    ("fail", SendResult(None, Status.ESME_RSYSERR, temporary=True)),
    ("throttle", SendResult(None, Status.ESME_RTHROTTLED, temporary=True)),
    ("hang", SendResult(None, Status.ESME_RSYSERR, temporary=True)),
])
async def test_a_failing_provider_is_a_temporary_error(
        autojump_clock: MockClock, behaviour: str, expect: SendResult) -> None:
    async with world() as w:
        await w.behave("+" + FIXED, behaviour)
        result = await w.send(message())
        assert replace(result, detail="") == expect
        assert not w.simulator.calls
        if behaviour == "hang":
            assert "no answer within 5.0 s" in result.detail


async def test_a_request_the_provider_refuses_is_rejected(autojump_clock: MockClock) -> None:
    async with world() as w:
        # a national number without its country: not E.164, the provider answers 400
        result = await w.send(message(dest="0140000000", dest_ton=0))
        assert replace(result, detail="") == SendResult(None, Status.ESME_RSUBMITFAIL,
                                                        rejected=True)
        assert "HTTP 400" in result.detail and "E.164" in result.detail


async def test_bad_credentials_are_temporary_not_the_messages_fault(
        autojump_clock: MockClock) -> None:
    async with world(token="another-token") as w:
        result = await w.send(message())
        assert result.temporary and not result.rejected and "HTTP 401" in result.detail


async def test_revoking_a_ringing_call_cancels_it(autojump_clock: MockClock) -> None:
    async with world() as w:
        await w.behave("+" + FIXED, "no-answer")
        msg = message()
        result = await w.send(msg)
        assert result.provider_id is not None
        assert await w.channel.revoke(msg, result.provider_id) is Revoked.REVOKED
        assert await w.final(result.provider_id) == [("ringing", None, 0),
                                                     ("canceled", PartState.UNDELIVERABLE, 0)]
        assert w.simulator.calls[result.provider_id].status == "canceled"


async def test_revoking_an_answered_call_says_delivered(autojump_clock: MockClock) -> None:
    async with world() as w:
        msg = message()
        result = await w.send(msg)
        assert result.provider_id is not None
        await until(lambda: ("answered", PartState.DELIVERED, 0)
                    in w.receiver.of(str(result.provider_id)))
        assert await w.channel.revoke(msg, result.provider_id) is Revoked.DELIVERED
        assert await w.channel.revoke(msg, "call-999999") is Revoked.FAILED  # unknown call


async def test_without_a_cancel_template_revoke_is_unsupported(
        autojump_clock: MockClock) -> None:
    async with world(cancel=None) as w:
        result = await w.send(message())
        assert result.provider_id is not None
        assert await w.channel.revoke(message(), result.provider_id) is Revoked.UNSUPPORTED


async def test_a_refused_status_callback_is_sent_again(autojump_clock: MockClock) -> None:
    async with world(refuse=2) as w:
        result = await w.send(message())
        assert result.provider_id is not None
        assert await w.final(result.provider_id) == [("ringing", None, 0),
                                                     ("answered", PartState.DELIVERED, 0),
                                                     ("completed", PartState.DELIVERED, 0)]
        assert w.simulator.calls[result.provider_id].callbacks[:3] == [
            ("ringing", 500), ("ringing", 500), ("ringing", 204)]


async def test_the_simulator_works_mounted_at_a_path_prefix(autojump_clock: MockClock) -> None:
    async with world(mount="/voice") as w:
        await w.behave("+" + FIXED, "busy")
        result = await w.send(message())
        assert result.provider_id is not None
        assert (await w.final(result.provider_id))[-1] == ("busy", PartState.UNDELIVERABLE, 486)
        calls = (await w.control.get("/control/calls")).json()["calls"]
        assert [c["status"] for c in calls] == ["busy"]


async def test_control_endpoints_refuse_bad_input_and_reset(autojump_clock: MockClock) -> None:
    async with world() as w:
        bad = await w.control.post("/control/numbers", json={"number": "+33140000000",
                                                            "behaviour": "sing"})
        assert bad.status_code == 400 and "sing" in bad.json()["error"]["message"]
        bad = await w.control.post("/control/numbers", json={"number": "0140",
                                                            "behaviour": "busy"})
        assert bad.status_code == 400
        await w.behave("+" + FIXED, "busy")
        assert (await w.control.get("/control/numbers")).json()["numbers"] == {
            "+" + FIXED: "busy"}
        assert (await w.control.delete("/control/numbers")).json()["numbers"] == {}
        unauthenticated = await w.control.post("/v1/calls", json={})
        assert unauthenticated.status_code == 401
        missing = await w.control.get("/v1/calls/nope")
        assert missing.status_code == 404


async def test_the_simulator_checks_what_a_call_asks_for(autojump_clock: MockClock) -> None:
    async with world() as w:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        good = {"to": "+33140000000", "from": "+33100000000", "ring_timeout": 30,
                "tts": {"text": "hi", "language": "fr-FR"}}
        for change, complaint in [({"to": "33140000000"}, "to:"),
                                  ({"tts": {"text": " "}}, "tts.text"),
                                  ({"tts": {"text": "hi", "language": "f_r"}}, "tts.language"),
                                  ({"ring_timeout": 0}, "ring_timeout"),
                                  ({"status_callback": "ftp://x"}, "status_callback")]:
            answer = await w.control.post("/v1/calls", headers=auth,
                                          content=json.dumps({**good, **change}))
            assert answer.status_code == 400, change
            assert answer.json()["error"]["message"].startswith(complaint)
        taken = await w.control.post("/v1/calls", headers=auth, json=good)
        assert taken.status_code == 201 and taken.json()["call"]["status"] == "queued"


async def test_a_simulator_that_is_not_running_answers_503(autojump_clock: MockClock) -> None:
    simulator = VoiceSimulator()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_app, simulator.app)
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"http://127.0.0.1:{port}/v1/calls", json={})
        assert answer.status_code == 503
        nursery.cancel_scope.cancel()
