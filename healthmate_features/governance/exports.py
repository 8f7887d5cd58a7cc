"""Pseudonymized exports: a dataset version that can leave the platform without its user ids.

`pseudonymize_dataset(dataset, key)` replaces `user_id` (a column or an index level, in the
processed splits and the joined frames) with a keyed hash, and drops the direct identifiers:

    user_id         -> "p_" + the first 16 hex digits of HMAC-SHA256(key, "user_id:<id>")
    session_id      dropped (raw app_events: names one session of one account)
    signup_at       dropped (raw users: the account's creation instant, unique per account)
    signup_epoch_s  dropped (profile features: the same instant as Unix seconds)

The same person gets the same pseudonym within one export key, so rows of one person stay
linkable inside an export (and across exports made with that key); under another key the
pseudonyms are unlinkable. The key is never written into the export: the metadata names only
its fingerprint. Quasi-identifiers (age, sex, height, conditions, dates) are kept, being the
features themselves: README "Erasure, retention and exports" says what that leaves open.
The fitted pipeline is left out (it expects the dropped columns).
"""

from __future__ import annotations

import hashlib
import hmac
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from healthmate_features.config import Settings
from healthmate_features.datasets.dataset import ProcessedDataset
from healthmate_features.errors import ConfigError

USER_COLUMN = "user_id"
DIRECT_IDENTIFIERS = ("session_id", "signup_at", "signup_epoch_s")
MIN_KEY_CHARS = 16
PSEUDONYM_CHARS = 16  # hex digits: 64 bits, no collision expected below ~4 billion people
_NO_KEY = (
    "set HM_EXPORT_KEY to at least {n} random characters (e.g. `export HM_EXPORT_KEY=$(python -c "
    "'import secrets; print(secrets.token_hex(32))')`) or pass --key-file PATH (a file holding the key)"
)


def export_key(settings: Settings, *, key_file: Path | None = None) -> bytes:
    """The export key: the contents of `key_file` when given, else HM_EXPORT_KEY.

    Raises ConfigError when there is none, when it is shorter than 16 characters, or when the
    file cannot be read (the message says how to set one; never the key)."""
    if key_file is not None:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the export key file {Path(key_file).name}: {exc}") from exc
        where = f"the export key file {Path(key_file).name}"
    else:
        key, where = settings.export_key, "HM_EXPORT_KEY"
    if not key:
        raise ConfigError("a pseudonymized export needs a key: " + _NO_KEY.format(n=MIN_KEY_CHARS))
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"{where} holds {len(key)} characters; " + _NO_KEY.format(n=MIN_KEY_CHARS))
    return key.encode("utf-8")


def key_fingerprint(key: bytes) -> str:
    """A public name of an export key (16 hex digits): says which key made an export, reveals nothing."""
    return hmac.new(key, b"healthmate-features export key id", hashlib.sha256).hexdigest()[:16]


def _id_text(value: Any) -> str:
    """One spelling per id: 5, 5.0 and "5" are the same person."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def pseudonym(key: bytes, user_id: Any) -> str:
    """The pseudonym of a user id under `key`: "p_" + 16 hex digits of HMAC-SHA256(key, "user_id:<id>")."""
    digest = hmac.new(key, f"user_id:{_id_text(user_id)}".encode(), hashlib.sha256).hexdigest()
    return "p_" + digest[:PSEUDONYM_CHARS]


def _identifier(column: Any) -> bool:
    """A direct identifier's column, also under a preprocessing prefix (`num__signup_epoch_s`)."""
    name = str(column)
    return any(name == d or name.endswith(f"__{d}") for d in DIRECT_IDENTIFIERS)


def pseudonymize_frame(frame: pd.DataFrame | pd.Series, key: bytes) -> Any:
    """A copy of a frame (or series): `user_id` pseudonymized (column or index level), direct identifiers dropped."""
    out = frame.copy()
    if isinstance(out, pd.DataFrame):
        drop = [c for c in out.columns if _identifier(c)]
        out = out.drop(columns=drop)
        if USER_COLUMN in out.columns:
            codes = {v: pseudonym(key, v) for v in pd.unique(out[USER_COLUMN].dropna())}
            out[USER_COLUMN] = out[USER_COLUMN].map(codes).astype("string")
    names = list(out.index.names)
    if USER_COLUMN in names:
        frame_index = out.index.to_frame(index=False)
        frame_index[USER_COLUMN] = [pseudonym(key, v) for v in frame_index[USER_COLUMN]]
        out.index = (
            pd.MultiIndex.from_frame(frame_index)
            if len(names) > 1
            else pd.Index(frame_index[USER_COLUMN], name=USER_COLUMN)
        )
    return out


def pseudonymize_dataset(dataset: ProcessedDataset, key: bytes) -> ProcessedDataset:
    """A pseudonymized copy of a loaded version (module docstring); the original is not changed.

    The copy has no pipeline and says in its metadata which key (fingerprint) made it and which
    columns were dropped."""
    frames = {split: pseudonymize_frame(value, key) for split, value in dataset.frames()}
    dropped = sorted(
        {str(c) for _, v in dataset.frames() if isinstance(v, pd.DataFrame) for c in v.columns if _identifier(c)}
    )
    metadata = dict(dataset.metadata)
    metadata["pseudonymized"] = {
        "key_id": key_fingerprint(key),
        "user_id": "HMAC-SHA256, 16 hex digits",
        "dropped": dropped,
    }
    return replace(
        dataset,
        **frames,
        feature_names=[f for f in dataset.feature_names if not _identifier(f)],
        pipeline=None,
        metadata=metadata,
    )


def pseudonymize_parquet(data: bytes, key: bytes) -> bytes:
    """One stored split's Parquet bytes, pseudonymized (what the API's download sends with pseudonymize=true)."""
    frame = pq.read_table(pa.BufferReader(data)).to_pandas()
    out = pseudonymize_frame(frame, key)
    if isinstance(out, pd.Series):  # pragma: no cover  (to_pandas returns frames)
        out = out.to_frame()
    table = pa.Table.from_pandas(out, preserve_index=None)
    table = table.replace_schema_metadata({k: v for k, v in (table.schema.metadata or {}).items() if k == b"pandas"})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()
