"""The `healthmate-features` command line: parses, calls the library, formats. No logic here.

Domain errors (HealthmateError) become click errors with the library's message.
"""
from __future__ import annotations

import functools
import json
import sys
from datetime import timezone
from pathlib import Path

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


def _settings(profile: str | None = None) -> Settings:
    return Settings.from_env(**({"profile": profile} if profile else {}))


quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
profile_option = click.option(
    "--profile", type=click.Choice(["embedded", "production"]), default=None,
    help="Deployment profile (default: HM_PROFILE or embedded).",
)


@main.command("ingest")
@click.option("--raw", "raw_dir", required=True, type=click.Path(path_type=Path), help="Directory with the raw tables.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None, help="Output directory (default: data/ingested).")
@click.option("--batch-rows", default=100_000, show_default=True, help="Rows per COPY chunk (production profile).")
@profile_option
@quiet_option
@handles_errors
def ingest_cmd(raw_dir: Path, out_dir: Path | None, batch_rows: int, profile: str | None, quiet: bool) -> None:
    """Validate raw tables; write accepted rows, a rejects file per table and counts per reason.

    With the production profile the accepted rows are then loaded into Postgres (replacing the
    previous load atomically)."""
    from . import postgres
    from .ingest import ingest

    settings = _settings(profile)
    out_dir = out_dir or settings.ingested_dir
    loaded: dict[str, int] = {}
    if settings.profile == "production":
        reports, loaded = postgres.ingest(raw_dir, settings, out_dir=out_dir, batch_rows=batch_rows, progress=not quiet)
    else:
        reports = ingest(raw_dir, out_dir, progress=not quiet)
    for r in reports:
        click.echo(f"{r.table}: read {r.read:,}, accepted {r.accepted:,}, rejected {r.rejected:,}")
        for reason, n in sorted(r.reasons.items(), key=lambda kv: -kv[1]):
            click.echo(f"  {n:>8,}  {reason}")
        if r.rejected:
            click.echo(f"  rejected rows with reasons: {out_dir / (r.table + '.rejects.csv')}")
        if r.ignored_columns:
            click.echo(f"  ignored columns: {', '.join(r.ignored_columns)}")
    for table, rows in loaded.items():
        click.echo(f"loaded {rows:,} rows into postgres table {settings.pg_schema}.{table}")


@main.command("build-features")
@click.option("--raw", "raw_dir", required=True, type=click.Path(path_type=Path), help="Raw directory that was ingested.")
@click.option("--memory-limit", default=None, help="DuckDB memory limit, e.g. 4GB.")
@profile_option
@quiet_option
@handles_errors
def build_features_cmd(raw_dir: Path, memory_limit: str | None, profile: str | None, quiet: bool) -> None:
    """Compute the feature tables (health, engagement, profile) from the ingested raw data.

    Embedded: DuckDB writes data/features/*.parquet. Production: the same SQL runs inside
    Postgres and replaces the tables <HM_PG_SCHEMA>.<table> atomically."""
    from . import postgres
    from .engineering import build_features

    settings = _settings(profile)
    if settings.profile == "production":
        for table, rows in postgres.build_features(raw_dir, settings, progress=not quiet).items():
            click.echo(f"{table}: {rows:,} rows -> postgres table {settings.pg_schema}.{table}")
        return
    for table, rows in build_features(raw_dir, settings, progress=not quiet, memory_limit=memory_limit).items():
        click.echo(f"{table}: {rows:,} rows -> {settings.features_dir / (table + '.parquet')}")


@main.command("apply")
@profile_option
@handles_errors
def apply_cmd(profile: str | None) -> None:
    """Register the definitions of feature_repo/ with Feast (same as `feast apply`)."""
    from . import store

    store.apply(_settings(profile))


@main.command("materialize")
@click.option("--start", type=click.DateTime(), default=None, help="Window start (UTC; default: earliest feature row).")
@click.option("--end", type=click.DateTime(), default=None, help="Window end (UTC; default: latest feature row).")
@click.option("--incremental", is_flag=True, help="Continue each view from its last materialization.")
@click.option("--view", "views", multiple=True, help="Only these feature views (repeatable).")
@profile_option
@handles_errors
def materialize_cmd(start, end, incremental: bool, views: tuple[str, ...], profile: str | None) -> None:
    """Load the latest feature values into the online store."""
    from . import store

    utc = lambda d: d.replace(tzinfo=timezone.utc) if d is not None else None  # noqa: E731
    lo, hi = store.materialize(
        _settings(profile), start=utc(start), end=utc(end), incremental=incremental, views=list(views) or None
    )
    click.echo(f"materialized {'incrementally ' if incremental else ''}up to {hi}" + (f" from {lo}" if lo else ""))


@main.command("online")
@click.option("--user-id", required=True, type=int, help="The user to look up.")
@click.option("--feature-service", default=None, help="Only this feature service's features (default: all).")
@click.option("--at", type=click.DateTime(), default=None, help="Request time for on-demand features (UTC; default: now).")
@profile_option
@handles_errors
def online_cmd(user_id: int, feature_service: str | None, at, profile: str | None) -> None:
    """Print one user's online features as JSON."""
    from . import store

    at = at.replace(tzinfo=timezone.utc) if at else None
    echo_json(store.online_features(_settings(profile), user_id, feature_service=feature_service, at=at))


@main.command("training-frame")
@click.option("--labels", "labels_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="Parquet file with user_id, event_timestamp and the label (default: data/ingested/labels.parquet).")
@click.option("--feature-service", default="health_risk_v1", show_default=True, help="Feature service to join.")
@click.option("--label", default="adverse_event_30d", show_default=True, help="Label column.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the frame to this Parquet file.")
@profile_option
@handles_errors
def training_frame_cmd(labels_path, feature_service: str, label: str, out, profile: str | None) -> None:
    """Join labels to features point-in-time through Feast and print a summary."""
    from .pipeline import summarize_frame, training_frame

    settings = _settings(profile)
    frame = training_frame(settings, labels_path or settings.ingested_dir / "labels.parquet", feature_service=feature_service, label=label)
    if out:
        frame.to_parquet(out, index=False)
    echo_json(summarize_frame(frame, label))


@main.command("demo")
@click.option("--users", default=300, show_default=True, help="Users to generate.")
@click.option("--days", default=180, show_default=True, help="Days to generate.")
@click.option("--seed", default=7, show_default=True, help="Random seed.")
@click.option(
    "--profile", type=click.Choice(["embedded", "production"]), default="embedded", show_default=True,
    help="embedded: no server needed; production: Postgres and Redis named by HM_PG_* / HM_REDIS_URL.",
)
@quiet_option
@handles_errors
def demo_cmd(users: int, days: int, seed: int, profile: str, quiet: bool) -> None:
    """Run the whole pipeline (what `make demo` and `make demo-production` run)."""
    from .pipeline import run_demo

    run_demo(_settings(profile), users=users, days=days, seed=seed, echo=click.echo, progress=not quiet)


@main.command("env")
@handles_errors
def env_cmd() -> None:
    """Print `export` lines that let the plain `feast` CLI use the production profile.

    Usage: eval "$(healthmate-features env)"; feast -f feature_store.production.yaml apply
    """
    from .profiles import env_lines

    click.echo("\n".join(env_lines(_settings("production"))))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
