"""The spark profile's one SparkSession factory: the cluster, the driver's memory, encrypted Parquet.

`spark_session(settings, keyring)` starts (or returns the running) SparkSession on HM_SPARK_MASTER
with `session_conf`: the session time zone UTC (feature timestamps are UTC instants), the warehouse,
HM_SPARK_DRIVER_MEMORY, and crypto.spark_kms's settings, under which every Parquet file Spark
writes is encrypted under the keyring's active data key (readable by `read_kms_parquet`), every
file of `write_kms_parquet` is readable by Spark, and shuffle and spill files are encrypted too.

Static settings (the driver's memory, the class path) take effect when the JVM starts: a JVM whose
heap is not HM_SPARK_DRIVER_MEMORY is shut down and launched again (`restart_jvm_unless_it_fits`).
A running session whose data keys differ from the keyring's (a rotation since, another repository)
is stopped and started again with them.
Needs the spark extra (`pip install -e '.[spark]'`) and a JDK's javac once (the KMS client class).
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from healthmate_features.config import Settings
from healthmate_features.crypto import Keyring
from healthmate_features.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Feast warns at every SparkSource it builds and every call of its Spark store that they are "an
# experimental feature in alpha development": a command on the spark profile printed it a dozen
# times. The profile chose them knowingly (README "Scaling out"); this one message is silenced.
warnings.filterwarnings(
    "ignore", message=r"The spark (data source API|offline store) is an experimental feature", category=RuntimeWarning
)

INSTALL_HINT = "install the spark extra: pip install -c requirements.lock -e '.[spark]' (Java 17+ needed)"


def require_pyspark() -> None:
    """ConfigError naming the fix when PySpark (the spark extra) is not installed."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise ConfigError(f"the spark profile needs PySpark, which is not installed; {INSTALL_HINT}") from None


def session_conf(settings: Settings, keyring: Keyring) -> dict[str, str]:
    """The SparkSession settings of the spark profile (they hold the data keys: never log them)."""
    from healthmate_features.crypto.spark_kms import spark_encryption_conf, spark_kms_jar

    jar = spark_kms_jar(settings.data_dir / "spark" / "jars")
    local = re.fullmatch(r"local(?:\[(\d+|\*)\])?", settings.spark_master)
    threads = local.group(1) if local else None
    cores = (os.cpu_count() or 1) if threads == "*" else int(threads or 1)
    return {
        "spark.app.name": "healthmate-features",
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.warehouse.dir": str(settings.spark_warehouse_path),
        "spark.ui.showConsoleProgress": "false",
        "spark.log.level": "ERROR",  # Spark's warnings about local mode would drown the commands' own output
        # On one machine, a few shuffle partitions per core (Spark's 200 are for clusters: on local[2]
        # the per-task cost of 200 partitions times every window and join dominates a build).
        **({"spark.sql.shuffle.partitions": str(2 * cores)} if local else {}),
        **spark_encryption_conf(keyring, jar=jar),
    }


def spark_session(settings: Settings, keyring: Keyring) -> SparkSession:
    """The SparkSession of the spark profile on HM_SPARK_MASTER (started on first use, then shared).

    Side effects: may start a JVM (local[N]: the executors run in it too) and compile the Parquet KMS
    client class once into data/spark/jars. Spark Connect (`sc://`): the server holds the static
    settings (README "Scaling out"); only the session's own settings are sent."""
    require_pyspark()
    from pyspark.sql import SparkSession

    conf = session_conf(settings, keyring)
    master = settings.spark_master
    builder: Any
    if master.startswith("sc://"):
        require_spark_connect(master)
        builder = SparkSession.builder.remote(master)
        conf = {k: conf[k] for k in ("spark.sql.session.timeZone",)}
    else:
        builder = SparkSession.builder.master(master)
        conf = prepare_launch(conf)
        _stop_if_other_keys(SparkSession, conf)
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def require_spark_connect(master: str) -> None:
    """ConfigError naming the fix when PySpark's Spark Connect client (its `connect` extra: grpcio-status,
    googleapis-common-protos, zstandard) is not installed: the spark extra does not include it."""
    try:
        from pyspark.sql.connect.utils import check_dependencies

        check_dependencies()
    except ImportError as error:  # PySparkImportError is an ImportError
        raise ConfigError(
            f"HM_SPARK_MASTER {master!r} is Spark Connect, whose client is not installed ({error}); "
            "install it with pip install 'pyspark[connect]' at the lock's PySpark version, or use a "
            "spark:// or local[N] master"
        ) from None


def set_worker_python(conf: Mapping[str, str]) -> None:
    """Point the executors' Python workers at this interpreter before a session starts.

    PySpark starts them with $PYSPARK_PYTHON, else `python3` from PATH: not the interpreter
    (virtualenv) that has Feast and this package, so Feast's engine's workers failed with "No
    module named 'feast'". Side effect: sets PYSPARK_PYTHON, unless the environment names one, to
    `conf`'s `spark.pyspark.python` (on a cluster: a path on every executor), else this interpreter."""
    os.environ.setdefault("PYSPARK_PYTHON", conf.get("spark.pyspark.python", sys.executable))


