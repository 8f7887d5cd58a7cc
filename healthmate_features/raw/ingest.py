"""Validate raw tables against their schemas; accepted rows to Parquet, rejected rows to a rejects file.

`ingest(raw_dir, out_dir)` reads `<table>.parquet` (or `.csv`) for every raw table in
`schemas.RAW_TABLES`, checks types, required values, allowed values, physically possible
ranges, units, timezone-aware timestamps and references to known users, and writes:

- `<out_dir>/<table>.parquet`: the accepted rows, typed as the schema says (timestamps UTC);
- `<out_dir>/<table>.rejects.csv`: every rejected row, its original values as text, where it is
  in the input and the reason(s) (`_reason`). Where: `_line` for a CSV file, the line the row
  starts on as an editor shows it (the header is line 1, so the first data row is line 2);
  `_row` for a Parquet file, the row index (from 0);
- `<out_dir>/_ingest.json`: counts per table and per reason, and the SHA-256 of each raw file,
  so `build-features` can refuse raw data that was not ingested (or changed since).

Nothing is dropped silently: accepted + rejected = read, per table. All checks run in DuckDB.

Rows of a person the erasure ledger holds (`backends.ledger`; `ingest_raw` reads it) are
rejected with the one reason "user_id: erased": counted like any other reject, but their row in
the rejects file keeps only its position and the reason, none of the erased person's values.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from healthmate_features.backends import RawTable, backend_for
from healthmate_features.backends.base import INGEST_MANIFEST
from healthmate_features.config import Settings
from healthmate_features.crypto import Keyring, file_key_id, open_parquet, read_sealed, write_parquet, write_sealed
from healthmate_features.errors import NotIngestedError, RawDataError
from healthmate_features.raw.schemas import CONDITIONS, METRICS, RAW_TABLES, Column, TableSchema
from healthmate_features.util.files import atomic_path, atomic_write_text
from healthmate_features.util.sql import quote_literal

REQUIRED_TABLES = ("users", "health_readings", "app_events")
MANIFEST = INGEST_MANIFEST
_TZ_SUFFIX = r"(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)$"
REJECT_LINE = "_line"  # rejects of a CSV file: the line the row starts on (the header is line 1)
REJECT_ROW = "_row"  # rejects of a Parquet file: the row index, from 0
_SQL_TYPES = {"int": "BIGINT", "float": "DOUBLE", "string": "VARCHAR", "timestamp": "TIMESTAMPTZ"}
ERASED = "user_id: erased"  # the reason code of a row whose person was erased (the erasure ledger)
Erased = Callable[[Iterable[Any]], set]  # user ids -> the erased ones among them (backends.ledger.erased_filter)


@dataclass
class TableReport:
    """What ingest did with one table."""

    table: str
    source: str
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_raw_file(raw_dir: Path, table: str) -> Path | None:
    for ext in (".parquet", ".csv"):
        if (raw_dir / f"{table}{ext}").exists():
            return raw_dir / f"{table}{ext}"
    return None


def _open_source(
    con: duckdb.DuckDBPyConnection, table: TableSchema, path: Path, keyring: Keyring | None = None
) -> dict[str, str]:
    """Create view `src_<table>` over the file with a row number; return its column types.

    An encrypted Parquet file (what `generate` writes into a repository's data/) is decrypted with
    `keyring` into memory, its row numbers added there (DuckDB cannot read it itself)."""
    if path.suffix == ".parquet" and file_key_id(path) is not None:
        decrypted = open_parquet(keyring, path).read()
        decrypted = decrypted.append_column("_row", pa.array(np.arange(decrypted.num_rows, dtype=np.int64)))
        con.register(f"__raw_{table.name}", decrypted)
        source = f"SELECT * FROM __raw_{table.name}"
    elif path.suffix == ".parquet":
        source = (
            "SELECT * EXCLUDE (file_row_number), file_row_number AS _row "
            f"FROM read_parquet({quote_literal(str(path))}, file_row_number = true)"
        )
    else:
        source = (
            "SELECT *, row_number() OVER () - 1 AS _row "
            f"FROM read_csv({quote_literal(str(path))}, header = true, all_varchar = true)"
        )
    try:
        con.execute(f"CREATE OR REPLACE VIEW src_{table.name} AS {source}")
        types = {row[0]: str(row[1]) for row in con.execute(f"DESCRIBE src_{table.name}").fetchall()}
    except duckdb.Error as exc:
        raise RawDataError(
            f"cannot read {path} for table '{table.name}': {str(exc).splitlines()[0]}; "
            "expected a Parquet file or a CSV file "
            f"with a header and the columns {', '.join(table.column_names)}"
        ) from exc
    missing = [c for c in table.column_names if c not in types]
    if missing:
        present = [c for c in types if c != "_row"]
        raise RawDataError(
            f"{path} (table '{table.name}') is missing column(s) {', '.join(missing)} "
            f"(columns: {', '.join(present)}); add them (see `healthmate-features schemas`)"
        )
    return types


def _is_aware(src_type: str) -> bool:
    return "TIME ZONE" in src_type or src_type.startswith("TIMESTAMPTZ")


def _is_naive(src_type: str) -> bool:
    return (src_type.startswith("TIMESTAMP") or src_type == "DATE") and not _is_aware(src_type)


def _typed(col: Column, src_type: str) -> str:
    """SQL for a column's value cast to its schema type (NULL where it cannot be cast)."""
    name = f'"{col.name}"'
    if col.dtype == "timestamp":
        if _is_aware(src_type):
            return f"CAST({name} AS TIMESTAMPTZ)"
        if src_type == "VARCHAR":
            return (
                f"CASE WHEN regexp_matches(trim({name}), '{_TZ_SUFFIX}') THEN TRY_CAST(trim({name}) AS TIMESTAMPTZ) END"
            )
        return "CAST(NULL AS TIMESTAMPTZ)"
    if col.dtype == "string":
        return f"CAST({name} AS VARCHAR)"
    return f"TRY_CAST({name} AS {_SQL_TYPES[col.dtype]})"


def _bound(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _checks(table: TableSchema, types: dict[str, str]) -> list[tuple[str, str, str]]:
    """(reason code, condition that rejects, message SQL) for every rule of the table."""
    checks: list[tuple[str, str, str]] = []
    for col in table.columns:
        raw, typed, src_type = f'"{col.name}"', f"t_{col.name}", types[col.name]
        text = f"CAST({raw} AS VARCHAR)"
        if not col.nullable:
            checks.append((f"{col.name}: missing", f"{raw} IS NULL", quote_literal(f"{col.name} is missing")))
        if col.dtype == "timestamp" and _is_naive(src_type):
            checks.append(
                (
                    f"{col.name}: timezone-naive",
                    f"{raw} IS NOT NULL",
                    quote_literal(f"{col.name} is a timezone-naive timestamp; write it timezone-aware (UTC)"),
                )
            )
        elif col.dtype == "timestamp" and src_type == "VARCHAR":
            parses = f"TRY_CAST(trim({raw}) AS TIMESTAMPTZ) IS NOT NULL"  # with or without an offset
            checks.append(
                (
                    f"{col.name}: not a timestamp",
                    f"{raw} IS NOT NULL AND NOT {parses}",
                    f"'{col.name} ' || {text} || "
                    "' is not a timestamp (unparseable); write ISO 8601 with an offset, e.g. 2025-01-31T08:00:00Z'",
                )
            )
            checks.append(
                (
                    f"{col.name}: no timezone",
                    f"{raw} IS NOT NULL AND {parses} AND NOT regexp_matches(trim({raw}), '{_TZ_SUFFIX}')",
                    f"'{col.name} ' || {text} || ' has no timezone offset; append Z or +00:00'",
                )
            )
        elif col.dtype == "timestamp" and not _is_aware(src_type):
            checks.append(
                (
                    f"{col.name}: not a timestamp",
                    f"{raw} IS NOT NULL",
                    f"'{col.name} ' || {text} || ' is not a timestamp (column type {src_type})'",
                )
            )
        elif col.dtype in ("int", "float"):
            checks.append(
                (
                    f"{col.name}: not a number",
                    f"{raw} IS NOT NULL AND {typed} IS NULL",
                    f"'{col.name} ' || {text} || ' is not {'an integer' if col.dtype == 'int' else 'a number'}'",
                )
            )
            if col.dtype == "float":
                checks.append(
                    (
                        f"{col.name}: not finite",
                        f"NOT isfinite({typed})",
                        f"'{col.name} ' || {text} || ' is not finite'",
                    )
                )
        if col.allowed:
            allowed = ", ".join(quote_literal(a) for a in col.allowed)
            checks.append(
                (
                    f"{col.name}: unknown value",
                    f"{typed} IS NOT NULL AND {typed} NOT IN ({allowed})",
                    f"'{col.name} ''' || {typed} || ''' is not one of {', '.join(col.allowed).replace(chr(39), '')}'",
                )
            )
        if col.low is not None or col.high is not None:
            low = f"{typed} < {col.low}" if col.low is not None else "false"
            high = f"{typed} > {col.high}" if col.high is not None else "false"
            checks.append(
                (
                    f"{col.name}: out of range",
                    f"({low} OR {high})",
                    f"'{col.name} ' || {text} || ' is outside {_bound(col.low)}..{_bound(col.high)}'",
                )
            )
    checks += _table_checks(table.name)
    return checks


def _table_checks(name: str) -> list[tuple[str, str, str]]:
    """Rules that involve more than one column or table."""
    if name == "health_readings":
        out = []
        for m in METRICS:
            out.append(
                (
                    f"value: impossible {m.name}",
                    f"t_metric = '{m.name}' AND (t_value < {m.low} OR t_value > {m.high})",
                    f"'{m.name} value ' || CAST(t_value AS VARCHAR) || "
                    f"' is physically impossible (possible: {m.low:g}..{m.high:g} {m.unit})'",
                )
            )
            out.append(
                (
                    f"unit: wrong for {m.name}",
                    f"t_metric = '{m.name}' AND t_unit IS DISTINCT FROM '{m.unit}'",
                    f"'unit ''' || coalesce(t_unit, 'NULL') || ''' is wrong for {m.name}; expected {m.unit}'",
                )
            )
        return out + [_unknown_user_check()]
    if name == "app_events":
        return [
            (
                "duration_minutes: missing for session",
                "t_event_type = 'session' AND t_duration_minutes IS NULL",
                "'session event without duration_minutes'",
            ),
            _unknown_user_check(),
        ]
    if name == "labels":
        return [_unknown_user_check()]
    if name == "users":
        one = "(" + "|".join(CONDITIONS) + ")"
        return [
            (
                "conditions: unknown condition",
                "t_conditions IS NOT NULL AND t_conditions <> '' "
                f"AND NOT regexp_full_match(t_conditions, '{one}(;{one})*')",
                f"'conditions ''' || t_conditions || ''' names an unknown condition (known: {', '.join(CONDITIONS)})'",
            ),
            (
                "user_id: duplicate",
                "count(*) OVER (PARTITION BY t_user_id) > 1 AND _row <> min(_row) OVER (PARTITION BY t_user_id)",
                "'user_id ' || CAST(t_user_id AS VARCHAR) || ' appears more than once; the first row is kept'",
            ),
        ]
    return []


def _unknown_user_check() -> tuple[str, str, str]:
    return (
        "user_id: not in users",
        "t_user_id IS NOT NULL AND t_user_id NOT IN (SELECT user_id FROM ok_users)",
        "'user_id ' || CAST(t_user_id AS VARCHAR) || ' is not in users'",
    )


def _csv_lines(path: Path, rows: list[int], *, records: int) -> dict[int, int]:
    """The line of `path` on which each data record in `rows` (0-based, as DuckDB numbers them) starts.

    The header is line 1. Python's csv reader finds the records as DuckDB does: blank lines are
    no record, and a quoted field may span lines. Should it count a different number of records
    than DuckDB read (an unusual dialect), each record is taken to fill one line (row + 2).
    """
    wanted, starts = set(rows), {}
    found = 0
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        next(reader, None)  # the header
        start = reader.line_num + 1
        for record in reader:
            if record:  # [] is a blank line
                if found in wanted:
                    starts[found] = start
                found += 1
            start = reader.line_num + 1
    if found != records:
        return {row: row + 2 for row in rows}
    return starts


def _atomic_copy(con: duckdb.DuckDBPyConnection, query: str, dest: Path, fmt: str, keyring: Keyring | None) -> None:
    """Write the rows of `query` to `dest` (Parquet or CSV) atomically; encrypted when `keyring` is
    given (Parquet modular encryption streamed by pyarrow; a CSV file sealed as a whole)."""
    if keyring is None:
        options = "FORMAT parquet, COMPRESSION zstd" if fmt == "parquet" else "FORMAT csv, HEADER true"
        with atomic_path(dest) as tmp:
            con.execute(f"COPY ({query}) TO {quote_literal(str(tmp))} ({options})")
    elif fmt == "parquet":
        write_parquet(keyring, con.execute(query).to_arrow_reader(), dest)
    else:
        import pyarrow.csv as pacsv

        buffer = pa.BufferOutputStream()
        pacsv.write_csv(con.execute(query).to_arrow_table(), buffer)
        write_sealed(keyring, dest, buffer.getvalue().to_pybytes())


def _erased_check(con, table: TableSchema, erased: Erased | None) -> tuple[str, str, str] | None:
    """The check that rejects rows of erased people, or None when no id of this table was erased."""
    if erased is None or "user_id" not in table.column_names:
        return None
    ids = [
        row[0] for row in con.execute(f"SELECT DISTINCT TRY_CAST(user_id AS BIGINT) FROM src_{table.name}").fetchall()
    ]
    found = sorted(erased(i for i in ids if i is not None))
    if not found:
        return None
    return (
        ERASED,
        f"coalesce(t_user_id IN ({', '.join(str(int(i)) for i in found)}), false)",
        quote_literal("user_id was erased (erasure ledger); its rows are not kept"),
    )


def _ingest_table(
    con, table: TableSchema, path: Path, out_dir: Path, erased: Erased | None = None, keyring: Keyring | None = None
) -> TableReport:
    types = _open_source(con, table, path, keyring)
    report = TableReport(
        table.name, str(path), ignored_columns=[c for c in types if c not in table.column_names and c != "_row"]
    )
    typed_cols = ", ".join(f"{_typed(c, types[c.name])} AS t_{c.name}" for c in table.columns)
    checks = _checks(table, types)
    erased_check = _erased_check(con, table, erased)
    if erased_check is not None:  # first, and alone: an erased person's row gets no other reason
        checks = [erased_check, *((code, f"NOT ({erased_check[1]}) AND ({cond})", msg) for code, cond, msg in checks)]
    flags = ", ".join(f"coalesce({cond}, false) AS c{i}" for i, (_, cond, _) in enumerate(checks))
    bad = " OR ".join(f"c{i}" for i in range(len(checks))) or "false"
    checked = f"checked_{table.name}"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {checked} AS SELECT *, {bad} AS _bad "
        f"FROM (SELECT *, {flags} FROM (SELECT *, {typed_cols} FROM src_{table.name}) AS typed) AS flagged"
    )
    counts = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE _bad), "
        + ", ".join(f"count(*) FILTER (WHERE c{i})" for i in range(len(checks)))
        + f" FROM {checked}"
    ).fetchone()
    report.read, report.rejected = int(counts[0]), int(counts[1])
    report.accepted = report.read - report.rejected
    report.reasons = {code: int(n) for (code, _, _), n in zip(checks, counts[2:], strict=True) if n}
    out_cols = ", ".join(f't_{c} AS "{c}"' for c in table.column_names)
    accepted = f"SELECT {out_cols} FROM {checked} WHERE NOT _bad ORDER BY _row"
    if table.name == "users":  # the other tables are checked against the accepted users
        con.execute(f"CREATE OR REPLACE TEMP TABLE ok_users AS {accepted}")
        accepted = "SELECT * FROM ok_users"
    _atomic_copy(con, accepted, out_dir / f"{table.name}.parquet", "parquet", keyring)
    rejects = out_dir / f"{table.name}.rejects.csv"
    if report.rejected:
        reason = (
            "concat_ws('; ', "
            + ", ".join(f"CASE WHEN c{i} THEN {msg} END" for i, (_, _, msg) in enumerate(checks))
            + ")"
        )
        originals = ", ".join(f'CAST("{c}" AS VARCHAR) AS "{c}"' for c in table.column_names)
        if erased_check is not None:  # none of an erased person's values in the rejects file
            originals = ", ".join(
                f'CASE WHEN c0 THEN NULL ELSE CAST("{c}" AS VARCHAR) END AS "{c}"' for c in table.column_names
            )
        position, source = REJECT_ROW, checked
        if path.suffix == ".csv":
            bad_rows = [int(r[0]) for r in con.execute(f"SELECT _row FROM {checked} WHERE _bad").fetchall()]
            lines = _csv_lines(path, bad_rows, records=report.read)
            con.register("csv_lines", pa.table({"_row": list(lines), REJECT_LINE: list(lines.values())}))
            position, source = REJECT_LINE, f"{checked} JOIN csv_lines USING (_row)"
        query = f"SELECT {position}, {reason} AS _reason, {originals} FROM {source} WHERE _bad ORDER BY _row"
        _atomic_copy(con, query, rejects, "csv", keyring)
        if path.suffix == ".csv":
            con.unregister("csv_lines")
    else:
        rejects.unlink(missing_ok=True)
    con.execute(f"DROP TABLE {checked}")
    return report


