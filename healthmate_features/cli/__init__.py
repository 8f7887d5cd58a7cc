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

from healthmate_features.config import Settings
from healthmate_features.errors import HealthmateError


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
    from healthmate_features.raw.schemas import describe_markdown

    click.echo(describe_markdown(), nl=False)


@main.command()
def features() -> None:
    """Print the feature catalog (every feature with type, unit and description) as Markdown."""
    from healthmate_features.features.catalog import describe_markdown

    click.echo(describe_markdown(), nl=False)


def _settings(profile: str | None = None) -> Settings:
    return Settings.from_env(**({"profile": profile} if profile else {}))


quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
profile_option = click.option(
    "--profile",
    type=click.Choice(["embedded", "production"]),
    default=None,
    help="Deployment profile (default: HM_PROFILE or embedded).",
)


@main.command("ingest")
@click.option("--raw", "raw_dir", required=True, type=click.Path(path_type=Path), help="Directory with the raw tables.")
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=None, help="Output directory (default: data/ingested)."
)
@click.option("--batch-rows", default=100_000, show_default=True, help="Rows per COPY chunk (production profile).")
@profile_option
@quiet_option
@handles_errors
def ingest_cmd(raw_dir: Path, out_dir: Path | None, batch_rows: int, profile: str | None, quiet: bool) -> None:
    """Validate raw tables; write accepted rows, a rejects file per table and counts per reason.

    With the production profile the accepted rows are then loaded into Postgres (replacing the
    previous load atomically)."""
    from healthmate_features.backends import postgres
    from healthmate_features.raw.ingest import ingest

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
@click.option(
    "--raw", "raw_dir", required=True, type=click.Path(path_type=Path), help="Raw directory that was ingested."
)
@click.option("--memory-limit", default=None, help="DuckDB memory limit, e.g. 4GB.")
@profile_option
@quiet_option
@handles_errors
def build_features_cmd(raw_dir: Path, memory_limit: str | None, profile: str | None, quiet: bool) -> None:
    """Compute the feature tables (health, engagement, profile) from the ingested raw data.

    Embedded: DuckDB writes data/features/*.parquet. Production: the same SQL runs inside
    Postgres and replaces the tables <HM_PG_SCHEMA>.<table> atomically."""
    from healthmate_features.backends import postgres
    from healthmate_features.features.build import build_features

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
    from healthmate_features.stores import feature_store as store

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
    from healthmate_features.stores import feature_store as store

    utc = lambda d: d.replace(tzinfo=timezone.utc) if d is not None else None  # noqa: E731
    lo, hi = store.materialize(
        _settings(profile), start=utc(start), end=utc(end), incremental=incremental, views=list(views) or None
    )
    click.echo(f"materialized {'incrementally ' if incremental else ''}up to {hi}" + (f" from {lo}" if lo else ""))


@main.command("online")
@click.option("--user-id", required=True, type=int, help="The user to look up.")
@click.option("--feature-service", default=None, help="Only this feature service's features (default: all).")
@click.option(
    "--at", type=click.DateTime(), default=None, help="Request time for on-demand features (UTC; default: now)."
)
@profile_option
@handles_errors
def online_cmd(user_id: int, feature_service: str | None, at, profile: str | None) -> None:
    """Print one user's online features as JSON."""
    from healthmate_features.stores import feature_store as store

    at = at.replace(tzinfo=timezone.utc) if at else None
    echo_json(store.online_features(_settings(profile), user_id, feature_service=feature_service, at=at))


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
@handles_errors
def training_frame_cmd(labels_path, feature_service: str, label: str, out, profile: str | None) -> None:
    """Join labels to features point-in-time through Feast and print a summary."""
    from healthmate_features.demo import summarize_frame, training_frame

    settings = _settings(profile)
    frame = training_frame(
        settings, labels_path or settings.ingested_dir / "labels.parquet", feature_service=feature_service, label=label
    )
    if out:
        frame.to_parquet(out, index=False)
    echo_json(summarize_frame(frame, label))


@main.command("demo")
@click.option("--users", default=500, show_default=True, help="Users to generate.")
@click.option("--days", default=270, show_default=True, help="Days to generate.")
@click.option("--seed", default=7, show_default=True, help="Random seed.")
@click.option(
    "--profile",
    type=click.Choice(["embedded", "production"]),
    default="embedded",
    show_default=True,
    help="embedded: no server needed; production: Postgres and Redis named by HM_PG_* / HM_REDIS_URL.",
)
@quiet_option
@handles_errors
def demo_cmd(users: int, days: int, seed: int, profile: str, quiet: bool) -> None:
    """Run the whole pipeline (what `make demo` and `make demo-production` run)."""
    from healthmate_features.demo import run_demo

    run_demo(_settings(profile), users=users, days=days, seed=seed, echo=click.echo, progress=not quiet)


