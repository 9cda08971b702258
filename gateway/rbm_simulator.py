"""An RBM platform simulator: Google's RCS Business Messaging REST API as the RCS channel
sees it (token endpoint, capability, send, revoke), pushing events and user replies to the
gateway's webhook in Pub/Sub push format, with control endpoints that set each phone's fate.
Run it with `python -m gateway.rbm_simulator --port 2778 --webhook URL` or `serve()` in tests.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import json
import math
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs

import httpx
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from routing.rcs import JWT_BEARER, encode_push

# A phone's fate on the simulated platform (set through POST /control/phones):
CAPABLE = "capable"  # RCS phone: messages are delivered after deliver_delay, read after
NOT_CAPABLE = "not_capable"  # no RCS / agent not launched on its network: 404 NOT_FOUND
OFFLINE = "offline"  # RCS phone that is off: messages wait until revoked or expired
FAILING = "failing"  # the platform fails for it: 503 UNAVAILABLE on every call
SILENT = "silent"  # RCS phone; the platform takes its messages but never answers the send
STATES: Final = (CAPABLE, NOT_CAPABLE, OFFLINE, FAILING, SILENT)

MAX_TEXT: Final = 3072  # RBM's limit on a text message: longer is 400 INVALID_ARGUMENT
RETENTION: Final = 30 * 24 * 3600.0  # RBM keeps an undelivered message 30 days
MAX_TTL: Final = 15 * 24 * 3600.0


@dataclass(slots=True)
class SimMessage:
    """An agent message the platform holds: PENDING until DELIVERED, REVOKED or EXPIRED."""

    id: str
    phone: str
    text: str
    expires_at: float  # trio time
    agent_id: str = ""  # the agent that sent it (its events name it)
    state: str = "PENDING"
    read: bool = False


@dataclass
class RbmSimConfig:
    """The simulator's settings; phones not listed in `phones` are in `default_state`."""

    host: str = "127.0.0.1"
    port: int = 2778
    agent_id: str = "smsgw-demo-agent"
    other_agent_ids: tuple[str, ...] = ()  # more agents the platform serves
    webhook_url: str | None = None  # the gateway's POST /v1/rcs/events
    client_id: str = "smsgw"
    client_secret: str = "smsgw-secret"  # the simulator's own demo secret
    service_account_public_key: str | None = None  # PEM: JWT-bearer grants verified with it
    token_lifetime: float = 3600.0
    deliver_delay: float = 1.0
    read_delay: float = 2.0
    default_state: str = CAPABLE
    phones: dict[str, str] = field(default_factory=dict)


def _error(code: int, status: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "status": status}},
                        status_code=code)


def _rfc3339(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z")


def _parse_duration(value: object) -> float:
    if not isinstance(value, str) or not value.endswith("s"):
        raise ValueError(f"ttl {value!r} is not a Duration like \"30s\"")
    seconds = float(value[:-1])
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"ttl {value!r} is out of range")
    return seconds


