"""Rules of the admin endpoint and commands, against a running gateway and simulator: the
socket is private, every command answers through it (tables, --json), retry sends a waiting
message now, erase leaves no trace of the number, cdr export pages, and a gateway that is not
running is said to be so."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from gateway import cli
from gateway import store as store_module
from gateway.config import ConfigError, RetryConfig, load_config
from gateway.model import State
from gateway.simulator import post_mo
from gateway.store import Store
from tests.stack import SmpplibEsme, running_stack, wait_for
from tests.test_cli import _config_file
from tests.test_store import T0, make_message
from tests.test_store_admin import rows_naming

REPO = Path(__file__).resolve().parent.parent
PERSON = "33699887766"


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """The daemon's log lines kept off stdout, where the commands' output is read."""
    with capture_logs():
        yield


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short directory: a Unix socket path holds at most 107 octets."""
    with tempfile.TemporaryDirectory(prefix="smsgw-admin-") as d:
        yield Path(d)


async def smsgw(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `smsgw ARGV` (cli.main) in a thread, while the gateway runs in this trio run."""
    capsys.readouterr()
    status = await trio.to_thread.run_sync(cli.main, list(argv))
    out, err = capsys.readouterr()
    return status, out, err


async def submit(port: int, *destinations: str, wait_receipts: bool = True) -> list[str]:
    """Submit one message to each destination; their gateway ids."""
    esme = SmpplibEsme(port)

    def run() -> None:
        esme.bind()
        for d in destinations:
            esme.submit(d, b"Hello admin")
        esme.read_until(lambda: len(esme.resps) == len(destinations) and (
            not wait_receipts or len(esme.delivered) == len(destinations)))
        esme.close()

    await trio.to_thread.run_sync(run)
    return [r.message_id.decode() if isinstance(r.message_id, bytes) else r.message_id
            for r in esme.resps]


async def test_admin_socket_is_private_and_gone_when_the_gateway_stops(state_dir: Path) -> None:
    path = state_dir / "admin.sock"
    async with running_stack(state_dir):
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(state_dir.stat().st_mode) & 0o077 == 0
    assert not path.exists()


async def test_a_stale_socket_is_replaced_and_a_live_one_refused(state_dir: Path) -> None:
    import socket

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(state_dir / "admin.sock"))
    stale.close()  # a socket file nobody listens on: what a killed daemon leaves
    async with running_stack(state_dir) as (running, _sim):
        from gateway.admin import AdminSocketError, open_socket

        with pytest.raises(AdminSocketError, match="another daemon"):
            open_socket(running.config.admin_socket)


async def test_commands_say_the_gateway_is_not_running(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = await smsgw(capsys, "status", "--socket", str(state_dir / "admin.sock"))
    assert status == 3 and out == ""
    assert "the gateway is not running" in err and str(state_dir / "admin.sock") in err


def test_the_socket_path_is_checked_in_the_config(tmp_path: Path) -> None:
    conf = (REPO / "conf" / "demo.toml").read_text()
    long_path = tmp_path / "conf.toml"
    long_path.write_text(conf.replace('socket = "var/demo/admin.sock"',
                                      f'socket = "/{"x" * 120}.sock"'))
    with pytest.raises(ConfigError, match=r"admin.socket: expected a path of at most 107"):
        load_config(long_path)
    config = load_config(REPO / "conf" / "demo.toml")
    assert config.admin_socket == Path.cwd() / "var" / "demo" / "admin.sock"
    default = tmp_path / "default.toml"
    default.write_text(conf.replace('socket = "var/demo/admin.sock"', ""))
    assert load_config(default).admin_socket == load_config(default).store.path.parent / \
        "admin.sock"


async def test_status_shows_binds_queues_rates_and_smsc_errors(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.config import SimulatorConfig

    throttling = SimulatorConfig(port=0, control_port=0, seed=7, throttle=1.0)
    async with running_stack(state_dir, sim=throttling,
                             retry=RetryConfig(initial_delay=3600, max_delay=3600)) as (
            running, _sim):
        sock = str(running.config.admin_socket)
        await submit(running.smpp_port, "33611111111", "33622222222", wait_receipts=False)
        await wait_for(lambda: len(running.connectors["sim"].errors) == 2)
        status, out, _ = await smsgw(capsys, "status", "--socket", sock, "--json")
        assert status == 0
        s = json.loads(out)
        [sim] = s["smscs"]
        assert sim["up"] and sim["bound_transmitting"] == 2 and sim["binds_configured"] == 2
        assert sim["last_errors"][0]["what"] == "submit"
        assert "0x00000058" in sim["last_errors"][0]["detail"]  # ESME_RTHROTTLED
        assert sim["submit_errors_per_s"] > 0 and sim["submits_per_s"] > 0
        assert {a["account"] for a in s["accounts"]} == {"demo", "other"}
        assert set(s["messages"]) == {"ACCEPTED", "SCHEDULED", "QUEUED", "IN_FLIGHT"}
        assert s["queues"]["unfinished"] == 2 and s["messages"]["QUEUED"] == 2
        demo = next(a for a in s["accounts"] if a["account"] == "demo")
        assert demo["unfinished"] == 2
        esme = SmpplibEsme(running.smpp_port)
        await trio.to_thread.run_sync(esme.bind)
        try:
            status, out, _ = await smsgw(capsys, "status", "--socket", sock, "--json")
            demo = next(a for a in json.loads(out)["accounts"] if a["account"] == "demo")
            assert demo["binds"] == {"transmitter": 0, "receiver": 0, "transceiver": 1}
            status, out, _ = await smsgw(capsys, "status", "--socket", sock)
        finally:
            await trio.to_thread.run_sync(esme.close)
        assert status == 0
        assert "SMSC" in out and "sim" in out and "up" in out and "0x00000058" in out


async def test_message_show_prints_a_real_messages_parts_and_history(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_stack(state_dir) as (running, _sim):
        sock = str(running.config.admin_socket)
        [mid] = await submit(running.smpp_port, "33633333333")
        await wait_for(lambda: mid not in running.dispatcher.live)
        status, out, _ = await smsgw(capsys, "message", "show", mid, "--socket", sock, "--json")
        assert status == 0
        d = json.loads(out)
        assert d["message"]["id"] == mid and d["message"]["recipient"] == "33633333333"
        assert d["message"]["state"] == "DELIVERED" and d["message"]["smsc"] == "sim"
        assert "Hello" not in out  # the text is never shown, only its length and encoding
        assert d["parts"][0]["operator_message_id"] and d["parts"][0]["state"] == "DELIVERED"
        # The history as the gateway wrote it (report_delivered follows once its deletion
        # is committed).
        assert [(e["event"], e["from"], e["to"]) for e in d["history"]][:3] == [
            ("accepted", "ACCEPTED", "QUEUED"), ("attempt", "QUEUED", "IN_FLIGHT"),
            ("receipt", "IN_FLIGHT", "DELIVERED")]
        assert d["history"][1]["detail"]["connector"] == "sim"
        assert d["history"][2]["detail"]["stat"] == "DELIVRD"
        status, out, _ = await smsgw(capsys, "message", "show", mid, "--socket", sock)
        assert status == 0 and "ACCEPTED -> QUEUED" in out and "QUEUED -> IN_FLIGHT" in out
        assert "IN_FLIGHT -> DELIVERED" in out and "DELIVRD" in out
        status, _, err = await smsgw(capsys, "message", "show", "0" * 32, "--socket", sock)
        assert status == 1 and "no message" in err


async def test_queue_lists_waiting_messages_and_retry_sends_one_now(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.config import SimulatorConfig

    throttling = SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, seed=7,
                                 throttle=1.0)
    long_backoff = RetryConfig(initial_delay=3600, max_delay=3600, multiplier=1)
    async with running_stack(state_dir, sim=throttling, retry=long_backoff) as (running, sim):
        sock = str(running.config.admin_socket)
        ids = await submit(running.smpp_port, "33644444444", "33655555555", wait_receipts=False)
        await wait_for(lambda: all(running.dispatcher.live[i].msg.attempts == 1
                                   and running.dispatcher.live[i].msg.state is State.QUEUED
                                   for i in ids))
        status, out, _ = await smsgw(capsys, "queue", "--socket", sock, "--json")
        assert status == 0
        listed = [json.loads(line) for line in out.splitlines()]
        assert sorted(m["id"] for m in listed) == sorted(ids)
        assert all(m["state"] == "QUEUED" and m["attempts"] == 1 for m in listed)
        for filters in (["--state", "IN_FLIGHT"], ["--account", "other"],
                        ["--older-than", "1h"], ["--smsc", "elsewhere"]):
            status, out, _ = await smsgw(capsys, "queue", "--socket", sock, "--json", *filters)
            assert (status, out) == (0, ""), filters
        status, out, _ = await smsgw(capsys, "queue", "--socket", sock, "--account", "demo")
        assert status == 0 and ids[0] in out and "2 unfinished messages" in out
        status, out, _ = await smsgw(capsys, "queue", "--socket", sock, "--limit", "1")
        assert status == 0 and out.count("QUEUED") == 1 and "1 unfinished message (the first 1)" \
            in out
        status, _, err = await smsgw(capsys, "queue", "--socket", sock, "--state", "DELIVERED")
        assert status == 1 and "expected one of ACCEPTED" in err

        sim.config = dataclasses.replace(sim.config, throttle=0.0)  # the operator is back
        status, out, _ = await smsgw(capsys, "message", "retry", ids[0], "--socket", sock)
        assert status == 0 and "next attempt moved" in out
        with trio.fail_after(10):  # within seconds, not the hour of backoff
            while (m := await running.store.get_message(ids[0])) is None or not m.state.final:
                await trio.sleep(0.02)
        assert m.state is State.DELIVERED
        assert running.dispatcher.live[ids[1]].msg.state is State.QUEUED  # the other waits
        status, _, err = await smsgw(capsys, "message", "retry", ids[0], "--socket", sock)
        assert status == 1 and "DELIVERED already" in err


async def test_erase_leaves_no_trace_of_the_number_in_the_store(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_stack(state_dir) as (running, sim):
        sock = str(running.config.admin_socket)
        mine = await submit(running.smpp_port, PERSON, PERSON)
        [kept] = await submit(running.smpp_port, "33677777777")
        await wait_for(lambda: not running.dispatcher.live)
        await trio.to_thread.run_sync(  # an MO from the person, owed to account demo
            post_mo, f"http://127.0.0.1:{sim.control_port}", PERSON, "36111", "STOP")
        with trio.fail_after(10):
            while not (await running.store.pending_report_counts())[0]:
                await trio.sleep(0.02)
        status, out, _ = await smsgw(capsys, "erase", "--msisdn", f"+{PERSON}", "--socket",
                                     sock, "--json")
        assert status == 0
        d = json.loads(out)
        assert d["messages_deleted"] == 2 and d["unfinished_left"] == []
        assert d["reports_deleted"] == 1  # the MO
        for mid in mine:
            assert await running.store.get_message(mid) is None
        assert await running.store.get_message(kept) is not None
        page = await running.store.cdr_page(0, 2e9)
        assert PERSON not in json.dumps(page.records)
        assert d["wal_cleared"]  # and deleted rows are zeroed (secure_delete): not a byte left
        for name in ("smsgw.sqlite3", "smsgw.sqlite3-wal"):
            file = state_dir / name
            assert not file.exists() or PERSON.encode() not in file.read_bytes(), name
        status, out, _ = await smsgw(capsys, "cdr", "totals", "--since", "2000-01-01",
                                     "--socket", sock, "--json")
        totals = [json.loads(line) for line in out.splitlines()]
        assert status == 0 and sum(t["messages"] for t in totals) == 2  # still counted
        assert {(t["account"], t["smsc"]) for t in totals} == {("demo", "sim")}
        status, out, _ = await smsgw(capsys, "cdr", "totals", "--since", "2000-01-01",
                                     "--until", "2000-01-02", "--socket", sock)
        assert status == 0 and "no messages purged or erased" in out
    assert await rows_naming(state_dir / "smsgw.sqlite3", PERSON) == []


async def test_cdr_export_of_thousands_of_messages_is_paged(
    state_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_SCAN_WINDOW", 500)
    pages: list[int] = []
    real_page = Store.cdr_page

    async def counting(self: Store, *args: Any) -> Any:
        page = await real_page(self, *args)
        pages.append(len(page.records))
        return page

    monkeypatch.setattr(Store, "cdr_page", counting)
    async with running_stack(state_dir) as (running, _sim):
        sock = str(running.config.admin_socket)
        msgs = [make_message(account="demo", created_at=T0 + i, state=State.DELIVERED,
                             done_at=T0 + i + 2, connector="sim", parts_total=1)
                for i in range(3000)]
        for i in range(0, 3000, 500):
            await running.store.add_messages(msgs[i:i + 500])
        out_file = state_dir / "cdr.csv"
        status, _, err = await smsgw(
            capsys, "cdr", "export", "--since", "2023-11-14T22:13:20Z", "--until",
            "2023-11-15", "--output", str(out_file), "--socket", sock)
        assert status == 0 and err == "3000 records exported\n"  # no progress bar off a tty
        lines = out_file.read_text().splitlines()
        assert lines[0].split(",")[:6] == ["id", "account", "sender", "recipient", "channel",
                                           "parts"]
        assert len(lines) == 3001 and lines[1].startswith(msgs[0].id)
        assert "DELIVERED" in lines[1] and "2023-11-14T22:13:20.000Z" in lines[1]
        assert len(pages) >= 6 and max(pages) <= 500
        status, out, _ = await smsgw(capsys, "cdr", "export", "--since", "2023-11-14",
                                     "--until", "2023-11-14T22:13:25Z", "--format", "jsonl",
                                     "--socket", sock)
        records = [json.loads(line) for line in out.splitlines()]
        assert [r["id"] for r in records] == [m.id for m in msgs[:5]]
        assert records[0]["encoding"] == "UCS-2" and records[0]["smsc"] == "sim"
        status, _, err = await smsgw(capsys, "cdr", "export", "--since", "yesterday",
                                     "--socket", sock)
        assert status == 1 and "since: expected an ISO 8601" in err


async def test_the_installed_command_talks_to_the_running_gateway(state_dir: Path) -> None:
    async with running_stack(state_dir) as (running, _sim):
        sock = str(running.config.admin_socket)
        conf = state_dir / "gateway.toml"  # the socket found through --config, as users do
        conf.write_text((REPO / "conf" / "demo.toml").read_text().replace(
            'socket = "var/demo/admin.sock"', f'socket = "{sock}"'))
        proc = await trio.run_process(
            [sys.executable, "-m", "gateway.cli", "queue", "--config", str(conf)],
            capture_stdout=True, capture_stderr=True, check=False, cwd=REPO,
            env={**os.environ, "COLUMNS": "200"})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.decode().strip() == "0 unfinished messages"
    proc2 = subprocess.run([sys.executable, "-m", "gateway.cli", "status", "--socket", sock],
                           capture_output=True, text=True, cwd=REPO, check=False)
    assert proc2.returncode == 3 and "not running" in proc2.stderr


async def test_cdr_export_shows_a_progress_bar_on_a_terminal_only(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pty

    monkeypatch.setattr(store_module, "_SCAN_WINDOW", 400)
    async with running_stack(state_dir) as (running, _sim):
        await running.store.add_messages([make_message(account="demo", created_at=T0 + i)
                                          for i in range(1000)])
        import fcntl
        import struct
        import termios

        master, slave = pty.openpty()  # stderr on a terminal, the records to a file
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        try:
            proc = await trio.run_process(
                [sys.executable, "-m", "gateway.cli", "cdr", "export", "--since", "2023-11-14",
                 "--socket", str(running.config.admin_socket), "-o", str(state_dir / "x.csv")],
                stderr=slave, check=False, cwd=REPO)
            os.close(slave)
            shown = b""
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the terminal's other end is closed and drained
                    break
                if not chunk:
                    break
                shown += chunk
        finally:
            os.close(master)
        assert proc.returncode == 0
        text = shown.decode()
        assert "cdr export: 100%" in text and "records=1000" in text
        assert len((state_dir / "x.csv").read_text().splitlines()) == 1001


async def test_a_store_failure_is_reported_not_a_crash(
    state_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.store import StoreError

    async def disk_error(*_args: Any, **_kw: Any) -> None:
        raise StoreError("disk I/O error")

    async with running_stack(state_dir) as (running, _sim):
        monkeypatch.setattr(running.store, "get_message", disk_error)
        status, out, err = await smsgw(capsys, "message", "show", "0" * 32, "--socket",
                                       str(running.config.admin_socket))
        assert (status, out) == (1, "")
        assert "the store failed: disk I/O error; try again" in err


async def test_a_second_daemon_on_the_same_socket_stops_with_a_clear_error(
    state_dir: Path
) -> None:
    async with running_stack(state_dir) as (running, _sim):
        (state_dir / "second").mkdir()
        conf = _config_file(state_dir / "second", 0o600)  # its own store, the same socket
        with conf.open("a") as f:
            f.write(f'[admin]\nsocket = "{running.config.admin_socket}"\n')
        proc = await trio.run_process(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(conf)],
            capture_stdout=True, capture_stderr=True, check=False, cwd=REPO)
        assert proc.returncode == 2
        assert "another daemon is serving this admin socket" in proc.stderr.decode()
        assert running.config.admin_socket.exists()  # the first one's is left alone
