"""`smsgw rules check`, the dry run: the demo's decisions on the issue's cases, as text and
JSON, without sending or storing anything; with the running daemon's opt-out list."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway import cli, rules_cli
from gateway.config import load_config
from tests.stack import running_stack

CONF = Path(__file__).resolve().parent.parent / "conf"
DEMO = str(CONF / "demo.toml")


@pytest.fixture(autouse=True)
def _repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CONF.parent)  # the demo's sender table path is relative


def check(capsys: pytest.CaptureFixture[str], *argv: str, config: str = DEMO
          ) -> tuple[int, Any]:
    capsys.readouterr()
    status = cli.main(["rules", "check", "--config", config, "--account", "demo", "--json",
                       *argv])
    out = capsys.readouterr().out
    return status, json.loads(out) if out else None


def outcomes(result: Any) -> list[tuple[str, str]]:
    return [(d["rule"], d["outcome"]) for d in result["decisions"]]


@pytest.mark.parametrize(("at", "until"), [
    ("2026-12-05T21:30:00+01:00", "2026-12-07T07:00:00Z"),  # Saturday evening
    ("2026-12-06T10:00:00+01:00", "2026-12-07T07:00:00Z"),  # Sunday
    ("2026-07-14T10:00:00+02:00", "2026-07-15T06:00:00Z"),  # 14 July
])
def test_the_dry_run_shows_why_marketing_is_deferred(capsys: pytest.CaptureFixture[str],
                                                     at: str, until: str) -> None:
    status, result = check(capsys, "--from", "Promo-Été!!", "--to", "0612345678", "--text",
                           "Soldes", "--service-type", "MKT", "--at", at)
    assert status == 0 and result["accepted"] and result["deferred"]
    assert outcomes(result) == [("recipient", "modify"), ("sender", "modify"),
                                ("optout", "accept"), ("urls", "accept"),
                                ("mention", "modify"), ("hours", "defer")]
    assert result["decisions"][-1]["until"] == until
    m = result["message"]
    assert (m["from"], m["from_ton"], m["from_npi"]) == ("PromoEte", 5, 0)
    assert (m["to"], m["to_ton"], m["to_npi"]) == ("33612345678", 1, 1)
    assert (m["number_type"], m["country"]) == ("mobile", "FR")  # what the routes read
    assert m["text"] == "Soldes\nSTOP au 36111" and m["segments"] == 1
    assert m["send_at"] == until and m["state"] == "SCHEDULED"


def test_the_dry_run_shows_a_refusal_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    status, result = check(capsys, "--from", "GOUVFR", "--to", "0612345678", "--text", "x")
    assert status == 1 and not result["accepted"]
    assert result["refused"] == {"rule": "sender", "reason": "forbidden-sender",
                                 "detail": "sender ID GOUVFR is forbidden toward FR",
                                 "smpp_status": "0x0000000A", "http_status": 422}


def test_an_alert_at_night_goes_at_once_and_the_text_output_says_so(
        capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    status = cli.main(["rules", "check", "--config", DEMO, "--account", "demo", "--from",
                       "ACME", "--to", "0612345678", "--text", "Code 1234", "--at",
                       "2026-12-06T03:00:00+01:00"])
    out = capsys.readouterr().out
    assert status == 0
    assert "ACCEPTED: would be sent 2026-12-06T02:00:00Z" in out
    assert "to 33612345678 (TON 1 NPI 1, mobile FR)" in out and "alert" in out
    assert "opt-out list consulted: none" in out


@pytest.mark.parametrize(("argv", "error"), [
    (["--account", "ghost"], "--account: 'ghost' is not an account"),
    (["--account", "demo", "--at", "saturday"], "--at: expected an ISO 8601 time"),
])
def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str],
                                        error: str) -> None:
    status = cli.main(["rules", "check", "--config", DEMO, "--from", "ACME", "--to",
                       "33612345678", "--text", "x", *argv])
    assert status == 2 and error in capsys.readouterr().err


async def test_the_dry_run_reads_the_running_daemons_optout_list_and_stores_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = load_config(CONF / "demo.toml").rules
    async with running_stack(tmp_path, rules=rules) as (gw, sim):
        await sim.inject_mo("33612345678", "36111", "STOP")
        with trio.fail_after(10):
            while not await gw.store.optouts("demo"):
                await trio.sleep(0.01)
        config = tmp_path / "gw.toml"  # the demo's rules, this daemon's admin socket
        config.write_text((CONF / "demo.toml").read_text().replace(
            'socket = "var/demo/admin.sock"', f'socket = "{gw.config.admin_socket}"'))
        before = sum((await gw.store.stats()).values())  # (the STOP confirmation's state moves)
        args = cli.build_parser().parse_args([
            "rules", "check", "--config", str(config), "--account", "demo", "--json",
            "--from", "ACME", "--to", "0612345678", "--text", "Promo", "--traffic",
            "marketing", "--at", "2026-12-07T12:00:00+01:00"])
        out = io.StringIO()  # (the daemon logs to stdout meanwhile)
        status = await trio.to_thread.run_sync(rules_cli.check, args, out)
        result = json.loads(out.getvalue())
        assert status == 1 and result["refused"]["reason"] == "opted-out"
        assert result["optout_list"] == "the running daemon's (1 numbers)"
        assert sum((await gw.store.stats()).values()) == before  # nothing stored


def test_the_demo_sends_an_unsubscribe_link_toward_switzerland(
        capsys: pytest.CaptureFixture[str]) -> None:
    status, result = check(capsys, "--from", "ACME", "--to", "+41791234567", "--text",
                           "Soldes", "--traffic", "marketing")
    assert status == 0
    assert result["message"]["text"].startswith(
        "Soldes\nDesabonnement: http://127.0.0.1:8080/u/")
