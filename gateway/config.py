"""Configuration: read the TOML file (stdlib tomllib) and validate it into frozen typed objects.

Every error is a ConfigError naming the file, the key (groups named by their name, e.g.
``smsc "opA".window``), what was expected and what was found. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args
from urllib.parse import urlsplit

import phonenumbers

from gateway.passwords import SMPP_PASSWORD_MAX, is_password_hash
from gateway.tokens import HASH_RE as _TOKEN_HASH_RE
from routing.settings import (
    BindMode,
    BreakerConfig,
    ReceiptIdFormat,
    Segmentation,
    SmscConfig,
    TlsVersion,
)
from routing.tts import VoiceSettings
from rules.recipient import NUMBER_TYPES
from rules.settings import RULES_KEYS, RulesConfig, RulesConfigError, parse_rules
from smpp import tls

_NUMBER_TYPE_RE = re.compile("|".join(NUMBER_TYPES))

__all__ = [
    "SHARED_SECTIONS",
    "AccountConfig",
    "AdminConfig",
    "BreakerConfig",
    "ConfigError",
    "GatewayConfig",
    "HttpConfig",
    "ListenerConfig",
    "RetryConfig",
    "RouteConfig",
    "RouterConfig",
    "SenderLimitConfig",
    "SimulatorConfig",
    "SmscConfig",
    "StoreConfig",
    "check",
    "file_shared_document",
    "load_config",
    "load_simulator_config",
    "parse_duration",
    "shared_document",
    "shared_json",
]

MessageIdFormat = Literal["hex", "decimal"]
ReceiptIdBase = Literal["same", "other"]  # simulator: receipts write ids in the same/other base
# simulator: "batching" coalesces what is due together into one send; "independent" writes
# every PDU (each submit_sm_resp, each receipt as it falls due) in a send of its own
SimulatorPeer = Literal["batching", "independent"]
# simulator: an RBM phone's fate (gateway.rbm_simulator), a voice number's (voice_simulator)
RbmPhoneState = Literal["capable", "not_capable", "offline", "failing", "silent"]
VoiceBehaviour = Literal["answer", "busy", "no-answer", "unreachable", "fail", "throttle", "hang"]
Synchronous = Literal["full", "normal"]
StoreBackend = Literal["sqlite", "postgresql"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
# Where an account's MO goes: "auto" = its webhook_url when it has one, else its SMPP binds
MoVia = Literal["auto", "smpp", "webhook"]
# [retry] jitter (routing.backoff): how a retry delay is spread around its exponential value
Jitter = Literal["none", "full", "equal", "decorrelated"]
# [[router]] type: what the router filters on and how it orders its channels (routing.routers)
RouterType = Literal["account", "destination", "prefix", "country", "sender", "priority",
                     "weighted", "quality", "routes", "plugin"]
CHANNEL_KINDS = ("sms", "rcs", "tts")  # Attempt.channel: the kind of connector a message takes
ACCOUNT_CHANNELS = ("sms", "rcs")  # [[account]] channels (tts: voice = true)

DAY = 86400.0
_BREAKER = BreakerConfig()  # [breaker] when the file has none
# The sections every node of one shared database runs alike: with [store] shared = true they
# come from the database (gateway/shared_config.py), the node's file giving the rest.
SHARED_SECTIONS = ("account", "smsc", "route", "router", "breaker", "sender_limit", "rcs",
                   "voice", "retry", "rules")


class ConfigError(Exception):
    """A configuration problem. ``str()`` is the full message, one problem per line, each like
    ``conf/x.toml: smsc "opA".window: expected a positive integer, got "ten"``."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.file = file  # the file as named by the caller
        self.key = key  # dotted key path of the problem; None when there are several
        self.problems = tuple(message.splitlines())


# --------------------------------------------------------------------------------------------
# The typed configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One SMPP listener for upstream ESMEs (``[[listener]]``)."""

    host: str = "127.0.0.1"
    port: int = 2775
    bind_timeout: float = 30.0  # close the connection if no bind arrives within this
    inactivity_timeout: float = 120.0  # close if nothing received for this long
    enquire_link_interval: float = 30.0  # we probe idle upstream binds this often
    response_timeout: float = 30.0  # how long we wait for a deliver_sm_resp
    window: int = 64  # outstanding deliver_sm per bind
    # Binds under attack (gateway.auth): the first failed bind from an address is answered
    # after auth_failure_delay, each further one (per address and per system_id) after
    # `multiplier` times more, up to the max; at auth_lockout_threshold failures the address is
    # locked out for auth_lockout_window. At most auth_concurrency password checks at a time.
    auth_failure_delay: float = 1.0
    auth_failure_delay_multiplier: float = 2.0
    auth_failure_delay_max: float = 16.0
    auth_lockout_threshold: int = 10
    auth_lockout_window: float = 300.0  # failures are remembered this long; a lockout lasts it
    auth_concurrency: int = 2
    max_pdu_size: int = 65536  # larger command_length closes the connection
    incoming_window: int = 100  # requests of one session unanswered before we stop reading
    write_timeout: float = 30.0  # a write making no progress this long closes the connection
    max_connections: int = 1000  # open connections on this listener, bound or not
    max_connections_per_address: int = 50  # open connections from one source address
    max_unbound_connections: int = 200  # connections not bound yet (TLS handshake included)
    max_unbound_per_address: int = 10  # of those, from one source address (group)
    # TLS (smpp.tls): with tls_cert and tls_key (PEM files) the listener speaks SMPP over
    # TLS only; with tls_client_ca, clients must present a certificate that CA signed. The
    # handshake counts against bind_timeout.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_min_version: TlsVersion = "1.2"


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """One upstream account (``[[account]]``), identified by its SMPP system_id."""

    system_id: str
    password_hash: str
    max_binds: int = 8
    throughput: float = 100.0  # submits/s over all binds of the account; 0 = unlimited
    max_parts: int = 10  # most SMS parts one submitted message may need
    max_unfinished: int = 20_000  # messages of this account not final yet, at most
    mo_addresses: tuple[str, ...] = ()  # numbers whose MO replies belong to this account
    validity: float | None = None  # caps the default validity for this account; None = no cap
    description: str = ""
    http_tokens: tuple[str, ...] = ()  # hashes of its HTTP API bearer tokens (gateway.tokens)
    # Webhooks (gateway.webhooks): receipts of its HTTP messages (to the message's callback_url,
    # else webhook_url) and, per mo_via, its MO; signed with webhook_secret (HMAC-SHA256).
    webhook_url: str | None = None
    webhook_secret: str = ""
    webhook_secret_previous: str = ""  # during a rotation: webhooks are signed with both
    webhook_timeout: float = 10.0  # one POST, connection included
    webhook_concurrency: int = 4  # POSTs of this account in flight at most
    webhook_retry_delay: float = 5.0  # first retry after this; doubled each time (jittered)
    webhook_retry_delay_max: float = 1800.0  # up to this
    mo_via: MoVia = "auto"
    # When not empty, a message's callback_url must start with one of these (each an http(s)
    # URL ending with "/"): the gateway POSTs only where the operator allowed.
    callback_url_prefixes: tuple[str, ...] = ()
    # The channels its messages may take (routers' plans are filtered by them), and whether
    # the tts channel (a voice call, for fixed lines) is allowed too.
    channels: tuple[str, ...] = ("sms",)
    voice: bool = False
    # How long an RCS message may wait for its "delivered" event before it is revoked and
    # sent as SMS (when the plan has an SMS attempt after it and the router set no timeout).
    rcs_wait: float = 60.0
    # The language its voice calls speak (BCP 47, e.g. "fr-FR"); "" : the voice connector's.
    language: str = ""

    @property
    def mo_by_webhook(self) -> bool:
        """Its MO go to its webhook_url (else over deliver_sm to its receiver binds)."""
        return self.mo_via == "webhook" or (self.mo_via == "auto" and self.webhook_url is not None)


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """A route (``[[route]]``): destination prefixes -> ordered SMSCs (primary, then failover).

    ``prefixes`` are E.164 digits without '+'; empty means the default route. ``smscs`` has a
    default only so the field order can match the config file; the loader requires it.
    ``number_types``: the recipient number types it takes (as the rules' recipient rule
    records them); empty: any.
    """

    name: str
    prefixes: tuple[str, ...] = ()
    smscs: tuple[str, ...] = ()
    number_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """One router of the routing chain (``[[router]]``), asked in file order; the first plan
    wins (routing.routers). Filters (accounts, prefixes, countries, number_types, senders):
    the messages it takes (all given must match; none: every message). ``channels``: its
    targets as (kind, connector), e.g. ("rcs", "rbm"), in priority order; ``timeouts`` by
    channel kind; ``weights`` and ``priorities`` by connector name. ``type = "routes"`` is the
    [[route]] groups; ``type = "plugin"`` a user router (``plugin``: an entry point name of
    group smsgw.routers or "package.module:Class", made with ``options``)."""

    name: str
    type: RouterType = "priority"
    accounts: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()
    number_types: tuple[str, ...] = ()
    senders: tuple[str, ...] = ()
    channels: tuple[tuple[str, str], ...] = ()
    timeouts: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    priorities: dict[str, int] = field(default_factory=dict)
    seed: int | None = None
    window: float = 3600.0  # quality: seconds of receipts a score is made of
    floor: float = 0.05  # quality: the lowest score (the share a degraded connector keeps)
    latency_target: float | None = None  # quality: receipt latency with no penalty
    group_by: str = "country"  # quality: "country" or "prefix:N"
    plugin: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RcsConfig:
    """One RBM agent (``[[rcs]]``): the RCS channel's connector, named in routers as
    "rcs:<name>". ``base_url`` and ``token_url`` point at Google (defaults) or a simulator;
    ``credentials_file`` is the agent's service-account key (or client_id/client_secret);
    ``sms_sender``: the sender an SMS fallback of its messages goes out under ("" : the
    message's own)."""

    name: str
    agent_id: str
    credentials_file: Path
    base_url: str = "https://rcsbusinessmessaging.googleapis.com"
    token_url: str = "https://oauth2.googleapis.com/token"
    sms_sender: str = ""
    # The account its users' replies go to as MO (addressed to sms_sender, else the agent id);
    # "" : replies are logged and dropped (mo.unowned).
    mo_account: str = ""
    capability_ttl: float = 3600.0  # how long a phone's "RCS capable" answer is kept
    negative_capability_ttl: float = 600.0  # and its "not capable" answer
    request_timeout: float = 10.0  # one RBM API request
    max_in_flight: int = 100  # sends unanswered at once
    # The secret the push endpoint (POST /v1/rcs/events) requires as ?token=...: set it on
    # the Pub/Sub push subscription's URL. Required in a config file; "" (programmatic use,
    # tests): pushes are not authenticated.
    push_token: str = ""


