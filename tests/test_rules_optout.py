"""STOP opt-out (rules/optout, gateway/inbound, gateway/screening, the store's optouts table):
keyword matching, the rule's scopes, the durable list, and end to end: an MO "Stop" to 36111
puts the phone on demo's list, the next MKT submit to it is refused while an alert still goes
out, across a restart; START takes it off; the MO still reaches the upstream, marked."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import httpx
import pytest
import trio

from gateway import cli
from gateway.config import HttpConfig, load_config
from gateway.model import Message, OptOut, Report, ReportKind, new_message_id
from gateway.reporter import TAG_OPTOUT, deliver_pdu
from gateway.screening import Screening
from gateway.store import Store
from rules.core import ESME_RX_R_APPN, Context, Outcome
from rules.optout import OptOutList, OptOutRule, fold, match_keyword
from rules.settings import RulesConfig, RulesConfigError, parse_rules
from smpp.text import decode_text
from tests.stack import SmpplibEsme, running_stack, wait_for

CONF = Path(__file__).resolve().parent.parent / "conf"
PHONE = "33612345678"
T0 = 1_780_000_000.0


@pytest.mark.parametrize(("text", "kind"), [
    ("STOP", "stop"), ("Stop", "stop"), ("stop", "stop"), ("  Stop  ", "stop"),
    ("STOP SMS", "stop"), ("stop   sms", "stop"), ("Stop all", "stop"), ("STOPALL", "stop"),
    ("ARRET", "stop"), ("Arrêt", "stop"), ("arrêt svp", "stop"), ("DESABO", "stop"),
    ("désabonnement", "stop"), ("Désinscription", "stop"), ("UNSUBSCRIBE me", "stop"),
    ("Stop!", "stop"), ("stop.", "stop"),
    ("START", "start"), ("Start", "start"), ("UNSTOP", "start"), ("unstop please", "start"),
    ("Arrêt stop", "start"),  # the longest keyword wins
    ("STOPPER", None), ("Hello, stop", None), ("bonjour", None), ("", None),
])
def test_mo_keywords_match_whatever_case_accents_and_spacing(text: str,
                                                             kind: str | None) -> None:
    assert match_keyword(text) == kind


def test_an_account_may_have_its_own_keywords() -> None:
    assert match_keyword("Halt", stop=["HALT"], start=["GO"]) == "stop"
    assert match_keyword("STOP", stop=["HALT"], start=["GO"]) is None
    assert fold("Désabo  -  Été!") == "DESABO ETE"


def mkt(traffic: str = "marketing", dest: str = PHONE) -> Message:
    return Message(
        id=new_message_id(), account="demo", source_addr="ACME", source_ton=5, source_npi=0,
        dest_addr=dest, dest_ton=1, dest_npi=1, data_coding=0, esm_class=0, protocol_id=0,
        priority=0, registered_delivery=1, body=b"Promo", created_at=T0,
        expires_at=T0 + 86400, not_before=T0, traffic=traffic,
    )  # fmt: skip


@pytest.mark.parametrize(("scope", "traffic", "outcome"), [
    (None, "marketing", Outcome.REJECT),  # default: marketing is refused
    (None, "alert", Outcome.ACCEPT),
    ("marketing", "alert", Outcome.ACCEPT),
    ("all", "alert", Outcome.REJECT),
    ("all", "marketing", Outcome.REJECT),
    ("none", "marketing", Outcome.ACCEPT),  # the account manages its lists itself
])
def test_the_optout_rule_refuses_what_the_accounts_scope_covers(
        scope: str | None, traffic: str, outcome: Outcome) -> None:
    lists = OptOutList()
    lists.set("demo", PHONE, True)
    settings = {} if scope is None else {"optout": scope}
    ctx = Context(T0, "demo", settings=settings, opted_out_of=lists.contains)
    decision = OptOutRule({}).apply(mkt(traffic), ctx)
    assert decision.outcome is outcome
    if outcome is Outcome.REJECT:
        assert (decision.reason, decision.smpp_status, decision.http_status) == (
            "opted-out", ESME_RX_R_APPN, 422)
    assert OptOutRule({}).apply(mkt(traffic, "33612345679"), ctx).outcome is Outcome.ACCEPT
    other = Context(T0, "demo2", settings=settings, opted_out_of=lists.contains)
    assert OptOutRule({}).apply(mkt(traffic), other).outcome is Outcome.ACCEPT  # per account


async def test_the_optout_list_is_durable_and_the_last_word_wins(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    async with Store.open(db) as store:
        await store.set_optouts([OptOut("demo", PHONE, True, T0, "mo"),
                                 OptOut("demo", "33612345679", True, T0, "cli"),
                                 OptOut("demo2", PHONE, True, T0, "import")])
        async with trio.open_nursery() as nursery:  # START then STOP, possibly one batch
            nursery.start_soon(store.set_optouts, [OptOut("demo", "33612345679", False,
                                                          T0 + 1, "mo")])
            nursery.start_soon(store.set_optouts, [OptOut("demo", PHONE, False, T0 + 1, "mo"),
                                                   OptOut("demo", PHONE, True, T0 + 2, "mo")])
    async with Store.open(db) as store:
        assert [(o.account, o.msisdn, o.source) for o in await store.optouts()] == [
            ("demo", PHONE, "mo"), ("demo2", PHONE, "import")]
        assert [o.msisdn for o in await store.optouts("demo2")] == [PHONE]


def test_an_mo_that_was_a_keyword_reaches_the_upstream_with_the_optout_tlv() -> None:
    report = Report("demo", ReportKind.MO, new_message_id(), PHONE, 1, 1, "36111", 0, 0, 0,
                    b"Stop", T0, extra={"optout": "stop"})
    assert deliver_pdu(report).tlvs[TAG_OPTOUT] == b"stop\0"
    assert TAG_OPTOUT not in deliver_pdu(dataclasses.replace(report, extra={})).tlvs


def demo_rules() -> RulesConfig:
    return load_config(CONF / "demo.toml").rules


async def test_stop_to_36111_refuses_the_next_mkt_submit_and_an_alert_still_goes_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CONF.parent)
    state = tmp_path / "state"
    state.mkdir()
    async with running_stack(state, rules=demo_rules(), http=HttpConfig(port=0)) as (gw, sim):
        rx = SmpplibEsme(gw.smpp_port)
        await trio.to_thread.run_sync(rx.bind, "receiver")
        await sim.inject_mo(PHONE, "36111", "Stop")
        with trio.fail_after(20):
            await trio.to_thread.run_sync(rx.read_until, lambda: bool(rx.delivered))
        rx.close()
        [mo] = rx.delivered  # the MO still goes upstream
        assert mo.short_message == b"Stop" and mo.destination_addr == b"36111"
        assert [o.msisdn for o in await gw.store.optouts("demo")] == [PHONE]
        # demo's confirmation goes back from its short code
        await wait_for(lambda: any(r.destination_addr == PHONE for r in sim.submitted))
        [confirmation] = sim.submitted
        assert (confirmation.source_addr, confirmation.source_ton) == ("36111", 3)
        assert confirmation.text == "Vous ne recevrez plus de SMS marketing de DEMO."

        esme = SmpplibEsme(gw.smpp_port)

        def session() -> None:
            esme.bind()
            esme.submit(PHONE, b"Promo -20%", service_type="MKT")
            esme.submit("0612345678", b"Promo -20%", service_type="MKT",
                        dest_addr_ton=0, dest_addr_npi=0)  # the same phone, national form
            esme.submit(PHONE, b"Your code: 1234")
            esme.read_until(lambda: len(esme.resps) >= 3)
            esme.close()

        with trio.fail_after(20):
            await trio.to_thread.run_sync(session)
        assert sorted(r.status for r in esme.resps) == [0, ESME_RX_R_APPN, ESME_RX_R_APPN]
        await wait_for(lambda: len(sim.submitted) == 2)
        assert sim.submitted[1].text == "Your code: 1234"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}",
                                     timeout=10) as client:
            resp = await client.post("/v1/messages", headers={
                "Authorization": "Bearer demo-token"}, json={
                "to": PHONE, "from": "ACME", "text": "Promo", "traffic": "marketing"})
            assert resp.status_code == 422
            assert resp.json()["errors"][0]["reason"] == "opted-out"
    async with running_stack(state, rules=demo_rules()) as (gw, sim):  # after a restart
        esme = SmpplibEsme(gw.smpp_port)

        def again() -> None:
            esme.bind()
            esme.submit(PHONE, b"Promo -30%", service_type="MKT")
            esme.read_until(lambda: bool(esme.resps))
            esme.close()

        with trio.fail_after(20):
            await trio.to_thread.run_sync(again)
        assert [r.status for r in esme.resps] == [ESME_RX_R_APPN]
        await sim.inject_mo(PHONE, "36111", "START")
        with trio.fail_after(10):
            while await gw.store.optouts("demo"):
                await trio.sleep(0.01)
        esme = SmpplibEsme(gw.smpp_port)
        with trio.fail_after(20):
            await trio.to_thread.run_sync(again)
        assert [r.status for r in esme.resps] == [0]


async def smsgw(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `smsgw ARGV` in a thread while the gateway runs in this trio run."""
    capsys.readouterr()
    status = await trio.to_thread.run_sync(cli.main, list(argv))
    out, err = capsys.readouterr()
    return status, out, err


