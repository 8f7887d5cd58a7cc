"""The dataset registry: roundtrip, bump rule, immutability, concurrency, tampering, diff."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from healthmate_features.datasets import manifest as mf
from healthmate_features.datasets.dataset import ProcessedDataset
from healthmate_features.datasets.registry import DatasetRegistry, data_hash
from healthmate_features.errors import DatasetNotFoundError, DatasetVersionError

POSIX = os.name == "posix"


@pytest.fixture
def registry(tmp_path):
    return DatasetRegistry(tmp_path / "datasets")


def writable(path: Path) -> Path:
    """Undo the read-only bits so a test can tamper with a published file."""
    path.parent.chmod(0o755)
    if path.exists():
        path.chmod(0o644)
    return path


def version_dir(registry: DatasetRegistry, name: str, version: str) -> Path:
    return Path(registry.root) / name / version


# ------------------------------------------------------------------ roundtrip ----------


def test_save_load_roundtrip_keeps_values_dtypes_names_and_pipeline(registry, make_dataset):
    dataset = make_dataset()
    assert registry.save(dataset, "risk") == "1.0.0"
    loaded = registry.load("risk")
    for split, value in dataset.frames():
        check = pd.testing.assert_series_equal if isinstance(value, pd.Series) else pd.testing.assert_frame_equal
        check(getattr(loaded, split), value)
    assert loaded.joined_train["event_timestamp"].dtype == "datetime64[s, UTC]"
    assert loaded.feature_names == ["a", "b", "c"]
    assert loaded.ref == "risk@1.0.0"
    new_rows = dataset.joined_test[["a", "b", "c"]] * 2
    pd.testing.assert_frame_equal(loaded.pipeline.transform(new_rows), dataset.pipeline.transform(new_rows))
    assert data_hash(loaded) == data_hash(dataset) == registry.show("risk")["data_hash"]
    assert loaded.metadata["leakage_report"]["embargo_days"] == 30  # JSON form of the metadata
    assert isinstance(loaded.metadata["split_config"]["cutoff"], str)


def test_roundtrip_of_every_dtype(registry, rich_frame):
    X = rich_frame()
    X.index = pd.DatetimeIndex(["2024-01-01", "2024-01-02", "2024-01-03"], name="day").as_unit("s")
    y = pd.Series(pd.Categorical(["lo", "hi", "lo"]), index=X.index, name=None)
    dataset = ProcessedDataset(X, X, y, y, list(X.columns))
    registry.save(dataset, "rich")
    loaded = registry.load("rich")
    pd.testing.assert_frame_equal(loaded.X_train, X)
    pd.testing.assert_series_equal(loaded.y_test, y)
    assert loaded.pipeline is None and data_hash(loaded) == data_hash(dataset)


def test_manifest_records_what_a_rebuild_needs(registry, make_dataset):
    registry.save(make_dataset(), "risk")
    m = registry.show("risk", "1.0.0")
    assert m["name"] == "risk" and m["version"] == "1.0.0" and m["parent_version"] is None
    assert m["feature_service"] == "health_risk_v1"
    assert m["feature_refs"] == ["health_daily_fv:a", "health_daily_fv:b", "health_daily_fv:c"]
    assert m["entity_frame_hash"] == "entity-1" and m["feast_definitions_hash"] == "defs-1"
    assert m["build_spec"] == {"config": {"name": "demo"}, "entity_source": "labels.parquet"}
    assert m["row_counts"] == {"train": 30, "test": 10}
    assert m["time_range"]["start"] == "2024-01-01T00:00:00+00:00"
    assert m["time_range"]["train"]["end"] < m["time_range"]["test"]["start"]
    assert m["label_balance"]["train"]["kind"] == "classification"
    assert m["environment"]["feast"].startswith("0.67")
    assert m["created_at"].endswith("+00:00")
    assert set(m["files"]) == {
        f"{s}.parquet" for s in ("X_train", "X_test", "y_train", "y_test", "joined_train", "joined_test")
    } | {"pipeline.joblib"}
    assert m["manifest_sha256"] == mf.self_hash(m)


def test_listing(registry, make_dataset):
    assert registry.versions("risk") == [] and registry.names() == []
    registry.save(make_dataset(), "risk")
    registry.save(make_dataset(), "other")
    assert registry.names() == ["other", "risk"]
    assert [(r["name"], r["version"]) for r in registry.list()] == [("other", "1.0.0"), ("risk", "1.0.0")]
    assert registry.list("risk")[0]["rows"] == {"train": 30, "test": 10}
    with pytest.raises(DatasetVersionError, match="has no versions"):
        registry.latest("missing")
    with pytest.raises(DatasetVersionError, match=r"no version 9.9.9 .*versions: 1.0.0"):
        registry.show("risk", "9.9.9")


def test_file_uri_root_and_read_only_filesystems(tmp_path, make_dataset):
    by_uri = DatasetRegistry(f"file://{tmp_path}/uri-root")
    assert by_uri.save(make_dataset(), "risk") == "1.0.0"
    assert by_uri.verify("risk", "1.0.0").ok
    sub = DatasetRegistry("uri-root", filesystem=pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()))
    assert data_hash(sub.load("risk")) == data_hash(make_dataset())
    with pytest.raises(DatasetVersionError, match="atomic rename"):
        sub.save(make_dataset(), "risk")


# ------------------------------------------------------------------ bump rule ----------


def test_bump_rule_chooses_major_minor_patch(registry, make_dataset):
    assert registry.save(make_dataset(), "risk") == "1.0.0"
    assert registry.save(make_dataset(), "risk") == "1.0.1"  # same definitions, same data
    assert registry.save(make_dataset(preprocessing_config={"scaling": "robust"}), "risk") == "1.0.2"
    assert registry.save(make_dataset(seed=1), "risk") == "1.0.3"  # corrected data
    assert registry.save(make_dataset(entity_frame_hash="entity-2"), "risk") == "1.1.0"
    assert registry.save(make_dataset(entity_frame_hash="entity-2", rows=60), "risk") == "1.2.0"  # time range
    assert (
        registry.save(make_dataset(rows=60, feast_definitions_hash="defs-2", entity_frame_hash="entity-2"), "risk")
        == "1.3.0"
    )
    wider = make_dataset(
        rows=60, columns=("a", "b", "c", "d"), feast_definitions_hash="defs-2", entity_frame_hash="entity-2"
    )
    assert registry.save(wider, "risk") == "2.0.0"
    m = registry.show("risk")
    assert m["bump"]["kind"] == "major" and m["parent_version"] == "1.3.0"
    assert any("added ['d']" in reason for reason in m["bump"]["reasons"])
    assert registry.save(make_dataset(feature_service="health_risk_v2"), "risk") == "3.0.0"
    reordered = make_dataset(feature_service="health_risk_v2")
    for split in ("X_train", "X_test"):
        setattr(reordered, split, getattr(reordered, split)[["c", "b", "a"]])
    reordered.feature_names = ["c", "b", "a"]
    assert registry.save(reordered, "risk") == "4.0.0"
    assert registry.show("risk")["bump"]["reasons"] == ["columns reordered"]
    retyped = make_dataset(feature_service="health_risk_v2")
    for split in ("X_train", "X_test"):
        setattr(retyped, split, getattr(retyped, split).astype("float32"))
    assert registry.save(retyped, "risk") == "5.0.0"
    assert (
        "column dtypes changed: c (float64 -> float32), b (float64 -> float32), a (float64 -> float32)"
        in registry.show("risk")["bump"]["reasons"]
    )


def test_save_if_changed_reuses_the_latest_version_only_when_nothing_changed(registry, make_dataset):
    assert registry.save_if_changed(make_dataset(), "risk") == ("1.0.0", True)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (Path(registry.root) / "risk").rglob("*"))
    assert registry.save_if_changed(make_dataset(), "risk") == ("1.0.0", False)  # same data and definitions
    after = sorted((p.name, p.stat().st_mtime_ns) for p in (Path(registry.root) / "risk").rglob("*"))
    assert after == before  # nothing written, no temporary directory left
    assert registry.save_if_changed(make_dataset(seed=1), "risk") == ("1.0.1", True)  # corrected data
    assert registry.save_if_changed(make_dataset(seed=1, split_config={"test_size": 0.3}), "risk") == ("1.0.2", True)
    assert registry.save_if_changed(make_dataset(seed=1, feast_definitions_hash="defs-2"), "risk") == ("1.1.0", True)
    assert registry.save_if_changed(make_dataset(seed=1, feast_definitions_hash="defs-2"), "risk") == ("1.1.0", False)
    again = make_dataset(seed=1, feast_definitions_hash="defs-2")
    assert registry.save(again, "risk") == "1.1.1"  # the registry's own save: a deliberate re-save


def test_explicit_bump_may_exceed_but_not_undercut_the_rule(registry, make_dataset):
    registry.save(make_dataset(), "risk")
    assert registry.save(make_dataset(), "risk", bump="minor") == "1.1.0"
    assert registry.save(make_dataset(), "risk", bump="major") == "2.0.0"
    with pytest.raises(DatasetVersionError, match="too small.*requires 'major'"):
        registry.save(make_dataset(columns=("a", "b")), "risk", bump="patch")
    with pytest.raises(DatasetVersionError, match="invalid bump"):
        registry.save(make_dataset(), "risk", bump="huge")
    assert registry.versions("risk") == ["1.0.0", "1.1.0", "2.0.0"]
    assert not list((Path(registry.root) / "risk").glob(".tmp-*"))


def test_versions_sort_semantically(registry, make_dataset):
    registry.save(make_dataset(), "risk")
    for _ in range(10):
        registry.save(make_dataset(), "risk", bump="minor")
    assert registry.versions("risk")[-3:] == ["1.8.0", "1.9.0", "1.10.0"]
    assert registry.latest("risk") == "1.10.0"


# ------------------------------------------------------------------ immutability -------


@pytest.mark.skipif(not POSIX, reason="POSIX permission bits")
def test_published_versions_are_read_only_and_never_touched_again(registry, make_dataset):
    registry.save(make_dataset(), "risk")
    folder = version_dir(registry, "risk", "1.0.0")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o555
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o444 for f in folder.iterdir())
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    registry.save(make_dataset(seed=3), "risk")
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before


class StaleRegistry(DatasetRegistry):
    """Sees the version list as it was before another writer published: forces a collision."""

    stale_once = True

    def versions(self, name):
        found = super().versions(name)
        if self.stale_once and found:
            self.stale_once = False
            return found[:-1]
        return found


def test_a_colliding_save_takes_the_next_version_and_keeps_the_old_one(registry, make_dataset):
    registry.save(make_dataset(), "risk")
    registry.save(make_dataset(), "risk")
    folder = version_dir(registry, "risk", "1.0.1")
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    stale = StaleRegistry(registry.root)
    assert stale.save(make_dataset(seed=5), "risk") == "1.0.2"  # first tried 1.0.1, collided
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before
    assert stale.show("risk", "1.0.2")["parent_version"] == "1.0.1"


def test_unserializable_metadata_writes_nothing(registry, make_dataset):
    with pytest.raises(DatasetVersionError, match=r"metadata\['model'\] is a object"):
        registry.save(make_dataset(model=object()), "risk")
    assert not (Path(registry.root) / "risk").exists()


# ------------------------------------------------------------------ concurrency --------


def test_concurrent_thread_saves_get_distinct_complete_versions(registry, make_dataset):
    dataset = make_dataset()
    versions, errors, stop = [], [], threading.Event()

    def save():
        try:
            versions.append(registry.save(dataset, "risk"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read():  # a reader never sees a half-written version, nor trips over temporary ones
        while not stop.is_set():
            try:
                for version in registry.versions("risk"):
                    registry.show("risk", version)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=save) for _ in range(8)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reader.join()
    assert not errors
    assert sorted(versions) == [f"1.0.{i}" for i in range(8)]
    assert all(registry.verify("risk", v).ok for v in versions)
    assert not list((Path(registry.root) / "risk").glob(".tmp-*"))


# ------------------------------------------------------------------ tampering ----------


def test_verify_names_a_modified_parquet_file(registry, make_dataset):
    registry.save(make_dataset(), "risk")
    target = writable(version_dir(registry, "risk", "1.0.0") / "X_train.parquet")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    report = registry.verify("risk", "1.0.0")
    assert not report.ok
    assert any(p.startswith("X_train.parquet: SHA-256 mismatch") for p in report.problems)
    with pytest.raises(DatasetVersionError, match="X_train.parquet"):
        registry.load("risk", "1.0.0")


def test_read_split_returns_the_stored_bytes_checked_against_the_manifest(registry, make_dataset):
    registry.save(make_dataset(), "risk")
    path = version_dir(registry, "risk", "1.0.0") / "X_test.parquet"
    assert registry.read_split("risk", None, "X_test") == path.read_bytes()
    with pytest.raises(DatasetNotFoundError, match="no version 9.9.9"):
        registry.read_split("risk", "9.9.9", "X_test")
    with pytest.raises(DatasetVersionError, match="unknown split 'pipeline'"):
        registry.read_split("risk", "1.0.0", "pipeline")
    target = writable(path)
    target.write_bytes(target.read_bytes()[:-1] + b"x")
    with pytest.raises(DatasetVersionError, match="X_test.parquet does not match its SHA-256"):
        registry.read_split("risk", "1.0.0", "X_test")


def test_verify_names_a_missing_file_and_an_unexpected_one(registry, make_dataset):
    registry.save(make_dataset(), "risk")
    folder = version_dir(registry, "risk", "1.0.0")
    writable(folder / "y_test.parquet").unlink()
    (folder / "notes.txt").write_text("hello")
    problems = registry.verify("risk", "1.0.0").problems
    assert "y_test.parquet: missing (listed in the manifest)" in problems
    assert "notes.txt: not listed in the manifest (unexpected file)" in problems
    with pytest.raises(DatasetVersionError, match="y_test.parquet: missing"):
        registry.load("risk")


def test_verify_catches_an_edited_manifest(registry, make_dataset):
    registry.save(make_dataset(), "risk")
    path = writable(version_dir(registry, "risk", "1.0.0") / "manifest.json")
    manifest = json.loads(path.read_text())
    manifest["feature_service"] = "something_else"
    path.write_text(json.dumps(manifest))
    assert registry.verify("risk", "1.0.0").problems == [
        "manifest.json: its self-hash does not match: the manifest was edited"
    ]
    path.write_text("{not json")
    assert "not valid JSON" in registry.verify("risk", "1.0.0").problems[0]
    path.unlink()
    assert "no manifest.json" in registry.verify("risk", "1.0.0").problems[0]


def test_verify_catches_changed_data_even_with_a_consistent_forged_manifest(registry, make_dataset):
    registry.save(make_dataset(), "risk")
    folder = version_dir(registry, "risk", "1.0.0")
    y = pq.read_table(folder / "y_train.parquet").to_pandas()
    y.iloc[0, 0] = 1 - y.iloc[0, 0]
    target = writable(folder / "y_train.parquet")
    pq.write_table(pa.Table.from_pandas(y), target)
    path = writable(folder / "manifest.json")
    manifest = json.loads(path.read_text())
    manifest["files"]["y_train.parquet"]["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    manifest["manifest_sha256"] = mf.self_hash(manifest)
    path.write_text(json.dumps(manifest))
    problems = registry.verify("risk", "1.0.0").problems
    assert len(problems) == 1 and problems[0].startswith("data hash mismatch")


def test_a_manifest_cannot_point_outside_its_version(registry, tmp_path, make_dataset):
    registry.save(make_dataset(), "risk")
    path = writable(version_dir(registry, "risk", "1.0.0") / "manifest.json")
    manifest = json.loads(path.read_text())
    manifest["files"]["../../../secret"] = {"sha256": "0" * 64}
    manifest["manifest_sha256"] = mf.self_hash(manifest)
    path.write_text(json.dumps(manifest))
    assert registry.verify("risk", "1.0.0").problems == [
        "manifest.json: lists '../../../secret', which is not a dataset file"
    ]


class Tripwire:
    """Unpickling this touches a file: stands in for a malicious pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_verify_and_data_only_loads_never_unpickle(registry, tmp_path, make_dataset):
    marker = tmp_path / "unpickled"
    dataset = make_dataset()
    dataset.pipeline = Tripwire(marker)
    registry.save(dataset, "risk")
    assert registry.verify("risk").ok and not marker.exists()
    assert registry.load("risk", load_pipeline=False).pipeline is None and not marker.exists()
    registry.load("risk")
    assert marker.exists()


