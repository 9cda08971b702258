"""Screening: run the account's rules (rules/) on messages intake accepted, for SMPP and HTTP.

Turns each rule's decision into a history event (kind "rule", stored in the commit of the
message), a log line with the message id and a count by rule and outcome. Numbers and texts
are not logged (the history keeps them, erasable like the message).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import phonenumbers
import structlog

from gateway import metrics
from gateway.intake import IntakePolicy, accept_text
from gateway.model import Event, Message, OptOut
from rules.content import DuplicateRule
from rules.core import Context, Decision, Outcome, Verdict
from rules.optout import (
    START_KEYWORDS,
    STOP_KEYWORDS,
    OptOutList,
    OptOutRule,
    match_keyword,
)
from rules.recipient import parse_recipient
from rules.settings import Pipelines, RulesConfig, build_pipelines
from rules.unsubscribe import read_token
from smpp.text import TextEncodingError, alphabet, decode_text, encode_text, split

log = structlog.get_logger("gateway.rules")

MARKETING_SERVICE_TYPE = "MKT"  # SMPP service_type that marks a message as marketing
SHORT_CODE_DIGITS = 8  # a confirmation sent from a number this short goes as a short code


class SmppTextCodec:
    """rules.core.TextCodec over smpp.text (rules/ does not import smpp/ itself)."""

    def decode(self, body: bytes, data_coding: int) -> str | None:
        if alphabet(data_coding) == "binary":
            return None
        return decode_text(body, data_coding)

    def encode(self, text: str) -> tuple[int, bytes]:
        return encode_text(text)

    def segments(self, body: bytes, data_coding: int) -> int:
        try:
            return len(split(body, data_coding))
        except TextEncodingError:
            return 0


CODEC = SmppTextCodec()


def mask(msisdn: str) -> str:
    """A number for the logs: its last 4 digits hidden."""
    return msisdn[:-4] + "XXXX" if len(msisdn) > 4 else "XXXX"


class SentIndex:
    """The fingerprints of the messages the duplicates rule let through, for its lookups:
    those stored (loaded from the store at start, then added as their commits are done) and
    those being stored (pending: refused again if their commit fails). Kept for ``window``
    seconds, at most ``max_entries`` (the oldest forgotten first)."""

    def __init__(self, window: float, max_entries: int) -> None:
        self.window, self.max_entries = window, max_entries
        self.stored: OrderedDict[bytes, tuple[float, str]] = OrderedDict()  # oldest first
        self.pending: dict[bytes, Message] = {}

    def find(self, key: bytes) -> tuple[float, str] | None:
        msg = self.pending.get(key)
        if msg is not None:
            return msg.created_at, msg.id
        return self.stored.get(key)

    def add(self, key: bytes, at: float, message_id: str) -> None:
        self.stored[key] = (at, message_id)
        self.stored.move_to_end(key)
        while self.stored:  # forget what left the window, and the oldest beyond the bound
            oldest, (first, _) = next(iter(self.stored.items()))
            if first > at - self.window and len(self.stored) <= self.max_entries:
                break
            del self.stored[oldest]

    def settle(self, messages: Iterable[Message], stored: bool) -> None:
        for msg in messages:
            if msg.fingerprint is None:
                continue
            if self.pending.get(msg.fingerprint) is msg:
                del self.pending[msg.fingerprint]
            if stored:
                self.add(msg.fingerprint, msg.created_at, msg.id)


class Screening:
    """Each account's rule pipeline, and the bookkeeping of its decisions."""

    def __init__(self, config: RulesConfig) -> None:
        self.pipelines: Pipelines = build_pipelines(config)
        self.optouts = OptOutList()  # loaded from the store by the daemon
        self._next: Screening | None = None  # a reload's new rules, until apply()
        duplicates = [rule for pipeline in self.pipelines.all() for _, rule in pipeline.rules
                      if isinstance(rule, DuplicateRule)]
        # None when no account runs the duplicates rule (nothing kept, nothing loaded)
        self.sent = SentIndex(max(r.window for r in duplicates),
                              max(r.max_entries for r in duplicates)) if duplicates else None

    def reconfigure(self, config: RulesConfig) -> SentIndex | None:
        """Prepare a reload of the rules: the new pipelines are built now (a plug-in rule that
        fails to load raises ConfigError here, nothing changed). Returns the new duplicates
        index to fill from the store before ``apply``, or None when the running one (or
        none) serves: ``apply`` then swaps the pipelines in."""
        new = Screening(config)
        self._next = new
        if new.sent is None or (self.sent is not None and (self.sent.window, self.sent.max_entries)
                                == (new.sent.window, new.sent.max_entries)):
            return None
        return new.sent

    def apply(self) -> None:
        """Swap in what ``reconfigure`` prepared. The messages being stored keep their place
        in the duplicates index (they are settled against the new one)."""
        new = self._next
        if new is None:
            return
        self._next = None
        self.pipelines = new.pipelines
        if new.sent is None:
            self.sent = None
        elif self.sent is None or (self.sent.window, self.sent.max_entries) \
                != (new.sent.window, new.sent.max_entries):
            if self.sent is not None:
                new.sent.pending.update(self.sent.pending)
            self.sent = new.sent

    def load_sent(self, rows: Iterable[tuple[bytes, float, str]]) -> None:
        """The fingerprints of the messages stored within the duplicates window (the store's
        ``fingerprints``), oldest first: the daemon reads them at start."""
        if self.sent is not None:
            for key, at, message_id in rows:
                self.sent.add(key, at, message_id)

    def settle(self, messages: Iterable[Message], stored: bool) -> None:
        """The end of the messages ``check`` let through: committed to the store (``stored``;
        the duplicates rule then finds them), or not kept after all (refused by the batch,
        the store, the account's limits: they are no longer "sent"). Call it once for each,
        whatever happens; the ids must be final."""
        if self.sent is not None:
            self.sent.settle(messages, stored)

    def load_optouts(self, entries: Sequence[OptOut]) -> None:
        for entry in entries:
            self.optouts.set(entry.account, entry.msisdn, entry.opted_out)

    def replace_optouts(self, entries: Sequence[OptOut]) -> None:
        """Every list read again from the store (another node's changes may have been
        missed): what it holds replaces what is in memory."""
        fresh = OptOutList()
        for entry in entries:
            fresh.set(entry.account, entry.msisdn, entry.opted_out)
        self.optouts = fresh

    def check(self, msg: Message, now: float, interface: str, service_type: str = "",
              traffic: str | None = None) -> Verdict:
        """Apply the account's rules to ``msg`` (changed in place); nothing is logged or
        counted until ``record``, once the message ids are final. ``traffic``: what the
        upstream asked (HTTP); else SMPP's service_type or the account's default decide.
        A message let through must then be ``settle``d (stored or not)."""
        pipeline, settings = self.pipelines.of(msg.account)
        msg.traffic = self.traffic(settings, service_type, traffic)
        sent = self.sent
        context = Context(now, msg.account, interface, service_type, settings,
                          self.optouts.contains, CODEC, None if sent is None else sent.find)
        verdict = pipeline.run(msg, context)
        if sent is not None and verdict.rejected is None and msg.fingerprint is not None:
            sent.pending[msg.fingerprint] = msg  # until settle() says whether it was kept
        return verdict

    def recheck(self, msg: Message) -> int | None:
        """When a deferred or scheduled message falls due: the command_status to refuse it
        with (ESME_RX_R_APPN) if its recipient opted out meanwhile and its account's optout
        scope covers it (the opt-out wins), else None. Only for accounts running ``optout``."""
        pipeline, settings = self.pipelines.of(msg.account)
        if "optout" not in pipeline.names:
            return None
        decision = OptOutRule({}).apply(msg, Context(0.0, msg.account, settings=settings,
                                                     opted_out_of=self.optouts.contains))
        if decision.rejected_status is None:
            return None
        metrics.child(metrics.RULE_DECISIONS, "optout", "reject").inc()
        log.info("rule.decision", message_id=msg.id, account=msg.account, rule="optout",
                 outcome="reject", reason=decision.reason, detail="opted out while deferred")
        return decision.rejected_status

    @staticmethod
    def traffic(settings: Mapping[str, Any], service_type: str, asked: str | None) -> str:
        """"marketing" or "alert": as asked, else marketing when the SMPP service_type is
        the account's marketing_service_type ("MKT"), else the account's default."""
        if asked is not None:
            return asked
        marker = settings.get("marketing_service_type", MARKETING_SERVICE_TYPE)
        if service_type and service_type.strip().upper() == marker.upper():
            return "marketing"
        return str(settings.get("traffic", "alert"))

    def mo_keyword(self, account: str, source_addr: str, source_ton: int, text: str,
                   now: float) -> tuple[str, OptOut] | None:
        """An MO to ``account``: ("stop" | "start", the opt-out entry to store) when its text
        is a keyword, else None. The entry is applied to the in-memory list at once."""
        _, settings = self.pipelines.of(account)
        kind = match_keyword(text, settings.get("stop_keywords", STOP_KEYWORDS),
                             settings.get("start_keywords", START_KEYWORDS))
        if kind is None:
            return None
        number, _ = parse_recipient(source_addr, source_ton, settings.get("region"))
        msisdn = (phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]
                  if number is not None else source_addr.removeprefix("+"))
        return kind, OptOut(account, msisdn, kind == "stop", now, "mo")

    def normalise_msisdn(self, account: str, text: str) -> str | None:
        """A number typed by a person (spaces, dots, '+', national form in the account's
        region) as E.164 digits; None when it is not a valid number."""
        _, settings = self.pipelines.of(account)
        cleaned = "".join(c for c in text if c not in " .-()/\t")
        number, _ = parse_recipient(cleaned, 0, settings.get("region"))
        if number is None:
            return None
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]

    def read_unsubscribe(self, token: str, accounts: Iterable[str]) -> tuple[str, str] | None:
        """(account, msisdn) of an unsubscribe link's token signed with that account's
        unsubscribe_secret; None if it is not one."""
        return read_token(token, accounts,
                          lambda a: self.pipelines.of(a)[1].get("unsubscribe_secret"))

    def optouts_stored(self, entries: Sequence[OptOut]) -> None:
        """Entries committed to the store: the in-memory list follows, and they are logged
        (the number masked) and counted."""
        for entry in entries:
            self.optouts.set(entry.account, entry.msisdn, entry.opted_out)
            kind = "stop" if entry.opted_out else "start"
            if entry.source == "mo":
                metrics.child(metrics.OPTOUT_KEYWORDS, entry.account, kind).inc()
            log.info("optout.changed", account=entry.account, opted_out=entry.opted_out,
                     msisdn=mask(entry.msisdn), source=entry.source)

    def confirmation(self, entry: OptOut, short_code: str, now: float,
                     validity: float) -> Message | None:
        """The message confirming a STOP to the number, sent by its account from the number
        the reply went to (None when the account has no optout_confirmation text, for the
        phone's country when it is a table). It is
        alert traffic and does not go through the rules: the recipient just opted out."""
        _, settings = self.pipelines.of(entry.account)
        text = settings.get("optout_confirmation")
        if isinstance(text, dict):  # per country of the phone
            try:
                phone = phonenumbers.parse("+" + entry.msisdn)
                country = phonenumbers.region_code_for_number(phone) or "default"
            except phonenumbers.NumberParseException:
                country = "default"
            text = text.get(country, text.get("default"))
        if not text or not entry.opted_out:
            return None
        digits = short_code.removeprefix("+")
        msg = accept_text(entry.account, digits, entry.msisdn, str(text), now,
                          IntakePolicy(validity))
        if len(digits) <= SHORT_CODE_DIGITS:
            msg.source_ton, msg.source_npi = 3, 0  # a short code
        msg.origin = "rules"
        msg.registered_delivery = 0  # the account did not submit it: no receipt owed
        return msg

    def record(self, verdicts: Sequence[Verdict], now: float) -> list[Event]:
        """Log and count every decision; the history events of the messages that are kept
        (those of rejected messages are not stored: their submit is refused)."""
        events: list[Event] = []
        for verdict in verdicts:
            msg = verdict.message
            for decision in verdict.decisions:
                _note(msg, decision)
                if verdict.rejected is None:
                    events.append(Event(msg.id, now, "rule", None, None, decision.json()))
        return events


def _note(msg: Message, decision: Decision) -> None:
    metrics.child(metrics.RULE_DECISIONS, decision.rule, decision.outcome.value).inc()
    if decision.outcome is Outcome.ACCEPT:
        return
    log.info("rule.decision", message_id=msg.id, account=msg.account, rule=decision.rule,
             outcome=decision.outcome.value, reason=decision.reason or None,
             changed=[c.field for c in decision.changes] or None, until=decision.until,
             detail=decision.detail or None)
