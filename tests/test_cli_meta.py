"""Meta-tests of the command line: every command has help."""
from __future__ import annotations

import click
from click.testing import CliRunner

from healthmate_features.cli import main


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        path = (*prefix, name)
        yield path, cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path)


def test_every_command_has_help():
    runner = CliRunner()
    for path, cmd in _commands(main):
        assert cmd.help, f"command {' '.join(path)} has no help text"
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
