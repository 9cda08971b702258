"""Logging: structlog configured to write one JSON object per line to stdout (journald).

Every module logs through `structlog.get_logger(name)`; events are short dotted names
("message.final") with key/value context. `redact`, the last processor before rendering,
masks phone numbers, withholds message text and bounds the length of every value.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TextIO

import phonenumbers
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}

# Fields that carry a phone number: these names, and any name ending in one of the suffixes.
PHONE_FIELDS = frozenset({
    "to", "from", "from_", "dest", "destination", "destination_addr", "dest_addr",
    "source_addr", "addr", "address", "msisdn", "number", "phone", "recipient", "sender",
})
PHONE_SUFFIXES = ("_addr", "_address", "_addresses", "_number", "_numbers", "_msisdn")
# Fields that carry message text (or a receipt text, which quotes the message) or an object
# that holds one: only their length is logged.
TEXT_FIELDS = frozenset({
    "text", "body", "short_message", "message_payload", "payload", "raw", "content",
    "message", "message_text", "pdu", "udh",
})
MAX_CHARS = 256  # characters kept of any string value
MAX_EXCEPTION_CHARS = 4096  # of a formatted traceback: its first and last halves
MAX_ITEMS = 32  # entries kept of a list or mapping value
MAX_DEPTH = 4  # nesting followed into lists and mappings
_ALPHANUMERIC_MAX = 11  # an alphanumeric sender id (SMPP TON 5) has at most 11 characters
_NUMBER_MAX = 64  # characters of a phone number field looked at (SMPP addresses have <= 20)

_Shaper = Callable[[Any, int], Any]  # (value, depth) -> what is logged
_SCALARS = (int, float, bool)


def configure(level: str = "info", *, file: TextIO | None = None, cache: bool = True) -> None:
    """JSON lines to ``file`` (stdout by default) at ``level`` and above. ``cache=False``
    lets a later configure() take effect for loggers already used (tests)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout if file is None else file),
        cache_logger_on_first_use=cache,
    )


class LevelGate:
    """Whether a module's logger logs `level` at all, told cheaply on a hot path: when loggers
    are cached on first use (the daemon's configuration), structlog replaces the lazy proxy's
    `bind` by one returning its cached logger, so once that logger was found to drop the level,
    an identity test on `bind` says so without the proxy's __getattr__ and a bind per call.
    Uncached (tests) every access is a new bound method: each call asks, and a
    reconfiguration takes effect at once."""

    __slots__ = ("level", "logger", "quiet")

    def __init__(self, logger: Any, level: int) -> None:
        self.logger = logger
        self.level = level
        self.quiet: object = None  # the proxy's bind once it gave a logger dropping `level`

    def bound(self) -> Any | None:
        """The bound logger to log with, or None when the level is dropped."""
        bind = self.logger.bind
        if bind is self.quiet:
            return None
        bound = bind()
        enabled = getattr(bound, "is_enabled_for", None)
        if enabled is not None and not enabled(self.level):
            self.quiet = bind
            return None
        return bound


def redact(logger: object, method: str, event_dict: MutableMapping[str, Any]
           ) -> MutableMapping[str, Any]:
    """The structlog processor: phone number fields masked (see `mask_number`), message text
    fields replaced by their length, every value bounded (strings to MAX_CHARS, lists and
    mappings to MAX_ITEMS, MAX_DEPTH levels), each cut marked as such."""
    for key, value in event_dict.items():
        if field_kind(key) == "other":  # the usual case, kept cheap: a short string or a number
            if type(value) is str:
                if len(value) > MAX_CHARS:
                    event_dict[key] = (_cut_middle(value, MAX_EXCEPTION_CHARS)
                                       if key == "exception" else _cut(value))
                continue
            if value is None or type(value) in _SCALARS:
                continue
        event_dict[key] = _field(key, value, 0)
    return event_dict


