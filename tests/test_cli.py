"""The `palimix` command line: help for every subcommand, exit codes."""

import subprocess
import sys

import pytest

from palimix import cli


def _palimix(*args):
    return subprocess.run([sys.executable, "-m", "palimix.cli", *args], capture_output=True, text=True)


def test_top_level_help_lists_commands():
    out = _palimix("--help")
    assert out.returncode == 0
    assert "languages" in out.stdout


def test_no_command_prints_help_and_exits_2():
    out = _palimix()
    assert out.returncode == 2
    assert "usage: palimix" in out.stdout


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_help(command):
    out = _palimix(command, "--help")
    assert out.returncode == 0, out.stderr
    assert f"usage: palimix {command}" in out.stdout


def test_unknown_command_exits_2():
    out = _palimix("no-such-command")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
