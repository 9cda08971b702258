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
from gateway.screening import CODEC
from rules.content import DuplicateRule, SegmentsRule, UrlRule, hosts
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
    first = message("Votre code: 1234")
    assert rule.apply(first, ctx()).outcome is Outcome.ACCEPT
    again = rule.apply(message("Votre code: 1234"), ctx(T0 + 599))
    assert again.outcome is Outcome.REJECT and again.reason == "duplicate"
    assert again.http_status == 409 and first.id in again.detail
    assert again.facts["first_message"] == first.id
    # another text, another number, another account: not duplicates
    assert rule.apply(message("Votre code: 1235"), ctx(T0 + 1)).outcome is Outcome.ACCEPT
    assert rule.apply(message("Votre code: 1234", "33612345679"),
                      ctx(T0 + 1)).outcome is Outcome.ACCEPT
    assert rule.apply(message("Votre code: 1234", account="other"),
                      ctx(T0 + 1)).outcome is Outcome.ACCEPT
    # after the window: sent again
    assert rule.apply(message("Votre code: 1234"), ctx(T0 + 601)).outcome is Outcome.ACCEPT


def test_duplicate_memory_is_bounded() -> None:
    rule = DuplicateRule({"window": 600, "max_entries": 2})
    for i in range(3):
        rule.apply(message(f"text {i}"), ctx(T0 + i))
    assert len(rule.seen) == 2
    assert rule.apply(message("text 0"), ctx(T0 + 5)).outcome is Outcome.ACCEPT  # forgotten


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
