"""The HTTP listener: the upstream JSON API under /v1, its OpenAPI document, and /metrics.

A Starlette app served by hypercorn's trio worker. POST /v1/messages stores messages like an
SMPP submit does (same intake checks, same per-account admission, answered 202 only after
the commit that holds them); GET /v1/messages/{id} shows a message with its parts and
history to its own account, DELETE cancels it while no part of it is with an operator.
Every error is an RFC 9457 problem+json. /u/{token} are the rules' unsubscribe links (an
HTML page whose button opts the phone out). POST /v1/rcs/events takes the RBM platform's
pushes (RcsEvents).
"""

from __future__ import annotations

import datetime as dt
import hmac
import html
import json
import math
from collections.abc import Mapping
from typing import Any

import structlog
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from gateway import history, metrics
from gateway.clock import WallClock
from gateway.config import GatewayConfig
from gateway.dispatcher import ChangeRefused, Dispatcher
from gateway.http_requests import (
    MessageRequest,
    PostRequest,
    RequestError,
    check_idempotency_key,
    parse_post,
)
from gateway.intake import IntakeError, IntakePolicy, accept_text
from gateway.model import Event, Message, OptOut, Part, PartState, State
from gateway.openapi import document
from gateway.screening import Screening
from gateway.server import _AccountState
from gateway.store import ConstraintError, IdempotencyRecord, Store, StoreBusy, StoreError
from gateway.tokens import TokenIndex
from routing.channel import ChannelEvents, MobileOriginated
from routing.rcs import PushError, RcsChannel, parse_push
from routing.tts import StatusPayloadError, VoiceChannel, hand_receipts
from smpp.constants import Status
from smpp.text import decode_text

log = structlog.get_logger("gateway.http")

PROBLEM = "application/problem+json"
PROBLEM_BASE = "urn:smsgw:problem:"  # + slug: the `type` of every problem this API answers
BODY_BYTES_PER_MESSAGE = 64 * 1024  # a body may hold max_batch times this many octets
BUSY_RETRY_AFTER = 1  # seconds: Retry-After when the store lags or the account is full

# Which field an intake refusal is about, by the SMPP status it carries.
_INTAKE_FIELD: dict[int, str] = {
    Status.ESME_RINVSRCADR: "from", Status.ESME_RINVSRCTON: "from",
    Status.ESME_RINVSRCNPI: "from", Status.ESME_RINVDSTADR: "to",
    Status.ESME_RINVEXPIRY: "validity", Status.ESME_RINVSCHED: "send_at",
    Status.ESME_RINVMSGLEN: "text",
}
# What to change, for the intake refusals whose detail does not say it.
_INTAKE_HINT: dict[int, str] = {
    Status.ESME_RINVSCHED: ": the message would expire before it is sent; ask for an earlier "
                           "send_at or a longer validity (the gateway's validity caps it)",
    Status.ESME_RINVEXPIRY: ": ask for a validity in the future",
}
# Which field a rule's refusal is about, by its subject.
_RULE_FIELD = {"recipient": "to", "sender": "from", "text": "text"}
_FINAL_PARTS = frozenset({PartState.DELIVERED, PartState.UNDELIVERABLE, PartState.EXPIRED,
                          PartState.REJECTED})


