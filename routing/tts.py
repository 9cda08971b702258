"""The TTS channel: a message read aloud by a voice call placed through a generic HTTP provider.

One VoiceChannel is one voice provider account (one connector). Its requests are built from
templates in its settings (checked when it is made), the provider's call id is read from the
answer, and `parse_status` turns the provider's status callbacks into ProviderReceipts.
"""

from __future__ import annotations

import hmac
import json
import math
import string
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import structlog
import trio

from gateway.model import Message, PartState
from routing.channel import (
    TTS,
    Channel,
    ChannelEvents,
    ProviderReceipt,
    Revoked,
    SendDone,
    SendResult,
    Unit,
    Unsendable,
)
from smpp.constants import ESM_UDHI, Status
from smpp.text import TextEncodingError, alphabet, decode_text, parse_udh

log = structlog.get_logger("routing.tts")

# What a place-call template may name; a cancel template may also name {call_id}, the
# callback URL only what is known before the call.
PLACE_FIELDS = frozenset({"to", "to_e164", "from", "text", "language", "voice", "message_id",
                          "account", "connector", "timeout", "callback_url"})
CANCEL_FIELDS = PLACE_FIELDS | {"call_id"}
CALLBACK_FIELDS = frozenset({"message_id", "account", "connector", "callback_token"})
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
ENCODINGS = frozenset({"json", "form"})

# The provider's status words (compared lower-case) and what they mean for the message; None:
# the call is still on its way (a later word tells).
DEFAULT_OUTCOMES: Mapping[str, PartState | None] = {
    "queued": None, "initiated": None, "ringing": None, "in-progress": None,
    "answered": PartState.DELIVERED, "completed": PartState.DELIVERED,
    "busy": PartState.UNDELIVERABLE, "no-answer": PartState.UNDELIVERABLE,
    "failed": PartState.UNDELIVERABLE, "canceled": PartState.UNDELIVERABLE,
    "cancelled": PartState.UNDELIVERABLE, "expired": PartState.EXPIRED,
    "rejected": PartState.REJECTED,
}
_OUTCOME_NAMES: Mapping[str, PartState | None] = {
    "": None, "DELIVERED": PartState.DELIVERED, "UNDELIVERABLE": PartState.UNDELIVERABLE,
    "EXPIRED": PartState.EXPIRED, "REJECTED": PartState.REJECTED,
}
# 4xx answers that are not the message's fault: our credentials (401, 403, 407) or the
# provider's pace (408, 425, 429). They are temporary: another connector or a later retry.
_TEMPORARY_4XX = frozenset({401, 403, 407, 408, 425, 429})
_EXCERPT = 200  # characters of a provider's answer kept in SendResult.detail


class VoiceConfigError(ValueError):
    """A voice connector's settings are wrong; `key` names the setting (dotted path)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class StatusPayloadError(ValueError):
    """A status callback that cannot be read (the endpoint answers it 400)."""


def outcome_named(name: str) -> PartState | None:
    """The outcome a settings value names: DELIVERED, UNDELIVERABLE, EXPIRED, REJECTED or ""
    (intermediate); raises ValueError for anything else."""
    try:
        return _OUTCOME_NAMES[name]
    except KeyError:
        raise ValueError(f"outcome {name!r} is not one of "
                         f"{', '.join(repr(n) for n in _OUTCOME_NAMES)}") from None


@dataclass(frozen=True, slots=True)
class HttpTemplate:
    """One provider request. Strings in `url`, `headers` and `body` may hold placeholders
    ({to}, {text}... `{{`/`}}` for a literal brace); a body string that is one placeholder
    alone takes the value's type ({timeout} stays a number). Values put into the URL are
    percent-encoded. `encoding` "form" sends a flat body as application/x-www-form-urlencoded."""

    url: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: object = None  # a JSON value: dict, list, str, number, bool or None (no body)
    encoding: str = "json"


@dataclass(frozen=True, slots=True)
class StatusFormat:
    """Where a status callback keeps its facts: dotted paths into the JSON object (or form
    field names), and the map of the provider's status words to outcomes."""

    id_field: str = "call_id"
    status_field: str = "status"
    error_field: str = ""  # "" : the provider gives no error code
    outcomes: Mapping[str, PartState | None] = field(
        default_factory=lambda: dict(DEFAULT_OUTCOMES))


