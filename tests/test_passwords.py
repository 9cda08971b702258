"""Account password hashes: scrypt strings that verify the right password and only it."""

from __future__ import annotations

import pytest

from gateway.passwords import hash_password, is_password_hash, verify_password


def test_round_trip_verifies_the_password() -> None:
    encoded = hash_password("demopass")
    assert encoded.startswith("scrypt$16384$8$1$")
    assert is_password_hash(encoded)
    assert verify_password("demopass", encoded)


def test_wrong_password_is_refused() -> None:
    encoded = hash_password("secret")
    assert not verify_password("secreT", encoded)
    assert not verify_password("", encoded)
    assert not verify_password("secret ", encoded)


def test_two_hashes_of_the_same_password_differ() -> None:
    a, b = hash_password("same"), hash_password("same")
    assert a != b
    assert verify_password("same", a) and verify_password("same", b)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "demopass",
        "scrypt$16384$8$1$salt",
        "bcrypt$16384$8$1$tZL1pV5J7HRHO1nCzJ0b1w==$9WcHfOtnUIe1vAec0Pi0Bl+WNEICT+QnFELF2Ukumgg=",
        "scrypt$1000$8$1$tZL1pV5J7HRHO1nCzJ0b1w==$9WcHfOtnUIe1vAec0Pi0Bl+WNEICT+QnFELF2Ukumgg=",
        "scrypt$x$8$1$tZL1pV5J7HRHO1nCzJ0b1w==$9WcHfOtnUIe1vAec0Pi0Bl+WNEICT+QnFELF2Ukumgg=",
        "scrypt$16384$8$1$!!!!$9WcHfOtnUIe1vAec0Pi0Bl+WNEICT+QnFELF2Ukumgg=",
        "scrypt$16384$8$1$tZL1pV5J7HRHO1nCzJ0b1w==$short",
        # memory cost far above what we allow: refused without being computed
        "scrypt$1073741824$8$1$tZL1pV5J7HRHO1nCzJ0b1w==$9WcHfOtnUIe1vAec0Pi0Bl+WNEICT+QnFELF2Ukumgg=",
        "scrypt$16384$8$1$tZL1pV5J7HRHO1nCzJ0b1w==$9WcHfOtnUIe1vAec0Pi0Bl+WNEICT+QnFELF2Ukumgg=$x",
    ],
)
def test_malformed_hash_is_false_never_an_exception(encoded: str) -> None:
    assert not is_password_hash(encoded)
    assert not verify_password("demopass", encoded)


def test_non_string_hash_is_false() -> None:
    assert not verify_password("demopass", None)  # type: ignore[arg-type]


def test_a_known_hash_still_verifies() -> None:
    # the hash stored in conf/demo.toml: the format must stay readable across versions
    encoded = (
        "scrypt$16384$8$1$tZL1pV5J7HRHO1nCzJ0b1w==$9WcHfOtnUIe1vAec0Pi0Bl+WNEICT+QnFELF2Ukumgg="
    )
    assert verify_password("demopass", encoded)
    assert not verify_password("demo2pw", encoded)


@pytest.mark.parametrize("password", ["", "pass\x00"])
def test_passwords_no_client_can_send_are_refused(password: str) -> None:
    with pytest.raises(ValueError):
        hash_password(password)


def test_long_and_non_ascii_passwords_still_hash_and_verify() -> None:
    # an SMPP bind carries at most 8 characters, but refusing is the caller's choice (warn)
    for password in ("ninechars", "pässwd"):
        assert verify_password(password, hash_password(password))
