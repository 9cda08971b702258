"""Content checks (rules/content): URL deny list and shortener policy, maximum SMS count,
duplicate suppression within a window; end to end over HTTP and SMPP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway.config import HttpConfig
from gateway.model import Message, new_message_id
from gateway.screening import CODEC, Screening
from rules.content import DuplicateRule, SegmentsRule, UrlRule, fingerprint, hosts
from rules.core import ESME_RINVMSGLEN, ESME_RX_R_APPN, Context, Outcome
from rules.settings import RulesConfigError, parse_rules
from smpp.text import encode_text
from tests.stack import SmpplibEsme, running_stack, wait_for

T0 = 1_780_000_000.0


def message(text: str, dest: str = "33612345678", account: str = "demo") -> Message:
    dc, body = encode_text(text)
    return Message(
        id=new_message_id(), account=account, source_addr="ACME", source_ton=5, source_npi=0,
        dest_addr=dest, dest_ton=1, dest_npi=1, data_coding=dc, esm_class=0, protocol_id=0,
        priority=0, registered_delivery=1, body=body, created_at=T0, expires_at=T0 + 86400,
        not_before=T0,
    )  # fmt: skip


def ctx(now: float = T0, **settings: Any) -> Context:
    return Context(now, "demo", settings=settings, codec=CODEC)


def test_urls_are_found_with_or_without_scheme() -> None:
    assert hosts("Voir https://www.Shop.example.com/x, bit.ly/abc et www.evil.fr. "
                 "Écrivez à a@b.fr/ ou http://1.2.3.4:8080/p") == [
        "shop.example.com", "bit.ly", "evil.fr", "1.2.3.4"]


URLS = {"deny": ["evil.fr", "phish.example"], "allow": ["acme.link"]}


@pytest.mark.parametrize(("text", "reason"), [
    ("Votre colis: https://evil.fr/track", "denied-url"),
    ("Votre colis: http://login.evil.fr/x", "denied-url"),  # a subdomain of a denied one
    ("Payez ici www.PHISH.example/pay", "denied-url"),
    ("Offre: bit.ly/3xYz", "url-shortener"),
    ("Offre: https://tinyurl.com/abc", "url-shortener"),
    ("Voir https://acme.link/promo", None),  # the account's own short links: allowed
    ("Voir https://www.acme.fr/soldes", None),
    ("Pas de lien ici.", None),
])
def test_urls_are_checked_against_the_deny_list_and_shorteners(text: str,
                                                               reason: str | None) -> None:
    decision = UrlRule(URLS).apply(message(text), ctx())
    if reason is None:
        assert decision.outcome is Outcome.ACCEPT
    else:
        assert decision.outcome is Outcome.REJECT and decision.reason == reason
        assert (decision.smpp_status, decision.http_status) == (ESME_RX_R_APPN, 422)


def test_shorteners_may_be_allowed() -> None:
    decision = UrlRule({"shorteners": "allow"}).apply(message("bit.ly/x"), ctx())
    assert decision.outcome is Outcome.ACCEPT


@pytest.mark.parametrize(("text", "limit", "outcome"), [
    ("a" * 160, 1, Outcome.ACCEPT),
    ("a" * 161, 1, Outcome.REJECT),  # two parts of 153
    ("a" * 306, 2, Outcome.ACCEPT),
    ("a" * 307, 2, Outcome.REJECT),
    ("Я" * 70, 1, Outcome.ACCEPT),
    ("Я" * 71, 1, Outcome.REJECT),
])
def test_a_message_over_the_accounts_sms_count_is_refused(text: str, limit: int,
                                                          outcome: Outcome) -> None:
    decision = SegmentsRule({"max": 10}).apply(message(text), ctx(max_segments=limit))
    assert decision.outcome is outcome
    if outcome is Outcome.REJECT:
        assert decision.reason == "too-many-segments"
        assert decision.smpp_status == ESME_RINVMSGLEN


def test_the_same_text_to_the_same_number_within_the_window_is_sent_once() -> None:
    rule = DuplicateRule({"window": 600})
    sent: dict[bytes, tuple[float, str]] = {}

    def at(now: float) -> Context:
        return Context(now, "demo", codec=CODEC, sent=sent.get)

    first = message("Votre code: 1234")
    decision = rule.apply(first, at(T0))
    assert decision.outcome is Outcome.ACCEPT
    assert decision.facts["fingerprint"] == fingerprint(first)
    assert "facts" not in decision.json()  # kept on the message's row, not in its history
    assert rule.apply(message("Votre code: 1234"), at(T0 + 1)).outcome is Outcome.ACCEPT
    sent[fingerprint(first)] = (T0, first.id)  # what the gateway answers once it is stored
    again = rule.apply(message("Votre code: 1234"), at(T0 + 599))
    assert again.outcome is Outcome.REJECT and again.reason == "duplicate"
    assert again.http_status == 409 and first.id in again.detail
    assert again.facts["first_message"] == first.id
    # another text, another number, another account: not duplicates
    assert rule.apply(message("Votre code: 1235"), at(T0 + 1)).outcome is Outcome.ACCEPT
    assert rule.apply(message("Votre code: 1234", "33612345679"),
                      at(T0 + 1)).outcome is Outcome.ACCEPT
    assert rule.apply(message("Votre code: 1234", account="other"),
                      at(T0 + 1)).outcome is Outcome.ACCEPT
    # after the window: sent again; the dry run (no index) lets everything through
    assert rule.apply(message("Votre code: 1234"), at(T0 + 601)).outcome is Outcome.ACCEPT
    assert rule.apply(message("Votre code: 1234"), ctx(T0 + 1)).outcome is Outcome.ACCEPT


def screening(*pipeline: str, **options: Any) -> Screening:
    return Screening(parse_rules({"pipeline": list(pipeline), "options": options,
                                  "region": "FR"}, ["demo", "other"]))


def test_a_copy_counts_once_its_first_is_kept_not_when_a_later_rule_refused_it() -> None:
    gate = screening("duplicates", "urls", urls={"deny": ["evil.fr"]})
    refused = message("Suivez https://evil.fr/x")
    assert gate.check(refused, T0, "http").rejected is not None  # by urls, after duplicates
    assert refused.fingerprint is not None  # duplicates had let it through
    gate.settle([refused], stored=False)
    first = message("Votre code: 1234")
    assert gate.check(first, T0, "http").rejected is None
    # being stored: a copy in the same batch, or from another connection, is a duplicate
    pending = gate.check(message("Votre code: 1234"), T0 + 1, "http").rejected
    assert pending is not None and pending.facts["first_message"] == first.id
    gate.settle([first], stored=False)  # its commit failed (or its batch was refused)
    second = message("Votre code: 1234")
    assert gate.check(second, T0 + 2, "http").rejected is None
    gate.settle([second], stored=True)
    copy = gate.check(message("Votre code: 1234"), T0 + 3, "http").rejected
    assert copy is not None and copy.facts["first_message"] == second.id
    assert gate.check(message("Votre code: 1234"), T0 + 603, "http").rejected is None


def test_the_fingerprints_kept_in_memory_are_bounded_by_window_and_count() -> None:
    gate = screening("duplicates", duplicates={"window": 600, "max_entries": 2})
    assert gate.sent is not None

    def send(text: str, now: float) -> Message:
        msg = message(text)
        msg.created_at = now  # as intake sets it
        assert gate.check(msg, now, "http").rejected is None
        gate.settle([msg], stored=True)
        return msg

    for i in range(3):
        send(f"text {i}", T0 + i)
    assert len(gate.sent.stored) == 2
    send("text 0", T0 + 5)  # forgotten: the oldest beyond max_entries
    late = send("late", T0 + 700)  # the others left the window
    assert list(gate.sent.stored.values()) == [(late.created_at, late.id)]
    assert screening("recipient").sent is None  # no account runs it: nothing kept


@pytest.mark.parametrize(("options", "error"), [
    ({"urls": {"deny": "evil.fr"}}, "deny: expected an array of domain names"),
    ({"urls": {"shorteners": "maybe"}}, 'shorteners: expected "reject" or "allow"'),
    ({"segments": {"max": 0}}, "max: expected an integer from 1 to 255"),
    ({"duplicates": {"window": -1}}, "window: expected a positive number of seconds"),
])
def test_bad_content_options_are_config_errors(options: dict[str, Any], error: str) -> None:
    with pytest.raises(RulesConfigError) as err:
        parse_rules({"pipeline": list(options), "options": options}, ["demo"])
    assert error in err.value.message


def content_rules() -> Any:
    return parse_rules({
        "pipeline": ["recipient", "urls", "segments", "duplicates"], "region": "FR",
        "options": {"urls": {"deny": ["evil.fr"]}, "segments": {"max": 2}},
    }, ["demo", "other"])


async def test_content_checks_end_to_end_over_http_and_smpp(tmp_path: Path) -> None:
    async with running_stack(tmp_path, http=HttpConfig(port=0), rules=content_rules()) as (
            gw, sim), httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}",
                                        timeout=10) as client:
        headers = {"Authorization": "Bearer demo-token"}
        body = {"to": "0612345678", "from": "ACME", "text": "Votre code: 1234"}
        first = await client.post("/v1/messages", headers=headers, json=body)
        assert first.status_code == 202
        again = await client.post("/v1/messages", headers=headers,
                                  json={**body, "to": "+33612345678"})  # same number
        assert again.status_code == 409
        [error] = again.json()["errors"]
        assert error["reason"] == "duplicate"
        assert first.json()["messages"][0]["id"] in error["detail"]
        esme = SmpplibEsme(gw.smpp_port)

        def session() -> None:
            esme.bind()
            esme.submit("33612345679", b"Suivez https://evil.fr/colis")
            esme.submit("33612345679", b"", message_payload=b"x" * 307)  # 3 SMS
            esme.read_until(lambda: len(esme.resps) >= 2)
            esme.close()

        with trio.fail_after(20):
            await trio.to_thread.run_sync(session)
        assert sorted(r.status for r in esme.resps) == [ESME_RINVMSGLEN, ESME_RX_R_APPN]
        await wait_for(lambda: len(sim.submitted) == 1)
        assert sim.submitted[0].text == "Votre code: 1234"


async def test_duplicates_are_decided_from_the_stored_messages_across_a_restart(
        tmp_path: Path) -> None:
    rules = parse_rules({"pipeline": ["recipient", "duplicates", "urls"], "region": "FR",
                         "options": {"urls": {"deny": ["evil.fr"]}}}, ["demo", "other"])
    headers = {"Authorization": "Bearer demo-token"}
    code = {"to": "0612345678", "from": "ACME", "text": "Votre code: 1234"}

    def stack() -> Any:
        return running_stack(tmp_path, http=HttpConfig(port=0), rules=rules)

    async with stack() as (gw, _sim), httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gw.http_port}", timeout=10) as client:
        # a batch refused as a whole (a later rule refused its other message) sent nothing
        refused = await client.post("/v1/messages", headers=headers, json={"messages": [
            code, {**code, "text": "Suivez https://evil.fr/colis"}]})
        assert refused.status_code == 422
        # the same message twice in one batch: the copy is the duplicate (409), nothing sent
        twice = await client.post("/v1/messages", headers=headers, json={"messages": [
            code, {**code, "to": "+33612345678"}]})
        assert twice.status_code == 409 and twice.json()["errors"][0]["reason"] == "duplicate"
        first = await client.post("/v1/messages", headers=headers, json=code)
        assert first.status_code == 202  # neither refused batch counted as sent
        first_id = first.json()["messages"][0]["id"]
        stored = await gw.store.get_message(first_id)
        assert stored is not None and stored.fingerprint is not None
    async with stack() as (gw, sim), httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gw.http_port}", timeout=10) as client:
        again = await client.post("/v1/messages", headers=headers,
                                  json={**code, "to": "0033612345678"})
        assert again.status_code == 409
        [error] = again.json()["errors"]
        assert error["reason"] == "duplicate" and first_id in error["detail"]
        esme = SmpplibEsme(gw.smpp_port)

        def session() -> None:
            esme.bind()
            esme.submit("33612345678", b"Votre code: 1234")
            esme.submit("33612345678", b"Votre code: 5678")
            esme.read_until(lambda: len(esme.resps) >= 2)
            esme.close()

        with trio.fail_after(20):
            await trio.to_thread.run_sync(session)
        assert sorted(r.status for r in esme.resps) == [0, ESME_RX_R_APPN]
        await wait_for(lambda: len(sim.submitted) == 1)
        assert sim.submitted[0].text == "Votre code: 5678"
