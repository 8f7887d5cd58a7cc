"""The contract between healthmate_features/_feast.py and the installed Feast; no servers, no `feast apply`.

healthmate_features/_feast.py is the only module that touches Feast's private names (underscored
functions and attributes, helpers of its internal modules) and internal layouts (the Redis key,
field and value encoding the fast online reader reads without Feast). Each test here pins one of
them against the installed Feast, and a failure names the Feast thing that changed: adapt
healthmate_features/_feast.py (and only it) to the new Feast, then update the expectation here.

The last tests keep the rule: no module of the package, feature_repo/ or bench/ other than
_feast.py reaches Feast's private names (an AST scan of their source).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import math
import re
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import feast
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.repo_config import RegistryConfig, RepoConfig
from feast.types import Bool, Float32, Float64, Int32, Int64, String, UnixTimestamp

from healthmate_features import _feast

ROOT = Path(__file__).resolve().parents[2]
COMPAT = ROOT / "healthmate_features" / "_feast.py"
PROJECT = "healthmate"
SPAN = (datetime(2025, 1, 1, tzinfo=timezone.utc), datetime(2025, 1, 3, tzinfo=timezone.utc))


def adapt(what: str, detail: str) -> str:
    """The failure message of a broken contract: which Feast name changed, and where to adapt."""
    return (
        f"Feast {feast.__version__} changed {what}: {detail}. "
        "healthmate_features/_feast.py relies on it and must be adapted to this Feast "
        "(then update tests/unit/test_feast_contract.py)"
    )


def resolve(dotted: str):
    """The object at a dotted path: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def shape(fn) -> str:
    """A signature without annotations: names, kinds and defaults, e.g. '(project, entity_key, version=3)'."""
    parts, star_done = [], False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
        star_done = star_done or p.kind in (p.VAR_POSITIONAL, p.KEYWORD_ONLY)
        prefix = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        default = "" if p.default is p.empty else f"={p.default!r}"
        parts.append(f"{prefix}{p.name}{default}")
    return f"({', '.join(parts)})"


# Every Feast callable _feast.py (or a store subclassing Feast) calls, with the signature it is written against.
SIGNATURES = {
    # stores/online_engine.py overrides these of Feast's local engine.
    "feast.infra.compute_engines.base.ComputeEngine.materialize": (
        "(self, registry, tasks, *, lineage_parent=None, **kwargs)"
    ),
    "feast.infra.compute_engines.base.ComputeEngine.get_execution_context": "(self, registry, task)",
    "feast.infra.compute_engines.local.feature_builder.LocalFeatureBuilder.build_output_nodes": (
        "(self, view, input_node)"
    ),
    "feast.infra.compute_engines.local.nodes.LocalOutputNode.__init__": "(self, name, feature_view, inputs=None)",
    "feast.infra.compute_engines.local.nodes.LocalOutputNode.execute": "(self, context)",
    "feast.utils._convert_arrow_fv_to_proto": "(table, feature_view, join_keys)",
    # Feast's DuckDB monitoring statistics, run on our connection for encrypted sources.
    "feast.infra.offline_stores.duckdb._duckdb_numeric_stats": (
        "(conn, from_expr, feature_names, ts_filter, histogram_bins)"
    ),
    "feast.infra.offline_stores.duckdb._duckdb_categorical_stats": "(conn, from_expr, col_name, ts_filter, top_n)",
    "feast.infra.offline_stores.offline_utils.get_timestamp_filter_sql": (
        "(start_date=None, end_date=None, timestamp_field='event_timestamp', date_partition_column=None, tz=None, "
        "cast_style='timestamp', date_time_separator='T', quote_fields=True)"
    ),
    "feast.utils._get_cached_request_context": "(registry, project, features, full_feature_names)",
    "feast.utils._parse_feature_ref": "(ref)",
    "feast.utils.compute_non_entity_date_range": (
        "(feature_views, start_date=None, end_date=None, default_window_days=30)"
    ),
    "feast.infra.online_stores.helpers._mmh3": "(key)",
    "feast.infra.online_stores.helpers._redis_key": "(project, entity_key, entity_key_serialization_version=3)",
    "feast.infra.key_encoding_utils.serialize_entity_key": "(entity_key, entity_key_serialization_version=3)",
    "feast.infra.offline_stores.offline_utils.infer_event_timestamp_from_entity_df": "(entity_schema)",
    "feast.infra.offline_stores.offline_utils.get_expected_join_keys": "(project, feature_views, registry)",
    "feast.infra.offline_stores.offline_utils.assert_expected_columns_in_entity_df": (
        "(entity_schema, join_keys, entity_df_event_timestamp_col)"
    ),
    "feast.infra.offline_stores.offline_utils.get_feature_view_query_context": (
        "(feature_refs, feature_views, registry, project, entity_df_timestamp_range)"
    ),
    "feast.infra.offline_stores.offline_utils.get_pyarrow_schema_from_batch_source": (
        "(config, batch_source, timestamp_unit='us')"
    ),
    "feast.infra.utils.postgres.connection_utils._get_conn": "(config)",
    # The SQLite online store the fast reader reads and erasure deletes from: its connection
    # (`sqlite_connection`) and its table names.
    "feast.infra.online_stores.sqlite.SqliteOnlineStore._get_conn": "(self, config)",
    "feast.infra.online_stores.helpers.compute_table_id": "(project, table, enable_versioning=False)",
    "feast.infra.online_stores.helpers.compute_versioned_name": "(table, enable_versioning=False)",
    # What stores/encrypted_online.py's subclasses override of Feast's SQLite and Redis stores.
    "feast.infra.online_stores.sqlite.SqliteOnlineStore.online_read": (
        "(self, config, table, entity_keys, requested_features=None)"
    ),
    "feast.infra.online_stores.sqlite.SqliteOnlineStore.online_write_batch": "(self, config, table, data, progress)",
    "feast.infra.online_stores.redis.RedisOnlineStore.online_write_batch": "(self, config, table, data, progress)",
    "feast.infra.online_stores.redis.RedisOnlineStore._read_hash_fields": "(self, config, commands)",
    "feast.infra.registry.caching_registry.CachingRegistry._refresh_cached_registry_if_necessary": "(self)",
    # online_writes_counted: the provider of a FeatureStore, and the write its compute engines call.
    "feast.feature_store.FeatureStore._get_provider": "(self)",
    "feast.infra.online_stores.online_store.OnlineStore.online_write_batch": "(self, config, table, data, progress)",
    # online_store_without_retries: the redis-py client Feast's Redis store builds and caches.
    "feast.infra.online_stores.redis.RedisOnlineStore._get_client": "(self, online_store_config)",
    "feast.type_map.arrow_to_pg_type": "(t_str)",
    "feast.type_map.pg_type_code_to_arrow": "(code)",
    "feast.type_map.feast_value_type_to_python_type": "(field_value_proto, feature_type=None)",
    "feast.type_map.python_values_to_proto_values": "(values, feature_type=<ValueType.UNKNOWN: 0>)",
    "feast.types.from_feast_to_pyarrow_type": "(feast_type)",
    # The RetrievalJob hooks our offline stores override (_feast.RETRIEVAL_JOB_HOOKS).
    "feast.infra.offline_stores.offline_store.RetrievalJob._to_df_internal": "(self, timeout=None)",
    "feast.infra.offline_stores.offline_store.RetrievalJob._to_arrow_internal": "(self, timeout=None)",
    # What stores/duckdb_monitoring.py calls on Feast's DuckDB store (feast monitor run).
    "feast.infra.offline_stores.duckdb.DuckDBOfflineStore.compute_monitoring_metrics": (
        "(config, data_source, feature_columns, timestamp_field, start_date=None, end_date=None, "
        "histogram_bins=20, top_n=10)"
    ),
    "feast.infra.offline_stores.duckdb.DuckDBOfflineStore.get_monitoring_max_timestamp": (
        "(config, data_source, timestamp_field)"
    ),
    "feast.infra.offline_stores.duckdb.DuckDBOfflineStore.ensure_monitoring_tables": "(config)",
    "feast.infra.offline_stores.duckdb.DuckDBOfflineStore.save_monitoring_metrics": "(config, metric_type, metrics)",
    "feast.infra.offline_stores.duckdb.DuckDBOfflineStore.query_monitoring_metrics": (
        "(config, project, metric_type, filters=None, start_date=None, end_date=None)"
    ),
    "feast.infra.offline_stores.duckdb.DuckDBOfflineStore.clear_monitoring_baseline": (
        "(config, project, feature_view_name=None, feature_name=None, data_source_type=None)"
    ),
    # What stores/postgres_lateral.py calls on Feast's Postgres store it extends.
    "feast.infra.offline_stores.contrib.postgres_offline_store.postgres.PostgreSQLRetrievalJob.__init__": (
        "(self, query, config, full_feature_names, on_demand_feature_views=None, metadata=None)"
    ),
    "feast.infra.offline_stores.contrib.postgres_offline_store.postgres.PostgreSQLOfflineStore"
    ".get_historical_features": (
        "(config, feature_views, feature_refs, entity_df, registry, project, full_feature_names=False, "
        "filter_by_created_timestamp=False, **kwargs)"
    ),
}