def mask_number(number: str) -> str:
    """A phone number reduced to its country code and its last two digits ("+44***23"); the
    last two digits alone when no country code can be told ("***23"). A value without digits,
    or an alphanumeric sender id (a letter, at most 11 characters), is not a number: kept."""
    digits = "".join(str(int(c)) for c in number[-_NUMBER_MAX:] if c.isdecimal())
    if not digits or (len(number) <= _ALPHANUMERIC_MAX and any(c.isalpha() for c in number)):
        return _cut(number)
    tail = digits[-2:] if len(digits) > 2 else ""
    if len(number) > _NUMBER_MAX:  # not a phone number, and too long to be parsed
        return f"***{tail}"
    try:
        parsed = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        return f"***{tail}"
    if not phonenumbers.is_possible_number(parsed):
        return f"***{tail}"
    return f"+{parsed.country_code}***{tail}"


@functools.lru_cache(maxsize=1024)
def field_kind(key: object) -> str:
    """"text", "phone" or "other": what a field of that name carries."""
    name = str(key).lower()
    if name in TEXT_FIELDS:
        return "text"
    if name in PHONE_FIELDS or name.endswith(PHONE_SUFFIXES):
        return "phone"
    return "other"


def _field(key: object, value: Any, depth: int, other: _Shaper | None = None) -> Any:
    """``value`` as logged under ``key``; ``other`` shapes the value of any other key
    (a phone number's, within a mapping logged under a phone number field)."""
    kind = field_kind(key)
    if kind == "text":
        return _withheld(value)
    if kind == "phone":
        return _phone(value, depth)
    return (other or _bound)(value, depth)


def _withheld(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        return f"<{len(value)} characters withheld>"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} octets withheld>"
    return "<withheld>"


def _phone(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return mask_number(value)
    if isinstance(value, int):
        return mask_number(str(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return mask_number(bytes(value).decode("latin-1"))
    if isinstance(value, Mapping):
        return _mapping(value, depth, _phone)
    if isinstance(value, list | tuple | set | frozenset):
        return _items(value, depth, _phone)
    return mask_number(str(value))


def _bound(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        shown = data[: MAX_CHARS // 2].hex()
        if len(data) <= MAX_CHARS // 2:
            return shown
        return f"{shown}...[truncated: {len(data) - MAX_CHARS // 2} more octets]"
    if isinstance(value, Mapping):
        return _mapping(value, depth, _bound)
    if isinstance(value, list | tuple | set | frozenset):
        return _items(value, depth, _bound)
    if dataclasses.is_dataclass(value):  # a Message, Report or PDU: numbers and text inside
        return f"<{type(value).__name__} withheld>"
    return _cut(repr(value))


def _mapping(value: Mapping[Any, Any], depth: int, other: _Shaper) -> Any:
    if depth >= MAX_DEPTH:
        return "<nested too deep>"
    out: dict[str, Any] = {}
    for n, (key, item) in enumerate(value.items()):
        if n == MAX_ITEMS:
            out["..."] = f"[{len(value) - MAX_ITEMS} more entries]"
            break
        out[_cut(str(key), 64)] = _field(key, item, depth + 1, other)
    return out


def _items(value: list[Any] | tuple[Any, ...] | set[Any] | frozenset[Any], depth: int,
           each: _Shaper) -> Any:
    if depth >= MAX_DEPTH:
        return "<nested too deep>"
    out = [each(item, depth + 1) for item in itertools.islice(value, MAX_ITEMS)]
    if len(value) > MAX_ITEMS:
        out.append(f"[{len(value) - MAX_ITEMS} more items]")
    return out


def _cut(text: str, limit: int = MAX_CHARS) -> str:
    """``text`` kept to ``limit`` characters, with a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[truncated: {len(text) - limit} more characters]"


def _cut_middle(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n...[truncated: {len(text) - 2 * half} characters]...\n{text[-half:]}"
