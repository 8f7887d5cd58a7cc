"""The Backend interface: everything that differs between deployment profiles, behind one object.

A Backend is built once from Settings (`backends.backend_for(settings)`) and answers every
question whose answer depends on the profile: which Feast configuration to use and how to fill
it, where raw and feature tables live and how they are written (atomically) and read, which SQL
store holds tracking, keys and audit, which servers must answer and how their failures read.
Nothing outside `backends/` asks which profile it is on.

The layers above hand the backend what only they know (the raw schemas, the feature SQL): a
backend runs SQL it is given and moves tables; it never imports the catalog or the validators.
"""

from __future__ import annotations

import logging
import re
import shlex
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from healthmate_features.config import Settings
from healthmate_features.crypto import Keyring, master_key
from healthmate_features.errors import ConfigError, FeatureRepoError
from healthmate_features.util.text import yaml_problem

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.data_source import DataSource
    from feast.repo_config import RepoConfig

    from healthmate_features.backends.locks import Lease, Leases
    from healthmate_features.backends.sqlstore import SqlStore

log = logging.getLogger(__name__)
INGEST_MANIFEST = "_ingest.json"  # the ingest manifest's file name in an ingested directory
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class RawTable:
    """A raw table as the backend stores it: its name and (column, type) pairs, types as in raw.schemas."""

    name: str
    columns: tuple[tuple[str, str], ...]
    primary_key: str | None = None


@dataclass(frozen=True)
class Broker:
    """Where background jobs are queued: a Celery broker URL, its kombu transport options, and a
    description for messages (no password), and Celery's `broker_use_ssl` (None: no TLS). The URL
    can hold a password: it stays out of the repr."""

    url: str = field(repr=False)
    transport_options: Mapping[str, Any]
    description: str
    use_ssl: Mapping[str, Any] | None = None


def redis_broker(url: str, settings: Settings) -> Broker:
    """A Redis broker: keys under HM_REDIS_PREFIX, our connect timeout; a rediss:// URL verifies the
    server's certificate and host name against HM_REDIS_CA_CERT, like every other Redis client."""
    from urllib.parse import urlsplit

    from healthmate_features.backends.redis import tls_options

    parts = urlsplit(url)
    where = f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}/{parts.path.lstrip('/') or '0'}"
    return Broker(
        url,
        {
            "global_keyprefix": settings.redis_prefix,
            "socket_connect_timeout": settings.connect_timeout_s,
            # Redelivery of a message whose worker vanished; our job leases recover far sooner
            # (HM_JOB_LEASE_S), and a duplicate delivery of a job that already ran is dropped.
            "visibility_timeout": 3600,
        },
        f"Redis broker at {where}",
        tls_options(url, settings.redis_ca_cert) or None,
    )


