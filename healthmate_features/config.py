"""The package's one settings object: environment variables with local defaults.

Feast reads its own configuration from feature_store.yaml (embedded profile) or
feature_store.production.yaml (production profile); everything else is here. Feature code
never reads the environment: it receives a Settings.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PROFILES = ("embedded", "production", "spark")
# Settings field -> the environment variable that sets it (defaults: the field defaults).
_ENV = {
    "profile": "HM_PROFILE",
    "pg_host": "HM_PG_HOST",
    "pg_port": "HM_PG_PORT",
    "pg_user": "HM_PG_USER",
    "pg_password": "HM_PG_PASSWORD",
    "pg_database": "HM_PG_DATABASE",
    "pg_schema": "HM_PG_SCHEMA",
    "pg_sslmode": "HM_PG_SSLMODE",
    "pg_owner_user": "HM_PG_OWNER_USER",
    "pg_owner_password": "HM_PG_OWNER_PASSWORD",
    "pg_superuser": "HM_PG_SUPERUSER",
    "pg_superuser_password": "HM_PG_SUPERUSER_PASSWORD",
    "pg_sslrootcert": "HM_PG_SSLROOTCERT",
    "pg_sslcert": "HM_PG_SSLCERT",
    "pg_sslkey": "HM_PG_SSLKEY",
    "redis_url": "HM_REDIS_URL",
    "redis_ca_cert": "HM_REDIS_CA_CERT",
    "connect_timeout_s": "HM_CONNECT_TIMEOUT_S",
    "redis_timeout_s": "HM_REDIS_TIMEOUT_S",
    "online_deadline_s": "HM_ONLINE_DEADLINE_S",
    "online_max_concurrent": "HM_ONLINE_MAX_CONCURRENT",
    "metrics_public": "HM_METRICS_PUBLIC",
    "broker_url": "HM_BROKER_URL",
    "redis_prefix": "HM_REDIS_PREFIX",
    "job_lease_s": "HM_JOB_LEASE_S",
    "job_max_attempts": "HM_JOB_MAX_ATTEMPTS",
    "job_retry_backoff_s": "HM_JOB_RETRY_BACKOFF_S",
    "lock_wait_s": "HM_LOCK_WAIT_S",
    "erasure_key": "HM_ERASURE_KEY",
    "export_key": "HM_EXPORT_KEY",
    "master_key": "HM_MASTER_KEY",
    "master_key_file": "HM_MASTER_KEY_FILE",
    "max_request_bytes": "HM_MAX_REQUEST_BYTES",
    "audit_checkpoints": "HM_AUDIT_CHECKPOINTS",
    "audit_checkpoint_every": "HM_AUDIT_CHECKPOINT_EVERY",
    "audit_retention_days": "HM_AUDIT_RETENTION_DAYS",
    "freshness_objective_s": "HM_FRESHNESS_OBJECTIVE_S",
    "feature_log_flush_s": "HM_FEATURE_LOG_FLUSH_S",
    "spark_master": "HM_SPARK_MASTER",
    "spark_warehouse": "HM_SPARK_WAREHOUSE",
    "spark_driver_memory": "HM_SPARK_DRIVER_MEMORY",
}
# libpq's sslmode values, weakest first (README "Transport security").
PG_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _find_repo_root(start: Path) -> Path:
    for candidate in (start, *start.parents):
        if (candidate / "feature_store.yaml").exists():
            return candidate
    return start


@dataclass(frozen=True)
class Settings:
    """Where things live and how to reach servers. Build with `Settings.from_env()`."""

    repo_path: Path
    profile: str = "embedded"
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_user: str = "postgres"
    pg_password: str = ""
    pg_database: str = "healthmate"
    pg_schema: str = "healthmate"
    # Least privilege (README "Least privilege"): HM_PG_USER is the application role the API,
    # CLI and workers connect as; the owner role owns the tables and runs the migrations (empty:
    # HM_PG_USER does both, as without `db init-roles`); the superuser only runs `db init-roles`.
    pg_owner_user: str = ""
    pg_owner_password: str = field(default="", repr=False)
    pg_superuser: str = "postgres"
    pg_superuser_password: str = field(default="", repr=False)
    # Transport security (README "Transport security"). `prefer` uses TLS whenever the server
    # offers it and falls back to plain TCP otherwise (the local development server has no TLS);
    # production should use `verify-full` with HM_PG_SSLROOTCERT, the CA that signed the server's
    # certificate. HM_PG_SSLCERT/HM_PG_SSLKEY: a client certificate, when the server asks for one.
    pg_sslmode: str = "prefer"
    pg_sslrootcert: str = ""
    pg_sslcert: str = ""
    pg_sslkey: str = ""
    # rediss:// URLs are TLS (the server's certificate and host name are always verified);
    # HM_REDIS_CA_CERT is the CA file to verify it with (empty: the system's trusted CAs).
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_ca_cert: str = ""
    connect_timeout_s: float = 5.0
    # How long one Redis command of a materialization, a lock or the job queue may go unanswered
    # (socket timeout, no retries: a hung Redis fails the run after about this long).
    redis_timeout_s: float = 30.0
    # Online lookups (the API's features/extract): the longest one may take, waiting for a slot
    # included, and how many run at once in one process (their own threads, never the API's
    # shared pool); over either -> ServiceUnavailableError (HTTP 503). A lookup is mostly Python
    # (decoding, the temporal view) under one GIL: more threads only make each one slower.
    online_deadline_s: float = 0.5
    online_max_concurrent: int = 4
    metrics_public: bool = False  # the API's /metrics answers without a key from any address
    # Background jobs (healthmate_features.jobs): the Celery broker (empty: the profile's own, see
    # Backend.broker_url), the prefix of the Redis keys the package itself writes (job queue,
    # locks; Feast's online-store keys have none), how long a job's or a lock's lease lasts
    # without a heartbeat, how many times a job runs before it is marked failed, the first
    # retry's delay after a transient failure (doubled for each further retry), and how long a
    # materialization or build waits for another one of the same view or dataset.
    broker_url: str = ""
    redis_prefix: str = "healthmate:"
    job_lease_s: float = 60.0
    job_max_attempts: int = 3
    job_retry_backoff_s: float = 10.0
    lock_wait_s: float = 3600.0
    # The key of the erasure ledger's keyed hashes (HMAC-SHA256 of erased user ids; README
    # "Erasure, retention and exports"). Empty: the key file `erasure_key_path`, created on first
    # use (mode 0600). Set it on every machine of a deployment (production): ids hashed under
    # another key do not match, and the ledger refuses a key it was not written with.
    erasure_key: str = field(default="", repr=False)
    # The key of pseudonymized exports (`datasets load --pseudonymize`, the API's download with
    # pseudonymize=true): user ids become HMAC-SHA256 pseudonyms under it. Empty: exports need
    # `--key-file`, and the API refuses them. Another key gives unlinkable pseudonyms.
    export_key: str = field(default="", repr=False)
    # Encryption at rest (healthmate_features.crypto; README "Security and compliance"): the
    # master key that wraps the data keys. HM_MASTER_KEY: 32 random bytes in base64 (production:
    # from a secret store). Empty: the file HM_MASTER_KEY_FILE (empty: `.healthmate/master.key`
    # in the repository, outside data/), created on first use (mode 0600) while no data key
    # exists yet; production mounts it as a secret file.
    master_key: str = field(default="", repr=False)
    master_key_file: str = ""
    # The largest request body the HTTP API reads: a larger Content-Length is answered 413 before
    # any of the body is read, a chunked body 413 as soon as it passes this many bytes.
    max_request_bytes: int = 4 * 1024 * 1024
    # The audit chain's head checkpoints (access.audit_chain): an append-only JSON-lines file
    # outside the database (empty: data/audit-checkpoints.jsonl; in production a path the
    # database role cannot write), appended every `audit_checkpoint_every` audit rows.
    audit_checkpoints: str = ""
    audit_checkpoint_every: int = 1000
    # Freshness objective (monitoring.freshness): a batch view whose last materialization ended longer
    # ago than this is late. The default allows a daily schedule an hour and a half of slack.
    freshness_objective_s: float = 91800.0
    # Served-feature logging (monitoring.served_log): the API writes what features/extract served
    # for a feature service with a LoggingConfig at most this many seconds after serving it (and
    # when it stops); a flush also happens every FLUSH_ROWS rows.
    feature_log_flush_s: float = 10.0
    # How long audit rows are kept: at least six years (HIPAA); nothing in the package deletes
    # a younger row (nor, today, an older one: README "Audit trail").
    audit_retention_days: int = 6 * 365 + 2
    # The spark profile (README "Scaling out"): the cluster (`local[2]`: two threads in this process's
    # JVM; `spark://host:7077`: a standalone cluster; `sc://host:15002`: Spark Connect), where raw
    # and feature tables live as Parquet (a directory every executor reaches at the same path;
    # empty: data/spark/warehouse) and the driver's heap (the JVM's -Xmx; fixed when it starts).
    spark_master: str = "local[2]"
    spark_warehouse: str = ""
    spark_driver_memory: str = "1g"

    @classmethod
    def from_env(cls, repo_path: str | Path | None = None, **overrides) -> Settings:
        """Read HM_* environment variables; `repo_path` defaults to HM_REPO_PATH or the
        nearest directory upwards from the current one that holds feature_store.yaml."""
        env = os.environ
        root = Path(repo_path or env.get("HM_REPO_PATH") or _find_repo_root(Path.cwd())).resolve()
        values: dict[str, Any] = {"repo_path": root}
        for f in fields(cls):
            if f.name in _ENV and _ENV[f.name] in env:
                if isinstance(f.default, bool):
                    values[f.name] = _flag(_ENV[f.name], env[_ENV[f.name]])
                    continue
                convert: Any = type(f.default)  # str, int or float: every field with a variable has a default
                values[f.name] = convert(env[_ENV[f.name]])
        values.update(overrides)
        from healthmate_features.errors import ConfigError

        if float(values.get("feature_log_flush_s", 1.0)) <= 0:
            raise ConfigError(
                f"HM_FEATURE_LOG_FLUSH_S={values['feature_log_flush_s']} must be a positive number of seconds, e.g. 10"
            )
        if int(values.get("max_request_bytes", 1)) < 1:
            raise ConfigError(
                f"HM_MAX_REQUEST_BYTES={values['max_request_bytes']} must be a positive number of bytes, "
                "e.g. 4194304 (4 MiB)"
            )
        for name, variable, minimum in (
            ("audit_checkpoint_every", "HM_AUDIT_CHECKPOINT_EVERY", 1),
            ("audit_retention_days", "HM_AUDIT_RETENTION_DAYS", 1),
        ):
            if name in values and int(values[name]) < minimum:
                raise ConfigError(f"{variable}={values[name]} must be a whole number >= {minimum}")
        if values.get("pg_sslmode", "prefer") not in PG_SSLMODES:
            raise ConfigError(
                f"HM_PG_SSLMODE={values['pg_sslmode']!r} is not a libpq sslmode; use one of {', '.join(PG_SSLMODES)} "
                "(verify-full with HM_PG_SSLROOTCERT in production)"
            )
        memory = str(values.get("spark_driver_memory", "1g"))
        if not re.fullmatch(r"[1-9][0-9]*[kmgt]?", memory.lower()):
            raise ConfigError(f"HM_SPARK_DRIVER_MEMORY={memory!r} is not a JVM memory size; use e.g. 512m or 4g")
        master = str(values.get("spark_master", "local[2]"))
        if not re.fullmatch(r"local(\[([0-9]+|\*)\])?|(spark|sc|k8s)://\S+|yarn", master):
            raise ConfigError(
                f"HM_SPARK_MASTER={master!r} is not a Spark master; use local[2], spark://HOST:7077 or sc://HOST:15002"
            )
        if values.get("profile", "embedded") not in PROFILES:
            raise ConfigError(f"unknown profile {values['profile']!r} (HM_PROFILE); use one of {', '.join(PROFILES)}")
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The HM_* environment variables for which `Settings.from_env()` returns these settings."""
        return {"HM_REPO_PATH": str(self.repo_path), **{var: str(getattr(self, name)) for name, var in _ENV.items()}}

    @property
    def data_dir(self) -> Path:
        """All generated state of the embedded profile (git-ignored)."""
        return self.repo_path / "data"

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def ingested_dir(self) -> Path:
        return self.data_dir / "ingested"

    @property
    def features_dir(self) -> Path:
        """Feature tables the Feast sources of the embedded profile read (data/features)."""
        return self.data_dir / "features"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def broker_path(self) -> Path:
        """The SQLite file of the embedded profile's Celery broker: never the SQL store's file."""
        return self.data_dir / "broker.db"

    @property
    def erasure_key_path(self) -> Path:
        """The erasure ledger's key file when HM_ERASURE_KEY is unset: under the repository, outside
        data/, so a copy or backup of data/ (which holds the ledger) does not carry the key with it."""
        return self.repo_path / ".healthmate" / "erasure.key"

    @property
    def master_key_path(self) -> Path:
        """The master key file when HM_MASTER_KEY is unset: HM_MASTER_KEY_FILE, or
        `.healthmate/master.key` under the repository (outside data/, like the erasure key)."""
        return Path(self.master_key_file) if self.master_key_file else self.repo_path / ".healthmate" / "master.key"

    @property
    def erasures_dir(self) -> Path:
        """Where every erasure's report (certificate) is written as JSON: data/erasures/<erasure id>.json."""
        return self.data_dir / "erasures"

    @property
    def audit_checkpoints_path(self) -> Path:
        """The audit chain's checkpoint file: HM_AUDIT_CHECKPOINTS, or data/audit-checkpoints.jsonl."""
        return Path(self.audit_checkpoints) if self.audit_checkpoints else self.data_dir / "audit-checkpoints.jsonl"

    @property
    def spark_warehouse_path(self) -> Path:
        """The spark profile's tables: HM_SPARK_WAREHOUSE, or data/spark/warehouse."""
        return Path(self.spark_warehouse) if self.spark_warehouse else self.data_dir / "spark" / "warehouse"

    @property
    def sql_path(self) -> Path:
        """The SQLite file of the embedded profile's SQL store (tracking, API keys, audit)."""
        return self.data_dir / "healthmate.db"


def _flag(variable: str, value: str) -> bool:
    """An on/off environment variable: 1/true/yes/on or 0/false/no/off (any case; empty is off)."""
    word = value.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    from healthmate_features.errors import ConfigError

    raise ConfigError(f"{variable}={value!r} is not on or off; use 1/true/yes/on or 0/false/no/off")
