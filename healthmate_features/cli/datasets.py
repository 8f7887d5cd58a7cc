"""Training sets and dataset versions: `training-set build`, `datasets list|show|load|verify|diff|rebuild`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from healthmate_features.cli._common import (
    echo_fields,
    echo_json,
    echo_table,
    handles_errors,
    json_option,
    main,
    profile_option,
    settings,
)
from healthmate_features.util.text import format_value

if TYPE_CHECKING:
    from healthmate_features.datasets.registry import Bump, DatasetRegistry


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
@json_option
@handles_errors
def training_set_build_cmd(config_path: Path, bump: Bump | None, profile: str | None, as_json: bool) -> None:
    """Build a training set from a config and save it as a new dataset version; print name@version.

    When nothing changed since the latest version (same data, definitions, entity frame and
    config), no version is saved and that version is printed; `--bump` always saves one."""
    from healthmate_features.training.builder import TrainingSetConfig, build_and_save, summary

    ref, dataset, created = build_and_save(TrainingSetConfig.from_file(config_path), settings(profile), bump=bump)
    if not created:
        click.echo(
            f"unchanged: {ref} already holds this data, definitions and config (no new version); "
            "pass --bump patch to save a copy anyway",
            err=True,
        )
    if as_json:
        return echo_json({"dataset": ref, "created": created, **summary(dataset)})
    click.echo(ref)
    echo_fields(summary(dataset))


@main.group("datasets")
def datasets_group() -> None:
    """Dataset versions: list, show, load, verify, diff, rebuild."""


def _registry(profile: str | None) -> DatasetRegistry:
    from healthmate_features.datasets.registry import DatasetRegistry

    return DatasetRegistry.from_settings(settings(profile))


@datasets_group.command("list")
@click.argument("name", required=False)
@profile_option
@json_option
@handles_errors
def datasets_list_cmd(name: str | None, profile: str | None, as_json: bool) -> None:
    """List dataset versions (of one dataset, or all)."""
    registry = _registry(profile)
    versions = registry.list(name)
    if as_json:
        return echo_json(versions)
    if not versions:
        return click.echo(
            f"no dataset versions in {registry.uri}; build one with `healthmate-features training-set build`"
        )
    rows = [
        {
            **v,
            "created_at": _time(v["created_at"]),
            "train": (v["rows"] or {}).get("train"),
            "test": (v["rows"] or {}).get("test"),
            "data_hash": (v["data_hash"] or "")[:12],
        }
        for v in versions
    ]
    echo_table(rows, ["name", "version", "created_at", "bump", "train", "test", "feature_service", "data_hash"])


@datasets_group.command("show")
@click.argument("name")
@click.argument("version", required=False)
@profile_option
@json_option
@handles_errors
def datasets_show_cmd(name: str, version: str | None, profile: str | None, as_json: bool) -> None:
    """Summarize a version's manifest (latest by default); `--json` prints the whole manifest."""
    manifest = _registry(profile).show(name, version)
    if as_json:
        return echo_json(manifest)
    click.echo(f"{manifest.get('name', name)}@{manifest.get('version')}")
    echo_fields(_manifest_summary(manifest))
    click.echo(f"(the whole manifest: healthmate-features datasets show {name} {manifest.get('version')} --json)")


def _manifest_summary(m: Mapping[str, Any]) -> dict[str, Any]:
    bump = m.get("bump") or {}
    label = m.get("label") or {}
    files = m.get("files") or {}
    env = m.get("environment") or {}
    pipeline = m.get("pipeline") or {}
    commit = env.get("git_commit")
    return {
        "created_at": _time(m.get("created_at")),
        "parent_version": m.get("parent_version"),
        "bump": f"{bump.get('kind')}: {'; '.join(bump.get('reasons') or [])}",
        "feature_service": f"{m.get('feature_service')} ({len(m.get('feature_refs') or [])} feature refs)",
        "features": f"{len(m.get('feature_names') or [])} columns after preprocessing",
        "label": f"{label.get('name')} ({label.get('dtype')})",
        "label_balance": _balance(_sides(m.get("label_balance") or {})),
        "rows": _sides(m.get("row_counts") or {}),
        "time_range": m.get("time_range"),
        "split": {k: v for k, v in (m.get("split_config") or {}).items() if v is not None},
        "data_hash": m.get("data_hash"),
        "files": f"{len(files)} files, {sum(f.get('bytes', 0) for f in files.values()) / 1e6:.1f} MB",
        "pipeline": f"{pipeline.get('class')} ({pipeline.get('serializer')})" if pipeline else None,
        "built_with": f"feast {env.get('feast')}, python {env.get('python')}"
        + (f", git {commit[:10]}{' (dirty)' if env.get('git_dirty') else ''}" if commit else ""),
    }