def broker_from_url(url: str, settings: Settings) -> Broker:
    """The broker HM_BROKER_URL names (any Celery broker URL; Redis ones get our key prefix)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        return redis_broker(url, settings)
    if not parts.scheme:
        raise ConfigError(f"HM_BROKER_URL {url!r} is not a URL; use e.g. redis://127.0.0.1:6379/1 or amqp://host//")
    where = f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"
    return Broker(url, {}, f"broker {where} (HM_BROKER_URL)")


@dataclass(frozen=True)
class FeatureBuild:
    """What a feature build runs, handed down by `features.build` (features.incremental says how).

    `fingerprint_sql` fingerprints the raw tables into the scratch tables that become the next
    build's state (`state_tables`: state name -> scratch table). With a state of the same
    `version` (not `full`) and `needs_full_sql` counting 0 rows, the build is incremental:
    `incremental_sql` finds the changed users (`hm_dirty`) and restricts the inputs to them
    (`incremental_sources`); otherwise `full_sql` runs. Then `prepare_sql` creates the scratch
    tables (`scratch_tables`) every feature table reads, and `tables` maps each feature table to
    its SELECT; an incremental build replaces only the rows of `hm_dirty`'s users matching
    `affected[table]` (a condition on `x`, the row, and `d`, its hm_dirty row). SQL uses the
    placeholders `{users}`, `{readings}`, `{events}`, filled with the backend's names of the raw
    tables in `sources` (placeholder -> raw table name), and `{prev_<state name>}` for the state.

    Fingerprints kept from the ingest (`Backend.keep_raw_fingerprints`: the scratch tables of
    USER_STATE_TABLES, made by `fingerprint_sql` when the raw tables were written) replace
    `fingerprint_sql` while the raw tables are still those: the build loads them and runs only
    `grid_sql` (the last statement of `fingerprint_sql`).

    `setup_sql` (the engine's session settings, features.catalog.Dialect) runs first. Every
    statement is already in the backend's SQL dialect (`Backend.sql_dialect`).
    """

    prepare_sql: tuple[str, ...]
    scratch_tables: tuple[str, ...]
    tables: Mapping[str, str]
    sources: Mapping[str, str]
    fingerprint_sql: tuple[str, ...] = ()
    full_sql: tuple[str, ...] = ()
    incremental_sql: tuple[str, ...] = ()
    needs_full_sql: str = ""
    incremental_sources: Mapping[str, str] = field(default_factory=dict)
    affected: Mapping[str, str] = field(default_factory=dict)
    state_tables: Mapping[str, str] = field(default_factory=dict)
    version: str = ""
    full: bool = False
    grid_sql: str = ""
    setup_sql: tuple[str, ...] = ()

    @property
    def fingerprint_tables(self) -> dict[str, str]:
        """The fingerprint tables (state name -> scratch table): those an ingest can keep for the build."""
        return {name: self.state_tables[name] for name in USER_STATE_TABLES}

    def fingerprint_statements(
        self, raw_names: Mapping[str, str], kept: Mapping[str, str] | None = None, *, create: str = "TEMP TABLE"
    ) -> list[str]:
        """The statements that make the fingerprint tables and `hm_grid`: from the raw tables (named
        by `raw_names`), or, given `kept` (state name -> the kept table), `CREATE <create>` of each
        over its kept table, then `grid_sql`."""
        if not kept:
            return [sql.format(**raw_names) for sql in self.fingerprint_sql]
        made = [
            f"CREATE {create} {scratch} AS SELECT * FROM {kept[name]}"
            for name, scratch in self.fingerprint_tables.items()
        ]
        return [*made, self.grid_sql]


# The build-state tables (features.incremental.STATE_TABLES) holding per-user rows: erasure
# removes a person's rows from them too (fingerprints: counts and hashes per day).
USER_STATE_TABLES = ("readings", "events", "users")


class BuildCounts(dict[str, int]):
    """Rows per feature table after a build, and how it ran: `incremental`, for how many `users`, and
    whether it loaded the fingerprints kept from the ingest (`kept_fingerprints`) or made its own."""

    def __init__(
        self,
        counts: Mapping[str, int],
        *,
        incremental: bool,
        users: int | None = None,
        kept_fingerprints: bool = False,
    ) -> None:
        super().__init__(counts)
        self.incremental = incremental
        self.users = users
        self.kept_fingerprints = kept_fingerprints


def substitute_placeholders(node: Any, variables: Mapping[str, str], where: str) -> Any:
    """Replace `${NAME}` in every string of a parsed YAML document (after parsing: no quoting issues)."""
    if isinstance(node, dict):
        return {k: substitute_placeholders(v, variables, where) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute_placeholders(v, variables, where) for v in node]
    if isinstance(node, str):

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in variables:
                raise ConfigError(
                    f"{where} uses ${{{name}}}, which is not a setting (known: {', '.join(sorted(variables))}); "
                    "fix the placeholder"
                )
            return variables[name]

        return _PLACEHOLDER.sub(value, node)
    return node


class Backend(ABC):
    """One deployment profile. Build with `backends.backend_for(settings)`, never directly."""

    name: ClassVar[str]
    feature_store_file: ClassVar[str]
    sql_dialect: ClassVar[str]  # the engine the feature build runs in: a key of features.catalog.DIALECTS

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._registry_file: Path | None = None  # registry_stamp's file, found on first use
        self._keyring: Keyring | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings.repo_path})"

    # --- messages ----------------------------------------------------------------------------

    def command(self, args: str) -> str:
        """The `healthmate-features` command line for `args` on this profile (for "run ..." hints)."""
        return f"healthmate-features {args}"

    def describe(self) -> str | None:
        """One line saying which servers this profile uses, or None when it needs none."""
        return None

    # --- servers -----------------------------------------------------------------------------

    def check_services(self) -> None:  # noqa: B027  (a hook: by default there is no server to check)
        """Fail fast (ServiceUnavailableError) when a server this profile needs does not answer."""

    def prepare_servers(self) -> None:
        """Create what the servers need before a first run (a database), then check them."""
        self.check_services()

    @contextmanager
    def service_errors(self) -> Iterator[None]:
        """Turn connection failures of this profile's servers, raised inside Feast, into ServiceUnavailableError."""
        yield

    # --- Feast -------------------------------------------------------------------------------

    @property
    def feature_store_yaml(self) -> Path:
        """This profile's Feast configuration file in the repository."""
        return self.settings.repo_path / self.feature_store_file

    def feast_variables(self) -> dict[str, str]:
        """The values of the `${...}` placeholders of this profile's Feast configuration."""
        return {}

    def feast_env(self) -> dict[str, str]:
        """Environment for a child `feast` process: the HM_* settings and the placeholders' values."""
        return {**self.settings.to_env(), **self.feast_variables()}

    def env_lines(self) -> list[str]:
        """`export` lines that let the plain `feast` CLI use this profile like we do."""
        values = {"HM_PROFILE": self.name, "HM_REPO_PATH": str(self.settings.repo_path), **self.feast_variables()}
        return [f"export {k}={shlex.quote(v)}" for k, v in values.items()]

    def feast_config(self, *, offline_store: Mapping[str, Any] | None = None) -> RepoConfig:
        """Feast's RepoConfig for this profile, placeholders filled from the settings.

        `offline_store` overrides keys of that section, e.g. `{"type": "postgres"}` for Feast's own
        Postgres store (what bench/ and the tests compare ours with).
        Raises FeatureRepoError if the YAML file is missing, ConfigError if it is invalid.
        """
        from feast.repo_config import RepoConfig
        from pydantic import ValidationError

        path, name = self.feature_store_yaml, self.feature_store_file
        if not path.exists():
            raise FeatureRepoError(
                f"{name} not found in the repository; run from the repository root or set HM_REPO_PATH"
            )
        try:
            parsed = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{name} is not valid YAML: {yaml_problem(exc)}") from exc
        raw = substitute_placeholders(parsed, self.feast_variables(), name)
        if offline_store:
            raw["offline_store"] = {**raw.get("offline_store", {}), **offline_store}
        try:
            config = RepoConfig(**raw)
        except ValidationError as exc:  # its text quotes the values: name the fields and the problems only
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}" for e in exc.errors()[:5])
            raise ConfigError(f"{name} is not a valid Feast configuration: {problems}") from exc
        config.repo_path = self.settings.repo_path
        return config

    def open_feature_store(self) -> FeatureStore:
        """The Feast FeatureStore of this profile. Raises FeatureRepoError if the configuration is missing."""
        from feast import FeatureStore

        name = self.feature_store_file
        if not self.feature_store_yaml.exists():
            raise FeatureRepoError(
                f"{name} not found in the repository; run from the repository root or set HM_REPO_PATH"
            )
        try:
            store = FeatureStore(repo_path=str(self.settings.repo_path), fs_yaml_file=self.feature_store_yaml)
        except Exception as exc:  # Feast's text quotes the file: the details go to the log only
            log.warning("Feast cannot load %s: %s", self.feature_store_yaml, exc)
            raise FeatureRepoError(
                f"Feast cannot load {name} ({type(exc).__name__}); the server log has the details, "
                "or run `feast plan` in the repository root"
            ) from exc
        return self.bind_keyring(store)

    def bind_keyring(self, store: FeatureStore) -> FeatureStore:
        """Hand an encrypting online store of `store` (stores.encrypted_online) this backend's keyring, so
        it seals and opens values with these settings' keys rather than ones it would find from the
        environment; return `store`. Nothing for other online stores."""
        from healthmate_features import _feast

        bind = getattr(_feast.online_store_of(store), "bind_keyring", None)
        if bind is not None:
            bind(self.keyring())
        return store

    def registry_stamp(self) -> Any:
        """A value that changes whenever this profile's Feast registry changes (`feast apply`,
        a materialization), from any process; cheap enough to ask on every request.

        File registry: the registry file's inode, size and modification time in ns (Feast
        rewrites the file on every change); None while it does not exist."""
        import os

        path = self._registry_file
        if path is None:
            registry = self.feast_config().registry
            path = Path(registry if isinstance(registry, str) else registry.path)
            path = path if path.is_absolute() else self.settings.repo_path / path
            self._registry_file = path
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    @abstractmethod
    def batch_source(self, table: str, *, description: str) -> DataSource:
        """The Feast batch source of feature table `table`, named `<table>_source`."""

    # --- the SQL store (tracking, API keys, audit) -------------------------------------------

    @abstractmethod
    def connect_sql_store(self) -> SqlStore:
        """A connection to this profile's SQL store, not yet migrated."""

    def open_sql_store(self, *, migrate: bool = True) -> SqlStore:
        """Connect to this profile's SQL store and (by default) apply pending migrations."""
        store = self.connect_sql_store()
        if migrate:
            try:
                self.migrate_sql_store(store)
            except BaseException:
                store.close()
                raise
        return store

    def migrate_sql_store(self, store: SqlStore) -> None:
        """Apply the SQL store's pending migrations (over `store`'s own connection here)."""
        store.migrate()

    # --- encryption at rest -------------------------------------------------------------------

    def keyring(self) -> Keyring:
        """The deployment's data keys (crypto.Keyring over the SQL store's `data_keys`, with a copy
        of each in data/keys/ for the files every profile of the repository shares), one per
        Backend: unwrapped keys are cached for the life of the process."""
        if self._keyring is None:
            from healthmate_features.backends.keystore import MirroredKeyStore, SqlKeyStore

            settings = self.settings
            self._keyring = Keyring(
                MirroredKeyStore(SqlKeyStore(self.open_sql_store), settings.data_dir / "keys"),
                lambda *, create: master_key(settings, create=create),
            )
        return self._keyring

    # --- background jobs: broker and locks ----------------------------------------------------

    @abstractmethod
    def default_broker(self) -> Broker:
        """This profile's own Celery broker (used unless HM_BROKER_URL names another)."""

    def broker(self) -> Broker:
        """Where background jobs are queued: HM_BROKER_URL when set, else the profile's broker."""
        if self.settings.broker_url:
            return broker_from_url(self.settings.broker_url, self.settings)
        return self.default_broker()

    def clean_broker(self) -> int:
        """Drop what the broker keeps but will never deliver again (at worker start); return how many."""
        return 0

    def leases(self) -> Leases:
        """The named leases behind `lock`: rows of the SQL store unless the profile has better."""
        from healthmate_features.backends.locks import SqlLeases

        return SqlLeases(self.open_sql_store())

    @contextmanager
    def lock(self, name: str, *, wait_s: float | None = None, on_wait: Any = None) -> Iterator[Lease]:
        """Hold the lock `name` (e.g. `materialize:health_daily`) for the block, across processes.

        Waits up to `wait_s` (default HM_LOCK_WAIT_S) for another holder (LockTimeoutError after); the lease lasts
        HM_JOB_LEASE_S and is renewed while the block runs, so a holder that dies frees it within
        that time. `on_wait(holder)` is called once if the lock is busy at first."""
        from healthmate_features.backends.locks import hold

        with self.service_errors():
            leases = self.leases()
            try:
                wait = self.settings.lock_wait_s if wait_s is None else wait_s
                with hold(leases, name, ttl_s=self.settings.job_lease_s, wait_s=wait, on_wait=on_wait) as lease:
                    yield lease
            finally:
                leases.close()

    # --- raw tables --------------------------------------------------------------------------

    def prepare_raw_store(self) -> None:  # noqa: B027  (a hook: by default nothing to prepare)
        """Make sure the raw tables can be written (before validation runs, so a down server fails first)."""

    def store_raw(
        self, ingested_dir: Path, tables: Sequence[RawTable], *, batch_rows: int, progress: bool
    ) -> dict[str, int]:
        """Load the accepted rows of the ingest in `ingested_dir` into this profile's raw tables.

        Returns rows loaded per table; empty when the ingested files themselves are the raw tables.
        """
        return {}

    @abstractmethod
    def raw_table_label(self, table: str) -> str:
        """Where raw table `table` lives, for messages."""

    def erase_raw_rows(
        self,
        tables: Sequence[str],
        user_id: int,
        *,
        manifest: Mapping[str, Any] | None = None,
        count_only: bool = False,
    ) -> dict[str, int]:
        """Delete one user's rows from this profile's raw tables, recording `manifest` (the ingest
        manifest after the erasure) with them; rows per table. {} where the ingested files are the
        raw tables (they are rewritten as files). With `count_only`, count and change nothing."""
        return {}

    def expire_raw_rows(
        self,
        time_columns: Mapping[str, str],
        cutoff: datetime,
        *,
        manifest: Mapping[str, Any] | None = None,
        count_only: bool = False,
    ) -> dict[str, int]:
        """Delete the rows of raw tables `time_columns` (table -> event-time column) older than `cutoff`
        (retention), recording `manifest` with them; rows per table. {} where the ingested files
        are the raw tables (they are rewritten as files). With `count_only`, count and change nothing."""
        return {}

    @abstractmethod
    def loaded_ingest(self, raw_dir: Path) -> tuple[dict[str, Any], str, str]:
        """The manifest of the ingest the raw tables hold, where they are, and the command that loads them.

        Raises NotIngestedError (naming `raw_dir` and the command) when nothing was ingested.
        """

    # --- feature tables ----------------------------------------------------------------------

    @abstractmethod
    def build_feature_tables(
        self, build: FeatureBuild, *, progress: bool = False, memory_limit: str | None = None
    ) -> BuildCounts:
        """Run `build` over the raw tables and replace every feature table's rows it rebuilds atomically."""

    def keep_raw_fingerprints(self, build: FeatureBuild) -> None:  # noqa: B027  (a hook: by default none kept)
        """Run `build.fingerprint_sql` over the raw tables as they are now and keep its fingerprint
        tables (USER_STATE_TABLES), stamped with the loaded ingest, for the next build (called
        after an ingest). Without them a build fingerprints every raw row itself."""

    def ensure_feature_table(self, table: str, schema: Any) -> None:  # noqa: B027  (a hook)
        """Create feature table `table` empty, with pyarrow `schema`, when it does not exist and the profile's
        Feast sources must find it before anything writes to it (the push source's table on Spark,
        whose source check reads it). Nothing by default."""

    @abstractmethod
    def feature_table_label(self, table: str) -> str:
        """Where feature table `table` lives, for messages."""

    @abstractmethod
    def feature_time_range(self, tables: Sequence[str]) -> tuple[datetime, datetime]:
        """Earliest and latest event_timestamp over feature tables `tables` (UTC).

        Raises FeatureRepoError, naming the command to run, when they are missing or empty.
        """

    @abstractmethod
    def erase_feature_rows(self, tables: Sequence[str], user_id: int, *, count_only: bool = False) -> dict[str, int]:
        """Delete one user's rows from feature tables `tables` (those that exist); rows per table.

        With `count_only`, count them and change nothing (`erase --verify`). Each table is
        rewritten atomically (embedded) or in one transaction (production): safe to interrupt."""

    @abstractmethod
    def expire_feature_rows(
        self, tables: Sequence[str], cutoff: datetime, *, count_only: bool = False
    ) -> dict[str, int]:
        """Delete the rows of feature tables `tables` with event_timestamp before `cutoff` (retention); rows per table.

        With `count_only`, count them and change nothing (`retention apply --dry-run`); atomic per table."""

    @abstractmethod
    def erase_online_rows(self, store: FeatureStore, user_id: int, *, count_only: bool = False) -> dict[str, int]:
        """Delete one user's entity rows or keys from the online store of `store`; per online table or key.

        Goes through the connection Feast holds (SQLite) or the profile's Redis client; never a
        second handle on a SQLite store file. With `count_only`, count and change nothing."""

    @abstractmethod
    def query_feature_tables(self, sql: str, *tables: str) -> list[tuple[Any, ...]]:
        """Run a read-only query whose `{0}`, `{1}`, ... name feature tables `tables`; return its rows.

        Raises FeatureRepoError, naming the command to run, when a table does not exist.
        """
