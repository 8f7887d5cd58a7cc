"""Temporary copies of the feature repository, built with data and applied with the real Feast CLI.

A built repository is expensive (generate or write raw data, ingest, build the feature tables,
`feast apply`), so the conftest files build each kind once per test run and hand out copies
(`clone`) to the tests that change it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def copy_repo(dest: Path) -> Path:
    """A temporary copy of the feature repository: every profile's YAML, .feastignore, feature_repo/."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "feature_store.yaml", dest)
    shutil.copy(ROOT / "feature_store.production.yaml", dest)
    shutil.copy(ROOT / "feature_store.spark.yaml", dest)
    shutil.copy(ROOT / ".feastignore", dest)
    shutil.copytree(ROOT / "feature_repo", dest / "feature_repo", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def clone(source: Path, dest: Path) -> Path:
    """A private copy of a built embedded-profile repository (its data/, registry and online store).

    Every path in the repository is relative to its root, so the copy is a repository of its own,
    except for one record: the registry's "infrastructure" names the SQLite online store by its
    absolute path. It is pointed at the copy's own file: otherwise the copy's next `feast apply`
    sees the path change as an update, which Feast 0.67 carries out by dropping the tables at the
    recorded path (the source repository's!) and creating none at the new one.
    """
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    if (dest / "data" / "registry.db").exists():
        from feast import FeatureStore

        fs = FeatureStore(repo_path=str(dest))
        infra = fs.registry.get_infra(fs.project)
        for table in infra.infra_objects:
            path = getattr(table, "path", None)
            if path and Path(path).is_relative_to(source):
                table.path = str(dest / Path(path).relative_to(source))
        fs.registry.update_infra(infra, fs.project, commit=True)
    return dest


def feast_apply(repo: Path) -> str:
    """Run the real `feast apply` CLI in `repo`; return its output."""
    feast = Path(sys.executable).parent / "feast"
    result = subprocess.run([str(feast), "apply"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def feast_cli(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run the real `feast` CLI with `args` in `repo` (as from its root); return its output without colours."""
    feast = Path(sys.executable).parent / "feast"
    result = subprocess.run([str(feast), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)  # colorama's colours, when it decides to colour


def build_tiny(root: Path, tables: dict[str, pd.DataFrame] | None = None):
    """A repository copy holding the tiny dataset (or `tables`), ingested and built (not applied).

    Returns its Settings."""
    from healthmate_features.backends import backend_for
    from healthmate_features.config import Settings
    from healthmate_features.features.build import build_features
    from healthmate_features.raw.ingest import ingest

    from . import tiny

    copy_repo(root)
    settings = Settings(repo_path=root)
    raw = tiny.write_raw(root / "raw", tables)
    ingest(raw, settings.ingested_dir, keyring=backend_for(settings).keyring())  # encrypted, as ingest_raw writes
    build_features(raw, settings)
    return settings


def build_generated(root: Path, *, users: int, days: int, seed: int):
    """A repository copy (with configs/) holding a generated population, ingested, built and applied.

    Returns its Settings."""
    from healthmate_features.backends import backend_for
    from healthmate_features.config import Settings
    from healthmate_features.features.build import build_features
    from healthmate_features.raw.generate import generate
    from healthmate_features.raw.ingest import ingest

    copy_repo(root)
    shutil.copytree(CONFIGS, root / "configs")
    settings = Settings(repo_path=root)
    generate(settings.raw_dir, users=users, days=days, seed=seed, progress=False)
    ingest(settings.raw_dir, settings.ingested_dir, keyring=backend_for(settings).keyring())
    build_features(settings.raw_dir, settings)
    feast_apply(root)
    return settings


def build_demo(root: Path):
    """A repository copy (with configs/) where `healthmate-features demo --quiet --json` ran, as
    `make demo` runs it (the same users, days and seed): applied, materialized, health_risk@1.0.0
    saved and a baseline run logged.

    Returns its Settings and the command's stdout (the figures as JSON) and stderr (the report)."""
    from click.testing import CliRunner

    from healthmate_features.cli import main
    from healthmate_features.config import Settings

    copy_repo(root)
    shutil.copytree(CONFIGS, root / "configs")
    result = CliRunner(env={"HM_REPO_PATH": str(root), "HM_PROFILE": "embedded"}).invoke(
        main, ["demo", "--quiet", "--json"]
    )
    assert result.exit_code == 0, result.output
    return Settings(repo_path=root), result.stdout, result.stderr


def training_config(config_name: str, **changes) -> dict:
    """The committed training-set config configs/<config_name>.yaml as a dict, with `changes` applied."""
    data = yaml.safe_load((CONFIGS / f"{config_name}.yaml").read_text())
    data.update(changes)
    return data
