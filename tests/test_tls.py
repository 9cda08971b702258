"""SMPP over TLS, with certificates made by trustme, over real sockets on 127.0.0.1.

Listener: TLS clients bind and submit (smpplib over the ssl module, and our own Connection over
trio's SSLStream); plain TCP on the TLS port, missing or foreign client certificates and
handshakes that never finish are cut, counted and logged within a budget, harming no other
session. Operator side: the SMSC's certificate and name are verified, a failure is a failed
connect retried with backoff. Config: unusable files are named with their key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trustme
from prometheus_client import REGISTRY

from gateway import cli, metrics
from gateway.config import (
    ConfigError,
    ListenerConfig,
    SimulatorConfig,
    SmscConfig,
    check,
    load_config,
    load_simulator_config,
    tls_warnings,
)
from gateway.model import State
from gateway.server import SmppServer
from gateway.simulator import SmscSimulator
from routing.smsc import Answer, SmscConnector
from smpp import tls
from smpp.connection import Connection, ConnectionClosed
from smpp.pdu import BindTransceiver, Pdu, SubmitSm, encode
from smpp.session import Side
from tests.stack import SmpplibEsme, running_stack, wait_for
from tests.test_config import MINIMAL, error_of, write

KeyPair = tuple[Path, Path]  # certificate (chain) file, private key file


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: Path  # signs every certificate below but `stranger`
    other_ca: Path  # trusted by nobody here
    server: KeyPair  # for 127.0.0.1
    client: KeyPair  # a client certificate
    stranger: KeyPair  # for 127.0.0.1, signed by other_ca
    named: KeyPair  # for smsc.example only


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()

    def pair(name: str, issuer: trustme.CA, *identities: str) -> KeyPair:
        cert = issuer.issue_cert(*identities)
        cert.cert_chain_pems[0].write_to_path(str(root / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(root / f"{name}.key"))
        return root / f"{name}.pem", root / f"{name}.key"

    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    other.cert_pem.write_to_path(str(root / "other-ca.pem"))
    return Pki(ca=root / "ca.pem", other_ca=root / "other-ca.pem",
               server=pair("server", ca, "127.0.0.1"), client=pair("client", ca, "esme.example"),
               stranger=pair("stranger", other, "127.0.0.1"),
               named=pair("named", ca, "smsc.example"))


def _client_context(pki: Pki, cert: KeyPair | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(*map(str, cert))
    return ctx


def _listener(pki: Pki, **changes: Any) -> ListenerConfig:
    settings: dict[str, Any] = {"port": 0, "auth_failure_delay": 0.01, "bind_timeout": 5,
                                "tls_cert": pki.server[0], "tls_key": pki.server[1]}
    return ListenerConfig(**(settings | changes))


def _count(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def _handshake_failures(server: SmppServer, reason: str) -> float:
    return _count("smsgw_tls_handshake_failures_total", listener=server._label, reason=reason)


async def _ignore(_conn: Connection, _pdu: Pdu) -> None:
    return None


def _submit() -> SubmitSm:
    return SubmitSm(source_addr="ACME", source_addr_ton=5, destination_addr="33612345678",
                    dest_addr_ton=1, dest_addr_npi=1, short_message=b"hi")


async def _bind_over_tls(port: int, ctx: ssl.SSLContext,
                         nursery: trio.Nursery) -> tuple[Connection, int | None]:
    """A Connection over trio's SSLStream and the status of its bind (None: the link was
    closed before any answer)."""
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=ctx)
    conn = Connection(stream, Side.ESME, name="tls-client")
    nursery.start_soon(conn.run, _ignore)
    with trio.fail_after(5):
        try:
            resp = await conn.request(BindTransceiver(system_id="demo", password="demopass"))
        except ConnectionClosed:
            return conn, None
    return conn, resp.status


async def _read_to_eof(stream: trio.abc.ReceiveStream, timeout: float) -> bytes | None:
    """Everything until the peer closes; None if it is still open after `timeout`."""
    received = b""
    with trio.move_on_after(timeout):
        try:
            while data := await stream.receive_some(65536):
                received += data
        except trio.BrokenResourceError:
            pass
        return received
    return None


# -- listener -----------------------------------------------------------------------------------


async def test_an_independent_tls_client_binds_submits_and_gets_its_receipt(
        tmp_path: Path, pki: Pki) -> None:
    async with running_stack(tmp_path, listeners=(_listener(pki),)) as (gw, _sim):
        ctx = _client_context(pki)
        ctx.check_hostname = False  # smpplib wraps its socket without a server name
        esme = SmpplibEsme(gw.smpp_port, ssl_context=ctx)
        with trio.fail_after(20):
            await trio.to_thread.run_sync(esme.submit_one, "33612345678", b"over TLS")
        message_id = esme.resps[0].message_id.decode()
        stored = await gw.store.get_message(message_id)
        assert stored is not None and stored.state is State.DELIVERED
        [receipt] = esme.delivered
        assert receipt.receipted_message_id.rstrip(b"\0").decode() == message_id


async def test_plain_tcp_on_the_tls_port_is_closed_unanswered_and_other_sessions_go_on(
        tmp_path: Path, pki: Pki) -> None:
    async with running_stack(tmp_path, listeners=(_listener(pki),)) as (gw, _sim), \
            trio.open_nursery() as nursery:
        server = gw.servers[0]
        before = _handshake_failures(server, "protocol")
        conn, status = await _bind_over_tls(gw.smpp_port, _client_context(pki), nursery)
        assert status == 0
        plain = await trio.open_tcp_stream("127.0.0.1", gw.smpp_port)
        await plain.send_all(encode(BindTransceiver(system_id="demo", password="demopass",
                                                    sequence=1)))
        received = await _read_to_eof(plain, timeout=3)  # well before bind_timeout (5 s)
        assert received is not None and b"\x80\x00\x00\x09" not in received  # no bind_resp
        assert _handshake_failures(server, "protocol") == before + 1
        assert (await conn.request(_submit())).status == 0  # the TLS session is unharmed
        await conn.unbind()


async def test_with_tls_client_ca_only_clients_with_a_certificate_it_signed_bind(
        tmp_path: Path, pki: Pki) -> None:
    listener = _listener(pki, tls_client_ca=pki.ca)
    async with running_stack(tmp_path, listeners=(listener,)) as (gw, _sim), \
            trio.open_nursery() as nursery:
        server = gw.servers[0]
        before = _handshake_failures(server, "certificate")
        _conn, status = await _bind_over_tls(gw.smpp_port, _client_context(pki), nursery)
        assert status is None  # no client certificate
        _conn, status = await _bind_over_tls(
            gw.smpp_port, _client_context(pki, pki.stranger), nursery)
        assert status is None  # a certificate from a CA the listener does not trust
        assert _handshake_failures(server, "certificate") == before + 2
        conn, status = await _bind_over_tls(
            gw.smpp_port, _client_context(pki, pki.client), nursery)
        assert status == 0
        assert (await conn.request(_submit())).status == 0
        await conn.unbind()


async def test_a_handshake_that_never_completes_is_cut_at_the_bind_timeout(
        tmp_path: Path, pki: Pki) -> None:
    listener = _listener(pki, bind_timeout=0.5, max_connections_per_address=1)
    async with running_stack(tmp_path, listeners=(listener,)) as (gw, _sim):
        server = gw.servers[0]
        before = _handshake_failures(server, "timeout")
        silent = await trio.open_tcp_stream("127.0.0.1", gw.smpp_port)  # never says hello
        start = trio.current_time()
        assert await _read_to_eof(silent, timeout=5) == b""
        assert trio.current_time() - start >= 0.4
        assert _handshake_failures(server, "timeout") == before + 1
        # its place is free again: the next connection of that address is served
        async with trio.open_nursery() as nursery:
            conn, status = await _bind_over_tls(gw.smpp_port, _client_context(pki), nursery)
            assert status == 0
            await conn.unbind()


async def test_connections_in_their_handshake_count_against_the_connection_limits(
        tmp_path: Path, pki: Pki) -> None:
    listener = _listener(pki, bind_timeout=30, max_connections_per_address=2)
    async with running_stack(tmp_path, listeners=(listener,)) as (gw, _sim):
        refused = _count("smsgw_connections_refused_total", listener=gw.servers[0]._label,
                         reason="address")
        # accepted in order: both are waiting for their ClientHello when the third comes
        held = [await trio.open_tcp_stream("127.0.0.1", gw.smpp_port) for _ in range(2)]
        extra = await trio.open_tcp_stream("127.0.0.1", gw.smpp_port)
        assert await _read_to_eof(extra, timeout=3) == b""  # closed at once, not after 30 s
        assert _count("smsgw_connections_refused_total", listener=gw.servers[0]._label,
                      reason="address") == refused + 1
        for stream in held:
            await stream.aclose()


async def test_handshake_failures_are_logged_within_a_budget_without_tracebacks(
        tmp_path: Path, pki: Pki) -> None:
    async with running_stack(tmp_path, listeners=(_listener(pki),)) as (gw, _sim):
        server = gw.servers[0]
        before = _handshake_failures(server, "protocol")
        with structlog.testing.capture_logs() as logs:
            for _ in range(12):
                plain = await trio.open_tcp_stream("127.0.0.1", gw.smpp_port)
                await plain.send_all(b"GET / HTTP/1.0\r\n\r\n" + b"x" * 500)
                assert await _read_to_eof(plain, timeout=3) is not None
            await wait_for(lambda: _handshake_failures(server, "protocol") == before + 12)
        failed = [e for e in logs if e["event"] == "listener.tls_handshake_failed"]
        assert 1 <= len(failed) <= 5
        assert all(e["reason"] == "protocol" and len(e["detail"]) <= 200 for e in failed)
        assert not [e for e in logs if "exc_info" in e or e["log_level"] in ("error",
                                                                              "critical")]


# -- operator connections ------------------------------------------------------------------------


def _tls_sim(pki: Pki, pair: KeyPair, **changes: Any) -> SimulatorConfig:
    return SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, seed=7,
                           tls_cert=pair[0], tls_key=pair[1], **changes)


async def test_an_operator_connection_over_tls_verifies_the_smsc_and_carries_messages(
        tmp_path: Path, pki: Pki) -> None:
    smsc_tls = {"tls": True, "tls_ca": pki.ca}
    async with running_stack(tmp_path, sim=_tls_sim(pki, pki.server),
                             smsc_changes=smsc_tls) as (gw, sim):
        assert sim.bound_sessions()
        assert all(isinstance(c.stream, trio.SSLStream) for c in sim.bound_sessions())
        esme = SmpplibEsme(gw.smpp_port)
        with trio.fail_after(20):
            await trio.to_thread.run_sync(esme.submit_one, "33612345678", b"to a TLS SMSC")
        [record] = sim.submitted
        assert record.destination_addr == "33612345678"


async def _noop_deliver(_connector: SmscConnector, _pdus: list[Pdu], _answer: Answer) -> None:
    return None


@contextlib.asynccontextmanager
async def _simulator(config: SimulatorConfig) -> AsyncIterator[SmscSimulator]:
    async with trio.open_nursery() as nursery:
        sim = SmscSimulator(config)
        await nursery.start(sim.serve)
        yield sim
        nursery.cancel_scope.cancel()


async def _try_connector(sim: SmscSimulator, name: str, patience: float = 3.0,
                         **tls_keys: Any) -> tuple[bool, float]:
    """Run a connector with these TLS settings against the simulator until it binds, counts a
    third certificate failure or `patience` runs out: whether it bound, and how many
    certificate failures it counted (it retries after each)."""
    config = SmscConfig(name=name, host="127.0.0.1", port=sim.port, system_id="sim",
                        password="simpass", reconnect_delay=0.05, reconnect_delay_max=0.1,
                        response_timeout=2, tls=True, **tls_keys)
    connector = SmscConnector(config, _noop_deliver, metrics.SmscMetrics(name))

    def failures() -> float:
        return _count("smsgw_smsc_tls_failures_total", smsc=name, reason="certificate")

    before = failures()
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.run)
        with trio.move_on_after(patience):
            while not connector.is_up() and failures() < before + 3:
                await trio.sleep(0.01)
        up = connector.is_up()
        nursery.cancel_scope.cancel()
    return up, failures() - before


async def test_an_smsc_certificate_from_an_untrusted_ca_is_refused_and_retried(
        pki: Pki) -> None:
    async with _simulator(_tls_sim(pki, pki.stranger)) as sim:
        with structlog.testing.capture_logs() as logs:
            up, failures = await _try_connector(sim, "tls-stranger", tls_ca=pki.ca)
        assert not up and failures >= 3  # each attempt failed; the connector went on trying
        assert not sim.bound_sessions()
        failed = [e for e in logs if e["event"] == "smsc.tls_failed"]
        assert failed and "issuer" in failed[0]["detail"]
        # the system trust store (no tls_ca) does not know trustme's CA either
        up, failures = await _try_connector(sim, "tls-system-store")
        assert not up and failures >= 3


async def test_an_smsc_certificate_for_another_name_is_refused_unless_named(pki: Pki) -> None:
    async with _simulator(_tls_sim(pki, pki.named)) as sim:
        up, failures = await _try_connector(sim, "tls-misnamed", tls_ca=pki.ca)
        assert not up and failures >= 3
        up, failures = await _try_connector(sim, "tls-named", tls_ca=pki.ca,
                                            tls_server_name="smsc.example")
        assert up and failures == 0


async def test_tls_verify_false_accepts_any_certificate_and_warns_at_start(pki: Pki) -> None:
    async with _simulator(_tls_sim(pki, pki.stranger)) as sim:
        with structlog.testing.capture_logs() as logs:
            up, _failures = await _try_connector(sim, "tls-unverified", tls_verify=False)
        assert up
        [warning] = [e for e in logs if e["event"] == "smsc.tls_unverified"]
        assert warning["log_level"] == "warning" and warning["smsc"] == "tls-unverified"


async def test_a_client_certificate_is_shown_to_an_smsc_that_requires_one(pki: Pki) -> None:
    async with _simulator(_tls_sim(pki, pki.server, tls_client_ca=pki.ca)) as sim:
        # without one the SMSC drops the link (the bind fails): never bound, however often
        up, _failures = await _try_connector(sim, "tls-no-client-cert", patience=0.5,
                                             tls_ca=pki.ca)
        assert not up
        up, failures = await _try_connector(sim, "tls-client-cert", tls_ca=pki.ca,
                                            tls_cert=pki.client[0], tls_key=pki.client[1])
        assert up and failures == 0


# -- configuration -------------------------------------------------------------------------------


def _listener_toml(lines: str) -> str:
    return MINIMAL.replace("[[listener]]\nport = 2775\n", f"[[listener]]\nport = 2775\n{lines}")


def _smsc_toml(lines: str) -> str:
    return MINIMAL.replace('password = "secret"\n', f'password = "secret"\n{lines}')


def test_tls_keys_load_into_the_config(tmp_path: Path, pki: Pki) -> None:
    listener = _listener_toml(f'tls_cert = "{pki.server[0]}"\ntls_key = "{pki.server[1]}"\n'
                              f'tls_client_ca = "{pki.ca}"\ntls_min_version = "1.3"\n')
    smsc = f'password = "secret"\ntls = true\ntls_ca = "{pki.ca}"\n'
    path = write(tmp_path, listener.replace('password = "secret"\n', smsc))
    config = load_config(path)
    listener, smsc = config.listeners[0], config.smscs["opA"]
    assert (listener.tls_cert, listener.tls_key) == pki.server
    assert (listener.tls_client_ca, listener.tls_min_version) == (pki.ca, "1.3")
    assert (smsc.tls, smsc.tls_ca, smsc.tls_verify, smsc.tls_server_name) == (
        True, pki.ca, True, "")
    plain = load_config(write(tmp_path, MINIMAL, "plain.toml"))
    assert plain.listeners[0].tls_cert is None and not plain.smscs["opA"].tls


@pytest.mark.parametrize(("lines", "expected"), [
    ('tls_cert = "{missing}"\ntls_key = "{key}"\n',
     'listener[0].tls_cert: expected a PEM certificate file, got {missing}: cannot read: '
     'No such file or directory'),
    ('tls_cert = "{junk}"\ntls_key = "{key}"\n',
     "listener[0].tls_cert: expected a PEM certificate file, got {junk}: no PEM certificate "
     "in it"),
    ('tls_cert = "{cert}"\ntls_key = "{junk}"\n',
     "listener[0].tls_key: expected the PEM private key of tls_cert, got {junk}: no usable PEM "
     "private key in it"),
    ('tls_cert = "{cert}"\ntls_key = "{other_key}"\n',
     "listener[0].tls_key: expected the PEM private key of tls_cert, got {other_key}: a key "
     "that does not belong to {cert}"),
    ('tls_cert = "{cert}"\ntls_key = "{encrypted}"\n',
     "listener[0].tls_key: expected an unencrypted PEM private key (readable by the daemon "
     "only), got {encrypted}: an encrypted key"),
    ('tls_cert = "{cert}"\ntls_key = "{key}"\ntls_client_ca = "{junk}"\n',
     "listener[0].tls_client_ca: expected a file of PEM CA certificates, got {junk}: no PEM "
     "certificate in it"),
    ('tls_cert = "{cert}"\n',
     "listener[0].tls_key: required with tls_cert (expected a PEM private key file)"),
    ('tls_key = "{key}"\n',
     "listener[0].tls_cert: required with tls_key (expected a PEM certificate file)"),
    ('tls_client_ca = "{ca}"\n', "listener[0].tls_client_ca: only with tls_cert and tls_key"),
    ('tls_cert = "{cert}"\ntls_key = "{key}"\ntls_min_version = "1.1"\n',
     'listener[0].tls_min_version: expected one of "1.2", "1.3", got "1.1"'),
])
def test_listener_tls_files_that_cannot_serve_are_named_with_their_key(
        tmp_path: Path, pki: Pki, lines: str, expected: str) -> None:
    from cryptography.hazmat.primitives import serialization

    junk = write(tmp_path, "not a certificate\n", "junk.pem")
    key = serialization.load_pem_private_key(pki.server[1].read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    names = {"missing": tmp_path / "missing.pem", "junk": junk, "cert": pki.server[0],
             "key": pki.server[1], "other_key": pki.client[1], "encrypted": encrypted,
             "ca": pki.ca}
    message = error_of(tmp_path, _listener_toml(lines.format(**names)))
    assert message.split(": ", 1)[1] == expected.format(**names)


@pytest.mark.parametrize(("lines", "expected"), [
    ('tls_ca = "{ca}"\n', 'smsc "opA".tls_ca: only with tls = true'),
    ('tls = true\ntls_ca = "{missing}"\n',
     'smsc "opA".tls_ca: expected a file of PEM CA certificates, got {missing}: cannot read: '
     'No such file or directory'),
    ('tls = true\ntls_ca = "{ca}"\ntls_verify = false\n',
     'smsc "opA".tls_ca: no tls_ca with tls_verify = false (nothing is verified)'),
    ('tls = true\ntls_cert = "{cert}"\n',
     'smsc "opA".tls_key: required with tls_cert (expected a PEM private key file)'),
    ('tls = true\ntls_cert = "{cert}"\ntls_key = "{other_key}"\n',
     'smsc "opA".tls_key: expected the PEM private key of tls_cert, got {other_key}: a key '
     "that does not belong to {cert}"),
    ('tls = true\ntls_server_name = "bad name"\n',
     'smsc "opA".tls_server_name: expected a host name (empty: host), got "bad name"'),
])
def test_smsc_tls_keys_are_checked(tmp_path: Path, pki: Pki, lines: str, expected: str) -> None:
    names = {"missing": tmp_path / "missing.pem", "ca": pki.ca, "cert": pki.client[0],
             "other_key": pki.server[1]}
    message = error_of(tmp_path, _smsc_toml(lines.format(**names)))
    assert message.split(": ", 1)[1] == expected.format(**names)


def test_simulator_tls_keys_are_checked(tmp_path: Path, pki: Pki) -> None:
    path = write(tmp_path, f'[simulator]\ntls_cert = "{pki.server[0]}"\n')
    with pytest.raises(ConfigError) as info:
        load_simulator_config(path)
    assert info.value.key == "simulator.tls_key"
    path = write(tmp_path, f'[simulator]\ntls_cert = "{pki.server[0]}"\n'
                           f'tls_key = "{pki.server[1]}"\n')
    assert load_simulator_config(path).tls_cert == pki.server[0]


def test_check_config_warns_of_a_cleartext_listener_off_loopback_and_unverified_smscs(
        tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    state = f'path = "{tmp_path}/var/x.sqlite3"'
    loopback = write(tmp_path, MINIMAL.replace('path = "var/test.sqlite3"', state), "lo.toml")
    loopback.chmod(0o600)  # (else it warns of secrets readable by others)
    assert cli.main(["check-config", "--config", str(loopback)]) == 0
    assert "warning" not in capsys.readouterr().err
    exposed = write(tmp_path, _smsc_toml("tls = true\ntls_verify = false\n").replace(
        "[[listener]]\n", '[[listener]]\nhost = "0.0.0.0"\n').replace(
        'path = "var/test.sqlite3"', state), "net.toml")
    exposed.chmod(0o600)
    assert cli.main(["check-config", "--config", str(exposed)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: listener 0.0.0.0:2775 has no TLS (tls_cert, tls_key): phone numbers, texts "
        "and passwords cross the network in clear",
        'warning: smsc "opA" has tls_verify = false: the SMSC\'s certificate is not checked, '
        "anyone on the path can pose as it",
    ]
    secured = write(tmp_path, _listener_toml(
        f'host = "0.0.0.0"\ntls_cert = "{pki.server[0]}"\ntls_key = "{pki.server[1]}"\n'
    ).replace('path = "var/test.sqlite3"', state), "tls.toml")
    secured.chmod(0o600)
    assert tls_warnings(check(secured)) == []


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.0.2.7", False),
    ("smpp.example.net", False),
])
def test_only_loopback_hosts_count_as_local(host: str, loopback: bool) -> None:
    assert tls.is_loopback(host) is loopback


def _ssl_error(cls: type[ssl.SSLError], reason: str) -> ssl.SSLError:
    error = cls(1, f"[SSL: {reason}] {reason.lower()}")
    error.reason = reason  # as OpenSSL's errors carry it
    return error


@pytest.mark.parametrize(("error", "reason"), [
    (None, "closed"),
    (ConnectionResetError(104, "Connection reset by peer"), "closed"),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), "closed"),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), "certificate"),
    (_ssl_error(ssl.SSLError, "PEER_DID_NOT_RETURN_A_CERTIFICATE"), "certificate"),
    (_ssl_error(ssl.SSLError, "TLSV1_ALERT_UNKNOWN_CA"), "certificate"),
    (_ssl_error(ssl.SSLError, "WRONG_VERSION_NUMBER"), "protocol"),
    (_ssl_error(ssl.SSLError, "NO_SHARED_CIPHER"), "protocol"),
    (ssl.SSLError(1, "anything else"), "protocol"),
])
def test_handshake_errors_map_to_a_fixed_set_of_metric_reasons(
        error: BaseException | None, reason: str) -> None:
    failed = tls.classify(error)
    assert failed.reason == reason and failed.reason in tls.REASONS
    assert failed.detail
