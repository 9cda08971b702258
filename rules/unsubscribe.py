"""Unsubscribe links, for countries where a phone cannot reply STOP: a short token that names
the account and the number, signed with the account's ``unsubscribe_secret`` (no storage).

Token: base64url of 16 octets: the number (7, big-endian), the first 3 octets of SHA-256 of
the account's name, and the first 6 of HMAC-SHA256(secret, the 10 before).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Iterable

_NUMBER, _ACCOUNT, _MAC = 7, 3, 6


def _account_tag(account: str) -> bytes:
    return hashlib.sha256(account.encode()).digest()[:_ACCOUNT]


def _mac(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:_MAC]


def make_token(secret: str, account: str, msisdn: str) -> str:
    """The token of ``msisdn`` (E.164 digits) on ``account``'s list."""
    payload = int(msisdn).to_bytes(_NUMBER, "big") + _account_tag(account)
    return base64.urlsafe_b64encode(payload + _mac(secret, payload)).decode().rstrip("=")


def read_token(token: str, accounts: Iterable[str],
               secret_of: Callable[[str], str | None]) -> tuple[str, str] | None:
    """(account, msisdn) of a valid token, else None (unknown account, bad signature)."""
    if len(token) != 22:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "==")
    except (binascii.Error, ValueError):
        return None
    # 22 characters carry 132 bits for 128: the last one's 4 low bits are not read, so 16
    # spellings would decode alike. Only the one make_token writes is a token.
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:
        return None
    payload, mac = raw[:_NUMBER + _ACCOUNT], raw[_NUMBER + _ACCOUNT:]
    tag = payload[_NUMBER:]
    for account in accounts:
        secret = secret_of(account)
        if secret and _account_tag(account) == tag and hmac.compare_digest(
                _mac(secret, payload), mac):
            return account, str(int.from_bytes(payload[:_NUMBER], "big"))
    return None
