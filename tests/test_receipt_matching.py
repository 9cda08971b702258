"""Receipt correlation: an operator's receipt id matches its submit_sm_resp id in any spelling."""

from __future__ import annotations

import pytest

from routing.sms import norm_id as _norm
from routing.sms import receipt_keys


@pytest.mark.parametrize(("submit_id", "receipt_id", "fmt"), [
    ("5f3a9c01", "5F3A9C01", "auto"),  # case
    ("0000001F", "31", "auto"),  # zero-padded hex id, receipt in decimal
    ("0000001F", "31", "decimal"),
    ("12345", "3039", "auto"),  # decimal id, receipt in hex
    ("12345", "3039", "hex"),
    ("abc123", "abc123", "as-is"),
    ("00042", "42", "as-is"),  # leading zeros never matter
])
def test_receipt_id_variants_find_the_submitted_id(submit_id: str, receipt_id: str,
                                                   fmt: str) -> None:
    assert _norm(submit_id) in receipt_keys(receipt_id, fmt)


def test_as_is_format_does_not_convert_between_bases() -> None:
    assert _norm("1f") not in receipt_keys("31", "as-is")


def test_unparsable_id_with_numeric_format_falls_back_to_exact() -> None:
    assert receipt_keys("xyz", "hex") == ["xyz"]
