"""Configuration loading: shipped files load clean, defaults apply, and every error names the
file, the key (groups by their name) and what was expected."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.config import (
    AccountConfig,
    AdminConfig,
    BreakerConfig,
    ConfigError,
    GatewayConfig,
    HttpConfig,
    ListenerConfig,
    RcsConfig,
    RetryConfig,
    RouterConfig,
    SenderLimitConfig,
    SimulatorConfig,
    SmscConfig,
    StoreConfig,
    check,
    load_config,
    load_simulator_config,
    parse_duration,
    shared_document,
)
from gateway.passwords import verify_password
from gateway.tokens import TokenIndex, hash_token
from routing.tts import VoiceSettings

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
    demo = config.accounts["demo"]
    assert demo.webhook_secret == "demo-webhook-secret-change-me" and demo.webhook_url is None
    assert not demo.mo_by_webhook  # its MO stay on its SMPP binds
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
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8080)
    assert TokenIndex({"demo": config.accounts["demo"].http_tokens}).account_of(
        "demo-token") == "demo"
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
    assert config.http == HttpConfig()
    assert config.store == StoreConfig(path=config.store.path)
    assert config.store.batch_max == 512
    assert config.store.retention == 180 * 86400
    assert config.store.synchronous == "full"  # acknowledged means fsynced
    assert config.store.report_expiry == 72 * 3600
    assert config.simulator is None


def test_store_durability_and_bounds_are_read_and_checked(tmp_path: Path) -> None:
    text = MINIMAL.replace(STORE, STORE + 'synchronous = "normal"\nqueue_max = 500\n'
                           'unfinished_max = 2000\nreport_expiry = "2d"\n')
    store = load_config(write(tmp_path, text)).store
    assert (store.synchronous, store.queue_max, store.unfinished_max, store.report_expiry) == (
        "normal", 500, 2000, 2 * 86400.0)
    msg = error_of(tmp_path, MINIMAL.replace(STORE, STORE + 'synchronous = "off"\n'))
    assert 'store.synchronous: expected one of "full", "normal", got "off"' in msg
    msg = error_of(tmp_path, MINIMAL.replace(STORE, STORE + "unfinished_max = 0\n"))
    assert "store.unfinished_max: expected a positive integer, got 0" in msg


def test_a_postgresql_store_needs_a_dsn_and_an_admin_socket_and_no_path(tmp_path: Path) -> None:
    pg = '[store]\nbackend = "postgresql"\ndsn = "postgresql://smsgw@127.0.0.1:5433/smsgw"\n'
    admin = f'[admin]\nsocket = "{tmp_path / "node-a.sock"}"\n'
    config = load_config(write(tmp_path, MINIMAL.replace(STORE, pg) + admin))
    assert config.store.backend == "postgresql" and config.store.path is None
    assert config.store.where == "postgresql://smsgw@127.0.0.1:5433/smsgw"
    assert config.admin_socket == tmp_path / "node-a.sock"
    msg = error_of(tmp_path, MINIMAL.replace(STORE, pg))
    assert 'admin.socket: required with [store] backend = "postgresql"' in msg
    msg = error_of(tmp_path, MINIMAL.replace(STORE, '[store]\nbackend = "postgresql"\n') + admin)
    assert "store.dsn: required key missing (expected a PostgreSQL URI" in msg
    msg = error_of(tmp_path, MINIMAL.replace(STORE, pg + 'path = "x.sqlite"\n') + admin)
    assert 'store.path: no path with backend = "postgresql"' in msg
    msg = error_of(tmp_path, MINIMAL.replace(STORE, pg.replace("postgresql://", "mysql://"))
                   + admin)
    assert "store.dsn: expected a PostgreSQL URI" in msg
    msg = error_of(tmp_path, MINIMAL.replace(STORE, STORE + 'dsn = "postgresql://x/y"\n'))
    assert 'store.dsn: no dsn with backend = "sqlite"' in msg
    msg = error_of(tmp_path, MINIMAL.replace(STORE, STORE + 'backend = "mysql"\n'))
    assert 'store.backend: expected one of "sqlite", "postgresql", got "mysql"' in msg
    assert not config.store.shared  # one gateway process unless the file says several
    shared = load_config(write(tmp_path, MINIMAL.replace(STORE, pg + "shared = true\n") + admin))
    assert shared.store.shared
    msg = error_of(tmp_path, MINIMAL.replace(STORE, STORE + "shared = true\n"))
    assert 'store.shared: true only with backend = "postgresql"' in msg


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
    text += ('[gateway]\nvalidity = "2d"\nshutdown_timeout = "1m"\n'
             '[retry]\ninitial_delay = 10\nmax_delay = "5m"\n')
    config = load_config(write(tmp_path, text))
    assert config.listeners[0].bind_timeout == 0.5
    assert config.validity == 2 * 86400.0
    assert config.shutdown_timeout == 60.0
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


def test_a_shutdown_timeout_that_is_no_duration_is_refused_naming_the_key(tmp_path: Path
                                                                           ) -> None:
    msg = error_of(tmp_path, MINIMAL + '[gateway]\nshutdown_timeout = "soon"\n')
    assert msg.endswith('gateway.shutdown_timeout: expected a positive duration (seconds, or a '
                        'string like "500ms", "30s", "5m", "24h", "2d"), got "soon"')


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
    msg = error_of(tmp_path, MINIMAL + "[htttp]\nport = 1\n")
    assert "htttp: unknown table" in msg and '"http"' in msg


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


def smsc_with(extra: str) -> str:
    """MINIMAL with ``extra`` lines added to the [[smsc]] "opA" group."""
    return MINIMAL.replace('password = "secret"\n', f'password = "secret"\n{extra}\n')


def test_misspelt_required_key_is_reported_as_unknown_not_missing(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL.replace('host = "smsc.example.net"', 'hots = "x"'))
    assert msg.endswith('smsc "opA".hots: unknown key (did you mean "host"?)')


def test_key_under_the_wrong_table_says_where_it_belongs(tmp_path: Path) -> None:
    # a key written after [[route]] belongs to that route in TOML, not to [gateway]
    msg = error_of(tmp_path, MINIMAL + 'log_level = "debug"\n')
    assert 'route "default".log_level: unknown key' in msg
    assert "[gateway]" in msg


def test_missing_required_key_names_it_and_its_type(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL.replace('host = "smsc.example.net"\n', ""))
    assert msg.endswith(
        'smsc "opA".host: required key missing (expected a host name or IP address)'
    )


def test_group_without_usable_name_is_named_by_index(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL.replace('name = "opA"', "name = 7"))
    assert "smsc[0].name: expected a name" in msg and "got 7" in msg


def test_bad_array_element_is_named_by_index(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "default"', 'name = "default"\nprefixes = ["33", "+34"]')
    msg = error_of(tmp_path, text)
    assert 'route "default".prefixes[1]: expected a prefix' in msg and 'got "+34"' in msg


def test_integer_key_refuses_a_float(tmp_path: Path) -> None:
    msg = error_of(tmp_path, smsc_with("binds = 2.5"))
    assert msg.endswith('smsc "opA".binds: expected a positive integer, got 2.5')


def test_number_keys_accept_integers(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, smsc_with("throughput = 100\ninterface_version = 0x33")))
    assert config.smscs["opA"].throughput == 100.0
    assert config.smscs["opA"].interface_version == 0x33


def test_single_table_where_an_array_of_tables_is_expected(tmp_path: Path) -> None:
    text = MINIMAL.replace("[[listener]]", "[listener]")
    msg = error_of(tmp_path, text)
    assert "listener: expected an array of tables ([[listener]]" in msg


def test_unknown_top_level_key_says_where_it_belongs(tmp_path: Path) -> None:
    msg = error_of(tmp_path, 'validity = "24h"\n' + MINIMAL)
    assert "validity: unknown table or key" in msg and "[gateway]" in msg


def test_each_group_kind_is_required(tmp_path: Path) -> None:
    for kind, block in [("listener", LISTENER), ("account", ACCOUNT), ("smsc", SMSC)]:
        text = MINIMAL.replace(block, "")
        if kind == "smsc":
            text = text.replace('smscs = ["opA"]', 'smscs = ["x"]')
        assert error_of(tmp_path, text).endswith(f"{kind}: at least one [[{kind}]] is required")
    msg = error_of(tmp_path, MINIMAL.replace(ROUTE, ""))
    assert msg.endswith("route: at least one [[route]] is required")
    assert "store: required table missing" in error_of(tmp_path, MINIMAL.replace(STORE, ""))


def test_account_password_hash_must_be_a_scrypt_string(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL.replace(HASH, "demopass"))
    assert 'account "acme".password_hash: expected a scrypt hash' in msg
    assert "smsgw hash-password" in msg and 'got "demopass"' in msg


def test_smsc_password_longer_than_smpp_allows_is_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL.replace('password = "secret"', 'password = "123456789"'))
    assert 'smsc "opA".password: expected a string of at most 8 characters' in msg


def test_reconnect_delay_max_below_reconnect_delay_is_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, smsc_with('reconnect_delay = "10s"\nreconnect_delay_max = 5'))
    assert 'smsc "opA".reconnect_delay_max: expected a duration >= reconnect_delay' in msg


def listener_with(lines: str) -> str:
    return MINIMAL.replace(LISTENER, LISTENER + lines + "\n")


def test_auth_failure_delay_max_below_the_delay_is_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, listener_with('auth_failure_delay = "5s"\nauth_failure_delay_max = 2'))
    assert "listener[0].auth_failure_delay_max: expected a duration >= auth_failure_delay" in msg
    # left out, the cap follows a larger first delay instead of refusing it
    config = load_config(write(tmp_path, listener_with('auth_failure_delay = "30s"')))
    assert config.listeners[0].auth_failure_delay_max == 30.0


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("auth_failure_delay_multiplier = 0.5", "auth_failure_delay_multiplier: expected a number"),
        ("auth_lockout_threshold = 0", "auth_lockout_threshold: expected a positive integer"),
        ("auth_lockout_window = 0", "auth_lockout_window: expected a positive duration"),
        ("auth_concurrency = 0", "auth_concurrency: expected an integer from 1 to 64"),
    ],
)
def test_auth_keys_are_checked(tmp_path: Path, line: str, expected: str) -> None:
    assert f"listener[0].{expected}" in error_of(tmp_path, listener_with(line))


def test_ton_npi_are_checked_and_left_out_means_keep_upstream(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, smsc_with("dest_ton = 1\ndest_npi = 1")))
    smsc = config.smscs["opA"]
    assert (smsc.dest_ton, smsc.dest_npi, smsc.source_ton, smsc.source_npi) == (1, 1, None, None)
    msg = error_of(tmp_path, smsc_with("source_ton = 9"))
    assert 'smsc "opA".source_ton: expected one of 0, 1, 2, 3, 4, 5, 6, got 9' in msg


def test_duplicate_smsc_and_route_names_are_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + SMSC + ROUTE.replace('"default"', '"other"'))
    assert 'smsc "opA".name: expected a unique name, got "opA" twice' in msg


def test_mo_address_belongs_to_one_account(tmp_path: Path) -> None:
    other = ACCOUNT.replace('"acme"', '"beta"')
    text = MINIMAL.replace(ACCOUNT, ACCOUNT + 'mo_addresses = ["36111"]\n')
    msg = error_of(tmp_path, text + other + 'mo_addresses = ["36111"]\n')
    assert 'account "beta".mo_addresses: "36111" already belongs to account "acme"' in msg


def test_prefix_belongs_to_one_route(tmp_path: Path) -> None:
    text = MINIMAL + '[[route]]\nname = "fr"\nprefixes = ["33"]\nsmscs = ["opA"]\n'
    text += '[[route]]\nname = "fr2"\nprefixes = ["33"]\nsmscs = ["opA"]\n'
    msg = error_of(tmp_path, text)
    assert 'route "fr2".prefixes: prefix "33" is already routed by route "fr"' in msg


def test_at_most_one_default_route(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + ROUTE.replace('"default"', '"fallback"'))
    assert ('expected at most one default route (no prefixes) per number type, got "default", '
            '"fallback"') in msg


def test_no_default_route_is_allowed(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "default"', 'name = "fr"\nprefixes = ["33"]')
    config = check(write(tmp_path, text))
    assert config.routes[0].prefixes == ("33",)


def test_two_listeners_on_one_port_are_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + '[[listener]]\nhost = "0.0.0.0"\nport = 2775\n')
    assert "listener[1].port: expected a port not used elsewhere, got 2775" in msg
    # different addresses on the same port are fine
    ok = MINIMAL.replace("port = 2775\n", 'host = "10.0.0.1"\nport = 2775\n', 1)
    load_config(write(tmp_path, ok + '[[listener]]\nhost = "10.0.0.2"\nport = 2775\n'))


def test_listener_port_clashing_with_http_is_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + "[http]\nport = 2775\n")
    assert "http.port: expected a port not used elsewhere" in msg
    load_config(write(tmp_path, MINIMAL + "[http]\nport = 2775\nenabled = false\n"))


def test_old_metrics_table_is_refused_with_the_way_to_http(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + "[metrics]\nport = 9775\n")
    assert "x.toml: metrics: the [metrics] table is now [http]" in msg
    assert "rename the table header to [http]" in msg


def test_http_tokens_are_sha256_hashes_owned_by_one_account(tmp_path: Path) -> None:
    token_hash = hash_token("a-long-enough-token")
    ok = MINIMAL.replace("[[smsc]]", f'http_tokens = ["{token_hash}"]\n\n[[smsc]]', 1)
    config = load_config(write(tmp_path, ok))
    assert config.accounts["acme"].http_tokens == (token_hash,)
    bad = MINIMAL.replace("[[smsc]]", 'http_tokens = ["demo-token"]\n\n[[smsc]]', 1)
    msg = error_of(tmp_path, bad)
    assert 'account "acme".http_tokens[0]: expected a token hash' in msg
    assert "smsgw hash-token" in msg
    second = (f'\n[[account]]\nsystem_id = "beta"\npassword_hash = "{HASH}"\n'
              f'http_tokens = ["{token_hash}"]\n')
    msg = error_of(tmp_path, ok + second)
    assert 'account "beta".http_tokens: a token hash already belongs to account "acme"' in msg


SECRET = "0123456789abcdef0123456789abcdef"


def test_webhook_settings_are_read_with_their_defaults(tmp_path: Path) -> None:
    acme = load_config(write(tmp_path, MINIMAL)).accounts["acme"]
    assert (acme.webhook_url, acme.webhook_secret, acme.mo_via, acme.mo_by_webhook) == (
        None, "", "auto", False)
    assert (acme.webhook_timeout, acme.webhook_concurrency) == (10.0, 4)
    text = MINIMAL.replace("[[smsc]]", (
        'webhook_url = "https://crm.example:8443/smsgw/events?src=gw"\n'
        f'webhook_secret = "{SECRET}"\nwebhook_timeout = "3s"\nwebhook_concurrency = 8\n'
        'webhook_retry_delay = "1s"\nwebhook_retry_delay_max = "10m"\n\n[[smsc]]'), 1)
    acme = load_config(write(tmp_path, text)).accounts["acme"]
    assert acme.webhook_url == "https://crm.example:8443/smsgw/events?src=gw"
    assert (acme.webhook_secret, acme.webhook_timeout, acme.webhook_concurrency) == (
        SECRET, 3.0, 8)
    assert (acme.webhook_retry_delay, acme.webhook_retry_delay_max) == (1.0, 600.0)
    assert acme.mo_by_webhook  # "auto" with a webhook_url
    smpp = load_config(write(tmp_path, text.replace("[[smsc]]", 'mo_via = "smpp"\n\n[[smsc]]', 1)))
    assert not smpp.accounts["acme"].mo_by_webhook
    prefixed = text.replace("[[smsc]]", 'callback_url_prefixes = ["https://crm.example/a/", '
                            '"http://10.0.0.1:8080/"]\n\n[[smsc]]', 1)
    assert load_config(write(tmp_path, prefixed)).accounts["acme"].callback_url_prefixes == (
        "https://crm.example/a/", "http://10.0.0.1:8080/")


@pytest.mark.parametrize(("lines", "expected"), [
    ('webhook_url = "ftp://crm.example/x"', 'account "acme".webhook_url: expected an absolute '
     'http:// or https:// URL with a host, got "ftp://crm.example/x"'),
    ('webhook_url = "https:///nohost"', 'account "acme".webhook_url: expected an absolute'),
    ('webhook_url = "http://crm.example:99999/"', 'account "acme".webhook_url: expected'),
    ('webhook_url = "http://crm.example/a b"', 'account "acme".webhook_url: expected'),
    ('webhook_url = "https://crm.example/"', 'account "acme".webhook_secret: required when '
     'webhook_url is set'),
    ('webhook_secret = "short"', 'account "acme".webhook_secret: expected a string of 16 to 256'),
    ('mo_via = "webhook"', 'account "acme".mo_via: "webhook" needs a webhook_url'),
    (f'webhook_secret_previous = "{SECRET}"', 'account "acme".webhook_secret_previous: only '
     'with a webhook_secret'),
    ('mo_via = "http"', 'account "acme".mo_via: expected one of "auto", "smpp", "webhook"'),
    ('webhook_concurrency = 0', 'account "acme".webhook_concurrency: expected an integer from 1'),
    ('callback_url_prefixes = ["https://crm.example"]', 'account "acme".callback_url_prefixes[0]:'
     ' expected an http:// or https:// URL with a host, ending with "/"'),
    ('callback_url_prefixes = ["ftp://crm.example/"]', 'account "acme".callback_url_prefixes[0]:'),
    ('webhook_retry_delay = "1m"\nwebhook_retry_delay_max = "10s"',
     'account "acme".webhook_retry_delay_max: expected a duration >= webhook_retry_delay (60s)'),
])
def test_bad_webhook_settings_are_refused_naming_key_and_expectation(
        tmp_path: Path, lines: str, expected: str) -> None:
    msg = error_of(tmp_path, MINIMAL.replace("[[smsc]]", f"{lines}\n\n[[smsc]]", 1))
    assert expected in msg, msg


def test_cross_check_reports_every_problem_at_once(tmp_path: Path) -> None:
    text = MINIMAL.replace('smscs = ["opA"]', 'smscs = ["x", "y"]') + ACCOUNT
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 3
    assert all(p.startswith(f"{path}: ") for p in info.value.problems)
    assert info.value.key is None


def test_error_carries_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, smsc_with("window = 0"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.file, info.value.key) == (str(path), 'smsc "opA".window')


def test_toml_error_at_end_of_document_is_reported(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + "x = [1,\n")
    assert "end of document: TOML syntax error" in msg


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"x\.toml: line 17: not valid UTF-8"):
        load_config(path)


# --- simulator -------------------------------------------------------------------------------


def test_simulator_delivered_left_out_is_the_rest(tmp_path: Path) -> None:
    text = "[simulator]\nundeliverable = 0.1\nexpired = 0.05\n"
    sim = load_simulator_config(write(tmp_path, text))
    assert sim.delivered == pytest.approx(0.85)
    assert sim.no_receipt == 0.0


def test_simulator_defaults(tmp_path: Path) -> None:
    assert load_simulator_config(write(tmp_path, "[simulator]\n")) == SimulatorConfig()


def test_simulator_receipt_shares_must_sum_to_one(tmp_path: Path) -> None:
    path = write(tmp_path, "[simulator]\ndelivered = 0.9\nundeliverable = 0.2\n")
    with pytest.raises(ConfigError, match=r"simulator\.delivered: expected receipt outcome"):
        load_simulator_config(path)
    path = write(tmp_path, "[simulator]\nundeliverable = 0.7\nexpired = 0.7\n")
    with pytest.raises(ConfigError, match=r"simulator\.undeliverable: expected .* at most 1"):
        load_simulator_config(path)


def test_simulator_submit_shares_must_not_exceed_one(tmp_path: Path) -> None:
    path = write(tmp_path, "[simulator]\nthrottle = 0.6\ndisconnect = 0.6\n")
    with pytest.raises(ConfigError, match=r"simulator\.throttle: expected submit outcome"):
        load_simulator_config(path)


def test_simulator_share_out_of_range_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[simulator]\nerror = 1.5\n")
    with pytest.raises(ConfigError, match=r"simulator\.error: expected a number from 0 to 1"):
        load_simulator_config(path)


def test_simulator_peer_is_batching_or_independent(tmp_path: Path) -> None:
    path = write(tmp_path, '[simulator]\npeer = "independent"\n')
    assert load_simulator_config(path).peer == "independent"
    path = write(tmp_path, '[simulator]\npeer = "polite"\n')
    with pytest.raises(ConfigError, match=r'simulator\.peer: expected one of "batching", '
                                          r'"independent"'):
        load_simulator_config(path)


def test_simulator_file_without_simulator_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"simulator: required table missing"):
        load_simulator_config(write(tmp_path, MINIMAL))


def test_simulator_config_can_be_read_from_the_demo_gateway_config() -> None:
    sim = load_simulator_config(CONF / "demo.toml")
    assert (sim.delivered, sim.undeliverable, sim.expired, sim.no_receipt) == (
        0.9,
        0.05,
        0.03,
        0.02,
    )


def test_simulator_port_clashing_with_a_listener_is_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + "[simulator]\nport = 2775\n")
    assert "simulator.port: expected a port not used elsewhere, got 2775" in msg


# --- check() ---------------------------------------------------------------------------------


def test_check_refuses_a_store_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    path = write(tmp_path, MINIMAL.replace("var/test.sqlite3", str(tmp_path / "afile/db.sqlite3")))
    load_config(path)  # the loader does not look at the file system
    with pytest.raises(ConfigError, match=r"store\.path: expected a file in a writable directory"):
        check(path)


# --- the examples document every key ---------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "classes"),
    [
        (
            "gateway.example.toml",
            [ListenerConfig, AccountConfig, SmscConfig, RetryConfig, HttpConfig,
             StoreConfig, AdminConfig, RouterConfig, SenderLimitConfig, BreakerConfig,
             RcsConfig, VoiceSettings],
        ),
        ("simulator.example.toml", [SimulatorConfig]),
    ],
)
def test_examples_document_every_key(example: str, classes: list[type]) -> None:
    text = (CONF / example).read_text(encoding="utf-8")
    keys = {f.name for cls in classes for f in dataclasses.fields(cls)}
    if example.startswith("gateway"):
        keys |= {"node", "validity", "log_level", "shutdown_timeout", "path", "batch_max",
                 "retention", "prefixes"}
    # a key or a sub-table ("# [voice.place]")
    missing = [k for k in sorted(keys) if f"\n{k} =" not in text and f"\n# {k} =" not in text
               and f".{k}]\n" not in text]
    assert not missing, f"{example} does not show: {missing}"


def test_check_refuses_an_smsc_with_other_credentials_than_the_simulator(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        'host = "smsc.example.net"\nport = 2775', 'host = "localhost"\nport = 2776'
    )
    path = write(tmp_path, text + '[simulator]\nsystem_id = "sim"\npassword = "simpass"\n')
    load_config(path)
    with pytest.raises(ConfigError) as info:
        check(path)
    assert info.value.problems == (
        f'{path}: smsc "opA".system_id: expected the system_id of [simulator] (this smsc points '
        'at it), got "gw"',
        f'{path}: smsc "opA".password: expected the password of [simulator] (this smsc points '
        'at it), got "secret"',
    )


def test_the_demo_cluster_is_three_nodes_on_one_store_with_the_documented_ports() -> None:
    """README "Running several nodes": nodes a, b, c on SMPP 2775/2785/2795, HTTP
    8080/8090/8100, metrics 9775/9785/9795, one shared PostgreSQL store on 127.0.0.1:5433,
    account demo / demopass; the simulator alone on 2776 (control 2777)."""
    cluster = CONF / "cluster"
    ports = {"a": (2775, 8080, 9775), "b": (2785, 8090, 9785), "c": (2795, 8100, 9795)}
    for n in ports:  # the shared sections are the database's, pushed from shared.toml
        assert load_config(cluster / f"node-{n}.toml").shared_document == "{}"
    shared = shared_document(cluster / "shared.toml")
    configs = {n: load_config(cluster / f"node-{n}.toml", shared, 1) for n in ports}
    for name, config in configs.items():
        assert (config.listeners[0].port, config.http.port, config.http.metrics_port) == \
            ports[name]
        assert config.store.shared and config.store.dsn == \
            "postgresql://postgres@127.0.0.1:5433/smsgw"
        assert verify_password("demopass", config.accounts["demo"].password_hash)
        assert config.smscs["sim"].binds >= len(ports)  # a bind slot for each node
        assert config.smscs["sim"].port == 2776
    assert len({c.node for c in configs.values()}) == 3
    assert len({c.admin_socket for c in configs.values()}) == 3
    sim = load_simulator_config(cluster / "simulator.toml")
    assert (sim.port, sim.control_port) == (2776, 2777)