# ------------------------------------------------------------------ names, diff --------


@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", "", ".", "..", ".tmp-1", "a\\b", "x\n", "a" * 129, None])
def test_path_like_names_are_refused(registry, name, make_dataset):
    for call in (
        lambda: registry.save(make_dataset(), name),
        lambda: registry.versions(name),
        lambda: registry.show(name),
        lambda: registry.load(name),
    ):
        with pytest.raises(DatasetVersionError, match="invalid dataset name"):
            call()


@pytest.mark.parametrize(
    "version", ["../1.0.0", "1.0", "01.0.0", "1.0.0/..", "/1.0.0", "", "v1.0.0", "1.0.0-rc1", "1.0.0\n", "..", 1]
)
def test_path_like_versions_are_refused(registry, version, make_dataset):
    registry.save(make_dataset(), "risk")
    for call in (
        lambda: registry.show("risk", version),
        lambda: registry.load("risk", version),
        lambda: registry.verify("risk", version),
        lambda: registry.diff("risk", "1.0.0", version),
    ):
        with pytest.raises(DatasetVersionError, match="invalid dataset version"):
            call()


def test_diff_reports_schema_rows_stats_and_label_changes(registry, make_dataset):
    registry.save(make_dataset(), "risk")
    registry.save(make_dataset(seed=1, rows=80, columns=("a", "b", "d")), "risk")
    d = registry.diff("risk", "1.0.0", "2.0.0")
    assert d["schema"]["X_train"] == {"added": ["d"], "removed": ["c"], "dtype_changed": {}}
    assert d["schema"]["joined_train"]["added"] == ["d"]
    assert d["features"]["added"] == ["health_daily_fv:d"] and d["features"]["removed"] == ["health_daily_fv:c"]
    assert d["rows"]["train"] == {"from": 30, "to": 60, "delta": 30}
    a_mean = d["stats"]["joined_train"]["a"]["mean"]
    assert a_mean["delta"] == pytest.approx(a_mean["to"] - a_mean["from"]) and a_mean["delta"] != 0
    assert "c" not in d["stats"]["joined_train"]
    assert set(d["label_balance"]["train"]["fractions"]) == {"0", "1"}
    assert d["changed"]["data_hash"] and not d["changed"]["entity_frame_hash"]
    assert d["bump_rule"]["kind"] == "major"
    same = registry.diff("risk", "1.0.0", "1.0.0")
    assert same["bump_rule"]["reasons"] == ["no change in data or definitions"]
    assert not any(same["changed"].values())


