"""Prometheus metrics of the gateway: one place defines every series the daemon exports.

Counters are labelled by the things operators page on: connector, status, state, account.
"""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import Counter, Gauge

from gateway.model import State
from smpp.constants import Status

ACCEPTED = Counter("smsgw_messages_accepted_total", "Messages accepted from upstream",
                   ["account", "interface"])
REFUSED = Counter("smsgw_submits_refused_total", "Upstream submits refused",
                  ["account", "status"])
STATES = Counter("smsgw_message_transitions_total", "Message state transitions", ["state"])
ATTEMPTS = Counter("smsgw_submit_attempts_total", "Submit attempts to operators", ["smsc"])
SUBMIT_ERRORS = Counter("smsgw_submit_errors_total", "Operator submit_sm_resp errors",
                        ["smsc", "status"])
RECEIPTS = Counter("smsgw_operator_receipts_total", "Receipts received from operators",
                   ["smsc", "stat"])
ORPHAN_RECEIPTS = Counter("smsgw_orphan_receipts_total",
                          "Operator receipts that matched no submitted part (stored as orphans)",
                          ["smsc"])
RECEIPTS_HELD = Counter("smsgw_receipts_held_total",
                        "Receipts that arrived before their submit_sm_resp was processed")
RULE_DECISIONS = Counter("smsgw_rule_decisions_total",
                         "Decisions of the rules (rules/) on upstream messages",
                         ["rule", "outcome"])  # outcome: accept, modify, defer, reject
OPTOUT_KEYWORDS = Counter("smsgw_optout_keywords_total",
                          "MO messages that were an opt-out keyword", ["account", "keyword"])
MO = Counter("smsgw_mo_total", "MO messages received from operators", ["account"])
REPORTS_SENT = Counter("smsgw_reports_delivered_total", "Receipts/MO delivered upstream",
                       ["account", "kind"])
UPSTREAM_BINDS = Gauge("smsgw_upstream_binds", "Bound upstream sessions", ["account", "mode"])
BIND_FAILURES = Counter("smsgw_bind_failures_total", "Upstream binds refused, by reason",
                        ["reason"])  # unknown_account, bad_password, locked_out, max_binds
BIND_LOCKOUTS = Counter("smsgw_bind_lockouts_total",
                        "Source addresses locked out after repeated failed binds")
HTTP_AUTH_FAILURES = Counter("smsgw_http_auth_failures_total",
                             "HTTP API requests refused for a bearer token no account has")
BIND_VERIFICATIONS = Counter("smsgw_bind_verifications_total",
                             "Bind password checks: scrypt run, or answered from the cache",
                             ["how"])
SMSC_BINDS = Gauge("smsgw_smsc_binds", "Bound operator sessions", ["smsc"])
CONNECTIONS_REFUSED = Counter("smsgw_connections_refused_total",
                              "Upstream connections closed at accept: over a limit",
                              ["listener", "reason"])
LIVE = Gauge("smsgw_unfinished_messages", "Messages not yet in a final state")
REPORTS_PENDING = Gauge("smsgw_reports_pending",
                        "Receipts/MO stored and not yet delivered upstream", ["account"])
REPORTS_EXPIRED = Counter("smsgw_reports_expired_total",
                          "Receipts/MO deleted undelivered after the report expiry",
                          ["account", "kind"])
UNANSWERED_UNBINDS = Counter("smsgw_upstream_unanswered_unbinds_total",
                             "Upstream binds closed for leaving a deliver_sm unanswered",
                             ["account"])
STORE_FAILURES = Counter("smsgw_store_failures_total", "Store reads/writes that failed",
                         ["operation"])
STORE_BUSY = Counter("smsgw_store_busy_total",
                     "New messages refused by the store (write queue over its bound, or the "
                     "unfinished messages at their cap)", ["reason"])

M = TypeVar("M", Counter, Gauge)
_children: dict[tuple[int, tuple[str, ...]], Counter | Gauge] = {}


def child(metric: M, *labels: str) -> M:
    """metric.labels(*labels), cached: the per-message paths pay one dict lookup instead of
    prometheus-client's label handling. Only for label values from a bounded set."""
    key = (id(metric), labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found  # type: ignore[return-value]


_KNOWN_STATUSES = frozenset(int(s) for s in Status)


def status_label(status: int) -> str:
    """A command_status as a metric label: a status SMPP defines in hex, anything else a peer
    may send "other" (an SMSC must not be able to create a series per value it invents)."""
    return f"0x{status:08X}" if status in _KNOWN_STATUSES else "other"


def transition(state: State) -> None:
    child(STATES, state.value).inc()


TLS_HANDSHAKE_FAILURES = Counter("smsgw_tls_handshake_failures_total",
                                 "Upstream TLS handshakes that failed, by reason (timeout, "
                                 "certificate, protocol, closed)", ["listener", "reason"])
SMSC_TLS_FAILURES = Counter("smsgw_smsc_tls_failures_total",
                            "TLS handshakes with an operator SMSC that failed, by reason "
                            "(timeout, certificate, protocol, closed)", ["smsc", "reason"])
