"""The README's Routing section cannot drift from the configuration it documents.

Each ```toml example of the section, completed with what it does not define itself (store,
listener, the accounts and SMSCs it names, a route when it has no router), loads with
gateway.config.load_config, builds its routing, and routes messages the way its text says.
The plug-in example's ```python block is written out as the module its TOML names.
"""

from __future__ import annotations

import json
import random
import re
import sys
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.config import GatewayConfig, load_config
from gateway.model import Message
from gateway.routing_setup import Routing, build_routing
from routing.backoff import retry_delay
from routing.core import Attempt, RoutePlan, RoutingContext
from tests.test_routers import CTX
from tests.test_routers import message as routers_message

README = Path(__file__).resolve().parents[1] / "README.md"
HASH = "scrypt$16384$8$1$tZL1pV5J7HRHO1nCzJ0b1w==$9WcHfOtnUIe1vAec0Pi0Bl+WNEICT+QnFELF2Ukumgg="
# What a reader fills in: the account's hash, the agent's key file.
PASSWORD_PLACEHOLDER = '"scrypt$..."'
CREDENTIALS = re.compile(r'^credentials_file = "[^"]*"', re.MULTILINE)
# The rest of a config, by what each piece defines.
BASE_ACCOUNTS = ("bank-otp", "shop-crm", "omni")
BASE_SMSCS = {"orange-fr-1": "smpp.orange.example", "sfr-fr": "10.20.30.40",
              "intl-agg": "smpp.aggregator.example"}
LINE_LIMIT = 365  # the section stays readable (about 350 lines)


def routing_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Routing\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def examples() -> dict[str, list[str]]:
    """The section's ```toml blocks, by the ### heading they stand under."""
    found: dict[str, list[str]] = {}
    heading = "(intro)"
    for match in re.finditer(r"^### ([^\n]+)$|^```toml\n(.*?)^```$", routing_section(),
                             re.MULTILINE | re.DOTALL):
        if match.group(1) is not None:
            heading = match.group(1).strip()
        else:
            found.setdefault(heading, []).append(match.group(2))
    return found


EXAMPLES = examples()


def python_block() -> str:
    (block,) = re.findall(r"^```python\n(.*?)^```$", routing_section(),
                          re.MULTILINE | re.DOTALL)
    return block


def complete(example: str, tmp_path: Path) -> str:
    """The example with its placeholders filled in and the rest of a config appended."""
    credentials = tmp_path / "rbm.json"
    credentials.write_text(json.dumps({"client_id": "smsgw", "client_secret": "secret"}))
    text = example.replace(PASSWORD_PLACEHOLDER, f'"{HASH}"')
    text = CREDENTIALS.sub(f'credentials_file = "{credentials}"', text)
    doc = tomllib.loads(text)  # the example alone is valid TOML
    accounts = {a["system_id"] for a in doc.get("account", [])}
    smscs = {s["name"] for s in doc.get("smsc", [])}
    rest = []
    if "store" not in doc:
        rest.append(f'[store]\npath = "{tmp_path / "smsgw.sqlite3"}"\n')
    if "listener" not in doc:
        rest.append("[[listener]]\nport = 0\n")
    rest += [f'[[account]]\nsystem_id = "{name}"\npassword_hash = "{HASH}"\n'
             for name in BASE_ACCOUNTS if name not in accounts]
    rest += [f'[[smsc]]\nname = "{name}"\nhost = "{host}"\nport = 2775\nsystem_id = "acme"\n'
             f'password = "pw"\n' for name, host in BASE_SMSCS.items() if name not in smscs]
    if "router" not in doc and "route" not in doc:
        rest.append('[[route]]\nname = "default"\nsmscs = ["orange-fr-1"]\n')
    return text + "\n" + "\n".join(rest)


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The README's plug-in module, importable as a package on sys.path would be."""
    code = python_block()
    name = re.match(r"# (\w+)\.py", code)
    assert name is not None, "the python block opens with '# <module>.py'"
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{name.group(1)}.py").write_text(code, encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    yield name.group(1)
    sys.modules.pop(name.group(1), None)


def load(heading: str, tmp_path: Path) -> tuple[GatewayConfig, Routing]:
    (example,) = EXAMPLES[heading]
    path = tmp_path / "gateway.toml"
    path.write_text(complete(example, tmp_path), encoding="utf-8")
    config = load_config(path)
    return config, build_routing(config)


