"""Rules of the configuration the nodes of one database share (gateway/shared_config.py):
accounts, SMSCs and routes live in the database, every node runs the latest version and takes
a push within a second; a push that would not make a usable configuration is refused whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import smpplib.exceptions
import trio
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from gateway import cli, config_cli, daemon
from gateway.admin_cli import AdminClient, CommandFailed
from gateway.config import ConfigError, load_config, shared_document
from gateway.simulator import SmscSimulator
from gateway.store import Store
from tests.stack import SmpplibEsme, password_hash, wait_for

LOCAL_TOML = """\
[gateway]
node = "{node}"

[store]
{store}

[http]
enabled = false

[admin]
socket = "{socket}"

[[listener]]
host = "127.0.0.1"
port = 0
auth_failure_delay = "10ms"
"""

SHARED_TOML = """\
[[account]]
system_id = "demo"
password_hash = "{demo_hash}"
throughput = 0
{more_accounts}
[[smsc]]
name = "sim"
host = "127.0.0.1"
port = {sim_port}
system_id = "sim"
password = "simpass"
binds = 3
reconnect_delay = "50ms"
reconnect_delay_max = "500ms"

[[route]]
name = "default"
smscs = ["{route_smsc}"]
"""

LATE_ACCOUNT = """
[[account]]
system_id = "late"
password_hash = "{late_hash}"
"""


def shared_toml(sim_port: int | str, *, late: bool = False, route_smsc: str = "sim") -> str:
    more = LATE_ACCOUNT.format(late_hash=password_hash("latepass")) if late else ""
    return SHARED_TOML.format(demo_hash=password_hash("demopass"), more_accounts=more,
                              sim_port=sim_port, route_smsc=route_smsc)


def write_node(directory: Path, name: str, dsn: str, shared: str) -> Path:
    path = directory / f"{name}.toml"
    store = f'backend = "postgresql"\ndsn = "{dsn}"\nshared = true'
    path.write_text(LOCAL_TOML.format(node=name, store=store,
                                      socket=directory / f"{name}.sock") + "\n" + shared)
    return path


@dataclasses.dataclass
class Cluster:
    running: list[daemon.Running]
    simulator: SmscSimulator
    directory: Path

    def admin(self, i: int) -> AdminClient:
        return AdminClient(self.running[i].config.admin_socket)

    async def push(self, i: int, toml: str, if_version: int | None = None) -> Any:
        """`smsgw config push` of this TOML through node i's admin socket."""
        path = self.directory / "push.toml"
        path.write_text(toml)
        document = json.loads(shared_document(path))
        return await trio.to_thread.run_sync(lambda: self.admin(i).call(
            "POST", "/v1/config", body={"document": document, "by": "test",
                                        "if_version": if_version}))


@contextlib.asynccontextmanager
async def cluster(directory: Path, dsn: str, files: dict[str, str]) -> AsyncIterator[Cluster]:
    """The simulator, then one node per (name, shared sections of its file), in that order;
    `{sim_port}` in the sections is the simulator's port."""
    async with trio.open_nursery() as nursery:
        from gateway.config import SimulatorConfig

        sim_config = SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, seed=7)
        simulator = SmscSimulator(sim_config, window=sim_config.window)
        await nursery.start(simulator.serve)
        got = Cluster([], simulator, directory)
        stop = trio.Event()
        for name, shared in files.items():
            config = load_config(write_node(directory, name, dsn,
                                            shared.replace("{sim_port}", str(simulator.port))))
            got.running.append(await nursery.start(daemon.run, config, stop.wait))
        yield got
        stop.set()
        nursery.cancel_scope.cancel()


def versions(c: Cluster) -> list[int | None]:
    return [r.config.shared_version for r in c.running]


def bind(port: int, system_id: str, password: str) -> None:
    esme = SmpplibEsme(port, system_id, password)
    try:
        esme.bind()
    finally:
        esme.close()


async def test_an_account_pushed_to_one_node_binds_on_every_node_within_a_second(
        tmp_path: Path, pg_dsn: str) -> None:
    async with cluster(tmp_path, pg_dsn, {"a": shared_toml("{sim_port}"),
                                          "b": "", "c": ""}) as c:
        assert versions(c) == [1, 1, 1]  # a's file seeded version 1; b and c have no sections
        assert all("demo" in r.config.accounts for r in c.running)
        with pytest.raises(smpplib.exceptions.PDUError):  # no such account yet
            await trio.to_thread.run_sync(bind, c.running[2].smpp_port, "late", "latepass")
        answer = await c.push(0, shared_toml(c.simulator.port, late=True))
        pushed = trio.current_time()
        assert answer == {"version": 2, "stored": True}
        await wait_for(lambda: versions(c) == [2, 2, 2], timeout=5)
        assert trio.current_time() - pushed < 1.0
        for r in c.running:
            await trio.to_thread.run_sync(bind, r.smpp_port, "late", "latepass")
        assert REGISTRY.get_sample_value("smsgw_config_shared_version") == 2


