"""TLS for SMPP sessions: the stdlib ssl contexts a link asks for, bounded handshakes.

A listener wraps each accepted TCP stream in a server-side trio.SSLStream (optionally asking
for a client certificate); an operator connection wraps its stream in a client-side one that
verifies the SMSC. A failed handshake is told apart by one of a small fixed set of reasons.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import trio

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# Why a handshake failed (metric label values: a fixed set, whatever the peer sends):
# timeout (not finished in time), certificate (a certificate was missing, unknown or did not
# match), protocol (not TLS, or no version/cipher in common), closed (the peer went away).
REASONS = ("timeout", "certificate", "protocol", "closed")
_CERTIFICATE_ALERTS = ("CERTIFICATE", "UNKNOWN_CA")  # in OpenSSL's reason names


class TlsFileError(Exception):
    """A certificate, key or CA file that cannot be used, for the config key that names it."""

    def __init__(self, key: str, expected: str, got: str) -> None:
        super().__init__(f"{key}: expected {expected}, got {got}")
        self.key, self.expected, self.got = key, expected, got


class _EncryptedKey(Exception):
    """Raised by the password callback: the key file is encrypted (we never prompt)."""


def _no_password() -> NoReturn:
    raise _EncryptedKey


def _read_check(key: str, path: Path, what: str) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise TlsFileError(key, what, f"{path}: cannot read: {exc.strerror or exc}") from None


def _load_ca(ctx: ssl.SSLContext, key: str, path: Path) -> None:
    what = "a file of PEM CA certificates"
    _read_check(key, path, what)
    try:
        ctx.load_verify_locations(cafile=str(path))
    except (ssl.SSLError, ValueError):
        raise TlsFileError(key, what, f"{path}: no PEM certificate in it") from None


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Our certificate (chain, leaf first) and its private key, each named if unusable."""
    cert_key, key_key = "tls_cert", "tls_key"
    _read_check(cert_key, cert, "a PEM certificate file")
    _read_check(key_key, key, "a PEM private key file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(cert))
    except (ssl.SSLError, ValueError):
        raise TlsFileError(cert_key, "a PEM certificate file",
                           f"{cert}: no PEM certificate in it") from None
    try:
        ctx.load_cert_chain(str(cert), str(key), password=_no_password)
    except _EncryptedKey:
        raise TlsFileError(key_key, "an unencrypted PEM private key (readable by the daemon "
                           "only)", f"{key}: an encrypted key") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            got = f"{key}: a key that does not belong to {cert}"
        else:
            got = f"{key}: no usable PEM private key in it"
        raise TlsFileError(key_key, f"the PEM private key of {cert_key}", got) from None


def server_context(cert: Path, key: Path, client_ca: Path | None = None,
                   min_version: str = "1.2") -> ssl.SSLContext:
    """For a listener: our certificate and key; with `client_ca`, clients must present a
    certificate it signed (only it is trusted for that, not the system store)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[min_version]
    _load_chain(ctx, cert, key)
    if client_ca is not None:
        _load_ca(ctx, "tls_client_ca", client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: Path | None = None, verify: bool = True, cert: Path | None = None,
                   key: Path | None = None, min_version: str = "1.2") -> ssl.SSLContext:
    """For an operator connection: the SMSC's certificate verified against `ca` (else the
    system's trust store) and its name checked, unless `verify` is false; our client
    certificate when `cert` and `key` are given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = MIN_VERSIONS[min_version]
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca is not None:
        _load_ca(ctx, "tls_ca", ca)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert is not None and key is not None:
        _load_chain(ctx, cert, key)
    return ctx


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """Why a handshake failed: `reason` is one of REASONS; `detail` comes from OpenSSL."""

    reason: str
    detail: str


def classify(error: BaseException | None) -> HandshakeFailed:
    """The reason for the error under the BrokenResourceError of a failed handshake."""
    # (reason and verify_message are set by OpenSSL's errors, not by every SSLError)
    reason = str(getattr(error, "reason", None) or error)
    if isinstance(error, ssl.SSLCertVerificationError):
        return HandshakeFailed("certificate", str(getattr(error, "verify_message", reason)))
    if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError) or \
            not isinstance(error, ssl.SSLError):
        detail = type(error).__name__ if error is not None else "connection closed"
        return HandshakeFailed("closed", detail)
    if any(word in reason for word in _CERTIFICATE_ALERTS):
        return HandshakeFailed("certificate", reason)
    return HandshakeFailed("protocol", reason)


async def handshake(stream: trio.SSLStream[Any], timeout: float) -> HandshakeFailed | None:
    """Run the handshake for at most `timeout` seconds: None when it is done."""
    with trio.move_on_after(timeout):
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            return classify(exc.__cause__)
        return None
    return HandshakeFailed("timeout", f"not done within {timeout:g}s")


# -- warnings ---------------------------------------------------------------------------------

UNVERIFIED = ('smsc "{name}" has tls_verify = false: the SMSC\'s certificate is not checked, '
              "anyone on the path can pose as it")


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
