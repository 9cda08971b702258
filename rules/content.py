"""Content checks: URLs in the text against a deny list and a URL-shortener policy
(anti-smishing), a maximum SMS count per message, and duplicate suppression (the same text to
the same recipient from the same account within a window is sent once).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.model import Message
from rules.core import ESME_RINVMSGLEN, ESME_RX_R_APPN, Context, Decision

# Public URL shorteners: a link through them hides where it goes.
SHORTENERS = frozenset({
    "bit.ly", "bitly.com", "tinyurl.com", "t.co", "goo.gl", "ow.ly", "is.gd", "buff.ly",
    "cutt.ly", "rebrand.ly", "shorturl.at", "tiny.cc", "rb.gy", "t.ly", "s.id", "v.gd",
    "bl.ink", "short.io", "lnkd.in", "shorte.st", "adf.ly", "tiny.one", "urlz.fr", "snip.ly",
})
# A URL: a scheme, or "www.", or a bare host name with a known-looking top-level domain and a
# path ("bit.ly/x"); the host is what the checks look at.
_URL = re.compile(
    r"(?:(?:https?|ftp)://|www\.)(?P<host>[^\s/:?#]+)"
    r"|(?<![@\w.-])(?P<bare>(?:[a-z0-9-]+\.)+[a-z]{2,})(?=/)",
    re.IGNORECASE)


def hosts(text: str) -> list[str]:
    """The host of every URL in ``text``, lower case, without "www." and a trailing dot."""
    found = []
    for m in _URL.finditer(text):
        host = (m.group("host") or m.group("bare")).lower().rstrip(".")
        if m.group(0).lower().startswith("www."):
            host = "www." + host
        found.append(host.removeprefix("www."))
    return found


def _matches(host: str, domains: Iterable[str]) -> str | None:
    """The listed domain ``host`` is or is under, if any."""
    for domain in domains:
        if host == domain or host.endswith("." + domain):
            return domain
    return None


def _domains(options: Mapping[str, Any], key: str) -> frozenset[str]:
    value = options.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{key}: expected an array of domain names")
    return frozenset(v.lower().removeprefix("www.") for v in value)


def _text(message: Message, context: Context) -> str | None:
    if context.codec is None or message.esm_class & 0x40:
        return None
    return context.codec.decode(message.body, message.data_coding)


class UrlRule:
    """Built-in rule ``urls``. Options: ``deny`` (domains refused, with their subdomains),
    ``shorteners`` ("reject", default, or "allow"), ``allow`` (domains always accepted, e.g.
    the account's own short links; checked first)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"deny", "shorteners", "allow"}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r} (expected: deny, "
                             "shorteners, allow)")
        self.deny = _domains(options, "deny")
        self.allow = _domains(options, "allow")
        policy = options.get("shorteners", "reject")
        if policy not in ("reject", "allow"):
            raise ValueError(f'shorteners: expected "reject" or "allow", got {policy!r}')
        self.reject_shorteners = policy == "reject"

    def apply(self, message: Message, context: Context) -> Decision:
        text = _text(message, context)
        if text is None:
            return Decision.accept()
        found = hosts(text)
        for host in found:
            if _matches(host, self.allow):
                continue
            denied = _matches(host, self.deny)
            if denied is not None:
                return Decision.reject("denied-url", f"the text links to {host}, a denied "
                                       f"domain ({denied})", smpp_status=ESME_RX_R_APPN,
                                       http_status=422, subject="text", url_host=host)
            if self.reject_shorteners and _matches(host, SHORTENERS):
                return Decision.reject("url-shortener", f"the text links through the URL "
                                       f"shortener {host}: link to the destination itself",
                                       smpp_status=ESME_RX_R_APPN, http_status=422,
                                       subject="text", url_host=host)
        return Decision.accept(urls=len(found)) if found else Decision.accept()


class SegmentsRule:
    """Built-in rule ``segments``: refuses a message that takes more SMS than ``max``
    (option; default 3), counted as sent (after the STOP mention when ``mention`` runs
    first); the account's setting ``max_segments`` overrides it."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"max"}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r} (expected: max)")
        limit = options.get("max", 3)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 255:
            raise ValueError(f"max: expected an integer from 1 to 255, got {limit!r}")
        self.max = limit

    def apply(self, message: Message, context: Context) -> Decision:
        if context.codec is None:
            return Decision.accept()
        count = context.codec.segments(message.body, message.data_coding)
        limit = int(context.setting("max_segments", self.max))
        if count > limit:
            return Decision.reject("too-many-segments", f"the text takes {count} SMS: the "
                                   f"account allows {limit}", smpp_status=ESME_RINVMSGLEN,
                                   http_status=422, subject="text", segments=count)
        return Decision.accept(segments=count)


def fingerprint(message: Message) -> bytes:
    """What makes two messages the same for the duplicates rule: account, recipient (as
    written then: normalised after the recipient rule) and text, as 16 octets of SHA-256."""
    return hashlib.sha256(b"\0".join((
        message.account.encode(), message.dest_addr.encode(),
        message.data_coding.to_bytes(1, "big"), message.body))).digest()[:16]


class DuplicateRule:
    """Built-in rule ``duplicates``: the same text to the same (normalised: run it after
    ``recipient``) number from the same account within ``window`` seconds (option; default
    600) is refused as a duplicate, naming the first message. The message's fingerprint is
    kept on it (a fact the pipeline records; the gateway stores it with the message), and the
    gateway answers ``context.sent`` from the messages stored or being stored: a message
    refused by a later rule is not counted, and a restart forgets nothing. At most
    ``max_entries`` (default 100,000) fingerprints are kept in the gateway's memory, the
    oldest forgotten first."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"window", "max_entries"}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r} (expected: window, "
                             "max_entries)")
        window = options.get("window", 600)
        if not isinstance(window, int | float) or isinstance(window, bool) or window <= 0:
            raise ValueError(f"window: expected a positive number of seconds, got {window!r}")
        entries = options.get("max_entries", 100_000)
        if not isinstance(entries, int) or isinstance(entries, bool) or entries < 1:
            raise ValueError(f"max_entries: expected a positive integer, got {entries!r}")
        self.window, self.max_entries = float(window), entries

    def apply(self, message: Message, context: Context) -> Decision:
        key = fingerprint(message)
        now = context.now
        first = None if context.sent is None else context.sent(key)
        if first is not None and first[0] > now - self.window:
            return Decision.reject(
                "duplicate", f"the same text went to this number {now - first[0]:.0f} s ago "
                f"as message {first[1]}: sent once (window {self.window:g} s)",
                smpp_status=ESME_RX_R_APPN, http_status=409, subject="text",
                first_message=first[1])
        return Decision.accept(fingerprint=key)