async def test_an_account_removed_by_a_push_is_unbound_on_every_node(
        tmp_path: Path, pg_dsn: str) -> None:
    shared = shared_toml("{sim_port}", late=True)
    async with cluster(tmp_path, pg_dsn, {"a": shared, "b": shared}) as c:
        esmes = [SmpplibEsme(r.smpp_port, "late", "latepass") for r in c.running]
        for esme in esmes:
            await trio.to_thread.run_sync(esme.bind)
        assert (await c.push(1, shared_toml(c.simulator.port)))["version"] == 2
        await wait_for(lambda: all(not r.account_states.get("late") for r in c.running))
        for r in c.running:
            assert "late" not in r.config.accounts
        for esme in esmes:
            esme.close()


async def test_a_node_whose_file_differs_runs_the_databases_shared_configuration(
        tmp_path: Path, pg_dsn: str) -> None:
    shared = shared_toml("{sim_port}")
    stale = shared_toml("{sim_port}", late=True)
    with capture_logs() as logs:
        async with cluster(tmp_path, pg_dsn, {"a": shared, "b": stale}) as c:
            assert versions(c) == [1, 1]
            assert "late" not in c.running[1].config.accounts  # the database's, not its file's
            assert [e["version"] for e in logs
                    if e["event"] == "config.shared_file_differs"] == [1]
            with pytest.raises(smpplib.exceptions.PDUError):
                await trio.to_thread.run_sync(bind, c.running[1].smpp_port, "late", "latepass")


async def test_a_push_that_makes_no_usable_configuration_is_refused_and_changes_nothing(
        tmp_path: Path, pg_dsn: str) -> None:
    shared = shared_toml("{sim_port}")
    async with cluster(tmp_path, pg_dsn, {"a": shared, "b": ""}) as c:
        with pytest.raises(CommandFailed, match=r'route "default"\.smscs: .*unknown smsc "gone"'):
            await c.push(1, shared_toml(c.simulator.port, route_smsc="gone"))
        with pytest.raises(CommandFailed, match="latest shared configuration is version 1, "
                                                "not 7"):
            await c.push(0, shared_toml(c.simulator.port, late=True), if_version=7)
        listener = LOCAL_TOML.format(node="x", store="", socket="x")
        with pytest.raises(CommandFailed, match="listener, store: not shared sections"):
            document = {**tomllib.loads(listener), "account": []}
            await trio.to_thread.run_sync(lambda: c.admin(0).call(
                "POST", "/v1/config", body={"document": document, "by": "t",
                                            "if_version": None}))
        shown = await trio.to_thread.run_sync(lambda: c.admin(0).call("GET", "/v1/config"))
        assert [v["version"] for v in shown["versions"]] == [1]
        assert versions(c) == [1, 1]
        # the same sections again: nothing stored
        assert await c.push(0, shared_toml(c.simulator.port)) == {"version": 1,
                                                                   "stored": False}


async def test_config_show_prints_toml_that_pushes_back_unchanged(
        tmp_path: Path, pg_dsn: str) -> None:
    shared = shared_toml("{sim_port}")
    async with cluster(tmp_path, pg_dsn, {"a": shared}) as c:
        socket = str(c.running[0].config.admin_socket)
        out = io.StringIO()

        def run(*argv: str) -> int:  # as `smsgw config ...` runs it, printing to `out`
            args = cli.build_parser().parse_args(["config", *argv, "--socket", socket])
            command = config_cli.cmd_show if args.action == "show" else config_cli.cmd_push
            return command(AdminClient(Path(socket)), args, out)

        assert await trio.to_thread.run_sync(run, "show") == 0
        text = out.getvalue()
        assert text.startswith("# Shared configuration version 1, pushed ")
        assert tomllib.loads(text)["account"][0]["system_id"] == "demo"
        (tmp_path / "shown.toml").write_text(text)
        out.seek(0)
        out.truncate()
        assert await trio.to_thread.run_sync(run, "push", str(tmp_path / "shown.toml"),
                                             "--json") == 0
        assert json.loads(out.getvalue()) == {"version": 1, "stored": False}


