"""Parquet encrypted through the keyring's KMS client (crypto.spark_kms), the pyarrow side: the
format Spark reads and writes (tests/integration/test_spark_parquet.py checks Spark itself)."""

from __future__ import annotations

import base64

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.crypto import parquet_key_id, write_parquet
from healthmate_features.crypto.spark_kms import (
    KeyringKmsClient,
    kms_parquet_key_id,
    read_kms_parquet,
    write_kms_parquet,
)
from healthmate_features.errors import EncryptionKeyError

TABLE = pa.table({"user_id": [1, 2, 3], "note": ["asthma", None, "none"], "steps": [10.5, 0.0, None]})


def _keyring(root):
    root.mkdir()
    (root / "feature_store.yaml").write_text("project: x\n")
    return backend_for(Settings.from_env(root, profile="embedded")).keyring()


@pytest.fixture
def keyring(tmp_path):
    return _keyring(tmp_path / "repo")


def test_a_kms_file_is_unreadable_without_the_keyring_and_names_its_key(keyring, tmp_path):
    path = tmp_path / "f.parquet"
    assert write_kms_parquet(keyring, TABLE, path) == 3
    data = path.read_bytes()
    assert data.endswith(b"PARE") and b"asthma" not in data and keyring.active().secret not in data
    with pytest.raises(OSError, match="no decryption"):
        pq.read_table(path)
    assert kms_parquet_key_id(path) == keyring.active().key_id
    assert read_kms_parquet(keyring, path).equals(TABLE)
    assert read_kms_parquet(keyring, path, columns=["note"]).column("note").to_pylist() == ["asthma", None, "none"]


def test_files_under_a_rotated_key_stay_readable(keyring, tmp_path):
    old, new = tmp_path / "old.parquet", tmp_path / "new.parquet"
    write_kms_parquet(keyring, TABLE, old)
    first = keyring.active().key_id
    keyring.rotate()
    write_kms_parquet(keyring, TABLE.slice(0, 1), new)
    assert kms_parquet_key_id(old) == first != kms_parquet_key_id(new) == keyring.active().key_id
    assert read_kms_parquet(keyring, old).equals(TABLE)
    assert read_kms_parquet(keyring, new).num_rows == 1


def test_another_deployment_cannot_read_and_the_two_formats_are_told_apart(keyring, tmp_path):
    path, direct = tmp_path / "f.parquet", tmp_path / "direct.parquet"
    write_kms_parquet(keyring, TABLE, path)
    with pytest.raises(EncryptionKeyError, match=f"data key {keyring.active().key_id}, which this deployment"):
        read_kms_parquet(_keyring(tmp_path / "other"), path)
    write_parquet(keyring, TABLE, direct)  # a direct data key, no key metadata: pyarrow-only
    assert parquet_key_id(direct) == keyring.active().key_id and kms_parquet_key_id(direct) is None
    with pytest.raises(EncryptionKeyError, match="not Parquet encrypted through the keyring's KMS client"):
        read_kms_parquet(keyring, direct)


def test_wrapped_keys_are_aes_gcm_under_the_master_key_with_its_id_as_aad(keyring):
    """The format of parquet-mr's InMemoryKMS and of java/KeyListKmsClient.java:
    base64(nonce | ciphertext | tag), the master key id as associated data."""
    client, key = KeyringKmsClient(keyring), keyring.active()
    wrapped = base64.b64decode(client.wrap_key(b"k" * 32, key.key_id))
    assert len(wrapped) == 12 + 32 + 16
    assert AESGCM(key.secret).decrypt(wrapped[:12], wrapped[12:], key.key_id.encode()) == b"k" * 32
    java_style = base64.b64encode(b"n" * 12 + AESGCM(key.secret).encrypt(b"n" * 12, b"j" * 16, key.key_id.encode()))
    assert client.unwrap_key(java_style.decode(), key.key_id) == b"j" * 16
    tampered = base64.b64encode(wrapped[:-1] + bytes((wrapped[-1] ^ 1,))).decode()
    with pytest.raises(EncryptionKeyError, match="does not unwrap under data key"):
        client.unwrap_key(tampered, key.key_id)


def test_spark_settings_name_the_key_set_so_parquet_mr_caches_no_stale_key_list(keyring, tmp_path):
    """parquet-mr caches KMS clients per access token for the JVM's lifetime (10 min): the token
    changes with the key set (another keyring, a rotation), and is no secret."""
    from healthmate_features.crypto.spark_kms import spark_encryption_conf

    token = "spark.hadoop.parquet.encryption.key.access.token"
    first = spark_encryption_conf(keyring, jar="k.jar")
    assert spark_encryption_conf(keyring, jar="k.jar")[token] == first[token]
    assert spark_encryption_conf(_keyring(tmp_path / "other"), jar="k.jar")[token] != first[token]
    keyring.rotate()
    rotated = spark_encryption_conf(keyring, jar="k.jar")
    assert rotated[token] != first[token]
    secrets = [base64.b64encode(keyring.get(k, what="test").secret).decode() for k in keyring.key_ids()]
    assert not any(secret in rotated[token] for secret in secrets)
