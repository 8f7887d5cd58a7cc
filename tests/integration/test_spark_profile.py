"""The spark profile (backends.spark): ingest into the warehouse with the same validation and rejects,
the catalog built as Spark SQL on local[2] equal to DuckDB's build of the same raw data, with the
driver's heap at 512 MB, every file in the warehouse encrypted.

The Spark build runs in a child process (`healthmate-features`' library, HM_* settings): a JVM's
heap is fixed when it starts, so a bounded driver needs a process of its own. Skipped, with the
reason, without PySpark (the spark extra) or a JDK's javac; `make test` under CI=true installs both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.crypto.spark_kms import kms_parquet_key_id, read_kms_parquet
from healthmate_features.demo import demo_user
from healthmate_features.features.build import build_features
from healthmate_features.features.catalog import FEATURE_TABLES
from healthmate_features.raw.generate import generate
from healthmate_features.raw.ingest import ingest_raw
from tests.helpers.files import read_csv, read_frame

from ..helpers import repos
from ..helpers.servers import running, spare_port
from ..helpers.settings import settings_for_dsn

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

DRIVER_MEMORY_MB = 512
BUILD = """
import json, sys
from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.demo import demo_user
from healthmate_features.features.build import build_features

settings = Settings.from_env()
counts = build_features(sys.argv[1], settings)
backend = backend_for(settings)
lo, hi = backend.feature_time_range(list(counts))
jvm = backend.spark().sparkContext._jvm
user = demo_user(settings)
print(json.dumps({
    "erasable": backend.erase_feature_rows(list(counts), user, count_only=True),
    "counts": dict(counts), "incremental": counts.incremental, "lo": lo.isoformat(), "hi": hi.isoformat(),
    "demo_user": user, "heap": jvm.java.lang.Runtime.getRuntime().maxMemory(),
    "master": backend.spark().sparkContext.master,
}))
"""


@pytest.fixture(scope="module")
def spark_available():
    pytest.importorskip(
        "pyspark",
        reason="PySpark is not installed; install the spark extra: pip install -c requirements.lock -e '.[spark]'",
    )
    if shutil.which("javac") is None:
        pytest.skip("javac (a JDK 17+) is not on PATH; Spark's Parquet KMS client class is compiled with it")


def _spark_settings(repo, dsn: str, url: str, prefix: str) -> Settings:
    return replace(
        settings_for_dsn(dsn, repo),
        profile="spark",
        spark_master="local[2]",
        spark_driver_memory=f"{DRIVER_MEMORY_MB}m",
        redis_url=url,
        redis_prefix=prefix,
    )


@pytest.fixture(scope="module")
def built(spark_available, tmp_path_factory, fresh_postgres_database, fresh_redis_prefix):
    """(embedded settings, spark settings, the Spark build's report): the same generated raw data (300 users,
    60 days) built by DuckDB and, in a child process with a 512 MB driver, by Spark on local[2]."""
    root = tmp_path_factory.mktemp("spark_profile")
    raw = root / "raw"
    generate(raw, users=300, days=60, seed=11, progress=False)
    embedded = Settings.from_env(repos.copy_repo(root / "embedded"), profile="embedded")
    ingest_raw(raw, embedded)
    build_features(raw, embedded)
    with fresh_postgres_database() as dsn, fresh_redis_prefix() as (url, prefix):
        spark = _spark_settings(repos.copy_repo(root / "spark"), dsn, url, prefix)
        ingest_raw(raw, spark)
        env = {**os.environ, **spark.to_env()}
        done = subprocess.run(
            [sys.executable, "-c", BUILD, str(raw)], env=env, capture_output=True, text=True, timeout=1200
        )
        assert done.returncode == 0, done.stderr[-4000:]
        yield embedded, spark, json.loads(done.stdout.strip().splitlines()[-1])


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)


@pytest.mark.parametrize("table", list(FEATURE_TABLES))
def test_spark_builds_the_tables_duckdb_builds(built, table):
    embedded, spark, _ = built
    ours = _sorted(read_frame(embedded, embedded.features_dir / f"{table}.parquet"))
    theirs = _sorted(
        read_kms_parquet(backend_for(spark).keyring(), spark.spark_warehouse_path / "features" / table).to_pandas()
    )
    assert len(ours) > 0
    assert list(theirs.columns) == list(ours.columns)
    assert len(theirs) == len(ours)
    pd.testing.assert_frame_equal(theirs[["user_id", "event_timestamp"]], ours[["user_id", "event_timestamp"]])
    for column in ours.columns[2:]:
        a, b = ours[column], theirs[column]
        assert a.dtype == b.dtype, column
        assert (a.isna() == b.isna()).all(), column
        if a.dtype.kind == "f":
            assert np.allclose(b, a, rtol=1e-9, atol=0, equal_nan=True), column
        else:
            assert (a[a.notna()] == b[a.notna()]).all(), column


def test_the_build_ran_with_a_512_mb_driver_and_reads_back_through_spark(built):
    embedded, _, report = built
    assert report["heap"] <= DRIVER_MEMORY_MB * 1024 * 1024
    assert report["incremental"] is False  # the spark profile always rebuilds (README "Scaling out")
    backend = backend_for(embedded)
    assert report["counts"] == {t: len(read_frame(embedded, backend.feature_table_label(t))) for t in FEATURE_TABLES}
    lo, hi = backend.feature_time_range(list(FEATURE_TABLES))
    assert (report["lo"], report["hi"]) == (lo.isoformat(), hi.isoformat())
    assert report["demo_user"] == demo_user(embedded)
    # erasure's count of one person's rows (erase --verify) finds what the embedded profile finds
    assert report["erasable"] == {
        t: n
        for t, n in backend.erase_feature_rows(list(FEATURE_TABLES), report["demo_user"], count_only=True).items()
        if t in FEATURE_TABLES
    }
    assert sum(report["erasable"].values()) > 0


def test_every_file_in_the_warehouse_is_encrypted(built):
    _, spark, _ = built
    files = [p for p in spark.spark_warehouse_path.rglob("*.parquet")]
    assert len(files) >= len(FEATURE_TABLES) + 3
    active = backend_for(spark).keyring().active().key_id
    for file in files:
        assert kms_parquet_key_id(file) == active, file
    # the push source's table exists, empty, for Feast's source checks (features.pushed)
    pushed = read_kms_parquet(backend_for(spark).keyring(), spark.spark_warehouse_path / "features" / "health_pushed")
    assert pushed.num_rows == 0 and pushed.schema.names == [
        "user_id",
        "event_timestamp",
        "heart_rate_bpm",
        "steps_today",
    ]


# Feast warns on every SparkSource it builds (here: reading the registry) that the API is "experimental".
@pytest.mark.filterwarnings("ignore:The spark data source API is an experimental feature:RuntimeWarning")
def test_apply_as_its_own_command_registers_the_definitions_over_the_encrypted_warehouse(built):
    """`healthmate-features apply` in a process with no Spark session yet (as a user runs it after
    build-features): Feast's source checks and the push table's empty batch run on a session that
    decrypts. Feast's `offline_write_batch` started a plain session, which could not read the
    encrypted health_pushed table ("Unable to find table")."""
    from healthmate_features.features.pushed import PUSHED_TABLE, TODAY_VIEW
    from healthmate_features.stores.feature_store import open_feature_store

    _, spark, _ = built
    cli = os.path.join(os.path.dirname(sys.executable), "healthmate-features")
    done = subprocess.run(
        [cli, "apply", "--quiet"], env={**os.environ, **spark.to_env()}, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert TODAY_VIEW in {view.name for view in open_feature_store(spark).list_feature_views()}
    pushed = read_kms_parquet(backend_for(spark).keyring(), spark.spark_warehouse_path / "features" / PUSHED_TABLE)
    assert pushed.num_rows == 0


def test_bad_rows_land_in_the_rejects_with_their_reason_and_only_accepted_rows_in_the_warehouse(
    spark_available, tmp_path, pg_dsn, redis_url, tiny
):
    url, prefix = redis_url
    settings = _spark_settings(repos.copy_repo(tmp_path / "repo"), pg_dsn, url, prefix)
    tables = tiny.raw_tables()
    readings = tables["health_readings"]
    readings["value"] = readings["value"].astype(object)
    readings.loc[0, "value"] = 900.0  # a resting heart rate no one has
    readings.loc[1, "user_id"] = 99  # no such user
    raw = tiny.write_raw(tmp_path / "raw", tables)
    reports, loaded = ingest_raw(raw, settings)
    report = {r.table: r for r in reports}["health_readings"]
    assert (report.read, report.rejected, report.accepted) == (len(readings), 2, len(readings) - 2)
    rejects = read_csv(settings, settings.ingested_dir / "health_readings.rejects.csv", dtype=str)
    assert sorted(rejects["_row"]) == ["0", "1"]
    reasons = " | ".join(rejects["_reason"])
    assert "resting_heart_rate value 900.0 is physically impossible" in reasons
    assert "user_id 99 is not in users" in reasons
    assert loaded["health_readings"] == len(readings) - 2
    stored = read_kms_parquet(
        backend_for(settings).keyring(), settings.spark_warehouse_path / "raw" / "health_readings"
    )
    assert stored.num_rows == len(readings) - 2
    assert 99 not in set(stored.column("user_id").to_pylist())
    manifest, where, _ = backend_for(settings).loaded_ingest(raw)
    assert manifest["loaded_rows"] == loaded and "Spark warehouse" in where


@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
@pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning")
def test_a_session_started_with_other_keys_is_started_again_with_these(spark_available, tmp_path):
    """One process, two repositories (two keyrings): the second session encrypts and decrypts with its own keys."""
    import pyarrow as pa

    from healthmate_features.backends.spark_session import spark_session
    from healthmate_features.crypto.spark_kms import write_kms_parquet

    written = {}
    for name in ("first", "second"):
        repo = repos.copy_repo(tmp_path / name)
        settings = Settings.from_env(repo, profile="embedded", spark_master="local[1]", spark_driver_memory="512m")
        keyring = backend_for(settings).keyring()
        session = spark_session(settings, keyring)
        session.range(3).write.parquet(str(repo / "out"))
        write_kms_parquet(keyring, pa.table({"a": [1, 2]}), repo / "in.parquet")
        assert session.read.parquet(str(repo / "in.parquet")).count() == 2
        assert kms_parquet_key_id(next((repo / "out").glob("*.parquet"))) == keyring.active().key_id
        written[name] = (keyring, repo / "out", session)
    assert written["first"][2] is not written["second"][2]
    for keyring, out, _ in written.values():
        assert read_kms_parquet(keyring, out).num_rows == 3
    written["second"][2].stop()


@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
@pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning")
def test_a_session_asking_for_another_driver_memory_gets_a_jvm_with_it(spark_available, tmp_path):
    """Spark keeps the first session's JVM for the life of the process, whatever later builders ask
    for: the factory launches a new JVM when the running one's heap is not HM_SPARK_DRIVER_MEMORY,
    and keeps it when it is."""
    from pyspark import SparkContext

    from healthmate_features.backends.spark_session import spark_session

    repo = repos.copy_repo(tmp_path / "repo")
    heaps, gateways = [], []
    for memory in ("512m", "768m", "768m"):
        settings = Settings.from_env(repo, profile="embedded", spark_master="local[1]", spark_driver_memory=memory)
        session = spark_session(settings, backend_for(settings).keyring())
        assert session.range(5).count() == 5
        heaps.append(session._jvm.java.lang.Runtime.getRuntime().maxMemory() >> 20)
        gateways.append(SparkContext._gateway)
    assert heaps == [512, 768, 768]
    assert gateways[0] is not gateways[1] and gateways[1] is gateways[2]
    session.stop()


@pytest.fixture
def standalone_cluster(spark_available, tmp_path):
    """`spark://127.0.0.1:<port>`: a Spark standalone master and one worker (2 cores, 1 GB), started
    with Spark's own launcher (`spark-class`, as `start-master.sh` and `start-worker.sh` run it) on
    spare loopback ports, stopped afterwards."""
    import pyspark

    spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
    port, ui, worker_ui = spare_port(), spare_port(), spare_port()
    master = f"spark://127.0.0.1:{port}"
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_WORKER_DIR": str(tmp_path / "work")}
    with (
        running(
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(ui),
            ],
            cwd=tmp_path,
            ready=f"http://127.0.0.1:{ui}/json/",
            log=tmp_path / "master.log",
            env=env,
        ),
        running(
            [
                spark_class,
                "org.apache.spark.deploy.worker.Worker",
                master,
                "--host",
                "127.0.0.1",
                "--cores",
                "2",
                "--memory",
                "1g",
                "--webui-port",
                str(worker_ui),
            ],
            cwd=tmp_path,
            ready=f"http://127.0.0.1:{worker_ui}/json/",
            log=tmp_path / "worker.log",
            env=env,
        ),
    ):
        deadline = time.monotonic() + 60
        while httpx.get(f"http://127.0.0.1:{ui}/json/", timeout=5).json().get("aliveworkers", 0) < 1:
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-4000:]
            time.sleep(0.5)
        yield master


def test_a_standalone_cluster_builds_the_tables_local_mode_builds(built, standalone_cluster, tmp_path):
    """HM_SPARK_MASTER=spark://...: the executors run in the worker's own JVMs (the KMS client jar on
    their class path, this interpreter for their Python) and build the same tables as local[2]."""
    embedded, spark, _ = built
    raw = tmp_path / "raw"
    generate(raw, users=300, days=60, seed=11, progress=False)  # the `built` fixture's raw data
    cluster = replace(spark, spark_master=standalone_cluster, spark_warehouse=str(tmp_path / "warehouse"))
    ingest_raw(raw, cluster)
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(raw)],
        env={**os.environ, **cluster.to_env()},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["master"] == standalone_cluster
    keyring = backend_for(cluster).keyring()
    for table in FEATURE_TABLES:
        local = _sorted(read_kms_parquet(keyring, spark.spark_warehouse_path / "features" / table).to_pandas())
        remote = _sorted(read_kms_parquet(keyring, cluster.spark_warehouse_path / "features" / table).to_pandas())
        assert report["counts"][table] == len(local) > 0, table
        pd.testing.assert_frame_equal(remote, local, check_exact=False, rtol=1e-12)
