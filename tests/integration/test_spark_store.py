"""Feast's Spark offline store and compute engine through our subclasses (stores.spark_offline):
point-in-time joins equal to the embedded profile's DuckDB store, materialization into the
encrypting Redis online store, and the Feast defects the subclasses fix.

The Spark repository is a copy of feature_repo/ (our real views and services) whose sources are
SparkSources over the tiny dataset's feature tables, rewritten as Parquet encrypted through the
keyring's KMS client (crypto.spark_kms), the format Spark reads. The session runs on local[2]
with 1 GB of driver memory. Skipped, with the reason, without PySpark or a JDK's javac.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from healthmate_features._feast import offline_store_of
from healthmate_features.backends import repo_keyring
from healthmate_features.crypto.spark_kms import read_kms_parquet, write_kms_parquet
from healthmate_features.errors import EntityFrameError
from tests.helpers.files import read_frame

pytestmark = [
    pytest.mark.spark,
    pytest.mark.slow,
    # PySpark 4.3's createDataFrame from Arrow leaves its py4j data socket to the garbage collector.
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"),
    # Feast warns on every call (and every SparkSource it builds) that its Spark store is "an
    # experimental feature in alpha development".
    pytest.mark.filterwarnings("ignore:The spark offline store is an experimental feature:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:The spark data source API is an experimental feature:RuntimeWarning"),
]

TABLES = ("health_daily", "health_rolling", "health_weekly", "health_monthly", "engagement_daily", "profile")
SERVICES = ("health_risk_v1", "engagement_churn_v1")

SOURCES = '''"""Batch sources of the Spark test repository: SparkSources over KMS-encrypted Parquet."""

from pathlib import Path

from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

from healthmate_features.features.pushed import push_source

FEATURES = Path(__file__).resolve().parents[1] / "data" / "spark_features"


def _source(table):
    return SparkSource(
        name=f"{table}_source", path=str(FEATURES / f"{table}.parquet"), file_format="parquet",
        timestamp_field="event_timestamp",
    )


health_daily_source = _source("health_daily")
health_rolling_source = _source("health_rolling")
health_weekly_source = _source("health_weekly")
health_monthly_source = _source("health_monthly")
engagement_daily_source = _source("engagement_daily")
profile_source = _source("profile")
health_readings_push = push_source()
'''

YAML = """project: {project}
provider: local
registry:
  registry_type: file
  path: data/{registry}
online_store:
{online}
offline_store:
  type: healthmate_features.stores.spark_offline.HealthmateSparkOfflineStore
  spark_conf:
    spark.master: "local[2]"
    spark.driver.memory: 1g
    spark.ui.enabled: "false"
    spark.sql.shuffle.partitions: "4"
    spark.app.name: healthmate-test-spark-store
{engine}entity_key_serialization_version: 3
"""
SQLITE_ONLINE = """  type: healthmate_features.stores.encrypted_online.EncryptedSqliteOnlineStore
  path: data/online.db
  profile: embedded"""


def _need_spark() -> None:
    pytest.importorskip(
        "pyspark", reason="PySpark is not installed; install the spark extra: pip install -e '.[spark]'"
    )
    if shutil.which("javac") is None:
        pytest.skip("javac (a JDK 17+) is not on PATH; Spark's Parquet KMS client class is compiled with it")


@pytest.fixture(scope="module")
def repos(tiny_applied, clone_repo, tmp_path_factory, feast_apply):
    """(embedded store, Spark store): the tiny dataset applied in a copy of the repository, and the
    same copy turned into a Spark repository (SparkSources over the same tables, KMS-encrypted).
    The Spark session is started by the store from the YAML's spark_conf and stopped afterwards."""
    _need_spark()
    from feast import FeatureStore

    embedded = clone_repo(tiny_applied, tmp_path_factory.mktemp("embedded") / "repo")
    spark = clone_repo(tiny_applied, tmp_path_factory.mktemp("spark") / "repo")
    root = spark.repo_path
    (root / "data" / "registry.db").unlink()
    (root / "data" / "online.db").unlink(missing_ok=True)
    (root / "feature_repo" / "sources.py").write_text(SOURCES)
    (root / "feature_store.yaml").write_text(
        YAML.format(project="healthmate", registry="registry.db", online=SQLITE_ONLINE, engine="")
    )
    keyring = repo_keyring(str(root))
    (root / "data" / "spark_features").mkdir()
    for table in TABLES:
        frame = read_frame(spark, spark.features_dir / f"{table}.parquet")
        write_kms_parquet(
            keyring,
            pa.Table.from_pandas(frame, preserve_index=False),
            root / "data" / "spark_features" / f"{table}.parquet",
        )
    feast_apply(root)
    spark_store = FeatureStore(repo_path=str(root))
    yield FeatureStore(repo_path=str(embedded.repo_path)), spark_store, replace(spark, repo_path=root)
    from pyspark.sql import SparkSession

    from healthmate_features.backends.spark_session import forget_dead_jvm

    forget_dead_jvm()
    session = SparkSession.getActiveSession()
    if session is not None:
        session.stop()


