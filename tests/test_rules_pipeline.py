"""The rules pipeline (rules/core, rules/settings, rules/registry): decisions, their order,
per-account configuration with defaults, plug-ins by dotted path and by entry point."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import smpplib.consts

from gateway.config import ConfigError, load_config
from gateway.model import Message, State, new_message_id
from rules import core
from rules.core import Change, Context, Decision, Outcome, Pipeline
from rules.settings import RulesConfigError, build_pipelines, parse_rules
from tests.rule_plugin import install_plugin

T0 = 1_780_000_000.0


def message(**changes: Any) -> Message:
    m = Message(
        id=new_message_id(), account="demo", source_addr="ACME", source_ton=5, source_npi=0,
        dest_addr="33612345678", dest_ton=1, dest_npi=1, data_coding=0, esm_class=0,
        protocol_id=0, priority=0, registered_delivery=1, body=b"Hello", created_at=T0,
        expires_at=T0 + 86400, not_before=T0, next_attempt_at=T0,
    )  # fmt: skip
    for key, value in changes.items():
        setattr(m, key, value)
    return m


class Fixed:
    """A rule answering the same decision every time, counting its calls."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.calls = 0

    def apply(self, message: Message, context: Context) -> Decision:
        self.calls += 1
        return self.decision


CTX = Context(T0, "demo")


def test_smpp_statuses_spelled_in_rules_match_smpplibs_table() -> None:
    assert core.ESME_RINVSRCADR == smpplib.consts.SMPP_ESME_RINVSRCADR
    assert core.ESME_RINVDSTADR == smpplib.consts.SMPP_ESME_RINVDSTADR
    assert core.ESME_RINVMSGLEN == smpplib.consts.SMPP_ESME_RINVMSGLEN
    assert core.ESME_RX_R_APPN == smpplib.consts.SMPP_ESME_RX_R_APPN
    assert core.ESME_RSYSERR == smpplib.consts.SMPP_ESME_RSYSERR


def test_rules_run_in_order_and_a_modification_is_seen_by_the_next_rule() -> None:
    seen: list[str] = []

    class Look:
        def apply(self, message: Message, context: Context) -> Decision:
            seen.append(message.source_addr)
            return Decision.accept()

    rename = Fixed(Decision.modify([Change("source_addr", "ACME", "Acme")], "renamed"))
    verdict = Pipeline([("look1", Look()), ("rename", rename), ("look2", Look())]).run(
        m := message(), CTX)
    assert seen == ["ACME", "Acme"] and m.source_addr == "Acme"
    assert [d.rule for d in verdict.decisions] == ["look1", "rename", "look2"]
    assert [d.outcome for d in verdict.decisions] == [Outcome.ACCEPT, Outcome.MODIFY,
                                                     Outcome.ACCEPT]
    assert verdict.rejected is None
    assert verdict.decisions[1].json() == {
        "rule": "rename", "outcome": "modify", "detail": "renamed",
        "changes": [{"field": "source_addr", "old": "ACME", "new": "Acme"}]}


def test_the_first_rejection_stops_the_pipeline_with_its_statuses() -> None:
    later = Fixed(Decision.accept())
    refuse = Fixed(Decision.reject("nope", "not today", smpp_status=0x0B, http_status=422,
                                   subject="recipient"))
    verdict = Pipeline([("refuse", refuse), ("later", later)]).run(message(), CTX)
    assert later.calls == 0
    assert verdict.rejected is not None and verdict.rejected.rule == "refuse"
    assert verdict.rejected.json() == {"rule": "refuse", "outcome": "reject", "reason": "nope",
                                       "detail": "not today", "smpp_status": 0x0B,
                                       "http_status": 422}


def test_a_deferral_schedules_the_message_and_its_validity_counts_from_the_new_time() -> None:
    until = T0 + 3600
    verdict = Pipeline([("wait", Fixed(Decision.defer(until, "night", "after 08:00")))]).run(
        m := message(), CTX)
    assert verdict.deferred and m.state is State.SCHEDULED
    assert (m.not_before, m.next_attempt_at, m.expires_at) == (until, until, until + 86400)