# Feast names _feast.py uses that are not callables: each is pinned by a behavioural test below.
PINNED_BY_BEHAVIOUR = {
    "feast.feature_view.DUMMY_ENTITY_ID": "test_dummy_entity",
    "feast.feature_view.DUMMY_ENTITY_VAL": "test_dummy_entity",
    "feast.infra.offline_stores.offline_utils.DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL": "test_offline_utils_behave",
    "feast.protos.feast.types.EntityKey_pb2.EntityKey": "test_redis_key_layout",
    "feast.protos.feast.types.Value_pb2.Value": "test_value_encoding",
    "feast.value_type.ValueType": "test_redis_key_layout",
    "feast.protos.feast.serving.ServingService_pb2.FieldStatus": "test_online_statuses_tell_stored_from_absent",
    "cached_registry_proto_created": "test_registry_cache_stamp",  # an attribute of Feast's registries
    "_refresh_cached_registry_if_necessary": "test_registry_cache_stamp",
    "is_cache_valid": "test_registry_cache_stamp",
    "feast.infra.online_stores.redis.RedisOnlineStore": "test_encrypting_stores_are_feasts_with_sealed_values",
    "feast.infra.online_stores.redis.RedisOnlineStoreConfig": "test_encrypting_stores_are_feasts_with_sealed_values",
    "feast.infra.online_stores.sqlite.SqliteOnlineStore": "test_encrypting_stores_are_feasts_with_sealed_values",
    "feast.infra.online_stores.sqlite.SqliteOnlineStoreConfig": "test_encrypting_stores_are_feasts_with_sealed_values",
    "feast.infra.supported_async_methods.SupportedAsyncMethods": "test_encrypting_stores_are_feasts_with_sealed_values",
    "_offline_store": "test_set_offline_store_config",  # RepoConfig's cache behind its offline_store property
    # online_writes_counted wraps our stores' own `write_table` (not Feast's) when the store has one.
    "write_table": "test_online_engine_materializes_as_feasts",
    # stores/online_engine.py: Feast's local engine and its plan, with our output node.
    **dict.fromkeys(
        [
            "feast.infra.compute_engines.local.compute.LocalComputeEngine",
            "feast.infra.compute_engines.local.compute.LocalComputeEngineConfig",
            "feast.infra.compute_engines.local.feature_builder.LocalFeatureBuilder",
            "feast.infra.compute_engines.local.nodes.LocalOutputNode",
            "feast.infra.compute_engines.local.job.LocalMaterializationJob",
            "feast.infra.compute_engines.backends.pandas_backend.PandasBackend",
            "feast.infra.common.materialization_job.MaterializationJobStatus",
        ],
        "test_online_engine_materializes_as_feasts",
    ),
}


@pytest.fixture
def user() -> Entity:
    return Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)


@pytest.fixture
def daily(user, tmp_path) -> FeatureView:
    pd.DataFrame(
        {
            "user_id": [1, 2],
            "event_timestamp": pd.to_datetime(["2025-01-01", "2025-01-02"], utc=True),
            "steps": [1.0, 2.0],
            "label": ["a", "b"],
        }
    ).to_parquet(tmp_path / "health_daily.parquet")
    return FeatureView(
        name="health_daily",
        entities=[user],
        ttl=timedelta(days=2),
        schema=[
            Field(name="user_id", dtype=Int64),
            Field(name="steps", dtype=Float64),
            Field(name="label", dtype=String),
        ],
        source=FileSource(
            name="health_daily_source", path=str(tmp_path / "health_daily.parquet"), timestamp_field="event_timestamp"
        ),
    )


request_time = RequestSource(name="request_time", schema=[Field(name="event_timestamp", dtype=UnixTimestamp)])


@pytest.fixture
def temporal(daily):
    @on_demand_feature_view(
        sources=[daily, request_time], schema=[Field(name="steps_doubled", dtype=Float64)], mode="pandas"
    )
    def temporal_fv(inputs: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"steps_doubled": inputs["steps"] * 2})

    return temporal_fv


@pytest.fixture
def registry(tmp_path, user, daily, temporal):
    """Feast's file registry with one entity, one view, one on-demand view and one service (no `feast apply`)."""
    from feast.feature_view import DUMMY_ENTITY
    from feast.infra.registry.registry import Registry

    reg = Registry(PROJECT, RegistryConfig(path=str(tmp_path / "registry.db")), tmp_path)
    reg.apply_entity(DUMMY_ENTITY, PROJECT)  # as `feast apply` does: the entity of entityless (on-demand) views
    reg.apply_entity(user, PROJECT)
    reg.apply_feature_view(daily, PROJECT)
    reg.apply_feature_view(temporal, PROJECT)
    reg.apply_feature_service(FeatureService(name="svc_v1", features=[daily, temporal]), PROJECT)
    return reg


@pytest.fixture
def repo_config(tmp_path) -> RepoConfig:
    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry=str(tmp_path / "registry.db"),
        online_store={"type": "redis", "connection_string": "localhost:6379", "key_ttl_seconds": 60},
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=tmp_path,
    )


# --- the pinned release and the names -------------------------------------------------------------------


