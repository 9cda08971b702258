"""A voice provider simulator: the hosted text-to-speech call API the TTS channel talks to.

Places calls, posts their statuses to each call's callback URL, cancels ringing ones; control
endpoints set how each number behaves. A Starlette app (mountable), served alone or mounted.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import httpx
import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = structlog.get_logger("gateway.voice_simulator")

# How a number behaves: answer (ringing, answered, completed), busy, no-answer (rings for the
# call's ring_timeout), unreachable (failed), or the provider itself answering the place-call
# request 503 (fail), 429 (throttle), or never (hang).
Behaviour = Literal["answer", "busy", "no-answer", "unreachable", "fail", "throttle", "hang"]
BEHAVIOURS: tuple[str, ...] = get_args(Behaviour)
FINAL = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
# The SIP-like error code each failed call's status carries.
ERROR_CODES = {"busy": 486, "no-answer": 480, "failed": 404}
_E164 = re.compile(r"\+[1-9][0-9]{5,14}")
MAX_RING = 600  # seconds: the longest ring_timeout a call may ask for


@dataclass
class Call:
    """One call as the simulator keeps it; `callbacks` lists (status, HTTP answer or None
    when the callback URL could not be reached) for every callback attempt."""

    id: str
    to: str
    caller: str
    text: str
    language: str
    voice: str
    ring_timeout: int
    callback_url: str
    client_ref: str
    status: str = "queued"
    callbacks: list[tuple[str, int | None]] = field(default_factory=list)
    ringing: trio.CancelScope = field(default_factory=trio.CancelScope)

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "to": self.to, "from": self.caller, "status": self.status,
                "tts": {"text": self.text, "language": self.language, "voice": self.voice},
                "ring_timeout": self.ring_timeout, "status_callback": self.callback_url,
                "client_ref": self.client_ref,
                "callbacks": [{"status": s, "answer": a} for s, a in self.callbacks]}


def _problem(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status)


class VoiceSimulator:
    """The simulated provider. `answer_delay`: seconds a phone rings before it answers, is
    busy or fails; `talk_time`: seconds from answered to completed; `token`: the Bearer token
    the call API wants (None: any); callbacks are tried `callback_attempts` times,
    `callback_retry` seconds apart. Times are trio's (virtual in tests). Its calls live in
    `run()`; `serve_voice_simulator` runs it and serves `app` alone."""

    def __init__(self, *, answer_delay: float = 2.0, talk_time: float = 10.0,
                 default: Behaviour = "answer", token: str | None = None,
                 callback_attempts: int = 3, callback_retry: float = 5.0) -> None:
        for name, value in (("answer_delay", answer_delay), ("talk_time", talk_time),
                            ("callback_retry", callback_retry)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: {value!r} is not a number of seconds >= 0")
        if callback_attempts < 1:
            raise ValueError("callback_attempts: must be at least 1")
        if default not in BEHAVIOURS:
            raise ValueError(f"default: {default!r} is not one of {', '.join(BEHAVIOURS)}")
        self.answer_delay = answer_delay
        self.talk_time = talk_time
        self.default: Behaviour = default
        self.token = token
        self.callback_attempts = callback_attempts
        self.callback_retry = callback_retry
        self.numbers: dict[str, Behaviour] = {}
        self.calls: dict[str, Call] = {}
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._client: httpx.AsyncClient | None = None
        self.app = Starlette(routes=[
            Route("/v1/calls", self.place, methods=["POST"]),
            Route("/v1/calls/{call_id}", self.one_call, methods=["GET", "DELETE"]),
            Route("/control/numbers", self.control_numbers, methods=["GET", "POST", "DELETE"]),
            Route("/control/calls", self.control_calls, methods=["GET"]),
        ])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Where the calls live: until this is cancelled the app places calls (before, it
        answers 503)."""
        async with httpx.AsyncClient(timeout=10.0) as client, trio.open_nursery() as nursery:
            self._client, self._nursery = client, nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._client = self._nursery = None

    def behaviour(self, number: str) -> Behaviour:
        return self.numbers.get(number, self.default)

    # -- the call API -------------------------------------------------------------------------
    async def place(self, request: Request) -> Response:
        if self._nursery is None:
            return _problem(503, "not_running", "the simulator is not running")
        if self.token is not None and \
                request.headers.get("authorization") != f"Bearer {self.token}":
            return _problem(401, "unauthorized", "a valid Bearer token is required")
        try:
            body = await request.json()
        except ValueError:
            return _problem(400, "invalid_json", "the body is not JSON")
        call, complaint = self._read_call(body)
        if call is None:
            return _problem(400, "invalid_request", complaint)
        behaviour = self.behaviour(call.to)
        if behaviour == "fail":
            return _problem(503, "unavailable", "the provider is failing (simulated)")
        if behaviour == "throttle":
            return _problem(429, "rate_limited", "too many calls (simulated)")
        if behaviour == "hang":
            await trio.sleep_forever()
        self.calls[call.id] = call
        self._nursery.start_soon(self._live, call, behaviour)
        return JSONResponse({"call": {"id": call.id, "status": call.status}}, 201)

    def _read_call(self, body: object) -> tuple[Call | None, str]:
        if not isinstance(body, dict):
            return None, "the body is not an object"
        tts = body.get("tts")
        to, caller = body.get("to"), body.get("from")
        if not isinstance(to, str) or not _E164.fullmatch(to):
            return None, f"to: {to!r} is not an E.164 number (+ and digits)"
        if not isinstance(caller, str) or not _E164.fullmatch(caller):
            return None, f"from: {caller!r} is not an E.164 number (+ and digits)"
        if not isinstance(tts, dict) or not isinstance(tts.get("text"), str) \
                or not tts["text"].strip():
            return None, "tts.text: text to read is required"
        language, voice = tts.get("language", "en-US"), tts.get("voice", "")
        if not isinstance(language, str) or not re.fullmatch(r"[a-zA-Z]{2,3}(-[a-zA-Z0-9]+)*",
                                                             language):
            return None, f"tts.language: {language!r} is not a language tag"
        ring = body.get("ring_timeout", 30)
        if isinstance(ring, bool) or not isinstance(ring, int) or not 1 <= ring <= MAX_RING:
            return None, f"ring_timeout: {ring!r} is not a whole number of seconds " \
                         f"from 1 to {MAX_RING}"
        callback = body.get("status_callback", "")
        if not isinstance(callback, str) or (callback and not callback.startswith(
                ("http://", "https://"))):
            return None, f"status_callback: {callback!r} is not an http(s) URL"
        ref = body.get("client_ref", "")
        return Call(id=f"call-{next(self._ids):06d}", to=to, caller=caller, text=tts["text"],
                    language=language, voice=str(voice), ring_timeout=ring,
                    callback_url=callback, client_ref=str(ref)), ""

    async def one_call(self, request: Request) -> Response:
        call = self.calls.get(request.path_params["call_id"])
        if call is None:
            return _problem(404, "not_found", "no such call")
        if request.method == "GET":
            return JSONResponse({"call": call.view()})
        if call.status not in ("queued", "ringing"):
            return _problem(409, "too_late", f"the call is {call.status}: it cannot be "
                            "canceled")
        call.ringing.cancel()
        self._set(call, "canceled")
        assert self._nursery is not None
        self._nursery.start_soon(self._report, call, "canceled")
        return JSONResponse({"call": {"id": call.id, "status": call.status}})

    # -- a call's life ------------------------------------------------------------------------
    async def _live(self, call: Call, behaviour: Behaviour) -> None:
        self._set(call, "ringing")
        await self._report(call, "ringing")
        with call.ringing:
            await trio.sleep(call.ring_timeout if behaviour == "no-answer"
                             else min(self.answer_delay, call.ring_timeout))
            if behaviour == "answer" and self.answer_delay > call.ring_timeout:
                behaviour = "no-answer"  # it would have answered, after the caller gave up
        if call.status == "canceled":
            return  # the DELETE reported it
        if behaviour != "answer":
            word = {"busy": "busy", "no-answer": "no-answer"}.get(behaviour, "failed")
            self._set(call, word)
            await self._report(call, word)
            return
        self._set(call, "answered")
        await self._report(call, "answered")
        await trio.sleep(self.talk_time)
        self._set(call, "completed")
        await self._report(call, "completed")

    def _set(self, call: Call, status: str) -> None:
        call.status = status
        log.debug("voice call", call_id=call.id, status=status)

    async def _report(self, call: Call, word: str) -> None:
        """Post one status to the call's callback URL, trying again on a failure."""
        if not call.callback_url:
            return
        payload: dict[str, Any] = {
            "call": {"id": call.id, "status": word, "to": call.to,
                     "client_ref": call.client_ref},
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        }
        if word in ERROR_CODES:
            payload["error"] = {"code": ERROR_CODES[word]}
        for attempt in range(self.callback_attempts):
            if attempt:
                await trio.sleep(self.callback_retry)
            client = self._client
            if client is None:
                return
            answer: int | None = None
            try:
                answer = (await client.post(call.callback_url, json=payload)).status_code
            except httpx.HTTPError as exc:
                log.info("voice callback failed", call_id=call.id, error=repr(exc))
            call.callbacks.append((word, answer))
            if answer is not None and 200 <= answer < 300:
                return

    # -- control ------------------------------------------------------------------------------
    async def control_numbers(self, request: Request) -> Response:
        """GET: the numbers' behaviours; POST {"number", "behaviour"}: set one (behaviour
        "default" forgets it); DELETE: forget them all."""
        if request.method == "DELETE":
            self.numbers.clear()
        elif request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                return _problem(400, "invalid_json", "the body is not JSON")
            number = body.get("number") if isinstance(body, dict) else None
            behaviour = body.get("behaviour") if isinstance(body, dict) else None
            if not isinstance(number, str) or not _E164.fullmatch(number):
                return _problem(400, "invalid_request", f"number: {number!r} is not E.164")
            if behaviour == "default":
                self.numbers.pop(number, None)
            elif behaviour in BEHAVIOURS:
                self.numbers[number] = behaviour
            else:
                return _problem(400, "invalid_request", f"behaviour: {behaviour!r} is not "
                                "one of " + ", ".join((*BEHAVIOURS, "default")))
        return JSONResponse({"default": self.default, "numbers": self.numbers})

    async def control_calls(self, _request: Request) -> Response:
        return JSONResponse({"calls": [c.view() for c in self.calls.values()]})


async def serve_voice_simulator(simulator: VoiceSimulator, host: str = "127.0.0.1",
                                port: int = 0, *,
                                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
                                ) -> None:
    """Run the simulator and serve its app alone (hypercorn, trio); started() with the port."""
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.accesslog = config.errorlog = None
    async with trio.open_nursery() as nursery:
        await nursery.start(simulator.run)
        binds: list[str] = await nursery.start(serve, simulator.app, config)
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
