"""What every command module shares: the `main` group, options, settings, error mapping, output.

Domain errors (HealthmateError) become click errors with the library's message, in one place.

Output has one convention: text for people by default (`echo_table`, `echo_fields`, values
through `util.text.format_value`), and with `--json` (`json_option`) exactly one JSON document
on stdout (`echo_json`), everything else (progress, Feast's own messages) on stderr.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, TextIO, TypeVar

import click

from healthmate_features.config import PROFILES, Settings
from healthmate_features.errors import HealthmateError
from healthmate_features.util.text import format_value

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


# The real stdout while a --json command runs (its other output goes to stderr meanwhile).
_json_stdout: ContextVar[TextIO | None] = ContextVar("json_stdout", default=None)


def echo_json(obj: Any) -> None:
    """Print `obj` as one strict JSON document (NaN as null, datetimes as ISO strings) on stdout."""
    from healthmate_features.util.jsonable import to_jsonable  # pandas: only when printing JSON

    text = json.dumps(to_jsonable(obj, "output", strict=False), indent=2, default=str, allow_nan=False)
    click.echo(text, file=_json_stdout.get())


def echo_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Print rows as a left-aligned text table with a header; cells through `format_value`
    (strings as they are, None as `-`)."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    for line in [columns, *cells]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def echo_fields(fields: Mapping[str, Any]) -> None:
    """Print a mapping as aligned `key  value` lines (a summary); values through `format_value`."""
    width = max((len(k) for k in fields), default=0)
    for key, value in fields.items():
        click.echo(f"{key.ljust(width)}  {_cell(value)}".rstrip())


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else format_value(value)


def json_option(fn: F) -> F:
    """Add `--json` (parameter `as_json`): the command prints JSON instead of text.

    While a `--json` command runs, whatever else it prints to stdout (Feast's messages, our
    progress lines) goes to stderr, so that stdout carries exactly the JSON of `echo_json`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> Any:
        if not as_json:
            return fn(*args, as_json=False, **kwargs)
        token = _json_stdout.set(sys.stdout)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return fn(*args, as_json=True, **kwargs)
        finally:
            _json_stdout.reset(token)

    option = click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (and only JSON on stdout) instead of text."
    )
    return option(wrapper)  # type: ignore[return-value]  # same signature, as functools.wraps promises


def settings(profile: str | None = None) -> Settings:
    """The settings from the environment, with `--profile` (when given) overriding HM_PROFILE."""
    return Settings.from_env(**({"profile": profile} if profile else {}))


quiet_option = click.option("--quiet", is_flag=True, help="No progress bars (they show only on a terminal anyway).")


def show_progress(quiet: bool) -> bool:
    """Whether a command draws progress: only when stderr is a terminal and --quiet was not given."""
    return not quiet and sys.stderr.isatty()


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
