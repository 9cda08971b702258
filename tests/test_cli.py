"""The command line: subcommands exist, configuration errors exit 2 with the file and key,
passwords are never taken from the command line, exposed secrets are warned about."""

from __future__ import annotations

import contextlib
import io
import os
import pty
import resource
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.cli import main, raise_fd_limit
from gateway.config import load_config
from gateway.passwords import hash_password, verify_password
from gateway.tokens import TokenIndex, hash_token, is_token_hash
from tests.procs import Proc, free_port, smsgw_command


def test_help_lists_run_simulate_smsc_and_check_config(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("run", "simulate-smsc", "check-config", "hash-password", "hash-token"):
        assert command in out


def test_check_config_accepts_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", "conf/demo.toml"]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_error_names_file_and_key(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(Path("conf/demo.toml").read_text().replace("window = 50", 'window = "ten"'))
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and 'smsc "sim".window' in err


def test_check_config_checks_a_cluster_node_with_the_shared_sections_it_would_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node, shared = "conf/cluster/node-a.toml", Path("conf/cluster/shared.toml")
    assert main(["check-config", "--config", node]) == 0
    assert "the database's shared configuration: check them with --shared" in \
        capsys.readouterr().out
    assert main(["check-config", "--config", node, "--shared", str(shared)]) == 0
    assert "OK (1 accounts, 1 smscs, 1 routes, 1 listeners) with the shared sections" in \
        capsys.readouterr().out
    bad = tmp_path / "shared.toml"
    bad.write_text(shared.read_text().replace('smscs = ["sim"]', 'smscs = ["nope"]'))
    assert main(["check-config", "--config", node, "--shared", str(bad)]) == 2
    assert 'route "default".smscs: expected names of [[smsc]] groups ("sim"), got unknown ' \
        'smsc "nope"' in capsys.readouterr().err


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))  # not a terminal


def test_hash_password_reads_the_password_from_stdin(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _stdin(monkeypatch, "s3cret\nignored\n")
    assert main(["hash-password"]) == 0
    assert verify_password("s3cret", capsys.readouterr().out.strip())


def test_hash_password_takes_no_password_on_the_command_line() -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["hash-password", "s3cret"])
    assert exit_.value.code == 2


