"""Screening: run the account's rules (rules/) on messages intake accepted, for SMPP and HTTP.

Turns each rule's decision into a history event (kind "rule", stored in the commit of the
message), a log line with the message id and a count by rule and outcome. Numbers and texts
are not logged (the history keeps them, erasable like the message).
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from gateway import metrics
from gateway.model import Event, Message
from rules.core import Context, Decision, Outcome, Verdict
from rules.settings import Pipelines, RulesConfig, build_pipelines

log = structlog.get_logger("gateway.rules")


class Screening:
    """Each account's rule pipeline, and the bookkeeping of its decisions."""

    def __init__(self, config: RulesConfig) -> None:
        self.pipelines: Pipelines = build_pipelines(config)

    def check(self, msg: Message, now: float, interface: str,
              service_type: str = "") -> Verdict:
        """Apply the account's rules to ``msg`` (changed in place); nothing is logged or
        counted until ``record``, once the message ids are final."""
        pipeline, settings = self.pipelines.of(msg.account)
        return pipeline.run(msg, Context(now, msg.account, interface, service_type, settings))

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
