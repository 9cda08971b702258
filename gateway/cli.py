"""The `smsgw` command line: run the daemon, run the SMSC simulator, check a config.

Subcommands: run, simulate-smsc (and simulate-smsc-mo to inject a phone's reply),
check-config, hash-password, hash-token; the admin commands (status, queue, message, cdr, erase)
are in gateway.admin_cli, optout in gateway.optout_cli, rules check in gateway.rules_cli.
Exit status 2 for configuration errors; run and
check-config warn when the config file's secrets are readable by every user, check-config too of a
listener off loopback without TLS and of an unverified TLS link to an SMSC.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import getpass
import resource
import stat
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

import structlog
import trio

from gateway import logs
from gateway.config import (
    ConfigError,
    GatewayConfig,
    SimulatorConfig,
    check,
    load_config,
    load_simulator_config,
    shared_document,
    tls_warnings,
)
from gateway.passwords import hash_password
from gateway.tokens import hash_token, new_token

DEFAULT_CONFIG = "conf/demo.toml"


# Cyclic GC for a long-running server holding many long-lived objects (sessions, messages):
# the default thresholds ran a collection every 700 allocations and full ones that walked
# every session, 0.4 s pauses under load and about half the CPU of 10,000 idle binds
# (bench/bench_idle.py: 7.9 % of a core, 3.7 % with these). Almost all garbage is freed by
# reference counting; cycles are still collected, less often.
GC_THRESHOLDS = (50_000, 50, 100)

# Blocks of MMAP_THRESHOLD octets and more are mmapped, and unmapped when freed. glibc's
# default raises its threshold to the largest block freed so far: after the first password
# check, scrypt's 16 MiB came from the malloc arena of the thread running it and stayed there,
# 16 MiB of RSS for good per thread that ever checked a password (tests/test_fuzz.py's gateway:
# 78 MiB after its warm-up, 118 MiB after fuzzing; 46 and 54 MiB with the threshold fixed).
# Fixed, a check's memory is given back as soon as it ends.
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt()'s parameter number in glibc's malloc.h


def release_large_blocks() -> bool:
    """Fix the C allocator's mmap threshold at MMAP_THRESHOLD; False where that is not
    possible (a C library without glibc's mallopt)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


class Exposure(NamedTuple):
    """A configuration file holding secrets that every user of the machine may read."""

    file: str
    mode: str
    message: str


def exposed_secrets(config: GatewayConfig) -> Exposure | None:
    """The warning due when the config file holds secrets ([[smsc]] passwords, [[account]]
    password hashes) and is readable by others (mode & 0o004); None otherwise."""
    held = [what for what, present in (
        ("[[smsc]] passwords", any(s.password for s in config.smscs.values())),
        ("[[account]] password hashes", bool(config.accounts))) if present]
    try:
        mode = stat.S_IMODE(config.source.stat().st_mode)
    except OSError:
        return None
    if not held or not mode & stat.S_IROTH:
        return None
    file = str(config.source)
    return Exposure(file, f"{mode:04o}", (
        f"{file} holds {' and '.join(held)} and is readable by every user (mode "
        f"{mode:04o}): chmod 600 {file} (or chmod 640, the file's group being the daemon's)"))


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway import daemon

    config = check(args.config)
    logs.configure(config.log_level)
    exposure = exposed_secrets(config)
    if exposure is not None:
        structlog.get_logger("gateway.cli").warning(
            "config.readable_by_others", file=exposure.file, mode=exposure.mode,
            detail=exposure.message)
    limit, wanted = raise_fd_limit(config)
    if limit < wanted:
        structlog.get_logger("gateway.cli").warning(
            "daemon.fd_limit_low", limit=limit, wanted=wanted,
            detail="the listeners' max_connections need more file descriptors than the "
                   "process may open: raise LimitNOFILE (systemd) or ulimit -n")
    gc.set_threshold(*GC_THRESHOLDS)
    release_large_blocks()
    gc.freeze()  # what start-up loaded (modules, config) is never garbage: never walk it
    from gateway.admin import AdminSocketError
    from gateway.store import StoreError

    refused: list[BaseException] = []
    try:
        trio.run(daemon.run, config)
    except* AdminSocketError as group:  # e.g. another daemon serves that socket
        refused.extend(group.exceptions)
    except* StoreError as group:  # the store would not open (in use, unreachable, foreign)
        refused.extend(group.exceptions)
    for exc in refused[:1]:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def raise_fd_limit(config: GatewayConfig) -> tuple[int, int]:
    """Raise the soft limit on open files to the hard one (as a server should: each
    connection is a descriptor); (the limit now, what the listeners' limits may need)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    wanted = sum(listener.max_connections for listener in config.listeners) \
        + 2 * sum(smsc.binds for smsc in config.smscs.values()) + 64  # store, metrics...
    return soft, wanted


def _cmd_simulate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gateway.simulator import main_simulate

    config = load_simulator_config(args.config) if args.config else SimulatorConfig()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("control_port", args.control_port),
                                   ("rcs_port", args.rcs_port)) if v is not None}
    if args.rcs_port is not None:
        overrides["rcs"] = True
    config = replace(config, **overrides)
    if config.rcs and config.rcs_webhook_url is None:
        config = replace(config, rcs_webhook_url=_gateway_events_url(args.config))
    logs.configure("info")
    trio.run(main_simulate, config)
    return 0


def _gateway_events_url(path: str | None) -> str:
    """Where a simulator run alone pushes RBM events when [simulator] names no
    rcs_webhook_url: POST /v1/rcs/events on the gateway's [http] listener as the file
    describes it (the file may be the gateway's config), else on [http]'s defaults."""
    import tomllib

    from gateway.config import HttpConfig
    from gateway.simulator import events_url

    http: object = {}
    if path is not None:
        with contextlib.suppress(OSError, ValueError), open(path, "rb") as file:
            http = tomllib.load(file).get("http", {})
    host, port = HttpConfig().host, HttpConfig().port
    if isinstance(http, dict):
        if isinstance(http.get("host"), str):
            host = http["host"]
        if isinstance(http.get("port"), int) and 0 < http["port"] < 65536:
            port = http["port"]
    return events_url(host, port)


def _cmd_mo(args: argparse.Namespace) -> int:
    from gateway.simulator import post_mo

    post_mo(args.control, args.source, args.dest, args.text)
    print(f"MO from {args.source} to {args.dest} injected")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    shared = shared_document(args.shared) if args.shared else None
    config = check(args.config, shared)
    exposure = exposed_secrets(config if shared is None else load_config(args.config))
    if exposure is not None:
        print(f"warning: {exposure.message}", file=sys.stderr)
    for warning in tls_warnings(config):  # the daemon logs these when it starts
        print(f"warning: {warning}", file=sys.stderr)
    if config.shared_document == "{}" and config.store.shared:
        print(f"{config.source}: OK ({len(config.listeners)} listeners; the accounts, SMSCs and "
              "routes are the database's shared configuration: check them with --shared FILE)")
        return 0
    print(f"{config.source}: OK ({len(config.accounts)} accounts, {len(config.smscs)} smscs, "
          f"{len(config.routes)} routes, {len(config.listeners)} listeners)"
          + (f" with the shared sections of {args.shared}" if args.shared else ""))
    return 0


def _read_password() -> str | None:
    """The password typed twice at a hidden prompt when stdin is a terminal, else the first
    line of stdin (``echo pw | smsgw hash-password``); None if the two typed differ."""
    if sys.stdin.isatty():
        password = getpass.getpass("SMPP password (at most 8 characters): ")
        if getpass.getpass("The same again: ") != password:
            return None
        return password
    return sys.stdin.readline().removesuffix("\n").removesuffix("\r")


def _cmd_hash(args: argparse.Namespace) -> int:
    password = _read_password()
    if password is None:
        print("error: the two passwords differ", file=sys.stderr)
        return 2
    if len(password) > 8:
        print("warning: SMPP 3.4 passwords are at most 8 characters", file=sys.stderr)
    return _print_hash(hash_password, password)


def _print_hash(hasher: Callable[[str], str], secret: str) -> int:
    """Print the hash of secret (exit status 0), or why it cannot be hashed (status 2)."""
    try:
        print(hasher(secret))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_hash_token(args: argparse.Namespace) -> int:
    """A fresh token and its hash, or (--stdin) the hash of the token on stdin's first line."""
    if args.stdin:
        token = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
        return _print_hash(hash_token, token)
    token = new_token()
    print(f"token: {token}")
    print(f"hash:  {hash_token(token)}")
    print("Give the token to the client (Authorization: Bearer <token>); put the hash in the "
          "account's http_tokens.", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smsgw", description="SMPP gateway daemon")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway daemon in the foreground")
    run.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="TOML configuration file")
    run.set_defaults(func=_cmd_run)

    sim = sub.add_parser("simulate-smsc", help="run the built-in SMSC simulator")
    sim.add_argument("--config", "-c", help="TOML file with a [simulator] table")
    sim.add_argument("--host")
    sim.add_argument("--port", type=int)
    sim.add_argument("--control-port", type=int)
    sim.add_argument("--rcs-port", type=int,
                     help="serve the RBM platform and voice provider on this port "
                          "(as rcs = true, rcs_port = N)")
    sim.set_defaults(func=_cmd_simulate)

    mo = sub.add_parser("simulate-smsc-mo", help="make the simulator deliver an MO (a reply)")
    mo.add_argument("--control", default="http://127.0.0.1:2777",
                    help="the simulator's control URL")
    mo.add_argument("--from", dest="source", required=True, help="the phone number replying")
    mo.add_argument("--to", dest="dest", required=True, help="the short code or number")
    mo.add_argument("--text", required=True)
    mo.set_defaults(func=_cmd_mo)

    chk = sub.add_parser("check-config", help="validate a configuration file and exit")
    chk.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    chk.add_argument("--shared", help="a node of a shared store: check its file with the "
                                      "shared sections of this file (as `smsgw config push` "
                                      "would send them) instead of its own")
    chk.set_defaults(func=_cmd_check)

    hp = sub.add_parser(
        "hash-password", help="print the password_hash for an account",
        description="Print the password_hash of an account password, read from a hidden "
                    "prompt, or from the first line of stdin when it is not a terminal "
                    "(never from the command line, which other users can see).")
    hp.set_defaults(func=_cmd_hash)

    ht = sub.add_parser(
        "hash-token", help="make an HTTP API token and print it with its hash",
        description="Print a new random HTTP API bearer token and its hash for an account's "
                    "http_tokens. With --stdin, print the hash of the token read from the "
                    "first line of stdin instead.")
    ht.add_argument("--stdin", action="store_true",
                    help="hash the token on stdin instead of making one")
    ht.set_defaults(func=_cmd_hash_token)
    from gateway.admin_cli import add_commands  # status, queue, message, cdr, erase

    add_commands(sub, DEFAULT_CONFIG)
    from gateway.optout_cli import add_optout_commands  # optout list|add|remove|import|export

    add_optout_commands(sub, DEFAULT_CONFIG)
    from gateway.rules_cli import add_rules_commands  # rules check (the dry run)

    add_rules_commands(sub, DEFAULT_CONFIG)
    from gateway.config_cli import add_config_commands  # config push|show|versions (nodes)

    add_config_commands(sub, DEFAULT_CONFIG)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