def prepare_launch(conf: Mapping[str, str]) -> dict[str, str]:
    """`conf` made ready for a session started from it, and the process made ready to start it:
    the driver exits when out of memory (`with_exit_on_out_of_memory`), a dead JVM is forgotten, a
    JVM of another heap size is shut down (`restart_jvm_unless_it_fits`), the executors' Python is
    this interpreter (`set_worker_python`). Both session factories (this module's and the Spark
    offline store's) call it before `getOrCreate`."""
    forget_dead_jvm()
    conf = with_exit_on_out_of_memory(conf)
    restart_jvm_unless_it_fits(conf)
    set_worker_python(conf)
    return conf


EXIT_ON_OOM = "-XX:+ExitOnOutOfMemoryError"
DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"


def with_exit_on_out_of_memory(conf: Mapping[str, str]) -> dict[str, str]:
    """`conf` whose driver JVM exits when it runs out of memory (unless its Java options say otherwise).

    A driver thread that runs out of memory dies alone: the JVM lives on and the Python side waits
    for its answer for ever (PySpark's `toArrow` hung so). With the JVM gone, py4j's call fails at
    once and `driver_out_of_memory` says so."""
    options = conf.get(DRIVER_JAVA_OPTIONS, "")
    if "OutOfMemoryError" in options:
        return dict(conf)
    return {**conf, DRIVER_JAVA_OPTIONS: f"{options} {EXIT_ON_OOM}".strip()}


def jvm_exited(wait: float = 0.0) -> bool:
    """Whether the JVM this process launched for Spark has exited, waiting up to `wait` seconds for
    it to (its sockets close before the process ends); False when none was launched."""
    import subprocess

    from healthmate_features._feast import spark_gateway

    gateway = spark_gateway()
    if gateway is None:
        return False
    try:
        gateway.proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        return False
    return True


def forget_dead_jvm() -> None:
    """Let the next getOrCreate launch a JVM when the process's last one exited (out of memory, killed):
    PySpark would keep calling the dead one. Side effect: clears PySpark's session and context state."""
    from healthmate_features._feast import spark_forget_gateway, spark_gateway

    if not jvm_exited():
        return
    gateway = spark_gateway()
    gateway.close()
    gateway.proc.stdin.close()
    spark_forget_gateway()


def driver_out_of_memory(conf: Mapping[str, str]) -> ConfigError:
    """The error for a Spark call that failed because the driver's JVM exited (`jvm_exited`): with
    `with_exit_on_out_of_memory`, it ran out of memory, unless someone killed it."""
    memory = conf.get("spark.driver.memory", "1g, Spark's default")
    return ConfigError(
        f"the Spark driver's JVM exited: it ran out of memory (spark.driver.memory {memory}) or was killed; "
        "give it more: "
        "HM_SPARK_DRIVER_MEMORY on the spark profile, or spark.driver.memory in feature_store.yaml's "
        "offline_store.spark_conf, then run again"
    )


def restart_jvm_unless_it_fits(conf: Mapping[str, str]) -> None:
    """Make the next session's JVM have `conf`'s spark.driver.memory, whoever started this process's JVM.

    The driver's heap is fixed when PySpark launches the JVM, and every later session of the process
    runs in that JVM whatever its builder says: a session asked for with 1g ran in the 512 MB heap of
    an earlier one, ran out of memory collecting a training frame and hung for good in PySpark's
    `toArrow`. Side effect: when the process's JVM has another heap size, its session (if any) is
    stopped and the JVM shut down, so that the next getOrCreate launches one with these settings."""
    from healthmate_features._feast import spark_forget_gateway, spark_gateway

    gateway = spark_gateway()
    wanted = conf.get("spark.driver.memory")
    if gateway is None or wanted is None:
        return
    heap = gateway.jvm.java.lang.Runtime.getRuntime().maxMemory()
    if 0.9 * _jvm_bytes(wanted) <= heap <= _jvm_bytes(wanted):
        return
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        session.stop()
    gateway.shutdown()
    gateway.proc.stdin.close()  # the JVM exits when its stdin closes (PySpark's launch_gateway)
    gateway.proc.wait(timeout=60)
    spark_forget_gateway()


def _jvm_bytes(size: str) -> int:
    """Bytes of a JVM memory setting as Spark reads spark.driver.memory ("512m", "1g"; no unit: MiB)."""
    match = re.fullmatch(r"(\d+)\s*([kmgt]?)b?", size.strip().lower())
    if match is None:
        raise ConfigError(f"spark.driver.memory {size!r} is not a size; use a number with k, m, g or t, such as 2g")
    return int(match.group(1)) * 1024 ** "kmgt".index(match.group(2) or "m") * 1024


KEY_LIST = "spark.hadoop.parquet.encryption.key.list"


def _stop_if_other_keys(session_class: Any, conf: dict[str, str]) -> None:
    """Stop the process's running SparkSession when it was started without these data keys (by
    another keyring, before a key rotation, or by code that built its own session): Hadoop reads its
    settings when the SparkContext starts, so only a new context encrypts and decrypts with them."""
    running = session_class.getActiveSession()
    if running is not None and running.sparkContext.getConf().get(KEY_LIST) != conf[KEY_LIST]:
        running.stop()
