"""Both profiles of one checkout share data/: a file either profile encrypted opens on the other.

Each profile keeps its data keys in its own SQL store (SQLite, Postgres); a copy of each wrapped key
in data/keys/ is what lets the other profile read the files (README: the production commands run in
the same checkout as the demo)."""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from healthmate_features.backends import backend_for
from healthmate_features.crypto import parquet_key_id, read_parquet, read_sealed, write_parquet, write_sealed


def test_a_file_either_profile_wrote_opens_on_the_other(prod):
    embedded = dataclasses.replace(prod, profile="embedded")
    production_keys, embedded_keys = backend_for(prod).keyring(), backend_for(embedded).keyring()
    prod.ingested_dir.mkdir(parents=True, exist_ok=True)
    written_by_production = prod.ingested_dir / "users.parquet"
    write_parquet(production_keys, pa.table({"user_id": [1, 2]}), written_by_production)
    written_by_embedded = prod.data_dir / "state.bin"
    write_sealed(embedded_keys, written_by_embedded, b"embedded")

    assert production_keys.active().key_id != embedded_keys.active().key_id
    assert read_parquet(embedded_keys, written_by_production).column("user_id").to_pylist() == [1, 2]
    assert read_sealed(production_keys, written_by_embedded) == b"embedded"
    # The other profile's key is readable there, never the one it writes with.
    production_id = parquet_key_id(written_by_production)
    assert embedded_keys.key_ids()[production_id] == "retired"
    assert embedded_keys.active().key_id != production_id
    assert sorted(p.name for p in (prod.data_dir / "keys").iterdir()) == sorted(
        f"{k}.json" for k in (production_id, embedded_keys.active().key_id)
    )
