"""Encryption at rest: master keys, the data-key keyring (envelope scheme), and the ciphers.

    master    MasterKey (interface), LocalMasterKey, master_key(settings): what wraps data keys
    keyring   Keyring, DataKey, KeyStore: the data keys, unwrapped on use, one active at a time
    ciphers   seal/unseal bytes (AES-256-GCM envelope), Parquet modular encryption (pyarrow)

The keyring's storage is the SQL store (backends.keystore); `Backend.keyring()` builds one.
"""

from healthmate_features.crypto.ciphers import (
    content_sha256,
    duckdb_scan,
    file_key_id,
    open_parquet,
    parquet_dataset,
    parquet_decryption,
    parquet_encryption,
    parquet_footer_is_plain,
    parquet_key,
    parquet_key_id,
    read_parquet,
    read_sealed,
    reencrypt_file,
    seal,
    seal_many,
    sealed_key_id,
    unseal,
    unseal_many,
    write_parquet,
    write_sealed,
)
from healthmate_features.crypto.keyring import DataKey, Keyring, KeyStore, WrappedKey
from healthmate_features.crypto.master import LocalMasterKey, MasterKey, master_key

__all__ = [
    "content_sha256",
    "duckdb_scan",
    "file_key_id",
    "open_parquet",
    "reencrypt_file",
    "DataKey",
    "KeyStore",
    "Keyring",
    "LocalMasterKey",
    "MasterKey",
    "WrappedKey",
    "master_key",
    "parquet_dataset",
    "parquet_decryption",
    "parquet_encryption",
    "parquet_footer_is_plain",
    "parquet_key",
    "parquet_key_id",
    "read_parquet",
    "read_sealed",
    "seal",
    "seal_many",
    "sealed_key_id",
    "unseal",
    "unseal_many",
    "write_parquet",
    "write_sealed",
]
