"""Unsubscribe links where phones cannot reply STOP (Switzerland as the example): the STOP
mention is a short signed link; opening it only shows a page, its button (a POST) opts out."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import HttpConfig
from gateway.model import Message, new_message_id
from gateway.screening import CODEC
from rules.core import Context, Outcome
from rules.mention import MentionRule
from rules.settings import RulesConfigError, parse_rules
from rules.unsubscribe import make_token, read_token
from smpp.text import decode_text
from tests.stack import running_stack, wait_for

SECRET = "s3cret-s3cret-s3cret"
URL = "https://sms.example.com/u"
SWISS = "41791234567"
TEMPLATES = {"FR": "STOP au 36111", "CH": "Désabonnement: {link}"}


def secrets(account: str) -> str | None:
    return {"demo": SECRET, "other": "another-secret-0123"}.get(account)


def test_a_token_names_the_account_and_the_number_and_cannot_be_forged() -> None:
    token = make_token(SECRET, "demo", SWISS)
    assert len(token) == 22 and re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert read_token(token, ["other", "demo"], secrets) == ("demo", SWISS)
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert read_token(forged, ["demo"], secrets) is None
    assert read_token(make_token("wrong-secret-0123456", "demo", SWISS), ["demo"],
                      secrets) is None
    assert read_token(token, ["other"], secrets) is None  # not that account's
    assert read_token("short", ["demo"], secrets) is None
    assert read_token("!" * 22, ["demo"], secrets) is None


def test_only_the_written_spelling_of_a_token_is_read() -> None:
    token = make_token(SECRET, "demo", SWISS)
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    # the last character's 4 low bits are padding: its 15 other spellings decode alike
    same = [token[:-1] + c for c in alphabet
            if c != token[-1] and alphabet.index(c) >> 4 == alphabet.index(token[-1]) >> 4]
    assert len(same) == 15
    assert [read_token(t, ["demo"], secrets) for t in same] == [None] * 15
    assert read_token(token, ["demo"], secrets) == ("demo", SWISS)


def marketing(dest: str, ton: int = 5) -> Message:
    _, body = CODEC.encode("Soldes")
    return Message(
        id=new_message_id(), account="demo", source_addr="ACME", source_ton=ton, source_npi=0,
        dest_addr=dest, dest_ton=1, dest_npi=1, data_coding=0, esm_class=0, protocol_id=0,
        priority=0, registered_delivery=1, body=body, created_at=0, expires_at=86400,
        not_before=0, traffic="marketing",
    )  # fmt: skip


@pytest.mark.parametrize("ton", [5, 3])  # even from a short code: the phone cannot reply
def test_toward_switzerland_the_mention_is_an_unsubscribe_link(ton: int) -> None:
    ctx = Context(0, "demo", settings={"unsubscribe_url": URL, "unsubscribe_secret": SECRET},
                  codec=CODEC)
    decision = MentionRule({"templates": TEMPLATES}).apply(marketing(SWISS, ton), ctx)
    assert decision.outcome is Outcome.MODIFY
    body = {c.field: c.new for c in decision.changes}["body"]
    text = decode_text(body, 0)
    assert text == f"Soldes\nDésabonnement: {URL}/{make_token(SECRET, 'demo', SWISS)}"


def test_a_link_template_needs_the_url_and_the_secret() -> None:
    with pytest.raises(RulesConfigError) as err:
        parse_rules({"pipeline": ["mention"], "options": {"mention": {"templates": TEMPLATES}}},
                    ["demo"])
    assert err.value.key == "unsubscribe_url" and "{link}" in err.value.message
    with pytest.raises(RulesConfigError, match="ending in"):
        parse_rules({"unsubscribe_url": "https://sms.example.com/stop"}, ["demo"])
    with pytest.raises(RulesConfigError, match="at least 16"):
        parse_rules({"unsubscribe_secret": "short"}, ["demo"])


def link_rules() -> Any:
    return parse_rules({
        "pipeline": ["recipient", "optout", "mention"], "region": "FR",
        "unsubscribe_url": URL, "unsubscribe_secret": SECRET,
        "options": {"mention": {"templates": TEMPLATES}},
    }, ["demo", "other"])


async def test_opening_the_link_changes_nothing_and_its_button_opts_out(
        tmp_path: Path) -> None:
    async with running_stack(tmp_path, http=HttpConfig(port=0), rules=link_rules()) as (
            gw, sim), httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}",
                                        timeout=10) as client:
        headers = {"Authorization": "Bearer demo-token"}
        promo = {"to": SWISS, "from": "ACME", "text": "Soldes", "traffic": "marketing"}
        assert (await client.post("/v1/messages", headers=headers, json=promo)
                ).status_code == 202
        await wait_for(lambda: len(sim.submitted) == 1)
        text = sim.submitted[0].text
        assert text is not None
        link = re.search(r"https://sms\.example\.com(/u/[A-Za-z0-9_-]{22})", text)
        assert link is not None
        page = await client.get(link.group(1))  # what a link scanner does
        assert page.status_code == 200 and '<form method="post">' in page.text
        assert await gw.store.optouts("demo") == []
        done = await client.post(link.group(1))  # the button
        assert done.status_code == 200 and "Unsubscribed" in done.text
        [entry] = await gw.store.optouts("demo")
        assert (entry.msisdn, entry.source) == (SWISS, "link")
        again = await client.post("/v1/messages", headers=headers, json=promo)
        assert again.status_code == 422 and again.json()["errors"][0]["reason"] == "opted-out"
        assert (await client.get("/u/AAAAAAAAAAAAAAAAAAAAAA")).status_code == 404
        assert (await client.post("/u/AAAAAAAAAAAAAAAAAAAAAA")).status_code == 404