def message(dest: str = "33612345678", account: str = "bank-otp", sender: str = "ACME",
            number_type: str = "", country: str = "") -> Message:
    """A message of the README's example account (tests/test_routers.py's, otherwise)."""
    return routers_message(dest, account, sender, number_type, country)


def targets(plan: RoutePlan | None) -> list[str]:
    assert plan is not None
    return [f"{a.channel}:{a.connector}" for a in plan.attempts]


# --- every example loads ----------------------------------------------------------------------


def test_the_routing_section_has_an_example_per_case() -> None:
    assert set(EXAMPLES) == set(CHECKS), "each example has its check below, and only those"
    assert all(len(blocks) == 1 for blocks in EXAMPLES.values())
    assert len(routing_section().splitlines()) <= LINE_LIMIT


@pytest.mark.parametrize("heading", sorted(EXAMPLES))
def test_each_routing_example_loads_and_routes_as_documented(
        heading: str, tmp_path: Path, plugin_module: str) -> None:
    config, routing = load(heading, tmp_path)
    CHECKS[heading](config, routing)


def test_the_plugin_example_names_the_module_the_python_block_is(plugin_module: str) -> None:
    (example,) = EXAMPLES["Plug-in router"]
    (router,) = tomllib.loads(example)["router"]
    assert router["plugin"].split(":")[0] == plugin_module


# --- what each example's text says ------------------------------------------------------------


def by_account(config: GatewayConfig, routing: Routing) -> None:
    plan = routing.router.plan(message(account="bank-otp"), CTX)
    assert targets(plan) == ["sms:orange-fr-1", "sms:sfr-fr"] and plan and plan.route == "otp"
    assert routing.router.plan(message(account="shop-crm"), CTX) is None


def by_prefix(config: GatewayConfig, routing: Routing) -> None:
    assert targets(routing.router.plan(message("262692123456"), CTX)) == [
        "sms:sfr-fr", "sms:orange-fr-1"]
    assert routing.router.plan(message("33612345678"), CTX) is None


def by_country(config: GatewayConfig, routing: Routing) -> None:
    assert targets(routing.router.plan(message("32470123456"), CTX)) == ["sms:intl-agg"]
    assert routing.router.plan(message("33612345678"), CTX) is None


def by_number_type(config: GatewayConfig, routing: Routing) -> None:
    assert config.rules is not None and "recipient" in config.rules.default.pipeline
    mobile = message("33612345678", number_type="mobile", country="FR")
    assert targets(routing.router.plan(mobile, CTX)) == ["sms:orange-fr-1"]
    for number_type in ("fixed_line", ""):  # another type, or none recorded: not this router
        other = message("33123456789", number_type=number_type, country="FR")
        assert routing.router.plan(other, CTX) is None


def by_sender(config: GatewayConfig, routing: Routing) -> None:
    for sender in ("33970000001", "+33970000001"):
        assert targets(routing.router.plan(message(sender=sender), CTX)) == ["sms:orange-fr-1"]
    assert routing.router.plan(message(sender="ACME"), CTX) is None


def priority(config: GatewayConfig, routing: Routing) -> None:
    order = ["sms:orange-fr-1", "sms:sfr-fr", "sms:intl-agg"]
    assert targets(routing.router.plan(message(), CTX)) == order
    orange_down = RoutingContext(0.0, lambda name: name != "orange-fr-1")
    assert targets(routing.router.plan(message(), orange_down)) == order[1:] + order[:1]


def first_shares(routing: Routing, draws: int = 4000) -> Counter[str]:
    firsts: Counter[str] = Counter()
    for _ in range(draws):
        plan = routing.router.plan(message(), CTX)
        assert targets(plan)[-1] == "sms:intl-agg" or len(targets(plan)) == 2
        firsts[targets(plan)[0]] += 1
    return firsts


def weighted(config: GatewayConfig, routing: Routing) -> None:
    firsts = first_shares(routing)
    assert set(firsts) == {"sms:orange-fr-1", "sms:sfr-fr"}  # the aggregator never first
    assert 0.70 < firsts["sms:orange-fr-1"] / 4000 < 0.80  # 3/4


def quality(config: GatewayConfig, routing: Routing) -> None:
    (router,) = config.routers
    assert (router.window, router.floor, router.latency_target, router.group_by) == (
        3600.0, 0.05, 20.0, "country")
    (tracker,) = routing.trackers
    for second in range(100):  # Orange stops delivering to France
        routing.observe("orange-fr-1", "33612345678", False, None, float(second))
    later = RoutingContext(100.0)
    firsts = Counter(targets(routing.router.plan(message(), later))[0] for _ in range(4000))
    assert 0 < firsts["sms:orange-fr-1"] / 4000 < 0.1  # the floor keeps it a little traffic
    assert tracker.score("sfr-fr", "33612345678", 100.0) == 1.0