def test_feast_version_family():
    pin = re.search(r'"feast\[[^\]]*\]==([0-9.]+)\*"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml no longer pins feast as feast[...]==X.Y.*; keep one tested minor release"
    assert pin.group(1) == _feast.FEAST_VERSION_FAMILY, (
        f"pyproject pins feast {pin.group(1)}*, healthmate_features/_feast.py is written against "
        f"{_feast.FEAST_VERSION_FAMILY}*; move them together"
    )
    if not feast.__version__.startswith(_feast.FEAST_VERSION_FAMILY):
        pytest.fail(
            f"Feast {feast.__version__} is installed, but healthmate_features/_feast.py is written against "
            f"{_feast.FEAST_VERSION_FAMILY}*: run this contract, adapt _feast.py to what fails, then move "
            "FEAST_VERSION_FAMILY and the pin in pyproject.toml together",
            pytrace=False,
        )


@pytest.mark.parametrize("dotted", sorted(SIGNATURES), ids=str)
def test_signature(dotted):
    try:
        fn = resolve(dotted)
    except (ImportError, AttributeError) as exc:
        pytest.fail(adapt(dotted, f"it no longer exists ({exc})"), pytrace=False)
    if shape(fn) != SIGNATURES[dotted]:
        pytest.fail(adapt(dotted, f"its signature is {shape(fn)}, _feast.py calls {SIGNATURES[dotted]}"), pytrace=False)


# What stores/spark_offline.py and spark_engine.py override of Feast's Spark store and engine, and
# what they call on it. Importing them needs PySpark (the spark extra): checked only when it is installed.
SPARK_STORE = "feast.infra.offline_stores.contrib.spark_offline_store.spark"
SPARK_SIGNATURES = {
    f"{SPARK_STORE}.SparkOfflineStore.get_historical_features": (
        "(config, feature_views, feature_refs, entity_df, registry, project, full_feature_names=False, "
        "filter_by_created_timestamp=False, **kwargs)"
    ),
    f"{SPARK_STORE}.SparkOfflineStore.pull_latest_from_table_or_query": (
        "(config, data_source, join_key_columns, feature_name_columns, timestamp_field, created_timestamp_column, "
        "start_date, end_date)"
    ),
    f"{SPARK_STORE}.SparkOfflineStore.pull_all_from_table_or_query": (
        "(config, data_source, join_key_columns, feature_name_columns, timestamp_field, "
        "created_timestamp_column=None, start_date=None, end_date=None)"
    ),
    f"{SPARK_STORE}.SparkOfflineStore.validate_data_source": "(self, config, data_source)",
    f"{SPARK_STORE}.SparkOfflineStore.get_table_column_names_and_types_from_data_source": (
        "(self, config, data_source)"
    ),
    f"{SPARK_STORE}.SparkRetrievalJob.__init__": (
        "(self, spark_session, query, full_feature_names, config, on_demand_feature_views=None, metadata=None)"
    ),
    f"{SPARK_STORE}.SparkRetrievalJob.to_spark_df": "(self)",
    "feast.infra.compute_engines.spark.compute.SparkComputeEngine.materialize": (
        "(self, registry, tasks, *, lineage_parent=None, **kwargs)"
    ),
}


@pytest.mark.parametrize("dotted", sorted(SPARK_SIGNATURES), ids=str)
def test_spark_signature(dotted):
    pytest.importorskip(
        "pyspark", reason="PySpark is not installed; install the spark extra: pip install -e '.[spark]'"
    )
    try:
        fn = resolve(dotted)
    except (ImportError, AttributeError) as exc:
        pytest.fail(adapt(dotted, f"it no longer exists ({exc})"), pytrace=False)
    if shape(fn) != SPARK_SIGNATURES[dotted]:
        pytest.fail(
            adapt(dotted, f"its signature is {shape(fn)}, stores/spark_offline.py expects {SPARK_SIGNATURES[dotted]}"),
            pytrace=False,
        )


def test_every_feast_name_in_the_compat_module_is_pinned():
    """A new private name in _feast.py comes with its contract: every Feast name it reaches is listed above."""
    tree = ast.parse(COMPAT.read_text())
    modules: dict[str, str] = {}  # local alias -> Feast module
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("feast"):
            for alias in node.names:
                path = f"{node.module}.{alias.name}"
                if _is_module(path):
                    modules[alias.asname or alias.name] = path
                else:
                    used.add(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            used.add(f"{modules[node.value.id]}.{node.attr}")
        if (attr := _attr_name(node)) is not None:
            used.add(attr)
    missing = sorted(used - {*SIGNATURES, *PINNED_BY_BEHAVIOUR})
    assert used, "found no Feast names in _feast.py; the scan is broken"
    assert {test for test in PINNED_BY_BEHAVIOUR.values() if not callable(globals().get(test))} == set()
    assert not missing, (
        f"healthmate_features/_feast.py reaches {missing}, which this contract does not pin; "
        "add each to SIGNATURES or to a behavioural test here"
    )


def _is_module(path: str) -> bool:
    try:
        importlib.import_module(path)
    except ImportError:
        return False
    return True


def _attr_name(node: ast.AST) -> str | None:
    """The attribute a `getattr(obj, "name", ...)` (or hasattr, setattr, delattr) call names, else None."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
        and len(node.args) > 1
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    ):
        return node.args[1].value
    return None


# --- Feast's Redis layout ---------------------------------------------------------------------------------

# serialize_entity_key v3 of {user_id: INT64 7} + project, spelled out from Feast's documented layout.
KEY_OF_USER_7 = (
    b"\x01\x00\x00\x00"  # number of join keys, uint32 little endian
    b"\x02\x00\x00\x00"  # type of the key name: ValueType.STRING = 2
    b"\x07\x00\x00\x00user_id"  # length of the key name, the name
    b"\x04\x00\x00\x00"  # type of the value: ValueType.INT64 = 4
    b"\x08\x00\x00\x00"  # length of the value
    b"\x07\x00\x00\x00\x00\x00\x00\x00"  # 7, int64 little endian
    b"healthmate"  # the project, utf-8
)


def test_online_store_without_retries_turns_off_the_retries_of_feasts_redis_client(repo_config):
    store = feast.FeatureStore(config=repo_config)
    client = store._get_provider().online_store._get_client(repo_config.online_store)  # built lazily: no server
    assert client.get_retry().get_retries() == 3  # redis-py's default, which the connection string cannot change
    _feast.online_store_without_retries(store)
    assert client.get_retry().get_retries() == 0
    assert (
        store._get_provider().online_store._get_client(repo_config.online_store) is client
    )  # the one Feast writes with


def test_redis_key_layout():
    ours = _feast.int64_redis_key("user_id", PROJECT)
    feasts = _feast.feast_redis_key(PROJECT, "user_id", 7)
    if feasts != KEY_OF_USER_7:
        pytest.fail(
            adapt(
                "the Redis key layout (helpers._redis_key / key_encoding_utils.serialize_entity_key v3)",
                f"the key of user_id=7 is {feasts!r}, expected {KEY_OF_USER_7!r}",
            ),
            pytrace=False,
        )
    assert ours(7) == KEY_OF_USER_7
    entity_key = _feast.int64_entity_key("user_id")  # the SQLite store's key: the same without the project
    assert entity_key(7) == KEY_OF_USER_7.removesuffix(PROJECT.encode())
    for user_id in (0, 1, -1, 255, 256, 2**31, 2**40, 2**63 - 1, -(2**63)):
        feasts = _feast.feast_redis_key(PROJECT, "user_id", user_id)
        assert ours(user_id) == feasts, adapt("the Redis key layout", f"user_id={user_id}: {feasts!r} != ours")
        assert entity_key(user_id) + PROJECT.encode() == feasts
    assert _feast.ENTITY_KEY_SERIALIZATION_VERSION == 3


def test_redis_field_is_murmur3_of_view_and_feature():
    import mmh3

    field = _feast.redis_field("health_daily", "steps")
    if field != bytes.fromhex("90968e7c"):
        pytest.fail(
            adapt("the Redis field hash (helpers._mmh3)", f"'health_daily:steps' -> {field.hex()}"), pytrace=False
        )
    for ref in ("health_daily:steps", "profile:bmi", "health_rolling:resting_heart_rate_mean_7d", "v:é"):
        view, feature = ref.split(":")
        expected = mmh3.hash(ref, signed=False).to_bytes(4, "little")  # murmur3_32, little endian
        assert _feast.redis_field(view, feature) == expected, adapt("helpers._mmh3", f"{ref!r}")


def test_feasts_redis_writer_writes_what_we_read(daily, repo_config, monkeypatch):
    """RedisOnlineStore.online_write_batch (with a recording client): one hash per user, our key and fields."""
    from feast.infra.online_stores.redis import RedisOnlineStore

    from healthmate_features._feast import EntityKeyProto, ValueProto

    writes: list[tuple] = []

    class Pipeline:
        def __init__(self) -> None:
            self.queued = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

        def hmget(self, key, *fields) -> None:
            self.queued += 1

        def hset(self, key, mapping) -> None:
            writes.append((key, mapping))
            self.queued += 1

        def expire(self, name, time) -> None:
            self.queued += 1

        def execute(self) -> list:
            done, self.queued = self.queued, 0
            return [[None]] * done  # no previous timestamps

    class Client:
        def pipeline(self, transaction: bool = True) -> Pipeline:
            return Pipeline()

    store = RedisOnlineStore()
    if not hasattr(store, "_get_client"):
        pytest.fail(
            adapt("RedisOnlineStore._get_client", "it is gone; check the writer's layout by hand"), pytrace=False
        )
    monkeypatch.setattr(store, "_get_client", lambda config: Client())
    values = {"steps": ValueProto(double_val=1.5), "label": ValueProto(string_val="a")}
    key = EntityKeyProto(join_keys=["user_id"], entity_values=[ValueProto(int64_val=7)])
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    store.online_write_batch(repo_config, daily, [(key, values, at, None)], None)

    assert len(writes) == 1, adapt("RedisOnlineStore.online_write_batch", f"{len(writes)} HSETs for one row")
    written_key, mapping = writes[0]
    assert written_key == KEY_OF_USER_7, adapt("the key RedisOnlineStore writes under", repr(written_key))
    fields = {_feast.redis_field("health_daily", name): name for name in values}
    extra = {f.encode() if isinstance(f, str) else f for f in set(mapping) - set(fields)}
    assert extra == {_feast.redis_timestamp_field("health_daily")}, adapt(
        "the fields RedisOnlineStore writes", f"unexpected {extra}"
    )
    for field, name in fields.items():
        assert mapping[field] == values[name].SerializeToString(), adapt("the value encoding Redis holds", name)
    assert _feast.decode_values([mapping[f] for f in fields]) == [1.5, "a"]


def _sqlite_feature_store(tmp_path):
    """A Feast store on a SQLite online store under tmp_path (Python SDK, no `feast apply`)."""
    return feast.FeatureStore(
        config=RepoConfig(
            project=PROJECT,
            provider="local",
            registry=str(tmp_path / "registry.db"),
            online_store={"type": "sqlite", "path": str(tmp_path / "online.db")},
            offline_store={"type": "file"},
            entity_key_serialization_version=3,
            repo_path=tmp_path,
        )
    )


def test_feasts_sqlite_writer_writes_what_we_read(tmp_path, user, daily):
    """SqliteOnlineStore: one table `<project>_<view>`, a row per entity key (serialize_entity_key v3, no
    project) and feature name holding ValueProto bytes, read over the connection Feast's store keeps."""
    from healthmate_features._feast import EntityKeyProto, ValueProto

    store = _sqlite_feature_store(tmp_path)
    store.apply([user, daily])
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    key = EntityKeyProto(join_keys=["user_id"], entity_values=[ValueProto(int64_val=7)])
    values = {"steps": ValueProto(double_val=1.5), "label": ValueProto(string_val="a")}
    online = store._get_provider().online_store
    online.online_write_batch(store.config, daily, [(key, values, at, None)], None)

    conn = _feast.sqlite_connection(store)
    assert conn is _feast.sqlite_connection(store) is online._get_conn(store.config), adapt(
        "SqliteOnlineStore._get_conn", "it opens a new connection per call"
    )
    table = _feast.sqlite_table(PROJECT, daily)
    assert table == f"{PROJECT}_health_daily", adapt("helpers.compute_table_id", repr(table))
    rows = conn.execute(f'SELECT entity_key, feature_name, value FROM "{table}"').fetchall()
    assert {(k, name) for k, name, _ in rows} == {(_feast.int64_entity_key("user_id")(7), n) for n in values}, adapt(
        "the rows SqliteOnlineStore.online_write_batch writes", repr(rows)
    )
    stored = {name: value for _, name, value in rows}
    assert _feast.decode_values([stored["steps"], stored["label"]]) == [1.5, "a"]


def test_value_encoding():
    from feast.protos.feast.types.Value_pb2 import BoolList, DoubleList, Int64List, StringList
    from feast.type_map import feast_value_type_to_python_type

    from healthmate_features._feast import ValueProto

    for x in (1.5, -0.0, 0.0, 1e308, float("inf"), -2.5e-300):
        raw = ValueProto(double_val=x).SerializeToString()
        if raw != b"\x29" + struct.pack("<d", x):
            pytest.fail(adapt("ValueProto's wire format for double_val (tag 0x29 + 8 bytes)", repr(raw)), pytrace=False)
    nan = _feast.decode_values([ValueProto(double_val=float("nan")).SerializeToString()])[0]
    assert math.isnan(nan)
    protos = [
        ValueProto(double_val=1.5),
        ValueProto(double_val=0.0),
        ValueProto(float_val=0.25),
        ValueProto(int64_val=-(2**40)),
        ValueProto(int32_val=7),
        ValueProto(string_val="héllo"),
        ValueProto(bool_val=True),
        ValueProto(bytes_val=b"\x00\x01"),
        ValueProto(unix_timestamp_val=1_735_787_045),
        ValueProto(double_list_val=DoubleList(val=[1.0, 2.5])),
        ValueProto(int64_list_val=Int64List(val=[1, 2])),
        ValueProto(string_list_val=StringList(val=["a"])),
        ValueProto(bool_list_val=BoolList(val=[True, False])),
        ValueProto(),  # null
    ]
    raws = [p.SerializeToString() for p in protos] + [None]  # None: a field the user's hash lacks
    want = [feast_value_type_to_python_type(p) for p in protos] + [None]
    assert want[-2:] == [None, None], adapt("feast_value_type_to_python_type", "a null ValueProto is not None")
    for generic in (False, True):
        got = _feast.decode_values(raws, generic=generic)
        assert got == want, adapt("feast_value_type_to_python_type or ValueProto", f"generic={generic}: {got}")
    for generic_indexes in (set(), set(range(len(raws))), {0, len(raws) - 1}):
        got = _feast.decode_row(raws, generic_indexes)
        assert got == want, adapt(
            "feast_value_type_to_python_type or ValueProto", f"decode_row {generic_indexes}: {got}"
        )


def test_as_feast_values():
    at = pd.Timestamp("2025-01-02 03:04:05.678", tz="UTC")
    got = _feast.as_feast_values([at], ValueType.UNKNOWN)
    assert got == [datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)], adapt(
        "type_map's timestamp round trip (request time of on-demand views)", repr(got)
    )
    assert _feast.as_feast_values(np.array([1.5, np.nan]), ValueType.DOUBLE) == [1.5, None]
    assert _feast.as_feast_values(np.array([1, 2]), ValueType.INT64) == [1, 2]
    assert _feast.as_feast_values(np.array(["a", None], dtype=object), ValueType.STRING) == ["a", None]


@pytest.mark.parametrize(
    ("values", "value_type"),
    [
        ([0.0, -0.0, 1.5, -1e-300, 5e-324, 1.7976931348623157e308, 0.1 + 0.2], ValueType.DOUBLE),
        (np.array([0.0, -0.0, 2.5, np.pi, -np.e, 1e22]), ValueType.DOUBLE),
        ([np.float64(0.5), 3.25], ValueType.DOUBLE),
        ([0, -1, 2**63 - 1, -(2**63), 17], ValueType.INT64),
        (np.array([0, -5, 2**62], dtype=np.int64), ValueType.INT64),
        ([1.5, float("nan")], ValueType.DOUBLE),  # non-finite: Feast's own path
        ([float("inf")], ValueType.DOUBLE),
        ([1, 2.5], ValueType.DOUBLE),
        ([True, 1], ValueType.INT64),
        ([2**63], ValueType.INT64),
    ],
)
def test_as_feast_values_shortcut_is_feasts_round_trip(values, value_type):
    """The direct float()/int() conversion gives what Feast's ValueProto round trip gives, type and bits."""
    from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values

    try:
        want = [feast_value_type_to_python_type(v) for v in python_values_to_proto_values(values, value_type)]
    except Exception as exc:  # noqa: BLE001 (Feast refuses it: so must we)
        with pytest.raises(type(exc)):
            _feast.as_feast_values(values, value_type)
        return
    got = _feast.as_feast_values(values, value_type)
    assert [type(v) for v in got] == [type(v) for v in want], adapt("python_values_to_proto_values", repr(want))
    assert [struct.pack("<d", v) if isinstance(v, float) else v for v in got] == [
        struct.pack("<d", v) if isinstance(v, float) else v for v in want
    ]


# --- Feast's online request resolution and registry cache ------------------------------------------------


def test_online_request_context(registry):
    service = registry.get_feature_service("svc_v1", PROJECT, allow_cache=True)
    try:
        context = _feast.online_request_context(registry, PROJECT, service, False)
    except TypeError as exc:
        pytest.fail(adapt("utils._get_cached_request_context's result", f"not the 9 fields of RequestContext: {exc}"))
    assert context.feature_refs == ["health_daily:steps", "health_daily:label", "temporal_fv:steps_doubled"], adapt(
        "RequestContext.feature_refs (position 0)", repr(context.feature_refs)
    )
    assert [v.name for v in context.on_demand_feature_views] == ["temporal_fv"], adapt(
        "RequestContext.on_demand_feature_views (position 1)", repr(context.on_demand_feature_views)
    )
    assert context.entity_name_to_join_key_map.get("user") == "user_id", adapt(
        "RequestContext.entity_name_to_join_key_map (position 2)", repr(context.entity_name_to_join_key_map)
    )
    keys = {k if isinstance(k, str) else k.join_key for k in context.join_keys}  # on-demand views': Entity objects
    assert keys == {"user_id", _feast.DUMMY_ENTITY_ID}, adapt(
        "RequestContext.join_keys (position 4)", f"{keys}; the reader drops DUMMY_ENTITY_ID from them"
    )
    assert [(view.name, sorted(names)) for view, names in context.grouped_refs] == [
        ("health_daily", ["label", "steps"])
    ], adapt("RequestContext.grouped_refs (position 5)", repr(context.grouped_refs))
    assert context.result_names == frozenset({"steps", "label", "steps_doubled"}), adapt(
        "RequestContext.result_names (position 6)", repr(context.result_names)
    )
    assert context.request_data == {"event_timestamp"}, adapt("RequestContext.request_data (position 7)", "")
    assert context.entityless is False, adapt("RequestContext.entityless (position 8)", repr(context.entityless))

    full = _feast.online_request_context(registry, PROJECT, ["health_daily:steps"], True)
    assert full.result_names == frozenset({"health_daily__steps"}) and full.on_demand_feature_views == []


@pytest.mark.filterwarnings("ignore:On demand feature view is an experimental feature:RuntimeWarning")
def test_online_statuses_tell_stored_from_absent(tmp_path, user, daily, temporal):
    """A SQLite online store answers NOT_FOUND for a user without a row, PRESENT for a stored null;
    entity columns and on-demand outputs are always PRESENT (the Python SDK's apply, no `feast apply`)."""
    store = _sqlite_feature_store(tmp_path)
    store.apply([user, daily, temporal])
    at = pd.Timestamp("2025-01-02", tz="UTC")
    row = pd.DataFrame({"user_id": [1], "event_timestamp": [at], "steps": [float("nan")], "label": ["a"]})
    store.write_to_online_store("health_daily", row)
    response = store.get_online_features(
        features=["health_daily:steps", "health_daily:label", "temporal_fv:steps_doubled"],
        entity_rows=[{"user_id": 1, "event_timestamp": at}, {"user_id": 2, "event_timestamp": at}],
    )
    got = _feast.stored_in_response(response)
    want = {"user_id": [True, True], "steps": [True, False], "label": [True, False], "steps_doubled": [True, True]}
    assert got == want, adapt("the statuses of an online response (FieldStatus)", repr(got))
    assert response.to_dict()["steps"] == [None, None]  # a stored null and no row read alike: only statuses differ


def test_parse_feature_ref():
    assert _feast.parse_feature_ref("health_daily:steps") == ("health_daily", None, "steps")
    assert _feast.parse_feature_ref("health_daily@v2:steps") == ("health_daily", 2, "steps")


def test_registry_cache_stamp(registry, tmp_path, user, daily):
    """The stamp is Feast's cache time: stable while the cache is valid, new once Feast reloads it."""
    from feast.infra.registry.sql import SqlRegistry, SqlRegistryConfig

    stamp = _feast.registry_cache_stamp(registry)
    assert isinstance(stamp, datetime), adapt("Registry.cached_registry_proto_created", repr(stamp))
    registry.refresh(PROJECT)
    assert _feast.registry_cache_stamp(registry) > stamp, adapt("Registry.refresh", "the cache time did not move")
    # The file registry has no TTL check of its own: the stamp reloads an expired cache (is_cache_valid).
    second = _feast.registry_cache_stamp(registry)
    assert registry.is_cache_valid() and _feast.registry_cache_stamp(registry) == second
    registry.cached_registry_proto_created = second - timedelta(days=1)  # as if cache_ttl_seconds had passed
    assert not registry.is_cache_valid(), adapt("Registry.is_cache_valid", "an expired cache counts as valid")
    assert _feast.registry_cache_stamp(registry) > second, adapt(
        "Registry._get_registry_proto(allow_cache=True)", "an expired file registry cache was not reloaded"
    )

    # The production registry type (SQL), on SQLite: Feast's TTL check runs through our stamp.
    sql = SqlRegistry(
        SqlRegistryConfig(registry_type="sql", path=f"sqlite:///{tmp_path / 'sql.db'}"), PROJECT, tmp_path
    )
    sql.apply_entity(user, PROJECT)
    sql.apply_feature_view(daily, PROJECT)
    sql.refresh(PROJECT)
    first = _feast.registry_cache_stamp(sql)
    assert isinstance(first, datetime) and _feast.registry_cache_stamp(sql) == first, adapt(
        "CachingRegistry's cache (cached_registry_proto_created)", "the stamp moves while the cache is valid"
    )
    sql.cached_registry_proto_created = first - timedelta(days=1)  # as if cache_ttl_seconds had passed
    assert _feast.registry_cache_stamp(sql) > first, adapt(
        "CachingRegistry._refresh_cached_registry_if_necessary", "an expired cache was not reloaded"
    )
    assert _feast.registry_cache_stamp(object()) is None  # a registry without Feast's cache: no stamp


def test_dummy_entity():
    assert (_feast.DUMMY_ENTITY_ID, _feast.DUMMY_ENTITY_VAL) == ("__dummy_id", ""), adapt(
        "feast.feature_view.DUMMY_ENTITY_ID / DUMMY_ENTITY_VAL",
        f"{_feast.DUMMY_ENTITY_ID!r}, {_feast.DUMMY_ENTITY_VAL!r}",
    )


# --- Feast's offline helpers, type maps and store hooks ----------------------------------------------------


def test_offline_utils_behave(registry, daily, repo_config):
    from feast.errors import FeastEntityDFMissingColumnsError

    assert _feast.DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL == "event_timestamp"
    schema = {"user_id": np.dtype("int64"), "event_timestamp": np.dtype("<M8[ns]"), "ts": np.dtype("<M8[ns]")}
    assert _feast.infer_event_timestamp_from_entity_df(schema) == "event_timestamp"
    assert _feast.get_expected_join_keys(PROJECT, [daily], registry) == {"user_id"}
    _feast.assert_expected_columns_in_entity_df(schema, {"user_id"}, "event_timestamp")
    with pytest.raises(FeastEntityDFMissingColumnsError):
        _feast.assert_expected_columns_in_entity_df({"user_id": np.dtype("int64")}, {"user_id"}, "event_timestamp")
    arrow, names = _feast.get_pyarrow_schema_from_batch_source(repo_config, daily.batch_source)
    assert names == ["user_id", "event_timestamp", "steps", "label"] and arrow.field("steps").type == pa.float64()


def test_feature_view_query_context(tmp_path, user):
    """The per-view context stores/postgres_lateral.py builds its LATERAL join from."""
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
    from feast.infra.registry.registry import Registry

    view = FeatureView(
        name="health_daily",
        entities=[user],
        ttl=timedelta(days=2),
        schema=[Field(name="user_id", dtype=Int64), Field(name="steps", dtype=Float64)],
        source=PostgreSQLSource(
            name="health_daily_source",
            table="hm.health_daily",
            timestamp_field="event_timestamp",
            field_mapping={"uid": "user_id"},
        ),
    )
    registry = Registry(PROJECT, RegistryConfig(path=str(tmp_path / "pg_registry.db")), tmp_path)
    [context] = _feast.get_feature_view_query_context(["health_daily:steps"], [view], registry, PROJECT, SPAN)
    used = {
        "name": "health_daily",
        "ttl": 172800,
        "features": ["steps"],
        "field_mapping": {"uid": "user_id"},
        "timestamp_field": "event_timestamp",
        "created_timestamp_column": "",
        "table_subquery": "hm.health_daily",
    }
    got = {name: getattr(context, name, "<missing>") for name in used}
    assert got == used, adapt("offline_utils.FeatureViewQueryContext", f"{got}")
    assert _feast.entity_selections(context) == [("uid", "user_id")], adapt(
        "FeatureViewQueryContext.entity_selections ('<column> AS <key>')", repr(context.entity_selections)
    )


def test_type_maps():
    assert [_feast.arrow_to_pg_type(t) for t in ("int64", "timestamp[ns, tz=UTC]", "double", "string")] == [
        "bigint",
        "timestamptz",
        "double precision",
        "text",
    ], adapt("type_map.arrow_to_pg_type", "the entity upload's column types")
    codes = {20: "int64", 23: "int32", 21: "int32", 700: "float", 701: "double", 25: "string", 16: "bool"}
    got = {code: str(_feast.pg_type_code_to_arrow(code)) for code in codes}  # Arrow types for read_csv
    assert got == codes, adapt("type_map.pg_type_code_to_arrow", repr(got))
    arrow = [str(_feast.from_feast_to_pyarrow_type(t)) for t in (Int32, Int64, Float32, Float64, String, Bool)]
    assert arrow == ["int32", "int64", "float", "double", "string", "bool"], adapt(
        "types.from_feast_to_pyarrow_type", repr(arrow)
    )


def test_retrieval_job_hooks_are_what_feast_calls():
    """to_arrow and to_df run the `_to_arrow_internal` hook our stores implement."""
    from feast.infra.offline_stores.offline_store import RetrievalJob

    table = pa.table({"user_id": [1]})
    calls: list[object] = []

    class Job(RetrievalJob):
        full_feature_names = False
        on_demand_feature_views: list = []
        metadata = None

        def _to_arrow_internal(self, timeout=None):
            calls.append(timeout)
            return table

        def _to_df_internal(self, timeout=None):
            return table.to_pandas()

    assert set(_feast.RETRIEVAL_JOB_HOOKS) <= set(vars(RetrievalJob)), adapt("RetrievalJob's hooks", "renamed")
    assert Job().to_arrow(timeout=5) == table and Job().to_df().equals(table.to_pandas())
    assert calls == [5, None], adapt("RetrievalJob.to_arrow/to_df", f"they call _to_arrow_internal as {calls}")


def test_postgres_retrieval_job_keeps_its_config(tmp_path):
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import PostgreSQLRetrievalJob

    config = RepoConfig(
        project=PROJECT,
        provider="local",
        registry=str(tmp_path / "registry.db"),
        offline_store={"type": "postgres", "host": "localhost", "database": "x", "user": "u", "password": "p"},
        entity_key_serialization_version=3,
        repo_path=tmp_path,
    )
    job = PostgreSQLRetrievalJob(query="SELECT 1", config=config, full_feature_names=False, on_demand_feature_views=[])
    assert job.config is config and job.config.offline_store.type == "postgres", adapt(
        "PostgreSQLRetrievalJob.config", "postgres_lateral connects with self.config.offline_store"
    )


def sqlite_repo_config(tmp_path, kind: str, online_type: str, **extra) -> RepoConfig:
    """A RepoConfig of files under tmp_path named by `kind`: a SQLite online store of `online_type`."""
    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry=str(tmp_path / f"{kind}.db"),
        online_store={"type": online_type, "path": str(tmp_path / f"{kind}-online.db")},
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=tmp_path,
        **extra,
    )