def _entity_frame(tiny, rows: int, seed: int) -> pd.DataFrame:
    """`rows` label rows: users 1 and 2 of the tiny dataset and users with no data, at random
    times over its 40 days (some on the second, before and after sign-up), unsorted, with duplicates."""
    rng = np.random.default_rng(seed)
    users = rng.choice(np.array([1, 2, 1, 2, 3, 99]), size=rows)
    seconds = rng.integers(0, (tiny.LAST_DAY + 2) * 86_400, size=rows)
    times = tiny.DAY0 + pd.to_timedelta(seconds, unit="s")
    frame = pd.DataFrame(
        {"user_id": users.astype("int64"), "event_timestamp": times, "label": rng.integers(0, 2, rows)}
    )
    return pd.concat([frame, frame.iloc[: max(1, rows // 10)]], ignore_index=True)


def _frames_equal(ours: pd.DataFrame, reference: pd.DataFrame) -> None:
    assert list(ours.columns) == list(reference.columns)
    assert len(ours) == len(reference)
    for column in reference.columns:
        left, right = ours[column], reference[column]
        if pd.api.types.is_datetime64_any_dtype(right):
            assert (pd.to_datetime(left, utc=True) == pd.to_datetime(right, utc=True)).all(), column
        elif pd.api.types.is_float_dtype(right) or pd.api.types.is_float_dtype(left):
            np.testing.assert_allclose(left.astype("float64"), right.astype("float64"), rtol=1e-12, err_msg=column)
        else:
            assert left.isna().tolist() == right.isna().tolist(), column
            assert left[left.notna()].tolist() == right[right.notna()].tolist(), column


@pytest.mark.parametrize("service", SERVICES)
def test_training_frame_equals_the_embedded_profiles(repos, tiny, service):
    embedded, spark, _ = repos
    entities = _entity_frame(tiny, 300, seed=1)
    before = entities.copy()
    reference = embedded.get_historical_features(entities, features=embedded.get_feature_service(service)).to_df()
    ours = spark.get_historical_features(entities, features=spark.get_feature_service(service)).to_df()
    pd.testing.assert_frame_equal(entities, before)  # Feast's Spark store rewrote the caller's timestamps
    assert reference.notna().sum().sum() > len(reference)  # features were found, not only nulls
    _frames_equal(ours, reference)


REDIS_ONLINE = """  type: healthmate_features.stores.encrypted_online.EncryptedRedisOnlineStore
  connection_string: "{connection}"
  profile: embedded"""
ENGINE = """batch_engine:
  type: healthmate_features.stores.spark_engine.HealthmateSparkComputeEngine
  partitions: 2
"""


@pytest.fixture
def redis_store(repos, redis_url, feast_cli):
    """The Spark repository with Feast's Spark compute engine (our subclass) materializing into the
    encrypting Redis online store: a project of its own (the test's Redis prefix), applied with
    `feast -f feature_store.redis.yaml apply`; its Redis keys are deleted afterwards."""
    import redis
    from feast import FeatureStore

    url, prefix = redis_url
    project = prefix.rstrip(":")
    root = repos[2].repo_path
    client = redis.Redis.from_url(url)
    kwargs = client.connection_pool.connection_kwargs
    connection = f"{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)},db={kwargs.get('db', 0)}"
    yaml_path = root / "feature_store.redis.yaml"
    yaml_path.write_text(
        YAML.format(
            project=project,
            registry=f"registry_{project}.db",
            online=REDIS_ONLINE.format(connection=connection),
            engine=ENGINE,
        )
    )
    feast_cli(root, "-f", yaml_path.name, "apply")
    yield FeatureStore(repo_path=str(root), fs_yaml_file=yaml_path), client, project
    keys = list(client.scan_iter(match=f"*{project}", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.redis
def test_spark_engine_materializes_into_encrypted_redis_and_feast_reads_the_offline_values(redis_store, tiny):
    store, client, project = redis_store
    end = tiny.day(tiny.LAST_DAY, 23).to_pydatetime()
    refs = []
    for name in TABLES:
        view = store.get_feature_view(name)
        store.materialize(end - view.ttl, end, feature_views=[name])  # the window the offline join sees at `end`
        refs += [f"{name}:{field.name}" for field in view.features]
    users = [1, 2, 3]
    online = store.get_online_features(refs, entity_rows=[{"user_id": u} for u in users]).to_df()
    offline = store.get_historical_features(
        pd.DataFrame({"user_id": users, "event_timestamp": [pd.Timestamp(end)] * len(users)}), refs
    ).to_df()
    found = 0
    for ref in refs:
        column = ref.split(":")[1]
        on, off = online[column], offline[column]
        assert on.isna().tolist() == off.isna().tolist(), column
        found += int(on.notna().sum())
        on_values, off_values = [v for v in on if pd.notna(v)], [v for v in off if pd.notna(v)]
        if all(isinstance(v, str) for v in off_values):
            assert on_values == off_values, column
        else:
            assert on_values == pytest.approx(off_values, rel=1e-12), column
    assert found > 100  # 148: user 1 everywhere but the readings the tiny dataset lacks, user 2 in profile
    stored = [client.hgetall(key) for key in client.scan_iter(match=f"*{project}", count=1000)]
    assert len(stored) == 2  # users 1 and 2; user 3 has no data
    sealed = [value for row in stored for field, value in row.items() if not field.startswith(b"_ts:")]
    assert sealed and all(value.startswith(b"HME1") for value in sealed)


def _large_entity_frame(tiny, rows: int, seed: int) -> pd.DataFrame:
    """`rows` label rows: one in ten for the tiny dataset's two users, the rest for users without data."""
    rng = np.random.default_rng(seed)
    users = np.where(rng.random(rows) < 0.1, rng.integers(1, 3, rows), rng.integers(3, 50_000, rows))
    seconds = rng.integers(0, (tiny.LAST_DAY + 2) * 86_400, size=rows)
    return pd.DataFrame(
        {"user_id": users.astype("int64"), "event_timestamp": tiny.DAY0 + pd.to_timedelta(seconds, unit="s")}
    )


def test_a_100k_row_training_frame_equals_the_embedded_one_with_1g_of_driver_memory(repos, tiny):
    """The session has spark.driver.memory=1g (the YAML's spark_conf), also when an earlier test
    module's session launched this process's JVM with 512 MB (it ran out of memory in `toArrow` and
    hung): the entity frame goes to Spark as Arrow, the join runs in Spark, only the result comes
    back (as Arrow)."""
    embedded, spark, _ = repos
    from pyspark.sql import SparkSession

    entities = _large_entity_frame(tiny, 100_000, seed=2)
    before = entities.copy()
    features = spark.get_feature_service("health_risk_v1")
    ours = spark.get_historical_features(entities, features=features).to_df()
    runtime = SparkSession.getActiveSession()._jvm.java.lang.Runtime.getRuntime()
    assert runtime.maxMemory() == 1 << 30  # the JVM's heap, whichever earlier session launched it
    reference = embedded.get_historical_features(entities, features=embedded.get_feature_service("health_risk_v1"))
    pd.testing.assert_frame_equal(entities, before)
    _frames_equal(ours, reference.to_df())


def test_a_driver_out_of_memory_is_a_clear_error_and_the_next_session_works(repos, tiny):
    """The same 100k-row frame through a 512 MB driver (a second YAML of the repository): its JVM
    runs out of memory collecting the result. PySpark alone would wait for it for ever; here the JVM
    exits, the error names the setting to raise, and the next join launches a JVM of its own."""
    from feast import FeatureStore
    from pyspark.sql import SparkSession

    from healthmate_features.errors import ConfigError

    _, spark, settings = repos
    small_yaml = settings.repo_path / "feature_store.small.yaml"
    yaml = (settings.repo_path / "feature_store.yaml").read_text()
    small_yaml.write_text(yaml.replace("spark.driver.memory: 1g", "spark.driver.memory: 512m"))
    small = FeatureStore(repo_path=str(settings.repo_path), fs_yaml_file=small_yaml)
    if SparkSession.getActiveSession() is not None:
        SparkSession.getActiveSession().stop()
    entities = _large_entity_frame(tiny, 400_000, seed=4)
    with pytest.raises(ConfigError, match=r"ran out of memory \(spark.driver.memory 512m\).*HM_SPARK_DRIVER_MEMORY"):
        small.get_historical_features(entities, features=small.get_feature_service("health_risk_v1")).to_df()
    entities = _entity_frame(tiny, 50, seed=5)
    again = spark.get_historical_features(entities, features=spark.get_feature_service("health_risk_v1")).to_df()
    assert len(again) == len(entities)
    assert SparkSession.getActiveSession()._jvm.java.lang.Runtime.getRuntime().maxMemory() == 1 << 30


def test_feasts_own_spark_store_loses_the_entity_order_and_rewrites_the_callers_frame(repos, tiny):
    """What the subclass fixes, shown on Feast's SparkOfflineStore itself (same session, same data):
    the same rows, in another order, and the caller's timestamps replaced (here naive -> UTC)."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkOfflineStore

    _, spark, _ = repos
    entities = _entity_frame(tiny, 300, seed=3)
    entities["event_timestamp"] = entities["event_timestamp"].dt.tz_localize(None)  # naive: UTC for both stores
    view = spark.get_feature_view("health_daily")
    refs = [f"health_daily:{field.name}" for field in view.features]
    ours = spark.get_historical_features(entities, refs).to_df()
    assert ours["user_id"].tolist() == entities["user_id"].tolist()
    feasts_input = entities.copy()
    feasts = (
        SparkOfflineStore.get_historical_features(
            spark.config, [view], refs, feasts_input, spark.registry, spark.project
        )
        .to_spark_df()
        .toPandas()
    )
    assert feasts_input["event_timestamp"].dt.tz is not None  # Feast converted the caller's column in place
    assert feasts["user_id"].tolist() != entities["user_id"].tolist()  # rows in shuffle order
    key = ["user_id", "event_timestamp", "label"]
    ours_sorted = ours.assign(event_timestamp=pd.to_datetime(ours["event_timestamp"], utc=True)).sort_values(key)
    feasts_sorted = feasts.assign(event_timestamp=pd.to_datetime(feasts["event_timestamp"], utc=True)).sort_values(key)
    _frames_equal(ours_sorted.reset_index(drop=True), feasts_sorted[list(ours.columns)].reset_index(drop=True))


def test_materialization_windows_are_utc_whatever_the_sessions_time_zone(repos):
    """Feast writes a window's bounds as UTC wall-clock strings that Spark reads in the session's
    time zone: under +05:30 a row at the window's end fell out of it (Feast's own store below).
    Our store runs its queries in UTC."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkOfflineStore
    from pyspark.sql import SparkSession

    _, spark, _ = repos
    view = spark.get_feature_view("health_daily")
    names = [field.name for field in view.features]
    ours = spark.get_historical_features(  # starts the session when this test runs alone
        pd.DataFrame({"user_id": [1], "event_timestamp": [pd.Timestamp("2025-03-01", tz="UTC")]}),
        ["health_daily:steps_total"],
    ).to_df()
    assert len(ours) == 1
    table = read_kms_parquet(repo_keyring(str(spark.config.repo_path)), view.batch_source.path).to_pandas()
    end = table.loc[table.user_id == 1, "event_timestamp"].max().to_pydatetime()  # user 1's last row, exactly
    args = (spark.config, view.batch_source, ["user_id"], names, "event_timestamp", None, end - view.ttl, end)

    session = SparkSession.getActiveSession()
    session.conf.set("spark.sql.session.timeZone", "Asia/Kolkata")
    feasts = SparkOfflineStore.pull_latest_from_table_or_query(*args).to_spark_df().toPandas()
    ours = offline_store_of(spark).pull_latest_from_table_or_query(*args).to_arrow().to_pandas()
    assert session.conf.get("spark.sql.session.timeZone") == "UTC"
    assert pd.Timestamp(ours.loc[ours.user_id == 1, "event_timestamp"].item()) == pd.Timestamp(end)
    feasts_time = pd.Timestamp(feasts.loc[feasts.user_id == 1, "event_timestamp"].item()).tz_localize("Asia/Kolkata")
    assert feasts_time < pd.Timestamp(end)  # the window's last row was cut off


def test_entity_frames_reach_spark_as_utc_microseconds_in_order_or_a_clear_error(repos):
    from pyspark.sql import SparkSession

    from healthmate_features.errors import EntityFrameError
    from healthmate_features.stores.spark_offline import ROW, spark_entity_frame, spark_session

    spark_session(repos[1].config)  # the store's session (started here when this test runs alone)
    session = SparkSession.getActiveSession()
    frame = pd.DataFrame(
        {"user_id": [2, 1, 2], "event_timestamp": ["2025-01-02T01:00:00+01:00", "2025-01-01", "2025-01-03"]}
    )
    table = spark_entity_frame(session, frame).toArrow()
    assert table.column_names == ["user_id", "event_timestamp", ROW]
    assert table.column(ROW).to_pylist() == [0, 1, 2]
    assert [t.isoformat() for t in table.column("event_timestamp").to_pylist()] == [
        "2025-01-02T00:00:00+00:00",
        "2025-01-01T00:00:00+00:00",
        "2025-01-03T00:00:00+00:00",
    ]
    naive = pd.DataFrame({"user_id": [1], "event_timestamp": [pd.Timestamp("2025-01-01 12:00")]})
    assert spark_entity_frame(session, naive).toArrow().column("event_timestamp")[0].as_py().hour == 12  # naive = UTC
    fine = pd.DataFrame({"user_id": [1, 1], "event_timestamp": pd.to_datetime([1, 2_000], unit="ns", utc=True)})
    with pytest.raises(EntityFrameError, match="'event_timestamp' has 1 of 2 times finer than a microsecond"):
        spark_entity_frame(session, fine)
    with pytest.raises(EntityFrameError, match="has a column named '__hm_row'"):
        spark_entity_frame(session, naive.assign(__hm_row=1))


def test_a_pushed_batch_is_appended_from_memory_encrypted_and_an_empty_one_writes_nothing(repos, tmp_path, capfd):
    """Feast's offline_write_batch wrote the batch to a plaintext Parquet file in the temporary
    directory and printed its name; ours sends it to Spark as Arrow, appended under encryption."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
    from pyspark.sql import SparkSession

    _, spark, settings = repos
    keyring = repo_keyring(str(settings.repo_path))
    daily = read_kms_parquet(keyring, settings.repo_path / "data" / "spark_features" / "health_daily.parquet")
    table_dir = tmp_path / "health_daily_pushed"
    table_dir.mkdir()
    write_kms_parquet(keyring, daily.slice(0, 5), table_dir / "part-0.parquet")
    view = spark.get_feature_view("health_daily")
    view.batch_source = SparkSource(
        name="pushed_copy", path=str(table_dir), file_format="parquet", timestamp_field="event_timestamp"
    )
    offline = offline_store_of(spark)
    capfd.readouterr()
    offline.offline_write_batch(spark.config, view, daily.slice(5, 0), None)
    assert sorted(p.name for p in table_dir.iterdir()) == ["part-0.parquet"]  # the empty batch wrote nothing
    written = []
    offline.offline_write_batch(spark.config, view, daily.slice(5, 3), written.append)
    assert written == [3] and capfd.readouterr().out == ""  # Feast printed its temporary file's name
    files = [p for p in table_dir.glob("*.parquet") if p.name != "part-0.parquet"]
    assert files and all(p.read_bytes()[-4:] == b"PARE" for p in files)  # encrypted footers
    back = read_kms_parquet(keyring, table_dir).sort_by([("user_id", "ascending"), ("event_timestamp", "ascending")])
    expected = daily.slice(0, 8).sort_by([("user_id", "ascending"), ("event_timestamp", "ascending")])
    assert back.num_rows == 8 and back.column("user_id").to_pylist() == expected.column("user_id").to_pylist()
    assert SparkSession.getActiveSession().read.parquet(str(table_dir)).count() == 8
    with pytest.raises(EntityFrameError, match=r"feature view 'health_daily' has the columns \['user_id'\]"):
        offline.offline_write_batch(spark.config, view, daily.select(["user_id"]), None)