def test_a_rule_that_raises_or_changes_bookkeeping_refuses_the_message_visibly() -> None:
    class Broken:
        def apply(self, message: Message, context: Context) -> Decision:
            raise RuntimeError("boom")

    verdict = Pipeline([("broken", Broken())]).run(message(), CTX)
    assert verdict.rejected is not None and verdict.rejected.reason == "rule-failed"
    assert "RuntimeError: boom" in verdict.rejected.detail
    sneaky = Fixed(Decision.modify([Change("account", "demo", "other")]))
    verdict = Pipeline([("sneaky", sneaky)]).run(m := message(), CTX)
    assert verdict.rejected is not None and "may not change account" in verdict.rejected.detail
    assert m.account == "demo"


def test_rules_config_has_defaults_for_all_accounts_and_per_account_overrides() -> None:
    config = parse_rules({
        "pipeline": ["recipient"], "region": "FR",
        "options": {"recipient": {"types": ["mobile"]}},
        "account": {"demo2": {"pipeline": [], "region": "BE"},
                    "demo3": {"options": {"recipient": {"types": ["fixed_line"]}}}},
    }, ["demo", "demo2", "demo3"])
    assert config.of("demo").pipeline == ("recipient",)
    assert config.of("demo").settings == {"region": "FR"}
    assert config.of("demo2").pipeline == ()
    assert config.of("demo2").settings == {"region": "BE"}
    assert config.of("demo3").pipeline == ("recipient",)
    assert config.of("demo3").options["recipient"] == {"types": ["fixed_line"]}
    assert config.of("demo3").settings == {"region": "FR"}
    pipelines = build_pipelines(config)
    assert pipelines.of("demo")[0].names == ("recipient",)
    assert pipelines.of("demo2")[0].names == ()
    assert parse_rules(None, ["demo"]).of("demo").pipeline == ()


@pytest.mark.parametrize(("data", "key", "text"), [
    ({"pipeline": "recipient"}, "pipeline", "expected an array of rule names"),
    ({"pipeline": ["nosuchrule"]}, "pipeline[0]", "unknown rule 'nosuchrule'"),
    ({"pipeline": ["nosuchmodule.x:Rule"]}, "pipeline[0]", "cannot import module"),
    ({"region": "France"}, "region", "two capital letters"),
    ({"colour": 1}, "colour", "unknown key"),
    ({"account": {"ghost": {}}}, "account.ghost", "unknown account"),
    ({"account": {"demo": {"pipeline": ["recipient", 3]}}}, "account.demo.pipeline",
     "expected an array of rule names"),
    ({"pipeline": ["recipient"], "options": {"recipient": {"typo": 1}}}, "pipeline[0]",
     "unknown option 'typo'"),
])
def test_a_bad_rules_table_names_its_key(data: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(RulesConfigError) as err:
        parse_rules(data, ["demo"])
    assert err.value.key == key and text in err.value.message


def test_a_bad_rule_in_the_gateway_config_names_file_and_key(tmp_path: Path) -> None:
    demo = (Path(__file__).parent.parent / "conf" / "demo.toml").read_text()
    conf = tmp_path / "gw.toml"
    conf.write_text(demo.replace('pipeline = ["recipient", "sender", "optout", "urls", '
                                 '"mention", "hours"]',
                                 'pipeline = ["recipient", "nosuchrule"]'))
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert str(err.value).startswith(f"{conf}: rules.")
    assert "pipeline[1]: unknown rule 'nosuchrule'" in str(err.value)


def test_a_rule_given_by_dotted_path_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    (tmp_path / "local_rules.py").write_text(textwrap.dedent('''
        from rules.core import Decision

        class Night:
            def __init__(self, options):
                self.hours = options.get("hours", 1)

            def apply(self, message, context):
                return Decision.defer(context.now + 3600 * self.hours, "night", "later")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = parse_rules({"pipeline": ["local_rules:Night"],
                          "options": {"local_rules:Night": {"hours": 2}}}, ["demo"])
    pipeline, _ = build_pipelines(config).of("demo")
    verdict = pipeline.run(m := message(), CTX)
    assert verdict.decisions[0].rule == "local_rules:Night"
    assert m.not_before == T0 + 7200


def test_a_rule_installed_from_a_separate_package_runs_by_its_entry_point(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch)
    config = parse_rules({"pipeline": ["prefix", "banned-word"],
                          "options": {"prefix": {"prefix": "ACME: "}}}, ["demo"])
    pipeline, _ = build_pipelines(config).of("demo")
    verdict = pipeline.run(m := message(), CTX)
    assert verdict.rejected is None and m.body == b"ACME: Hello"
    verdict = pipeline.run(message(body=b"a forbidden word"), CTX)
    assert verdict.rejected is not None and verdict.rejected.reason == "banned-word"