@dataclass(frozen=True, slots=True)
class VoiceSettings:
    """One voice connector. `call_id_field` is the dotted path of the call id in the
    place-call answer ("" : the provider echoes our {message_id} instead, used as the id).
    `max_ring` caps the {timeout} given to the provider (seconds; the rest of the message's
    validity when shorter); a message with less than `min_ring` left is not called (expired).
    `cancel_too_late`: HTTP statuses by which the cancel request says the call was answered.
    `callback_token`: the secret a status callback must carry (its URL's `token` query
    parameter; put {callback_token} in callback_url so the provider sends it back)."""

    name: str
    place: HttpTemplate
    call_id_field: str = "id"
    cancel: HttpTemplate | None = None
    cancel_too_late: tuple[int, ...] = (409,)
    status: StatusFormat = field(default_factory=StatusFormat)
    callback_url: str = ""
    callback_token: str = ""  # "" : callbacks need none; else they carry it (?token=...)
    caller_id: str = ""  # "" : the message's own sender, when it is a number
    default_language: str = "en-US"
    voices: Mapping[str, str] = field(default_factory=dict)  # language -> provider's voice
    default_voice: str = ""
    max_ring: float = 60.0
    min_ring: float = 5.0
    request_timeout: float = 10.0
    max_in_flight: int = 10
    max_text_chars: int = 2000


