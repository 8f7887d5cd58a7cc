"""Dataset-version manifests: what a version records, version numbers, the bump rule, diffs.

The registry (`versioning`) owns storage; this module owns the manifest's content. Everything
here works on plain JSON-ready dicts, so `diff` and the bump rule never need to read data files.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import pandas as pd

from healthmate_features.datasets.dataset import HASH_SCHEME, ProcessedDataset, column_stats, data_hash, label_balance
from healthmate_features.datasets.sketches import sketch_frame
from healthmate_features.errors import DatasetVersionError
from healthmate_features.util import jsonable

FORMAT = "healthmate-dataset/1"
MANIFEST_FILE = "manifest.json"
PIPELINE_FILE = "pipeline.joblib"
#: Metadata keys the registry lifts to the top level of the manifest (the caller provides them).
LIFTED_KEYS = (
    "feature_service",
    "feature_refs",
    "entity_frame_hash",
    "feast_definitions_hash",
    "split_config",
    "preprocessing_config",
    "build_spec",
)
#: Build inputs whose change means new data rather than a correction (a minor bump).
MINOR_KEYS = (
    ("entity_frame_hash", "entity frame (new data)"),
    ("time_range", "time range"),
    ("feast_definitions_hash", "Feast definitions"),
)
BUMPS: tuple[str, ...] = ("major", "minor", "patch")
NO_CHANGE = "no change in data or definitions"  # the bump rule's reason when nothing changed
_RANK = {"patch": 0, "minor": 1, "major": 2}
VERSION_RE = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")
_DISTRIBUTIONS = (
    "feast",
    "healthmate-features",
    "pandas",
    "pyarrow",
    "numpy",
    "scikit-learn",
    "joblib",
)


def content_manifest(dataset: ProcessedDataset) -> dict[str, Any]:
    """Describe a dataset's content: hashes, schema, statistics, build inputs, environment.

    The registry adds `files`, then `finalize` adds the version fields. Raises
    DatasetVersionError when the metadata is not JSON-serializable or a lifted key is malformed."""
    metadata = to_jsonable(dataset.metadata, "metadata")
    _check_lifted(metadata)
    splits: dict[str, Any] = {}
    for split, value in dataset.frames():
        entry: dict[str, Any] = {
            "file": f"{split}.parquet",
            "rows": int(len(value)),
            "index": [
                {"name": to_jsonable(n, f"{split}.index.names"), "dtype": str(t)}
                for n, t in zip(value.index.names, _index_dtypes(value.index), strict=True)
            ],
        }
        if isinstance(value, pd.Series):
            entry.update(series_name=to_jsonable(value.name, f"{split}.name"), dtype=str(value.dtype))
        else:
            entry.update(
                columns=[{"name": c, "dtype": str(t)} for c, t in value.dtypes.items()],
                stats=column_stats(value),
            )
            if split.startswith("joined_"):
                entry["sketches"] = sketch_frame(value, sketched_columns(dataset, metadata))
        splits[split] = entry
    pipeline = dataset.pipeline
    return {
        "format": FORMAT,
        "data_hash": data_hash(dataset),
        "data_hash_scheme": HASH_SCHEME,
        "feature_names": list(dataset.feature_names),
        **{key: metadata.get(key) for key in LIFTED_KEYS},
        "time_range": metadata.get("time_range") or _time_range(dataset),
        "row_counts": {"train": int(len(dataset.X_train)), "test": int(len(dataset.X_test))},
        "label": {"name": splits["y_train"]["series_name"], "dtype": splits["y_train"]["dtype"]},
        "label_balance": {
            "train": label_balance(dataset.y_train),
            "test": label_balance(dataset.y_test),
        },
        "splits": splits,
        "pipeline": None
        if pipeline is None
        else {
            "file": PIPELINE_FILE,
            "serializer": "joblib",
            "class": f"{type(pipeline).__module__}.{type(pipeline).__qualname__}",
        },
        "environment": environment(),
        "metadata": metadata,
    }


def sketched_columns(dataset: ProcessedDataset, metadata: Mapping[str, Any]) -> list[str]:
    """The joined frames' raw features a manifest sketches: the feature refs' feature names when
    the metadata has them, else every joined column but the label."""
    refs = metadata.get("feature_refs")
    if isinstance(refs, list) and refs:
        return [str(ref).split(":", 1)[-1] for ref in refs]
    frame = dataset.joined_train
    label = dataset.y_train.name
    return [] if frame is None else [c for c in frame.columns if c != label]


def finalize(
    content: Mapping[str, Any],
    *,
    name: str,
    version: str,
    parent: str | None,
    bump: Mapping[str, Any],
    created_at: str,
) -> dict[str, Any]:
    """Add the version fields to a content manifest and seal it with its self-hash."""
    manifest = {
        **content,
        "name": name,
        "version": version,
        "parent_version": parent,
        "bump": dict(bump),
        "created_at": created_at,
    }
    manifest["manifest_sha256"] = self_hash(manifest)
    return manifest


def self_hash(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON without its own `manifest_sha256` field."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return ""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dumps(manifest: Mapping[str, Any]) -> str:
    """The manifest as stored: indented, sorted keys, strict JSON (no NaN)."""
    return json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


# --------------------------------------------------------------------------------------------
# Version numbers
# --------------------------------------------------------------------------------------------


def check_version(version: object) -> str:
    """Return `version` if it is a plain semantic version MAJOR.MINOR.PATCH, else raise."""
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise DatasetVersionError(
            f"invalid dataset version {version!r}: expected MAJOR.MINOR.PATCH such as '1.2.0' "
            "(digits only, no leading zeros, no 'v' prefix, no path)"
        )
    return version


def parse_version(version: str) -> tuple[int, int, int]:
    """Split a checked version string into its (major, minor, patch) integers."""
    major, minor, patch = (int(part) for part in check_version(version).split("."))
    return major, minor, patch


def next_version(current: str | None, bump: str) -> str:
    """Return the version after `current` for a bump kind; the first version is 1.0.0."""
    if current is None:
        return "1.0.0"
    major, minor, patch = parse_version(current)
    if bump == "major":
        return f"{major + 1}.0.0"
    if bump == "minor":
        return f"{major}.{minor + 1}.0"
    if bump == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise DatasetVersionError(f"invalid bump {bump!r}: use one of {', '.join(BUMPS)} or None")


# --------------------------------------------------------------------------------------------
# The bump rule
# --------------------------------------------------------------------------------------------


def bump_rule(previous: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Return (kind, reasons) for going from the `previous` to the `current` manifest.

    major: the feature service, feature refs (set or order), X's column names, order or dtypes,
    or the label's name or dtype differ. minor: otherwise, the entity-frame hash, time range or Feast
    definitions hash differ. patch: everything else (corrected data, preprocessing or split
    config, or no change at all)."""
    major: list[str] = []
    if previous.get("feature_service") != current.get("feature_service"):
        major.append(
            f"feature service changed: {previous.get('feature_service')!r} -> {current.get('feature_service')!r}"
        )
    major += _list_change("feature refs", previous.get("feature_refs"), current.get("feature_refs"))
    old_cols, new_cols = _columns(previous, "X_train"), _columns(current, "X_train")
    major += _list_change("columns", list(old_cols), list(new_cols))  # names and order
    changed = [
        f"{c} ({old_cols[c]} -> {new_cols[c]})" for c in old_cols if c in new_cols and old_cols[c] != new_cols[c]
    ]
    if changed:
        major.append(f"column dtypes changed: {', '.join(changed)}")
    if previous.get("label") != current.get("label"):
        major.append(f"label changed: {previous.get('label')} -> {current.get('label')}")
    if major:
        return "major", major
    minor = [f"{what} changed" for key, what in MINOR_KEYS if previous.get(key) != current.get(key)]
    if minor:
        return "minor", minor
    patch = []
    if previous.get("data_hash") != current.get("data_hash"):
        patch.append("data changed under the same definitions and entity frame")
    for key in ("preprocessing_config", "split_config"):
        if previous.get(key) != current.get(key):
            patch.append(f"{key.replace('_', ' ')} changed")
    return "patch", patch or [NO_CHANGE]


