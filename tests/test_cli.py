"""The command line contract: --help everywhere, --json prints one object and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from phoenix.cli import build_parser
from tests.conftest import REPLAY_CSV, settings_env


def _subcommands(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


def test_every_subcommand_has_help_without_secrets():
    parser = build_parser()
    commands = list(_subcommands(parser))
    for required in [("demo",), ("bench",), ("run",), ("replay", "netflow"), ("train",), ("evaluate",)]:
        assert required in commands
    for cmd in commands:
        with pytest.raises(SystemExit) as done:
            parser.parse_args([*cmd, "--help"])
        assert done.value.code == 0


def test_help_text_never_shows_the_password(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "guest:guest" not in out and "***" in out


@pytest.mark.broker
def test_replay_netflow_json_is_one_object_on_stdout(broker_settings):
    proc = subprocess.run(
        [sys.executable, "-m", "phoenix", "replay", "netflow", str(REPLAY_CSV), "--devices", "3", "--rate", "0",
         "--limit", "1200", "--batch", "100", "--json"],
        capture_output=True, text=True, env=settings_env(broker_settings), timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["records"] == 1200 and doc["messages"] == 12 and doc["devices"] == 3