def _balance(balance: Mapping[str, Any]) -> str:
    """Label balance per split: class fractions, or mean and std of a regression label."""
    parts = []
    for side, b in balance.items():
        if b.get("kind") == "classification":
            parts.append(
                f"{side} " + ", ".join(f"{c}: {format_value(f)}" for c, f in (b.get("fractions") or {}).items())
            )
        else:
            parts.append(f"{side} mean {format_value(b.get('mean'))}, std {format_value(b.get('std'))}")
    return "; ".join(parts) or "-"


def _time(iso: str | None) -> str | None:
    """An ISO time from a manifest, to the second: `2026-11-27 13:01:03`."""
    return iso[:19].replace("T", " ") if iso else None


@datasets_group.command("load")
@click.argument("name")
@click.argument("version", required=False)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Also write the splits as Parquet into this directory."
)
@click.option(
    "--pseudonymize",
    is_flag=True,
    help="Replace user_id with a keyed hash and drop direct identifiers (key: HM_EXPORT_KEY or --key-file).",
)
@click.option(
    "--key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A file holding the export key (instead of HM_EXPORT_KEY); only with --pseudonymize.",
)
@profile_option
@json_option
@handles_errors
def datasets_load_cmd(
    name: str,
    version: str | None,
    out: Path | None,
    pseudonymize: bool,
    key_file: Path | None,
    profile: str | None,
    as_json: bool,
) -> None:
    """Load a version (verified first; latest by default) and print its summary.

    With --pseudonymize the splits (and --out files) carry pseudonyms instead of user ids and no
    direct identifiers; the key is never written into them."""
    from healthmate_features.training.builder import summary

    if key_file is not None and not pseudonymize:
        raise click.UsageError("--key-file goes with --pseudonymize")
    dataset = _registry(profile).load(name, version)
    if pseudonymize:
        from healthmate_features.governance.exports import export_key, pseudonymize_dataset

        dataset = pseudonymize_dataset(dataset, export_key(settings(profile), key_file=key_file))
    written = [str(p) for p in dataset.write_parquet(out)] if out else []
    shown = {**summary(dataset), **({"pseudonymized": dataset.metadata["pseudonymized"]} if pseudonymize else {})}
    if as_json:
        return echo_json({"dataset": dataset.ref, **shown, **({"written": written} if out else {})})
    click.echo(dataset.ref)
    echo_fields(shown)
    if out:
        click.echo(f"wrote {len(written)} splits as Parquet to {out}")


@datasets_group.command("verify")
@click.argument("name", required=False)
@click.argument("version", required=False)
@profile_option
@json_option
@handles_errors
def datasets_verify_cmd(name: str | None, version: str | None, profile: str | None, as_json: bool) -> None:
    """Recompute a version's hashes (every version of every dataset without NAME); exit 1 on tampering.

    A version an erasure redacted is checked against its redaction record and says so; a version
    retention tombstoned passes and says when."""
    registry = _registry(profile)
    reports = [registry.verify(name, version)] if name else registry.verify_all()
    if as_json:
        echo_json(reports[0].to_dict() if name else [r.to_dict() for r in reports])
    else:
        if not reports:
            click.echo(f"no dataset versions under {registry.uri}")
        for report in reports:
            ref = f"{report.name}@{report.version}"
            if report.ok and report.tombstoned:
                click.echo(f"{ref}: tombstoned by retention on {report.tombstoned[:10]} (manifest kept, data removed)")
            elif report.ok:
                against = "its redaction record" if report.redacted_by else "the manifest"
                click.echo(f"{ref}: intact ({len(report.checked_files)} files and the data hash match {against})")
            else:
                click.echo(f"{ref}: {len(report.problems)} problem(s)")
                for problem in report.problems:
                    click.echo(f"  {problem}")
            for note in report.notes:
                click.echo(f"  {note}")
    failed = [f"{r.name}@{r.version}" for r in reports if not r.ok]
    if failed:
        raise click.ClickException(f"{', '.join(failed)} failed verification")


