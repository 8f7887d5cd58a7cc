"""HealthmateDuckDBOfflineStore against a plain brute-force reference and Feast's own DuckDB store.

Each test module run builds one temporary Feast repository (feature_store.yaml + definitions.py,
applied with the real `feast apply` CLI); hypothesis examples rewrite its Parquet sources.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import FeatureStore
from feast.errors import SavedDatasetLocationAlreadyExists
from feast.infra.offline_stores.file_source import SavedDatasetFileStorage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthmate_features.backends import repo_keyring
from healthmate_features.crypto import file_key_id, open_parquet
from healthmate_features.errors import OfflineStoreError
from healthmate_features.stores.duckdb_asof import STORE_TYPE

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
TTL = timedelta(hours=3)
HOUR = timedelta(hours=1)
EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DEFINITIONS = """
from datetime import timedelta

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
device = Entity(name="device", join_keys=["device_id"], value_type=ValueType.INT64)

vitals_source = FileSource(
    name="vitals_source", path="{data}/vitals.parquet",
    timestamp_field="event_timestamp", created_timestamp_column="created",
)
device_source = FileSource(name="device_source", path="{data}/device.parquet", timestamp_field="ts")
mapped_source = FileSource(
    name="mapped_source", path="data/mapped.parquet", timestamp_field="event_timestamp",
    field_mapping={{"uid": "user_id", "heart_rate": "hr"}},
)

vitals_schema = [
    Field(name="user_id", dtype=Int64), Field(name="x", dtype=Float64), Field(name="label", dtype=String),
]
vitals_fv = FeatureView(
    name="vitals_fv", entities=[user], ttl=timedelta(hours=3), schema=vitals_schema, source=vitals_source,
)
vitals_nottl_fv = FeatureView(
    name="vitals_nottl_fv", entities=[user], ttl=timedelta(0), schema=vitals_schema, source=vitals_source,
)
device_fv = FeatureView(
    name="device_fv", entities=[user, device], ttl=None,
    schema=[
        Field(name="user_id", dtype=Int64), Field(name="device_id", dtype=Int64),
        Field(name="steps", dtype=Float64),
    ],
    source=device_source,
)
global_fv = FeatureView(
    name="global_fv", entities=[], ttl=timedelta(hours=3), schema=[Field(name="x", dtype=Float64)],
    source=vitals_source,
)
mapped_fv = FeatureView(
    name="mapped_fv", entities=[user], ttl=timedelta(days=1),
    schema=[Field(name="user_id", dtype=Int64), Field(name="hr", dtype=Float64)], source=mapped_source,
)


@on_demand_feature_view(sources=[vitals_fv], schema=[Field(name="x_doubled", dtype=Float64)])
def vitals_odfv(inputs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({{"x_doubled": inputs["x"] * 2}})


patient_v1 = FeatureService(
    name="patient_v1",
    features=[vitals_fv.with_name("patient_vitals").with_join_key_map({{"user_id": "patient_id"}})[["x"]]],
)
"""

YAML = """project: pit
provider: local
registry: {root}/registry.db
online_store:
  type: sqlite
  path: {root}/online.db
offline_store:
{offline}
entity_key_serialization_version: 3
"""


class Repo:
    """The temporary feature repository: paths, and FeatureStores over one registry."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.ours = FeatureStore(repo_path=str(root))
        self.feast = FeatureStore(repo_path=str(root), fs_yaml_file=root / "feast_duckdb.yaml")
        self.exclude = FeatureStore(repo_path=str(root), fs_yaml_file=root / "exclude.yaml")
        self.file = FeatureStore(repo_path=str(root), fs_yaml_file=root / "feast_file.yaml")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Repo:
    root = tmp_path_factory.mktemp("pit_repo")
    (root / "data").mkdir()
    (root / "definitions.py").write_text(DEFINITIONS.format(data=root / "data"))

    def yaml(offline: str) -> str:
        return YAML.format(root=root, offline=offline)

    (root / "feature_store.yaml").write_text(
        yaml(f"  type: {STORE_TYPE}\n  threads: 2\n  memory_limit: 1GB\n  temp_directory: duckdb_tmp")
    )
    (root / "feast_duckdb.yaml").write_text(yaml("  type: duckdb"))
    (root / "feast_file.yaml").write_text(yaml("  type: file"))
    (root / "exclude.yaml").write_text(yaml(f"  type: {STORE_TYPE}\n  filter_by_created_timestamp: true"))
    write_vitals(root / "data", [dict(user_id=0, event_timestamp=T0, created=T0, x=1.0, label="a")])
    write_device(root / "data", [dict(user_id=0, device_id=0, ts=T0, steps=1.0)])
    write_mapped(root / "data", [dict(uid=0, event_timestamp=T0, heart_rate=60.0)])
    feast_cli(root, "apply")
    return Repo(root)


def feast_cli(root: Path, *args: str) -> None:
    """Run the real `feast` command line in the repo; fail the test with its stderr."""
    feast = Path(sys.executable).with_name("feast")
    done = subprocess.run([str(feast), *args], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- sources ---------------------------------------------------------------------------------

VITALS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("event_timestamp", pa.timestamp("us", tz="UTC")),
        ("created", pa.timestamp("us", tz="UTC")),
        ("x", pa.float64()),
        ("label", pa.string()),
    ]
)
DEVICE_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("device_id", pa.int64()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("steps", pa.float64()),
    ]
)
MAPPED_SCHEMA = pa.schema(
    [
        ("uid", pa.int64()),
        ("event_timestamp", pa.timestamp("us", tz="UTC")),
        ("heart_rate", pa.float64()),
    ]
)


