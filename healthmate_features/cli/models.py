"""Model performance tracking: `models log|history|compare`."""

from __future__ import annotations

import json

import click

from healthmate_features.backends import open_sql_store
from healthmate_features.cli._common import (
    echo_json,
    echo_table,
    handles_errors,
    json_option,
    main,
    profile_option,
    settings,
)
from healthmate_features.tracking import ENVIRONMENTS, Tracker


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
@click.option(
    "--dataset",
    required=True,
    help="Dataset version evaluated on, as NAME@VERSION from the dataset registry, e.g. health_risk@1.0.0.",
)
@click.option(
    "--external-dataset",
    is_flag=True,
    help="The dataset version is kept in another registry: skip the check that ours holds it.",
)
@click.option("--env", "environment", required=True, help="One of " + ", ".join(ENVIRONMENTS) + ".")
@click.option("--metric", "metrics", multiple=True, required=True, help="NAME=VALUE, e.g. auc=0.81 (repeatable).")
@click.option("--param", "params", multiple=True, help="NAME=VALUE run parameter; JSON values are parsed (repeatable).")
@profile_option
@json_option
@handles_errors
def models_log_cmd(
    model, model_version, dataset, external_dataset, environment, metrics, params, profile, as_json
) -> None:
    """Record one evaluation run's metrics for a model version."""
    from healthmate_features.datasets.registry import DatasetRegistry

    metric_values, param_values = _metric_values(metrics), _param_values(params)
    current = settings(profile)
    with open_sql_store(current) as store:
        run = Tracker(store, datasets=DatasetRegistry.from_settings(current)).log_metrics(
            model,
            version=model_version,
            dataset=dataset,
            environment=environment,
            metrics=metric_values,
            params=param_values,
            external_dataset=external_dataset,
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

    with open_sql_store(settings(profile)) as store:
        records = Tracker(store).history(model, metric=metric, environment=environment)
    if as_json:
        return echo_json([r.to_dict() for r in records])
    if not records:
        return click.echo(f"no metrics of model {model} match these filters")
    rows = [{**r.to_dict(), "logged_at": f"{r.logged_at:%Y-%m-%d %H:%M:%S}", "value": _num(r.value)} for r in records]
    echo_table(rows, ["logged_at", "model_version", "environment", "dataset", "metric", "value"])


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

    directions = {**{m: True for m in higher}, **{m: False for m in lower}}
    with open_sql_store(settings(profile)) as store:
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
    echo_table(rows, ["metric", "better", *result.versions, "best"])
