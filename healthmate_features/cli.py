"""The `healthmate-features` command line: parses, calls the library, formats. No logic here.

Domain errors (HealthmateError) become click errors with the library's message.
"""
from __future__ import annotations

import functools
import json
import sys

import click

from .config import Settings
from .errors import HealthmateError


def handles_errors(fn):
    """Turn library errors into a clean `Error: ...` and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HealthmateError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="healthmate-features")
def main() -> None:
    """HealthMate feature store and training-data builder (on Feast)."""


@main.command()
def schemas() -> None:
    """Print the raw table schemas and the metric catalog as Markdown."""
    from .schemas import describe_markdown

    click.echo(describe_markdown(), nl=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