# --------------------------------------------------------------------------- templates
def _fields(text: str, key: str) -> Iterator[str]:
    """The placeholder names in one template string; malformed ones raise."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise VoiceConfigError(key, f"{text!r} is not a valid template ({exc}); write a "
                               "literal brace as {{ or }}") from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise VoiceConfigError(key, f"placeholder {{{name}}} may not carry a format "
                                   "spec or conversion")
        yield name


def _check_string(text: str, key: str, allowed: frozenset[str]) -> None:
    for name in _fields(text, key):
        if name not in allowed:
            raise VoiceConfigError(key, f"unknown placeholder {{{name}}}; known: "
                                   + ", ".join(f"{{{n}}}" for n in sorted(allowed)))


def _check_json(value: object, key: str, allowed: frozenset[str]) -> None:
    if isinstance(value, str):
        _check_string(value, key, allowed)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise VoiceConfigError(key, f"object key {k!r} is not a string")
            _check_json(v, f"{key}.{k}", allowed)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_json(v, f"{key}[{i}]", allowed)
    elif not (value is None or isinstance(value, bool | int | float)):
        raise VoiceConfigError(key, f"{type(value).__name__} is not a JSON value")


def check_template(template: HttpTemplate, key: str, allowed: frozenset[str]) -> None:
    """Raise VoiceConfigError (naming the setting) if the template cannot be used."""
    if template.method.upper() not in METHODS:
        raise VoiceConfigError(f"{key}.method", f"{template.method!r} is not one of "
                               + ", ".join(sorted(METHODS)))
    scheme = urllib.parse.urlsplit(template.url.split("{", 1)[0]).scheme
    if scheme not in ("http", "https"):
        raise VoiceConfigError(f"{key}.url", f"{template.url!r} must start with http:// or "
                               "https://")
    _check_string(template.url, f"{key}.url", allowed)
    for name, value in template.headers.items():
        _check_string(value, f"{key}.headers.{name}", allowed)
    if template.encoding not in ENCODINGS:
        raise VoiceConfigError(f"{key}.encoding", f"{template.encoding!r} is not one of "
                               "'json', 'form'")
    if template.encoding == "form" and not (
            isinstance(template.body, Mapping)
            and all(isinstance(v, str) for v in template.body.values())):
        raise VoiceConfigError(f"{key}.body", "a form body is a table of strings")
    _check_json(template.body, f"{key}.body", allowed)


def check_settings(settings: VoiceSettings) -> None:
    """Everything VoiceChannel checks when it is made; config loading can call it too."""
    if not settings.name:
        raise VoiceConfigError("name", "a voice connector needs a name")
    check_template(settings.place, "place", PLACE_FIELDS)
    if settings.cancel is not None:
        check_template(settings.cancel, "cancel", CANCEL_FIELDS)
    if settings.callback_url:
        _check_string(settings.callback_url, "callback_url", CALLBACK_FIELDS)
    for path_key in ("id_field", "status_field"):
        if not getattr(settings.status, path_key):
            raise VoiceConfigError(f"status.{path_key}", "must name a field")
    for word in settings.status.outcomes:
        if word != word.lower():
            raise VoiceConfigError(f"status.outcomes.{word}", "status words are lower case "
                                   "(the provider's words are compared lower-cased)")
    if settings.caller_id and not _is_number(settings.caller_id):
        raise VoiceConfigError("caller_id", f"{settings.caller_id!r} is not a phone number")
    numbers = {"max_ring": settings.max_ring, "min_ring": settings.min_ring,
               "request_timeout": settings.request_timeout}
    for key, value in numbers.items():
        if not (math.isfinite(value) and value > 0):
            raise VoiceConfigError(key, f"{value!r} is not a positive number of seconds")
    if settings.min_ring > settings.max_ring:
        raise VoiceConfigError("min_ring", f"{settings.min_ring} is above max_ring "
                               f"({settings.max_ring})")
    if settings.max_in_flight < 1:
        raise VoiceConfigError("max_in_flight", "must be at least 1")
    if settings.max_text_chars < 1:
        raise VoiceConfigError("max_text_chars", "must be at least 1")


def _render_string(text: str, values: Mapping[str, object],
                   quote: Callable[[str], str] = str) -> str:
    out: list[str] = []
    for literal, name, _spec, _conv in string.Formatter().parse(text):
        out.append(literal)
        if name is not None:
            out.append(quote(str(values[name])))
    return "".join(out)


def _render_json(value: object, values: Mapping[str, object]) -> object:
    if isinstance(value, str):
        parsed = list(string.Formatter().parse(value))
        if len(parsed) == 1 and parsed[0][0] == "" and parsed[0][1] is not None:
            return values[parsed[0][1]]  # the placeholder alone: the value, with its type
        return _render_string(value, values)
    if isinstance(value, Mapping):
        return {k: _render_json(v, values) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_render_json(v, values) for v in value]
    return value


def render(template: HttpTemplate, values: Mapping[str, object]) -> httpx.Request:
    """The request a template makes with these placeholder values."""
    url = _render_string(template.url, values,
                         lambda v: urllib.parse.quote(v, safe=""))
    headers = {k: _render_string(v, values) for k, v in template.headers.items()}
    method = template.method.upper()
    if template.body is None:
        return httpx.Request(method, url, headers=headers)
    body = _render_json(template.body, values)
    if template.encoding == "form":
        assert isinstance(body, dict)
        return httpx.Request(method, url, headers=headers,
                             data={k: str(v) for k, v in body.items()})
    return httpx.Request(method, url, headers=headers, json=body)


def field_at(document: object, path: str) -> object:
    """The value at a dotted path ("call.id", "events.0.status"); None when absent."""
    node = document
    for step in path.split("."):
        if isinstance(node, Mapping):
            node = node.get(step)
        elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            return None
    return node


# --------------------------------------------------------------------------- status callbacks
def parse_status(fmt: StatusFormat, body: bytes,
                 content_type: str = "application/json") -> list[ProviderReceipt]:
    """The receipts in one status callback: a JSON object, a JSON array of them, or a form.
    A status word the map does not know is taken as intermediate (outcome None, the word kept
    for the log). Raises StatusPayloadError when it cannot be read."""
    items: list[tuple[object, bytes]]
    if content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
        try:
            form = dict(urllib.parse.parse_qsl(body.decode("utf-8"), strict_parsing=True))
        except (UnicodeDecodeError, ValueError) as exc:
            raise StatusPayloadError(f"not a form: {exc}") from None
        items = [(form, body)]
    else:
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise StatusPayloadError(f"not JSON: {exc}") from None
        if isinstance(document, list):
            items = [(d, json.dumps(d, separators=(",", ":")).encode()) for d in document]
        else:
            items = [(document, body)]
    receipts = []
    for i, (item, raw) in enumerate(items):
        where = f"item {i}: " if len(items) > 1 else ""
        if not isinstance(item, Mapping):
            raise StatusPayloadError(f"{where}not an object")
        call_id = field_at(item, fmt.id_field)
        if isinstance(call_id, bool) or not isinstance(call_id, str | int) or call_id == "":
            raise StatusPayloadError(f"{where}no call id at {fmt.id_field!r}")
        word = field_at(item, fmt.status_field)
        if not isinstance(word, str) or not word:
            raise StatusPayloadError(f"{where}no status word at {fmt.status_field!r}")
        error = field_at(item, fmt.error_field) if fmt.error_field else None
        try:
            code = int(error) if isinstance(error, int | str) and error != "" else 0
        except ValueError:
            code = 0  # a provider's error name, not a number: the word and raw keep it
        receipts.append(ProviderReceipt(
            provider_id=str(call_id), outcome=fmt.outcomes.get(word.lower()), word=word,
            error=code, raw=raw))
    return receipts


# --------------------------------------------------------------------------- the channel
def _is_number(address: str) -> bool:
    digits = address[1:] if address.startswith("+") else address
    return digits.isdigit() and 3 <= len(digits) <= 20


def _e164(message: Message) -> str:
    addr = message.dest_addr
    if addr.startswith("+"):
        return addr
    if addr.startswith("00"):
        return "+" + addr[2:]
    return "+" + addr if message.dest_ton == 1 else addr


def spoken_text(message: Message) -> str:
    """The message's text as it will be read: its body decoded per data_coding, without a
    UDH. Raises Unsendable for a binary body or a bad UDH."""
    if alphabet(message.data_coding) == "binary" and message.data_coding not in (6, 7):
        raise Unsendable(Status.ESME_RSUBMITFAIL,
                         f"data_coding {message.data_coding} is binary: nothing to read aloud")
    body = message.body
    if message.esm_class & ESM_UDHI:
        try:
            _concat, body = parse_udh(body)
        except TextEncodingError as exc:
            raise Unsendable(Status.ESME_RSUBMITFAIL, f"bad UDH: {exc}") from None
    return decode_text(body, message.data_coding).strip()


class VoiceChannel:
    """One voice provider account. `language_of(account)` gives the account's language
    (BCP 47, "" for the connector's default), in which the provider is asked to speak.

    Calls are placed from tasks in `nursery` with `client`; done() learns whether the
    provider took the call. HTTP is connectionless, so the channel is up until closed: a
    failing provider shows in its SendResults (the core's breaker acts on them)."""

    kind = TTS

    def __init__(self, settings: VoiceSettings, client: httpx.AsyncClient,
                 nursery: trio.Nursery, language_of: Callable[[str], str]) -> None:
        check_settings(settings)
        self.settings = settings
        self.name = settings.name
        self.client = client
        self.nursery = nursery
        self.language_of = language_of
        self._limiter = trio.CapacityLimiter(settings.max_in_flight)
        self._closed = False
        self._changed = trio.Event()

    # -- Channel ------------------------------------------------------------------------------
    def is_up(self) -> bool:
        return not self._closed

    @property
    def capacity(self) -> int:
        return self.settings.max_in_flight

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def close(self) -> None:
        """Take no more calls (a removed connector): is_up() turns False."""
        self._closed = True
        self._changed.set()
        self._changed = trio.Event()

    def prepare(self, message: Message) -> Sequence[Unit]:
        text = spoken_text(message)
        if not text:
            raise Unsendable(Status.ESME_RINVMSGLEN, "empty text: nothing to read aloud")
        if len(text) > self.settings.max_text_chars:
            raise Unsendable(Status.ESME_RINVMSGLEN, f"{len(text)} characters; a call reads "
                             f"at most {self.settings.max_text_chars}")
        if not (self.settings.caller_id or _is_number(message.source_addr)):
            raise Unsendable(Status.ESME_RINVSRCADR,
                             f"a call needs a number to call from, not "
                             f"{message.source_addr!r}; set the connector's caller_id")
        return [Unit(1, text)]

    def submit_nowait(self, message: Message, unit: Unit, deadline: float,
                      done: SendDone) -> None:
        self.nursery.start_soon(self._send, message, unit, deadline, done)

    async def revoke(self, message: Message, provider_id: str) -> Revoked:
        """Cancel the call: REVOKED on 2xx, DELIVERED when the provider's answer says it
        was answered already (cancel_too_late), FAILED otherwise."""
        template = self.settings.cancel
        if template is None:
            return Revoked.UNSUPPORTED
        values = self.values(message, spoken_text(message), self.settings.max_ring)
        values["call_id"] = provider_id
        request = render(template, values)
        request.extensions["timeout"] = httpx.Timeout(self.settings.request_timeout).as_dict()
        try:
            response = await self.client.send(request)
        except httpx.HTTPError:
            return Revoked.FAILED
        if response.is_success:
            return Revoked.REVOKED
        if response.status_code in self.settings.cancel_too_late:
            return Revoked.DELIVERED
        return Revoked.FAILED

    def callback_allowed(self, token: str | None) -> bool:
        """Whether a status callback carrying this token may be believed."""
        want = self.settings.callback_token
        return not want or (token is not None
                            and hmac.compare_digest(token.encode(), want.encode()))

    def parse_status(self, body: bytes, content_type: str) -> list[ProviderReceipt]:
        return parse_status(self.settings.status, body, content_type)

    # -- the call -----------------------------------------------------------------------------
    def language(self, account: str) -> str:
        return self.language_of(account) or self.settings.default_language

    def voice(self, language: str) -> str:
        voices = self.settings.voices
        return voices.get(language) or voices.get(language.split("-", 1)[0]) \
            or self.settings.default_voice

    def values(self, message: Message, text: str, timeout: float) -> dict[str, object]:
        """The placeholder values for one call of this message."""
        language = self.language(message.account)
        ids = {"message_id": message.id, "account": message.account, "connector": self.name,
               "callback_token": self.settings.callback_token}
        return {
            "to": message.dest_addr, "to_e164": _e164(message),
            "from": self.settings.caller_id or message.source_addr,
            "text": text, "language": language, "voice": self.voice(language),
            "timeout": int(timeout), **ids,
            "callback_url": _render_string(self.settings.callback_url, ids),
        }

    async def _send(self, message: Message, unit: Unit, deadline: float,
                    done: SendDone) -> None:
        result: SendResult | None = None
        try:
            result = await self.place(message, unit, deadline)
        except Exception as exc:  # a bug here fails this call, not the channel
            log.exception("voice call failed", connector=self.name, message_id=message.id)
            result = SendResult(None, Status.ESME_RSYSERR, temporary=True,
                                detail=f"voice channel error: {exc!r}")
        finally:
            done(result or SendResult(None, Status.ESME_RSYSERR, temporary=True,
                                      detail="stopped while placing the call (it may have "
                                             "been placed)"))

    async def place(self, message: Message, unit: Unit, deadline: float) -> SendResult:
        """Place the call of one message, never after `deadline` (trio time)."""
        text = unit.payload if isinstance(unit.payload, str) else spoken_text(message)
        # Only the wait for a free slot is cut at the deadline, not a request under way (the
        # call may be placed by then): its own timeout keeps it within the validity.
        acquired = False
        with trio.move_on_at(deadline - self.settings.min_ring):
            await self._limiter.acquire()
            acquired = True
        if not acquired:
            return SendResult(None, expired=True, detail="the validity ran out waiting for a "
                              "free call slot")
        try:
            left = deadline - trio.current_time()
            if left < self.settings.min_ring:
                return SendResult(None, expired=True, detail=f"{left:.1f} s of validity left, "
                                  f"less than min_ring ({self.settings.min_ring} s)")
            request = render(self.settings.place,
                             self.values(message, text, min(self.settings.max_ring, left)))
            return await self._post(request, message, min(self.settings.request_timeout, left))
        finally:
            self._limiter.release()

    async def _post(self, request: httpx.Request, message: Message,
                    timeout: float) -> SendResult:
        request.extensions["timeout"] = httpx.Timeout(timeout).as_dict()
        try:
            response = await self.client.send(request)
        except httpx.ConnectError as exc:
            return SendResult(None, Status.ESME_RSYSERR, temporary=True,
                              detail=f"cannot reach the voice provider: {exc!r}")
        except httpx.TimeoutException as exc:
            return SendResult(None, Status.ESME_RSYSERR, temporary=True,
                              detail=f"no answer within {timeout:.1f} s ({type(exc).__name__}"
                                     "; the call may have been placed)")
        except httpx.HTTPError as exc:
            return SendResult(None, Status.ESME_RSYSERR, temporary=True,
                              detail=f"voice provider request failed: {exc!r}")
        code = response.status_code
        said = f"HTTP {code}: {response.text[:_EXCERPT]}"
        if response.is_success:
            return self._call_id(response, message, said)
        if code == 429:
            return SendResult(None, Status.ESME_RTHROTTLED, temporary=True, detail=said)
        if 400 <= code < 500 and code not in _TEMPORARY_4XX:
            return SendResult(None, Status.ESME_RSUBMITFAIL, rejected=True, detail=said)
        return SendResult(None, Status.ESME_RSYSERR, temporary=True, detail=said)

    def _call_id(self, response: httpx.Response, message: Message, said: str) -> SendResult:
        path = self.settings.call_id_field
        if not path:
            return SendResult(message.id)
        try:
            call_id = field_at(response.json(), path)
        except ValueError:
            call_id = None
        if isinstance(call_id, bool) or not isinstance(call_id, str | int) or call_id == "":
            # The provider took the call, so it may ring: not temporary (no second call).
            return SendResult(None, Status.ESME_RSYSERR,
                              detail=f"no call id at {path!r} in the answer ({said})")
        return SendResult(str(call_id))


@asynccontextmanager
async def open_voice_channel(settings: VoiceSettings, language_of: Callable[[str], str],
                             client: httpx.AsyncClient | None = None,
                             ) -> AsyncIterator[VoiceChannel]:
    """A VoiceChannel with its own nursery (and client, unless given); leaving cancels the
    calls still being placed (their done() is told so) and closes what it made."""
    async with trio.open_nursery() as nursery:
        own = client is None
        http = httpx.AsyncClient() if client is None else client
        try:
            channel = VoiceChannel(settings, http, nursery, language_of)
            yield channel
            channel.close()
            nursery.cancel_scope.cancel()
        finally:
            if own:
                await http.aclose()


async def hand_receipts(channel: Channel, events: ChannelEvents,
                        receipts: Sequence[ProviderReceipt], patience: float) -> bool:
    """Give a callback's receipts to the events sink: True once every one is stored (the
    provider may be acknowledged), False when one could not be, or when the sink has not told
    the fate of each within `patience` seconds of taking them (the provider sends it again)."""
    if not receipts:
        return True
    fates: dict[int, bool] = {}
    all_told = trio.Event()

    def answered(index: int, stored: bool) -> None:
        if 0 <= index < len(receipts):
            fates.setdefault(index, stored)
            if len(fates) == len(receipts):
                all_told.set()

    await events.receipts(channel, receipts, answered)
    with trio.move_on_after(patience):
        await all_told.wait()
    return all_told.is_set() and all(fates.values())