async def test_a_node_without_shared_sections_waits_for_the_first_push(
        tmp_path: Path, pg_dsn: str) -> None:
    async with cluster(tmp_path, pg_dsn, {"a": ""}) as c:
        (a,) = c.running
        assert a.config.accounts == {} and a.connectors == {}
        assert versions(c) == [None]
        await c.push(0, shared_toml(c.simulator.port))
        await wait_for(lambda: versions(c) == [1] and all(
            conn.is_up() for conn in a.connectors.values()) and bool(a.connectors))
        await trio.to_thread.run_sync(bind, a.smpp_port, "demo", "demopass")


def test_a_shared_document_is_the_same_whatever_the_order_and_comments(
        tmp_path: Path) -> None:
    one, two = tmp_path / "one.toml", tmp_path / "two.toml"
    one.write_text('[[smsc]]\nname = "x"\nport = 1\n\n[[account]]\nsystem_id = "a"\n'
                   '[gateway]\nnode = "n1"\n')
    two.write_text('# accounts first\n[gateway]\nnode = "n2"\n[[account]]\n'
                   'system_id = "a"\n[[smsc]]\nport = 1  # the port\nname = "x"\n')
    assert shared_document(one) == shared_document(two)
    assert json.loads(shared_document(one)) == {"account": [{"system_id": "a"}],
                                                "smsc": [{"name": "x", "port": 1}]}
    (tmp_path / "none.toml").write_text('[gateway]\nnode = "n"\n')
    with pytest.raises(ConfigError, match="holds none of the shared sections"):
        shared_document(tmp_path / "none.toml")


def test_a_shared_node_file_may_leave_the_shared_sections_to_the_database(
        tmp_path: Path) -> None:
    path = write_node(tmp_path, "a", "postgresql://u@127.0.0.1:5432/db", "")
    config = load_config(path)
    assert config.accounts == {} and config.smscs == {} and config.routes == ()
    assert config.shared_document == "{}" and config.shared_version is None
    merged = load_config(path, shared_document(write_node(tmp_path, "s", "postgresql://u@h/d",
                                                          shared_toml(2776))), 3)
    assert list(merged.accounts) == ["demo"] and merged.shared_version == 3
    assert merged.node == "a"  # the node's own sections stay its file's
    # a file that is not shared still needs its accounts
    path.write_text(path.read_text().replace("shared = true", "shared = false"))
    with pytest.raises(ConfigError, match=r"at least one \[\[account\]\] is required"):
        load_config(path)


async def test_an_sqlite_node_has_no_shared_configuration(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "gw.sqlite") as store:
        assert await store.shared_config() is None
        assert await store.shared_config_versions() == []
        with pytest.raises(Exception, match="an SQLite store has one gateway process"):
            await store.push_shared_config("{}", "t", 0.0)


async def test_a_database_of_the_first_schema_gets_the_shared_configuration_table(
        pg_dsn: str) -> None:
    import psycopg

    from gateway import store_pg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(store_pg.MIGRATIONS[0])
        conn.execute("UPDATE smsgw_schema SET version = 1")
    async with Store.open(pg_dsn, node="a", shared=True) as store:
        assert await store.push_shared_config('{"account":[]}', "t", 1.0) == (1, True)
        assert await store.shared_config() == (1, '{"account":[]}', 1.0, "t")
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT version FROM smsgw_schema").fetchone() == (
            store_pg.SCHEMA_VERSION,)
        assert conn.execute("SELECT count(*) FROM change_requests").fetchone() == (0,)


async def test_a_node_that_could_not_apply_a_pushed_version_tries_it_again(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import shared_config
    from gateway.store import StoreError

    monkeypatch.setattr(shared_config, "RETRY_REFUSED", 0.5)
    load, failed = shared_config.load, []

    async def once_unreadable(store: Store, running: Any) -> Any:
        if not failed:
            failed.append(running.node)
            raise StoreError("postgresql unreachable: the test's")
        return await load(store, running)

    async with cluster(tmp_path, pg_dsn, {"a": shared_toml("{sim_port}"), "b": ""}) as c:
        monkeypatch.setattr(shared_config, "load", once_unreadable)
        with capture_logs() as logs:
            await c.push(0, shared_toml(c.simulator.port, late=True))
            await wait_for(lambda: versions(c) == [2, 2], timeout=10)
        assert len(failed) == 1
        assert [e["detail"] for e in logs if e["event"] == "config.reload_refused"] == [
            "the store failed: postgresql unreachable: the test's"]
