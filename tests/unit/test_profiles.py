"""Profile selection and configuration, and unreachable servers: none of these needs a server."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import replace

import pytest
from click.testing import CliRunner

from healthmate_features.backends import backend_for, postgres
from healthmate_features.backends import redis as hm_redis
from healthmate_features.cli import main
from healthmate_features.config import Settings
from healthmate_features.errors import ConfigError, ServiceUnavailableError
from healthmate_features.features import definitions as repo
from healthmate_features.features.build import build_features
from healthmate_features.raw.ingest import ingest_raw
from healthmate_features.stores import feature_store as store


def feast_config(settings: Settings):
    return backend_for(settings).feast_config()


CLOSED = 1  # nothing listens on port 1: connection refused at once


@pytest.fixture
def production(tmp_path, copy_repo):
    """production(**overrides): production settings of a repository copy with the built-in
    localhost defaults (whatever HM_* says)."""

    def make(**overrides) -> Settings:
        return Settings(repo_path=copy_repo(tmp_path / "repo"), profile="production", **overrides)

    return make


@pytest.fixture
def clean_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("HM_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_production_yaml_is_filled_from_settings_with_localhost_defaults(tmp_path, clean_env, copy_repo):
    config = feast_config(Settings.from_env(repo_path=copy_repo(tmp_path / "repo"), profile="production"))
    assert (config.offline_store.host, config.offline_store.port, config.offline_store.sslmode) == (
        "127.0.0.1",
        5432,
        "prefer",
    )
    assert config.offline_store.db_schema == "healthmate" and config.offline_store.password == ""
    assert config.online_store.connection_string == "127.0.0.1:6379,db=0,socket_connect_timeout=5,socket_timeout=30"
    assert config.online_store.key_ttl_seconds == 14 * 24 * 3600
    assert (
        config.registry.path
        == "postgresql+psycopg://postgres:@127.0.0.1:5432/healthmate?sslmode=prefer&connect_timeout=5"
    )
    assert (
        config.materialization_config.pull_latest_features
        and config.materialization_config.online_write_batch_size == 5000
    )


def test_secrets_come_from_the_environment_and_are_quoted_where_they_go(tmp_path, clean_env, copy_repo, repo_root):
    clean_env.setenv("HM_PG_PASSWORD", 'p@ss:w/rd"#')
    clean_env.setenv("HM_REDIS_URL", "rediss://app:s3cret@cache.internal:6380/3")
    clean_env.setenv("HM_CONNECT_TIMEOUT_S", "2.5")
    config = feast_config(Settings.from_env(repo_path=copy_repo(tmp_path / "repo"), profile="production"))
    assert config.offline_store.password == 'p@ss:w/rd"#'
    assert "postgres:p%40ss%3Aw%2Frd%22%23@" in config.registry.path and "connect_timeout=3" in config.registry.path
    assert config.online_store.connection_string == (
        "cache.internal:6380,db=3,username=app,password=s3cret,ssl=true,ssl_cert_reqs=required,ssl_check_hostname=true,"
        "socket_connect_timeout=2.5,socket_timeout=30"
    )
    text = (repo_root / "feature_store.production.yaml").read_text()
    assert "s3cret" not in text and 'password: "${HM_PG_PASSWORD}"' in text


def test_tls_settings_reach_every_client(tmp_path, clean_env, copy_repo):
    """HM_PG_SSL* reach psycopg, Feast's offline store and its registry URL (quoted); HM_REDIS_CA_CERT
    reaches Feast's Redis connection string and the Celery broker."""
    clean_env.setenv("HM_PG_SSLMODE", "verify-full")
    clean_env.setenv("HM_PG_SSLROOTCERT", "/etc/hm/ca dir/root.pem")
    clean_env.setenv("HM_PG_SSLCERT", "/etc/hm/client.pem")
    clean_env.setenv("HM_PG_SSLKEY", "/etc/hm/client.key")
    clean_env.setenv("HM_REDIS_URL", "rediss://app:pw@cache.internal:6380/0")
    clean_env.setenv("HM_REDIS_CA_CERT", "/etc/hm/redis-ca.pem")
    settings = Settings.from_env(repo_path=copy_repo(tmp_path / "repo"), profile="production")
    assert postgres.ssl_options(settings) == {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/hm/ca dir/root.pem",
        "sslcert": "/etc/hm/client.pem",
        "sslkey": "/etc/hm/client.key",
    }
    config = feast_config(settings)
    offline = config.offline_store
    assert (offline.sslmode, offline.sslrootcert_path, offline.sslcert_path, offline.sslkey_path) == (
        "verify-full",
        "/etc/hm/ca dir/root.pem",
        "/etc/hm/client.pem",
        "/etc/hm/client.key",
    )
    assert config.registry.path.endswith(
        "?sslmode=verify-full&sslrootcert=%2Fetc%2Fhm%2Fca%20dir%2Froot.pem&sslcert=%2Fetc%2Fhm%2Fclient.pem"
        "&sslkey=%2Fetc%2Fhm%2Fclient.key&connect_timeout=5"
    )
    assert ",ssl=true,ssl_cert_reqs=required,ssl_check_hostname=true,ssl_ca_certs=/etc/hm/redis-ca.pem," in (
        config.online_store.connection_string
    )
    broker = backend_for(settings).broker()
    assert broker.use_ssl == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": "/etc/hm/redis-ca.pem",
    }


