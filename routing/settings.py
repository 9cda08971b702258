"""Settings of the SMS channel's operator connectors: one [[smsc]] and its circuit breaker.

Plain frozen dataclasses the routing core reads; gateway.config parses and validates the
TOML into them (every key, range and error message is there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BindMode = Literal["transceiver", "transmitter+receiver"]
Segmentation = Literal["udh", "sar", "payload"]
ReceiptIdFormat = Literal["auto", "as-is", "hex", "decimal"]
TlsVersion = Literal["1.2", "1.3"]  # the lowest TLS version accepted (smpp.tls.MIN_VERSIONS)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """A circuit breaker per connector (``[breaker]``, and ``breaker = {...}`` of an [[smsc]]):
    after `failures` consecutive failures the connector is skipped for `cooldown`, then
    `probes` attempts at a time test it; a success closes the breaker, a failure re-opens it."""

    failures: int = 5
    cooldown: float = 30.0
    probes: int = 1


@dataclass(frozen=True, slots=True)
class SmscConfig:
    """One operator SMSC connection (``[[smsc]]``)."""

    name: str
    host: str
    port: int
    system_id: str
    password: str
    system_type: str = ""
    bind_mode: BindMode = "transceiver"
    binds: int = 1  # transceiver: N trx binds; transmitter+receiver: N tx and N rx
    window: int = 10  # outstanding submit_sm per bind
    throughput: float = 0.0  # submit_sm/s over the whole connection; 0 = unlimited
    response_timeout: float = 10.0
    enquire_link_interval: float = 30.0
    incoming_window: int = 1000  # deliver_sm unanswered before we stop reading the bind
    write_timeout: float = 30.0  # a write making no progress this long drops the bind
    reconnect_delay: float = 1.0
    reconnect_delay_max: float = 60.0
    interface_version: int = 0x34
    address_range: str = ""
    source_ton: int | None = None  # None = keep the upstream's
    source_npi: int | None = None
    dest_ton: int | None = None
    dest_npi: int | None = None
    segmentation: Segmentation = "udh"
    udh_ref16: bool = False
    receipt_hold: float = 10.0  # seconds an unmatched receipt is held and matched again
    receipt_id_format: ReceiptIdFormat = "auto"
    # TLS (smpp.tls): verify the SMSC's certificate (against tls_ca, else the system's trust
    # store) and its name (tls_server_name, else host); optional client certificate.
    tls: bool = False
    tls_ca: Path | None = None
    tls_verify: bool = True
    tls_server_name: str = ""  # empty: host
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_min_version: TlsVersion = "1.2"
    breaker: BreakerConfig | None = None  # None: the [breaker] defaults
