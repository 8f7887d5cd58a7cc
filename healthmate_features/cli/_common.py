"""What every command module shares: the `main` group, options, settings, error mapping, output.

Domain errors (HealthmateError) become click errors with the library's message, in one place.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from healthmate_features.config import PROFILES, Settings
from healthmate_features.errors import HealthmateError

F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(fn: F) -> F:
    """Turn library errors into a clean `Error: ...` and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HealthmateError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]  # same signature, as functools.wraps promises


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def echo_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Print rows as a left-aligned text table with a header."""
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    for line in [columns, *cells]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def settings(profile: str | None = None) -> Settings:
    """The settings from the environment, with `--profile` (when given) overriding HM_PROFILE."""
    return Settings.from_env(**({"profile": profile} if profile else {}))


quiet_option = click.option("--quiet", is_flag=True, help="No progress bars (they show only on a terminal anyway).")


def show_progress(quiet: bool) -> bool:
    """Whether a command draws progress: only when stderr is a terminal and --quiet was not given."""
    return not quiet and sys.stderr.isatty()


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
profile_option = click.option(
    "--profile",
    type=click.Choice(PROFILES),
    default=None,
    help="Deployment profile (default: HM_PROFILE or embedded).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="healthmate-features")
def main() -> None:
    """HealthMate feature store and training-data builder (on Feast)."""
