"""The rules engine's vocabulary and its pipeline: Rule, Decision, Context, Pipeline.

A rule looks at one message (never a PDU) and returns a Decision: accept, modify (each changed
field with its old and new value), defer (until when, why) or reject (a reason code with the
SMPP command_status and HTTP status it maps to). A Pipeline runs an account's rules in order.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from gateway.model import Message, State

# SMPP command_status values the built-in rules answer with (SMPP 3.4, section 5.1.3). Spelled
# here so that rules/ does not import the smpp package; tests check them against smpplib's.
ESME_RINVSRCADR = 0x0000000A
ESME_RINVDSTADR = 0x0000000B
ESME_RINVMSGLEN = 0x00000001
ESME_RX_R_APPN = 0x00000066  # ESME receiver reject message error (a policy refusal)
ESME_RSYSERR = 0x00000008

# Fields a rule may change: what the message says and to whom, not its bookkeeping.
MODIFIABLE = frozenset({
    "source_addr", "source_ton", "source_npi", "dest_addr", "dest_ton", "dest_npi",
    "data_coding", "body", "traffic", "channel",
})

# Facts a rule may report (Decision.facts) that are recorded on the message itself when it is
# kept: the recipient's number type and country (for routers and the message's views), and the
# duplicates rule's fingerprint of the message (kept on its row, not in its history).
RECORDED = frozenset({"number_type", "country", "fingerprint"})
_UNLOGGED = frozenset({"fingerprint"})  # facts left out of the history (the row has it)


class Outcome(enum.StrEnum):
    ACCEPT = "accept"
    MODIFY = "modify"
    DEFER = "defer"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Change:
    """One field a rule changed, with its value before and after."""

    field: str
    old: Any
    new: Any

    def json(self) -> dict[str, object]:
        return {"field": self.field, "old": _jsonable(self.old), "new": _jsonable(self.new)}


def _jsonable(value: Any) -> object:
    if isinstance(value, bytes):
        return value.hex()
    return value


@dataclass(frozen=True, slots=True)
class Decision:
    """What one rule decided about one message. Build it with the class methods."""

    outcome: Outcome
    rule: str = ""  # filled in by the pipeline with the rule's configured name
    reason: str = ""  # a stable code, e.g. "invalid-recipient", "forbidden-sender"
    detail: str = ""  # for people: what and why (never a phone number or the text)
    changes: tuple[Change, ...] = ()
    until: float | None = None  # defer: UNIX time the message may go
    smpp_status: int = 0  # reject: the command_status the SMPP upstream gets
    http_status: int = 0  # reject: the HTTP status of the problem the HTTP upstream gets
    facts: Mapping[str, object] = field(default_factory=dict)  # e.g. number type, country
    subject: str = ""  # reject: what it is about: "recipient", "sender" or "text"

    @classmethod
    def accept(cls, detail: str = "", **facts: object) -> Decision:
        return cls(Outcome.ACCEPT, detail=detail, facts=facts)

    @classmethod
    def modify(cls, changes: Sequence[Change], detail: str = "", **facts: object) -> Decision:
        if not changes:
            return cls.accept(detail, **facts)
        return cls(Outcome.MODIFY, detail=detail, changes=tuple(changes), facts=facts)

    @classmethod
    def defer(cls, until: float, reason: str, detail: str, **facts: object) -> Decision:
        return cls(Outcome.DEFER, reason=reason, detail=detail, until=until, facts=facts)

    @classmethod
    def reject(cls, reason: str, detail: str, *, smpp_status: int = ESME_RX_R_APPN,
               http_status: int = 422, subject: str = "", **facts: object) -> Decision:
        return cls(Outcome.REJECT, reason=reason, detail=detail, smpp_status=smpp_status,
                   http_status=http_status, facts=facts, subject=subject)

    @property
    def rejected_status(self) -> int | None:
        """The SMPP command_status of a rejection; None for any other outcome."""
        return self.smpp_status if self.outcome is Outcome.REJECT else None

    def json(self) -> dict[str, object]:
        """The decision as stored in the message's history (kind "rule")."""
        out: dict[str, object] = {"rule": self.rule, "outcome": self.outcome.value}
        if self.reason:
            out["reason"] = self.reason
        if self.detail:
            out["detail"] = self.detail
        if self.changes:
            out["changes"] = [c.json() for c in self.changes]
        if self.until is not None:
            out["until"] = self.until
        if self.outcome is Outcome.REJECT:
            out["smpp_status"] = self.smpp_status
            out["http_status"] = self.http_status
        facts = {k: _jsonable(v) for k, v in self.facts.items() if k not in _UNLOGGED}
        if facts:
            out["facts"] = facts
        return out