async def test_smsgw_optout_lists_adds_removes_imports_and_exports_csv(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(CONF.parent)
    async with running_stack(tmp_path, rules=demo_rules()) as (gw, _sim):
        sock = ["--socket", str(gw.config.admin_socket), "--account", "demo"]
        status, out, _ = await smsgw(capsys, "optout", "add", *sock, "06 12 34 56 78",
                                     "+33612345679", "123")
        assert status == 1  # one refused
        assert "2 number(s) added" in out and "refused (not valid numbers): 123" in out
        status, out, _ = await smsgw(capsys, "optout", "list", *sock, "--json")
        assert status == 0
        assert [o["msisdn"] for o in json.loads(out)["optouts"]] == [PHONE, "33612345679"]
        assert gw.screening is not None and gw.screening.optouts.contains("demo", PHONE)
        csv_in = tmp_path / "in.csv"
        csv_in.write_text("msisdn\n0612345670\n+33612345671\n\n33612345679\n")
        status, out, _ = await smsgw(capsys, "optout", "import", *sock, str(csv_in))
        assert status == 0 and "3 number(s) added" in out
        status, out, _ = await smsgw(capsys, "optout", "remove", *sock, "0612345678")
        assert status == 0 and "1 number(s) removed" in out
        assert not gw.screening.optouts.contains("demo", PHONE)  # the rule sees it at once
        exported = tmp_path / "out.csv"
        status, _, err = await smsgw(capsys, "optout", "export", *sock, "-o", str(exported))
        assert status == 0 and "3 numbers exported" in err
        rows = list(csv.reader(exported.open()))
        assert rows[0] == ["msisdn", "opted_out_at", "source"]
        assert [(r[0], r[2]) for r in rows[1:]] == [
            ("33612345670", "import"), ("33612345671", "import"), ("33612345679", "import")]
        status, _, err = await smsgw(capsys, "optout", "list", "--socket",
                                     str(gw.config.admin_socket), "--account", "ghost")
        assert status == 1 and "expected a configured account" in err
        # a GDPR erasure takes the number off the lists, in the store and for the rules
        status, out, _ = await smsgw(capsys, "erase", "--msisdn", "+33612345679", "--socket",
                                     str(gw.config.admin_socket))
        assert status == 0 and "taken off the opt-out list of: demo" in out
        assert not gw.screening.optouts.contains("demo", "33612345679")
        assert [o.msisdn for o in await gw.store.optouts("demo")] == ["33612345670",
                                                                      "33612345671"]


def test_the_confirmation_may_depend_on_the_phones_country() -> None:
    config = parse_rules({"optout_confirmation": {"FR": "Désinscrit.", "default": "Done."}},
                         ["demo"])
    screening = Screening(config)
    french = screening.confirmation(OptOut("demo", PHONE, True, T0), "36111", T0, 86400)
    swiss = screening.confirmation(OptOut("demo", "41791234567", True, T0), "36111", T0, 86400)
    assert french is not None and swiss is not None
    assert decode_text(french.body, french.data_coding) == "Désinscrit."
    assert decode_text(swiss.body, swiss.data_coding) == "Done."
    assert (french.source_addr, french.source_ton, french.origin) == ("36111", 3, "rules")
    assert screening.confirmation(OptOut("demo", PHONE, False, T0), "36111", T0, 86400) is None
    assert Screening(parse_rules({}, ["demo"])).confirmation(
        OptOut("demo", PHONE, True, T0), "36111", T0, 86400) is None
    with pytest.raises(RulesConfigError, match="optout_confirmation"):
        parse_rules({"optout_confirmation": {"France": "x"}}, ["demo"])
