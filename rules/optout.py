"""STOP opt-out: MO keyword matching, each account's opt-out list, and the rule ``optout``
that refuses submits to numbers on it (marketing only, or all traffic, per account).

Keywords match whatever the case, accents and spacing, with or without trailing text
("Stop", "arrêt svp", "STOP  SMS"); START / UNSTOP take the number off the list again.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.model import Message
from rules.core import ESME_RX_R_APPN, Context, Decision

STOP_KEYWORDS = ("STOP", "STOP SMS", "STOP ALL", "STOPALL", "ARRET", "ARRETER", "DESABO",
                 "DESABONNER", "DESABONNEMENT", "DESINSCRIPTION", "DESINSCRIRE",
                 "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "OPT OUT")
START_KEYWORDS = ("START", "UNSTOP", "ARRET STOP", "REABO", "SUBSCRIBE")
SCOPES = ("marketing", "all", "none")  # what an opt-out refuses, per account
_SPACES = re.compile(r"[\s\-_.,;:!?'\"()]+")


def fold(text: str) -> str:
    """Upper case, accents removed, runs of spaces and punctuation as one space."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SPACES.sub(" ", plain.upper()).strip()


def _starts_with(text: str, keyword: str) -> bool:
    return text == keyword or text.startswith(keyword + " ")


def match_keyword(text: str, stop: Iterable[str] = STOP_KEYWORDS,
                  start: Iterable[str] = START_KEYWORDS) -> str | None:
    """"stop", "start" or None for an MO text. The longest matching keyword decides, so
    "ARRET STOP" (start) wins over "ARRET" (stop)."""
    folded = fold(text)
    best: tuple[int, str] | None = None
    for kind, keywords in (("stop", stop), ("start", start)):
        for keyword in keywords:
            key = fold(keyword)
            if key and _starts_with(folded, key) and (best is None or len(key) > best[0]):
                best = (len(key), kind)
    return None if best is None else best[1]


class OptOutList:
    """Every account's opted-out numbers (E.164 digits), in memory; the store holds them
    durably and the daemon loads them at start."""

    def __init__(self) -> None:
        self._numbers: dict[str, set[str]] = {}

    def set(self, account: str, msisdn: str, opted_out: bool) -> None:
        numbers = self._numbers.setdefault(account, set())
        if opted_out:
            numbers.add(msisdn)
        else:
            numbers.discard(msisdn)

    def contains(self, account: str, msisdn: str) -> bool:
        return msisdn in self._numbers.get(account, ())

    def count(self, account: str) -> int:
        return len(self._numbers.get(account, ()))


class OptOutRule:
    """Built-in rule ``optout``: refuses a message to a number on its account's opt-out list
    when the account's ``optout`` setting covers its traffic ("marketing", default; "all";
    "none": the account manages its lists itself). Run it after ``recipient``."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        if options:
            raise ValueError(f"unknown option {sorted(options)[0]!r} (optout has none: its "
                             "settings are the account's optout and keywords)")

    def apply(self, message: Message, context: Context) -> Decision:
        scope = context.setting("optout", "marketing")
        if scope == "none" or (scope == "marketing" and message.traffic != "marketing"):
            return Decision.accept()
        if context.opted_out(message.dest_addr):
            return Decision.reject(
                "opted-out", f"the recipient replied STOP to this account: no {scope} "
                "messages to it (see smsgw optout)", smpp_status=ESME_RX_R_APPN,
                http_status=422, subject="recipient")
        return Decision.accept()
