"""Meta-tests of the command line: every command has help."""

from __future__ import annotations

import re
import shlex

import click
import pytest
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


@pytest.fixture(scope="module")
def readme(repo_root) -> str:
    return (repo_root / "README.md").read_text()


def _shown_commands(readme: str, prefix: str) -> list[list[str]]:
    """Argument lists of every README line that runs `prefix` (in code blocks or inline)."""
    found = []
    for match in re.finditer(r"(?:\.venv/bin/)?" + re.escape(prefix) + r"((?: [^`\n|]*)?)", readme):
        args = shlex.split(match.group(1).split("#")[0].replace("\\", ""))
        found.append(args)
    return found


def test_every_healthmate_command_in_the_readme_exists(readme):
    shown = _shown_commands(readme, "healthmate-features")
    assert len(shown) >= 5
    for args in shown:
        group, path = main, []
        for word in args:
            if word.startswith("-") or not isinstance(group, click.Group):
                break
            assert word in group.commands, f"README shows `healthmate-features {' '.join(args)}`: no command {word!r}"
            group, path = group.commands[word], [*path, word]
        names = {opt for p in group.params for opt in getattr(p, "opts", [])}
        for word in args:
            if word.startswith("--"):
                assert word.split("=")[0] in names, f"README shows option {word} that `{' '.join(path)}` lacks"


def test_every_make_target_in_the_readme_exists(readme, repo_root):
    targets = set(re.findall(r"^([a-z][\w-]*):", (repo_root / "Makefile").read_text(), re.M))
    shown = re.findall(r"(?:^|`)make ([a-z][\w-]*)", readme, re.M)
    assert {"demo", "test"} <= set(shown), "README should show `make demo` and `make test`"
    for target in shown:
        assert target in targets, f"README shows `make {target}`, which the Makefile lacks"


def test_readme_schema_section_and_feature_docs_are_current(readme, repo_root):
    from healthmate_features.features.catalog import describe_markdown as features_md
    from healthmate_features.raw.schemas import describe_markdown as schemas_md

    assert schemas_md() in readme, "README's schema section is stale: paste `healthmate-features schemas`"
    assert (repo_root / "docs" / "features.md").read_text() == features_md(), (
        "docs/features.md is stale: healthmate-features features > docs/features.md"
    )
