"""Metrics an operator can alert on: after traffic through the running gateway, /metrics holds
every family with the values that traffic implies (transitions by from/to, live gauges,
latency histograms); the scrape passes `promtool check metrics`, the alert rules
`promtool check rules` and their unit tests (`promtool test rules`), and the Grafana dashboard
and the alerts name only metrics the gateway exports, in expressions Prometheus parses.

promtool comes from Debian's `prometheus` package (.ci/run installs it when missing); where it
is absent locally, the promtool tests are skipped saying so (CI installs it, so they run there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
import trio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import HttpConfig, SimulatorConfig
from tests.stack import SmpplibEsme, running_stack, wait_for

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "conf" / "prometheus" / "alerts.yml"
ALERTS_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "conf" / "grafana" / "smsgw.json"


@pytest.fixture
def promtool() -> str:
    """promtool's path; skipped where it is not installed, but a failure under CI (which
    installs it: these tests must run there)."""
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus); "
                    ".ci/run installs it, so CI runs this test")
    return found

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
MESSAGES = 6


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scrape: Samples, name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


def exported_names(text: str) -> set[str]:
    """Every series name the scrape declares, with or without samples yet (a labelled
    family with no child has only its HELP and TYPE lines)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                    "summary": ("_count", "_sum")}.get(family.type, ())
        names.update(family.name + suffix for suffix in suffixes)
    return names


async def scrape(port: int) -> str:
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert r.status_code == 200
    return r.text


async def traffic_then_scrape(tmp_path: Path) -> tuple[Samples, Samples, str]:
    """Scrapes before and after: MESSAGES over SMPP (each delivered, its receipt taken by the
    still bound transceiver) and one HTTP message (of the account "other", not bound)."""
    sim = SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, seed=7)  # all DELIVRD
    async with running_stack(tmp_path, sim, http=HttpConfig(port=0)) as (running, _sim):
        assert running.http_port is not None
        before = await scrape(running.http_port)
        esme = SmpplibEsme(running.smpp_port)
        await trio.to_thread.run_sync(esme.bind)

        def submit_all() -> None:
            for i in range(MESSAGES):
                esme.submit(f"3361234567{i}", b"Hello")
            esme.read_until(lambda: len(esme.resps) == MESSAGES
                            and len(esme.delivered) == MESSAGES)

        await trio.to_thread.run_sync(submit_all)
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://127.0.0.1:{running.http_port}/v1/messages",
                                  json={"to": "33612345699", "from": "ACME", "text": "Hi"},
                                  headers={"Authorization": "Bearer other-token"})
            assert r.status_code == 202, r.text
        await wait_for(lambda: not running.dispatcher.live)
        # The receipts' deletions (and their history events) are committed in the background.
        await wait_for(lambda: running.reporter.pending_count("demo") == 0)
        await wait_for(lambda: running.store.unfinished == 0 and not running.store.queued_rows)
        after = await scrape(running.http_port)
        await trio.to_thread.run_sync(esme.close)
    return samples(before), samples(after), after


async def test_a_scrape_after_traffic_shows_transitions_gauges_and_latencies(
        tmp_path: Path) -> None:
    before, after, _ = await traffic_then_scrape(tmp_path)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    n = MESSAGES + 1  # and the HTTP one
    moves = {("ACCEPTED", "QUEUED"): n, ("QUEUED", "IN_FLIGHT"): n,
             ("IN_FLIGHT", "DELIVERED"): n}
    for (src, dst), count in moves.items():
        assert delta("smsgw_message_transitions_total", **{"from": src, "to": dst}) == count
    assert delta("smsgw_message_transitions_total", **{"from": "IN_FLIGHT",
                                                       "to": "QUEUED"}) == 0
    # Live gauges: nothing unfinished once every message is final; binds as they are.
    for state in ("ACCEPTED", "SCHEDULED", "QUEUED", "IN_FLIGHT"):
        assert ("smsgw_unfinished_messages", frozenset({("state", state)})) in after
        assert value(after, "smsgw_unfinished_messages", state=state) == 0
    assert value(after, "smsgw_smsc_binds", smsc="sim") == 2
    assert value(after, "smsgw_upstream_binds", account="demo", mode="trx") == 1
    assert value(after, "smsgw_upstream_binds", account="other", mode="rx") == 0
    assert value(after, "smsgw_reports_pending", account="demo") == 0
    assert ("smsgw_store_queued_rows", frozenset()) in after
    assert value(after, "smsgw_smsc_queued_submits", smsc="sim") == 0
    assert delta("smsgw_reports_delivered_total", account="demo", kind="RECEIPT") == MESSAGES
    # Histograms, in seconds: one observation per accepted submit, per operator submit,
    # per finished message; commits and their sizes.
    assert delta("smsgw_submit_latency_seconds_count", interface="smpp") == MESSAGES
    assert delta("smsgw_submit_latency_seconds_count", interface="http") == 1
    assert delta("smsgw_operator_submit_latency_seconds_count", smsc="sim") == n
    assert delta("smsgw_receipt_latency_seconds_count", smsc="sim", state="DELIVERED") == n
    receipt_time = delta("smsgw_receipt_latency_seconds_sum", smsc="sim", state="DELIVERED")
    assert 0.05 * n <= receipt_time < 10 * n  # the simulator's receipt delay is 50 ms
    assert delta("smsgw_receipt_latency_seconds_bucket", smsc="sim", state="DELIVERED",
                 le="+Inf") == n
    assert 0 < delta("smsgw_submit_latency_seconds_sum", interface="smpp") < 10 * MESSAGES
    commits = delta("smsgw_store_commit_latency_seconds_count")
    assert commits >= 1 and delta("smsgw_store_batch_rows_count") == commits
    # Each message is at least its insert, its event and its update; rows per commit add up.
    assert delta("smsgw_store_batch_rows_sum") >= 3 * n


async def test_the_scrape_passes_promtool_check_metrics(tmp_path: Path, promtool: str) -> None:
    _, _, text = await traffic_then_scrape(tmp_path)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", \
        result.stdout + result.stderr  # not even a lint warning


def test_the_alert_rules_pass_promtool_check_and_their_unit_tests(promtool: str) -> None:
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    tested = subprocess.run([promtool, "test", "rules", ALERTS_TESTS.name], capture_output=True,
                            text=True, timeout=60, cwd=ALERTS_TESTS.parent)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []
    for panel in dashboard["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


def alert_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def metric_names(exprs: Iterable[str]) -> set[str]:
    return {name for e in exprs for name in re.findall(r"\bsmsgw_[a-z0-9_]+", e)}


async def test_the_dashboard_and_the_alerts_name_only_exported_metrics(tmp_path: Path) -> None:
    _, _, text = await traffic_then_scrape(tmp_path)
    exported = exported_names(text)
    dashboard = metric_names(dashboard_expressions())
    alerts = metric_names(alert_expressions())
    assert len(dashboard) >= 20 and len(alerts) >= 8  # the extraction found them
    assert dashboard - exported == set()
    assert alerts - exported == set()
    panels = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]
              if p["type"] == "row"]
    assert panels == ["Traffic", "Latency", "Errors", "Queue depth",
                      "Reports owed upstream", "Webhooks", "Binds"]


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path, promtool: str) -> None:
    """Each panel's query, its Grafana variables filled in, as a recording rule that
    `promtool check rules` parses."""
    rules = [{"record": f"smsgw:dashboard_query_{i}",
              "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*")}
             for i, e in enumerate(dashboard_expressions()) if "label_values" not in e]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rules)} rules found" in check.stdout