def test_encrypting_stores_are_feasts_with_sealed_values(tmp_path, user, daily):
    """Our online stores are Feast's, found by Feast from their type, with only the values changed:
    Feast's SQLite store reads back what it wrote; ours writes the same rows with sealed values,
    reads them back equal, and says it has no async path (so Feast uses the sealing ones)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from healthmate_features.backends import backend_for
    from healthmate_features.config import Settings
    from healthmate_features.stores import encrypted_online as enc

    rows = [
        (
            EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=u)]),
            {"steps": Value(double_val=1.5 * u), "label": Value(string_val=f"l{u}")},
            datetime(2025, 1, u, tzinfo=timezone.utc),
            None,
        )
        for u in (1, 2)
    ]
    read = {}
    for kind, type_ in (
        ("stock", "sqlite"),
        ("ours", enc.EncryptedSqliteOnlineStore.__module__ + ".EncryptedSqliteOnlineStore"),
    ):
        config = sqlite_repo_config(tmp_path, kind, type_)
        assert _feast.online_store_kind(config) == "sqlite"
        store = feast.FeatureStore(config=config)
        online = _feast.online_store_of(store)
        if kind == "ours":
            assert isinstance(online, enc.EncryptedSqliteOnlineStore) and enc.encrypts(store)
            online.bind_keyring(backend_for(Settings(repo_path=tmp_path)).keyring())
            assert not online.async_supported.read and not online.async_supported.write
        online.update(config, [], [daily], [], [user], partial=False)
        online.online_write_batch(config, daily, rows, None)
        read[kind] = online.online_read(config, daily, [r[0] for r in rows])
        stored = (
            _feast.sqlite_connection(store)
            .execute(
                f"SELECT value, value_text FROM {_feast.sqlite_view_table(config, daily)} "
                "ORDER BY entity_key, feature_name"
            )
            .fetchall()
        )
        if kind == "ours":
            plain = {v.SerializeToString() for r in rows for v in r[1].values()}
            assert all(v.startswith(b"HME1") and v not in plain and t is None for v, t in stored)
    assert read["ours"] == read["stock"]
    redis_config = RepoConfig(
        project=PROJECT,
        provider="local",
        registry=str(tmp_path / "r.db"),
        online_store={"type": enc.EncryptedRedisOnlineStore.__module__ + ".EncryptedRedisOnlineStore"},
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )
    assert _feast.online_store_kind(redis_config) == "redis"
    assert redis_config.online_store.profile == "production"


# --- the rule: no module but _feast.py reaches Feast's private names ----------------------------------------

SCANNED = [ROOT / "healthmate_features", ROOT / "feature_repo", ROOT / "bench"]
INTERNAL_MODULES = ("feast.infra", "feast.utils", "feast.type_map", "feast.protos", "feast.infra.key_encoding_utils")
# Inside Feast's internal packages, the names its documentation tells a repository or a custom store to import.
DOCUMENTED = {
    "feast.infra.offline_stores.offline_store": {"OfflineStore", "RetrievalJob", "RetrievalMetadata"},
    # FileLoggingDestination: Feast's feature-logging guide (LoggingConfig(destination=...)).
    "feast.infra.offline_stores.file_source": {"FileSource", "SavedDatasetFileStorage", "FileLoggingDestination"},
    # Feast's DuckDB store, whose monitoring methods stores/duckdb_monitoring.py calls (pinned in SIGNATURES).
    "feast.infra.offline_stores.duckdb": {"DuckDBOfflineStore", "DuckDBOfflineStoreConfig"},
    "feast.infra.registry.base_registry": {"BaseRegistry"},
    "feast.infra.offline_stores.contrib.postgres_offline_store.postgres": {
        "PostgreSQLOfflineStore",
        "PostgreSQLOfflineStoreConfig",
        "PostgreSQLRetrievalJob",
    },
    "feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source": {"PostgreSQLSource"},
    # Feast's Spark data source guide (the spark profile's batch sources).
    "feast.infra.offline_stores.contrib.spark_offline_store.spark_source": {"SparkSource"},
    # The Spark store and compute engine stores/spark_offline.py and spark_engine.py extend (pinned in
    # SPARK_SIGNATURES; Feast documents them by their `type: spark` / `spark.engine`).
    "feast.infra.offline_stores.contrib.spark_offline_store.spark": {
        "SparkOfflineStore",
        "SparkOfflineStoreConfig",
        "SparkRetrievalJob",
    },
    "feast.infra.compute_engines.spark.compute": {"SparkComputeEngine", "SparkComputeEngineConfig"},
}
INTERNAL_NAMES = {"feast.feature_view": {"DUMMY_ENTITY", "DUMMY_ENTITY_ID", "DUMMY_ENTITY_NAME", "DUMMY_ENTITY_VAL"}}
# Public-looking attributes that are the internal state of Feast's registry cache.
INTERNAL_ATTRIBUTES = {"cached_registry_proto", "cached_registry_proto_created", "cached_registry_proto_ttl"}
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _internal_import(module: str, name: str | None) -> str | None:
    """Why importing `name` from Feast `module` (or the module itself) is private, or None when it is public."""
    path = f"{module}.{name}" if name else module
    if any(_private(part) for part in path.split(".")):
        return "an underscored Feast name"
    if path.startswith(INTERNAL_MODULES) or module.startswith(INTERNAL_MODULES):
        if name and name in DOCUMENTED.get(module, set()):
            return None
        return "a Feast internal module"
    if name and name in INTERNAL_NAMES.get(module, set()):
        return "a Feast internal constant"
    if module == "feast.types" and name and inspect.isfunction(getattr(feast.types, name, None)):
        return "a Feast type-conversion helper"
    return None


def private_feast_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each use of a Feast private name or internal layout in a module's source."""
    found: list[tuple[int, str]] = []
    feast_aliases: dict[str, str] = {}  # local name -> Feast module, for `import feast.x as y`
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "feast":
            for alias in node.names:
                why = _internal_import(node.module or "", alias.name)
                if why:
                    found.append((node.lineno, f"from {node.module} import {alias.name}: {why}"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "feast":
                    feast_aliases[alias.asname or "feast"] = alias.name if alias.asname else "feast"
                    why = _internal_import(alias.name, None)
                    if why:
                        found.append((node.lineno, f"import {alias.name}: {why}"))
                elif alias.name == "mmh3":
                    found.append((node.lineno, "import mmh3: Feast's Redis field hash"))
        elif isinstance(node, ast.Attribute):
            value = node.value
            if _private(node.attr) and node.attr not in NAMEDTUPLE_API:
                if not (isinstance(value, ast.Name) and value.id in ("self", "cls")):
                    found.append((node.lineno, f"{ast.unparse(node)}: a private attribute"))
            if node.attr in INTERNAL_ATTRIBUTES:
                found.append((node.lineno, f"{ast.unparse(node)}: Feast's registry cache internals"))
            dotted = ast.unparse(node)
            root = dotted.split(".")[0]
            if root in feast_aliases:
                path = feast_aliases[root] + dotted[len(root) :]
                if path.startswith(INTERNAL_MODULES):
                    found.append((node.lineno, f"{dotted}: a Feast internal module"))
        elif isinstance(node, ast.Call) and (attr := _attr_name(node)) is not None:
            if _private(attr) or attr in INTERNAL_ATTRIBUTES:
                found.append((node.lineno, f"getattr(..., {attr!r}): a private attribute"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith("_ts:") or node.value == _feast.DUMMY_ENTITY_ID:
                found.append((node.lineno, f"{node.value!r}: Feast's internal layout"))
    return sorted(set(found))


def test_no_module_but_the_compat_module_reaches_feast_privates():
    files = sorted(p for root in SCANNED for p in root.rglob("*.py") if p != COMPAT)
    assert ROOT / "healthmate_features" / "stores" / "online.py" in files, "the scan found no package sources"
    violations = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in files
        for line, what in private_feast_uses(path.read_text())
    ]
    assert not violations, (
        "only healthmate_features/_feast.py may touch Feast's private names and internal layouts; "
        "add what you need there (with its contract in tests/unit/test_feast_contract.py) and import it from "
        "there (a private attribute of our own code: make it public instead):\n  " + "\n  ".join(violations)
    )


@pytest.mark.parametrize(
    "snippet",
    [
        "from feast.infra.online_stores.helpers import _mmh3",
        "from feast.infra.offline_stores import offline_utils",
        "from feast.infra.offline_stores.offline_utils import get_expected_join_keys",
        "from feast import utils",
        "from feast.type_map import arrow_to_pg_type",
        "from feast.protos.feast.types.Value_pb2 import Value",
        "from feast.types import from_feast_to_pyarrow_type",
        "from feast.feature_view import DUMMY_ENTITY_ID",
        "import feast.infra.key_encoding_utils",
        "import feast\nfeast.infra.online_stores.helpers",
        "import mmh3",
        "registry._refresh_cached_registry_if_necessary()",
        "store._registry",
        "getattr(registry, '_refresh_cached_registry_if_necessary', None)",
        "getattr(registry, 'cached_registry_proto_created', None)",
        "store.registry.cached_registry_proto_created",
        "keys = {'a'} - {'__dummy_id'}",
        "field = '_ts:health_daily'",
    ],
)
def test_the_scan_catches(snippet):
    assert private_feast_uses(snippet), f"the scan misses {snippet!r}"


@pytest.mark.parametrize(
    "snippet",
    [
        "from feast import FeatureStore, FeatureView, Field, FileSource",
        "from feast.types import Float64, Int64",
        "from feast.infra.offline_stores.offline_store import RetrievalJob",
        "from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource",
        "from healthmate_features._feast import redis_field",
        "self._plans.clear()",
        "row._asdict()",
        "def _to_arrow_internal(self, timeout=None): return self._run()",
    ],
)
def test_the_scan_allows(snippet):
    assert not private_feast_uses(snippet)


def test_set_offline_store_config(repo_config):
    """A RepoConfig copy answers `offline_store` with the config set on it; the original keeps its own."""
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig

    original = repo_config.offline_store
    copy = repo_config.model_copy()
    _feast.set_offline_store_config(copy, DuckDBOfflineStoreConfig())
    assert isinstance(copy.offline_store, DuckDBOfflineStoreConfig), adapt("RepoConfig._offline_store", "ignored")
    assert repo_config.offline_store is original


def test_online_engine_materializes_as_feasts(tmp_path, user, daily):
    """`FeatureStore.materialize` through our engine (stores/online_engine.py) into our encrypting
    SQLite store reads back, through Feast, exactly what Feast's own engine wrote into its stock
    store; with Feast's stock store our engine is Feast's engine (no `write_table`); a failing
    write comes back as Feast's error."""
    from healthmate_features.backends import backend_for
    from healthmate_features.config import Settings
    from healthmate_features.stores import encrypted_online as enc
    from healthmate_features.stores import online_engine

    ours_type = enc.EncryptedSqliteOnlineStore.__module__ + ".EncryptedSqliteOnlineStore"
    read, stores = {}, {}
    for kind, engine, online_type in (
        ("feast", "local", "sqlite"),
        ("ours", online_engine.ENGINE_TYPE, ours_type),
        ("ours-on-stock", online_engine.ENGINE_TYPE, "sqlite"),
    ):
        config = sqlite_repo_config(tmp_path, kind, online_type, batch_engine={"type": engine})
        store = stores[kind] = feast.FeatureStore(config=config)
        online = _feast.online_store_of(store)
        if online_type == ours_type:
            online.bind_keyring(backend_for(Settings(repo_path=tmp_path)).keyring())
        store.apply([user, daily])
        engine_object = store._get_provider().batch_engine
        assert isinstance(engine_object, online_engine.OnlineTableEngine) == (engine != "local")
        assert online_engine.writes_tables(online) == (online_type == ours_type)
        store.materialize(start_date=datetime(2024, 12, 31, tzinfo=timezone.utc), end_date=SPAN[1])
        read[kind] = store.get_online_features(
            features=["health_daily:steps", "health_daily:label"], entity_rows=[{"user_id": u} for u in (1, 2, 3)]
        ).to_dict()
    assert read["ours"] == read["feast"] == read["ours-on-stock"]
    assert read["feast"]["steps"] == [1.0, 2.0, None]

    def fail(*args, **kwargs):
        raise ConnectionResetError("the online store went away")

    ours = stores["ours"]
    _feast.online_store_of(ours).write_table = fail
    with pytest.raises(ConnectionResetError, match="went away"):
        ours.materialize(start_date=datetime(2024, 12, 31, tzinfo=timezone.utc), end_date=SPAN[1])


def test_pyspark_jvm_state():
    """What _feast.spark_gateway and spark_forget_gateway rely on in PySpark (the spark extra)."""
    pytest.importorskip(
        "pyspark", reason="PySpark is not installed; install the spark extra: pip install -e '.[spark]'"
    )
    from pyspark import SparkContext, java_gateway
    from pyspark.sql import SparkSession

    for owner, names in (
        (SparkContext, ("_active_spark_context", "_gateway", "_jvm")),
        (SparkSession, ("_instantiatedSession", "_activeSession")),
    ):
        for name in names:
            assert hasattr(owner, name), (
                f"PySpark's {owner.__name__} has no {name}: adapt healthmate_features/_feast.py"
            )
    launcher = inspect.getsource(java_gateway.launch_gateway)
    assert "gateway.proc = proc" in launcher and "stdin" in launcher, "adapt _feast.spark_gateway: no gateway.proc"