@dataclass(frozen=True, slots=True)
class SenderLimitConfig:
    """A throughput limit for one sender (``[[sender_limit]]``): `rate` messages/s, `burst` at
    once after a quiet spell; through `connector` only, or over all connectors when empty."""

    sender: str
    rate: float = 1.0
    burst: int = 1
    connector: str = ""


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Backoff between delivery attempts of one message (``[retry]``): `initial_delay` times
    `multiplier` per retry, at most `max_delay`, spread by `jitter` (routing.backoff)."""

    initial_delay: float = 5.0
    max_delay: float = 300.0
    multiplier: float = 2.0
    jitter: Jitter = "none"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """The durable message store (``[store]``): an SQLite file (``path``, the embedded
    default) or a PostgreSQL database (``backend = "postgresql"``, ``dsn``)."""

    path: Path | None = None  # backend "sqlite": the database file
    backend: StoreBackend = "sqlite"
    dsn: str | None = None  # backend "postgresql": a libpq URI, postgresql://user@host:port/db
    shared: bool = False  # backend "postgresql": several gateway nodes share the database
    batch_max: int = 512  # rows per group commit at most
    retention: float = 180 * DAY  # finished messages older than this are purged
    synchronous: Synchronous = "full"  # full: fsync every commit; normal: WAL syncs only
    queue_max: int = 20_000  # rows waiting for a commit beyond which new submits are refused
    unfinished_max: int = 100_000  # unfinished messages beyond which new submits are refused
    report_expiry: float = 3 * DAY  # receipts/MO undelivered upstream this long are deleted

    @property
    def where(self) -> str | Path:
        """What Store.open takes: the SQLite file, or the PostgreSQL URI."""
        where = self.dsn if self.backend == "postgresql" else self.path
        assert where is not None  # load_config requires the backend's key
        return where


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The HTTP listener (``[http]``): the upstream API under /v1 and Prometheus' /metrics."""

    host: str = "127.0.0.1"
    port: int = 8080
    enabled: bool = True
    max_batch: int = 100  # messages one POST /v1/messages may carry
    idempotency_lifetime: float = DAY  # an Idempotency-Key is remembered this long
    metrics_port: int | None = None  # a second listener (on host) serving /metrics only


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin endpoint the ``smsgw`` admin commands talk to (``[admin]``): HTTP over a
    Unix socket, created mode 0600 (only the daemon's user, and root, may connect)."""

    socket: Path | None = None  # None: admin.sock in the store's directory
    enabled: bool = True


ADMIN_SOCKET_NAME = "admin.sock"
SOCKET_PATH_MAX = 107  # octets: a Unix socket address (sun_path) holds 108 with its NUL


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """The built-in SMSC simulator (``[simulator]``).

    Receipt outcome shares (delivered, undeliverable, expired, no_receipt) sum to 1; when
    ``delivered`` is not given in the file it is what the other three leave. Submit outcome
    shares (throttle, error, slow, disconnect) sum to at most 1; the rest is answered normally.
    """

    host: str = "127.0.0.1"
    port: int = 2776
    system_id: str = "sim"
    password: str = "simpass"
    control_host: str = "127.0.0.1"
    control_port: int = 2777  # HTTP control interface: MO injection, stats
    window: int = 10  # deliver_sm (receipts, MO) outstanding per bound receiver
    receipt_delay: float = 1.0
    delivered: float = 1.0
    undeliverable: float = 0.0
    expired: float = 0.0
    no_receipt: float = 0.0
    throttle: float = 0.0  # share of submit_sm answered ESME_RTHROTTLED
    error: float = 0.0  # share of submit_sm answered ESME_RSYSERR
    slow: float = 0.0  # share of submit_sm answered after slow_delay
    slow_delay: float = 5.0
    disconnect: float = 0.0  # share of submit_sm that drops the connection instead
    message_id_format: MessageIdFormat = "hex"
    receipt_id_base: ReceiptIdBase = "same"  # "other": receipts show hex ids in decimal etc.
    peer: SimulatorPeer = "batching"  # "independent": one send per PDU, no batching courtesy
    seed: int | None = None
    tls_cert: Path | None = None  # as for [[listener]]: SMPP over TLS with this certificate
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_min_version: TlsVersion = "1.2"
    # The RBM platform (API at the root, token endpoint /token) and the voice provider (under
    # /voice) on one HTTP listener; off unless rcs = true (gateway.simulator.RcsSimulator).
    rcs: bool = False
    rcs_host: str = "127.0.0.1"
    rcs_port: int = 2778
    rcs_webhook_url: str | None = None  # None: the gateway's own POST /v1/rcs/events
    rcs_push_token: str | None = None  # sent as ?token= on every push
    rcs_agent_ids: tuple[str, ...] = ("smsgw-demo-agent",)
    rcs_client_id: str = "smsgw"
    rcs_client_secret: str = "smsgw-secret"
    rcs_deliver_delay: float = 1.0
    rcs_read_delay: float = 2.0
    rcs_default_state: RbmPhoneState = "capable"
    rcs_phones: dict[str, RbmPhoneState] = field(default_factory=dict)  # E.164 -> state
    voice_token: str | None = None  # the Bearer token the call API wants (None: any)
    voice_answer_delay: float = 2.0
    voice_talk_time: float = 10.0
    voice_default: VoiceBehaviour = "answer"
    voice_numbers: dict[str, VoiceBehaviour] = field(default_factory=dict)  # E.164 -> it


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """The whole daemon configuration, as loaded from ``source``."""

    source: Path
    node: str = "smsgw"
    validity: float = DAY  # default message validity
    log_level: str = "info"
    shutdown_timeout: float = 10.0  # SIGTERM: at most this long to drain, then exit
    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    accounts: dict[str, AccountConfig] = field(default_factory=dict)  # by system_id
    smscs: dict[str, SmscConfig] = field(default_factory=dict)  # by name
    routes: tuple[RouteConfig, ...] = ()
    routers: tuple[RouterConfig, ...] = ()  # [[router]]: the chain ([[route]]: "routes" last)
    breaker: BreakerConfig = _BREAKER  # defaults of every connector's breaker
    sender_limits: tuple[SenderLimitConfig, ...] = ()
    rcs: dict[str, RcsConfig] = field(default_factory=dict)  # [[rcs]] by name: RBM agents
    voice: dict[str, VoiceSettings] = field(default_factory=dict)  # [[voice]] by name
    store: StoreConfig
    retry: RetryConfig = RetryConfig()
    http: HttpConfig = HttpConfig()
    simulator: SimulatorConfig | None = None  # present: run the simulator in-process
    admin: AdminConfig = AdminConfig()
    rules: RulesConfig = field(default_factory=RulesConfig)  # [rules]: none by default
    # The SHARED_SECTIONS as loaded, canonical JSON (shared_document()): the file's own, or
    # the database's version shared_version (None: the file's). A config built in code has
    # none: it neither seeds nor follows a database's shared configuration.
    shared_document: str | None = None
    shared_version: int | None = None

    @property
    def admin_socket(self) -> Path:
        """Where the admin socket is: [admin] socket, else admin.sock next to the SQLite
        store (load_config requires [admin] socket with a PostgreSQL store)."""
        if self.admin.socket is not None:
            return self.admin.socket
        assert self.store.path is not None
        return self.store.path.parent / ADMIN_SOCKET_NAME


# --------------------------------------------------------------------------------------------
# Durations
# --------------------------------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)\s*)+")


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like "500ms", "30s", "5m", "24h", "2d"
    (parts may be combined: "1h30m"). Raises ValueError on anything else or a negative value."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(value))
    else:
        raise ValueError("not a duration")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("not a duration")
    return seconds


# --------------------------------------------------------------------------------------------
# Reading one table
# --------------------------------------------------------------------------------------------

_MISSING: Any = object()  # no default: the key is required
_DEFAULT: Any = object()  # take the default of the dataclass field
_T = TypeVar("_T")

DURATION_HINT = 'a duration (seconds, or a string like "500ms", "30s", "5m", "24h", "2d")'
NAME_HINT = "a name (letters, digits, '_', '.', '-')"
_HOST_RE = re.compile(r"[A-Za-z0-9_.:%\-\[\]]+")
_DIGITS_RE = re.compile(r"[0-9]+")
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_ID_RE = re.compile(r"[\x21-\x7e]+")  # SMPP ids: printable ASCII, no space
_TEXT_RE = re.compile(r"[\x20-\x7e]*")  # SMPP C-octet strings: printable ASCII
_TONS = frozenset(range(7))
_NPIS = frozenset({0, 1, 3, 4, 6, 8, 9, 10, 14, 18})

_GATEWAY_KEYS = ("node", "validity", "log_level", "shutdown_timeout")  # the keys of [gateway]
# [[...]] groups; the rest are [tables]
_TOP_ARRAYS = ("listener", "account", "smsc", "route", "router", "sender_limit", "rcs",
               "voice")


def _show(value: object) -> str:
    """A found value, written the TOML way, short."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, dict):
        return "a table"
    elif isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return "an array of tables"
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    elif hasattr(value, "isoformat"):
        text = str(value.isoformat())
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_hint(key: str, known: Iterable[str]) -> str:
    """Why ``key`` is unknown: a close spelling, the table it belongs to, or the known keys."""
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
    if close:
        return f'did you mean "{close[0]}"?'
    homes = [header for header, keys in _GROUPS.values() if key in keys]
    if homes:
        return (
            f"{key} is a key of {' or '.join(homes)}; in TOML a key belongs to the table "
            "header above it"
        )
    return "known keys: " + ", ".join(known)


class _Table:
    """Typed access to one TOML table whose keys are the fields of a config dataclass.

    Unknown keys are refused when the table is opened; a key left out takes the field's default.
    """

    def __init__(
        self,
        file: str,
        where: str,
        data: Mapping[str, Any],
        cls: type,
        keys: Iterable[str] | None = None,
    ) -> None:
        self.file = file
        self.where = where
        self.data = data
        fields = {f.name: f for f in dataclasses.fields(cls)}
        self.known = tuple(keys) if keys is not None else tuple(fields)
        self.defaults = {
            name: f.default for name, f in fields.items() if f.default is not dataclasses.MISSING
        }
        for key in data:
            if key not in self.known:
                raise self.fail(key, f"unknown key ({_unknown_hint(key, self.known)})")

    def key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(
        self, key: str, expected: str, value: object = _MISSING, got: str | None = None
    ) -> ConfigError:
        """The error for ``key``: 'expected ..., got ...' when a value or ``got`` is given."""
        path = self.key(key)
        if got is None and value is not _MISSING:
            got = _show(value)
        if got is None:
            msg = f"{self.file}: {path}: {expected}"
        else:
            msg = f"{self.file}: {path}: expected {expected}, got {got}"
        return ConfigError(msg, file=self.file, key=path)

    def get(
        self,
        key: str,
        default: Any,
        expected: str,
        convert: Callable[[Any], _T | None],
    ) -> _T:
        """The value of ``key`` through ``convert``, which returns None when it does not fit."""
        assert key in self.known, key
        if default is _DEFAULT:
            default = self.defaults.get(key, _MISSING)
        if key not in self.data:
            if default is _MISSING:
                raise self.fail(key, f"required key missing (expected {expected})")
            return cast(_T, default)
        raw = self.data[key]
        try:
            value = convert(raw)
        except (ValueError, TypeError):
            value = None
        if value is None:
            raise self.fail(key, expected, raw)
        return value

    def string(
        self,
        key: str,
        default: Any = _DEFAULT,
        *,
        max_len: int | None = None,
        empty: bool = True,
        pattern: re.Pattern[str] | None = None,
        expected: str | None = None,
    ) -> str:
        if expected is None:
            expected = "a string" if empty else "a non-empty string"
            if max_len is not None:
                expected += f" of at most {max_len} characters"
            if pattern is _ID_RE:
                expected += " (printable ASCII, no spaces)"
            elif pattern is _TEXT_RE:
                expected += " (printable ASCII)"

        def conv(v: Any) -> str | None:
            if not isinstance(v, str):
                return None
            if (not empty and not v) or (max_len is not None and len(v) > max_len):
                return None
            if pattern is not None and v and not pattern.fullmatch(v):
                return None
            return v

        return self.get(key, default, expected, conv)

    def path(self, key: str) -> Path | None:
        """An optional file path (left out: None), resolved like store.path."""
        text: str | None = self.get(key, None, "a file path",
                                    lambda v: v if isinstance(v, str) and v else None)
        return None if text is None else _resolve(text)

    def name(self, key: str) -> str:
        return self.string(key, empty=False, pattern=_NAME_RE, expected=NAME_HINT)

    def host(self, key: str, default: Any = _DEFAULT) -> str:
        return self.string(
            key, default, empty=False, pattern=_HOST_RE, expected="a host name or IP address"
        )

    def port(self, key: str, default: Any = _DEFAULT, *, zero: bool = True) -> int:
        low = 0 if zero else 1
        hint = " (0 = any free port)" if zero else ""
        return self.integer(key, default, low=low, high=65535, expected=f"a port {low}-65535{hint}")

    def integer(
        self,
        key: str,
        default: Any = _DEFAULT,
        *,
        low: int | None = None,
        high: int | None = None,
        allowed: frozenset[int] | None = None,
        expected: str | None = None,
    ) -> int:
        if expected is None:
            if allowed is not None:
                expected = "one of " + ", ".join(str(a) for a in sorted(allowed))
            elif low == 1 and high is None:
                expected = "a positive integer"
            elif low is not None and high is None:
                expected = f"an integer >= {low}"
            elif low is not None and high is not None:
                expected = f"an integer from {low} to {high}"
            else:
                expected = "an integer"

        def conv(v: Any) -> int | None:
            if not isinstance(v, int) or isinstance(v, bool):
                return None
            if (low is not None and v < low) or (high is not None and v > high):
                return None
            if allowed is not None and v not in allowed:
                return None
            return v

        return self.get(key, default, expected, conv)

    def number(
        self,
        key: str,
        default: Any = _DEFAULT,
        *,
        low: float = 0.0,
        high: float | None = None,
        expected: str | None = None,
    ) -> float:
        if expected is None:
            if high is not None:
                expected = f"a number from {low:g} to {high:g}"
            else:
                expected = f"a number >= {low:g}"

        def conv(v: Any) -> float | None:
            if not isinstance(v, int | float) or isinstance(v, bool):
                return None
            f = float(v)
            if not math.isfinite(f) or f < low or (high is not None and f > high):
                return None
            return f

        return self.get(key, default, expected, conv)

    def duration(self, key: str, default: Any = _DEFAULT, *, positive: bool = True) -> float:
        expected = "a positive " + DURATION_HINT[2:] if positive else DURATION_HINT

        def conv(v: Any) -> float | None:
            seconds = parse_duration(v)
            return None if positive and seconds <= 0 else seconds

        return self.get(key, default, expected, conv)

    def boolean(self, key: str, default: Any = _DEFAULT) -> bool:
        return self.get(key, default, "true or false", lambda v: v if isinstance(v, bool) else None)

    def choice(self, key: str, choices: Iterable[str], default: Any = _DEFAULT) -> Any:
        options = tuple(choices)
        expected = "one of " + ", ".join(json.dumps(c) for c in options)
        return self.get(key, default, expected, lambda v: v if v in options else None)

    def strings(
        self,
        key: str,
        default: Any = _DEFAULT,
        *,
        items: str,
        item: str,
        pattern: re.Pattern[str] | None = None,
        nonempty: bool = False,
    ) -> tuple[str, ...]:
        """An array of strings (``items``, plural); a bad element (``item``, with its article)
        is reported with its index: ``route "fr".prefixes[1]``."""
        expected = f"a non-empty array of {items}" if nonempty else f"an array of {items}"
        value: tuple[str, ...] = self.get(
            key,
            default,
            expected,
            lambda v: tuple(v) if isinstance(v, list) and (v or not nonempty) else None,
        )
        for i, s in enumerate(value):
            if not isinstance(s, str) or (pattern is not None and not pattern.fullmatch(s)):
                raise self.fail(f"{key}[{i}]", item, s)
        return value


# --------------------------------------------------------------------------------------------
# Groups
# --------------------------------------------------------------------------------------------


def _group_where(kind: str, index: int, data: Mapping[str, Any], name_key: str | None) -> str:
    """``smsc "opA"`` when the group has a usable name, else ``smsc[2]`` (0-based)."""
    name = data.get(name_key) if name_key else None
    if isinstance(name, str) and name and _NAME_RE.fullmatch(name):
        return f'{kind} "{name}"'
    return f"{kind}[{index}]"


def _gateway(t: _Table) -> tuple[str, float, str]:
    node = t.string("node", empty=False, pattern=_NAME_RE, expected=NAME_HINT)
    validity = t.duration("validity")
    log_level = t.choice("log_level", get_args(LogLevel))
    return node, validity, str(log_level)


def _listener(t: _Table) -> ListenerConfig:
    delay = t.duration("auth_failure_delay", positive=False)
    # left out, the cap is at least the first delay (an error only when both are written)
    delay_max = t.duration("auth_failure_delay_max",
                           max(delay, t.defaults["auth_failure_delay_max"]), positive=False)
    cfg = ListenerConfig(
        host=t.host("host"),
        port=t.port("port"),
        bind_timeout=t.duration("bind_timeout"),
        inactivity_timeout=t.duration("inactivity_timeout"),
        enquire_link_interval=t.duration("enquire_link_interval"),
        response_timeout=t.duration("response_timeout"),
        window=t.integer("window", low=1),
        auth_failure_delay=delay,
        auth_failure_delay_multiplier=t.number("auth_failure_delay_multiplier", low=1.0,
                                               high=100.0),
        auth_failure_delay_max=delay_max,
        auth_lockout_threshold=t.integer("auth_lockout_threshold", low=1),
        auth_lockout_window=t.duration("auth_lockout_window"),
        auth_concurrency=t.integer("auth_concurrency", low=1, high=64),
        max_pdu_size=t.integer("max_pdu_size", low=1024, high=16 * 1024 * 1024),
        incoming_window=t.integer("incoming_window", low=1),
        write_timeout=t.duration("write_timeout"),
        max_connections=t.integer("max_connections", low=1),
        max_connections_per_address=t.integer("max_connections_per_address", low=1),
        max_unbound_connections=t.integer("max_unbound_connections", low=1),
        max_unbound_per_address=t.integer("max_unbound_per_address", low=1),
        **_server_tls(t),
    )
    if delay_max < delay:
        raise t.fail("auth_failure_delay_max", f"a duration >= auth_failure_delay ({delay:g}s)",
                     t.data["auth_failure_delay_max"])
    return cfg


def _account(t: _Table) -> AccountConfig:
    cfg = AccountConfig(
        system_id=t.string("system_id", max_len=15, empty=False, pattern=_ID_RE),
        password_hash=t.get(
            "password_hash",
            _MISSING,
            'a scrypt hash "scrypt$n$r$p$salt$hash" (make one with `smsgw hash-password`)',
            lambda v: v if isinstance(v, str) and is_password_hash(v) else None,
        ),
        max_binds=t.integer("max_binds", low=1),
        throughput=t.number("throughput"),
        max_parts=t.integer("max_parts", low=1, high=255),
        max_unfinished=t.integer("max_unfinished", low=1),
        mo_addresses=t.strings(
            "mo_addresses",
            items="numbers",
            item="a number written as a string of digits, without '+'",
            pattern=_DIGITS_RE,
        ),
        validity=t.duration("validity"),
        description=t.string("description"),
        http_tokens=t.strings(
            "http_tokens",
            items="token hashes",
            item='a token hash "sha256$<64 hex digits>" (make one with `smsgw hash-token`)',
            pattern=_TOKEN_HASH_RE,
        ),
        webhook_url=t.get("webhook_url", None, "an absolute http:// or https:// URL with a host",
                          _webhook_url),
        webhook_secret=t.string(
            "webhook_secret", pattern=_SECRET_RE,
            expected=f"a string of {SECRET_MIN} to 256 printable ASCII characters without spaces "
                     "(make one with `openssl rand -hex 32`)"),
        webhook_secret_previous=t.string(
            "webhook_secret_previous", pattern=_SECRET_RE,
            expected=f"a string of {SECRET_MIN} to 256 printable ASCII characters without spaces"),
        webhook_timeout=t.duration("webhook_timeout"),
        webhook_concurrency=t.integer("webhook_concurrency", low=1, high=256),
        webhook_retry_delay=t.duration("webhook_retry_delay"),
        webhook_retry_delay_max=t.duration("webhook_retry_delay_max"),
        mo_via=t.choice("mo_via", get_args(MoVia)),
        callback_url_prefixes=t.strings(
            "callback_url_prefixes", items="URL prefixes",
            item='an http:// or https:// URL with a host, ending with "/" (e.g. '
                 '"https://app.example/hooks/")', pattern=_URL_PREFIX_RE),
        channels=_account_channels(t),
        voice=t.boolean("voice"),
        rcs_wait=t.duration("rcs_wait"),
        language=t.string("language", pattern=_LANGUAGE_RE,
                          expected='a BCP 47 language tag such as "fr-FR" or "en"'),
    )
    for i, prefix in enumerate(cfg.callback_url_prefixes):
        if _webhook_url(prefix) is None:
            raise t.fail(f"callback_url_prefixes[{i}]",
                         'an http:// or https:// URL with a host, ending with "/"', prefix)
    if cfg.webhook_url is not None and not cfg.webhook_secret:
        raise t.fail("webhook_secret", "required when webhook_url is set: the webhooks are "
                     "signed with it (make one with `openssl rand -hex 32`)")
    if cfg.webhook_secret_previous and not cfg.webhook_secret:
        raise t.fail("webhook_secret_previous", "only with a webhook_secret (the new one)")
    if cfg.mo_via == "webhook" and cfg.webhook_url is None:
        raise t.fail("mo_via", '"webhook" needs a webhook_url to post the MO to')
    if cfg.webhook_retry_delay_max < cfg.webhook_retry_delay:
        raise t.fail("webhook_retry_delay_max",
                     f"a duration >= webhook_retry_delay ({cfg.webhook_retry_delay:g}s)",
                     t.data.get("webhook_retry_delay_max", cfg.webhook_retry_delay_max))
    return cfg


_LANGUAGE_RE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")


def _rcs(t: _Table) -> RcsConfig:
    from routing.rcs import load_credentials

    credentials = t.path("credentials_file")
    if credentials is None:
        raise t.fail("credentials_file", "required key missing (expected the path of the "
                     "agent's RBM credentials: a Google service-account key file)")
    try:
        load_credentials(credentials)
    except ValueError as exc:
        raise t.fail("credentials_file", str(exc)) from None
    url = "an absolute http:// or https:// URL with a host"
    return RcsConfig(
        name=t.name("name"),
        agent_id=t.string("agent_id", max_len=200, empty=False, pattern=_AGENT_ID_RE,
                          expected="the RBM agent id (letters, digits, '_', '-', '.', '@')"),
        credentials_file=credentials,
        base_url=t.get("base_url", _DEFAULT, url, _webhook_url),
        token_url=t.get("token_url", _DEFAULT, url, _webhook_url),
        sms_sender=t.string("sms_sender", max_len=20, pattern=_TEXT_RE),
        mo_account=t.string("mo_account", max_len=15, pattern=_ID_RE),
        capability_ttl=t.duration("capability_ttl"),
        negative_capability_ttl=t.duration("negative_capability_ttl"),
        request_timeout=t.duration("request_timeout"),
        max_in_flight=t.integer("max_in_flight", low=1, high=10_000),
        push_token=_required_secret(
            t, "push_token", "the secret POST /v1/rcs/events requires as ?token= (without it "
            "anyone reaching the HTTP listener could forge user messages and delivery events)"),
    )


def _voice(t: _Table) -> VoiceSettings:
    """A [[voice]] group: the settings of routing.tts.VoiceChannel, one key per field, with
    the request templates (place, cancel) and the status format as sub-tables; checked as
    the channel checks them (placeholders, methods, encodings)."""
    from routing.tts import (
        DEFAULT_OUTCOMES,
        HttpTemplate,
        StatusFormat,
        VoiceConfigError,
        check_settings,
        outcome_named,
    )

    def template(key: str, required: bool) -> HttpTemplate | None:
        if key not in t.data and not required:
            return None
        where = t.key(key)
        if key not in t.data:
            raise t.fail(key, "required table missing (expected the provider request: url, "
                         "method, headers, body)")
        sub = _Table(t.file, where, _subtable(t, key, 'url = "https://.../calls"'),
                     HttpTemplate)
        headers = _subtable(sub, "headers", '{ Authorization = "Bearer ..." }')
        for name, value in headers.items():
            if not isinstance(value, str):
                raise sub.fail(f"headers.{name}", "a string", value)
        return HttpTemplate(
            url=sub.string("url", empty=False),
            method=sub.string("method").upper(),
            headers=dict(headers),
            body=sub.data.get("body"),
            encoding=sub.choice("encoding", ("json", "form")),
        )

    status = _Table(t.file, t.key("status"), _subtable(t, "status", 'status_field = "status"'),
                    StatusFormat)
    outcomes = dict(DEFAULT_OUTCOMES)
    for word, name in _subtable(status, "outcomes", '{ completed = "DELIVERED" }').items():
        try:
            outcomes[word.lower()] = outcome_named(name if isinstance(name, str) else "?")
        except ValueError as exc:
            raise status.fail(f"outcomes.{word}", str(exc)) from None
    voices = _subtable(t, "voices", '{ fr = "Celine" }')
    for language, voice in voices.items():
        if not isinstance(voice, str):
            raise t.fail(f"voices.{language}", "a string (the provider's voice name)", voice)
    cancel_too_late = t.get(
        "cancel_too_late", _DEFAULT, "a list of HTTP statuses (100-599)",
        lambda v: tuple(v) if isinstance(v, list) and all(
            isinstance(x, int) and not isinstance(x, bool) and 100 <= x <= 599 for x in v)
        else None)
    place = template("place", True)
    assert place is not None
    settings = VoiceSettings(
        name=t.name("name"),
        place=place,
        call_id_field=t.string("call_id_field"),
        cancel=template("cancel", False),
        cancel_too_late=cancel_too_late,
        status=StatusFormat(
            id_field=status.string("id_field", empty=False),
            status_field=status.string("status_field", empty=False),
            error_field=status.string("error_field"),
            outcomes=outcomes,
        ),
        callback_url=t.string("callback_url"),
        callback_token=_required_secret(
            t, "callback_token", "the secret POST /v1/voice/status/<name> requires as ?token= "
            "(without it anyone reaching the HTTP listener could forge call outcomes)"),
        caller_id=t.string("caller_id", max_len=20, pattern=_TEXT_RE),
        default_language=t.string("default_language", pattern=_LANGUAGE_RE,
                                  expected='a BCP 47 language tag such as "fr-FR" or "en"'),
        voices=dict(voices),
        default_voice=t.string("default_voice"),
        max_ring=t.duration("max_ring"),
        min_ring=t.duration("min_ring", positive=False),
        request_timeout=t.duration("request_timeout"),
        max_in_flight=t.integer("max_in_flight", low=1, high=10_000),
        max_text_chars=t.integer("max_text_chars", low=1),
    )
    try:
        check_settings(settings)
    except VoiceConfigError as exc:
        raise t.fail(exc.key, str(exc).split(": ", 1)[-1]) from None
    if settings.callback_url and "{callback_token}" not in settings.callback_url \
            and settings.callback_token not in settings.callback_url:
        raise t.fail("callback_url", "a URL carrying the token, e.g. "
                     "https://sms.example.com/v1/voice/status/{connector}?token={callback_token} "
                     "(its callbacks would all be refused)", settings.callback_url)
    return settings


def _required_secret(t: _Table, key: str, what: str) -> str:
    """A secret an endpoint of the public HTTP listener requires: a required key."""
    return t.string(
        key, _MISSING, empty=False, pattern=_SECRET_RE,
        expected=f"{what}: a string of {SECRET_MIN} to 256 printable ASCII characters without "
                 "spaces; make one with `openssl rand -hex 32`")


_AGENT_ID_RE = re.compile(r"[A-Za-z0-9_.@\-]+")
SECRET_MIN = 16
_SECRET_RE = re.compile(r"[\x21-\x7e]{" + str(SECRET_MIN) + ",256}")
URL_MAX = 2000
_URL_PREFIX_RE = re.compile(r"https?://[^/\s]+/\S*/|https?://[^/\s]+/")


def _webhook_url(value: Any) -> str | None:
    """An absolute http(s) URL with a host, no spaces or control characters; else None."""
    if not isinstance(value, str) or len(value) > URL_MAX:
        return None
    if any(c.isspace() or not c.isprintable() for c in value):
        return None
    parts = urlsplit(value)
    parts.port  # noqa: B018 - raises ValueError on a bad port (get() turns it into the error)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return value


def _smsc(t: _Table, breaker: BreakerConfig = _BREAKER) -> SmscConfig:
    cfg = SmscConfig(
        name=t.name("name"),
        host=t.host("host"),
        port=t.port("port", zero=False),
        system_id=t.string("system_id", max_len=15, empty=False, pattern=_ID_RE),
        password=t.string("password", max_len=SMPP_PASSWORD_MAX, pattern=_TEXT_RE),
        system_type=t.string("system_type", max_len=12, pattern=_TEXT_RE),
        bind_mode=t.choice("bind_mode", get_args(BindMode)),
        binds=t.integer("binds", low=1),
        window=t.integer("window", low=1),
        throughput=t.number("throughput"),
        response_timeout=t.duration("response_timeout"),
        enquire_link_interval=t.duration("enquire_link_interval"),
        incoming_window=t.integer("incoming_window", low=1),
        write_timeout=t.duration("write_timeout"),
        reconnect_delay=t.duration("reconnect_delay"),
        reconnect_delay_max=t.duration("reconnect_delay_max"),
        interface_version=t.integer(
            "interface_version", low=0, high=0x34, expected="an integer from 0x00 to 0x34"
        ),
        address_range=t.string("address_range", max_len=40, pattern=_TEXT_RE),
        source_ton=t.integer("source_ton", allowed=_TONS),
        source_npi=t.integer("source_npi", allowed=_NPIS),
        dest_ton=t.integer("dest_ton", allowed=_TONS),
        dest_npi=t.integer("dest_npi", allowed=_NPIS),
        segmentation=t.choice("segmentation", get_args(Segmentation)),
        udh_ref16=t.boolean("udh_ref16"),
        receipt_hold=t.duration("receipt_hold", positive=False),
        receipt_id_format=t.choice("receipt_id_format", get_args(ReceiptIdFormat)),
        **_smsc_tls(t),
        breaker=_smsc_breaker(t, breaker),
    )
    if cfg.reconnect_delay_max < cfg.reconnect_delay:
        raise t.fail(
            "reconnect_delay_max",
            f"a duration >= reconnect_delay ({cfg.reconnect_delay:g}s)",
            t.data.get("reconnect_delay_max", cfg.reconnect_delay_max),
        )
    return cfg


def _route(t: _Table) -> RouteConfig:
    return RouteConfig(
        name=t.name("name"),
        prefixes=t.strings(
            "prefixes",
            items="prefixes",
            item="a prefix written as a string of E.164 digits, without '+'",
            pattern=_DIGITS_RE,
        ),
        smscs=t.strings("smscs", _MISSING, items="smsc names", item="an smsc name", nonempty=True),
        number_types=t.strings(
            "number_types",
            items="number types",
            item="one of " + ", ".join(f'"{n}"' for n in NUMBER_TYPES),
            pattern=_NUMBER_TYPE_RE,
        ),
    )


def _account_channels(t: _Table) -> tuple[str, ...]:
    expected = '"sms" or "rcs" (the tts channel, a voice call, is allowed by voice = true)'
    channels = t.strings("channels", items="channel kinds", item=expected, nonempty=True)
    for i, channel in enumerate(channels):
        if channel not in ACCOUNT_CHANNELS:
            raise t.fail(f"channels[{i}]", expected, channel)
        if channel in channels[:i]:
            raise t.fail("channels", "each channel once", got=f'"{channel}" twice')
    return channels


def _breaker(t: _Table, defaults: BreakerConfig = _BREAKER) -> BreakerConfig:
    return BreakerConfig(failures=t.integer("failures", defaults.failures, low=1),
                         cooldown=t.duration("cooldown", defaults.cooldown),
                         probes=t.integer("probes", defaults.probes, low=1))


def _smsc_breaker(t: _Table, defaults: BreakerConfig) -> BreakerConfig | None:
    """An [[smsc]]'s own breaker options (``breaker = {failures = 3}``): each key left out
    is the [breaker] one."""
    if "breaker" not in t.data:
        return None
    data = t.data["breaker"]
    if not isinstance(data, dict):
        raise t.fail("breaker", "a table of breaker options (e.g. {failures = 3, cooldown = "
                     '"1m", probes = 1})', data)
    return _breaker(_Table(t.file, t.key("breaker"), data, BreakerConfig), defaults)


def _sender_limit(t: _Table) -> SenderLimitConfig:
    cfg = SenderLimitConfig(
        sender=t.string("sender", _MISSING, max_len=21, empty=False, pattern=_ID_RE),
        rate=t.number("rate", _MISSING, expected="a positive number of messages per second"),
        burst=t.integer("burst", low=1),
        connector=t.string("connector", pattern=_NAME_RE,
                           expected="a connector name (empty: all connectors)"),
    )
    if cfg.rate <= 0:
        raise t.fail("rate", "a positive number of messages per second", t.data["rate"])
    return cfg


# [[router]]: the keys each type takes
_FILTER_KEYS = ("accounts", "prefixes", "countries", "number_types", "senders")
_TARGET_KEYS = ("name", "type", *_FILTER_KEYS, "channels", "timeouts", "priorities")
_QUALITY_KEYS = ("weights", "seed", "window", "floor", "latency_target", "group_by")
_ROUTER_KEYS: dict[str, tuple[str, ...]] = {
    **{kind: _TARGET_KEYS for kind in ("account", "destination", "prefix", "country", "sender",
                                       "priority")},
    "weighted": (*_TARGET_KEYS, "weights", "seed"),
    "quality": (*_TARGET_KEYS, *_QUALITY_KEYS),
    "routes": ("name", "type"),
    "plugin": ("name", "type", *_FILTER_KEYS, "plugin", "options"),
}
# the filter a type is about: one of these keys must be given, not empty
_ROUTER_NEEDS: dict[str, tuple[str, ...]] = {
    "account": ("accounts",), "prefix": ("prefixes",), "country": ("countries",),
    "sender": ("senders",), "destination": ("prefixes", "countries", "number_types"),
}
_COUNTRY_RE = re.compile(r"[A-Z]{2}")
_CHANNEL_RE = re.compile("(" + "|".join(CHANNEL_KINDS) + r"):([A-Za-z0-9_.\-]+)")
_GROUP_BY_RE = re.compile(r"country|prefix:([1-9]|1[0-5])")
CHANNEL_HINT = '"kind:connector" with kind sms, rcs or tts (e.g. "sms:opA", "rcs:rbm")'


def _subtable(t: _Table, key: str, example: str) -> dict[str, Any]:
    value = t.data.get(key, {})
    if not isinstance(value, dict):
        raise t.fail(key, f"a table (e.g. {example})", value)
    return value


def _router(t: _Table) -> RouterConfig:
    kind: str = t.choice("type", get_args(RouterType), _MISSING)
    allowed = _ROUTER_KEYS[kind]
    for key in t.data:
        if key not in allowed:
            raise t.fail(key, f'not a key of a "{kind}" router (its keys: {", ".join(allowed)})')
    name = t.name("name")
    countries = t.strings("countries", (), items="country codes",
                          item='an ISO 3166 alpha-2 country code, upper case (e.g. "FR")',
                          pattern=_COUNTRY_RE)
    for i, country in enumerate(countries):
        if country not in phonenumbers.SUPPORTED_REGIONS:
            raise t.fail(f"countries[{i}]", "a country code phonenumbers knows", country)
    filters: dict[str, Any] = dict(
        accounts=t.strings("accounts", (), items="account system_ids",
                           item="an account system_id", pattern=_ID_RE),
        prefixes=t.strings("prefixes", (), items="prefixes",
                           item="a prefix written as a string of E.164 digits, without '+'",
                           pattern=_DIGITS_RE),
        countries=countries,
        number_types=t.strings("number_types", (), items="number types",
                               item="one of " + ", ".join(f'"{n}"' for n in NUMBER_TYPES),
                               pattern=_NUMBER_TYPE_RE),
        senders=t.strings("senders", (), items="senders",
                          item="a sender (printable ASCII, no spaces)", pattern=_ID_RE),
    )
    need = _ROUTER_NEEDS.get(kind)
    if need is not None and not any(filters[key] for key in need):
        keys = " or ".join(need)
        raise t.fail(need[0], f'{keys} required by a router of type "{kind}" (a non-empty '
                     "array: the messages it takes)")
    if kind == "routes":
        return RouterConfig(name=name, type="routes")
    if kind == "plugin":
        return _plugin_router(t, name, filters)
    channels = _router_channels(t)
    kinds = {k for k, _c in channels}
    connectors = [c for _k, c in channels]
    timeouts: dict[str, float] = {}
    for key, value in _subtable(t, "timeouts", '{rcs = "30s"}').items():
        if key not in kinds:
            raise t.fail(f"timeouts.{key}", "a channel kind among the router's channels ("
                         + ", ".join(sorted(kinds)) + ")", got=f'"{key}"')
        seconds = _duration_or_none(value)
        if seconds is None or seconds <= 0:
            raise t.fail(f"timeouts.{key}", "a positive " + DURATION_HINT[2:], value)
        timeouts[key] = seconds
    priorities = {c: _connector_number(t, "priorities", c, v, connectors, integer=True)
                  for c, v in _subtable(t, "priorities", "{opA = 0, opB = 1}").items()}
    weights = {c: _connector_number(t, "weights", c, v, connectors)
               for c, v in _subtable(t, "weights", "{opA = 3, opB = 1}").items()}
    if weights:
        tiers: dict[int, list[str]] = {}
        for c in connectors:
            tiers.setdefault(int(priorities.get(c, 0)), []).append(c)
        for priority, tier in sorted(tiers.items()):
            if not any(weights.get(c, 1.0) > 0 for c in tier):
                raise t.fail("weights", f"a weight > 0 for at least one connector of priority "
                             f"{priority} ({', '.join(tier)})", got="only zeros")
    cfg = RouterConfig(name=name, type=cast(RouterType, kind), **filters, channels=channels,
                       timeouts=timeouts, weights=weights,
                       priorities={c: int(p) for c, p in priorities.items()},
                       seed=t.integer("seed", None))
    if kind != "quality":
        return cfg
    group_by = t.string("group_by", pattern=_GROUP_BY_RE, empty=False,
                        expected='"country" (calling code) or "prefix:N" (first N digits, 1-15)')
    floor = t.number("floor", low=0.0, high=1.0, expected="a number > 0 and <= 1")
    if floor <= 0:
        raise t.fail("floor", "a number > 0 and <= 1 (0 would starve a recovered connector)",
                     t.data["floor"])
    return dataclasses.replace(cfg, window=t.duration("window"), floor=floor,
                               latency_target=t.duration("latency_target", None),
                               group_by=group_by)


def _duration_or_none(value: Any) -> float | None:
    try:
        return parse_duration(value)
    except ValueError:
        return None


def _router_channels(t: _Table) -> tuple[tuple[str, str], ...]:
    raw = t.strings("channels", _MISSING, items='"kind:connector" strings', item=CHANNEL_HINT,
                    nonempty=True, pattern=_CHANNEL_RE)
    channels = tuple(cast(tuple[str, str], tuple(c.split(":", 1))) for c in raw)
    for i, channel in enumerate(channels):
        if channel in channels[:i]:
            raise t.fail(f"channels[{i}]", "each channel once", got=f'"{raw[i]}" twice')
    return channels


def _connector_number(t: _Table, key: str, connector: str, value: Any,
                      connectors: list[str], *, integer: bool = False) -> float:
    where = f"{key}.{connector}"
    if connector not in connectors:
        listed = ", ".join(f'"{c}"' for c in dict.fromkeys(connectors))
        raise t.fail(where, f"a connector of the router's channels ({listed})",
                     got=f'"{connector}"')
    if integer:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise t.fail(where, "an integer >= 0 (lower goes first)", value)
        return float(value)
    if (not isinstance(value, int | float) or isinstance(value, bool)
            or not math.isfinite(value) or value < 0):
        raise t.fail(where, "a number >= 0 (its share among the connectors of its priority)",
                     value)
    return float(value)


def _plugin_router(t: _Table, name: str, filters: dict[str, Any]) -> RouterConfig:
    from routing.registry import RouterLoadError, resolve

    spec = t.string("plugin", _MISSING, empty=False,
                    expected='an entry point name of group smsgw.routers or a dotted path '
                             '"package.module:Class"')
    try:
        resolve(spec)
    except RouterLoadError as exc:
        raise t.fail("plugin", str(exc)) from None
    options = _subtable(t, "options", '{threshold = 3}')
    return RouterConfig(name=name, type="plugin", **filters, plugin=spec, options=dict(options))


def _retry(t: _Table) -> RetryConfig:
    cfg = RetryConfig(
        initial_delay=t.duration("initial_delay"),
        max_delay=t.duration("max_delay"),
        multiplier=t.number("multiplier", low=1.0),
        jitter=t.choice("jitter", get_args(Jitter)),
    )
    if cfg.max_delay < cfg.initial_delay:
        raise t.fail(
            "max_delay",
            f"a duration >= initial_delay ({cfg.initial_delay:g}s)",
            t.data.get("max_delay", cfg.max_delay),
        )
    return cfg


def _resolve(text: str) -> Path:
    path = Path(text).expanduser()
    # relative paths: against the daemon's working directory
    return path if path.is_absolute() else Path.cwd() / path


def _cert_and_key(t: _Table) -> tuple[Path | None, Path | None]:
    """tls_cert and tls_key: both or neither."""
    cert, key = t.path("tls_cert"), t.path("tls_key")
    if cert is not None and key is None:
        raise t.fail("tls_key", "required with tls_cert (expected a PEM private key file)")
    if key is not None and cert is None:
        raise t.fail("tls_cert", "required with tls_key (expected a PEM certificate file)")
    return cert, key


def _only_with(t: _Table, keys: Iterable[str], condition: str) -> None:
    for key in keys:
        if key in t.data:
            raise t.fail(key, f"only with {condition}")


def _tls_usable(t: _Table, build: Callable[[], object]) -> None:
    """Build the SSLContext now, so that a file that cannot serve is named at load time."""
    try:
        build()
    except tls.TlsFileError as exc:
        raise t.fail(exc.key, exc.expected, got=exc.got) from None


def _server_tls(t: _Table) -> dict[str, Any]:
    """The TLS keys of a listener (or the simulator), proven usable."""
    cert, key = _cert_and_key(t)
    if cert is None or key is None:
        _only_with(t, ("tls_client_ca", "tls_min_version"), "tls_cert and tls_key")
        return {}
    client_ca = t.path("tls_client_ca")
    version = t.choice("tls_min_version", get_args(TlsVersion))
    _tls_usable(t, lambda: tls.server_context(cert, key, client_ca, version))
    return {"tls_cert": cert, "tls_key": key, "tls_client_ca": client_ca,
            "tls_min_version": version}


def _smsc_tls(t: _Table) -> dict[str, Any]:
    """The TLS keys of an [[smsc]], proven usable."""
    if not t.boolean("tls"):
        _only_with(t, ("tls_ca", "tls_verify", "tls_server_name", "tls_cert", "tls_key",
                       "tls_min_version"), "tls = true")
        return {}
    ca, verify = t.path("tls_ca"), t.boolean("tls_verify")
    if ca is not None and not verify:
        raise t.fail("tls_ca", "no tls_ca with tls_verify = false (nothing is verified)")
    cert, key = _cert_and_key(t)
    version = t.choice("tls_min_version", get_args(TlsVersion))
    _tls_usable(t, lambda: tls.client_context(ca, verify, cert, key, version))
    return {"tls": True, "tls_ca": ca, "tls_verify": verify,
            "tls_server_name": t.string("tls_server_name", pattern=_HOST_RE,
                                        expected="a host name (empty: host)"),
            "tls_cert": cert, "tls_key": key, "tls_min_version": version}


_DSN_RE = re.compile(r"postgres(ql)?://\S+")


def _store(t: _Table) -> StoreConfig:
    backend = t.choice("backend", get_args(StoreBackend))
    path = dsn = None
    if backend == "sqlite":
        if "dsn" in t.data:
            raise t.fail("dsn", 'no dsn with backend = "sqlite" (the store is the file at path)')
        path = _resolve(t.string("path", empty=False, expected="a file path"))
    else:
        if "path" in t.data:
            raise t.fail("path", 'no path with backend = "postgresql" (the store is the '
                                 "database at dsn)")
        expected = "a PostgreSQL URI, postgresql://user@host:port/database"
        if "dsn" not in t.data:
            raise t.fail("dsn", f"required key missing (expected {expected})")
        dsn = t.string("dsn", empty=False, pattern=_DSN_RE, expected=expected)
    shared = t.boolean("shared")
    if shared and backend != "postgresql":
        raise t.fail("shared", 'true only with backend = "postgresql" (one process uses an '
                               "SQLite file)")
    return StoreConfig(
        path=path,
        backend=backend,
        dsn=dsn,
        shared=shared,
        batch_max=t.integer("batch_max", low=1),
        retention=t.duration("retention"),
        synchronous=t.choice("synchronous", get_args(Synchronous)),
        queue_max=t.integer("queue_max", low=1),
        unfinished_max=t.integer("unfinished_max", low=1),
        report_expiry=t.duration("report_expiry"),
    )


def _http(t: _Table) -> HttpConfig:
    return HttpConfig(host=t.host("host"), port=t.port("port"), enabled=t.boolean("enabled"),
                      max_batch=t.integer("max_batch", low=1, high=1000),
                      idempotency_lifetime=t.duration("idempotency_lifetime"),
                      metrics_port=t.port("metrics_port", None))


def _admin(t: _Table, store: StoreConfig) -> AdminConfig:
    admin = AdminConfig(socket=t.path("socket"), enabled=t.boolean("enabled"))
    if store.path is None:
        if admin.socket is None and admin.enabled:
            raise t.fail("socket", 'required with [store] backend = "postgresql" (no store '
                                   "directory to put admin.sock in): a path, one per node")
        return admin
    where = admin.socket or store.path.parent / ADMIN_SOCKET_NAME
    if len(os.fsencode(where)) > SOCKET_PATH_MAX:
        raise t.fail("socket", f"a path of at most {SOCKET_PATH_MAX} octets (a Unix socket "
                     "address; relative paths count from the working directory, and the "
                     "default is admin.sock next to [store] path)",
                     got=f"{where} ({len(os.fsencode(where))} octets)")
    return admin


def _simulator(t: _Table) -> SimulatorConfig:
    def share(key: str) -> float:
        return t.number(key, low=0.0, high=1.0)

    undeliverable, expired, no_receipt = (
        share("undeliverable"),
        share("expired"),
        share("no_receipt"),
    )
    others = undeliverable + expired + no_receipt
    if "delivered" in t.data:
        delivered = share("delivered")
        if abs(delivered + others - 1.0) > 1e-6:
            raise t.fail(
                "delivered",
                "receipt outcome shares summing to 1 (leave delivered out to make it the rest)",
                got=f"delivered + undeliverable + expired + no_receipt = {delivered + others:g}",
            )
    elif others > 1.0 + 1e-6:
        raise t.fail(
            "undeliverable",
            "receipt outcome shares summing to at most 1",
            got=f"undeliverable + expired + no_receipt = {others:g}",
        )
    else:
        delivered = max(0.0, 1.0 - others)
    throttle, error, slow, disconnect = (
        share("throttle"),
        share("error"),
        share("slow"),
        share("disconnect"),
    )
    if throttle + error + slow + disconnect > 1.0 + 1e-6:
        raise t.fail(
            "throttle",
            "submit outcome shares summing to at most 1",
            got=f"throttle + error + slow + disconnect = {throttle + error + slow + disconnect:g}",
        )
    return SimulatorConfig(
        host=t.host("host"),
        port=t.port("port"),
        system_id=t.string("system_id", max_len=15, empty=False, pattern=_ID_RE),
        password=t.string("password", max_len=SMPP_PASSWORD_MAX, pattern=_TEXT_RE),
        control_host=t.host("control_host"),
        control_port=t.port("control_port"),
        window=t.integer("window", low=1),
        receipt_delay=t.duration("receipt_delay", positive=False),
        delivered=delivered,
        undeliverable=undeliverable,
        expired=expired,
        no_receipt=no_receipt,
        throttle=throttle,
        error=error,
        slow=slow,
        slow_delay=t.duration("slow_delay", positive=False),
        disconnect=disconnect,
        message_id_format=t.choice("message_id_format", get_args(MessageIdFormat)),
        receipt_id_base=t.choice("receipt_id_base", get_args(ReceiptIdBase)),
        peer=t.choice("peer", get_args(SimulatorPeer)),
        seed=t.integer("seed"),
        **_server_tls(t),
        **_simulator_rcs(t),
    )


_E164_RE = re.compile(r"\+[1-9][0-9]{5,14}")


def _simulator_rcs(t: _Table) -> dict[str, Any]:
    """The [simulator] keys of its RBM platform and voice provider (rcs, rcs_*, voice_*)."""

    def fates(key: str, choices: tuple[str, ...], example: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for phone, value in _subtable(t, key, example).items():
            if not _E164_RE.fullmatch(phone):
                raise t.fail(f'{key}."{phone}"', "a phone number in E.164 (+ and 6 to 15 "
                             "digits) as the key", got=json.dumps(phone))
            if value not in choices:
                raise t.fail(f'{key}."{phone}"',
                             "one of " + ", ".join(json.dumps(c) for c in choices), value)
            out[phone] = value
        return out

    def secret(key: str) -> str | None:
        return t.get(key, None, "a non-empty string of printable ASCII",
                     lambda v: v if isinstance(v, str) and v and _ID_RE.fullmatch(v) else None)

    agents = t.strings("rcs_agent_ids", items="RBM agent ids", nonempty=True,
                       item="an agent id (printable ASCII, no spaces)", pattern=_ID_RE)
    return dict(
        rcs=t.boolean("rcs"),
        rcs_host=t.host("rcs_host"),
        rcs_port=t.port("rcs_port"),
        rcs_webhook_url=t.get("rcs_webhook_url", None,
                              "an absolute http:// or https:// URL with a host", _webhook_url),
        rcs_push_token=secret("rcs_push_token"),
        rcs_agent_ids=agents,
        rcs_client_id=t.string("rcs_client_id", empty=False, pattern=_ID_RE),
        rcs_client_secret=t.string("rcs_client_secret", empty=False, pattern=_ID_RE),
        rcs_deliver_delay=t.duration("rcs_deliver_delay", positive=False),
        rcs_read_delay=t.duration("rcs_read_delay", positive=False),
        rcs_default_state=t.choice("rcs_default_state", get_args(RbmPhoneState)),
        rcs_phones=fates("rcs_phones", get_args(RbmPhoneState),
                         '{"+33611111111" = "not_capable"}'),
        voice_token=secret("voice_token"),
        voice_answer_delay=t.duration("voice_answer_delay", positive=False),
        voice_talk_time=t.duration("voice_talk_time", positive=False),
        voice_default=t.choice("voice_default", get_args(VoiceBehaviour)),
        voice_numbers=fates("voice_numbers", get_args(VoiceBehaviour),
                            '{"+33611111111" = "busy"}'),
    )


# table or array name -> its dataclass
_CLASSES: dict[str, type] = {
    "store": StoreConfig,
    "retry": RetryConfig,
    "http": HttpConfig,
    "admin": AdminConfig,
    "simulator": SimulatorConfig,
    "listener": ListenerConfig,
    "account": AccountConfig,
    "smsc": SmscConfig,
    "route": RouteConfig,
    "router": RouterConfig,
    "sender_limit": SenderLimitConfig,
    "breaker": BreakerConfig,
    "rcs": RcsConfig,
    "voice": VoiceSettings,
}
# table or array name -> (its header as written in the file, its keys)
_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gateway": ("[gateway]", _GATEWAY_KEYS),
    **{
        name: (
            f"[[{name}]]" if name in _TOP_ARRAYS else f"[{name}]",
            tuple(f.name for f in dataclasses.fields(cls)),
        )
        for name, cls in _CLASSES.items()
    },
    "rules": ("[rules]", RULES_KEYS),
}


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

_TOML_POS = re.compile(r"^(.*) \(at (line \d+, column \d+|end of document)\)$")


def _read(path: str | Path) -> tuple[str, dict[str, Any]]:
    """(file name as given, parsed document); I/O and TOML syntax errors become ConfigError."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}", file=file) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{file}: line {line}: not valid UTF-8", file=file) from None
    try:
        return file, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _TOML_POS.match(msg)
        msg = f"{m.group(2)}: TOML syntax error: {m.group(1)}" if m else f"TOML error: {msg}"
        raise ConfigError(f"{file}: {msg}", file=file) from None