@main.command("env")
@handles_errors
def env_cmd() -> None:
    """Print `export` lines that let the plain `feast` CLI use the production profile.

    Usage: eval "$(healthmate-features env)"; feast -f feature_store.production.yaml apply
    """
    from healthmate_features.backends.profiles import env_lines

    click.echo("\n".join(env_lines(_settings("production"))))


# -- model tracking and API keys (SQL store: data/healthmate.db or Postgres) ---------------

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@main.group("training-set")
def training_set_group() -> None:
    """Build point-in-time-correct, leakage-safe, preprocessed and versioned training sets."""


@training_set_group.command("build")
@click.option(
    "--config", "config_path", required=True, type=click.Path(path_type=Path), help="Training-set config (YAML)."
)
@click.option(
    "--bump", type=click.Choice(["major", "minor", "patch"]), default=None, help="Override the version bump rule."
)
@profile_option
@handles_errors
def training_set_build_cmd(config_path: Path, bump: str | None, profile: str | None) -> None:
    """Build a training set from a config and save it as a new dataset version; print name@version."""
    from healthmate_features.training.builder import TrainingSetConfig, build_and_save, summary

    config = TrainingSetConfig.from_file(config_path)
    if bump:
        config.bump = bump
    ref, dataset = build_and_save(config, _settings(profile))
    click.echo(ref)
    echo_json(summary(dataset))


@main.group("datasets")
def datasets_group() -> None:
    """Dataset versions: list, show, load, verify, diff, rebuild."""


def _registry(profile: str | None):
    from healthmate_features.training.builder import registry

    return registry(_settings(profile))


@datasets_group.command("list")
@click.argument("name", required=False)
@profile_option
@handles_errors
def datasets_list_cmd(name: str | None, profile: str | None) -> None:
    """List dataset versions (of one dataset, or all)."""
    echo_json(_registry(profile).list(name))


@datasets_group.command("show")
@click.argument("name")
@click.argument("version", required=False)
@profile_option
@handles_errors
def datasets_show_cmd(name: str, version: str | None, profile: str | None) -> None:
    """Print a version's manifest (latest by default)."""
    echo_json(_registry(profile).show(name, version))


@datasets_group.command("load")
@click.argument("name")
@click.argument("version", required=False)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Also write the splits as Parquet into this directory."
)
@profile_option
@handles_errors
def datasets_load_cmd(name: str, version: str | None, out: Path | None, profile: str | None) -> None:
    """Load a version (verified first; latest by default) and print its summary."""
    import pandas as pd

    from healthmate_features.training.builder import summary

    dataset = _registry(profile).load(name, version)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        for split, frame in dataset.frames():
            (frame.to_frame() if isinstance(frame, pd.Series) else frame).to_parquet(out / f"{split}.parquet")
    echo_json({"dataset": dataset.ref, **summary(dataset)})


@datasets_group.command("verify")
@click.argument("name")
@click.argument("version", required=False)
@profile_option
@handles_errors
def datasets_verify_cmd(name: str, version: str | None, profile: str | None) -> None:
    """Recompute a version's hashes; exit 1 on tampering or missing files."""
    report = _registry(profile).verify(name, version)
    echo_json(report.to_dict())
    if not report.ok:
        raise click.ClickException(f"{name}@{report.version} failed verification")


@datasets_group.command("diff")
@click.argument("name")
@click.argument("v1")
@click.argument("v2")
@profile_option
@handles_errors
def datasets_diff_cmd(name: str, v1: str, v2: str, profile: str | None) -> None:
    """Schema, feature, row-count and summary-statistic changes between two versions."""
    echo_json(_registry(profile).diff(name, v1, v2))


@datasets_group.command("rebuild")
@click.argument("name")
@click.argument("version")
@profile_option
@handles_errors
def datasets_rebuild_cmd(name: str, version: str, profile: str | None) -> None:
    """Rebuild a version from its manifest and check the data hash is identical (saves nothing)."""
    from healthmate_features.training.builder import rebuild

    report = rebuild(name, version, _settings(profile))
    echo_json(report)
    if not report["identical"]:
        raise click.ClickException(
            f"rebuild of {name}@{version} differs"
            + (": its entity file changed since" if report["entities_changed"] else ": the sources changed since")
        )


def _sql_store(profile: str | None):
    """The profile's SQL store, migrated; use as a context manager (closes on exit)."""
    from healthmate_features.backends.sqlstore import open_store

    return open_store(_settings(profile))


