"""Feast's data-quality monitoring (`feast monitor run`) for HealthmateDuckDBOfflineStore.

Feast's own DuckDB store computes the metrics (null rates, percentiles, histograms, top values) in
DuckDB over the Parquet sources and keeps them, with baselines, in Parquet files. Its methods insist
on Feast's DuckDB config and on sources that name their file format; this mixin hands them both:
a copy of the repo config whose offline store is Feast's DuckDB store and whose root is `data/`
(so the metrics live in `data/feast_monitoring/`, beside the other local state), and each source
as an absolute-path Parquet FileSource (a directory source as its `**/*.parquet` files).
"""

from __future__ import annotations

import os
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Final

from feast.data_format import ParquetFormat
from feast.data_source import DataSource
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource
from feast.repo_config import RepoConfig

from healthmate_features import _feast
from healthmate_features.errors import OfflineStoreError

MONITORING_ROOT: Final = "data"  # Feast writes feast_monitoring/ under it


def _feast_config(config: RepoConfig) -> RepoConfig:
    """A copy of `config` for Feast's DuckDB monitoring code: its store config, rooted at data/."""
    root = Path(config.repo_path or ".") / MONITORING_ROOT
    copy = config.model_copy(update={"repo_path": root})
    _feast.set_offline_store_config(copy, DuckDBOfflineStoreConfig())
    return copy


def _holds_files(config: RepoConfig, source: DataSource) -> bool:
    """False for a local source path with no Parquet file yet (a log directory before the first flush)."""
    if not isinstance(source, FileSource):
        return True  # _parquet_source refuses it with a clear error
    path = str(FileSource.get_uri_for_file_path(config.repo_path, source.path))
    if "://" in path:
        return True
    if os.path.isdir(path):
        return any(Path(path).rglob("*.parquet"))
    return os.path.exists(path)


def _parquet_source(config: RepoConfig, source: DataSource) -> FileSource:
    """`source` as a Parquet FileSource with an absolute path (files of a directory by glob)."""
    if not isinstance(source, FileSource):
        raise OfflineStoreError(
            f"data source {source.name!r} is a {type(source).__name__}; "
            "HealthmateDuckDBOfflineStore monitors FileSource over Parquet only"
        )
    path = str(FileSource.get_uri_for_file_path(config.repo_path, source.path))
    if "://" not in path and os.path.isdir(path):
        path = os.path.join(path, "**", "*.parquet")
    return FileSource(name=source.name, path=path, file_format=ParquetFormat(), timestamp_field=source.timestamp_field)


def _encrypted_scan(config: RepoConfig, source: DataSource) -> tuple[Any, str] | None:
    """For a source with encrypted files (the package's feature tables): a DuckDB connection and a
    table expression on it that decrypts as it scans; None for a plaintext source (Feast reads it)."""
    import duckdb

    from healthmate_features.backends import repo_keyring
    from healthmate_features.crypto import duckdb_scan, file_key_id

    files = _parquet_files(config, source)
    if not any(file_key_id(f) for f in files):
        return None
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con, duckdb_scan(con, files, lambda: repo_keyring(str(config.repo_path)))


def _parquet_files(config: RepoConfig, source: DataSource) -> list[str]:
    """The Parquet files of a local FileSource (a file, or a directory's `**/*.parquet`)."""
    import glob

    if not isinstance(source, FileSource):
        return []
    path = str(FileSource.get_uri_for_file_path(config.repo_path, source.path))
    if "://" in path:
        return []
    if os.path.isdir(path):
        return sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    return [path] if os.path.exists(path) else []


class FeastDuckDBMonitoring:
    """The offline-store monitoring methods `feast monitor run` calls, answered by Feast's DuckDB store."""

    @staticmethod
    def compute_monitoring_metrics(
        config: RepoConfig,
        data_source: DataSource,
        feature_columns: list[tuple[str, str]],
        timestamp_field: str,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        histogram_bins: int = 20,
        top_n: int = 10,
    ) -> list[dict[str, Any]]:
        """Per feature: count, null rate, mean, stddev, percentiles and histogram (numeric) or top values.

        A source without files yet (a feature service that has logged nothing) has no metrics."""
        if not _holds_files(config, data_source):
            return []
        encrypted = _encrypted_scan(config, data_source)
        if encrypted is not None:
            con, scan = encrypted
            try:
                return _feast.duckdb_monitoring_stats(
                    con, scan, feature_columns, timestamp_field, start_date, end_date, histogram_bins, top_n
                )
            finally:
                con.close()
        return DuckDBOfflineStore.compute_monitoring_metrics(
            _feast_config(config),
            _parquet_source(config, data_source),
            feature_columns,
            timestamp_field,
            start_date=start_date,
            end_date=end_date,
            histogram_bins=histogram_bins,
            top_n=top_n,
        )

    @staticmethod
    def get_monitoring_max_timestamp(
        config: RepoConfig, data_source: DataSource, timestamp_field: str
    ) -> datetime | None:
        """The latest event time of a source (None when it is empty or has no files yet)."""
        if not _holds_files(config, data_source):
            return None
        encrypted = _encrypted_scan(config, data_source)
        if encrypted is not None:
            con, scan = encrypted
            try:
                row = con.execute(f'SELECT max("{timestamp_field}") FROM {scan}').fetchone()
            finally:
                con.close()
            latest = row[0] if row else None
            if isinstance(latest, datetime):
                return latest if latest.tzinfo else latest.replace(tzinfo=timezone.utc)
            return None
        return DuckDBOfflineStore.get_monitoring_max_timestamp(
            _feast_config(config), _parquet_source(config, data_source), timestamp_field
        )

    @staticmethod
    def ensure_monitoring_tables(config: RepoConfig) -> None:
        """Create data/feast_monitoring/ and its empty metric files. Side effect: files on disk."""
        DuckDBOfflineStore.ensure_monitoring_tables(_feast_config(config))

    @staticmethod
    def save_monitoring_metrics(config: RepoConfig, metric_type: str, metrics: list[dict[str, Any]]) -> None:
        """Upsert metric rows into data/feast_monitoring/. Side effect: rewrites a metric file."""
        DuckDBOfflineStore.save_monitoring_metrics(_feast_config(config), metric_type, metrics)

    @staticmethod
    def query_monitoring_metrics(
        config: RepoConfig,
        project: str,
        metric_type: str,
        filters: dict[str, Any] | None = None,
        start_date: date | None = None,
        end_date: date | None = None,
    ) -> list[dict[str, Any]]:
        """Stored metric rows of a project, filtered, by metric date."""
        return DuckDBOfflineStore.query_monitoring_metrics(
            _feast_config(config), project, metric_type, filters=filters, start_date=start_date, end_date=end_date
        )

    @staticmethod
    def clear_monitoring_baseline(
        config: RepoConfig,
        project: str,
        feature_view_name: str | None = None,
        feature_name: str | None = None,
        data_source_type: str | None = None,
    ) -> None:
        """Unmark the baseline rows that match, before a new baseline is written."""
        DuckDBOfflineStore.clear_monitoring_baseline(
            _feast_config(config),
            project,
            feature_view_name=feature_view_name,
            feature_name=feature_name,
            data_source_type=data_source_type,
        )