def test_bad_tls_settings_are_config_errors(tmp_path, clean_env):
    clean_env.setenv("HM_PG_SSLMODE", "verify_full")
    with pytest.raises(ConfigError, match="HM_PG_SSLMODE='verify_full' is not a libpq sslmode; use one of disable"):
        Settings.from_env(repo_path=tmp_path)
    clean_env.delenv("HM_PG_SSLMODE")
    settings = Settings.from_env(repo_path=tmp_path, redis_ca_cert="/etc/hm/ca.pem")
    with pytest.raises(ConfigError, match=r"HM_REDIS_CA_CERT is set but HM_REDIS_URL is not a rediss://"):
        hm_redis.connect(settings)


def test_bad_redis_url_and_unknown_placeholder_are_config_errors(production):
    settings = production(redis_url="http://127.0.0.1:6379")
    with pytest.raises(ConfigError, match="HM_REDIS_URL 'http://127.0.0.1:6379' is not a redis://"):
        feast_config(settings)
    yaml_path = settings.repo_path / "feature_store.production.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("${HM_PG_HOST}", "${HM_PG_HOSTNAME}"))
    with pytest.raises(ConfigError, match=r"uses \$\{HM_PG_HOSTNAME\}, which is not a setting"):
        feast_config(replace(settings, redis_url="redis://127.0.0.1:6379/0"))


def test_env_command_prints_what_the_plain_feast_cli_needs(clean_env):
    clean_env.setenv("HM_PG_PASSWORD", "it's")
    out = CliRunner().invoke(main, ["env"]).output
    assert "export HM_PROFILE=production" in out
    assert "export HM_PG_PASSWORD='it'\"'\"'s'" in out and "export HM_FEAST_REDIS=" in out


def test_sources_follow_the_profile_under_the_same_names(clean_env):
    embedded = repo.source("health_daily")
    assert type(embedded).__name__ == "FileSource" and embedded.path == "data/features/health_daily.parquet"
    clean_env.setenv("HM_PROFILE", "production")  # what `feast apply` sees (store.apply exports it)
    clean_env.setenv("HM_PG_SCHEMA", "features")
    prod = repo.source("health_daily")
    assert type(prod).__name__ == "PostgreSQLSource" and prod.get_table_query_string() == "features.health_daily"
    assert prod.name == embedded.name == "health_daily_source" and prod.timestamp_field == "event_timestamp"


def _fails_fast(fn, match: str, limit_s: float) -> None:
    start = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match=match):
        fn()
    assert time.monotonic() - start < limit_s


def test_unreachable_postgres_is_a_clear_error_within_the_timeout(tmp_path, tiny, production):
    settings = production(pg_port=CLOSED, connect_timeout_s=2)
    expected = (
        r"PostgreSQL at 127.0.0.1:1 \(database healthmate, user postgres; HM_PG_\*\) is unreachable"
        r".*docker compose up -d postgres"
    )
    _fails_fast(lambda: store.open_feature_store(settings), expected, 5)
    _fails_fast(lambda: store.online_features(settings, 1), expected, 5)
    _fails_fast(lambda: build_features(tmp_path, settings), expected, 5)
    raw = tiny.write_raw(tmp_path / "raw")
    _fails_fast(lambda: ingest_raw(raw, settings), expected, 5)  # before validating
    assert not settings.ingested_dir.exists()


