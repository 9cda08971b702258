"""Prometheus metrics of the gateway: one place defines every series the daemon exports.

Counters are labelled by the things operators page on: connector, status, state, account.
"""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram

from gateway.model import State
from smpp.constants import Status

ACCEPTED = Counter("smsgw_messages_accepted_total", "Messages accepted from upstream",
                   ["account", "interface"])
REFUSED = Counter("smsgw_submits_refused_total", "Upstream submits refused",
                  ["account", "status"])
STATES = Counter("smsgw_message_transitions_total", "Message state transitions", ["state"])
REPLACED = Counter("smsgw_messages_replaced_total",
                   "Messages whose text or times were replaced (replace_sm) before sending",
                   ["account"])
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

WEBHOOK_ATTEMPTS = Counter("smsgw_webhook_attempts_total",
                           "Webhook POSTs, by outcome: delivered (2xx), gone (410), http_4xx, "
                           "http_5xx, http_other (1xx, 3xx), timeout, error (connection, TLS), "
                           "no_url (neither callback_url nor webhook_url)", ["account", "outcome"])
WEBHOOK_EVENTS = Counter("smsgw_webhook_events_total",
                         "Webhook events done with: delivered (2xx), gone (410: no more tries) "
                         "or expired (deleted undelivered after the report expiry)",
                         ["account", "kind", "outcome"])
WEBHOOK_LATENCY = Histogram("smsgw_webhook_latency_seconds",
                            "Time one webhook POST took, to its answer or its failure",
                            ["account"],
                            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
WEBHOOK_DELAY = Histogram("smsgw_webhook_delivery_delay_seconds",
                          "Time from a webhook event's creation to its 2xx (retries included)",
                          ["account"],
                          buckets=(0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 6 * 3600,
                                   24 * 3600, 72 * 3600))
WEBHOOKS_PENDING = Gauge("smsgw_webhooks_pending",
                         "Webhook events (receipts, MO) stored and not yet delivered",
                         ["account"])

M = TypeVar("M", Counter, Gauge, Histogram)
_children: dict[tuple[int, tuple[str, ...]], Counter | Gauge | Histogram] = {}


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