class TextCodec(Protocol):
    """The gateway's text encoding, for rules that read or rewrite a message's text."""

    def decode(self, body: bytes, data_coding: int) -> str | None:
        """The text of a body (None: binary data, or already segmented by the upstream)."""

    def encode(self, text: str) -> tuple[int, bytes]:
        """(data_coding, body): GSM 03.38 when every character has a code there, else
        UCS-2."""

    def segments(self, body: bytes, data_coding: int) -> int:
        """How many SMS the body takes (GSM 160/153 characters, UCS-2 70/67)."""


@dataclass(frozen=True, slots=True)
class Context:
    """What a rule may know besides the message: the time, the account's rule settings, and
    how the message came in. ``settings`` are the account's [rules] values (region, ...)."""

    now: float  # UNIX seconds
    account: str
    interface: str = "smpp"  # "smpp" or "http" (or "check" for the dry run)
    service_type: str = ""  # SMPP service_type of the submit, "" for HTTP
    settings: Mapping[str, Any] = field(default_factory=dict)
    # (account, E.164 digits) -> whether the number is on the account's opt-out list
    opted_out_of: Callable[[str, str], bool] | None = None
    codec: TextCodec | None = None
    # A message fingerprint (rules.content.fingerprint) -> (accepted at, id) of the latest
    # message kept with it (stored, or being stored), None if none is known; None: not known
    # at all (the dry run), the duplicates rule then lets every message through.
    sent: Callable[[bytes], tuple[float, str] | None] | None = None

    def setting(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    def opted_out(self, msisdn: str) -> bool:
        """Whether ``msisdn`` replied STOP to this account (and did not START again)."""
        return self.opted_out_of is not None and self.opted_out_of(self.account, msisdn)


@runtime_checkable
class Rule(Protocol):
    """A rule: ``apply`` must not change the message; it returns what it decides."""

    def apply(self, message: Message, context: Context) -> Decision: ...


# A rule factory takes the rule's options (its [rules.options.<name>] table) and returns the
# rule; a Rule class whose __init__ takes the options is one.
RuleFactory = Callable[[Mapping[str, Any]], Rule]


@dataclass(slots=True)
class Verdict:
    """The pipeline's result: every decision in order; ``rejected`` is the one that refused
    the message (the pipeline stops there), None if it may be stored."""

    message: Message
    decisions: list[Decision]
    rejected: Decision | None = None

    @property
    def deferred(self) -> bool:
        return any(d.outcome is Outcome.DEFER for d in self.decisions)


class Pipeline:
    """An account's rules in order. ``run`` applies them to a message: modifications are
    made to the message as they come (and the RECORDED facts, e.g. the number type, are set
    on it), a deferral moves its send time (its validity then counts from that time), and the
    first rejection stops the run."""

    def __init__(self, rules: Sequence[tuple[str, Rule]]) -> None:
        self.rules = tuple(rules)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.rules)

    def run(self, message: Message, context: Context) -> Verdict:
        verdict = Verdict(message, [])
        for name, rule in self.rules:
            try:
                decision = rule.apply(message, context)
            except Exception as exc:  # a broken plug-in refuses the message, visibly
                decision = Decision.reject(
                    "rule-failed", f"rule {name} failed: {type(exc).__name__}: {exc}",
                    smpp_status=ESME_RSYSERR, http_status=500)
            if not isinstance(decision, Decision):
                decision = Decision.reject(
                    "rule-failed", f"rule {name} returned {type(decision).__name__}, "
                    "expected a Decision", smpp_status=ESME_RSYSERR, http_status=500)
            bad = [c.field for c in decision.changes if c.field not in MODIFIABLE]
            if bad:
                decision = Decision.reject(
                    "rule-failed", f"rule {name} may not change {', '.join(bad)} (it may "
                    f"change: {', '.join(sorted(MODIFIABLE))})",
                    smpp_status=ESME_RSYSERR, http_status=500)
            decision = dataclasses.replace(decision, rule=name)
            verdict.decisions.append(decision)
            if decision.outcome is Outcome.REJECT:
                verdict.rejected = decision
                return verdict
            for key in RECORDED.intersection(decision.facts):
                value = decision.facts[key]
                if key == "fingerprint":
                    if isinstance(value, bytes):
                        message.fingerprint = value
                else:
                    setattr(message, key, str(value))
            if decision.outcome is Outcome.MODIFY:
                for change in decision.changes:
                    setattr(message, change.field, change.new)
            elif decision.outcome is Outcome.DEFER and decision.until is not None:
                defer(message, decision.until)
        return verdict


def defer(message: Message, until: float) -> None:
    """Move a message's send time to ``until`` (if later): it is SCHEDULED until then and its
    validity is counted from then (same length as it had from its own send time)."""
    if until <= message.not_before:
        return
    message.expires_at += until - message.not_before
    message.not_before = until
    message.next_attempt_at = until
    message.state = State.SCHEDULED

