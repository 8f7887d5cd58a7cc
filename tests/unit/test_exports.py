"""Pseudonymized exports (governance.exports): stable per key, unlinkable across keys, no raw ids left."""

from __future__ import annotations

import io
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from healthmate_features.cli import main
from healthmate_features.config import Settings
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.errors import ConfigError
from healthmate_features.governance.exports import (
    DIRECT_IDENTIFIERS,
    export_key,
    pseudonym,
    pseudonymize_dataset,
    pseudonymize_parquet,
)

KEY_A = b"a" * 32
KEY_B = b"b" * 32


def _with_identifiers(make_dataset):
    dataset = make_dataset(rows=40)
    for frame in (dataset.joined_train, dataset.joined_test):
        frame["session_id"] = [f"s-{i}" for i in range(len(frame))]
        frame["signup_epoch_s"] = 1_700_000_000
    return dataset


def test_pseudonyms_are_stable_per_key_and_differ_across_keys(make_dataset):
    dataset = _with_identifiers(make_dataset)
    one = pseudonymize_dataset(dataset, KEY_A)
    again = pseudonymize_dataset(dataset, KEY_A)
    other = pseudonymize_dataset(dataset, KEY_B)
    pd.testing.assert_frame_equal(one.joined_train, again.joined_train)
    ids = dataset.joined_train["user_id"].tolist()
    a = one.joined_train["user_id"].tolist()
    b = other.joined_train["user_id"].tolist()
    assert all(p.startswith("p_") and len(p) == 18 for p in a)
    # the same person -> the same pseudonym within a key; different people -> different pseudonyms
    assert {(i, p) for i, p in zip(ids, a, strict=True)} == {(i, pseudonym(KEY_A, i)) for i in ids}
    assert len(set(a)) == len(set(ids))
    assert not set(a) & set(b)  # another key: nothing in common
    assert pseudonym(KEY_A, 5) == pseudonym(KEY_A, 5.0) == pseudonym(KEY_A, "5") != pseudonym(KEY_B, 5)


def test_no_raw_user_id_or_direct_identifier_is_left(make_dataset):
    dataset = _with_identifiers(make_dataset)
    out = pseudonymize_dataset(dataset, KEY_A)
    raw_ids = set(dataset.joined_train["user_id"]) | set(dataset.joined_test["user_id"])
    for split, value in out.frames():
        if isinstance(value, pd.DataFrame):
            assert not set(value.columns) & set(DIRECT_IDENTIFIERS), split
            cells = set(value.astype(str).to_numpy().ravel())
            assert not cells & {str(i) for i in raw_ids}, split
    assert out.pipeline is None and out.metadata["pseudonymized"]["dropped"] == ["session_id", "signup_epoch_s"]
    assert KEY_A.decode() not in json.dumps(out.metadata, default=str)
    # other values untouched, row for row
    pd.testing.assert_frame_equal(out.X_train, dataset.X_train)
    pd.testing.assert_series_equal(out.y_test, dataset.y_test)


def test_an_index_level_named_user_id_is_pseudonymized_too():
    frame = pd.DataFrame(
        {"x": [1.0, 2.0]},
        index=pd.MultiIndex.from_tuples([(7, "2024-01-01"), (8, "2024-01-02")], names=["user_id", "t"]),
    )
    data = io.BytesIO()
    frame.to_parquet(data)
    back = pq.read_table(io.BytesIO(pseudonymize_parquet(data.getvalue(), KEY_A))).to_pandas()
    assert list(back.index.get_level_values("user_id")) == [pseudonym(KEY_A, 7), pseudonym(KEY_A, 8)]
    assert back["x"].tolist() == [1.0, 2.0]


def test_without_a_key_the_error_says_how_to_set_one(tmp_path):
    settings = Settings(repo_path=tmp_path)
    with pytest.raises(ConfigError, match="HM_EXPORT_KEY.*--key-file"):
        export_key(settings)
    with pytest.raises(ConfigError, match="holds 5 characters"):
        export_key(Settings(repo_path=tmp_path, export_key="short"))
    (tmp_path / "k").write_text("k" * 40 + "\n")
    assert export_key(settings, key_file=tmp_path / "k") == b"k" * 40
    assert export_key(Settings(repo_path=tmp_path, export_key="e" * 20)) == b"e" * 20


def test_cli_load_pseudonymize_writes_pseudonyms_and_never_the_key(tmp_path, make_dataset, monkeypatch):
    (tmp_path / "feature_store.yaml").write_text("project: t\n")
    DatasetRegistry(tmp_path / "data" / "datasets").save(make_dataset(), "risk")
    monkeypatch.setenv("HM_REPO_PATH", str(tmp_path))
    monkeypatch.delenv("HM_EXPORT_KEY", raising=False)
    runner = CliRunner()
    refused = runner.invoke(main, ["datasets", "load", "risk", "--pseudonymize"])
    assert refused.exit_code == 1 and "HM_EXPORT_KEY" in refused.output and "Traceback" not in refused.output
    key = "the-export-key-" + "x" * 20
    (tmp_path / "export.key").write_text(key)
    out = tmp_path / "export"
    done = runner.invoke(
        main,
        [
            "datasets",
            "load",
            "risk",
            "--pseudonymize",
            "--key-file",
            str(tmp_path / "export.key"),
            "--out",
            str(out),
            "--json",
        ],
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["pseudonymized"]["key_id"]
    joined = pd.read_parquet(out / "joined_train.parquet")
    assert joined["user_id"].str.startswith("p_").all()
    for path in out.iterdir():
        assert key.encode() not in path.read_bytes()
    usage = runner.invoke(main, ["datasets", "load", "risk", "--key-file", str(tmp_path / "export.key")])
    assert usage.exit_code == 2 and "--pseudonymize" in usage.output
