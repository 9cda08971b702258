"""The rules at intake, end to end: an SMPP submit (smpplib) and an HTTP post go through the
account's pipeline; refusals get the rule's SMPP status / HTTP problem; every decision is in
the message's history (stored with it), logged with its id and counted by rule and outcome."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client import REGISTRY

from gateway.config import HttpConfig
from rules.settings import parse_rules
from tests.openapi_check import check_response
from tests.rule_plugin import install_plugin
from tests.stack import SmpplibEsme, running_stack, wait_for

DEMO = {"Authorization": "Bearer demo-token"}


def decisions(rule: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("smsgw_rule_decisions_total",
                                     {"rule": rule, "outcome": outcome}) or 0.0


def plugin_rules() -> Any:
    return parse_rules({"pipeline": ["prefix", "banned-word"],
                        "options": {"prefix": {"prefix": "ACME: "}},
                        "account": {"other": {"pipeline": []}}}, ["demo", "other"])


async def test_smpp_submits_go_through_the_accounts_rules_and_decisions_are_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install_plugin(tmp_path, monkeypatch)
    before = (decisions("prefix", "modify"), decisions("banned-word", "reject"))
    async with running_stack(tmp_path, rules=plugin_rules()) as (gw, sim):
        esme = SmpplibEsme(gw.smpp_port)

        def session() -> None:
            esme.bind()
            esme.submit("33612345678", b"a forbidden offer")
            esme.submit("33612345678", b"Hello")
            esme.read_until(lambda: len(esme.resps) >= 2)  # error responses are in resps too
            esme.close()

        with trio.fail_after(20):
            await trio.to_thread.run_sync(session)
        assert [e.status for e in esme.errors] == [0x45]  # the plug-in's own status
        [resp] = [r for r in esme.resps if r.status == 0]
        message_id = resp.message_id.decode()
        await wait_for(lambda: len(sim.submitted) == 1)
        assert sim.submitted[0].text == "ACME: Hello"
        history = [e for e in await gw.store.events_of(message_id) if e.kind == "rule"]
        assert [(e.detail["rule"], e.detail["outcome"]) for e in history] == [
            ("prefix", "modify"), ("banned-word", "accept")]
        assert history[0].detail["changes"] == [
            {"field": "body", "old": b"Hello".hex(), "new": b"ACME: Hello".hex()}]
    assert decisions("prefix", "modify") == before[0] + 2  # both submits were prefixed
    assert decisions("banned-word", "reject") == before[1] + 1
    logged = capsys.readouterr().out
    assert any("rule.decision" in line and message_id in line for line in logged.splitlines())


async def test_http_posts_go_through_the_rules_and_a_refusal_names_the_rule(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch)
    async with running_stack(tmp_path, http=HttpConfig(port=0), rules=plugin_rules()) as (
            gw, sim), httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}",
                                 timeout=10) as client:
        resp = await client.post("/v1/messages", headers=DEMO, json={"messages": [
            {"to": "33612345678", "from": "ACME", "text": "fine"},
            {"to": "33612345679", "from": "ACME", "text": "forbidden"}]})
        problem = check_response(resp, "/v1/messages")
        assert resp.status_code == 422
        assert problem["errors"] == [{
            "pointer": "/messages/1/text", "rule": "banned-word", "reason": "banned-word",
            "detail": "text: the text holds a banned word (rule banned-word, reason "
                      "banned-word)"}]
        stats = await gw.store.stats()
        assert sum(stats.values()) == 0  # the batch is refused as a whole
        resp = await client.post("/v1/messages", headers=DEMO,
                                 json={"to": "33612345678", "from": "ACME", "text": "Hi"})
        assert resp.status_code == 202
        message_id = resp.json()["messages"][0]["id"]
        view = check_response(await client.get(f"/v1/messages/{message_id}", headers=DEMO),
                              "/v1/messages/{message_id}")
        assert view["text"] == "ACME: Hi"
        kinds = [(h["kind"], h["detail"].get("rule")) for h in view["history"]][:3]
        assert kinds == [("rule", "prefix"), ("rule", "banned-word"), ("accepted", None)]
        await wait_for(lambda: len(sim.submitted) == 1)


async def test_an_account_with_its_own_empty_pipeline_is_not_screened(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch)
    async with running_stack(tmp_path, rules=plugin_rules()) as (gw, sim):
        esme = SmpplibEsme(gw.smpp_port, "other", "otherpw")

        def session() -> None:
            esme.bind()
            esme.submit("33612345678", b"forbidden is fine here")
            esme.read_until(lambda: bool(esme.resps))
            esme.close()

        with trio.fail_after(20):
            await trio.to_thread.run_sync(session)
        await wait_for(lambda: len(sim.submitted) == 1)
        assert sim.submitted[0].text == "forbidden is fine here"