def unchanged(previous: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """True when the bump rule finds nothing at all changed from `previous` to `current`."""
    return bump_rule(previous, current) == ("patch", [NO_CHANGE])


def decide_bump(
    previous: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    requested: str | None,
) -> tuple[str, list[str]]:
    """Apply the bump rule, honouring an explicit request that is at least as large."""
    if previous is None:
        return "initial", ["first version"]
    kind, reasons = bump_rule(previous, current)
    if requested is None or requested == kind:
        return kind, reasons
    if _RANK[requested] < _RANK[kind]:
        raise DatasetVersionError(
            f"bump={requested!r} is too small for this change: the bump rule requires {kind!r} "
            f"({'; '.join(reasons)}); pass bump={kind!r} or bump=None"
        )
    return requested, [*reasons, f"bump={requested!r} requested (rule: {kind!r})"]


# --------------------------------------------------------------------------------------------
# Diff
# --------------------------------------------------------------------------------------------


def diff_manifests(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Compare two manifests: schema, features, rows, column statistics, label balance.

    `largest_shifts` ranks the statistic changes (see `largest_shifts`), so that a reader can
    start with the few that matter among thousands."""
    schema: dict[str, Any] = {}
    for split in ("X_train", "joined_train"):
        a, b = _columns(old, split), _columns(new, split)
        if not a and not b:
            continue
        schema[split] = {
            "added": [c for c in b if c not in a],
            "removed": [c for c in a if c not in b],
            "dtype_changed": {c: {"from": a[c], "to": b[c]} for c in a if c in b and a[c] != b[c]},
        }
    schema["label"] = {
        "from": old.get("label"),
        "to": new.get("label"),
        "changed": old.get("label") != new.get("label"),
    }
    refs_a, refs_b = old.get("feature_refs") or [], new.get("feature_refs") or []
    stats: dict[str, Any] = {}
    for split in ("X_train", "X_test", "joined_train", "joined_test"):
        sa = ((old.get("splits") or {}).get(split) or {}).get("stats") or {}
        sb = ((new.get("splits") or {}).get(split) or {}).get("stats") or {}
        common = {
            col: {
                stat: _change(sa[col].get(stat), sb[col].get(stat))
                for stat in ("mean", "std", "null_fraction")
                if stat in sa[col] or stat in sb[col]
            }
            for col in sa
            if col in sb
        }
        if common:
            stats[split] = common
    kind, reasons = bump_rule(old, new)
    return {
        "from": old.get("version"),
        "to": new.get("version"),
        "schema": schema,
        "features": {
            "feature_service": {
                "from": old.get("feature_service"),
                "to": new.get("feature_service"),
                "changed": old.get("feature_service") != new.get("feature_service"),
            },
            "added": [r for r in refs_b if r not in refs_a],
            "removed": [r for r in refs_a if r not in refs_b],
        },
        "rows": {
            side: _change((old.get("row_counts") or {}).get(side), (new.get("row_counts") or {}).get(side))
            for side in ("train", "test")
        },
        "stats": stats,
        "label_balance": {
            side: _balance_change(
                ((old.get("label_balance") or {}).get(side)), ((new.get("label_balance") or {}).get(side))
            )
            for side in ("train", "test")
        },
        "changed": {
            key: old.get(key) != new.get(key)
            for key in (
                "data_hash",
                "entity_frame_hash",
                "feast_definitions_hash",
                "time_range",
                "split_config",
                "preprocessing_config",
                "build_spec",
            )
        }
        | {"pipeline": _pipeline_sha(old) != _pipeline_sha(new)},
        "bump_rule": {"kind": kind, "reasons": reasons},
        "largest_shifts": largest_shifts(stats),
    }


def largest_shifts(stats: Mapping[str, Any], *, top: int = 5) -> list[dict[str, Any]]:
    """The `top` largest column-statistic changes of a diff's `stats`, largest first.

    Ranked by `shift`: a mean or std change in units of the older version's std (of its
    absolute mean when that std is 0, else 1), a null-fraction change as it is. Raw features
    (the joined splits) are ranked when the diff has them, the processed splits otherwise
    (after standard scaling every mean is 0). Unchanged statistics are left out."""
    raw = [split for split in ("joined_train", "joined_test") if split in stats]
    found = []
    for split in raw or [s for s in ("X_train", "X_test") if s in stats]:
        for column, changes in stats[split].items():
            std = (changes.get("std") or {}).get("from")
            mean = (changes.get("mean") or {}).get("from")
            scale = next((abs(x) for x in (std, mean) if isinstance(x, (int, float)) and x), 1.0)
            for stat, change in changes.items():
                delta = change.get("delta")
                if not delta:
                    continue
                shift = abs(delta) if stat == "null_fraction" else abs(delta) / scale
                found.append({"split": split, "column": column, "stat": stat, **change, "shift": shift})
    return sorted(found, key=lambda s: -s["shift"])[:top]


def _change(a: Any, b: Any) -> dict[str, Any]:
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    return {"from": a, "to": b, "delta": (b - a) if numeric else None}


def _balance_change(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> dict[str, Any]:
    if not a or not b or a.get("kind") != b.get("kind"):
        return {"from": a, "to": b}
    if a["kind"] == "classification":
        fa, fb = a.get("fractions") or {}, b.get("fractions") or {}
        classes = list(fa) + [c for c in fb if c not in fa]
        return {"kind": "classification", "fractions": {c: _change(fa.get(c, 0.0), fb.get(c, 0.0)) for c in classes}}
    return {"kind": a["kind"], **{s: _change(a.get(s), b.get(s)) for s in ("mean", "std")}}


def _index_dtypes(index: pd.Index) -> list[Any]:
    if isinstance(index, pd.MultiIndex):
        return [level.dtype for level in index.levels]
    return [index.dtype]


def _columns(manifest: Mapping[str, Any], split: str) -> dict[str, str]:
    entry = (manifest.get("splits") or {}).get(split) or {}
    return {c["name"]: c["dtype"] for c in entry.get("columns") or []}


def _list_change(what: str, old: Any, new: Any) -> list[str]:
    old, new = list(old or []), list(new or [])
    if old == new:
        return []
    added = [x for x in new if x not in old]
    removed = [x for x in old if x not in new]
    if not added and not removed:
        return [f"{what} reordered"]
    return [f"{what} changed (added {added}, removed {removed})"]


def _pipeline_sha(manifest: Mapping[str, Any]) -> Any:
    return ((manifest.get("files") or {}).get(PIPELINE_FILE) or {}).get("sha256")


# --------------------------------------------------------------------------------------------
# Inputs and environment
# --------------------------------------------------------------------------------------------


def to_jsonable(value: Any, where: str = "value") -> Any:
    """Convert metadata to plain JSON values (`util.jsonable`), or raise DatasetVersionError naming the key."""
    try:
        return jsonable.to_jsonable(value, where)
    except jsonable.NotJsonError as exc:
        raise DatasetVersionError(f"{exc}, which cannot be stored in the manifest; {exc.fix}") from exc


def _check_lifted(metadata: Mapping[str, Any]) -> None:
    for key in ("feature_service", "entity_frame_hash", "feast_definitions_hash"):
        if metadata.get(key) is not None and not isinstance(metadata[key], str):
            raise DatasetVersionError(f"metadata[{key!r}] must be a string, got {type(metadata[key]).__name__}")
    refs = metadata.get("feature_refs")
    if refs is not None and not (isinstance(refs, list) and all(isinstance(r, str) for r in refs)):
        raise DatasetVersionError(
            f"metadata['feature_refs'] must be a list of 'view:feature' strings, got {refs!r:.80}"
        )


def _time_range(dataset: ProcessedDataset) -> dict[str, Any] | None:
    """Min/max event_timestamp of the joined frames (overall and per split), when present."""
    train, test = dataset.joined_train, dataset.joined_test
    if train is None or test is None or not all("event_timestamp" in f for f in (train, test)):
        return None
    out = {}
    for key, stamps in (
        ("train", train["event_timestamp"]),
        ("test", test["event_timestamp"]),
        ("all", pd.concat([train["event_timestamp"], test["event_timestamp"]])),
    ):
        stamps = stamps.dropna()
        out[key] = {
            "start": to_jsonable(stamps.min()) if len(stamps) else None,
            "end": to_jsonable(stamps.max()) if len(stamps) else None,
        }
    return {**out.pop("all"), **out}


def environment() -> dict[str, Any]:
    """Package versions, the Python version and the git commit of this package's checkout."""
    env: dict[str, Any] = {"python": platform.python_version()}
    for dist in _DISTRIBUTIONS:
        try:
            env[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            env[dist] = None
    env["git_commit"], env["git_dirty"] = _git_state(Path(__file__).resolve().parent)
    return env


def _git_state(directory: Path) -> tuple[str | None, bool | None]:
    """(HEAD commit, has uncommitted changes) of the checkout holding `directory`, or Nones."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else bool(status))
