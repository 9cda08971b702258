"""HTTP API bearer tokens: make them, hash them for the config, and find a token's account.

Format in the config (``[[account]] http_tokens``): ``sha256$<64 hex digits>``, the SHA-256 of
the token's UTF-8 octets. ``smsgw hash-token`` makes a fresh token and prints it with its hash.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping

SCHEME = "sha256"
TOKEN_BYTES = 32  # entropy of a token made by new_token(): 256 bits
MIN_TOKEN_LENGTH = 8  # a shorter token is refused by hash_token
HASH_RE = re.compile(r"sha256\$[0-9a-f]{64}")

# Why SHA-256 and not scrypt like SMPP passwords: a bearer token is checked on every request,
# so its check must cost microseconds, not the 50 ms of scrypt. A slow hash protects
# low-entropy secrets (passwords people choose and type) against guessing from a leaked
# config; a token made by new_token() holds 256 random bits, beyond any guessing, so one fast
# hash is enough to keep the config from holding usable secrets. Lookup is by digest in a
# dict: the time it takes depends on the digest of what the client sent, which tells an
# attacker nothing about any stored token's value.


def new_token() -> str:
    """A fresh random token (URL-safe base64 of TOKEN_BYTES random octets, 43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The config form of ``token``. Raises ValueError for a token shorter than
    MIN_TOKEN_LENGTH or holding characters that cannot travel in an Authorization header."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"a token has at least {MIN_TOKEN_LENGTH} characters")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError("a token is printable ASCII without spaces")
    return f"{SCHEME}${_digest(token)}"


def is_token_hash(encoded: object) -> bool:
    """True if ``encoded`` is a well-formed token hash (``sha256$`` and 64 lowercase hex)."""
    return isinstance(encoded, str) and HASH_RE.fullmatch(encoded) is not None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenIndex:
    """Which account a presented bearer token belongs to (None: no account's)."""

    def __init__(self, tokens: Mapping[str, Iterable[str]]) -> None:
        """``tokens``: account name -> its token hashes."""
        self._owner = {encoded.removeprefix(f"{SCHEME}$"): account
                       for account, hashes in tokens.items() for encoded in hashes}

    def account_of(self, token: str) -> str | None:
        return self._owner.get(_digest(token))