def _echo_table(rows: list[dict], columns: list[str]) -> None:
    """Print rows as a left-aligned text table with a header."""
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    for line in [columns, *cells]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


def _pairs(values: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    pairs = []
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint=option)
        pairs.append((name.strip(), value.strip()))
    return pairs


def _metric_values(values: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for name, value in _pairs(values, "--metric"):
        try:
            out[name] = float(value)
        except ValueError:
            raise click.BadParameter(f"{name}={value!r}: the value is not a number", param_hint="--metric") from None
    return out


def _param_values(values: tuple[str, ...]) -> dict:
    out = {}
    for name, value in _pairs(values, "--param"):
        try:  # numbers, true/false, lists and objects as JSON; anything else as a string
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def _num(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.6g}" if sign else f"{value:.6g}"


@main.group("models")
def models_group() -> None:
    """Model performance tracking: log metrics, show history, compare versions."""


@models_group.command("log")
@click.option("--model", required=True, help="Model name, e.g. health_risk.")
@click.option("--version", "model_version", required=True, help="Model version, e.g. 1.0.")
@click.option("--dataset", required=True, help="Dataset version evaluated on, as NAME@VERSION.")
@click.option("--env", "environment", required=True, help="development, staging or production.")
@click.option("--metric", "metrics", multiple=True, required=True, help="NAME=VALUE, e.g. auc=0.81 (repeatable).")
@click.option("--param", "params", multiple=True, help="NAME=VALUE run parameter; JSON values are parsed (repeatable).")
@profile_option
@json_option
@handles_errors
def models_log_cmd(model, model_version, dataset, environment, metrics, params, profile, as_json) -> None:
    """Record one evaluation run's metrics for a model version."""
    from healthmate_features.tracking import Tracker

    metric_values, param_values = _metric_values(metrics), _param_values(params)
    with _sql_store(profile) as store:
        run = Tracker(store).log_metrics(
            model,
            version=model_version,
            dataset=dataset,
            environment=environment,
            metrics=metric_values,
            params=param_values,
        )
    if as_json:
        return echo_json(run.to_dict())
    shown = ", ".join(f"{k}={_num(v)}" for k, v in run.metrics.items())
    click.echo(
        f"logged run {run.run_id}: {run.model_name} {run.model_version} on {run.dataset} in {run.environment}: {shown}"
    )


@models_group.command("history")
@click.option("--model", required=True, help="Model name.")
@click.option("--metric", default=None, help="Only this metric.")
@click.option("--env", "environment", default=None, help="Only this environment.")
@profile_option
@json_option
@handles_errors
def models_history_cmd(model, metric, environment, profile, as_json) -> None:
    """Show a model's metrics over time, oldest first."""
    from healthmate_features.tracking import Tracker

    with _sql_store(profile) as store:
        records = Tracker(store).history(model, metric=metric, environment=environment)
    if as_json:
        return echo_json([r.to_dict() for r in records])
    if not records:
        return click.echo(f"no metrics of model {model} match these filters")
    rows = [{**r.to_dict(), "logged_at": f"{r.logged_at:%Y-%m-%d %H:%M:%S}", "value": _num(r.value)} for r in records]
    _echo_table(rows, ["logged_at", "model_version", "environment", "dataset", "metric", "value"])


@models_group.command("compare")
@click.option("--model", required=True, help="Model name.")
@click.option("--versions", required=True, help="Comma-separated versions; the first is the baseline, e.g. 1.0,1.1.")
@click.option(
    "--allow-mixed-datasets",
    is_flag=True,
    help="Compare even when versions were evaluated on different dataset versions.",
)
@click.option("--env", "environment", default=None, help="Only values logged in this environment.")
@click.option("--dataset", default=None, help="Only values measured on this NAME@VERSION.")
@click.option(
    "--higher-is-better",
    "higher",
    multiple=True,
    help="Metric where higher wins (repeatable; overrides the built-in table).",
)
@click.option("--lower-is-better", "lower", multiple=True, help="Metric where lower wins (repeatable).")
@profile_option
@json_option
@handles_errors
def models_compare_cmd(
    model, versions, allow_mixed_datasets, environment, dataset, higher, lower, profile, as_json
) -> None:
    """Compare model versions metric by metric: values, deltas vs the first, the best."""
    from healthmate_features.tracking import Tracker

    directions = {**{m: True for m in higher}, **{m: False for m in lower}}
    with _sql_store(profile) as store:
        result = Tracker(store).compare(
            model,
            [v for v in versions.split(",") if v.strip()],
            allow_mixed_datasets=allow_mixed_datasets,
            environment=environment,
            dataset=dataset,
            higher_is_better=directions,
        )
    if as_json:
        return echo_json(result.to_dict())
    datasets = "; ".join(f"{v}: {', '.join(ds)}" for v, ds in result.datasets.items())
    click.echo(f"model {result.model_name}, baseline {result.baseline}; datasets: {datasets}")
    if result.mixed_datasets:
        click.echo("WARNING: the versions were evaluated on different dataset versions")
    rows = []
    for m in result.metrics:
        row = {"metric": m.metric, "better": m.direction}
        for v in result.versions:
            value = m.values[v]
            delta = m.deltas[v]
            row[v] = (
                "-"
                if value is None
                else _num(value.value)
                + ("" if v == result.baseline or delta is None else f" ({_num(delta, sign=True)})")
            )
        row["best"] = (
            ", ".join(m.best)
            if m.best
            else (
                f"? pass --higher-is-better {m.metric} or --lower-is-better {m.metric}"
                if m.direction == "unknown"
                else "-"
            )
        )
        rows.append(row)
    _echo_table(rows, ["metric", "better", *result.versions, "best"])


@main.group("keys")
def keys_group() -> None:
    """API keys for the HTTP API: create (secret shown once), list, revoke."""


@keys_group.command("create")
@click.option("--role", required=True, help="admin or user.")
@click.option("--user-id", type=int, default=None, help="For user keys: the user id the key belongs to.")
@click.option("--name", default=None, help="A label, e.g. ios-app.")
@profile_option
@json_option
@handles_errors
def keys_create_cmd(role, user_id, name, profile, as_json) -> None:
    """Create an API key and print its secret once (only its hash is stored)."""
    from healthmate_features.access.keys import ApiKeys

    with _sql_store(profile) as store:
        key_id, secret = ApiKeys(store).create_key(role, user_id=user_id, name=name)
    if as_json:
        return echo_json({"key_id": key_id, "secret": secret, "role": role, "user_id": user_id, "name": name})
    owner = f" for user {user_id}" if user_id is not None else ""
    click.echo(f"created {role} key {key_id}{owner}" + (f" ({name})" if name else ""))
    click.echo("secret (shown only now; send it as 'Authorization: Bearer <secret>'):")
    click.echo(secret)


@keys_group.command("list")
@click.option("--active", "active_only", is_flag=True, help="Hide revoked keys.")
@profile_option
@json_option
@handles_errors
def keys_list_cmd(active_only, profile, as_json) -> None:
    """List API keys (ids, roles, users, names; never secrets)."""
    from healthmate_features.access.keys import ApiKeys

    with _sql_store(profile) as store:
        keys = ApiKeys(store).list_keys(include_revoked=not active_only)
    if as_json:
        return echo_json([k.to_dict() for k in keys])
    if not keys:
        return click.echo("no API keys; create one with `healthmate-features keys create`")
    rows = [
        {
            **k.to_dict(),
            "created_at": f"{k.created_at:%Y-%m-%d %H:%M:%S}",
            "status": "active" if k.active else f"revoked {k.revoked_at:%Y-%m-%d %H:%M:%S}",
        }
        for k in keys
    ]
    _echo_table(rows, ["key_id", "role", "user_id", "name", "created_at", "status"])


@keys_group.command("revoke")
@click.argument("key_id")
@profile_option
@json_option
@handles_errors
def keys_revoke_cmd(key_id, profile, as_json) -> None:
    """Revoke an API key: it is rejected from now on (kept for the audit log)."""
    from healthmate_features.access.keys import ApiKeys

    with _sql_store(profile) as store:
        info = ApiKeys(store).revoke(key_id)
    if as_json:
        return echo_json(info.to_dict())
    click.echo(f"revoked {info.key_id} ({info.role}) at {info.revoked_at:%Y-%m-%d %H:%M:%S} UTC")


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@profile_option
@handles_errors
def serve_cmd(host: str, port: int, profile: str | None) -> None:
    """Serve the HTTP API with uvicorn (Bearer API keys; OpenAPI docs at /docs)."""
    import uvicorn

    from healthmate_features.api.app import create_app

    uvicorn.run(create_app(_settings(profile)), host=host, port=port)


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
@handles_errors
def generate(users, days, seed, out_dir, start, invalid_rate, quiet) -> None:
    """Write realistic synthetic raw data (users, health_readings, app_events, labels) as Parquet."""
    from healthmate_features.raw.generate import generate as run

    counts = run(
        out_dir, users=users, days=days, seed=seed, start=start.date(), invalid_rate=invalid_rate, progress=not quiet
    )
    for table, rows in counts.items():
        click.echo(f"{table}: {rows:,} rows")
    click.echo(f"written to {out_dir}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