def _table(file: str, doc: Mapping[str, Any], name: str) -> _Table:
    """The single table ``[name]`` (empty when absent: every key takes its default)."""
    data = doc.get(name, {})
    if not isinstance(data, dict):
        raise ConfigError(
            f"{file}: {name}: expected a table ([{name}]), got {_show(data)}", file=file, key=name
        )
    if name == "gateway":
        return _Table(file, name, data, GatewayConfig, _GATEWAY_KEYS)
    return _Table(file, name, data, _CLASSES[name])


def _array(file: str, doc: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """The groups ``[[name]]``; at least one is required."""
    data = doc.get(name, [])
    if isinstance(data, dict):
        raise ConfigError(
            f"{file}: {name}: expected an array of tables ([[{name}]], one per {name}), "
            f"got a table ([{name}])",
            file=file,
            key=name,
        )
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ConfigError(
            f"{file}: {name}: expected an array of tables ([[{name}]]), got {_show(data)}",
            file=file,
            key=name,
        )
    if not data:
        raise ConfigError(
            f"{file}: {name}: at least one [[{name}]] is required", file=file, key=name
        )
    return data


def _top_keys(file: str, doc: Mapping[str, Any]) -> None:
    if "metrics" in doc:
        raise ConfigError(
            f"{file}: metrics: the [metrics] table is now [http] (one HTTP listener serves "
            "the API and /metrics): rename the table header to [http]; its keys host, port "
            "and enabled keep their meaning",
            file=file, key="metrics")
    for key in doc:
        if key not in _GROUPS:
            hint = _unknown_hint(key, _GROUPS)
            raise ConfigError(f"{file}: {key}: unknown table or key ({hint})", file=file, key=key)


def shared_json(file: str, doc: Mapping[str, Any]) -> str:
    """The SHARED_SECTIONS of a parsed file as canonical JSON (the same sections give the
    same text, whatever their order or comments in the file)."""

    def refuse(value: object) -> object:
        raise ConfigError(f"{file}: expected strings, numbers, booleans, arrays and tables in "
                          f"the shared sections, got {_show(value)}", file=file)

    part = {key: doc[key] for key in SHARED_SECTIONS if key in doc}
    return json.dumps(part, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=refuse)


def file_shared_document(path: str | Path) -> str:
    """The shared sections of the TOML file at ``path`` as canonical JSON ("{}": none), only
    read, not checked; ConfigError when the file cannot be read."""
    file, doc = _read(path)
    _top_keys(file, doc)
    return shared_json(file, doc)


def shared_document(path: str | Path) -> str:
    """file_shared_document, what `smsgw config push` sends; ConfigError when the file holds
    none of them too. The node that takes them checks them with its own sections
    (load_config)."""
    document = file_shared_document(path)
    if document == "{}":
        names = ", ".join(_GROUPS[key][0] for key in SHARED_SECTIONS)
        raise ConfigError(f"{path}: holds none of the shared sections ({names})", file=str(path))
    return document


def load_config(path: str | Path, shared: str | None = None,
                shared_version: int | None = None) -> GatewayConfig:
    """Load and validate the gateway configuration at ``path``; raise ConfigError if invalid.

    Beyond each key's own type and range, the references between groups are checked too
    (routes name existing smscs, names unique, ...), so a loaded config is usable as is.
    Relative paths in the file (``store.path``, TLS files) are resolved against the current
    working directory, not the config file's directory. TLS files are loaded into an SSLContext
    here, so that one that cannot serve is reported now, not when a peer connects.

    ``shared``: the SHARED_SECTIONS as a JSON document (the database's version
    ``shared_version``), taken instead of the file's own. A file with a shared PostgreSQL
    store may hold none of them: the config then has no account, SMSC or route until the
    daemon takes the database's (gateway/shared_config.py).
    """
    file, doc = _read(path)
    _top_keys(file, doc)
    if shared is not None:
        file = f"{file} with the shared configuration version {shared_version}"
        own = {key: value for key, value in doc.items() if key not in SHARED_SECTIONS}
        doc = {**own, **json.loads(shared)}
        _top_keys(file, doc)
    document = shared_json(file, doc)
    awaiting = shared is None and document == "{}" and _table(file, doc, "store").data.get(
        "shared") is True  # the database will give the shared sections
    node, validity, log_level = _gateway(_table(file, doc, "gateway"))
    shutdown_timeout = _table(file, doc, "gateway").duration("shutdown_timeout")
    if "store" not in doc:
        raise ConfigError(
            f"{file}: store: required table missing ([store] with path = ..., or backend ="
            ' "postgresql" with dsn = ...)',
            file=file,
            key="store",
        )

    def groups(kind: str, name_key: str | None, parse: Callable[[_Table], _T]) -> list[_T]:
        return [
            parse(_Table(file, _group_where(kind, i, data, name_key), data, _CLASSES[kind]))
            for i, data in enumerate(_array(file, doc, kind))
        ]

    listeners = groups("listener", None, _listener)
    accounts = [] if awaiting else groups("account", "system_id", _account)
    breaker = _breaker(_table(file, doc, "breaker"))
    smscs = [] if awaiting else groups("smsc", "name", lambda t: _smsc(t, breaker))
    # with [[router]] groups, [[route]] is optional (the routers may route every message)
    routes = groups("route", "name", _route) if not awaiting and (
        "route" in doc or "router" not in doc) else []
    routers = groups("router", "name", _router) if "router" in doc else []
    sender_limits = groups("sender_limit", "sender", _sender_limit) if "sender_limit" in doc \
        else []
    simulator = _simulator(_table(file, doc, "simulator")) if "simulator" in doc else None
    rcs = groups("rcs", "name", _rcs) if "rcs" in doc else []
    voice = groups("voice", "name", _voice) if "voice" in doc else []

    config = GatewayConfig(
        source=Path(os.path.abspath(path)),
        node=node,
        validity=validity,
        log_level=log_level,
        shutdown_timeout=shutdown_timeout,
        listeners=tuple(listeners),
        accounts={a.system_id: a for a in accounts},
        smscs={s.name: s for s in smscs},
        routes=tuple(routes),
        routers=tuple(routers),
        breaker=breaker,
        sender_limits=tuple(sender_limits),
        rcs={r.name: r for r in rcs},
        voice={v.name: v for v in voice},
        store=(store := _store(_table(file, doc, "store"))),
        retry=_retry(_table(file, doc, "retry")),
        http=_http(_table(file, doc, "http")),
        admin=_admin(_table(file, doc, "admin"), store),
        simulator=simulator,
        rules=_rules(file, doc, accounts),
        shared_document=document,
        shared_version=shared_version if shared is not None else None,
    )
    problems = _cross_check(file, config, accounts, smscs, routes)
    problems += [f'{file}: rcs "{r.name}".mo_account: expected the system_id of an '
                 f'[[account]], got unknown account "{r.mo_account}"'
                 for r in rcs if r.mo_account and r.mo_account not in config.accounts]
    problems += _connector_names(file, [("smsc", s.name) for s in smscs]
                                 + [("rcs", r.name) for r in rcs]
                                 + [("voice", v.name) for v in voice])
    if problems:
        raise _problems_error(file, problems)
    return config


def _rules(file: str, doc: Mapping[str, Any], accounts: list[AccountConfig]) -> RulesConfig:
    try:
        return parse_rules(doc.get("rules"), [a.system_id for a in accounts])
    except RulesConfigError as exc:
        key = f"rules.{exc.key}" if exc.key else "rules"
        raise ConfigError(f"{file}: {key}: {exc.message}", file=file, key=key) from None


def _problems_error(file: str, problems: list[str]) -> ConfigError:
    """One error listing every problem; its key is the problem's key when there is one."""
    key = problems[0].removeprefix(f"{file}: ").split(": ")[0] if len(problems) == 1 else None
    return ConfigError("\n".join(problems), file=file, key=key)


def _cross_check(
    file: str,
    config: GatewayConfig,
    accounts: list[AccountConfig],
    smscs: list[SmscConfig],
    routes: list[RouteConfig],
) -> list[str]:
    """Every problem between groups, one line each (all of them, not just the first)."""
    problems: list[str] = []

    def dup(kind: str, key: str, names: list[str]) -> None:
        seen: set[str] = set()
        for name in names:
            if name in seen:
                problems.append(
                    f'{file}: {kind} "{name}".{key}: expected a unique {key}, got "{name}" twice'
                )
            seen.add(name)

    dup("account", "system_id", [a.system_id for a in accounts])
    token_owner: dict[str, str] = {}
    for a in accounts:
        for token_hash in a.http_tokens:
            if token_owner.setdefault(token_hash, a.system_id) != a.system_id:
                problems.append(
                    f'{file}: account "{a.system_id}".http_tokens: a token hash already belongs '
                    f'to account "{token_owner[token_hash]}" (a token names one account)')
    dup("route", "name", [r.name for r in routes])

    owner: dict[str, str] = {}
    for a in accounts:
        for addr in a.mo_addresses:
            if addr in owner and owner[addr] != a.system_id:
                problems.append(
                    f'{file}: account "{a.system_id}".mo_addresses: "{addr}" already belongs '
                    f'to account "{owner[addr]}" (an MO address has one owner)'
                )
            owner.setdefault(addr, a.system_id)

    # A prefix (or the default, "") belongs to one route per number type: at most one route
    # there names no number types, and those that do name different ones.
    owners: dict[str, list[RouteConfig]] = {}
    for r in routes:
        for s in r.smscs:
            if s not in config.smscs:
                known = ", ".join(f'"{n}"' for n in config.smscs)
                problems.append(
                    f'{file}: route "{r.name}".smscs: expected names of [[smsc]] groups '
                    f'({known}), got unknown smsc "{s}"'
                )
        if len(set(r.smscs)) != len(r.smscs):
            problems.append(f'{file}: route "{r.name}".smscs: an smsc is listed twice')
        if len(set(r.number_types)) != len(r.number_types):
            problems.append(f'{file}: route "{r.name}".number_types: a type is listed twice')
        if not r.prefixes:
            owners.setdefault("", []).append(r)
        for i, p in enumerate(r.prefixes):
            if p in r.prefixes[:i]:
                problems.append(f'{file}: route "{r.name}".prefixes: prefix "{p}" listed twice')
                continue
            clash = next((o for o in owners.get(p, ()) if _overlap(o, r)), None)
            if clash is not None:
                problems.append(
                    f'{file}: route "{r.name}".prefixes: prefix "{p}" is already routed by '
                    f'route "{clash.name}"{_types_said(clash, r)} (a prefix belongs to one '
                    "route per number type)"
                )
            owners.setdefault(p, []).append(r)
    defaults = owners.get("", [])
    if any(_overlap(a, b) for i, a in enumerate(defaults) for b in defaults[:i]):
        names = ", ".join(f'"{r.name}"' for r in defaults)
        problems.append(
            f"{file}: route: expected at most one default route (no prefixes) per number type,"
            f" got {names}"
        )

    problems += _routing_problems(file, config)
    problems += _port_clashes(file, config)
    return problems


def _connector_names(file: str, named: list[tuple[str, str]]) -> list[str]:
    """Connector names are unique across channels: logs, metrics and the admin commands name
    a connector alone (an [[smsc]] "sms" and an [[rcs]] "sms" could not be told apart)."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for kind, name in named:
        if name in seen and seen[name] == kind:
            problems.append(f'{file}: {kind} "{name}".name: expected a unique name, got '
                            f'"{name}" twice')
        elif name in seen:
            problems.append(f'{file}: {kind} "{name}".name: expected a name no other connector '
                            f'has, got the name of an [[{seen[name]}]] connector')
        seen.setdefault(name, kind)
    return problems


def connectors_by_kind(config: GatewayConfig) -> dict[str, tuple[str, ...]]:
    """The connectors a router's channels may name, by channel kind: sms is the [[smsc]]
    groups. (The rcs and tts connectors join here with their config groups.)"""
    known: dict[str, tuple[str, ...]] = dict.fromkeys(CHANNEL_KINDS, ())
    known["sms"] = tuple(config.smscs)
    known["rcs"] = tuple(config.rcs)
    known["tts"] = tuple(config.voice)
    return known


def _routing_problems(file: str, config: GatewayConfig) -> list[str]:
    """Routers and sender limits naming what does not exist; names given twice."""
    from routing.limits import sender_key

    problems: list[str] = []
    known = connectors_by_kind(config)
    seen: set[str] = set()
    for r in config.routers:
        where = f'{file}: router "{r.name}"'
        if r.name in seen:
            problems.append(f'{where}.name: expected a unique name, got "{r.name}" twice')
        seen.add(r.name)
        for i, (kind, connector) in enumerate(r.channels):
            if connector not in known[kind]:
                names = ", ".join(f'"{n}"' for n in known[kind]) or "none configured"
                problems.append(f'{where}.channels[{i}]: expected a {kind} connector ({names}),'
                                f' got unknown {kind} connector "{connector}"')
        for i, account in enumerate(r.accounts):
            if account not in config.accounts:
                problems.append(f'{where}.accounts[{i}]: expected the system_id of an '
                                f'[[account]], got unknown account "{account}"')
    kinds = [r.name for r in config.routers if r.type == "routes"]
    if len(kinds) > 1:
        problems.append(f'{file}: router "{kinds[1]}".type: expected at most one router of '
                        'type "routes" (the [[route]] groups)')
    if kinds and not config.routes:
        problems.append(f'{file}: router "{kinds[0]}".type: "routes" routes by the [[route]] '
                        "groups, and there is none")
    every = {c for names in known.values() for c in names}
    limited: set[tuple[str, str]] = set()
    for i, limit in enumerate(config.sender_limits):
        where = f'{file}: sender_limit "{limit.sender}"'
        if limit.connector and limit.connector not in every:
            names = ", ".join(f'"{n}"' for n in sorted(every))
            problems.append(f'{where}.connector: expected a connector ({names}), got unknown '
                            f'connector "{limit.connector}"')
        key = (sender_key(limit.sender), limit.connector)
        if key in limited:
            on = f' on connector "{limit.connector}"' if limit.connector else ""
            problems.append(f"{where}: expected one limit per sender and connector, got a "
                            f"second one{on} (sender_limit[{i}])")
        limited.add(key)
    return problems


def _overlap(a: RouteConfig, b: RouteConfig) -> bool:
    """Whether two routes would both take some message of one prefix."""
    if not a.number_types or not b.number_types:
        return not a.number_types and not b.number_types
    return bool(set(a.number_types) & set(b.number_types))


def _types_said(a: RouteConfig, b: RouteConfig) -> str:
    common = sorted(set(a.number_types) & set(b.number_types))
    return f" for {', '.join(common)}" if common else ""


_WILDCARD = frozenset({"0.0.0.0", "::", "*", ""})
_LOCAL = frozenset({"127.0.0.1", "localhost", "::1"})


def _port_clashes(file: str, config: GatewayConfig) -> list[str]:
    """Two sockets of this config listening on one port (same host, or either a wildcard)."""
    sockets: list[tuple[str, str, int]] = [
        (f"listener[{i}].port", lst.host, lst.port) for i, lst in enumerate(config.listeners)
    ]
    if config.http.enabled:
        sockets.append(("http.port", config.http.host, config.http.port))
    sim = config.simulator
    if sim is not None:
        sockets.append(("simulator.port", sim.host, sim.port))
        sockets.append(("simulator.control_port", sim.control_host, sim.control_port))
        if sim.rcs:
            sockets.append(("simulator.rcs_port", sim.rcs_host, sim.rcs_port))
    problems = []
    for i, (key, host, port) in enumerate(sockets):
        for other, ohost, oport in sockets[:i]:
            same_host = host == ohost or host in _WILDCARD or ohost in _WILDCARD
            if port and port == oport and same_host:
                problems.append(
                    f"{file}: {key}: expected a port not used elsewhere, got {port}, "
                    f"already used by {other}"
                )
    return problems


def load_simulator_config(path: str | Path) -> SimulatorConfig:
    """Load the ``[simulator]`` table of ``path`` (for ``smsgw simulate-smsc --config``).

    The file may be a gateway config too: its other groups are allowed and ignored here.
    """
    file, doc = _read(path)
    _top_keys(file, doc)
    if "simulator" not in doc:
        raise ConfigError(
            f"{file}: simulator: required table missing ([simulator])",
            file=file,
            key="simulator",
        )
    return _simulator(_table(file, doc, "simulator"))


def check(path: str | Path, shared: str | None = None) -> GatewayConfig:
    """Everything ``smsgw check-config`` verifies: load_config (types, ranges, references
    between groups) plus what depends on the machine or is a likely mistake rather than a
    contradiction: the store's directory is writable or can be created; an [[smsc]] pointing
    at the in-process [simulator] uses the simulator's credentials; plug-in routers accept
    their options. ``shared``: the shared sections to check the file with (load_config)."""
    config = load_config(path, shared, 0 if shared is not None else None)
    from gateway.routing_setup import build_routing

    build_routing(config)  # plug-in routers made with their options
    file = str(path)
    problems: list[str] = []
    if config.store.path is not None:  # PostgreSQL: checked when the daemon connects
        directory = config.store.path.parent
        probe = directory
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            verb = "write in" if probe == directory else "create"
            problems.append(
                f"{file}: store.path: expected a file in a writable directory, cannot {verb} "
                f"{directory}"
            )
    sim = config.simulator
    if sim is not None:
        for smsc in config.smscs.values():
            if smsc.port != sim.port or not (
                smsc.host == sim.host or {smsc.host, sim.host} <= _LOCAL | _WILDCARD
            ):
                continue
            for field_name in ("system_id", "password"):
                value = getattr(smsc, field_name)
                if value != getattr(sim, field_name):
                    problems.append(
                        f'{file}: smsc "{smsc.name}".{field_name}: expected the {field_name} of '
                        f"[simulator] (this smsc points at it), got {_show(value)}"
                    )
    if problems:
        raise _problems_error(file, problems)
    return config


# -- TLS warnings (a valid config, but exposed) -------------------------------------------------

def cleartext_listener(listener: ListenerConfig) -> str | None:
    """The warning due for a listener reachable from the network without TLS."""
    if listener.tls_cert is not None or tls.is_loopback(listener.host):
        return None
    return (f"listener {listener.host}:{listener.port} has no TLS (tls_cert, tls_key): phone "
            "numbers, texts and passwords cross the network in clear")


def tls_warnings(config: GatewayConfig) -> list[str]:
    """What check-config warns about TLS (the daemon logs the same when it starts)."""
    found = [w for w in map(cleartext_listener, config.listeners) if w is not None]
    found += [tls.UNVERIFIED.format(name=s.name) for s in config.smscs.values()
              if s.tls and not s.tls_verify]
    return found