_WRITES = itertools.count(1)


def _write(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    """Replace a source file between examples. Feast's DuckDB store keeps one DuckDB connection,
    whose external file cache (DuckDB 1.x) revalidates by modification time: two writes within
    one second would be served the old bytes. A strictly increasing mtime marks each rewrite."""
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    stamp = 1_000_000_000 + next(_WRITES)
    os.utime(path, (stamp, stamp))


def write_vitals(data: Path, rows: list[dict], schema: pa.Schema = VITALS_SCHEMA) -> None:
    _write(data / "vitals.parquet", rows, schema)


def write_device(data: Path, rows: list[dict]) -> None:
    _write(data / "device.parquet", rows, DEVICE_SCHEMA)


def write_mapped(data: Path, rows: list[dict]) -> None:
    _write(data / "mapped.parquet", rows, MAPPED_SCHEMA)


def _same_values_per_key(rows: list[dict], key: tuple[str, ...], value_cols: tuple[str, ...]) -> list[dict]:
    """Make rows that tie on every ordering column identical, so "latest" is well defined."""
    first: dict = {}
    for row in rows:
        seen = first.setdefault(tuple(row[k] for k in key), row)
        row.update({c: seen[c] for c in value_cols})
    return rows


hours = st.integers(0, 12).map(lambda h: T0 + h * HOUR)
maybe_float = st.one_of(st.none(), st.integers(-5, 5).map(float))
vitals_row = st.fixed_dictionaries(
    dict(
        user_id=st.integers(0, 3),
        event_timestamp=hours,
        created=st.one_of(st.none(), hours),
        x=maybe_float,
        label=st.one_of(st.none(), st.sampled_from(["a", "b", "c"])),
    )
)


@st.composite
def vitals_rows(draw) -> list[dict]:
    """Source rows plus "twins": same user and event time, another created time (or none) and values."""
    rows = draw(st.lists(vitals_row, max_size=25))
    for _ in range(draw(st.integers(0, 8)) if rows else 0):
        twin = dict(draw(st.sampled_from(rows)))
        twin.update(draw(vitals_row.map(lambda r: {k: r[k] for k in ("created", "x", "label")})))
        rows.append(twin)
    return _same_values_per_key(rows, ("user_id", "event_timestamp", "created"), ("x", "label"))


device_rows = st.lists(
    st.fixed_dictionaries(
        dict(
            user_id=st.integers(0, 2),
            device_id=st.integers(0, 1),
            ts=hours,
            steps=maybe_float,
        )
    ),
    max_size=20,
).map(lambda rows: _same_values_per_key(rows, ("user_id", "device_id", "ts"), ("steps",)))
entity_rows = st.lists(
    st.fixed_dictionaries(
        dict(
            user_id=st.integers(0, 4),
            device_id=st.integers(0, 2),
            event_timestamp=st.tuples(st.integers(0, 15), st.sampled_from([0, 30])).map(
                lambda hm: T0 + hm[0] * HOUR + timedelta(minutes=hm[1])
            ),
        )
    ),
    min_size=1,
    max_size=25,
)


def entity_frame(rows: list[dict], **renames: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows).astype({"user_id": "int64", "device_id": "int64"})
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    frame.insert(0, "row_id", range(len(frame)))
    return frame.rename(columns=renames)


# --- the brute-force reference ---------------------------------------------------------------


def brute_force(
    entities: pd.DataFrame,
    rows: list[dict],
    *,
    keys: dict[str, str],
    ts: str,
    created: str | None,
    features: dict[str, str],
    ttl: timedelta | None,
    exclude_created_later: bool = False,
) -> pd.DataFrame:
    """Per entity row: keep the source rows that may be used, sort them, take the last.

    keys maps source column -> entity column, features maps source column -> output column.
    """
    out = []
    for entity in entities.to_dict("records"):
        at = pd.Timestamp(entity["event_timestamp"])
        at = at.tz_localize("UTC") if at.tzinfo is None else at
        usable = [
            r
            for r in rows
            if all(r[s] is not None and r[s] == entity[e] for s, e in keys.items())
            and r[ts] is not None
            and pd.Timestamp(r[ts]) <= at
            and (not ttl or pd.Timestamp(r[ts]) >= at - ttl)
            and (not exclude_created_later or (r[created] is not None and pd.Timestamp(r[created]) <= at))
        ]
        usable.sort(
            key=lambda r: (
                pd.Timestamp(r[ts]),
                created is not None and r[created] is not None,
                pd.Timestamp(r[created]) if created and r[created] is not None else pd.Timestamp(0, tz="UTC"),
            )
        )
        latest = usable[-1] if usable else {}
        out.append({name: latest.get(col) for col, name in features.items()})
    return pd.DataFrame(out, columns=list(features.values()))


def cell(value):
    """Normalize one value for comparison: every kind of missing is None, numbers are floats."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def assert_columns_equal(actual: pd.DataFrame, expected: pd.DataFrame, columns) -> None:
    for column in columns:
        got = [cell(v) for v in actual[column].tolist()]
        want = [cell(v) for v in expected[column].tolist()]
        assert got == want, f"column {column}:\n got  {got}\n want {want}"


def by_row_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("row_id", kind="stable").reset_index(drop=True)


# --- differential tests ----------------------------------------------------------------------

REFS = ["vitals_fv:x", "vitals_fv:label", "vitals_nottl_fv:x", "device_fv:steps"]
VITALS = dict(keys={"user_id": "user_id"}, ts="event_timestamp", created="created")


def expected_for(entities: pd.DataFrame, vitals: list[dict], device: list[dict], exclude: bool) -> pd.DataFrame:
    """The brute-force answer for REFS with full feature names."""
    parts = [
        brute_force(
            entities,
            vitals,
            **VITALS,
            ttl=TTL,
            exclude_created_later=exclude,
            features={"x": "vitals_fv__x", "label": "vitals_fv__label"},
        ),
        brute_force(
            entities, vitals, **VITALS, ttl=None, exclude_created_later=exclude, features={"x": "vitals_nottl_fv__x"}
        ),
        brute_force(
            entities,
            device,
            keys={"user_id": "user_id", "device_id": "device_id"},
            ts="ts",
            created=None,
            features={"steps": "device_fv__steps"},
            ttl=None,
        ),
    ]
    return pd.concat(parts, axis=1)


@pytest.mark.slow
@EXAMPLES
@given(vitals=vitals_rows(), device=device_rows, entities=entity_rows)
def test_matches_brute_force_and_feast_duckdb(repo, vitals, device, entities):
    """Ties, nulls, ttl edges, duplicates, two join-key sets and a composite key: all three agree."""
    write_vitals(repo.data, vitals)
    write_device(repo.data, device)
    frame = entity_frame(entities)
    ours = repo.ours.get_historical_features(frame, REFS, full_feature_names=True).to_df()
    feast = repo.feast.get_historical_features(frame, REFS, full_feature_names=True).to_df()
    expected = expected_for(frame, vitals, device, exclude=False)

    assert list(ours.columns) == list(frame.columns) + list(expected.columns)
    assert ours["row_id"].tolist() == frame["row_id"].tolist()
    assert_columns_equal(ours, expected, expected.columns)
    assert len(feast) == len(frame)
    assert_columns_equal(ours, by_row_id(feast), expected.columns)


@pytest.mark.slow
@EXAMPLES
@given(vitals=vitals_rows(), device=device_rows, entities=entity_rows)
def test_created_timestamp_exclusion_matches(repo, vitals, device, entities):
    """filter_by_created_timestamp=True: rows created after the entity time are never used."""
    write_vitals(repo.data, vitals)
    write_device(repo.data, device)
    frame = entity_frame(entities)

    def job(store, **kw):
        return store.get_historical_features(frame, REFS, full_feature_names=True, **kw)

    ours = job(repo.ours, filter_by_created_timestamp=True).to_df()
    from_config = job(repo.exclude).to_df()
    feast = job(repo.feast, filter_by_created_timestamp=True).to_df()
    expected = expected_for(frame, vitals, device, exclude=True)

    assert_columns_equal(ours, expected, expected.columns)
    assert_columns_equal(from_config, expected, expected.columns)
    assert_columns_equal(ours, by_row_id(feast), expected.columns)


@pytest.mark.slow
@EXAMPLES
@given(vitals=vitals_rows(), entities=entity_rows)
def test_join_key_map_and_alias_match(repo, vitals, entities):
    """A feature service projecting vitals_fv as patient_vitals joined on patient_id."""
    write_vitals(repo.data, vitals)
    frame = entity_frame(entities, user_id="patient_id")
    service = repo.ours.get_feature_service("patient_v1")
    ours = repo.ours.get_historical_features(frame, service, full_feature_names=True).to_df()
    feast = repo.feast.get_historical_features(frame, service, full_feature_names=True).to_df()
    expected = brute_force(
        frame,
        vitals,
        keys={"user_id": "patient_id"},
        ts="event_timestamp",
        created="created",
        features={"x": "patient_vitals__x"},
        ttl=TTL,
    )

    assert list(ours.columns) == list(frame.columns) + ["patient_vitals__x"]
    assert_columns_equal(ours, expected, expected.columns)
    assert_columns_equal(ours, by_row_id(feast), expected.columns)


# --- targeted tests --------------------------------------------------------------------------


def test_nanosecond_and_naive_timestamps_are_exact(repo):
    """1 ns either side of a source row or of the ttl boundary decides; naive means UTC."""
    base = pd.Timestamp("2024-03-01 12:00:00", tz="UTC")
    ns = pd.Timedelta(1, "ns")
    rows = [
        dict(user_id=1, event_timestamp=base + ns, created=None, x=1.0, label="at+1ns"),
        dict(user_id=1, event_timestamp=base + 2 * ns, created=None, x=2.0, label="at+2ns"),
        dict(user_id=2, event_timestamp=base, created=None, x=3.0, label="ttl edge"),
    ]
    schema = VITALS_SCHEMA.set(1, pa.field("event_timestamp", pa.timestamp("ns")))  # naive ns in the file
    write_vitals(repo.data, rows, schema=schema.set(2, pa.field("created", pa.timestamp("ns"))))
    at = [base, base + ns, base + 2 * ns, base + TTL, base + TTL + ns]
    frame = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "event_timestamp": at})
    expected = brute_force(frame, rows, **VITALS, features={"label": "label"}, ttl=TTL)
    assert expected["label"].tolist() == [None, "at+1ns", "at+2ns", "ttl edge", None]

    ours = repo.ours.get_historical_features(frame, ["vitals_fv:label"]).to_df()
    assert ours["label"].tolist() == expected["label"].tolist()
    assert ours["event_timestamp"].tolist() == at  # the entity columns come back untouched

    naive = frame.assign(event_timestamp=frame["event_timestamp"].dt.tz_localize(None))
    # Called below FeatureStore, which would make naive timestamps UTC-aware before the store sees them.
    job = repo.ours._get_provider().offline_store.get_historical_features(
        config=repo.ours.config,
        feature_views=[repo.ours.get_feature_view("vitals_fv")],
        feature_refs=["vitals_fv:label"],
        entity_df=naive,
        registry=repo.ours.registry,
        project=repo.ours.project,
    )
    assert job.to_df()["label"].tolist() == expected["label"].tolist()

    eastern = frame.assign(event_timestamp=frame["event_timestamp"].dt.tz_convert("America/New_York"))
    assert repo.ours.get_historical_features(eastern, ["vitals_fv:label"]).to_df()["label"].tolist() == (
        expected["label"].tolist()
    )


def test_microsecond_sources_compare_exactly_with_nanosecond_entity_times(repo):
    """A view without a created timestamp over a microsecond source is joined on the source's own
    timestamps against the entity time floored to the microsecond: 1 ns either side of a row or of
    the ttl boundary still decides, before 1970 too."""
    ns = pd.Timedelta(1, "ns")
    for base in (
        pd.Timestamp("2024-03-01 12:00:00.000007", tz="UTC"),
        pd.Timestamp("1969-12-31 23:59:59.999993", tz="UTC"),
    ):
        write_device(repo.data, [dict(user_id=1, device_id=1, ts=base, steps=1.0)])
        write_mapped(repo.data, [dict(uid=1, event_timestamp=base, heart_rate=2.0)])
        day = pd.Timedelta(days=1)
        at = [base - ns, base, base + ns, base + day, base + day + ns]
        frame = pd.DataFrame({"user_id": [1] * 5, "device_id": [1] * 5, "event_timestamp": at})
        result = repo.ours.get_historical_features(frame, ["device_fv:steps", "mapped_fv:hr"]).to_df()
        assert [cell(v) for v in result["steps"]] == [None, 1.0, 1.0, 1.0, 1.0]
        assert [cell(v) for v in result["hr"]] == [None, 2.0, 2.0, 2.0, None]  # ttl one day, inclusive
        assert result["event_timestamp"].tolist() == at


def test_entity_frame_as_sql_equals_dataframe(repo):
    """A DuckDB query as entity frame; relative paths in it resolve against the repo root."""
    rows = [
        dict(user_id=u, event_timestamp=T0 + h * HOUR, created=T0, x=float(10 * u + h), label=None)
        for u in range(3)
        for h in range(5)
    ]
    write_vitals(repo.data, rows)
    frame = pd.DataFrame(
        {
            "user_id": [2, 0, 1, 2, 9],
            "event_timestamp": [T0 + h * HOUR for h in (4, 1, 0, 2, 3)],
            "label_col": ["p", "q", "r", "s", "t"],
        }
    )
    pq.write_table(pa.Table.from_pandas(frame), repo.data / "labels.parquet")
    sql = "SELECT * FROM read_parquet('data/labels.parquet')"
    from_sql = repo.ours.get_historical_features(sql, ["vitals_fv:x"]).to_df()
    from_df = repo.ours.get_historical_features(frame, ["vitals_fv:x"]).to_df()
    assert [cell(v) for v in from_sql["x"]] == [cell(v) for v in from_df["x"]]
    assert [cell(v) for v in from_df["x"]] == [24.0, 1.0, 10.0, 22.0, None]
    assert list(from_sql.columns) == ["user_id", "event_timestamp", "label_col", "x"]


def test_full_feature_names_off_uses_bare_names(repo):
    write_vitals(repo.data, [dict(user_id=1, event_timestamp=T0, created=T0, x=5.0, label="a")])
    write_device(repo.data, [dict(user_id=1, device_id=2, ts=T0, steps=7.0)])
    frame = pd.DataFrame({"event_timestamp": [T0 + HOUR], "device_id": [2], "user_id": [1]})
    refs = ["device_fv:steps", "vitals_fv:x", "vitals_fv:label"]
    result = repo.ours.get_historical_features(frame, refs).to_df()
    assert list(result.columns) == ["event_timestamp", "device_id", "user_id", "steps", "x", "label"]
    assert result.loc[0, ["steps", "x", "label"]].tolist() == [7.0, 5.0, "a"]


def test_field_mapping_and_relative_source_path(repo):
    """mapped_fv reads data/mapped.parquet (relative to the repo) with uid->user_id, heart_rate->hr."""
    rows = [dict(uid=u, event_timestamp=T0 + h * HOUR, heart_rate=60.0 + u + h) for u in (1, 2) for h in (0, 5, 30)]
    write_mapped(repo.data, rows)
    at = [T0 + HOUR * h for h in (0, 4, 6, 29, 31, 60)]
    frame = pd.DataFrame({"user_id": [1, 2, 1, 2, 1, 3], "event_timestamp": at})
    result = repo.ours.get_historical_features(frame, ["mapped_fv:hr"]).to_df()
    expected = brute_force(
        frame,
        rows,
        keys={"uid": "user_id"},
        ts="event_timestamp",
        created=None,
        features={"heart_rate": "hr"},
        ttl=timedelta(days=1),
    )
    assert_columns_equal(result, expected, ["hr"])
    assert [cell(v) for v in result["hr"]] == [61.0, 62.0, 66.0, 67.0, 91.0, None]


def test_on_demand_feature_view_is_applied(repo):
    write_vitals(repo.data, [dict(user_id=1, event_timestamp=T0, created=T0, x=2.5, label=None)])
    frame = pd.DataFrame({"user_id": [1, 2], "event_timestamp": [T0, T0]})
    result = repo.ours.get_historical_features(frame, ["vitals_fv:x", "vitals_odfv:x_doubled"]).to_df()
    assert result["x_doubled"].tolist()[0] == 5.0 and math.isnan(result["x_doubled"].tolist()[1])


# Feast marks saved datasets as experimental and says so on every save and retrieval.
@pytest.mark.filterwarnings("ignore:(Saving|Retrieving) datasets? is an experimental feature:RuntimeWarning:feast")
def test_saved_dataset_round_trip(repo, tmp_path):
    write_vitals(repo.data, [dict(user_id=u, event_timestamp=T0, created=T0, x=float(u), label="l") for u in range(4)])
    frame = pd.DataFrame({"user_id": [3, 1, 2], "event_timestamp": [T0 + HOUR] * 3})
    job = repo.ours.get_historical_features(frame, ["vitals_fv:x", "vitals_odfv:x_doubled"])
    path = tmp_path / "saved.parquet"
    repo.ours.create_saved_dataset(
        from_=job, name="saved_v1", storage=SavedDatasetFileStorage(str(path)), allow_overwrite=True
    )
    saved = pq.read_table(path).to_pandas()
    assert saved["x"].tolist() == [3.0, 1.0, 2.0] and saved["x_doubled"].tolist() == [6.0, 2.0, 4.0]
    with pytest.raises(
        SavedDatasetLocationAlreadyExists, match=rf"^Saved dataset location {re.escape(str(path))} already exists"
    ):
        job.persist(SavedDatasetFileStorage(str(path)))
    again = repo.ours.get_saved_dataset("saved_v1").to_df()
    assert sorted(again["x"].tolist()) == [1.0, 2.0, 3.0]


@pytest.mark.slow
def test_materialize_then_online_read_equals_latest_offline(repo):
    """`feast materialize` through our store into SQLite; online values are the latest offline rows."""
    rows = [
        dict(user_id=1, event_timestamp=T0, created=T0, x=1.0, label="old"),
        dict(user_id=1, event_timestamp=T0 + HOUR, created=T0, x=2.0, label="tie-early"),
        dict(user_id=1, event_timestamp=T0 + HOUR, created=T0 + 2 * HOUR, x=3.0, label="tie-late"),
        dict(user_id=2, event_timestamp=T0 + 2 * HOUR, created=T0, x=None, label="null x"),
        dict(user_id=3, event_timestamp=T0 + 9 * HOUR, created=T0, x=9.0, label="after end"),
    ]
    write_vitals(repo.data, rows)
    end = T0 + 5 * HOUR
    start = (T0 - HOUR).isoformat()
    feast_cli(repo.root, "materialize", start, end.isoformat(), "--views", "vitals_nottl_fv")
    online = repo.ours.get_online_features(
        features=["vitals_nottl_fv:x", "vitals_nottl_fv:label"],
        entity_rows=[{"user_id": 1}, {"user_id": 2}, {"user_id": 3}],
    ).to_dict()
    latest = brute_force(
        pd.DataFrame({"user_id": [1, 2, 3], "event_timestamp": [end] * 3}),
        rows,
        **VITALS,
        features={"x": "x", "label": "label"},
        ttl=None,
    )
    assert online["label"] == [*latest["label"].tolist()[:2], None]
    assert [cell(v) for v in online["x"]] == [3.0, None, None]


def test_offline_write_batch_appends(repo):
    write_vitals(repo.data, [dict(user_id=1, event_timestamp=T0, created=T0, x=1.0, label="a")])
    new = pd.DataFrame(
        {"user_id": [1], "event_timestamp": [T0 + HOUR], "created": [T0 + HOUR], "x": [4.0], "label": ["b"]}
    )
    repo.ours.write_to_offline_store("vitals_fv", new)
    assert pq.read_metadata(repo.data / "vitals.parquet").num_rows == 2  # readable footer, encrypted values
    frame = pd.DataFrame({"user_id": [1, 1], "event_timestamp": [T0, T0 + 2 * HOUR]})
    result = repo.ours.get_historical_features(frame, ["vitals_fv:label"]).to_df()
    assert result["label"].tolist() == ["a", "b"]


def test_missing_entity_column_is_a_clear_error(repo):
    frame = pd.DataFrame({"user_id": [1], "event_timestamp": [T0]})
    needed = "missing column 'device_id' needed by feature view 'device_fv'"
    with pytest.raises(OfflineStoreError, match=needed):
        repo.ours.get_historical_features(frame, ["device_fv:steps"])


def test_null_entity_keys_and_timestamps_get_null_features(repo):
    write_vitals(repo.data, [dict(user_id=1, event_timestamp=T0, created=T0, x=1.0, label="a")])
    frame = pd.DataFrame(
        {
            "user_id": pd.array([1, None, 1], dtype="Int64"),
            "event_timestamp": [T0 + HOUR, T0 + HOUR, pd.NaT],
        }
    )
    result = repo.ours.get_historical_features(frame, ["vitals_fv:label"]).to_df()
    assert result["label"].tolist() == ["a", None, None]


def test_entityless_view_joins_on_time_alone_and_materializes(repo):
    rows = [
        dict(user_id=1, event_timestamp=T0, created=T0, x=1.0, label=None),
        dict(user_id=2, event_timestamp=T0 + HOUR, created=T0, x=2.0, label=None),
        dict(user_id=1, event_timestamp=T0 + HOUR, created=T0 + HOUR, x=3.0, label=None),
    ]
    write_vitals(repo.data, rows)
    frame = pd.DataFrame({"event_timestamp": [T0 + 2 * HOUR, T0 - HOUR, T0, T0 + 5 * HOUR]})
    result = repo.ours.get_historical_features(frame, ["global_fv:x"]).to_df()
    expected = brute_force(frame, rows, keys={}, ts="event_timestamp", created="created", features={"x": "x"}, ttl=TTL)
    assert_columns_equal(result, expected, ["x"])
    assert [cell(v) for v in result["x"]] == [3.0, None, 1.0, None]
    repo.ours.materialize(start_date=T0 - HOUR, end_date=T0 + 5 * HOUR, feature_views=["global_fv"])


# --- retrieval without an entity frame (start_date/end_date) ------------------------------------

ENTITYLESS_REFS = ["vitals_fv:x", "vitals_fv:label"]


def entityless_reference(rows: list[dict], start, end) -> pd.DataFrame:
    """Every distinct (user_id, event time) in [start, end], by time then user, joined point in time."""
    stamps = sorted(
        {(pd.Timestamp(r["event_timestamp"]), r["user_id"]) for r in rows if start <= r["event_timestamp"] <= end}
    )
    frame = pd.DataFrame(
        {"user_id": [u for _, u in stamps], "event_timestamp": pd.to_datetime([t for t, _ in stamps], utc=True)}
    )
    features = brute_force(frame, rows, **VITALS, ttl=TTL, features={"x": "x", "label": "label"})
    return pd.concat([frame, features], axis=1)


@pytest.mark.slow
@EXAMPLES
@given(vitals=vitals_rows(), window=st.tuples(st.integers(0, 12), st.integers(0, 12)).map(sorted))
def test_entityless_retrieval_matches_brute_force(repo, vitals, window):
    """One row per distinct (entity, event time) the source holds in [start, end]: keys, time, features."""
    write_vitals(repo.data, vitals)
    start, end = T0 + window[0] * HOUR, T0 + window[1] * HOUR
    ours = repo.ours.get_historical_features(features=ENTITYLESS_REFS, start_date=start, end_date=end).to_df()
    expected = entityless_reference(vitals, start, end)
    assert list(ours.columns) == ["user_id", "event_timestamp", "x", "label"]
    assert ours["user_id"].tolist() == expected["user_id"].tolist()
    assert ours["event_timestamp"].tolist() == expected["event_timestamp"].tolist()
    assert_columns_equal(ours, expected, ["x", "label"])


@pytest.mark.slow
@EXAMPLES
@given(vitals=st.lists(vitals_row, max_size=25), end_hour=st.integers(3, 12))
def test_entityless_latest_rows_match_feast_file_store(repo, vitals, end_hour):
    """Feast's file store answers entity-less retrieval with each entity's latest row as of end_date
    (within the ttl); ours has that row as the entity's last one when start_date = end_date - ttl."""
    vitals = _same_values_per_key(
        [dict(r, created=None) for r in vitals], ("user_id", "event_timestamp"), ("x", "label")
    )
    write_vitals(repo.data, vitals)
    end = T0 + end_hour * HOUR
    args = dict(features=ENTITYLESS_REFS, start_date=end - TTL, end_date=end)
    ours = repo.ours.get_historical_features(**args).to_df()
    feast = repo.file.get_historical_features(**args).to_df()
    feast = feast[feast["user_id"].notna()]  # over an empty source Feast's file store returns its synthetic row
    latest = ours.sort_values("event_timestamp", kind="stable").groupby("user_id").tail(1)
    assert sorted(latest["user_id"]) == sorted(feast["user_id"])
    assert_columns_equal(latest.sort_values("user_id"), feast.sort_values("user_id"), ["x", "label"])


def test_entityless_retrieval_keeps_pushed_duplicates_once_and_defaults_to_feasts_window(repo):
    """Rows pushed twice are one row; without start_date, Feast's window (end_date - largest ttl) applies."""
    write_vitals(repo.data, [dict(user_id=1, event_timestamp=T0, created=T0, x=1.0, label="a")])
    twice = pd.DataFrame(
        {"user_id": [2, 2], "event_timestamp": [T0 + HOUR] * 2, "created": [T0 + HOUR] * 2, "x": [5.0] * 2}
        | {"label": ["b", "b"]}
    )
    repo.ours.write_to_offline_store("vitals_fv", twice)
    repo.ours.write_to_offline_store("vitals_fv", twice.iloc[:1])
    assert pq.read_metadata(repo.data / "vitals.parquet").num_rows == 4
    ours = repo.ours.get_historical_features(features=ENTITYLESS_REFS, end_date=T0 + 4 * HOUR).to_df()
    assert ours[["user_id", "x", "label"]].values.tolist() == [[2, 5.0, "b"]]  # T0 is outside 4h - 3h ttl
    both = repo.ours.get_historical_features(features=ENTITYLESS_REFS, start_date=T0, end_date=T0 + 4 * HOUR).to_df()
    assert both[["user_id", "x"]].values.tolist() == [[1, 1.0], [2, 5.0]]


def test_entityless_retrieval_needs_one_set_of_join_keys(repo):
    with pytest.raises(OfflineStoreError, match="same join keys.*vitals_fv, device_fv have 2 different sets"):
        repo.ours.get_historical_features(
            features=["vitals_fv:x", "device_fv:steps"], start_date=T0, end_date=T0 + HOUR
        ).to_df()


def test_offline_write_batch_creates_a_missing_source_then_appends(repo, tmp_path):
    """A push destination that does not exist yet is created by the first batch (Feast's own stores fail)."""
    from healthmate_features.stores.duckdb_asof import HealthmateDuckDBOfflineStore

    view = repo.ours.get_feature_view("mapped_fv")
    target = repo.root / "data" / "mapped.parquet"
    target.unlink()
    try:
        batch = pa.table(
            {"uid": [7], "event_timestamp": pa.array([T0], pa.timestamp("us", tz="UTC")), "heart_rate": [61.0]}
        )
        HealthmateDuckDBOfflineStore.offline_write_batch(repo.ours.config, view, batch.slice(0, 0), None)
        assert pq.read_metadata(target).num_rows == 0
        repo.ours.write_to_offline_store("mapped_fv", batch.to_pandas())
        frame = pd.DataFrame({"user_id": [7], "event_timestamp": [T0 + HOUR]})
        assert repo.ours.get_historical_features(frame, ["mapped_fv:hr"]).to_df()["hr"].tolist() == [61.0]
        with pytest.raises(OfflineStoreError, match=r"columns \['uid', 'event_timestamp'\] differ"):
            HealthmateDuckDBOfflineStore.offline_write_batch(repo.ours.config, view, batch.select([0, 1]), None)
    finally:
        write_mapped(repo.data, [dict(uid=0, event_timestamp=T0, heart_rate=60.0)])


def test_logging_to_files_and_unsupported_destinations(repo, tmp_path):
    """write_logged_features: one new Parquet file per flush under the destination; others refused."""
    from feast.feature_logging import LoggingConfig
    from feast.infra.offline_stores.file_source import FileLoggingDestination

    from healthmate_features.errors import OfflineStoreUnsupportedError
    from healthmate_features.stores.duckdb_asof import HealthmateDuckDBOfflineStore

    logs = pa.table({"user_id": [1, 2], "x": [1.0, 2.0]})
    config = LoggingConfig(destination=FileLoggingDestination(path=str(tmp_path / "logs")))
    for _ in range(2):
        HealthmateDuckDBOfflineStore.write_logged_features(repo.ours.config, logs, None, config, None)
    files = sorted((tmp_path / "logs").glob("*.parquet"))
    keyring = repo_keyring(str(repo.root))  # served features are health data: encrypted like the rest
    assert len(files) == 2 and all(file_key_id(f) and open_parquet(keyring, f).read().equals(logs) for f in files)
    partitioned = LoggingConfig(destination=FileLoggingDestination(path=str(tmp_path / "p"), partition_by=["x"]))
    with pytest.raises(OfflineStoreUnsupportedError) as raised:
        HealthmateDuckDBOfflineStore.write_logged_features(repo.ours.config, logs, None, partitioned, None)
    assert raised.value.method == "write_logged_features" and raised.value.store == "HealthmateDuckDBOfflineStore"
    assert "leave partition_by unset" in str(raised.value)
