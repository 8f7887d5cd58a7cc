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


@main.command()
@click.option("--users", type=click.IntRange(min=1), required=True, help="Number of users to simulate.")
@click.option("--days", type=click.IntRange(min=1), required=True, help="Length of the period in days.")
@click.option("--seed", type=click.IntRange(min=0), required=True, help="Random seed: the same seed writes the same files.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Directory for the Parquet files.")
@click.option("--start", type=click.DateTime(formats=["%Y-%m-%d"]), default="2025-01-01", show_default=True,
              help="First day of the period (UTC).")
@click.option("--invalid-rate", type=click.FloatRange(0, 1), default=5e-5, show_default=True,
              help="Fraction of readings and app events corrupted on purpose for ingest to reject (0: none).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handles_errors
def generate(users, days, seed, out_dir, start, invalid_rate, quiet) -> None:
    """Write realistic synthetic raw data (users, health_readings, app_events, labels) as Parquet."""
    from .generate import generate as run

    counts = run(out_dir, users=users, days=days, seed=seed, start=start.date(), invalid_rate=invalid_rate, progress=not quiet)
    for table, rows in counts.items():
        click.echo(f"{table}: {rows:,} rows")
    click.echo(f"written to {out_dir}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