class Problem(Exception):
    """An RFC 9457 answer: raise it from a handler; ``extra`` adds members."""

    def __init__(self, status: int, slug: str, title: str, detail: str, *,
                 headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.slug, self.title, self.detail = status, slug, title, detail
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> Response:
        body = {"type": PROBLEM_BASE + self.slug, "title": self.title, "status": self.status,
                "detail": self.detail, **self.extra}
        return JSONResponse(body, self.status, headers=self.headers, media_type=PROBLEM)


def _time(t: float | None) -> str | None:
    """RFC 3339, UTC, milliseconds."""
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


class HttpApi:
    """The application and what its handlers use; ``app`` is the ASGI app to serve."""

    def __init__(self, config: GatewayConfig, store: Store, dispatcher: Dispatcher,
                 clock: WallClock, states: Mapping[str, _AccountState],
                 stopping: trio.Event | None = None,
                 screening: Screening | None = None,
                 rcs_events: RcsEvents | None = None,
                 voice_status: VoiceStatus | None = None) -> None:
        self.config = config
        self.screening = screening  # the rules (rules/): None runs none
        # set by the graceful drain: accept no more
        self.stopping = trio.Event() if stopping is None else stopping
        self.store = store
        self.dispatcher = dispatcher
        self.clock = clock
        self.states = states
        self.max_batch = config.http.max_batch
        self.tokens = TokenIndex({name: acc.http_tokens for name, acc in config.accounts.items()})
        self.openapi = json.dumps(document(self.max_batch)).encode()
        self.app = Starlette(
            routes=[
                Route("/v1/messages", self.post_messages, methods=["POST"]),
                Route("/v1/messages/{message_id}", self.one_message, methods=["GET", "DELETE"]),
                Route("/openapi.json", self.openapi_document, methods=["GET"]),
                Route("/u/{token}", self.unsubscribe_page, methods=["GET"]),
                Route("/u/{token}", self.unsubscribe, methods=["POST"]),
                Route("/metrics", self.scrape, methods=["GET"]),
                *([rcs_events.route()] if rcs_events is not None else []),
                *([] if voice_status is None else [voice_status.route()]),
            ],
            exception_handlers={Problem: self._problem, HTTPException: self._http_error,
                                StoreError: self._store_error, Exception: self._crash},
        )

    # -- errors -------------------------------------------------------------------------------
    def configure(self, config: GatewayConfig) -> None:
        """A reload changed the accounts (tokens, validity, limits) or the rules; the [http]
        section itself is kept until a restart (the reload keeps the running one)."""
        self.config = config
        self.tokens = TokenIndex({name: acc.http_tokens for name, acc in config.accounts.items()})

    async def _problem(self, _request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return exc.response()

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's own refusals (no such path, method not allowed) as problems."""
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            return Problem(405, "method-not-allowed", "Method not allowed",
                           f"{request.method} is not allowed on {request.url.path}: use "
                           f"{allowed or 'another method'}", headers=exc.headers).response()
        if exc.status_code == 404:
            return Problem(404, "not-found", "Not found",
                           f"no resource at {request.url.path}: see /openapi.json for the "
                           "paths of this API").response()
        return Problem(exc.status_code, "http-error", "HTTP error", str(exc.detail),
                       headers=exc.headers).response()

    async def _store_error(self, request: Request, exc: Exception) -> Response:
        """A store read or write that failed (the store counts and logs it)."""
        return Problem(503, "store-unavailable", "Temporarily unavailable",
                       "the gateway's store failed this request: nothing was accepted; send "
                       "the same request again after Retry-After",
                       headers={"Retry-After": str(BUSY_RETRY_AFTER)}).response()

    async def _crash(self, request: Request, exc: Exception) -> Response:
        log.error("http.handler_failed", path=request.url.path, exc_info=exc)
        return Problem(500, "internal", "Internal error",
                       "the gateway failed to handle this request; nothing was accepted unless "
                       "a 202 said so: try again later").response()

    # -- helpers ------------------------------------------------------------------------------
    def _account(self, request: Request) -> _AccountState:
        """The account whose bearer token the request carries; else 401."""
        header = request.headers.get("authorization")
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if header is None or scheme.lower() != "bearer" or not token:
            raise Problem(401, "unauthorized", "Unauthorized",
                          "send your API token in the header 'Authorization: Bearer <token>'",
                          headers={"WWW-Authenticate": 'Bearer realm="smsgw"'})
        account = self.tokens.account_of(token)
        state = self.states.get(account) if account is not None else None
        if state is None:
            metrics.HTTP_AUTH_FAILURES.inc()
            raise Problem(401, "unauthorized", "Unauthorized",
                          "the bearer token is not valid: use a token configured for your "
                          "account (http_tokens)",
                          headers={"WWW-Authenticate":
                                   'Bearer realm="smsgw", error="invalid_token"'})
        return state

    def _throttle(self, state: _AccountState, count: int) -> None:
        """429 over the account's throughput (shared with its SMPP binds)."""
        bucket = state.bucket
        if bucket.take(count):
            return
        account = state.config.system_id
        metrics.child(metrics.REFUSED, account, "throttled").inc(count)
        wait = max(1, math.ceil(bucket.retry_after(count)))
        raise Problem(429, "rate-limited", "Too many requests",
                      f"account {account} may send {bucket.rate:g} messages/s (SMPP and HTTP "
                      f"together): wait {wait} s (Retry-After) or send smaller batches",
                      headers={"Retry-After": str(wait)})

    async def _body(self, request: Request) -> bytes:
        limit = self.max_batch * BODY_BYTES_PER_MESSAGE
        size, chunks = 0, []
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Problem(413, "too-large", "Request body too large",
                              f"the body exceeds {limit} octets: send at most {self.max_batch} "
                              "messages per request")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- POST /v1/messages --------------------------------------------------------------------
    async def post_messages(self, request: Request) -> Response:
        started = trio.current_time()
        state = self._account(request)
        account = state.config.system_id
        if self.stopping.is_set():
            raise Problem(503, "stopping", "Temporarily unavailable",
                          "the gateway is stopping: nothing was accepted, send the same request "
                          "again after Retry-After",
                          headers={"Retry-After": str(BUSY_RETRY_AFTER)})
        key = request.headers.get("idempotency-key")
        if key is not None and (problem := check_idempotency_key(key)) is not None:
            raise Problem(400, "invalid-header", "Invalid header", problem)
        raw = await self._body(request)
        try:
            post = parse_post(raw, self.max_batch)
        except RequestError as exc:
            metrics.child(metrics.REFUSED, account, "invalid").inc()
            errors = [{"pointer": e.pointer, "detail": e.detail} for e in exc.errors]
            more = f" (and {len(errors) - 1} more in errors)" if len(errors) > 1 else ""
            if exc.syntax:
                raise Problem(400, "invalid-json", "Body is not JSON",
                              exc.errors[0].detail) from None
            raise Problem(422, "invalid-request", "Invalid request",
                          exc.errors[0].detail + more, errors=errors) from None
        if key is not None:
            replay = await self._replay(account, key, post.fingerprint)
            if replay is not None:
                return replay
        messages, rule_events = self._intake(account, post, state)
        stored = False  # whether the messages were committed (for the duplicates rule)
        try:
            unfinished = self.dispatcher.unfinished_of(account) + state.admitting
            if unfinished + len(messages) > state.config.max_unfinished:
                metrics.child(metrics.REFUSED, account,
                              metrics.status_label(Status.ESME_RMSGQFUL)).inc(len(messages))
                raise Problem(429, "too-many-unfinished", "Too many unfinished messages",
                              f"account {account} has {unfinished} messages not final yet "
                              f"(at most {state.config.max_unfinished}): wait for some to "
                              "finish",
                              headers={"Retry-After": str(BUSY_RETRY_AFTER)})
            self._throttle(state, len(messages))
            body = {"messages": [{"id": m.id, "state": m.state.value, "to": m.dest_addr,
                                  "client_ref": m.client_ref} for m in messages]}
            text = json.dumps(body, separators=(",", ":"))
            record = None if key is None else IdempotencyRecord(
                account, key, post.fingerprint, text, self.clock.now())
            state.admitting += len(messages)
            try:
                # Shielded: once queued the insert is committed anyway, so the dispatcher must
                # get the messages even if the client goes away meanwhile (else never sent).
                with trio.CancelScope(shield=True):
                    try:
                        await self._store(messages, record, rule_events)
                    except ConstraintError:
                        if key is None:
                            raise
                        # The same key, committed meanwhile by a concurrent request: its
                        # answer.
                        replay = await self._replay(account, key, post.fingerprint)
                        if replay is None:
                            raise
                        return replay
                    stored = True
                    for msg in messages:
                        self.dispatcher.enqueue(msg)
            finally:
                state.admitting -= len(messages)
        finally:
            if self.screening is not None:
                self.screening.settle(messages, stored)
        metrics.child(metrics.SUBMIT_SECONDS, "http").observe(trio.current_time() - started)
        return Response(text, 202, media_type="application/json")

    def _intake(self, account: str, post: PostRequest, state: _AccountState
                ) -> tuple[list[Message], list[Event]]:
        """The messages to store and the history events of the rules' decisions on them;
        a Problem if any message is refused (by intake or a rule: the batch goes whole)."""
        now = self.clock.now()
        policy = IntakePolicy(self.config.validity, state.config.validity, state.config.max_parts)
        messages: list[Message] = []
        errors: list[dict[str, str]] = []
        cfg = state.config
        verdicts = []
        status = 422
        for req in post.messages:
            if req.callback_url is not None and not cfg.webhook_secret:
                errors.append({"pointer": f"{req.pointer}/callback_url",
                               "detail": f"callback_url: account {account} has no "
                                         "webhook_secret to sign its callbacks with: leave "
                                         "callback_url out (and poll GET /v1/messages/{id}), "
                                         "or ask the gateway's operator to set one"})
                continue
            prefixes = cfg.callback_url_prefixes
            if req.callback_url is not None and prefixes and not any(
                    req.callback_url.startswith(p) for p in prefixes):
                errors.append({"pointer": f"{req.pointer}/callback_url",
                               "detail": "callback_url: expected a URL starting with "
                                         + " or ".join(prefixes)
                                         + f" (the callback_url_prefixes of account {account})"})
                continue
            try:
                msg = self._message(account, req, now, policy)
                # It owes a receipt (a webhook) when there is somewhere to post it.
                msg.registered_delivery = 1 if req.callback_url or cfg.webhook_url else 0
            except IntakeError as exc:
                field = _INTAKE_FIELD.get(exc.status, "text")
                detail = exc.detail if exc.detail.startswith(field) else f"{field}: {exc.detail}"
                errors.append({"pointer": f"{req.pointer}/{field}",
                               "detail": detail + _INTAKE_HINT.get(exc.status, "")})
                continue
            messages.append(msg)
            if self.screening is None:
                continue
            verdict = self.screening.check(msg, now, "http", traffic=req.traffic)
            verdicts.append(verdict)
            rejected = verdict.rejected
            if rejected is not None:
                field = _RULE_FIELD.get(rejected.subject, "text")
                errors.append({"pointer": f"{req.pointer}/{field}",
                               "detail": f"{field}: {rejected.detail} (rule {rejected.rule}, "
                                         f"reason {rejected.reason})",
                               "rule": rejected.rule, "reason": rejected.reason})
                if len(errors) == 1:
                    status = rejected.http_status
        if errors:
            metrics.child(metrics.REFUSED, account, "invalid").inc(len(post.messages))
            more = f" (and {len(errors) - 1} more in errors)" if len(errors) > 1 else ""
            if self.screening is not None:
                self.screening.record([v for v in verdicts if v.rejected is not None], now)
                self.screening.settle(messages, stored=False)  # the batch goes whole
            raise Problem(status, "invalid-message", "Message refused",
                          errors[0]["detail"] + more, errors=errors)
        events = [] if self.screening is None else self.screening.record(verdicts, now)
        return messages, events

    @staticmethod
    def _message(account: str, req: MessageRequest, now: float,
                 policy: IntakePolicy) -> Message:
        msg = accept_text(account, req.source, req.to, req.text, now, policy,
                          expires=None if req.validity is None else now + req.validity,
                          scheduled=req.send_at)
        msg.origin = "http"
        msg.channel = req.channel
        msg.traffic = req.traffic or "alert"  # the rules may apply the account's default
        msg.callback_url = req.callback_url
        msg.client_ref = req.client_ref
        return msg

    async def _store(self, messages: list[Message], record: IdempotencyRecord | None,
                     rule_events: list[Event]) -> None:
        events = [*rule_events, *(history.accepted(m, "http") for m in messages)]
        try:
            await self.store.add_messages(messages, events, idempotency=record)
        except StoreBusy:
            account = messages[0].account
            metrics.child(metrics.REFUSED, account,
                          metrics.status_label(Status.ESME_RMSGQFUL)).inc(len(messages))
            raise Problem(503, "store-busy", "Temporarily unavailable",
                          "the gateway's store is lagging: nothing was accepted, send the same "
                          "request again after Retry-After",
                          headers={"Retry-After": str(BUSY_RETRY_AFTER)}) from None
        for msg in messages:
            log.info("message.accepted", message_id=msg.id, account=msg.account,
                     state=msg.state.value, interface="http")
            metrics.child(metrics.ACCEPTED, msg.account, "http").inc()

    async def _replay(self, account: str, key: str, fingerprint: str) -> Response | None:
        """The first answer to this Idempotency-Key (None if the key is new); 409 if it was
        used with another body."""
        record = await self.store.idempotency_record(account, key)
        if record is None:
            return None
        if record.fingerprint != fingerprint:
            raise Problem(409, "idempotency-conflict", "Idempotency-Key reused",
                          "this Idempotency-Key was used with another body: use a new key for a "
                          "new request, or send the first body again")
        return Response(record.response, 202, media_type="application/json",
                        headers={"Idempotent-Replayed": "true"})

    async def one_message(self, request: Request) -> Response:
        if request.method == "DELETE":
            return await self.delete_message(request)
        return await self.get_message(request)

    # -- GET /v1/messages/{id} ----------------------------------------------------------------
    async def get_message(self, request: Request) -> Response:
        state = self._account(request)
        self._throttle(state, 1)  # a read costs like a query_sm: charged to the throughput
        message_id = request.path_params["message_id"]
        msg = await self.store.get_message_for_account(state.config.system_id, message_id)
        if msg is None:  # another account's message is not found either
            raise Problem(404, "message-not-found", "Message not found",
                          f"no message {message_id[:80]!r} for your account: use an id a 202 "
                          "of POST /v1/messages gave you")
        parts = await self.store.get_parts(msg.id)
        events = await self.store.events_of(msg.id)
        return JSONResponse(message_view(msg, parts, events))

    # -- DELETE /v1/messages/{id} -------------------------------------------------------------
    async def delete_message(self, request: Request) -> Response:
        """Cancel a message of the account no part of which is with an operator yet: 200 with
        the message once CANCELLED is committed (again 200 for one cancelled already), 404
        as GET, 409 when too late, 503 when the store failed (nothing changed)."""
        state = self._account(request)
        self._throttle(state, 1)  # like a cancel_sm
        account = state.config.system_id
        message_id = request.path_params["message_id"]
        try:
            msg = await self.dispatcher.cancel(message_id, account=account, by="http")
        except ChangeRefused as exc:
            if exc.reason == "unknown":
                raise Problem(404, "message-not-found", "Message not found",
                              f"no message {message_id[:80]!r} for your account: use an id a "
                              "202 of POST /v1/messages gave you") from None
            if exc.reason == "busy":
                raise Problem(503, "busy", "Temporarily unavailable",
                              f"{exc.detail}: send the same request again after Retry-After",
                              headers={"Retry-After": str(BUSY_RETRY_AFTER)}) from None
            if exc.state is not State.CANCELLED:
                raise Problem(409, "too-late", "Too late to cancel",
                              f"{exc.detail} (a message can be cancelled only until it is "
                              "handed to an operator)",
                              state=exc.state.value if exc.state else None) from None
            found = await self.store.get_message_for_account(account, message_id)
            if found is None:  # purged meanwhile
                raise Problem(404, "message-not-found", "Message not found",
                              f"no message {message_id[:80]!r} for your account") from None
            msg = found
        except StoreError:
            raise Problem(503, "store-unavailable", "Temporarily unavailable",
                          "the gateway's store failed this request: the message was not "
                          "cancelled; send the same request again after Retry-After",
                          headers={"Retry-After": str(BUSY_RETRY_AFTER)}) from None
        parts = await self.store.get_parts(msg.id)
        events = await self.store.events_of(msg.id)
        return JSONResponse(message_view(msg, parts, events))

    # -- unsubscribe links (rules: where phones cannot reply STOP) -----------------------------
    def _unsubscriber(self, request: Request) -> tuple[str, str] | None:
        token = request.path_params["token"]
        if self.screening is None:
            return None
        return self.screening.read_unsubscribe(token, self.config.accounts)

    async def unsubscribe_page(self, request: Request) -> Response:
        """The confirmation page: opening the link changes nothing (link scanners open every
        link they see); only its button (a POST) unsubscribes."""
        found = self._unsubscriber(request)
        if found is None:
            return HTMLResponse(_page("Lien inconnu / Unknown link",
                                      "<p>Ce lien de désinscription n'est pas valide.</p>"
                                      "<p>This unsubscribe link is not valid.</p>"), 404)
        account = html.escape(found[0])
        return HTMLResponse(_page(
            "Désinscription / Unsubscribe",
            f"<p>Ne plus recevoir les SMS marketing de <b>{account}</b> ?</p>"
            f"<p>Stop receiving marketing SMS from <b>{account}</b>?</p>"
            '<form method="post"><button type="submit">Me désinscrire / Unsubscribe'
            "</button></form>"))

    async def unsubscribe(self, request: Request) -> Response:
        found = self._unsubscriber(request)
        if found is None or self.screening is None:
            return HTMLResponse(_page("Lien inconnu / Unknown link",
                                      "<p>This unsubscribe link is not valid.</p>"), 404)
        account, msisdn = found
        entry = OptOut(account, msisdn, True, self.clock.now(), "link")
        await self.store.set_optouts([entry])
        self.screening.optouts_stored([entry])
        return HTMLResponse(_page("Désinscrit / Unsubscribed",
                                  f"<p>Vous ne recevrez plus de SMS marketing de "
                                  f"<b>{html.escape(account)}</b>.</p><p>You will no longer "
                                  "receive marketing SMS from it.</p>"))

    # -- documents ------------------------------------------------------------------------------
    async def openapi_document(self, _request: Request) -> Response:
        return Response(self.openapi, media_type="application/json")

    async def scrape(self, _request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class VoiceStatus:
    """POST /v1/voice/status/{connector}: a voice provider's status callback. Its receipts go
    to the channel events sink; 204 once each is stored, 503 (the provider sends it again) when
    one is not; 400 for a payload the connector's status format cannot read, 403 without the
    connector's callback token (?token=), 404 for a connector that is not a voice one."""

    BODY_LIMIT = 64 * 1024
    PATIENCE = 10.0  # seconds the sink has to tell each receipt's fate

    def __init__(self, channels: Mapping[str, VoiceChannel], events: ChannelEvents) -> None:
        self.channels = channels  # the daemon's live map: a reload may change it
        self.events = events

    def route(self) -> Route:
        return Route("/v1/voice/status/{connector}", self.handle, methods=["POST"])

    async def handle(self, request: Request) -> Response:
        name = request.path_params["connector"]
        channel = self.channels.get(name)
        if channel is None:
            raise Problem(404, "unknown-connector", "Unknown voice connector",
                          f"no voice connector is named {name!r}")
        if not channel.callback_allowed(request.query_params.get("token")):
            raise Problem(403, "forbidden", "Forbidden",
                          f"this callback lacks voice connector {name}'s callback token")
        body = await bounded_body(request, self.BODY_LIMIT, "a status callback")
        try:
            receipts = channel.parse_status(body, request.headers.get("content-type", ""))
        except StatusPayloadError as exc:
            raise Problem(400, "invalid-status", "Unreadable status callback",
                          f"voice connector {name}: {exc}") from None
        if not await hand_receipts(channel, self.events, receipts, self.PATIENCE):
            raise Problem(503, "not-stored", "Temporarily unavailable",
                          "the gateway could not store this status: send it again",
                          headers={"Retry-After": str(BUSY_RETRY_AFTER)})
        return Response(status_code=204)


async def bounded_body(request: Request, limit: int, what: str) -> bytes:
    """A provider's request body, read up to `limit` octets: 413 beyond (never buffered)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, "too-large", "Request body too large",
                          f"{what} is at most {limit} octets")
        chunks.append(chunk)
    return b"".join(chunks)


def message_view(msg: Message, parts: list[Part], events: list[Event]) -> dict[str, Any]:
    """What GET /v1/messages/{id} answers (see the MessageStatus schema)."""
    # A message the upstream segmented itself (UDHI) has no one text to show.
    text = None if msg.esm_class & 0x40 else decode_text(msg.body, msg.data_coding)
    history = [{"at": _time(e.at), "kind": e.kind,
                "from_state": e.from_state.value if e.from_state else None,
                "to_state": e.to_state.value if e.to_state else None,
                "detail": e.detail} for e in events]
    attempts = _attempts(msg, events)
    if not attempts:  # no attempt recorded in the history: the attempt its parts show
        by_connector: dict[str, list[Part]] = {}
        for p in parts:
            by_connector.setdefault(p.connector, []).append(p)
        for connector, group in by_connector.items():
            sent = [p.submitted_at for p in group if p.submitted_at is not None]
            states = {p.state for p in group}
            attempts.append({"at": _time(min(sent)) if sent else None, "channel": msg.channel,
                             "connector": connector,
                             "outcome": states.pop().value if len(states) == 1 else "MIXED",
                             "detail": {}})
    return {
        "id": msg.id,
        "state": msg.state.value,
        "to": msg.dest_addr,
        "from": msg.source_addr,
        "text": text,
        "origin": msg.origin,
        "channel": msg.channel,
        "traffic": msg.traffic,
        "number_type": msg.number_type or None,
        "country": msg.country or None,
        "client_ref": msg.client_ref,
        "callback_url": msg.callback_url,
        "created_at": _time(msg.created_at),
        "send_at": _time(msg.not_before),
        "expires_at": _time(msg.expires_at),
        "done_at": _time(msg.done_at),
        "error": msg.error,
        "connector": msg.connector,
        "parts": [{"part_no": p.part_no, "connector": p.connector,
                   "operator_message_id": p.smsc_id, "state": p.state.value, "error": p.error,
                   "submitted_at": _time(p.submitted_at), "done_at": _time(p.done_at)}
                  for p in parts],
        "attempts": attempts,
        "receipts": [{"part_no": p.part_no, "connector": p.connector,
                      "operator_message_id": p.smsc_id, "state": p.state.value,
                      "error": p.error, "at": _time(p.done_at)}
                     for p in parts if p.state in _FINAL_PARTS and p.smsc_id is not None],
        "history": history,
    }


def _attempts(msg: Message, events: list[Event]) -> list[dict[str, Any]]:
    """Each "attempt" of the history, with its outcome: its own (the operator's answer, when
    written with it), else the event that answered it ("submitted", "retry", "resumed", or
    the final state it ended in); None while unanswered."""
    attempts: list[dict[str, Any]] = []
    open_attempt: dict[str, Any] | None = None
    for e in events:
        if e.kind == "attempt":
            outcome = _str_or_none(e.detail.get("outcome"))  # answered in the same commit
            entry = {"at": _time(e.at), "channel": str(e.detail.get("channel", msg.channel)),
                     "connector": _str_or_none(e.detail.get("connector")),
                     "outcome": outcome, "detail": e.detail}
            attempts.append(entry)
            open_attempt = None if outcome else entry
        elif open_attempt is not None and e.kind in ("submitted", "retry", "final", "resumed"):
            open_attempt["outcome"] = e.to_state.value if e.kind == "final" and e.to_state \
                else e.kind
            open_attempt = None
    return attempts


def _page(title: str, body: str) -> str:
    return ('<!doctype html><html lang="fr"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title></head><body><h1>{title}</h1>{body}</body></html>")


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


class RcsEvents:
    """POST /v1/rcs/events: the RBM platform's pushes (Pub/Sub push format), one event or user
    message per request, handed to the core's ChannelEvents sink for the channel of the
    agent it names. Answered 204 only once the sink says it is stored (the platform then
    forgets it), 503 when it could not be stored or the sink did not answer within
    `store_timeout` (the platform pushes it again), 400 for a malformed push, 404 for an
    agent no RCS connector serves. An agent with a push token (`push_tokens`, by agent id)
    takes only pushes whose URL carries ?token=<it> (the way to authenticate a Pub/Sub push
    endpoint without verifying Google's OIDC tokens): 401 otherwise."""

    PATH = "/v1/rcs/events"
    MAX_BODY = 256 * 1024

    def __init__(self, channels: Mapping[str, RcsChannel], sink: ChannelEvents, *,
                 push_tokens: Mapping[str, str] | None = None,
                 store_timeout: float = 30.0) -> None:
        self.channels = channels  # by RBM agent id
        self.sink = sink
        self.push_tokens = {agent: token for agent, token in (push_tokens or {}).items()
                            if token}
        self.store_timeout = store_timeout

    def route(self) -> Route:
        return Route(self.PATH, self.receive, methods=["POST"])

    @staticmethod
    def _unknown_pusher() -> Problem:
        return Problem(401, "unauthenticated", "Unknown pusher",
                       "the push URL's token is missing or wrong")

    async def receive(self, request: Request) -> Response:
        try:
            return await self._receive(request)
        except Problem as problem:
            if problem.status >= 500 or problem.status == 400:
                log.warning("rcs_push_refused", status=problem.status, detail=problem.detail)
            return problem.response()

    async def _receive(self, request: Request) -> Response:
        given = request.query_params.get("token", "").encode()
        if self.push_tokens and not any(hmac.compare_digest(given, token.encode())
                                        for token in self.push_tokens.values()):
            raise self._unknown_pusher()  # before reading a body nobody vouches for
        body = await bounded_body(request, self.MAX_BODY, "an RBM push")
        try:
            push = parse_push(body)
        except PushError as exc:
            raise Problem(400, "bad-push", "Malformed RBM push", str(exc)) from None
        if push.item is None:
            return Response(status_code=204)  # nothing for the core (typing, launch events)
        token = self.push_tokens.get(push.agent_id)
        if token is not None and not hmac.compare_digest(given, token.encode()):
            raise self._unknown_pusher()
        channel = self.channels.get(push.agent_id)
        if channel is None:
            raise Problem(404, "unknown-agent", "Unknown RBM agent",
                          f"no RCS connector serves agent {push.agent_id!r}")
        stored: list[bool] = []
        answered = trio.Event()

        def done(_i: int, ok: bool) -> None:
            stored.append(ok)
            answered.set()

        with trio.move_on_after(self.store_timeout):
            if isinstance(push.item, MobileOriginated):
                await self.sink.mobile_originated(channel, [channel.reply(push.item)], done)
            else:
                await self.sink.receipts(channel, [push.item], done)
            await answered.wait()
        if not stored:
            raise Problem(503, "not-stored", "Not stored",
                          f"the push was not stored within {self.store_timeout:g} s: push it "
                          "again", headers={"Retry-After": str(BUSY_RETRY_AFTER)})
        if not stored[0]:
            raise Problem(503, "not-stored", "Not stored",
                          "the push could not be stored: push it again",
                          headers={"Retry-After": str(BUSY_RETRY_AFTER)})
        return Response(status_code=204)


def metrics_app() -> Starlette:
    """GET /metrics alone: [http] metrics_port's listener (Prometheus apart from the API)."""

    async def scrape(_request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/metrics", scrape, methods=["GET"])])


async def serve_http(app: Starlette, host: str, port: int, *,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` with hypercorn (trio worker); started() with the port it listens on."""
    hconf = HyperConfig()
    hconf.bind = [f"{host}:{port}"]
    hconf.accesslog = None
    hconf.errorlog = None

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serve, app, hconf)
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
