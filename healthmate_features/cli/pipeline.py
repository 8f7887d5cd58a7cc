"""The pipeline commands: generate, ingest, build-features, apply, materialize, online, training-frame, demo."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timezone
from pathlib import Path

import click

from healthmate_features.backends import backend_for
from healthmate_features.cli._common import (
    echo_fields,
    echo_json,
    echo_table,
    handles_errors,
    json_option,
    main,
    profile_option,
    quiet_option,
    settings,
    show_progress,
)
from healthmate_features.config import PROFILES


@main.command()
def schemas() -> None:
    """Print the raw table schemas and the metric catalog as Markdown."""
    from healthmate_features.raw.schemas import describe_markdown

    click.echo(describe_markdown(), nl=False)


@main.command()
def features() -> None:
    """Print the feature catalog (every feature with type, unit and description) as Markdown."""
    from healthmate_features.features.catalog import describe_markdown

    click.echo(describe_markdown(), nl=False)


@main.command("ingest")
@click.option("--raw", "raw_dir", required=True, type=click.Path(path_type=Path), help="Directory with the raw tables.")
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=None, help="Output directory (default: data/ingested)."
)
@click.option("--batch-rows", default=100_000, show_default=True, help="Rows per COPY chunk (production profile).")
@profile_option
@quiet_option
@json_option
@handles_errors
def ingest_cmd(
    raw_dir: Path, out_dir: Path | None, batch_rows: int, profile: str | None, quiet: bool, as_json: bool
) -> None:
    """Validate raw tables; write accepted rows, a rejects file per table and counts per reason.

    With the production profile the accepted rows are then loaded into Postgres (replacing the
    previous load atomically). Last, the raw tables are fingerprinted for the next build-features."""
    from healthmate_features.features.build import keep_raw_fingerprints
    from healthmate_features.raw.ingest import ingest_raw

    current = settings(profile)
    out_dir = out_dir or current.ingested_dir
    reports, loaded = ingest_raw(
        raw_dir, current, out_dir=out_dir, batch_rows=batch_rows, progress=show_progress(quiet)
    )
    keep_raw_fingerprints(current)
    if as_json:
        return echo_json({"tables": [asdict(r) for r in reports], "out": out_dir, "loaded": loaded})
    for r in reports:
        click.echo(f"{r.table}: read {r.read:,}, accepted {r.accepted:,}, rejected {r.rejected:,}")
        for reason, n in sorted(r.reasons.items(), key=lambda kv: -kv[1]):
            click.echo(f"  {n:>8,}  {reason}")
        if r.rejected:
            rejects = out_dir / (r.table + ".rejects.csv")
            click.echo(f"  rejected rows with reasons: {rejects} (encrypted: `healthmate-features rejects {r.table}`)")
        if r.ignored_columns:
            click.echo(f"  ignored columns: {', '.join(r.ignored_columns)}")
    backend = backend_for(current)
    for table, rows in loaded.items():
        click.echo(f"loaded {rows:,} rows into {backend.raw_table_label(table)}")


@main.command("rejects")
@click.argument("table")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The ingest's --out (default data/ingested).",
)
@profile_option
@handles_errors
def rejects_cmd(table: str, out_dir: Path | None, profile: str | None) -> None:
    """Print the rejected rows of TABLE from the last ingest (CSV with _row/_line and _reason), decrypted."""
    from healthmate_features.raw.ingest import read_rejects

    click.echo(read_rejects(settings(profile), table, out_dir=out_dir).decode("utf-8"), nl=False)


@main.command("build-features")
@click.option(
    "--raw", "raw_dir", required=True, type=click.Path(path_type=Path), help="Raw directory that was ingested."
)
@click.option("--memory-limit", default=None, help="DuckDB memory limit, e.g. 4GB.")
@click.option("--full", is_flag=True, help="Rebuild every row, not only those the changed raw data reaches.")
@profile_option
@quiet_option
@json_option
@handles_errors
def build_features_cmd(
    raw_dir: Path, memory_limit: str | None, full: bool, profile: str | None, quiet: bool, as_json: bool
) -> None:
    """Compute the feature tables (health, engagement, profile) from the ingested raw data.

    Rebuilds only the rows the raw data changed since the last build can alter (--full: all).
    Embedded: DuckDB writes data/features/*.parquet. Production: the same SQL runs inside
    Postgres and replaces the rows of the tables <HM_PG_SCHEMA>.<table> atomically."""
    from healthmate_features.features.build import build_features

    current = settings(profile)
    backend = backend_for(current)
    tables = build_features(raw_dir, current, full=full, progress=show_progress(quiet), memory_limit=memory_limit)
    if as_json:
        return echo_json(
            {
                "incremental": tables.incremental,
                "users_rebuilt": tables.users,
                "tables": {t: {"rows": n, "table": backend.feature_table_label(t)} for t, n in tables.items()},
            }
        )
    if tables.incremental:
        click.echo(f"incremental build: rows of {tables.users:,} user(s) rebuilt")
    else:
        click.echo("full build")
    for table, rows in tables.items():
        click.echo(f"{table}: {rows:,} rows -> {backend.feature_table_label(table)}")


@main.command("apply")
@profile_option
@quiet_option
@handles_errors
def apply_cmd(profile: str | None, quiet: bool) -> None:
    """Register the definitions of feature_repo/ with Feast (same as `feast apply`)."""

    from healthmate_features.stores import feature_store

    feature_store.apply(settings(profile), progress=show_progress(quiet))


@main.command("materialize")
@click.option("--start", type=click.DateTime(), default=None, help="Window start (UTC; default: earliest feature row).")
@click.option("--end", type=click.DateTime(), default=None, help="Window end (UTC; default: latest feature row).")
@click.option(
    "--incremental",
    is_flag=True,
    help="Continue each view from where Feast's record says it ended (--start: for views never materialized).",
)
@click.option("--view", "views", multiple=True, help="Only these feature views (repeatable).")
@profile_option
@quiet_option
@json_option
@handles_errors
def materialize_cmd(
    start, end, incremental: bool, views: tuple[str, ...], profile: str | None, quiet: bool, as_json: bool
) -> None:
    """Load the latest feature values into the online store; print the window of each view."""
    from healthmate_features.stores import feature_store

    done = feature_store.materialize(
        settings(profile),
        start=start,
        end=end,
        incremental=incremental,
        views=list(views) or None,
        progress=show_progress(quiet),
    )
    if as_json:
        return echo_json(asdict(done))
    for view in done.views:
        click.echo(view.describe())
    click.echo(done.summary())


@main.command("online")
@click.option("--user-id", required=True, type=int, help="The user to look up.")
@click.option("--feature-service", default=None, help="Only this feature service's features (default: all).")
@click.option(
    "--at", type=click.DateTime(), default=None, help="Request time for on-demand features (UTC; default: now)."
)
@profile_option
@json_option
@handles_errors
def online_cmd(user_id: int, feature_service: str | None, at, profile: str | None, as_json: bool) -> None:
    """Print one user's online features: a feature/value table, or `--json` (feature -> value)."""
    from healthmate_features.stores import feature_store

    at = at.replace(tzinfo=timezone.utc) if at else None
    values = feature_store.online_features(settings(profile), user_id, feature_service=feature_service, at=at)
    if as_json:
        return echo_json(values)
    features = {name: value for name, value in values.items() if name != "user_id"}
    missing = sum(value is None for value in features.values())
    click.echo(
        f"user {user_id}, {f'feature service {feature_service}' if feature_service else 'all feature views'}: "
        f"{len(features)} features, {missing} without a value (-)"
    )
    echo_table([{"feature": name, "value": value} for name, value in features.items()], ["feature", "value"])


@main.command("training-frame")
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Parquet file with user_id, event_timestamp and the label (default: data/ingested/labels.parquet).",
)
@click.option("--feature-service", default="health_risk_v1", show_default=True, help="Feature service to join.")
@click.option("--label", default="adverse_event_30d", show_default=True, help="Label column.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the frame to this Parquet file.")
@profile_option
@json_option
@handles_errors
def training_frame_cmd(labels_path, feature_service: str, label: str, out, profile: str | None, as_json: bool) -> None:
    """Join labels to features point-in-time through Feast and print a summary."""
    from healthmate_features.demo import summarize_frame, training_frame

    current = settings(profile)
    frame = training_frame(
        current, labels_path or current.ingested_dir / "labels.parquet", feature_service=feature_service, label=label
    )
    if out:
        frame.to_parquet(out, index=False)
    if as_json:
        return echo_json({**summarize_frame(frame, label), **({"out": out} if out else {})})
    echo_fields(summarize_frame(frame, label))
    if out:
        click.echo(f"wrote {len(frame):,} rows to {out}")


@main.command("demo")
@click.option("--users", default=500, show_default=True, help="Users to generate.")
@click.option("--days", default=270, show_default=True, help="Days to generate.")
@click.option("--seed", default=7, show_default=True, help="Random seed.")
@click.option(
    "--profile",
    type=click.Choice(PROFILES),
    default="embedded",
    show_default=True,
    help="embedded: no server needed; production: Postgres and Redis named by HM_PG_* / HM_REDIS_URL.",
)
@quiet_option
@json_option
@handles_errors
def demo_cmd(users: int, days: int, seed: int, profile: str, quiet: bool, as_json: bool) -> None:
    """Run the whole pipeline (what `make demo` and `make demo-production` run).

    With `--json` the steps are reported on stderr and the figures printed as JSON."""
    from healthmate_features.demo import run_demo

    figures = run_demo(
        settings(profile), users=users, days=days, seed=seed, echo=click.echo, progress=show_progress(quiet)
    )
    if as_json:
        echo_json(figures)


@main.command("env")
@click.option(
    "--profile", type=click.Choice(PROFILES), default="production", show_default=True, help="Deployment profile."
)
@handles_errors
def env_cmd(profile: str) -> None:
    """Print `export` lines that let the plain `feast` CLI use a profile (default: production).

    Usage: eval "$(healthmate-features env)"; feast -f feature_store.production.yaml apply
    """
    click.echo("\n".join(backend_for(settings(profile)).env_lines()))


@main.command()
@click.option("--users", type=click.IntRange(min=1), required=True, help="Number of users to simulate.")
@click.option("--days", type=click.IntRange(min=1), required=True, help="Length of the period in days.")
@click.option(
    "--seed", type=click.IntRange(min=0), required=True, help="Random seed: the same seed writes the same files."
)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Directory for the Parquet files."
)
@click.option(
    "--start",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default="2025-01-01",
    show_default=True,
    help="First day of the period (UTC).",
)
@click.option(
    "--invalid-rate",
    type=click.FloatRange(0, 1),
    default=5e-5,
    show_default=True,
    help="Fraction of readings and app events corrupted on purpose for ingest to reject (0: none).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
@handles_errors
def generate(users, days, seed, out_dir, start, invalid_rate, quiet, as_json) -> None:
    """Write realistic synthetic raw data (users, health_readings, app_events, labels) as Parquet.

    Under the repository's data/ (e.g. data/raw) the files are encrypted like everything else
    there; elsewhere they are written in plain, as an export for other tools would be."""
    from healthmate_features.raw.generate import generate as run

    current = settings(None)
    inside = Path(out_dir).resolve().is_relative_to(current.data_dir.resolve())
    counts = run(
        out_dir,
        users=users,
        days=days,
        seed=seed,
        start=start.date(),
        invalid_rate=invalid_rate,
        progress=show_progress(quiet),
        keyring=backend_for(current).keyring() if inside else None,
    )
    if as_json:
        return echo_json({"rows": counts, "out": out_dir})
    for table, rows in counts.items():
        click.echo(f"{table}: {rows:,} rows")
    click.echo(f"written to {out_dir}")