def test_hash_token_makes_a_random_token_whose_hash_names_the_account(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-token"]) == 0
    out = capsys.readouterr().out.splitlines()
    token = out[0].removeprefix("token: ")
    token_hash = out[1].removeprefix("hash:  ")
    assert len(token) >= 43 and is_token_hash(token_hash)
    assert TokenIndex({"acme": [token_hash]}).account_of(token) == "acme"
    assert main(["hash-token"]) == 0
    assert capsys.readouterr().out.splitlines()[0] != out[0]  # a new token each time


def test_hash_token_hashes_a_given_token_from_stdin(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _stdin(monkeypatch, "demo-token\n")
    assert main(["hash-token", "--stdin"]) == 0
    assert capsys.readouterr().out.strip() == hash_token("demo-token")
    _stdin(monkeypatch, "short\n")
    assert main(["hash-token", "--stdin"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err


def test_empty_password_is_an_error_not_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _stdin(monkeypatch, "\n")
    assert main(["hash-password"]) == 2
    assert "error" in capsys.readouterr().err


_SCRYPT_RSS = """
import sys, threading
from gateway import cli
from gateway.passwords import hash_password, verify_password

def rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

cli.release_large_blocks()
encoded = hash_password("right")  # on the main thread: glibc's first 16 MiB block
base = rss()
for _ in range(3):  # checks on two threads at once, as the bind limiter runs them
    threads = [threading.Thread(target=verify_password, args=("wrong", encoded))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
print(rss() - base)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_daemon_gives_scrypt_memory_back_after_each_password_check() -> None:
    """A password check's 16 MiB must not stay in the process: without a fixed mmap
    threshold, glibc kept it in every thread's malloc arena that ever ran scrypt."""
    out = subprocess.run([sys.executable, "-c", _SCRYPT_RSS], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert int(out) < 8 * 1024 * 1024, f"RSS grew {int(out) >> 20} MiB after 6 checks"


def _hash_password_on_a_terminal(typed: list[bytes]) -> tuple[int, str, str]:
    """Run `smsgw hash-password` with a pseudo-terminal as stdin, type ``typed`` at its
    prompts; (exit status, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([smsgw_command(), "hash-password"], stdin=slave, stderr=slave,
                            stdout=subprocess.PIPE, start_new_session=True)
    os.close(slave)
    shown = b""
    try:
        for line in typed:
            deadline = time.monotonic() + 20
            while not shown.rstrip().endswith(b":"):  # wait for the prompt
                assert time.monotonic() < deadline, shown
                if select.select([master], [], [], 0.5)[0]:
                    shown += os.read(master, 1024)
            os.write(master, line + b"\n")
            shown += b"|"
        out, _ = proc.communicate(timeout=20)
        with contextlib.suppress(OSError):
            while select.select([master], [], [], 0)[0]:
                shown += os.read(master, 1024)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return proc.returncode, out.decode(), shown.decode(errors="replace")


def test_hash_password_prompts_twice_without_echo_on_a_terminal() -> None:
    status, out, shown = _hash_password_on_a_terminal([b"s3cret", b"s3cret"])
    assert status == 0 and verify_password("s3cret", out.strip())
    assert "password" in shown and "s3cret" not in shown  # typed, never echoed


def test_hash_password_refuses_two_different_passwords_on_a_terminal() -> None:
    status, out, shown = _hash_password_on_a_terminal([b"s3cret", b"s3cre7"])
    assert status == 2 and out == "" and "differ" in shown


# -- a config file holding secrets, readable by every user -----------------------------------

def _config_file(tmp_path: Path, mode: int) -> Path:
    """A gateway config with an account and an operator password, in file mode ``mode``."""
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[store]
path = "{tmp_path}/smsgw.sqlite3"
[http]
enabled = false
[[listener]]
port = 0
[[account]]
system_id = "demo"
password_hash = "{hash_password('demopass')}"
[[smsc]]
name = "op"
host = "127.0.0.1"
port = {free_port()}
system_id = "gw"
password = "opsecret"
[[route]]
name = "default"
smscs = ["op"]
""")
    config.chmod(mode)
    return config


def test_check_config_warns_when_the_file_with_passwords_is_readable_by_others(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config_file(tmp_path, 0o644)
    assert main(["check-config", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and str(config) in err and "0644" in err
    assert f"chmod 600 {config}" in err and "[[smsc]] passwords" in err


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_check_config_is_quiet_when_only_owner_and_group_can_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int) -> None:
    config = _config_file(tmp_path, mode)
    assert main(["check-config", "--config", str(config)]) == 0
    assert capsys.readouterr().err == ""


def test_run_logs_a_warning_when_the_file_with_passwords_is_readable_by_others(
        tmp_path: Path) -> None:
    config = _config_file(tmp_path, 0o604)
    gateway = Proc("gateway", ["run", "--config", str(config)], tmp_path)
    try:
        warning = gateway.wait_event("config.readable_by_others", timeout=20)
        gateway.wait_event("daemon.ready", timeout=20)  # a warning, not a refusal to start
    finally:
        gateway.stop()
    assert warning["level"] == "warning"
    assert warning["file"] == str(config) and warning["mode"] == "0604"
    assert "chmod 600" in warning["detail"]


def test_run_raises_the_open_files_limit_to_the_hard_limit(tmp_path: Path) -> None:
    """The rule: every connection is a file descriptor; a server takes what it may."""
    config = load_config(Path("conf/demo.toml"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        limit, wanted = raise_fd_limit(config)
        assert limit == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert limit == hard or hard == resource.RLIM_INFINITY
        assert wanted >= config.listeners[0].max_connections
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_store_another_gateway_holds_stops_run_with_an_error_not_a_traceback(
        tmp_path: Path, pg_dsn: str) -> None:
    import psycopg

    from gateway.store_pg_nodes import SINGLE_NODE_LOCK
    from tests.test_config import ACCOUNT, LISTENER, ROUTE, SMSC

    config = tmp_path / "gw.toml"
    config.write_text(f'[store]\nbackend = "postgresql"\ndsn = "{pg_dsn}"\n'
                      f'[admin]\nsocket = "{tmp_path / "admin.sock"}"\n'
                      + LISTENER.replace("2775", str(free_port())) + ACCOUNT + SMSC + ROUTE)
    config.chmod(0o600)
    with psycopg.connect(pg_dsn, autocommit=True) as other:  # as the other gateway would
        other.execute("SELECT pg_advisory_lock(%s)", (SINGLE_NODE_LOCK,))
        out = subprocess.run([smsgw_command(), "run", "--config", str(config)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "error: postgresql: another gateway process uses this database (it holds the "
        "single-node advisory lock); one gateway per database for now")
    assert "Traceback" not in out.stderr
