"""Sender ID normalisation and policy (rule ``sender``) per destination country, from the
table conf/senders.toml: France's rules, TON/NPI set to match, the forbidden and
authorisation-required lists, per-account allowed senders, per-country override; end to end
through SMPP with smpplib and the simulator on the demo's own rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.config import load_config
from gateway.model import Message, new_message_id
from rules.core import ESME_RINVSRCADR, Context, Outcome
from rules.sender import SenderRule, load_table, transliterate
from rules.settings import RulesConfigError, parse_rules
from tests.stack import SmpplibEsme, running_stack, wait_for

CONF = Path(__file__).resolve().parent.parent / "conf"
TABLE = str(CONF / "senders.toml")
T0 = 1_780_000_000.0
FR_MOBILE = "33612345678"


def message(source: str, ton: int, npi: int = 0, dest: str = FR_MOBILE) -> Message:
    return Message(
        id=new_message_id(), account="demo", source_addr=source, source_ton=ton,
        source_npi=npi, dest_addr=dest, dest_ton=1, dest_npi=1, data_coding=0, esm_class=0,
        protocol_id=0, priority=0, registered_delivery=1, body=b"Hi", created_at=T0,
        expires_at=T0 + 86400, not_before=T0,
    )  # fmt: skip


def run(source: str, ton: int, npi: int = 0, dest: str = FR_MOBILE, table: str = TABLE,
        **settings: Any) -> tuple[Any, tuple[str, int, int]]:
    msg = message(source, ton, npi, dest)
    decision = SenderRule({"table": table}).apply(
        msg, Context(T0, "demo", settings={"region": "FR", **settings}))
    new = {c.field: c.new for c in decision.changes}
    return decision, (new.get("source_addr", source), new.get("source_ton", ton),
                      new.get("source_npi", npi))


@pytest.mark.parametrize(("source", "ton", "npi", "sent"), [
    ("Promo-Été!!", 5, 0, ("PromoEte", 5, 0)),  # accents transliterated, the rest removed
    ("ACME-PROMO!", 5, 0, ("ACMEPROMO", 5, 0)),
    ("BANK 123", 5, 0, ("BANK123", 5, 0)),
    ("Œuvres", 5, 0, ("OEuvres", 5, 0)),
    ("ACMEPROMOTIONS", 5, 0, ("ACMEPROMOTI", 5, 0)),  # cut to 11 characters
    ("ACME", 0, 0, ("ACME", 5, 0)),  # TON set to match an alphanumeric sender
    ("36111", 5, 0, ("36111", 3, 0)),  # a 5-digit short code
    ("36111", 0, 0, ("36111", 3, 0)),
    ("33612345679", 1, 1, ("33612345679", 1, 1)),  # an international number: unchanged
    ("0612345679", 0, 0, ("33612345679", 1, 1)),  # a national number: E.164
    ("+33612345679", 0, 0, ("33612345679", 1, 1)),
])
def test_senders_toward_france_are_normalised_with_matching_ton_npi(
        source: str, ton: int, npi: int, sent: tuple[str, int, int]) -> None:
    decision, result = run(source, ton, npi)
    assert decision.outcome in (Outcome.ACCEPT, Outcome.MODIFY), decision.detail
    assert result == sent
    assert decision.facts["country"] == "FR"
    changed = {c.field for c in decision.changes}
    assert (decision.outcome is Outcome.MODIFY) == bool(changed)


@pytest.mark.parametrize(("source", "ton", "reason", "words"), [
    ("12345678901", 5, "digits-only-sender", "only short codes of 5 digits"),
    ("1234", 0, "invalid-sender", "sender number refused"),
    ("!!!", 5, "invalid-sender", "no letter or digit"),
    ("GOUVFR", 5, "forbidden-sender", "forbidden toward FR"),
    ("Gouv-FR", 5, "forbidden-sender", "forbidden toward FR"),  # normalised first
    ("AMELI", 5, "sender-not-authorised", "authorised_senders"),
])
def test_senders_france_refuses_are_rinvsrcadr_with_a_reason(
        source: str, ton: int, reason: str, words: str) -> None:
    decision, _ = run(source, ton)
    assert decision.outcome is Outcome.REJECT and decision.reason == reason
    assert (decision.smpp_status, decision.http_status) == (ESME_RINVSRCADR, 422)
    assert words in decision.detail and decision.subject == "sender"


def test_an_authorised_account_may_use_a_sender_that_needs_authorisation() -> None:
    decision, result = run("Ameli", 5, authorised_senders=("ameli",))
    assert decision.outcome is Outcome.ACCEPT and result == ("Ameli", 5, 0)


def test_an_account_with_allowed_senders_may_use_only_those() -> None:
    assert run("ACME", 5, allowed_senders=("acme", "36111"))[0].outcome is Outcome.ACCEPT
    assert run("36111", 0, allowed_senders=("acme", "36111"))[0].outcome is Outcome.MODIFY
    refused, _ = run("OTHER", 5, allowed_senders=("acme",))
    assert refused.reason == "sender-not-allowed"


def test_a_country_may_override_the_sender_and_others_take_the_default(tmp_path: Path) -> None:
    table = tmp_path / "senders.toml"
    table.write_text('[country.default]\nmax_length = 8\n'
                     '[country.CH]\noverride = "41791234567"\n')
    decision, result = run("ACME-CORP-LONG", 5, dest="41791234567", table=str(table))
    assert result == ("41791234567", 1, 1) and "replaced" in decision.detail
    decision, result = run("ACME-CORP-LONG", 5, dest="12025550123", table=str(table))
    assert result == ("ACMECORP", 5, 0) and decision.facts["country"] == "US"
    decision, result = run("GOUVFR", 5, table=str(table))  # FR not listed here: default
    assert decision.outcome is Outcome.ACCEPT and result == ("GOUVFR", 5, 0)


def test_an_empty_sender_is_left_to_the_operator_connection() -> None:
    decision, result = run("", 0)
    assert decision.outcome is Outcome.ACCEPT and result == ("", 0, 0)


def test_transliteration_keeps_letters_and_digits_only() -> None:
    assert transliterate("Crème brûlée & Co.") == "CremebruleeCo"
    assert transliterate("Straße-42") == "Strasse42"


@pytest.mark.parametrize(("text", "error"), [
    ("[country.FR]\nmax_length = 12\n", "country.FR.max_length: expected an integer from 1"),
    ("[country.FR]\ncolour = 1\n", "country.FR.colour: unknown key"),
    ("[country.France]\n", "country.France: expected an ISO 3166 code"),
    ("[country.FR]\nforbidden = \"GOUVFR\"\n", "country.FR.forbidden: expected an array"),
    ("[countries]\n", "countries: unknown key"),
    ("[country.FR\n", "not a valid TOML file"),
])
def test_a_bad_sender_table_names_its_file_and_key(tmp_path: Path, text: str,
                                                   error: str) -> None:
    table = tmp_path / "senders.toml"
    table.write_text(text)
    with pytest.raises(ValueError) as err:
        load_table(table)
    assert str(err.value).startswith(f"{table}: ") and error in str(err.value)
    with pytest.raises(RulesConfigError) as config_err:
        parse_rules({"pipeline": ["sender"], "options": {"sender": {"table": str(table)}}},
                     ["demo"])
    assert config_err.value.key == "pipeline[0]" and error in config_err.value.message


def test_the_demo_runs_recipient_then_sender_with_the_shipped_table() -> None:
    rules = load_config(CONF / "demo.toml").rules
    assert rules.of("demo").pipeline[:2] == ("recipient", "sender")
    assert rules.of("demo").options["sender"] == {"table": "conf/senders.toml"}
    assert "GOUVFR" in load_table(CONF / "senders.toml")["FR"].forbidden


async def test_demo_senders_reach_the_simulator_normalised_and_gouvfr_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CONF.parent)  # the demo's table path is relative, like its store path
    rules = load_config(CONF / "demo.toml").rules
    async with running_stack(tmp_path, rules=rules) as (gw, sim):
        esme = SmpplibEsme(gw.smpp_port)

        def session() -> None:
            esme.bind()
            esme.submit("0612345678", b"Promo", source_addr="Promo-\xc9t\xe9!!",
                        source_addr_ton=5, dest_addr_ton=0, dest_addr_npi=0)
            esme.submit(FR_MOBILE, b"Official", source_addr="GOUVFR", source_addr_ton=5)
            esme.submit(FR_MOBILE, b"Code 1234", source_addr="36111", source_addr_ton=0)
            esme.read_until(lambda: len(esme.resps) >= 3)
            esme.close()

        with trio.fail_after(20):
            await trio.to_thread.run_sync(session)
        assert sorted(r.status for r in esme.resps) == [0, 0, ESME_RINVSRCADR]
        await wait_for(lambda: len(sim.submitted) == 2)
        sent = {r.text: (r.source_addr, r.source_ton, r.source_npi, r.destination_addr,
                         r.dest_ton, r.dest_npi) for r in sim.submitted}
        assert sent == {"Promo": ("PromoEte", 5, 0, FR_MOBILE, 1, 1),
                        "Code 1234": ("36111", 3, 0, FR_MOBILE, 1, 1)}
