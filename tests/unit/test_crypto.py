"""Encryption at rest, the key layer (healthmate_features.crypto): master key, keyring, ciphers."""

from __future__ import annotations

import os
import stat

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.crypto import (
    parquet_dataset,
    parquet_key_id,
    read_parquet,
    read_sealed,
    seal,
    sealed_key_id,
    unseal,
    write_parquet,
    write_sealed,
)
from healthmate_features.errors import EncryptionKeyError

OTHER_MASTER = "B" * 43 + "="  # base64 of 32 bytes, not the repository's key


@pytest.fixture
def settings(tmp_path):
    (tmp_path / "feature_store.yaml").write_text("project: x\n")
    return Settings.from_env(tmp_path, profile="embedded")


def test_first_use_creates_a_private_master_key_outside_data_and_one_active_data_key(settings):
    keyring = backend_for(settings).keyring()
    key = keyring.active()
    assert settings.master_key_path.parent.name == ".healthmate"
    assert stat.S_IMODE(os.stat(settings.master_key_path).st_mode) == 0o600
    assert keyring.key_ids() == {key.key_id: "active"}
    assert key.key_id not in repr(settings) and str(key.secret) not in repr(key)


def test_sealed_bytes_round_trip_and_any_change_is_refused(settings):
    keyring = backend_for(settings).keyring()
    blob = seal(keyring.active(), b"72 bpm", aad=b"user:1")
    assert b"72 bpm" not in blob and sealed_key_id(blob) == keyring.active().key_id
    assert unseal(keyring, blob, what="the value", aad=b"user:1") == b"72 bpm"
    with pytest.raises(EncryptionKeyError, match="user 2's value does not decrypt under data key dk-"):
        unseal(keyring, blob, what="user 2's value", aad=b"user:2")  # moved to another user
    flipped = blob[:-1] + bytes((blob[-1] ^ 1,))
    with pytest.raises(EncryptionKeyError, match="altered"):
        unseal(keyring, flipped, what="the value", aad=b"user:1")
    with pytest.raises(EncryptionKeyError, match="not encrypted by this package"):
        unseal(keyring, b"72 bpm", what="the value")


def test_parquet_is_unreadable_without_the_key_and_readable_with_it(settings, tmp_path):
    keyring = backend_for(settings).keyring()
    path = tmp_path / "features.parquet"
    assert write_parquet(keyring, pa.table({"user_id": [1, 2], "note": ["asthma", "none"]}), path) == 2
    assert b"asthma" not in path.read_bytes()
    with pytest.raises(OSError, match="no decryption"):
        pq.read_table(path)
    with pytest.raises(duckdb.InvalidInputException, match="encrypted"):
        duckdb.sql(f"SELECT * FROM read_parquet('{path}')").fetchall()
    assert parquet_key_id(path) == keyring.active().key_id
    assert read_parquet(keyring, path).to_pydict() == {"user_id": [1, 2], "note": ["asthma", "none"]}
    dataset = parquet_dataset(keyring, path)  # noqa: F841 (scanned by name below)
    assert duckdb.sql("SELECT sum(user_id) FROM dataset").fetchone() == (3,)


def test_plain_parquet_has_no_key_id(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1]}), path)
    assert parquet_key_id(path) is None


def test_rotation_keeps_old_files_readable_and_names_keys(settings, tmp_path):
    keyring = backend_for(settings).keyring()
    old = tmp_path / "old.bin"
    write_sealed(keyring, old, b"before")
    first = keyring.active().key_id
    second = keyring.rotate().key_id
    assert keyring.key_ids() == {first: "rotating", second: "active"} and keyring.rotating() == [first]
    new = tmp_path / "new.bin"
    write_sealed(keyring, new, b"after")
    assert read_sealed(keyring, old) == b"before" and read_sealed(keyring, new) == b"after"
    assert keyring.finish_rotation() == [first]
    assert keyring.key_ids() == {first: "retired", second: "active"} and keyring.rotating() == []
    assert read_sealed(keyring, old) == b"before"  # retired keys still read stragglers


def test_a_wrong_master_key_names_the_file_and_both_key_ids(settings, tmp_path):
    path = tmp_path / "split.parquet"
    write_parquet(backend_for(settings).keyring(), pa.table({"x": [1]}), path)
    wrong = Settings.from_env(settings.repo_path, profile="embedded", master_key=OTHER_MASTER)
    with pytest.raises(EncryptionKeyError) as caught:
        read_parquet(backend_for(wrong).keyring(), path)
    message = str(caught.value)
    assert str(path) in message and parquet_key_id(path) in message and "master key local:" in message


def test_a_lost_master_key_file_is_an_error_not_a_new_key(settings, tmp_path):
    path = tmp_path / "x.bin"
    write_sealed(backend_for(settings).keyring(), path, b"secret")
    settings.master_key_path.rename(tmp_path / "elsewhere.key")
    fresh = Settings.from_env(settings.repo_path, profile="embedded", master_key_file=str(tmp_path / "none.key"))
    with pytest.raises(EncryptionKeyError, match="no master key: .*none.key does not exist"):
        read_sealed(backend_for(fresh).keyring(), path)
    assert not (tmp_path / "none.key").exists()


def test_a_malformed_master_key_is_refused(settings):
    bad = Settings.from_env(settings.repo_path, profile="embedded", master_key="not base64!")
    with pytest.raises(EncryptionKeyError, match="HM_MASTER_KEY is not base64"):
        backend_for(bad).keyring().active()
    short = Settings.from_env(settings.repo_path, profile="embedded", master_key="QUJD")
    with pytest.raises(EncryptionKeyError, match="has 3 bytes; it must be 32"):
        backend_for(short).keyring().active()
