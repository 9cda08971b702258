"""`smsgw config push|show|versions`: the configuration the nodes of one database share
(accounts, SMSCs, routes, routers, rules: gateway/shared_config.py), through a running node's
admin socket. push sends a file's shared sections; show prints a version as TOML.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
from pathlib import Path
from typing import IO, Any

import tomli_w

from gateway.admin_cli import (
    AdminClient,
    CommandFailed,
    _print_json,
    _runner,
    _short,
    common_arguments,
    table,
)
from gateway.config import shared_document


def cmd_push(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    document = json.loads(shared_document(args.file))
    by = f"{getpass.getuser()}@{socket.gethostname()} ({Path(args.file).resolve()})"
    d = client.call("POST", "/v1/config", body={"document": document, "by": by,
                                                 "if_version": args.if_version})
    if args.json:
        _print_json(d, out)
    elif d["stored"]:
        print(f"shared configuration version {d['version']} stored: every node applies it "
              "within a second (smsgw_config_shared_version tells which version each runs)",
              file=out)
    else:
        print(f"unchanged: the latest shared configuration, version {d['version']}, has "
              f"these sections already", file=out)
    return 0


def _shown(d: dict[str, Any]) -> str:
    config = d["config"]
    header = (f"# Shared configuration version {config['version']}, pushed "
              f"{_short(config['pushed_at'])} UTC by {config['pushed_by']}\n"
              f"# (node {d['node']} runs version {d['running_version']})\n")
    return header + tomli_w.dumps(config["document"])


def cmd_show(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    params = {"version": args.version} if args.version is not None else None
    d = client.call("GET", "/v1/config", params=params)
    if d["config"] is None:
        raise CommandFailed("no shared configuration yet: push one (smsgw config push FILE)")
    if args.json:
        _print_json(d["config"], out)
    else:
        out.write(_shown(d))
    return 0


def cmd_versions(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    d = client.call("GET", "/v1/config")
    if args.json:
        _print_json({"running_version": d["running_version"], "versions": d["versions"]}, out)
        return 0
    rows = [(v["version"], _short(v["pushed_at"]), v["pushed_by"],
             "<- running" if v["version"] == d["running_version"] else "")
            for v in d["versions"]]
    print(table(rows, ("VERSION", "PUSHED (UTC)", "BY", "")), file=out)
    return 0


def add_config_commands(sub: Any, default_config: str) -> None:
    common = common_arguments(default_config)
    config = sub.add_parser(
        "config", help="the configuration the nodes of one database share",
        description="The sections every node of one shared PostgreSQL store runs alike "
                    "(accounts, SMSCs, routes, routers, rules...), kept in the database: push "
                    "a file's, show one version, list the versions.")
    csub = config.add_subparsers(dest="action", required=True)
    help_ = ("send the shared sections of FILE to a running node, which checks them with its "
             "own file and stores them as the next version; every node applies it within a "
             "second")
    push = csub.add_parser("push", parents=[common], help=help_, description=help_)
    push.add_argument("file", help="a TOML file with the shared sections (others are ignored)")
    push.add_argument("--if-version", type=int,
                      help="only if the latest version is this one (0: none yet)")
    push.set_defaults(func=_runner(cmd_push))
    help_ = "print the latest shared configuration (or --version N) as TOML"
    show = csub.add_parser("show", parents=[common], help=help_, description=help_)
    show.add_argument("--version", type=int)
    show.set_defaults(func=_runner(cmd_show))
    help_ = "list the versions kept, newest first, and the one this node runs"
    versions = csub.add_parser("versions", parents=[common], help=help_, description=help_)
    versions.set_defaults(func=_runner(cmd_versions))
