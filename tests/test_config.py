"""Configuration loading: shipped files load clean, defaults apply, and every error names the
file, the key (groups by their name) and what was expected."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.config import (
    AccountConfig,
    ConfigError,
    GatewayConfig,
    ListenerConfig,
    MetricsConfig,
    RetryConfig,
    SimulatorConfig,
    SmscConfig,
    check,
    load_config,
    load_simulator_config,
    parse_duration,
)
from gateway.passwords import verify_password

CONF = Path(__file__).resolve().parent.parent / "conf"

HASH = "scrypt$16384$8$1$tZL1pV5J7HRHO1nCzJ0b1w==$9WcHfOtnUIe1vAec0Pi0Bl+WNEICT+QnFELF2Ukumgg="

STORE = '[store]\npath = "var/test.sqlite3"\n'
LISTENER = "[[listener]]\nport = 2775\n"
ACCOUNT = f'[[account]]\nsystem_id = "acme"\npassword_hash = "{HASH}"\n'
SMSC = (
    '[[smsc]]\nname = "opA"\nhost = "smsc.example.net"\nport = 2775\n'
    'system_id = "gw"\npassword = "secret"\n'
)
ROUTE = '[[route]]\nname = "default"\nsmscs = ["opA"]\n'
MINIMAL = STORE + LISTENER + ACCOUNT + SMSC + ROUTE


def write(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message  # every error names the file first
    return message


# --- shipped files ---------------------------------------------------------------------------


def test_demo_config_loads_and_checks_clean() -> None:
    config = check(CONF / "demo.toml")
    assert [(lst.host, lst.port) for lst in config.listeners] == [("127.0.0.1", 2775)]
    assert verify_password("demopass", config.accounts["demo"].password_hash)
    assert verify_password("demo2pw", config.accounts["demo2"].password_hash)
    assert config.accounts["demo"].mo_addresses == ("36111",)
    sim = config.smscs["sim"]
    assert (sim.host, sim.port, sim.system_id, sim.password) == (
        "127.0.0.1",
        2776,
        "sim",
        "simpass",
    )
    assert (sim.bind_mode, sim.binds, sim.window) == ("transceiver", 2, 50)
    assert [(r.prefixes, r.smscs) for r in config.routes] == [((), ("sim",))]
    assert config.store.path == Path.cwd() / "var/demo/smsgw.sqlite3"
    assert (config.metrics.host, config.metrics.port) == ("127.0.0.1", 9775)
    assert config.simulator is not None
    assert (config.simulator.host, config.simulator.port) == (sim.host, sim.port)
    assert (config.simulator.system_id, config.simulator.password) == ("sim", "simpass")
    assert config.simulator.receipt_delay == 1.0


def test_example_config_loads_and_checks_clean() -> None:
    config = check(CONF / "gateway.example.toml")
    assert len(config.accounts) >= 2
    assert {s.bind_mode for s in config.smscs.values()} == {"transceiver", "transmitter+receiver"}
    by_prefix = {p: r.smscs for r in config.routes for p in r.prefixes}
    assert len(by_prefix["33"]) == 2  # primary then failover
    assert any(not r.prefixes for r in config.routes)  # a default route


def test_simulator_example_loads() -> None:
    sim = load_simulator_config(CONF / "simulator.example.toml")
    assert isinstance(sim, SimulatorConfig)
    shares = sim.delivered + sim.undeliverable + sim.expired + sim.no_receipt
    assert shares == pytest.approx(1.0)


# --- defaults and durations ------------------------------------------------------------------


def test_defaults_apply_to_omitted_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.source == (tmp_path / "x.toml").resolve()
    assert (config.node, config.validity, config.log_level) == ("smsgw", 86400.0, "info")
    assert config.listeners == (ListenerConfig(),)
    assert config.accounts == {"acme": AccountConfig(system_id="acme", password_hash=HASH)}
    assert config.smscs["opA"] == SmscConfig(
        name="opA", host="smsc.example.net", port=2775, system_id="gw", password="secret"
    )
    assert config.retry == RetryConfig()
    assert config.metrics == MetricsConfig()
    assert config.store.batch_max == 512
    assert config.store.retention == 180 * 86400
    assert config.simulator is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (1.5, 1.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("2d", 172800.0),
        ("1h30m", 5400.0),
        ("0.25s", 0.25),
    ],
)
def test_durations_accept_seconds_or_a_unit_string(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten", "30", "5 minutes", "-1s", "1w", True, -3, ""])
def test_durations_refuse_anything_else(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_durations_in_the_file_become_float_seconds(tmp_path: Path) -> None:
    text = MINIMAL.replace("port = 2775\n", 'port = 2775\nbind_timeout = "500ms"\n', 1)
    text += '[gateway]\nvalidity = "2d"\n[retry]\ninitial_delay = 10\nmax_delay = "5m"\n'
    config = load_config(write(tmp_path, text))
    assert config.listeners[0].bind_timeout == 0.5
    assert config.validity == 2 * 86400.0
    assert (config.retry.initial_delay, config.retry.max_delay) == (10.0, 300.0)


def test_relative_store_path_resolves_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    monkeypatch.chdir(tmp_path / "..")
    config = load_config(write(conf_dir, MINIMAL))
    assert config.store.path == Path.cwd() / "var/test.sqlite3"


def test_config_objects_are_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node = "other"  # type: ignore[misc]
    assert isinstance(config, GatewayConfig)


# --- errors: file + key + expectation --------------------------------------------------------


def test_wrong_type_names_group_key_expectation_and_value(tmp_path: Path) -> None:
    msg = error_of(
        tmp_path, MINIMAL.replace('password = "secret"', 'password = "secret"\nwindow = "ten"')
    )
    assert msg.endswith('smsc "opA".window: expected a positive integer, got "ten"')


def test_negative_window_is_refused(tmp_path: Path) -> None:
    msg = error_of(
        tmp_path, MINIMAL.replace('password = "secret"', 'password = "secret"\nwindow = -1')
    )
    assert msg.endswith('smsc "opA".window: expected a positive integer, got -1')


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    msg = error_of(
        tmp_path, MINIMAL.replace('password = "secret"', 'password = "secret"\nwindw = 5')
    )
    assert 'smsc "opA".windw: unknown key' in msg
    assert '"window"' in msg


def test_unknown_top_level_table_is_named(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + "[metrix]\nport = 1\n")
    assert "metrix: unknown table" in msg and '"metrics"' in msg


def test_route_to_unknown_smsc_is_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL.replace('smscs = ["opA"]', 'smscs = ["opA", "opB"]'))
    assert 'route "default".smscs' in msg and 'unknown smsc "opB"' in msg


def test_duplicate_account_is_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + ACCOUNT)
    assert 'account "acme".system_id: expected a unique system_id' in msg


def test_bad_bind_mode_lists_the_allowed_values(tmp_path: Path) -> None:
    text = MINIMAL.replace('password = "secret"', 'password = "secret"\nbind_mode = "trx"')
    msg = error_of(tmp_path, text)
    assert msg.endswith(
        'smsc "opA".bind_mode: expected one of "transceiver", "transmitter+receiver", got "trx"'
    )


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "opA"', "name = opA")
    msg = error_of(tmp_path, text)
    line = text.splitlines().index("name = opA") + 1
    assert f"line {line}" in msg and "TOML syntax error" in msg


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read"):
        load_config(tmp_path / "nope.toml")
