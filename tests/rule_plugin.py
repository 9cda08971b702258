"""Test helper: a rule plug-in installed as a separate distribution (a dist-info with an
entry point of group smsgw.rules on sys.path), like `pip install` of a third-party package."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

PLUGIN_SOURCE = textwrap.dedent('''
    """A third party's rules: refuse texts with a banned word; tag marketing senders."""
    from rules.core import Change, Decision


    class BannedWord:
        def __init__(self, options):
            self.word = options.get("word", "forbidden").encode()

        def apply(self, message, context):
            if self.word in message.body:
                return Decision.reject("banned-word", "the text holds a banned word",
                                       smpp_status=0x45, http_status=422, subject="text")
            return Decision.accept()


    class Prefix:
        def __init__(self, options):
            self.prefix = options["prefix"].encode()

        def apply(self, message, context):
            return Decision.modify([Change("body", message.body, self.prefix + message.body)],
                                   "prefix added")
''')


def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   package: str = "acme_rules") -> Path:
    """Write package ``package`` with its dist-info (entry points ``banned-word`` and
    ``prefix``) under tmp_path/site and put that directory on sys.path."""
    site = tmp_path / "site"
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(PLUGIN_SOURCE)
    info = site / f"{package}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[smsgw.rules]\nbanned-word = {package}:BannedWord\nprefix = {package}:Prefix\n")
    monkeypatch.syspath_prepend(str(site))
    return site
