"""Training sets and dataset versions: `training-set build`, `datasets list|show|load|verify|diff|rebuild`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from healthmate_features.cli._common import echo_json, handles_errors, main, profile_option, settings

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
@handles_errors
def training_set_build_cmd(config_path: Path, bump: Bump | None, profile: str | None) -> None:
    """Build a training set from a config and save it as a new dataset version; print name@version.

    When nothing changed since the latest version (same data, definitions, entity frame and
    config), no version is saved and that version is printed; `--bump` always saves one."""
    from healthmate_features.training.builder import TrainingSetConfig, build_and_save, summary

    ref, dataset, created = build_and_save(TrainingSetConfig.from_file(config_path), settings(profile), bump=bump)
    click.echo(ref)
    if not created:
        click.echo(
            f"unchanged: {ref} already holds this data, definitions and config (no new version); "
            "pass --bump patch to save a copy anyway",
            err=True,
        )
    echo_json(summary(dataset))


@main.group("datasets")
def datasets_group() -> None:
    """Dataset versions: list, show, load, verify, diff, rebuild."""


def _registry(profile: str | None) -> DatasetRegistry:
    from healthmate_features.datasets.registry import DatasetRegistry

    return DatasetRegistry.from_settings(settings(profile))


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
    from healthmate_features.training.builder import summary

    dataset = _registry(profile).load(name, version)
    if out:
        dataset.write_parquet(out)
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

    report = rebuild(name, version, settings(profile))
    echo_json(report)
    if not report["identical"]:
        raise click.ClickException(
            f"rebuild of {name}@{version} differs"
            + (": its entity file changed since" if report["entities_changed"] else ": the sources changed since")
        )