def test_next_version_and_metadata_conversion(make_dataset):
    from healthmate_features.datasets.registry import next_version

    assert next_version(None, "patch") == "1.0.0"
    assert [next_version("1.9.3", b) for b in ("major", "minor", "patch")] == ["2.0.0", "1.10.0", "1.9.4"]
    converted = mf.to_jsonable(
        {
            "n": np.int64(3),
            "x": np.float32(0.5),
            "nan": float("nan"),
            "when": pd.Timestamp("2024-01-01", tz="UTC"),
            "gap": pd.Timedelta(days=30),
            "path": Path("/data/x.parquet"),
            "tags": {"b", "a"},
            "arr": np.arange(2),
            "flag": np.bool_(True),
            "nat": pd.NaT,
        }
    )
    assert converted == {
        "n": 3,
        "x": 0.5,
        "nan": None,
        "when": "2024-01-01T00:00:00+00:00",
        "gap": "P30DT0H0M0S",
        "path": "/data/x.parquet",
        "tags": ["a", "b"],
        "arr": [0, 1],
        "flag": True,
        "nat": None,
    }
    json.dumps(converted, allow_nan=False)
    with pytest.raises(DatasetVersionError, match=r"metadata\['feature_refs'\] must be a list"):
        DatasetRegistry("/nonexistent").save(make_dataset(feature_refs="a,b"), "risk")
