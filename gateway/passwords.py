"""Account password hashing: scrypt, encoded as one self-describing string.

Format: ``scrypt$<n>$<r>$<p>$<salt base64>$<hash base64>``. Only the hash is stored in the
config (``password_hash``); ``smsgw hash-password`` produces it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

SCHEME = "scrypt"
N = 2**14
R = 8
P = 1
SALT_BYTES = 16
HASH_BYTES = 32

# SMPP 3.4 carries the password of bind_* as a C-octet string of at most 9 octets: 8 characters.
SMPP_PASSWORD_MAX = 8

# Enough for n=2**14, r=8 (16 MiB) with headroom; a hash asking for more is refused, not run.
_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str) -> str:
    """Hash ``password`` with scrypt and a fresh random salt; returns the encoded string.

    Raises ValueError for an empty password or one containing NUL. A password longer than
    SMPP_PASSWORD_MAX is hashed, but an SMPP bind can't carry it: callers should warn.
    """
    if not password:
        raise ValueError("password must not be empty")
    if "\x00" in password:
        raise ValueError("password must not contain NUL")
    salt = os.urandom(SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=N, r=R, p=P, maxmem=_MAXMEM, dklen=HASH_BYTES
    )
    return "$".join((SCHEME, str(N), str(R), str(P), _b64(salt), _b64(digest)))


def unmatchable_hash() -> str:
    """A well-formed hash with the parameters hash_password uses, that no password matches
    (random salt and digest): checking a password against it costs what a real check costs."""
    return "$".join(
        (SCHEME, str(N), str(R), str(P), _b64(os.urandom(SALT_BYTES)), _b64(os.urandom(HASH_BYTES)))
    )


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches ``encoded``. False (never an exception) when it doesn't or
    when ``encoded`` is malformed.

    Costs about 50 ms of CPU: from async code, run it in a worker thread.
    """
    parsed = _parse(encoded)
    if parsed is None:
        return False
    n, r, p, salt, expected = parsed
    try:
        actual = hashlib.scrypt(
            password.encode("utf-8", "surrogatepass"),
            salt=salt,
            n=n,
            r=r,
            p=p,
            maxmem=_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, OverflowError, MemoryError, UnicodeError):
        return False
    return hmac.compare_digest(actual, expected)


def is_password_hash(encoded: str) -> bool:
    """True if ``encoded`` is a well-formed hash this module can verify (checks the form only)."""
    return _parse(encoded) is not None


def _parse(encoded: object) -> tuple[int, int, int, bytes, bytes] | None:
    if not isinstance(encoded, str):
        return None
    fields = encoded.split("$")
    if len(fields) != 6 or fields[0] != SCHEME:
        return None
    _, n_s, r_s, p_s, salt_s, hash_s = fields
    if not all(s.isascii() and s.isdigit() for s in (n_s, r_s, p_s)):
        return None
    n, r, p = int(n_s), int(r_s), int(p_s)
    # n must be a power of two above 1; refuse parameters needing more memory than _MAXMEM.
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * r * n > _MAXMEM or p > 16:
        return None
    salt = _unb64(salt_s)
    digest = _unb64(hash_s)
    if salt is None or digest is None or len(salt) < 8 or not 16 <= len(digest) <= 64:
        return None
    return n, r, p, salt, digest


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes | None:
    if not text.isascii():
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
