"""The command line: subcommands exist, configuration errors exit 2 with the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.passwords import verify_password


def test_help_lists_run_simulate_smsc_and_check_config(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("run", "simulate-smsc", "check-config", "hash-password"):
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


def test_hash_password_prints_a_verifiable_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-password", "s3cret"]) == 0
    assert verify_password("s3cret", capsys.readouterr().out.strip())


def test_empty_password_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-password", ""]) == 2
    assert "error" in capsys.readouterr().err