def ingest(
    raw_dir: str | Path,
    out_dir: str | Path,
    *,
    progress: bool = False,
    erased: Erased | None = None,
    keyring: Keyring | None = None,
) -> list[TableReport]:
    """Validate the raw tables in `raw_dir` and write accepted rows, rejects and a manifest to `out_dir`.

    `erased` (ids -> the erased ones among them; `ingest_raw` passes the profile's erasure
    ledger) rejects the rows of erased people with reason "user_id: erased". `keyring`
    (`ingest_raw` passes the profile's) encrypts the accepted rows and the rejects files; without
    it they are written in plain (a library call on files of one's own).

    Side effects: creates `out_dir`; replaces its Parquet, rejects and manifest files atomically.
    Raises RawDataError when a required table is absent, unreadable or lacks columns, or when a
    table has no valid row at all.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise RawDataError(
            f"raw data directory {raw_dir} does not exist; "
            f"run `healthmate-features generate --out {raw_dir}` or point --raw at your export"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: find_raw_file(raw_dir, name) for name in RAW_TABLES}
    missing = [f"{raw_dir / name}.parquet" for name in REQUIRED_TABLES if files[name] is None]
    if missing:
        raise RawDataError(
            f"missing raw table file(s): {', '.join(missing)} (or .csv); expected users, health_readings and app_events"
        )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    reports = []
    # users first: the other tables are checked against the accepted users.
    present = {name: path for name, path in files.items() if path is not None}
    try:
        from tqdm import tqdm

        for name in tqdm(present, desc="ingest", unit="table", disable=not progress):
            reports.append(_ingest_table(con, RAW_TABLES[name], present[name], out_dir, erased, keyring))
    finally:
        con.close()
    for r in reports:
        if r.read and not r.accepted:
            raise RawDataError(
                f"table '{r.table}' ({r.source}): all {r.read} rows were rejected "
                f"({', '.join(f'{k}: {v}' for k, v in r.reasons.items())}); see {out_dir / (r.table + '.rejects.csv')}"
            )
    manifest = {
        "raw_dir": str(raw_dir.resolve()),
        "ingested_at": datetime.now(timezone.utc).isoformat(),
        "files": {
            r.table: {"path": str(Path(r.source).resolve()), "sha256": sha256_file(Path(r.source))} for r in reports
        },
        "tables": {r.table: {k: v for k, v in r.__dict__.items() if k != "table"} for r in reports},
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2), durable=False)
    return reports


def ingest_raw(
    raw_dir: str | Path,
    settings: Settings,
    *,
    out_dir: str | Path | None = None,
    batch_rows: int = 100_000,
    progress: bool = False,
) -> tuple[list[TableReport], dict[str, int]]:
    """Validate the raw tables (`ingest`), then store the accepted rows in the profile's raw tables.

    Returns (ingest reports, rows loaded per table; empty when the ingested files are the raw
    tables, as on the embedded profile). Side effects: the accepted rows, rejects files and the
    ingest manifest in `out_dir` (default: settings.ingested_dir), and the profile's raw tables
    (production: COPY into Postgres in chunks of `batch_rows`, swapped in atomically). The raw
    store is checked first, so a down server fails before the validation runs.
    """
    from healthmate_features.backends.ledger import erased_filter

    backend = backend_for(settings)
    backend.prepare_raw_store()
    out_dir = Path(out_dir or settings.ingested_dir)
    reports = ingest(raw_dir, out_dir, progress=progress, erased=erased_filter(settings), keyring=backend.keyring())
    tables = [
        RawTable(
            name, tuple((c.name, c.dtype) for c in schema.columns), primary_key="user_id" if name == "users" else None
        )
        for name, schema in RAW_TABLES.items()
    ]
    return reports, backend.store_raw(out_dir, tables, batch_rows=batch_rows, progress=progress)


def read_rejects(settings: Settings, table: str, *, out_dir: str | Path | None = None) -> bytes:
    """The rejects file of `table` (CSV bytes, decrypted) from the last ingest into `out_dir`
    (default: settings.ingested_dir). Raises NotIngestedError when the table has no rejects file."""
    if table not in RAW_TABLES:
        raise NotIngestedError(f"unknown raw table {table!r}; tables: {', '.join(RAW_TABLES)}")
    path = Path(out_dir or settings.ingested_dir) / f"{table}.rejects.csv"
    if not path.exists():
        raise NotIngestedError(f"table {table!r} has no rejects file ({path}): its last ingest rejected no row")
    if file_key_id(path) is None:
        return path.read_bytes()  # written before encryption
    return read_sealed(backend_for(settings).keyring(), path)


def check_raw_store(raw_dir: str | Path, settings: Settings) -> dict[str, Any]:
    """Return the manifest of the ingest the profile's raw tables hold, if it is `raw_dir` as it is now.

    Raises NotIngestedError otherwise, naming the file that differs and the command to run.
    """
    raw_dir = Path(raw_dir)
    manifest, where, fix = backend_for(settings).loaded_ingest(raw_dir)
    return verify_manifest(manifest, raw_dir, where=where, fix=fix)


def check_ingested(raw_dir: str | Path, out_dir: str | Path) -> dict:
    """Return the ingest manifest if `raw_dir` was ingested into `out_dir` and is unchanged since.

    Raises NotIngestedError otherwise, naming the file that differs and the command to run.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    fix = f"run `healthmate-features ingest --raw {raw_dir}` first"
    path = out_dir / MANIFEST
    if not path.exists():
        raise NotIngestedError(f"raw data in {raw_dir} was not ingested (no {path}); {fix}")
    return verify_manifest(json.loads(path.read_text()), raw_dir, where=str(out_dir), fix=fix)


def verify_manifest(manifest: dict, raw_dir: str | Path, *, where: str, fix: str) -> dict:
    """Check an ingest manifest describes `raw_dir` as it is now (every file's SHA-256); return it.

    `where` names the ingest's destination (a directory, or a Postgres schema) in messages.
    """
    raw_dir = Path(raw_dir)
    if Path(manifest["raw_dir"]) != raw_dir.resolve():
        raise NotIngestedError(f"{where} holds an ingest of {manifest['raw_dir']}, not of {raw_dir}; {fix}")
    for table, info in manifest["files"].items():
        current = find_raw_file(raw_dir, table)
        if current is None or str(current.resolve()) != info["path"] or sha256_file(current) != info["sha256"]:
            raise NotIngestedError(
                f"raw table '{table}' in {raw_dir} changed since it was ingested into {where}; {fix}"
            )
    missing = [name for name in REQUIRED_TABLES if name not in manifest["files"]]
    if missing:
        raise NotIngestedError(f"the ingest in {where} lacks table(s) {', '.join(missing)}; {fix}")
    return manifest