@pytest.fixture
def silent_port():
    """A port that accepts TCP connections and never answers: a hung server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


@pytest.mark.slow
def test_a_server_that_never_answers_times_out_instead_of_hanging(silent_port, production):
    settings = production(pg_port=silent_port, redis_url=f"redis://127.0.0.1:{silent_port}/0", connect_timeout_s=2)
    _fails_fast(lambda: postgres.connect(settings), f"PostgreSQL at 127.0.0.1:{silent_port} .* within 2 s", 6)
    _fails_fast(lambda: hm_redis.check_redis(settings), f"Redis at 127.0.0.1:{silent_port}/0 .* within 2 s", 6)


def test_cli_reports_an_unreachable_server_as_an_error_message(clean_env, production):
    settings = production()
    clean_env.setenv("HM_REPO_PATH", str(settings.repo_path))
    clean_env.setenv("HM_PG_PORT", str(CLOSED))
    start = time.monotonic()
    result = CliRunner().invoke(main, ["online", "--profile", "production", "--user-id", "1"])
    assert result.exit_code == 1 and time.monotonic() - start < 10
    assert "Error: PostgreSQL at 127.0.0.1:1" in result.output and "Traceback" not in result.output


def test_spark_yaml_is_filled_from_settings_and_shares_production_servers(tmp_path, clean_env, copy_repo):
    pytest.importorskip(
        "pyspark", reason="PySpark is not installed; install the spark extra: pip install -e '.[spark]'"
    )
    clean_env.setenv("HM_SPARK_MASTER", "spark://master.internal:7077")
    clean_env.setenv("HM_SPARK_DRIVER_MEMORY", "3g")
    settings = Settings.from_env(repo_path=copy_repo(tmp_path / "repo"), profile="spark")
    assert settings.spark_warehouse_path == settings.repo_path / "data" / "spark" / "warehouse"
    backend = backend_for(settings)
    config = backend.feast_config()
    production = feast_config(replace(settings, profile="production"))
    assert config.offline_store.spark_conf == {
        "spark.master": "spark://master.internal:7077",
        "spark.driver.memory": "3g",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.warehouse.dir": str(settings.spark_warehouse_path),
        "spark.ui.showConsoleProgress": "false",
        "spark.log.level": "ERROR",
    }
    assert config.offline_store.type == "healthmate_features.stores.spark_offline.HealthmateSparkOfflineStore"
    assert config.batch_engine_config["type"] == "healthmate_features.stores.spark_engine.HealthmateSparkComputeEngine"
    assert config.batch_engine_config["spark_conf"] == config.offline_store.spark_conf
    assert config.registry.path == production.registry.path
    assert config.online_store.connection_string == production.online_store.connection_string
    assert config.online_store.profile == "spark"
    assert "parquet.encryption" not in (settings.repo_path / "feature_store.spark.yaml").read_text()
    assert backend.command("build-features --raw DIR") == "healthmate-features build-features --profile spark --raw DIR"


def test_spark_sources_follow_the_profile_under_the_same_names(clean_env, tmp_path):
    clean_env.setenv("HM_PROFILE", "spark")
    clean_env.setenv("HM_SPARK_WAREHOUSE", str(tmp_path / "warehouse"))
    source = repo.source("health_daily")
    assert type(source).__name__ == "SparkSource" and source.name == "health_daily_source"
    assert source.path == str(tmp_path / "warehouse" / "features" / "health_daily")
    assert source.file_format == "parquet" and source.timestamp_field == "event_timestamp"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HM_SPARK_MASTER", "localhost:7077", "HM_SPARK_MASTER='localhost:7077' is not a Spark master; use local.2."),
        ("HM_SPARK_DRIVER_MEMORY", "lots", "HM_SPARK_DRIVER_MEMORY='lots' is not a JVM memory size; use e.g. 512m"),
        ("HM_PROFILE", "cluster", "unknown profile 'cluster' .HM_PROFILE.; use one of embedded, production, spark"),
    ],
)
def test_bad_spark_settings_are_config_errors(tmp_path, clean_env, variable, value, message):
    clean_env.setenv(variable, value)
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(repo_path=tmp_path)