@datasets_group.command("diff")
@click.argument("name")
@click.argument("v1")
@click.argument("v2")
@profile_option
@json_option
@handles_errors
def datasets_diff_cmd(name: str, v1: str, v2: str, profile: str | None, as_json: bool) -> None:
    """Schema, feature, row-count and summary-statistic changes between two versions.

    Prints a summary; `--json` prints every column's statistics."""
    diff = _registry(profile).diff(name, v1, v2)
    if as_json:
        return echo_json(diff)
    rule = diff["bump_rule"]
    click.echo(
        f"{name} {diff['from']} -> {diff['to']}: the bump rule says {rule['kind']} ({'; '.join(rule['reasons'])})"
    )
    echo_fields(_diff_summary(diff))
    shifts = diff["largest_shifts"]
    if shifts:
        click.echo("largest statistic shifts (mean/std in units of the older std; null fraction as is):")
        echo_table(
            [{**s, "delta": f"{s['delta']:+.6g}", "shift": f"{s['shift']:.3g}"} for s in shifts],
            ["split", "column", "stat", "from", "to", "delta", "shift"],
        )
    else:
        click.echo("column statistics: no change")
    click.echo(f"(every column's statistics: healthmate-features datasets diff {name} {v1} {v2} --json)")


def _diff_summary(diff: Mapping[str, Any]) -> dict[str, Any]:
    features, schema = diff["features"], diff["schema"]
    service = features["feature_service"]
    out: dict[str, Any] = {
        "inputs_changed": [k for k, changed in diff["changed"].items() if changed] or "none",
        "feature_service": f"{service['from']} -> {service['to']}" if service["changed"] else f"{service['to']} (same)",
        "feature_refs": _added_removed(features["added"], features["removed"]),
    }
    for split in ("X_train", "joined_train"):
        if split in schema:
            s = schema[split]
            dtypes = [f"{c} {d['from']} -> {d['to']}" for c, d in s["dtype_changed"].items()]
            out[f"columns ({split})"] = _added_removed(s["added"], s["removed"]) + (
                f"; dtype changed: {', '.join(dtypes)}" if dtypes else ""
            )
    label = schema["label"]
    out["label"] = f"{label['from']} -> {label['to']}" if label["changed"] else "same"
    out["rows"] = {side: _delta(c) for side, c in diff["rows"].items()}
    out["label_balance"] = "; ".join(f"{side} {_balance_delta(b)}" for side, b in diff["label_balance"].items())
    return out


def _added_removed(added: list[str], removed: list[str]) -> str:
    if not added and not removed:
        return "same"
    parts = [f"{len(added)} added" + (f" ({', '.join(added)})" if added else "")]
    parts.append(f"{len(removed)} removed" + (f" ({', '.join(removed)})" if removed else ""))
    return ", ".join(parts)


def _delta(change: Mapping[str, Any], digits: int = 6) -> str:
    """`from -> to (+delta)`, or `to (same)`."""
    a, b, delta = change.get("from"), change.get("to"), change.get("delta")

    def num(x: Any) -> str:
        return f"{x:.{digits}g}" if isinstance(x, float) else format_value(x)

    if delta is None:
        return f"{num(a)} -> {num(b)}"
    if not delta:
        return f"{num(b)} (same)"
    return f"{num(a)} -> {num(b)} ({delta:+.{digits}g})"


def _balance_delta(balance: Mapping[str, Any]) -> str:
    if "fractions" in balance:
        return ", ".join(f"{c}: {_delta(change, digits=4)}" for c, change in balance["fractions"].items())
    if "mean" in balance:
        return f"mean {_delta(balance['mean'])}, std {_delta(balance['std'])}"
    return f"{format_value(balance.get('from'))} -> {format_value(balance.get('to'))}"


@datasets_group.command("rebuild")
@click.argument("name")
@click.argument("version")
@profile_option
@json_option
@handles_errors
def datasets_rebuild_cmd(name: str, version: str, profile: str | None, as_json: bool) -> None:
    """Rebuild a version from its manifest and check the data hash is identical (saves nothing)."""
    from healthmate_features.training.builder import rebuild

    report = rebuild(name, version, settings(profile))
    if as_json:
        echo_json(report)
    elif report["identical"]:
        click.echo(f"{report['dataset']} rebuilt: identical data hash {report['data_hash']}")
    else:
        click.echo(
            f"{report['dataset']} rebuilt: data hash {report['data_hash']}, "
            f"the manifest says {report['manifest_data_hash']}"
        )
    if not report["identical"]:
        raise click.ClickException(
            f"rebuild of {name}@{version} differs"
            + (": its entity file changed since" if report["entities_changed"] else ": the sources changed since")
        )


def _sides(per_split: Mapping[str, Any]) -> dict[str, Any]:
    """train before test (manifests sort their keys)."""
    return {side: per_split[side] for side in sorted(per_split, key=lambda s: (s != "train", s))}