def plugin(config: GatewayConfig, routing: Routing) -> None:
    plan = routing.router.plan(message(number_type="mobile"), CTX)
    assert targets(plan) == ["sms:sfr-fr", "sms:orange-fr-1"] and plan and \
        plan.route == "least-cost"
    assert routing.router.plan(message(number_type="fixed_line"), CTX) is None
    assert routing.router.plan(message("44712345678"), CTX) is None  # its prefixes filter


def rcs_first(config: GatewayConfig, routing: Routing) -> None:
    omni = config.accounts["omni"]
    assert omni.channels == ("rcs", "sms") and omni.rcs_wait == 60.0
    assert config.rcs["rbm"].sms_sender == "ACME" and config.rcs["rbm"].push_token
    plan = routing.router.plan(message(account="omni", sender="SHOP"), CTX)
    assert plan is not None and plan.attempts == (
        Attempt("rcs", "rbm", timeout=60.0), Attempt("sms", "orange-fr-1", sender="ACME"))


def tts(config: GatewayConfig, routing: Routing) -> None:
    omni = config.accounts["omni"]
    assert omni.voice and omni.language == "fr-FR"
    voice = config.voice["voice"]
    assert voice.voices["fr"] == "Celine" and voice.callback_token
    fixed = {"dest": "33123456789", "number_type": "fixed_line", "country": "FR"}
    plan = routing.router.plan(message(account="omni", **fixed), CTX)
    assert plan is not None and plan.attempts == (Attempt("tts", "voice"),)
    assert routing.router.plan(message(account="bank-otp", **fixed), CTX) is None  # no voice


def breaker(config: GatewayConfig, routing: Routing) -> None:
    assert (config.breaker.failures, config.breaker.cooldown, config.breaker.probes) == (
        5, 30.0, 1)
    own = config.smscs["intl-agg"].breaker
    assert own is not None and (own.failures, own.cooldown, own.probes) == (3, 120.0, 1)
    for connector, failures in (("intl-agg", 3), ("orange-fr-1", 5)):
        for _ in range(failures - 1):
            routing.breakers[connector].failure(0.0)
        assert routing.breakers.available(connector, 0.0)
        routing.breakers[connector].failure(0.0)
        assert not routing.breakers.available(connector, 1.0)
    assert routing.breakers.available("intl-agg", 120.0)  # half-open: a probe may go


def sender_limits(config: GatewayConfig, routing: Routing) -> None:
    limiter = routing.limiter
    assert limiter.delay_for("orange-fr-1", "33970000001", 0.0) == 0.0
    assert limiter.delay_for("sfr-fr", "+33970000001", 0.0) == pytest.approx(1.0)
    assert [limiter.delay_for("sfr-fr", "ACME", 0.0) for _ in range(20)] == [0.0] * 20
    assert limiter.delay_for("sfr-fr", "ACME", 0.0) == pytest.approx(0.05)
    assert all(limiter.delay_for("orange-fr-1", "ACME", 0.0) == 0.0 for _ in range(100))


def retry(config: GatewayConfig, routing: Routing) -> None:
    backoff = routing.backoff
    assert (backoff.initial, backoff.cap, backoff.multiplier, backoff.jitter) == (
        5.0, 300.0, 2.0, "equal")
    rng = random.Random(1)
    assert all(2.5 <= retry_delay(1, backoff, rng) <= 5.0 for _ in range(100))
    assert all(150.0 <= retry_delay(9, backoff, rng) <= 300.0 for _ in range(100))


CHECKS: dict[str, Callable[[GatewayConfig, Routing], None]] = {
    "By account": by_account,
    "By destination prefix": by_prefix,
    "By country": by_country,
    "By number type (mobile, fixed line)": by_number_type,
    "By sender": by_sender,
    "Static priority list with failover": priority,
    "Weighted load sharing": weighted,
    "Quality router": quality,
    "Plug-in router": plugin,
    "RCS first, SMS fallback": rcs_first,
    "TTS for fixed lines": tts,
    "Circuit breaker": breaker,
    "Sender limits": sender_limits,
    "Retry backoff with jitter": retry,
}