class RbmSimulator:
    """The simulated platform. `serve()` in a nursery (started() with the port); its state is
    open to tests: `messages`, `pushed` (event bodies the webhook answered 2xx),
    `push_failures`, `tokens_issued`."""

    def __init__(self, config: RbmSimConfig, *, wall_clock: Any = None) -> None:
        import time

        self.config = config
        self.wall_clock = wall_clock or time.time
        self.port = config.port
        self.messages: dict[str, SimMessage] = {}
        self.pushed: list[dict[str, Any]] = []
        self.push_failures = 0
        self.tokens_issued = 0
        self._tokens: dict[str, float] = {}  # access token -> trio time it expires
        self._nursery: trio.Nursery | None = None
        self._http: httpx.AsyncClient | None = None

    @property
    def agent_ids(self) -> tuple[str, ...]:
        return (self.config.agent_id, *self.config.other_agent_ids)

    # ---- phones
    def state_of(self, phone: str) -> str:
        return self.config.phones.get(phone, self.config.default_state)

    def set_state(self, phone: str, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"state {state!r} is not one of {', '.join(STATES)}")
        self.config.phones[phone] = state
        if state == CAPABLE:  # back online: what waits for it is delivered now
            for msg in self.messages.values():
                if msg.phone == phone and msg.state == "PENDING":
                    self._spawn(self._deliver, msg, 0.0)

    # ---- the app
    def app(self, extra: Sequence[BaseRoute] = ()) -> Starlette:
        """The platform's API and control endpoints, and `extra` routes (another app
        mounted beside it: gateway.simulator's voice provider at /voice)."""
        return Starlette(routes=[
            Route("/token", self.token, methods=["POST"]),
            Route("/v1/phones/{phone}/capabilities", self.capabilities, methods=["GET"]),
            Route("/v1/phones/{phone}/agentMessages", self.send, methods=["POST"]),
            Route("/v1/phones/{phone}/agentMessages/{message_id}", self.revoke,
                  methods=["DELETE"]),
            Route("/control/phones", self.control_phones, methods=["GET", "POST"]),
            Route("/control/replies", self.control_reply, methods=["POST"]),
            Route("/control/messages", self.control_messages, methods=["GET"]),
            *extra,
        ])

    async def serve(self, *, extra: Sequence[BaseRoute] = (),
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        from gateway.http_api import serve_http

        async with httpx.AsyncClient(timeout=10) as http, trio.open_nursery() as nursery:
            self._http, self._nursery = http, nursery
            self.port = await nursery.start(serve_http, self.app(extra), self.config.host,
                                            self.config.port)
            task_status.started(self.port)

    def _spawn(self, fn: Any, *args: Any) -> None:
        if self._nursery is None:
            raise RuntimeError("the simulator is not serving")
        self._nursery.start_soon(fn, *args)

    # ---- OAuth2 token endpoint
    async def token(self, request: Request) -> Response:
        # application/x-www-form-urlencoded, read by hand (no python-multipart needed)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8",
                                                                           "replace")).items()}
        grant = form.get("grant_type")
        if grant == "client_credentials":
            ok = (form.get("client_id") == self.config.client_id
                  and secrets.compare_digest(str(form.get("client_secret", "")),
                                             self.config.client_secret))
            reason = "bad client_id or client_secret"
        elif grant == JWT_BEARER:
            reason = self._check_assertion(str(form.get("assertion", "")))
            ok = not reason
        else:
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if not ok:
            return JSONResponse({"error": "invalid_grant", "error_description": reason},
                                status_code=400)
        token = secrets.token_urlsafe(24)
        self._tokens[token] = trio.current_time() + self.config.token_lifetime
        self.tokens_issued += 1
        return JSONResponse({"access_token": token, "token_type": "Bearer",
                             "expires_in": int(self.config.token_lifetime)})

    def _check_assertion(self, assertion: str) -> str:
        """'' when the JWT is signed by the configured service account and current."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        if self.config.service_account_public_key is None:
            return "no service account is configured"
        try:
            head, body, sig = assertion.split(".")
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            signature = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
        except (ValueError, binascii.Error):
            return "assertion is not a JWT"
        key = serialization.load_pem_public_key(
            self.config.service_account_public_key.encode())
        if not isinstance(key, rsa.RSAPublicKey):
            return "the configured key is not RSA"
        try:
            key.verify(signature, f"{head}.{body}".encode(), padding.PKCS1v15(),
                       hashes.SHA256())
        except InvalidSignature:
            return "bad signature"
        if not isinstance(claims, dict) or claims.get("exp", 0) < self.wall_clock():
            return "assertion expired"
        return ""

    def _authorized(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ")
        until = self._tokens.get(token)
        return until is not None and trio.current_time() < until

    def _gate(self, request: Request) -> tuple[str, Response | None]:
        """The phone of the URL, or the error answer owed before looking at it."""
        phone = request.path_params["phone"]
        if not self._authorized(request):
            return phone, _error(401, "UNAUTHENTICATED", "missing or expired access token")
        if request.query_params.get("agentId") not in self.agent_ids:
            return phone, _error(403, "PERMISSION_DENIED", "unknown agentId")
        if not phone.startswith("+") or not phone[1:].isdigit():
            return phone, _error(400, "INVALID_ARGUMENT", f"{phone} is not E.164")
        state = self.state_of(phone)
        if state == FAILING:
            return phone, _error(503, "UNAVAILABLE", "the service is unavailable")
        if state == NOT_CAPABLE:
            return phone, _error(404, "NOT_FOUND", "Requested entity was not found.")
        return phone, None

    # ---- the API
    async def capabilities(self, request: Request) -> Response:
        _, refused = self._gate(request)
        if refused is not None:
            return refused
        return JSONResponse({"features": ["RICHCARD_STANDALONE", "RICHCARD_CAROUSEL",
                                          "ACTION_DIAL", "ACTION_OPEN_URL"]})

    async def send(self, request: Request) -> Response:
        phone, refused = self._gate(request)
        if refused is not None:
            return refused
        message_id = request.query_params.get("messageId", "")
        try:
            uuid.UUID(message_id)
        except ValueError:
            return _error(400, "INVALID_ARGUMENT", "messageId must be a UUID")
        try:
            body = await request.json()
            text = body["contentMessage"]["text"]
            if not isinstance(text, str) or not text:
                raise ValueError("contentMessage.text must be a non-empty string")
            ttl = _parse_duration(body["ttl"]) if "ttl" in body else RETENTION
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, "INVALID_ARGUMENT", f"bad AgentMessage: {exc}")
        if len(text) > MAX_TEXT:
            return _error(400, "INVALID_ARGUMENT", f"text longer than {MAX_TEXT} characters")
        if "ttl" in body and ttl > MAX_TTL:  # without one, the platform keeps it 30 days
            return _error(400, "INVALID_ARGUMENT", "ttl beyond 15 days")
        if message_id not in self.messages:  # an id seen before is ignored, as RBM does
            msg = SimMessage(message_id, phone, text, trio.current_time() + ttl,
                             agent_id=request.query_params["agentId"])
            self.messages[message_id] = msg
            self._spawn(self._expire, msg)
            if self.state_of(phone) == CAPABLE:
                self._spawn(self._deliver, msg, self.config.deliver_delay)
        if self.state_of(phone) == SILENT:  # taken, but the answer never comes
            await trio.sleep_forever()
        return JSONResponse({"name": f"phones/{phone}/agentMessages/{message_id}",
                             "contentMessage": {"text": text}})

    async def revoke(self, request: Request) -> Response:
        _, refused = self._gate(request)
        if refused is not None and refused.status_code != 404:
            return refused
        msg = self.messages.get(request.path_params["message_id"])
        if msg is None or msg.state != "PENDING":  # delivered (or never known): 404
            return _error(404, "NOT_FOUND", "Requested entity was not found.")
        msg.state = "REVOKED"
        return JSONResponse({})

    # ---- what happens on the platform
    async def _deliver(self, msg: SimMessage, delay: float) -> None:
        await trio.sleep(delay)
        if msg.state != "PENDING" or self.state_of(msg.phone) != CAPABLE:
            return
        msg.state = "DELIVERED"
        await self._push_event(msg, "DELIVERED")
        await trio.sleep(self.config.read_delay)
        msg.read = True
        await self._push_event(msg, "READ")

    async def _expire(self, msg: SimMessage) -> None:
        await trio.sleep_until(msg.expires_at)
        if msg.state == "PENDING":
            msg.state = "EXPIRED"
            await self.push({"phoneNumber": msg.phone, "messageId": msg.id,
                             "agentId": msg.agent_id or self.config.agent_id,
                             "eventType": "TTL_EXPIRATION_REVOKED",
                             "eventId": str(uuid.uuid4()),
                             "sendTime": _rfc3339(self.wall_clock())})

    async def _push_event(self, msg: SimMessage, kind: str) -> None:
        await self.push({"senderPhoneNumber": msg.phone, "eventType": kind,
                         "eventId": str(uuid.uuid4()), "messageId": msg.id,
                         "agentId": msg.agent_id or self.config.agent_id,
                         "sendTime": _rfc3339(self.wall_clock())})

    async def push(self, event: dict[str, Any]) -> None:
        """POST one event to the webhook in Pub/Sub push format, retried (as Pub/Sub does)
        with backoff until it is answered 2xx or the message's 30 days run out."""
        if self.config.webhook_url is None or self._http is None:
            return
        body = encode_push(event, message_id=str(uuid.uuid4()),
                           publish_time=_rfc3339(self.wall_clock()))
        delay = 0.1
        with trio.move_on_after(RETENTION):
            while True:
                try:
                    resp = await self._http.post(self.config.webhook_url, content=body,
                                                 headers={"Content-Type": "application/json"})
                    if 200 <= resp.status_code < 300:
                        self.pushed.append(event)
                        return
                except httpx.HTTPError:
                    pass
                self.push_failures += 1
                await trio.sleep(delay)
                delay = min(delay * 2, 60.0)

    # ---- control endpoints
    async def control_phones(self, request: Request) -> Response:
        """POST {"phone": "+336...", "state": "capable|not_capable|offline|failing|silent"}
        sets a phone's fate; GET: the default state and the phones given one."""
        if request.method == "GET":
            return JSONResponse({"default": self.config.default_state,
                                 "phones": self.config.phones})
        try:
            body = await request.json()
            phone, state = str(body["phone"]), str(body["state"])
            if not phone.startswith("+"):
                phone = "+" + phone
            self.set_state(phone, state)
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"expected {{phone, state}}: {exc}"},
                                status_code=400)
        return JSONResponse({"phone": phone, "state": state})

    async def control_reply(self, request: Request) -> Response:
        """{"phone": "+336...", "text": "...", "agentId": optional}: the phone sends the
        agent (the first configured one unless agentId names another) a message."""
        try:
            body = await request.json()
            phone, text = str(body["phone"]), str(body["text"])
            agent = str(body.get("agentId", self.config.agent_id))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return JSONResponse({"error": f"expected {{phone, text}}: {exc}"},
                                status_code=400)
        if agent not in self.agent_ids:
            return JSONResponse({"error": f"agentId {agent!r} is not one of "
                                 + ", ".join(self.agent_ids)}, status_code=400)
        if not phone.startswith("+"):
            phone = "+" + phone
        event = self.user_message(phone, text, agent)
        self._spawn(self.push, event)
        return JSONResponse({"messageId": event["messageId"]})

    def user_message(self, phone: str, text: str, agent_id: str | None = None
                     ) -> dict[str, Any]:
        return {"senderPhoneNumber": phone, "messageId": str(uuid.uuid4()),
                "sendTime": _rfc3339(self.wall_clock()),
                "agentId": agent_id or self.config.agent_id,
                "text": text}

    async def control_messages(self, _request: Request) -> Response:
        return JSONResponse([{"messageId": m.id, "phone": m.phone, "state": m.state,
                              "read": m.read, "text": m.text}
                             for m in self.messages.values()])


