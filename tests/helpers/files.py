"""Reading the package's own files in tests: they are encrypted at rest (README "Security and compliance")."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.crypto import parquet_dataset, read_sealed


def read_frame(settings: Settings, path: str | Path, *, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet file the package wrote (encrypted, sealed in a dataset version, or plaintext from
    before), decrypted with the repo's keyring."""
    return parquet_dataset(backend_for(settings).keyring, path).to_table(columns=columns).to_pandas()


def read_csv(settings: Settings, path: str | Path, **options) -> pd.DataFrame:
    """A CSV file the package wrote sealed (a rejects file), decrypted with the repo's keyring."""
    import io

    return pd.read_csv(io.BytesIO(read_sealed(backend_for(settings).keyring(), path)), **options)


def read_any_csv(settings: Settings, path: str | Path, **options) -> pd.DataFrame:
    """A CSV file as pandas reads it: sealed (the package's rejects files) or plaintext (a user's raw input)."""
    from healthmate_features.crypto import file_key_id

    return read_csv(settings, path, **options) if file_key_id(path) else pd.read_csv(path, **options)
