"""routing/tts.py without a network: the templates are checked when the channel is made and
render the call a message asks for (text decoded, the account's language, the validity left as
timeout); provider answers map to SendResults, status callbacks to ProviderReceipts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from gateway.model import Message, PartState, new_message_id
from routing.channel import TTS, Channel, Revoked, SendResult, Unsendable
from routing.tts import (
    HttpTemplate,
    StatusFormat,
    StatusPayloadError,
    VoiceChannel,
    VoiceConfigError,
    VoiceSettings,
    open_voice_channel,
    outcome_named,
    parse_status,
)
from smpp.constants import Status
from smpp.text import encode_text

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]

PLACE = HttpTemplate(
    url="https://voice.example/v1/accounts/{connector}/calls",
    headers={"Authorization": "Bearer secret", "X-Ref": "{message_id}"},
    body={"to": "{to_e164}", "from": "{from}",
          "say": {"text": "{text}", "language": "{language}", "voice": "{voice}"},
          "ring_timeout": "{timeout}", "status_callback": "{callback_url}",
          "note": "{{literal}} for {account}"},
)
CANCEL = HttpTemplate(url="https://voice.example/v1/calls/{call_id}", method="DELETE")


def settings(**changes: Any) -> VoiceSettings:
    base = VoiceSettings(
        name="voice-a", place=PLACE, call_id_field="call.id", caller_id="+33100000000",
        callback_url="https://gw.example/v1/voice/status/{connector}",
        voices={"fr": "Lea", "en-GB": "Amy"}, default_voice="Joanna",
        max_ring=60, min_ring=5, request_timeout=10)
    return replace(base, **changes)


def message(text: str = "Votre code est 1234", *, validity: float = 86400,
            dest: str = "33140000000", **changes: Any) -> Message:
    data_coding, body = encode_text(text)
    base = Message(id=new_message_id(), account="omni", source_addr="ACME", source_ton=5,
                   source_npi=0, dest_addr=dest, dest_ton=1, dest_npi=1,
                   data_coding=data_coding, esm_class=0, protocol_id=0, priority=0,
                   registered_delivery=1, body=body, created_at=0.0, expires_at=validity,
                   not_before=0.0, channel=TTS)
    return replace(base, **changes)


LANGUAGES = {"omni": "fr-FR", "english": "en-GB", "plain": ""}


@asynccontextmanager
async def channel_with(handler: Handler, **changes: Any) -> AsyncIterator[VoiceChannel]:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with client, open_voice_channel(settings(**changes), LANGUAGES.__getitem__,
                                          client) as channel:
        yield channel


async def send(channel: VoiceChannel, msg: Message, validity_left: float = 3600) -> SendResult:
    results: list[SendResult] = []
    units = channel.prepare(msg)
    assert len(units) == 1
    channel.submit_nowait(msg, units[0], trio.current_time() + validity_left, results.append)
    while not results:
        await trio.sleep(0.01)
    assert len(results) == 1
    return results[0]


def answering(status: int, body: object = None,
              seen: list[httpx.Request] | None = None) -> Handler:
    async def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, json=body)
    return handle


# -- settings checked at construction -------------------------------------------------------------
@pytest.mark.parametrize(("change", "key", "name"), [
    ({"place": replace(PLACE, body={"say": {"text": "{txt}"}})}, "place.body.say.text", "txt"),
    ({"place": replace(PLACE, url="https://v.example/{account}/{nope}")}, "place.url", "nope"),
    ({"place": replace(PLACE, headers={"X-A": "{secret}"})}, "place.headers.X-A", "secret"),
    ({"callback_url": "https://gw.example/{to}"}, "callback_url", "to"),
    ({"cancel": replace(CANCEL, url="https://v.example/{callid}")}, "cancel.url", "callid"),
    ({"place": replace(PLACE, body={"to": "{call_id}"})}, "place.body.to", "call_id"),
])
async def test_an_unknown_placeholder_is_refused_naming_it_and_its_setting(
        change: dict[str, Any], key: str, name: str) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
        with pytest.raises(VoiceConfigError) as caught:
            VoiceChannel(settings(**change), client, nursery, LANGUAGES.__getitem__)
    assert caught.value.key == key
    assert f"unknown placeholder {{{name}}}" in str(caught.value)
    assert str(caught.value).startswith(f"{key}: ")


@pytest.mark.parametrize(("change", "key"), [
    ({"place": replace(PLACE, method="FETCH")}, "place.method"),
    ({"place": replace(PLACE, url="ftp://v.example/calls")}, "place.url"),
    ({"place": replace(PLACE, body={"t": "{text"})}, "place.body.t"),
    ({"place": replace(PLACE, body={"t": "{text!r}"})}, "place.body.t"),
    ({"place": replace(PLACE, encoding="form", body={"n": 1})}, "place.body"),
    ({"min_ring": 90.0}, "min_ring"),
    ({"max_ring": float("nan")}, "max_ring"),
    ({"caller_id": "ACME"}, "caller_id"),
    ({"status": StatusFormat(outcomes={"Busy": PartState.UNDELIVERABLE})},
     "status.outcomes.Busy"),
])
async def test_other_bad_settings_are_refused_naming_the_setting(
        change: dict[str, Any], key: str) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
        with pytest.raises(VoiceConfigError) as caught:
            VoiceChannel(settings(**change), client, nursery, LANGUAGES.__getitem__)
    assert caught.value.key == key


def test_outcome_names_are_the_final_part_states_or_empty() -> None:
    assert outcome_named("DELIVERED") is PartState.DELIVERED
    assert outcome_named("") is None
    with pytest.raises(ValueError, match="'SUBMITTED'"):
        outcome_named("SUBMITTED")


# -- the request -----------------------------------------------------------------
async def test_the_call_request_is_the_template_filled_from_message_account_and_validity(
        autojump_clock: MockClock) -> None:
    seen: list[httpx.Request] = []
    async with channel_with(answering(201, {"call": {"id": "c-1"}}, seen)) as channel:
        assert isinstance(channel, Channel) and channel.kind == TTS
        msg = message("Réunion à 14h \u2013 merci", validity=1000)  # en dash: not GSM
        assert msg.data_coding == 8
        result = await send(channel, msg, validity_left=42.7)
    assert result == SendResult("c-1")
    (request,) = seen
    assert request.method == "POST"
    assert request.url == "https://voice.example/v1/accounts/voice-a/calls"
    assert request.headers["Authorization"] == "Bearer secret"
    assert request.headers["X-Ref"] == msg.id
    assert json.loads(request.content) == {
        "to": "+33140000000", "from": "+33100000000",
        "say": {"text": "Réunion à 14h \u2013 merci", "language": "fr-FR", "voice": "Lea"},
        "ring_timeout": 42,  # the validity left (a number, as the placeholder stood alone)
        "status_callback": "https://gw.example/v1/voice/status/voice-a",
        "note": "{literal} for omni"}


async def test_the_timeout_is_capped_by_max_ring_and_the_voice_follows_the_language(
        autojump_clock: MockClock) -> None:
    seen: list[httpx.Request] = []
    async with channel_with(answering(200, {"call": {"id": 7}}, seen)) as channel:
        assert await send(channel, message(account="english"), 86400) == SendResult("7")
        assert await send(channel, message(account="plain"), 86400) == SendResult("7")
    english, default = (json.loads(r.content) for r in seen)
    assert english["ring_timeout"] == 60
    assert english["say"]["language"] == "en-GB" and english["say"]["voice"] == "Amy"
    # an account without a language speaks the connector's default, with the default voice
    assert default["say"]["language"] == "en-US" and default["say"]["voice"] == "Joanna"


async def test_gsm_text_is_decoded_and_a_udh_is_not_read(autojump_clock: MockClock) -> None:
    seen: list[httpx.Request] = []
    udh = bytes((5, 0, 3, 9, 1, 1))
    async with channel_with(answering(201, {"call": {"id": "c"}}, seen)) as channel:
        await send(channel, message("Hello @ home {ok}"))
        await send(channel, message(body=udh + b"Part one", esm_class=0x40))
    assert [json.loads(r.content)["say"]["text"] for r in seen] == ["Hello @ home {ok}",
                                                                    "Part one"]


async def test_values_in_the_url_are_percent_encoded_and_a_form_body_is_sent_as_a_form(
        autojump_clock: MockClock) -> None:
    seen: list[httpx.Request] = []
    form = HttpTemplate(url="https://v.example/calls/{to_e164}", encoding="form",
                        body={"To": "{to_e164}", "Timeout": "{timeout}", "Say": "{text}"})
    async with channel_with(answering(201, {"call": {"id": "c"}}, seen),
                            place=form) as channel:
        await send(channel, message("a&b"), 30)
    (request,) = seen
    assert request.url.raw_path == b"/calls/%2B33140000000"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.content == b"To=%2B33140000000&Timeout=30&Say=a%26b"


async def test_a_message_that_cannot_be_read_aloud_is_unsendable() -> None:
    async with channel_with(answering(201)) as channel:
        with pytest.raises(Unsendable) as binary:
            channel.prepare(message(data_coding=4, body=b"\x00\x01"))
        assert binary.value.status == Status.ESME_RSUBMITFAIL
        with pytest.raises(Unsendable) as empty:
            channel.prepare(message("   "))
        assert empty.value.status == Status.ESME_RINVMSGLEN
        with pytest.raises(Unsendable) as long:
            channel.prepare(message("x" * 2001))
        assert long.value.status == Status.ESME_RINVMSGLEN
    async with channel_with(answering(201), caller_id="") as channel:
        with pytest.raises(Unsendable) as sender:
            channel.prepare(message())  # sender ACME is not a number to call from
        assert sender.value.status == Status.ESME_RINVSRCADR
        assert channel.prepare(message(source_addr="+33612345678"))[0].number == 1


async def test_less_validity_than_min_ring_is_expired_without_a_request(
        autojump_clock: MockClock) -> None:
    seen: list[httpx.Request] = []
    async with channel_with(answering(201, {"call": {"id": "c"}}, seen)) as channel:
        result = await send(channel, message(), validity_left=4.0)
    assert result.expired and not result.ok and not seen


async def test_no_more_calls_at_once_than_capacity_and_none_after_the_deadline(
        autojump_clock: MockClock) -> None:
    active, most = 0, 0
    release = trio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await release.wait()
        active -= 1
        return httpx.Response(201, json={"call": {"id": "c"}})

    results: list[SendResult] = []
    async with channel_with(slow, max_in_flight=2, request_timeout=1000) as channel:
        assert channel.capacity == 2
        for _ in range(3):
            msg = message()
            channel.submit_nowait(msg, channel.prepare(msg)[0], trio.current_time() + 100,
                                  results.append)
        await trio.sleep(200)  # the third waits for a slot past its deadline
        assert most == 2 and [r.expired for r in results] == [True]
        release.set()
        await trio.sleep(1)
    assert [r.ok for r in results] == [False, True, True]


# -- answers -----------------------------------------------------------------
@pytest.mark.parametrize(("status", "body", "expect"), [
    (201, {"call": {"id": "abc"}}, SendResult("abc")),
    (400, {"error": "bad number"}, SendResult(None, Status.ESME_RSUBMITFAIL, rejected=True)),
    (422, {}, SendResult(None, Status.ESME_RSUBMITFAIL, rejected=True)),
    (401, {}, SendResult(None, Status.ESME_RSYSERR, temporary=True)),
    (429, {}, SendResult(None, Status.ESME_RTHROTTLED, temporary=True)),
    (500, {}, SendResult(None, Status.ESME_RSYSERR, temporary=True)),
    (503, {}, SendResult(None, Status.ESME_RSYSERR, temporary=True)),
    # taken, but no id to follow it by: not temporary, a retry could ring the phone twice
    (201, {"call": {}}, SendResult(None, Status.ESME_RSYSERR)),
])
async def test_provider_answers_map_to_send_results(
        autojump_clock: MockClock, status: int, body: object, expect: SendResult) -> None:
    async with channel_with(answering(status, body)) as channel:
        result = await send(channel, message())
    assert replace(result, detail="") == expect
    if not result.ok:
        assert f"HTTP {status}" in result.detail


@pytest.mark.parametrize("error", [httpx.ReadTimeout("slow"), httpx.ConnectError("refused"),
                                   httpx.RemoteProtocolError("garbage")])
async def test_transport_failures_are_temporary(autojump_clock: MockClock,
                                                error: httpx.HTTPError) -> None:
    async def fail(request: httpx.Request) -> httpx.Response:
        raise error

    async with channel_with(fail) as channel:
        result = await send(channel, message())
    assert result.temporary and not result.ok and result.status == Status.ESME_RSYSERR


async def test_the_message_id_is_the_call_id_when_the_provider_echoes_it(
        autojump_clock: MockClock) -> None:
    async with channel_with(answering(204), call_id_field="") as channel:
        msg = message()
        assert await send(channel, msg) == SendResult(msg.id)


async def test_a_bug_in_the_channel_still_reports_to_done(autojump_clock: MockClock) -> None:
    async def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("boom")

    async with channel_with(broken) as channel:
        result = await send(channel, message())
    assert result.temporary and "boom" in result.detail


# -- revoke -----------------------------------------------------------------
@pytest.mark.parametrize(("status", "expect"), [(200, Revoked.REVOKED), (204, Revoked.REVOKED),
                                                (409, Revoked.DELIVERED),
                                                (500, Revoked.FAILED), (404, Revoked.FAILED)])
async def test_revoke_cancels_the_call(status: int, expect: Revoked) -> None:
    seen: list[httpx.Request] = []
    async with channel_with(answering(status, None, seen), cancel=CANCEL) as channel:
        assert await channel.revoke(message(), "c/1") is expect
    assert seen[0].method == "DELETE" and seen[0].url.raw_path == b"/v1/calls/c%2F1"


async def test_a_cancel_the_provider_does_not_answer_is_a_failed_revoke(
        autojump_clock: MockClock) -> None:
    async def silent(request: httpx.Request) -> httpx.Response:
        # a MockTransport enforces no timeout: this one waits as long as the request allows
        await trio.sleep(request.extensions["timeout"]["read"])
        raise httpx.ReadTimeout("no answer", request=request)

    async with channel_with(silent, cancel=CANCEL, request_timeout=3) as channel:
        start = trio.current_time()
        assert await channel.revoke(message(), "c1") is Revoked.FAILED
        assert trio.current_time() - start == pytest.approx(3)


async def test_revoke_without_a_cancel_template_is_unsupported() -> None:
    seen: list[httpx.Request] = []
    async with channel_with(answering(200, None, seen)) as channel:
        assert await channel.revoke(message(), "c1") is Revoked.UNSUPPORTED
    assert not seen


# -- status callbacks -----------------------------------------------------------------
NESTED = StatusFormat(id_field="call.id", status_field="call.status", error_field="error.code")


@pytest.mark.parametrize(("word", "outcome"), [
    ("answered", PartState.DELIVERED), ("completed", PartState.DELIVERED),
    ("busy", PartState.UNDELIVERABLE), ("no-answer", PartState.UNDELIVERABLE),
    ("failed", PartState.UNDELIVERABLE), ("canceled", PartState.UNDELIVERABLE),
    ("ringing", None), ("Completed", PartState.DELIVERED), ("something-new", None),
])
def test_status_words_map_to_outcomes(word: str, outcome: PartState | None) -> None:
    body = json.dumps({"call": {"id": "c-9", "status": word}, "error": {"code": "486"}})
    (receipt,) = parse_status(NESTED, body.encode())
    assert (receipt.provider_id, receipt.outcome, receipt.word, receipt.error) == (
        "c-9", outcome, word, 486)
    assert receipt.raw == body.encode()


def test_a_configured_map_replaces_the_default_one() -> None:
    fmt = StatusFormat(outcomes={"done": PartState.DELIVERED, "nobody": PartState.EXPIRED})
    assert [r.outcome for r in parse_status(fmt, b'[{"call_id": 1, "status": "nobody"},'
                                                 b'{"call_id": 2, "status": "completed"}]')] \
        == [PartState.EXPIRED, None]


def test_a_json_array_and_a_form_are_read_too() -> None:
    many = parse_status(StatusFormat(), b'[{"call_id":"a","status":"busy"},'
                                        b'{"call_id":"b","status":"answered"}]')
    assert [(r.provider_id, r.outcome, r.raw) for r in many] == [
        ("a", PartState.UNDELIVERABLE, b'{"call_id":"a","status":"busy"}'),
        ("b", PartState.DELIVERED, b'{"call_id":"b","status":"answered"}')]
    form = StatusFormat(id_field="CallSid", status_field="CallStatus", error_field="ErrorCode")
    (one,) = parse_status(form, b"CallSid=CA1&CallStatus=no-answer&ErrorCode=",
                          "application/x-www-form-urlencoded; charset=utf-8")
    assert (one.provider_id, one.outcome, one.error) == ("CA1", PartState.UNDELIVERABLE, 0)


@pytest.mark.parametrize(("body", "complaint"), [
    (b"{not json", "not JSON"), (b'"busy"', "not an object"),
    (b'{"status": "busy"}', "no call id at 'call_id'"),
    (b'{"call_id": "c", "status": 3}', "no status word at 'status'"),
    (b'[{"call_id": "c", "status": "busy"}, {"call_id": ""}]', "item 1: no call id"),
])
def test_a_status_payload_that_cannot_be_read_is_refused(body: bytes, complaint: str) -> None:
    with pytest.raises(StatusPayloadError, match=complaint):
        parse_status(StatusFormat(), body)


async def test_a_closed_channel_is_down_and_wakes_its_waiters() -> None:
    async with channel_with(answering(201)) as channel, trio.open_nursery() as nursery:
        assert channel.is_up()
        woke = trio.Event()

        async def waiter() -> None:
            await channel.wait_changed()
            woke.set()

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        channel.close()
        await woke.wait()
        assert not channel.is_up()
