"""Routing configuration: [[router]] chains, [breaker] with per-[[smsc]] overrides,
[[sender_limit]], [retry] jitter and [[account]] channels/voice load into typed config; every
refusal names the file, the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import BreakerConfig, RouterConfig, SenderLimitConfig, load_config
from tests.test_config import ACCOUNT, LISTENER, MINIMAL, SMSC, STORE, error_of, write

SMSC_B = SMSC.replace('name = "opA"', 'name = "opB"')
BASE = MINIMAL + SMSC_B


def router(body: str) -> str:
    return BASE + "[[router]]\n" + body


def test_a_chain_of_routers_loads_with_its_options(tmp_path: Path) -> None:
    text = BASE + '''
[[router]]
name = "acme-first"
type = "account"
accounts = ["acme"]
channels = ["sms:opB", "sms:opA"]
timeouts = { sms = "45s" }

[[router]]
name = "shared"
type = "weighted"
prefixes = ["33", "34"]
countries = ["FR"]
number_types = ["mobile"]
senders = ["ACME"]
channels = ["sms:opA", "sms:opB"]
weights = { opA = 3, opB = 0.5 }
priorities = { opB = 1 }
seed = 7

[[router]]
name = "q"
type = "quality"
channels = ["sms:opA", "sms:opB"]
window = "30m"
floor = 0.1
latency_target = "20s"
group_by = "prefix:4"
'''
    config = load_config(write(tmp_path, text))
    first, shared, quality = config.routers
    assert first == RouterConfig(name="acme-first", type="account", accounts=("acme",),
                                 channels=(("sms", "opB"), ("sms", "opA")),
                                 timeouts={"sms": 45.0})
    assert shared.prefixes == ("33", "34") and shared.countries == ("FR",)
    assert shared.number_types == ("mobile",) and shared.senders == ("ACME",)
    assert shared.weights == {"opA": 3.0, "opB": 0.5} and shared.priorities == {"opB": 1}
    assert shared.seed == 7
    assert (quality.window, quality.floor, quality.latency_target, quality.group_by) == (
        1800.0, 0.1, 20.0, "prefix:4")
    assert [r.name for r in config.routes] == ["default"]  # [[route]] is kept as it was


def test_routers_make_route_optional(tmp_path: Path) -> None:
    text = STORE + LISTENER + ACCOUNT + SMSC + (
        '[[router]]\nname = "all"\ntype = "priority"\nchannels = ["sms:opA"]\n')
    config = load_config(write(tmp_path, text))
    assert config.routes == () and config.routers[0].channels == (("sms", "opA"),)


def test_neither_route_nor_router_is_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, STORE + LISTENER + ACCOUNT + SMSC)
    assert msg.endswith("route: at least one [[route]] is required")


def test_breaker_defaults_and_an_smsc_override(tmp_path: Path) -> None:
    text = MINIMAL.replace('password = "secret"\n', 'password = "secret"\n'
                           'breaker = { failures = 2 }\n') + SMSC_B
    text += '[breaker]\ncooldown = "1m"\nprobes = 2\n'
    config = load_config(write(tmp_path, text))
    assert config.breaker == BreakerConfig(failures=5, cooldown=60.0, probes=2)
    assert config.smscs["opA"].breaker == BreakerConfig(failures=2, cooldown=60.0, probes=2)
    assert config.smscs["opB"].breaker is None


def test_sender_limits_jitter_and_account_channels_load(tmp_path: Path) -> None:
    text = BASE.replace(f'password_hash = "{ACCOUNT.split(chr(34))[3]}"\n',
                        f'password_hash = "{ACCOUNT.split(chr(34))[3]}"\n'
                        'channels = ["rcs", "sms"]\nvoice = true\n')
    text += '[retry]\njitter = "decorrelated"\n'
    text += '[[sender_limit]]\nsender = "33970000001"\nrate = 0.5\nburst = 3\n'
    text += '[[sender_limit]]\nsender = "ACME"\nrate = 10\nconnector = "opB"\n'
    config = load_config(write(tmp_path, text))
    assert config.accounts["acme"].channels == ("rcs", "sms") and config.accounts["acme"].voice
    assert config.retry.jitter == "decorrelated"
    assert config.sender_limits == (SenderLimitConfig("33970000001", 0.5, 3),
                                    SenderLimitConfig("ACME", 10.0, 1, "opB"))


# --- refusals: one per rule, each naming the file, the key and the expectation --------------

REFUSALS = [
    ("an unknown router type",
     router('name = "r"\ntype = "cheapest"\nchannels = ["sms:opA"]\n'),
     'router "r".type: expected one of "account", "destination", "prefix", "country", '
     '"sender", "priority", "weighted", "quality", "routes", "plugin", got "cheapest"'),
    ("a router without a type",
     router('name = "r"\nchannels = ["sms:opA"]\n'),
     'router "r".type: required key missing'),
    ("a router naming an unknown connector",
     router('name = "r"\ntype = "priority"\nchannels = ["sms:opA", "sms:opC"]\n'),
     'router "r".channels[1]: expected a sms connector ("opA", "opB"), got unknown sms '
     'connector "opC"'),
    ("a router naming a connector of a kind with none configured",
     router('name = "r"\ntype = "priority"\nchannels = ["rcs:rbm"]\n'),
     'router "r".channels[0]: expected a rcs connector (none configured), got unknown rcs '
     'connector "rbm"'),
    ("a channel that is not kind:connector",
     router('name = "r"\ntype = "priority"\nchannels = ["opA"]\n'),
     'router "r".channels[0]: expected "kind:connector" with kind sms, rcs or tts'),
    ("a channel of an unknown kind",
     router('name = "r"\ntype = "priority"\nchannels = ["fax:opA"]\n'),
     'router "r".channels[0]: expected "kind:connector"'),
    ("a router without channels",
     router('name = "r"\ntype = "priority"\n'),
     'router "r".channels: required key missing'),
    ("a channel listed twice",
     router('name = "r"\ntype = "priority"\nchannels = ["sms:opA", "sms:opA"]\n'),
     'router "r".channels[1]: expected each channel once, got "sms:opA" twice'),
    ("a negative weight",
     router('name = "w"\ntype = "weighted"\nchannels = ["sms:opA", "sms:opB"]\n'
            'weights = { opA = -1 }\n'),
     'router "w".weights.opA: expected a number >= 0'),
    ("a weight that is not a number",
     router('name = "w"\ntype = "weighted"\nchannels = ["sms:opA"]\nweights = { opA = "3" }\n'),
     'router "w".weights.opA: expected a number >= 0 (its share among the connectors of its '
     'priority), got "3"'),
    ("a weight for a connector the router does not use",
     router('name = "w"\ntype = "weighted"\nchannels = ["sms:opA"]\nweights = { opB = 1 }\n'),
     'router "w".weights.opB: expected a connector of the router\'s channels ("opA"), '
     'got "opB"'),
    ("weights all zero at one priority",
     router('name = "w"\ntype = "weighted"\nchannels = ["sms:opA", "sms:opB"]\n'
            'weights = { opA = 0, opB = 0 }\n'),
     'router "w".weights: expected a weight > 0 for at least one connector of priority 0 '
     '(opA, opB), got only zeros'),
    ("weights that are not a table",
     router('name = "w"\ntype = "weighted"\nchannels = ["sms:opA"]\nweights = [1]\n'),
     'router "w".weights: expected a table (e.g. {opA = 3, opB = 1}), got [1]'),
    ("a negative priority",
     router('name = "p"\ntype = "priority"\nchannels = ["sms:opA"]\npriorities = { opA = -1 }\n'),
     'router "p".priorities.opA: expected an integer >= 0 (lower goes first), got -1'),
    ("a key the router type does not take",
     router('name = "p"\ntype = "priority"\nchannels = ["sms:opA"]\nweights = { opA = 1 }\n'),
     'router "p".weights: not a key of a "priority" router (its keys: name, type, accounts'),
    ("a timeout for a channel kind the router does not use",
     router('name = "p"\ntype = "priority"\nchannels = ["sms:opA"]\ntimeouts = { rcs = "30s" }\n'),
     'router "p".timeouts.rcs: expected a channel kind among the router\'s channels (sms), '
     'got "rcs"'),
    ("a timeout that is not a duration",
     router('name = "p"\ntype = "priority"\nchannels = ["sms:opA"]\ntimeouts = { sms = "soon" }\n'),
     'router "p".timeouts.sms: expected a positive duration'),
    ("an account router without accounts",
     router('name = "a"\ntype = "account"\nchannels = ["sms:opA"]\n'),
     'router "a".accounts: accounts required by a router of type "account"'),
    ("a destination router without a destination filter",
     router('name = "d"\ntype = "destination"\naccounts = ["acme"]\nchannels = ["sms:opA"]\n'),
     'router "d".prefixes: prefixes or countries or number_types required by a router of '
     'type "destination"'),
    ("a router naming an unknown account",
     router('name = "a"\ntype = "account"\naccounts = ["nobody"]\nchannels = ["sms:opA"]\n'),
     'router "a".accounts[0]: expected the system_id of an [[account]], got unknown account '
     '"nobody"'),
    ("a country code in lower case",
     router('name = "c"\ntype = "country"\ncountries = ["fr"]\nchannels = ["sms:opA"]\n'),
     'router "c".countries[0]: expected an ISO 3166 alpha-2 country code, upper case'),
    ("a country code phonenumbers does not know",
     router('name = "c"\ntype = "country"\ncountries = ["XX"]\nchannels = ["sms:opA"]\n'),
     'router "c".countries[0]: expected a country code phonenumbers knows, got "XX"'),
    ("an unknown number type",
     router('name = "d"\ntype = "destination"\nnumber_types = ["landline"]\n'
            'channels = ["sms:opA"]\n'),
     'router "d".number_types[0]: expected one of "'),
    ("a prefix with a plus",
     router('name = "p"\ntype = "prefix"\nprefixes = ["+33"]\nchannels = ["sms:opA"]\n'),
     'router "p".prefixes[0]: expected a prefix written as a string of E.164 digits'),
    ("two routers of one name",
     router('name = "r"\ntype = "priority"\nchannels = ["sms:opA"]\n'
            '[[router]]\nname = "r"\ntype = "priority"\nchannels = ["sms:opB"]\n'),
     'router "r".name: expected a unique name, got "r" twice'),
    ("two routers of type routes",
     router('name = "a"\ntype = "routes"\n[[router]]\nname = "b"\ntype = "routes"\n'),
     'router "b".type: expected at most one router of type "routes"'),
    ("a routes router with no [[route]]",
     STORE + LISTENER + ACCOUNT + SMSC + '[[router]]\nname = "r"\ntype = "routes"\n',
     'router "r".type: "routes" routes by the [[route]] groups, and there is none'),
    ("a routes router with channels",
     router('name = "r"\ntype = "routes"\nchannels = ["sms:opA"]\n'),
     'router "r".channels: not a key of a "routes" router (its keys: name, type)'),
    ("a quality floor of zero",
     router('name = "q"\ntype = "quality"\nchannels = ["sms:opA"]\nfloor = 0\n'),
     'router "q".floor: expected a number > 0 and <= 1 (0 would starve a recovered connector)'),
    ("a quality grouping that is neither country nor prefix:N",
     router('name = "q"\ntype = "quality"\nchannels = ["sms:opA"]\ngroup_by = "operator"\n'),
     'router "q".group_by: expected "country" (calling code) or "prefix:N"'),
    ("a plug-in whose module is missing",
     router('name = "x"\ntype = "plugin"\nplugin = "no_such_module_zz:Router"\n'),
     'router "x".plugin: router \'no_such_module_zz:Router\': no module named '
     '\'no_such_module_zz\''),
    ("a plug-in class that is not a Router",
     router('name = "x"\ntype = "plugin"\nplugin = "gateway.config:ConfigError"\n'),
     'router "x".plugin: router \'gateway.config:ConfigError\': class ConfigError is not a '
     'Router'),
    ("a plug-in without a name of a class",
     router('name = "x"\ntype = "plugin"\n'),
     'router "x".plugin: required key missing'),
    ("a plug-in entry point that is not installed",
     router('name = "x"\ntype = "plugin"\nplugin = "no-such-router"\n'),
     'router "x".plugin: router \'no-such-router\': no entry point of that name in group '
     'smsgw.routers'),
    ("plug-in options that are not a table",
     router('name = "x"\ntype = "plugin"\nplugin = "routing.routers:StaticRouter"\n'
            'options = 3\n'),
     'router "x".options: expected a table'),
    ("a sender limit on an unknown connector",
     BASE + '[[sender_limit]]\nsender = "ACME"\nrate = 1\nconnector = "opC"\n',
     'sender_limit "ACME".connector: expected a connector ("opA", "opB"), got unknown '
     'connector "opC"'),
    ("a sender limit of zero",
     BASE + '[[sender_limit]]\nsender = "ACME"\nrate = 0\n',
     'sender_limit "ACME".rate: expected a positive number of messages per second, got 0'),
    ("a sender limit without a rate",
     BASE + '[[sender_limit]]\nsender = "ACME"\n',
     'sender_limit "ACME".rate: required key missing'),
    ("a sender limited twice on one connector",
     BASE + '[[sender_limit]]\nsender = "+33970000001"\nrate = 1\n'
            '[[sender_limit]]\nsender = "33970000001"\nrate = 2\n',
     'sender_limit "33970000001": expected one limit per sender and connector, got a second '
     'one (sender_limit[1])'),
    ("a breaker that opens after zero failures",
     BASE + "[breaker]\nfailures = 0\n",
     "breaker.failures: expected a positive integer, got 0"),
    ("an unknown key in an smsc's breaker",
     MINIMAL.replace('password = "secret"\n', 'password = "secret"\n'
                     'breaker = { failure = 3 }\n'),
     'smsc "opA".breaker.failure: unknown key (did you mean "failures"?)'),
    ("an smsc breaker that is not a table",
     MINIMAL.replace('password = "secret"\n', 'password = "secret"\nbreaker = 3\n'),
     'smsc "opA".breaker: expected a table of breaker options'),
    ("an unknown jitter",
     BASE + '[retry]\njitter = "random"\n',
     'retry.jitter: expected one of "none", "full", "equal", "decorrelated", got "random"'),
    ("tts as an account channel",
     BASE.replace('system_id = "acme"\n', 'system_id = "acme"\nchannels = ["tts"]\n'),
     'account "acme".channels[0]: expected "sms" or "rcs" (the tts channel, a voice call, is '
     'allowed by voice = true), got "tts"'),
    ("no account channel",
     BASE.replace('system_id = "acme"\n', 'system_id = "acme"\nchannels = []\n'),
     'account "acme".channels: expected a non-empty array of channel kinds, got []'),
    ("an account channel twice",
     BASE.replace('system_id = "acme"\n', 'system_id = "acme"\nchannels = ["sms", "sms"]\n'),
     'account "acme".channels: expected each channel once, got "sms" twice'),
]


@pytest.mark.parametrize(("rule", "text", "expected"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusal(tmp_path: Path, rule: str, text: str, expected: str) -> None:
    msg = error_of(tmp_path, text)
    assert expected in msg, msg
