"""Spark (PySpark 4, parquet-mr) and this package read each other's encrypted Parquet
(crypto.spark_kms): pyarrow writes, Spark reads the same values; Spark writes, only encrypted
files reach the disk, and the keyring reads them.

Skipped, with the reason, when PySpark (the spark extra) or a JDK's javac is missing."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.crypto.spark_kms import (
    kms_parquet_key_id,
    read_kms_parquet,
    spark_encryption_conf,
    spark_kms_jar,
    write_kms_parquet,
)

pytestmark = [
    pytest.mark.spark,
    pytest.mark.slow,
    # PySpark 4.3's createDataFrame from Arrow leaves its py4j data socket to the garbage collector.
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"),
]

TABLE = pa.table(
    {
        "user_id": pa.array([1, 2, 3], pa.int64()),
        "note": pa.array(["asthma", None, "hypertension"]),
        "steps_7d_mean": pa.array([10.5, None, 3.25]),
        "event_timestamp": pa.array(
            [datetime(2024, 1, d, 12, tzinfo=timezone.utc) for d in (1, 2, 3)], pa.timestamp("us", tz="UTC")
        ),
    }
)


@pytest.fixture(scope="module")
def spark_env(tmp_path_factory):
    """(keyring, SparkSession at local[1] under the keyring's encryption settings)."""
    pyspark_sql = pytest.importorskip(
        "pyspark.sql", reason="PySpark is not installed; install the spark extra: pip install -e '.[spark]'"
    )
    if shutil.which("javac") is None:
        pytest.skip("javac (a JDK 17+) is not on PATH; Spark's Parquet KMS client class is compiled with it")
    root = tmp_path_factory.mktemp("spark")
    (root / "feature_store.yaml").write_text("project: x\n")
    keyring = backend_for(Settings.from_env(root, profile="embedded")).keyring()
    builder = pyspark_sql.SparkSession.builder.master("local[1]").appName("healthmate-test-spark-parquet")
    settings = {"spark.driver.memory": "512m", "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "1"}
    settings.update(spark_encryption_conf(keyring, jar=spark_kms_jar(root / "jars")))
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    yield keyring, spark
    spark.stop()


def test_spark_reads_what_the_keyring_wrote(spark_env, tmp_path):
    keyring, spark = spark_env
    path = tmp_path / "features.parquet"
    write_kms_parquet(keyring, TABLE, path)
    assert b"hypertension" not in path.read_bytes()
    assert spark.read.parquet(str(path)).toArrow().to_pylist() == TABLE.to_pylist()


def test_spark_writes_only_encrypted_files_the_keyring_reads(spark_env, tmp_path):
    keyring, spark = spark_env
    out = tmp_path / "spark_out"
    spark.createDataFrame(TABLE).coalesce(1).write.parquet(str(out))
    files = sorted(out.glob("*.parquet"))
    assert files
    for file in files:
        data = file.read_bytes()
        assert data.endswith(b"PARE") and b"hypertension" not in data
        assert kms_parquet_key_id(file) == keyring.active().key_id
        with pytest.raises(OSError, match="no decryption"):
            pq.read_table(file)
    assert read_kms_parquet(keyring, out).to_pylist() == TABLE.to_pylist()
