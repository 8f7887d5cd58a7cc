"""Every class of bad raw input gives a clear error or a rejects row with its reason; nothing is lost."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from healthmate_features.cli import main
from healthmate_features.errors import RawDataError
from healthmate_features.raw.ingest import ingest


def _ingest(tiny, tmp_path, tables):
    raw = tiny.write_raw(tmp_path / "raw", tables)
    out = tmp_path / "ingested"
    reports = {r.table: r for r in ingest(raw, out)}
    return reports, out


def _rejects(out, table):
    return pd.read_csv(out / f"{table}.rejects.csv", dtype=str)


def test_clean_data_is_accepted_whole(tmp_path, tiny):
    reports, out = _ingest(tiny, tmp_path, tiny.raw_tables())
    for name, df in tiny.raw_tables().items():
        assert (reports[name].read, reports[name].accepted, reports[name].rejected) == (len(df), len(df), 0)
        assert not (out / f"{name}.rejects.csv").exists()
    typed = pd.read_parquet(out / "health_readings.parquet")
    assert str(typed.recorded_at.dtype) == "datetime64[us, UTC]"
    manifest = json.loads((out / "_ingest.json").read_text())
    assert set(manifest["files"]) == {"users", "health_readings", "app_events", "labels"}


@pytest.mark.parametrize(
    "table, column, value, reason",
    [
        ("health_readings", "value", 900.0, "resting_heart_rate value 900.0 is physically impossible"),
        ("health_readings", "unit", "kg", "unit 'kg' is wrong for resting_heart_rate; expected bpm"),
        ("health_readings", "metric", "mood", "metric 'mood' is not one of"),
        ("health_readings", "user_id", 99, "user_id 99 is not in users"),
        ("health_readings", "value", None, "value is missing"),
        ("health_readings", "device", "toaster", "device 'toaster' is not one of"),
        ("app_events", "event_type", "dance", "event_type 'dance' is not one of"),
        ("app_events", "duration_minutes", 10_000.0, "duration_minutes 10000.0 is outside 0..720"),
        ("users", "birth_year", 1850, "birth_year 1850 is outside 1900..2015"),
        ("users", "sex", "x", "sex 'x' is not one of"),
        ("users", "conditions", "hypertension;flu", "names an unknown condition"),
        ("labels", "adverse_event_30d", 3, "adverse_event_30d 3 is outside 0..1"),
    ],
)
def test_bad_values_go_to_the_rejects_file_with_their_reason(tmp_path, table, column, value, reason, tiny):
    tables = tiny.raw_tables()
    df = tables[table].copy()
    row = 0 if table != "app_events" else 3  # app_events row 3: a notification, duration may be null
    if column == "duration_minutes":
        row = 0
    df[column] = df[column].astype(object)
    df.loc[row, column] = value
    tables[table] = df
    reports, out = _ingest(tiny, tmp_path, tables)
    report = reports[table]
    assert (report.read, report.rejected, report.accepted) == (len(df), 1, len(df) - 1)  # nothing lost
    rejects = _rejects(out, table)
    assert len(rejects) == 1 and rejects.loc[0, "_row"] == str(row)
    assert reason in rejects.loc[0, "_reason"], rejects.loc[0, "_reason"]
    assert sum(report.reasons.values()) >= 1
    assert len(pd.read_parquet(out / f"{table}.parquet")) == len(df) - 1


def test_session_without_duration_and_duplicate_user_are_rejected(tmp_path, tiny):
    tables = tiny.raw_tables()
    tables["app_events"].loc[0, "duration_minutes"] = None
    tables["users"] = pd.concat([tables["users"], tables["users"].iloc[[0]]], ignore_index=True)
    reports, out = _ingest(tiny, tmp_path, tables)
    assert reports["app_events"].reasons == {"duration_minutes: missing for session": 1}
    assert reports["users"].reasons == {"user_id: duplicate": 1}
    assert "appears more than once" in _rejects(out, "users").loc[0, "_reason"]


def test_timestamps_must_be_parseable_and_timezone_aware(tmp_path, tiny):
    tables = tiny.raw_tables()
    events = tables["app_events"].copy()
    events["at"] = events["at"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    events.loc[1, "at"] = "2025-01-03 12:00:00"  # no offset
    events.loc[2, "at"] = "yesterday+01:00"  # not a timestamp
    events.loc[3, "at"] = "not-a-date"  # not a timestamp either, although it has no offset
    events.loc[4, "at"] = "2025-01-02T10:00:00+02:00"  # fine: converted to UTC
    tables["app_events"] = events
    reports, out = _ingest(tiny, tmp_path, tables)
    assert reports["app_events"].reasons == {"at: no timezone": 1, "at: not a timestamp": 2}
    reasons = list(_rejects(out, "app_events")._reason)
    assert reasons[0] == "at 2025-01-03 12:00:00 has no timezone offset; append Z or +00:00"
    unparseable = "is not a timestamp (unparseable); write ISO 8601 with an offset, e.g. 2025-01-31T08:00:00Z"
    assert reasons[1] == f"at yesterday+01:00 {unparseable}"
    assert reasons[2] == f"at not-a-date {unparseable}"  # not "has no timezone offset"
    typed = pd.read_parquet(out / "app_events.parquet")
    assert pd.Timestamp("2025-01-02T08:00:00Z") in set(typed["at"])


def test_timezone_naive_timestamp_column_is_rejected_row_by_row(tmp_path, tiny):
    tables = tiny.raw_tables()
    tables["labels"]["event_timestamp"] = tables["labels"]["event_timestamp"].dt.tz_localize(None)
    raw = tiny.write_raw(tmp_path / "raw", tables)
    with pytest.raises(RawDataError, match="all 3 rows were rejected.*event_timestamp: timezone-naive: 3"):
        ingest(raw, tmp_path / "out")
    assert "timezone-naive" in _rejects(tmp_path / "out", "labels").loc[0, "_reason"]


def test_csv_input_is_validated_like_parquet(tmp_path, tiny):
    raw = tmp_path / "raw"
    tiny.write_raw(raw)
    users = tiny.raw_tables()["users"]
    (raw / "users.parquet").unlink()
    users.assign(
        signup_at=users.signup_at.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00"), birth_year=["1980", "nineteen"]
    ).to_csv(raw / "users.csv", index=False)
    reports = {r.table: r for r in ingest(raw, tmp_path / "out")}
    assert reports["users"].reasons == {"birth_year: not a number": 1}
    # the readings of the rejected user are rejected too, with their own reason
    assert reports["app_events"].reasons == {"user_id: not in users": 1}


def test_csv_rejects_name_the_line_an_editor_shows_and_parquet_rejects_the_row_index(tmp_path, tiny):
    raw = tiny.write_raw(tmp_path / "raw")
    events = tiny.raw_tables()["app_events"]
    events.loc[0, "session_id"] = "s1\nsecond line of a quoted field"  # one record on two lines
    events.loc[5, "event_type"] = "dance"  # data row 5
    (raw / "app_events.parquet").unlink()
    text = events.assign(at=events["at"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(index=False)
    lines = text.splitlines(keepends=True)
    (raw / "app_events.csv").write_text("".join(lines[:4] + ["\n"] + lines[4:]))  # and a blank line before it
    shown = (raw / "app_events.csv").read_text().splitlines()
    bad_line = next(i for i, line in enumerate(shown, start=1) if ",dance," in line)
    assert bad_line == 9  # header 1, row 0 on lines 2-3, row 1 on 4, the blank line 5, rows 2-4 on 6-8
    readings = tiny.raw_tables()["health_readings"]
    readings.loc[7, "value"] = -5.0
    readings.to_parquet(raw / "health_readings.parquet", index=False)

    ingest(raw, tmp_path / "out")
    csv_rejects = _rejects(tmp_path / "out", "app_events")
    assert list(csv_rejects.columns[:2]) == ["_line", "_reason"]
    assert csv_rejects.loc[0, "_line"] == str(bad_line) and "event_type 'dance'" in csv_rejects.loc[0, "_reason"]
    parquet_rejects = _rejects(tmp_path / "out", "health_readings")
    assert list(parquet_rejects.columns[:2]) == ["_row", "_reason"] and parquet_rejects.loc[0, "_row"] == "7"


def test_unreadable_missing_and_incomplete_inputs_fail_with_the_file_named(tmp_path, tiny):
    raw = tiny.write_raw(tmp_path / "raw")
    (raw / "health_readings.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(
        RawDataError,
        match=r"cannot read .*health_readings.parquet for table 'health_readings'.*expected a Parquet file",
    ):
        ingest(raw, tmp_path / "out")
    (raw / "health_readings.parquet").unlink()
    with pytest.raises(RawDataError, match=r"missing raw table file\(s\): .*health_readings.parquet"):
        ingest(raw, tmp_path / "out")
    tiny.write_raw(raw)
    tiny.raw_tables()["users"].drop(columns=["sex"]).to_parquet(raw / "users.parquet")
    with pytest.raises(
        RawDataError, match=r"users.parquet \(table 'users'\) is missing column\(s\) sex \(columns: user_id, signup_at"
    ):
        ingest(raw, tmp_path / "out")
    with pytest.raises(RawDataError, match="does not exist"):
        ingest(tmp_path / "nowhere", tmp_path / "out")


def test_cli_reports_counts_per_reason_and_the_rejects_file(tmp_path, monkeypatch, tiny):
    tables = tiny.raw_tables()
    tables["health_readings"].loc[0, "value"] = 900.0
    raw = tiny.write_raw(tmp_path / "raw", tables)
    result = CliRunner().invoke(main, ["ingest", "--raw", str(raw), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "health_readings: read 82, accepted 81, rejected 1" in result.output
    assert "1  value: impossible resting_heart_rate" in result.output
    assert "health_readings.rejects.csv" in result.output
    bad = CliRunner().invoke(main, ["ingest", "--raw", str(tmp_path / "nowhere"), "--quiet"])
    assert bad.exit_code == 1 and "Error: raw data directory" in bad.output
