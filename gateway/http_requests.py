"""HTTP API requests: read a POST /v1/messages body into validated message requests.

Pure (no I/O): JSON in, MessageRequests or a list of field errors out, each error naming the
field by JSON pointer and saying what to send instead. The checks of the messages themselves
(addresses, validity, size) are gateway.intake's, shared with SMPP.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

TRAFFIC = ("alert", "marketing")
CHANNELS = ("sms", "rcs", "tts")
MESSAGE_FIELDS = ("to", "from", "text", "channel", "traffic", "validity", "send_at",
                  "callback_url", "client_ref")
REQUIRED = ("to", "from", "text")
MAX_TEXT = 40_000  # characters; intake refuses what needs more SMS parts than the account has
MAX_CLIENT_REF = 64
MAX_URL = 2000
MAX_VALIDITY = 366 * 86400  # seconds; the configured validity caps it anyway
TO_PATTERN = r"^\+?[0-9]{1,20}$"
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
# ISO 8601 durations of days, hours, minutes, seconds: years and months have no fixed length.
_ISO_DURATION = re.compile(
    r"P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?")
_TO = re.compile(TO_PATTERN)
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


@dataclass(frozen=True, slots=True)
class FieldError:
    pointer: str  # JSON pointer of the field ("" for the whole body)
    detail: str  # what is wrong and what to send instead


class RequestError(Exception):
    """The body is not a valid request; ``errors`` says where and why."""

    def __init__(self, errors: list[FieldError], *, syntax: bool = False) -> None:
        super().__init__(errors[0].detail)
        self.errors = errors
        self.syntax = syntax  # not JSON at all (400) rather than invalid fields (422)


@dataclass(frozen=True, slots=True)
class MessageRequest:
    """One message as asked, before intake: ``pointer`` locates it in the body."""

    pointer: str
    to: str
    source: str
    text: str
    channel: str = "sms"
    traffic: str | None = None  # None: the account's default (rules), else alert
    validity: float | None = None  # seconds from acceptance
    send_at: float | None = None  # UNIX time
    callback_url: str | None = None
    client_ref: str | None = None


@dataclass(frozen=True, slots=True)
class PostRequest:
    messages: list[MessageRequest]
    batch: bool  # the body was {"messages": [...]}
    fingerprint: str  # the body's canonical JSON, hashed: what an Idempotency-Key binds to


def parse_duration_field(value: object) -> float | None:
    """Seconds from a positive number of seconds or an ISO 8601 duration ("PT1H30M",
    "P2D"); None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _ISO_DURATION.fullmatch(value)
        if m is None or value in ("P", "PT") or value.endswith("T"):
            return None
        units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
        seconds = sum(float(n) * units[u] for u, n in m.groupdict().items() if n)
    else:
        return None
    return seconds if math.isfinite(seconds) and 0 < seconds <= MAX_VALIDITY else None


def parse_rfc3339(value: object) -> float | None:
    """UNIX time from an RFC 3339 date-time with its offset ("2026-12-01T10:00:00Z")."""
    if not isinstance(value, str) or not 20 <= len(value) <= 40 or value[10:11] not in "Tt":
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def check_idempotency_key(key: str) -> str | None:
    """What is wrong with an Idempotency-Key header value, or None if it is usable."""
    if _IDEMPOTENCY_KEY.fullmatch(key) is None:
        return "Idempotency-Key: expected 1 to 255 printable ASCII characters without spaces"
    return None


def _url_problem(value: str) -> str | None:
    if len(value) > MAX_URL:
        return f"expected a URL of at most {MAX_URL} characters"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "expected an http or https URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected an absolute http:// or https:// URL with a host"
    if any(c.isspace() or not c.isprintable() for c in value):
        return "expected a URL without spaces or control characters"
    return None