def config_from_args(argv: list[str] | None = None) -> RbmSimConfig:
    """The simulator's settings from its command line (see --help)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2778)
    parser.add_argument("--webhook", help="the gateway's RCS events URL, "
                        "e.g. http://127.0.0.1:8080/v1/rcs/events")
    parser.add_argument("--agent-id", default=RbmSimConfig.agent_id)
    parser.add_argument("--default-state", choices=STATES, default=CAPABLE)
    parser.add_argument("--deliver-delay", type=float, default=1.0)
    parser.add_argument("--read-delay", type=float, default=2.0)
    parser.add_argument("--phone", action="append", default=[], metavar="E164=STATE",
                        help="a phone's fate, e.g. +33698765432=not_capable (repeatable)")
    args = parser.parse_args(argv)
    phones: dict[str, str] = {}
    for item in args.phone:
        phone, _, state = item.partition("=")
        if state not in STATES:
            parser.error(f"--phone {item}: the state must be one of {', '.join(STATES)}")
        phones[phone if phone.startswith("+") else "+" + phone] = state
    return RbmSimConfig(host=args.host, port=args.port, agent_id=args.agent_id,
                        webhook_url=args.webhook, default_state=args.default_state,
                        deliver_delay=args.deliver_delay, read_delay=args.read_delay,
                        phones=phones)


def main(argv: list[str] | None = None) -> None:
    trio.run(RbmSimulator(config_from_args(argv)).serve)


if __name__ == "__main__":
    main()
