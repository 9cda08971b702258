"""Prometheus metrics of the gateway: one place defines every series the daemon exports.

Counters are labelled by the things operators page on: connector, status, state, account;
every label takes values from a bounded set (configured names, States, SMPP statuses).
Durations are histograms in seconds. README.md's Metrics section lists them all.
"""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram

from smpp.constants import Status

ACCEPTED = Counter("smsgw_messages_accepted_total", "Messages accepted from upstream",
                   ["account", "interface"])
REFUSED = Counter("smsgw_submits_refused_total", "Upstream submits refused",
                  ["account", "status"])
TRANSITIONS = Counter("smsgw_message_transitions_total",
                      "Message state transitions, counted when stored (from ACCEPTED: taken "
                      "from upstream)", ["from", "to"])
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
RECEIPTS_HANDED_OVER = Counter("smsgw_receipts_handed_over_total",
                               "Operator receipts taken on this node's binds for messages "
                               "another node works on, handed to it through the store",
                               ["smsc"])
ADOPTED = Counter("smsgw_messages_adopted_total",
                  "Unfinished messages this node took over from a dead node, by the state they "
                  "had (those IN_FLIGHT may reach the SMSC twice)", ["state"])
REPORTS_CLAIMED = Counter("smsgw_reports_claimed_total",
                          "Reports owed upstream this node took over from another node (left "
                          "free there: no receiver bind of the account, or that node died)",
                          ["account", "via"])
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
CONFIG_RELOADS = Counter("smsgw_config_reloads_total",
                         "Configuration reloads (SIGHUP): applied, or refused (the running "
                         "configuration kept)", ["outcome"])
CONFIG_RELOAD_OK = Gauge("smsgw_config_last_reload_successful",
                         "1 if the last configuration reload was applied (or none was asked), "
                         "0 if it was refused")
CONFIG_RELOAD_OK.set(1)
CROSS_NODE_CHANGES = Counter("smsgw_cross_node_changes_total",
                             "Cancels and replacements of messages another node works on, "
                             "asked of that node: done, refused (too late, unknown), busy "
                             "(no answer in time: try again), error", ["action", "outcome"])
CONFIG_SHARED_VERSION = Gauge("smsgw_config_shared_version",
                              "The version of the database's shared configuration this node "
                              "runs (nodes of one database: 0 until one is pushed)")
SMSC_BINDS = Gauge("smsgw_smsc_binds", "Bound operator sessions", ["smsc"])
BREAKER_STATE = Gauge("smsgw_smsc_breaker_state",
                      "Circuit breaker of each operator SMSC: 0 closed (traffic flows), 1 "
                      "half-open (probing), 2 open (skipped until its cool-down ends)", ["smsc"])
CONNECTIONS_REFUSED = Counter("smsgw_connections_refused_total",
                              "Upstream connections closed at accept: over a limit",
                              ["listener", "reason"])
UNFINISHED = Gauge("smsgw_unfinished_messages",
                   "Messages not yet in a final state, by state, as of the store's last commit",
                   ["state"])
STORE_QUEUE = Gauge("smsgw_store_queued_rows",
                    "Rows waiting for the store's writer (not committed yet)")
SMSC_QUEUE = Gauge("smsgw_smsc_queued_submits",
                   "submit_sm queued for an operator connection, not sent yet", ["smsc"])
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


TLS_HANDSHAKE_FAILURES = Counter("smsgw_tls_handshake_failures_total",
                                 "Upstream TLS handshakes that failed, by reason (timeout, "
                                 "certificate, protocol, closed)", ["listener", "reason"])
SMSC_TLS_FAILURES = Counter("smsgw_smsc_tls_failures_total",
                            "TLS handshakes with an operator SMSC that failed, by reason "
                            "(timeout, certificate, protocol, closed)", ["smsc", "reason"])

# Latencies, in seconds. Submit: from taking an upstream request (a submit_sm, or a POST) to
# answering it, for those accepted. Operator submit: submit_sm sent to its submit_sm_resp.
# Receipt: from acceptance to the message's final state.
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SUBMIT_SECONDS = Histogram("smsgw_submit_latency_seconds",
                           "Upstream submits accepted: from the request taken to its answer "
                           "(after the store commit)", ["interface"], buckets=_FAST)
OPERATOR_SUBMIT_SECONDS = Histogram("smsgw_operator_submit_latency_seconds",
                                    "submit_sm to an operator: sent to submit_sm_resp",
                                    ["smsc"], buckets=_FAST)
RECEIPT_SECONDS = Histogram("smsgw_receipt_latency_seconds",
                            "Messages finished: from acceptance to the final state (the "
                            "operator's receipt, or expiry...), by last SMSC and final state",
                            ["smsc", "state"],
                            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                                     300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0,
                                     86400.0, 172800.0))
STORE_COMMIT_SECONDS = Histogram("smsgw_store_commit_latency_seconds",
                                 "Store transactions: from the writer's start to the COMMIT "
                                 "done (fsync included with synchronous=full)",
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                          0.25, 0.5, 1.0, 2.5, 5.0))
STORE_BATCH_ROWS = Histogram("smsgw_store_batch_rows", "Rows written per store transaction",
                             buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000))
# PostgreSQL store only (gateway/store_pg.py), read from its statistics every DB_HEALTH_INTERVAL.
DB_OLDEST_SNAPSHOT = Gauge("smsgw_db_oldest_snapshot_seconds",
                           "PostgreSQL: age of the oldest transaction holding a snapshot in the "
                           "gateway's database (any client; it keeps VACUUM from removing dead "
                           "rows)")
DB_ROWS = Gauge("smsgw_db_rows", "PostgreSQL: live rows of the gateway's hot tables, as the "
                "statistics estimate them", ["table"])
DB_DEAD_ROWS = Gauge("smsgw_db_dead_rows", "PostgreSQL: dead row versions of the gateway's hot "
                     "tables (what VACUUM has yet to remove)", ["table"])
DB_NODES = Gauge("smsgw_db_nodes", "PostgreSQL: gateway nodes registered in the database")
DB_ADOPT_SECONDS = Histogram("smsgw_db_adopt_latency_seconds",
                             "PostgreSQL: taking over the due work of dead nodes (and of none), "
                             "all its claim transactions",
                             buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                      1.0, 2.5, 5.0, 10.0))


class SmscMetrics:
    """One [[smsc]] connector's reports (routing.smsc.SmscObserver) as this module's series:
    SMSC_BINDS, OPERATOR_SUBMIT_SECONDS and SMSC_TLS_FAILURES, labelled with its name."""

    __slots__ = ("_latency", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._latency = child(OPERATOR_SUBMIT_SECONDS, name)

    def bound(self, delta: int) -> None:
        SMSC_BINDS.labels(self.name).inc(delta)

    def submit_latency(self, seconds: float) -> None:
        self._latency.observe(seconds)

    def tls_failed(self, reason: str) -> None:
        child(SMSC_TLS_FAILURES, self.name, reason).inc()