def _message(obj: object, pointer: str, errors: list[FieldError]) -> MessageRequest | None:
    if not isinstance(obj, dict):
        errors.append(FieldError(pointer, "expected a message object with to, from and text"))
        return None
    before = len(errors)

    def bad(name: str, detail: str) -> None:
        errors.append(FieldError(f"{pointer}/{name}", f"{name}: {detail}"))

    for name in obj:
        if name not in MESSAGE_FIELDS:
            errors.append(FieldError(f"{pointer}/{name}", f"unknown field {name!r}: a message "
                                     f"has the fields {', '.join(MESSAGE_FIELDS)}"))
    for name in REQUIRED:
        if name not in obj:
            bad(name, "required field missing")
    to, source, text = obj.get("to"), obj.get("from"), obj.get("text")
    if "to" in obj and (not isinstance(to, str) or not _TO.fullmatch(to)):
        bad("to", "expected the recipient's number in international form, 1 to 20 digits, "
                  'optionally after a "+" (e.g. "33612345678")')
    if "from" in obj and (not isinstance(source, str) or not 1 <= len(source) <= 20):
        bad("from", 'expected the sender: a number (e.g. "33612345678") or a name of 1 to 11 '
                    'characters (e.g. "ACME")')
    if "text" in obj and (not isinstance(text, str) or not 1 <= len(text) <= MAX_TEXT):
        bad("text", f"expected a non-empty string of at most {MAX_TEXT} characters")
    channel = obj.get("channel", "sms")
    if channel not in CHANNELS:
        bad("channel", "expected one of " + ", ".join(f'"{c}"' for c in CHANNELS))
    traffic = obj.get("traffic")
    if "traffic" in obj and traffic not in TRAFFIC:
        bad("traffic", 'expected "alert" (transactional) or "marketing"')
    validity = None
    if "validity" in obj:
        validity = parse_duration_field(obj["validity"])
        if validity is None:
            bad("validity", f"expected seconds (1 to {MAX_VALIDITY}) or an ISO 8601 duration "
                            'of days, hours, minutes, seconds (e.g. "PT4H", "P1DT12H")')
    send_at = None
    if "send_at" in obj:
        send_at = parse_rfc3339(obj["send_at"])
        if send_at is None:
            bad("send_at", 'expected an RFC 3339 date-time with its offset, e.g. '
                           '"2026-12-01T10:00:00Z"')
    callback_url = obj.get("callback_url")
    if callback_url is not None:
        problem = (_url_problem(callback_url) if isinstance(callback_url, str)
                   else "expected an http or https URL")
        if problem is not None:
            bad("callback_url", problem)
    client_ref = obj.get("client_ref")
    if client_ref is not None and (not isinstance(client_ref, str)
                                   or len(client_ref) > MAX_CLIENT_REF):
        bad("client_ref", f"expected a string of at most {MAX_CLIENT_REF} characters")
    if len(errors) > before:
        return None
    assert isinstance(to, str) and isinstance(source, str) and isinstance(text, str)
    return MessageRequest(pointer, to, source, text, channel, traffic, validity, send_at,
                          callback_url, client_ref)


def parse_post(raw: bytes, max_batch: int) -> PostRequest:
    """The messages of a POST /v1/messages body: one message object, or
    ``{"messages": [...]}`` with 1 to max_batch of them. Raises RequestError."""
    try:
        body: Any = json.loads(raw)
    except (ValueError, RecursionError):
        raise RequestError([FieldError("", "the body is not JSON: send a JSON object, e.g. "
                                           '{"to": "33612345678", "from": "ACME", '
                                           '"text": "Hello"}')], syntax=True) from None
    if not isinstance(body, dict):
        raise RequestError([FieldError("", "expected a JSON object: one message, or "
                                           '{"messages": [...]} for a batch')])
    errors: list[FieldError] = []
    batch = "messages" in body
    if batch:
        items = body["messages"]
        extra = [k for k in body if k != "messages"]
        for name in extra:
            errors.append(FieldError(f"/{name}", f"unknown field {name!r}: a batch has only "
                                                 "the field messages"))
        if not isinstance(items, list) or not 1 <= len(items) <= max_batch:
            errors.append(FieldError("/messages", f"messages: expected an array of 1 to "
                                                  f"{max_batch} message objects"))
            raise RequestError(errors)
        found = [_message(item, f"/messages/{i}", errors) for i, item in enumerate(items)]
    else:
        found = [_message(body, "", errors)]
    if errors:
        raise RequestError(errors)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    fingerprint = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    return PostRequest([m for m in found if m is not None], batch, fingerprint)
