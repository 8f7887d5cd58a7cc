"""The synthetic data generator: deterministic, schema-conformant, realistic, and learnable."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from healthmate_features.cli import main
from healthmate_features.raw.generate import arrow_schema, generate, simulate
from healthmate_features.raw.schemas import CONDITIONS, DEVICES, EVENT_TYPES, METRIC_BY_NAME, RAW_TABLES, SEXES

START = datetime(2025, 1, 1, tzinfo=timezone.utc)
DAYS = 180


@pytest.fixture(scope="module")
def sim():
    return simulate(users=600, days=DAYS, seed=11)


@pytest.fixture(scope="module")
def frames(sim):
    return {name: table.to_pandas() for name, table in sim.tables.items()}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _invalid_readings(r: pd.DataFrame) -> pd.Series:
    low = r.metric.map(lambda m: METRIC_BY_NAME[m].low)
    high = r.metric.map(lambda m: METRIC_BY_NAME[m].high)
    unit = r.metric.map(lambda m: METRIC_BY_NAME[m].unit)
    return (r.value < low) | (r.value > high) | (r.unit != unit)


def _invalid_events(e: pd.DataFrame) -> pd.Series:
    session = e.event_type == "session"
    return session & (e.duration_minutes.isna() | (e.duration_minutes < 0) | (e.duration_minutes > 720))


def test_same_seed_writes_identical_files_and_another_seed_differs(tmp_path):
    counts = [
        generate(tmp_path / name, users=80, days=60, seed=seed, progress=False)
        for name, seed in (("a", 5), ("b", 5), ("c", 6))
    ]
    assert counts[0] == counts[1]
    for table in RAW_TABLES:
        assert _sha(tmp_path / "a" / f"{table}.parquet") == _sha(tmp_path / "b" / f"{table}.parquet"), table
        assert pq.read_table(tmp_path / "a" / f"{table}.parquet").equals(
            pq.read_table(tmp_path / "b" / f"{table}.parquet")
        )
    assert _sha(tmp_path / "a" / "health_readings.parquet") != _sha(tmp_path / "c" / "health_readings.parquet")
    assert not pq.read_table(tmp_path / "a" / "app_events.parquet").equals(
        pq.read_table(tmp_path / "c" / "app_events.parquet")
    )


def test_files_hold_what_simulate_returns_for_the_given_start(tmp_path):
    generate(tmp_path, users=40, days=50, seed=8, start="2024-02-10", progress=False)
    sim = simulate(users=40, days=50, seed=8, start="2024-02-10")
    for name in RAW_TABLES:
        assert pq.read_table(tmp_path / f"{name}.parquet").equals(sim.tables[name]), name
    recorded = sim.tables["health_readings"].column("recorded_at").to_pandas()
    assert recorded.min() >= pd.Timestamp("2024-02-10", tz="UTC") and recorded.max() < pd.Timestamp(
        "2024-03-31", tz="UTC"
    )


def test_files_follow_the_documented_schemas_and_counts(tmp_path):
    counts = generate(tmp_path, users=60, days=75, seed=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{t}.parquet" for t in RAW_TABLES), (
        "temporary files left"
    )
    for name, schema in RAW_TABLES.items():
        table = pq.read_table(tmp_path / f"{name}.parquet")
        assert table.schema.names == schema.column_names
        assert table.schema.equals(arrow_schema(schema)), (name, table.schema)
        assert table.num_rows == counts[name] > 0
        for column in schema.columns:
            if column.dtype == "timestamp":
                assert str(table.schema.field(column.name).type) == "timestamp[us, tz=UTC]"
            if not column.nullable:
                assert table.column(column.name).null_count == 0, (name, column.name)
    users = pq.read_table(tmp_path / "users.parquet").column("user_id").to_pylist()
    assert users == list(range(1, 61))


def test_cli_generate_prints_counts(tmp_path):
    result = CliRunner().invoke(
        main, ["generate", "--users", "20", "--days", "30", "--seed", "3", "--out", str(tmp_path), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "users: 20 rows" in result.output
    for table in RAW_TABLES:
        assert f"{table}:" in result.output
        assert (tmp_path / f"{table}.parquet").exists()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="users and days"):
        simulate(users=0, days=10, seed=1)
    with pytest.raises(ValueError, match="seed >= 0"):
        simulate(users=5, days=10, seed=-1)
    with pytest.raises(ValueError, match="invalid_rate"):
        simulate(users=5, days=10, seed=1, invalid_rate=2)


def test_nothing_is_recorded_before_signup(frames):
    signup = frames["users"].set_index("user_id").signup_at
    r, e = frames["health_readings"], frames["app_events"]
    assert (r.recorded_at > r.user_id.map(signup)).all()
    assert (e["at"] > e.user_id.map(signup)).all()
    assert (signup < START).any() and (signup > START).any(), "some users sign up during the period"
    end = START + timedelta(days=DAYS)
    assert (r.recorded_at < end).all() and (e["at"] < end).all()


def test_app_events_stop_at_disengagement_and_readings_fade(sim, frames):
    gone = sim.disengaged_at.to_pandas().dropna().set_index("user_id").disengaged_at
    assert 0.2 < len(gone) / len(frames["users"]) < 0.9
    e = frames["app_events"]
    e = e[e.user_id.isin(gone.index)]
    assert (e["at"] < e.user_id.map(gone)).all()
    r = frames["health_readings"]
    r = r[r.user_id.isin(gone.index)]
    since = (r.recorded_at - r.user_id.map(gone)).dt.days
    before, long_after = ((since >= -30) & (since < 0)).sum(), ((since >= 30) & (since < 60)).sum()
    assert long_after < 0.05 * before


def test_values_are_valid_when_no_invalid_rows_are_asked_for():
    tables = simulate(users=300, days=90, seed=4, invalid_rate=0).tables
    r, e, u = (tables[t].to_pandas() for t in ("health_readings", "app_events", "users"))
    assert not _invalid_readings(r).any()
    assert r.device.dropna().isin(DEVICES).all() and r.device.isna().mean() < 0.02
    assert e.event_type.isin(EVENT_TYPES).all()
    session = e.event_type == "session"
    assert not _invalid_events(e).any()
    assert e.session_id[session].notna().all() and e.session_id[session].is_unique
    assert e.session_id[~session].isna().all() and e.duration_minutes[~session].isna().all()
    assert u.sex.isin(SEXES).all()
    tokens = {t for c in u.conditions.dropna() for t in c.split(";") if t}
    assert tokens <= set(CONDITIONS)


def test_invalid_rows_are_injected_at_the_asked_rate():
    tables = simulate(users=300, days=90, seed=4, invalid_rate=0.01).tables
    r, e = tables["health_readings"].to_pandas(), tables["app_events"].to_pandas()
    bad_r, bad_e = _invalid_readings(r), _invalid_events(e)
    assert 0.005 < bad_r.mean() < 0.02 and 0.005 < bad_e.mean() < 0.02
    assert (r.value[bad_r] < 0).any() and (r.value[bad_r] > 220).any()
    assert (r.unit[bad_r] != r.metric[bad_r].map(lambda m: METRIC_BY_NAME[m].unit)).any()
    assert e.duration_minutes[bad_e].isna().any() and (e.duration_minutes[bad_e] < 0).any()


def test_default_invalid_rate_is_small(frames):
    r, e = frames["health_readings"], frames["app_events"]
    assert _invalid_readings(r).mean() < 5e-4 and _invalid_events(e).mean() < 5e-4


def test_daily_and_weekly_rhythms(frames):
    r = frames["health_readings"]
    hour = r.recorded_at.dt.hour
    for metric in ("weight", "sleep_minutes", "resting_heart_rate"):
        assert (hour[r.metric == metric] < 12).mean() > 0.9, metric
    assert (hour[r.metric == "steps"] >= 11).mean() > 0.95
    sleep = r[(r.metric == "sleep_minutes") & (r.device == "watch")]
    weekend = sleep.recorded_at.dt.dayofweek >= 5
    assert sleep.value[weekend].mean() > sleep.value[~weekend].mean() + 15
    readings_per_day = r.groupby(["user_id", r.recorded_at.dt.floor("D")]).size()
    assert readings_per_day.groupby("user_id").size().median() < DAYS * 0.9, "device gaps leave missing days"


def test_glucose_and_blood_pressure_follow_conditions(frames):
    u, r = frames["users"], frames["health_readings"]
    conditions = u.set_index("user_id").conditions.fillna("")
    per_user = r.groupby(["user_id", "metric"]).size().unstack(fill_value=0).reindex(conditions.index, fill_value=0)
    diabetic = conditions.str.contains("type2_diabetes")
    hypertensive = conditions.str.contains("hypertension")
    assert per_user.blood_glucose[diabetic].mean() > 10 * per_user.blood_glucose[~diabetic].mean()
    assert per_user.systolic_bp[hypertensive].mean() > 4 * per_user.systolic_bp[~hypertensive].mean()
    glucose = r[r.metric == "blood_glucose"].assign(diabetic=lambda x: x.user_id.map(diabetic))
    assert glucose.groupby("diabetic").value.mean().diff().iloc[-1] > 30


def test_notifications_are_opened_only_after_being_sent(frames):
    e = frames["app_events"]
    day = e["at"].dt.floor("D")
    counts = e.groupby(["user_id", day, "event_type"]).size().unstack(fill_value=0)
    assert (counts.notification_opened <= counts.notification_sent).all()
    first = e.groupby(["user_id", "event_type"])["at"].min().unstack()
    opened = first.notification_opened.dropna()
    assert (opened > first.notification_sent[opened.index]).all()
    with_med = e[e.event_type == "medication_logged"].user_id.unique()
    conditions = frames["users"].set_index("user_id").conditions.fillna("")
    assert (conditions[with_med] != "").all()


def test_labels_are_fully_observed_and_consistent_with_the_truth(sim, frames):
    labels, users, e = frames["labels"], frames["users"], frames["app_events"]
    t = labels.event_timestamp
    assert (t + timedelta(days=30) <= START + timedelta(days=DAYS)).all()
    first_possible = labels.user_id.map(users.set_index("user_id").signup_at.clip(lower=START)) + timedelta(days=14)
    assert (t >= first_possible).all()
    assert labels.groupby("user_id").event_timestamp.diff().dropna().dt.days.between(9, 19).all()

    last = e[(e.event_type != "notification_sent") & ~_invalid_events(e)].groupby("user_id")["at"].max()
    user_last = labels.user_id.map(last)
    assert (t < user_last).all(), "no labels after a user's last activity"
    expected = (user_last > t) & (user_last <= t + timedelta(days=14))
    assert (labels.disengaged_14d == expected.astype(int)).all()

    adverse = sim.adverse_events.to_pandas()
    pairs = labels.reset_index().merge(adverse, on="user_id")
    hit = pairs[(pairs["at"] > pairs.event_timestamp) & (pairs["at"] <= pairs.event_timestamp + timedelta(days=30))]
    assert (labels.adverse_event_30d == labels.index.isin(hit["index"]).astype(int)).all()


def test_label_prevalence_is_sane(frames):
    labels = frames["labels"]
    assert len(labels) > 2000
    for column in ("adverse_event_30d", "disengaged_14d"):
        assert 0.03 < labels[column].mean() < 0.25, (column, labels[column].mean())


def _window(events: pd.DataFrame, labels: pd.DataFrame, time: str, days: int) -> pd.DataFrame:
    """Rows of `events` in the `days` before each label time (the label's index as column 'label')."""
    pairs = labels[["user_id", "event_timestamp"]].reset_index(names="label").merge(events, on="user_id")
    inside = (pairs[time] <= pairs.event_timestamp) & (pairs[time] > pairs.event_timestamp - timedelta(days=days))
    return pairs[inside]


def test_outcomes_are_learnable_from_past_data(frames):
    labels, r, e = frames["labels"], frames["health_readings"], frames["app_events"]
    rhr = _window(r[r.metric == "resting_heart_rate"], labels, "recorded_at", 30).groupby("label").value.mean()
    by_adverse = rhr.groupby(labels.adverse_event_30d.reindex(rhr.index)).mean()
    assert by_adverse[1] > by_adverse[0] + 2, by_adverse

    sessions = (
        _window(e[e.event_type == "session"], labels, "at", 14)
        .groupby("label")
        .size()
        .reindex(labels.index, fill_value=0)
    )
    by_churn = sessions.groupby(labels.disengaged_14d).mean()
    assert by_churn[1] < 0.75 * by_churn[0], by_churn

    notes = _window(e[e.event_type.str.startswith("notification")], labels, "at", 30)
    rate = notes.groupby("label").event_type.apply(
        lambda s: (s == "notification_opened").sum() / max((s == "notification_sent").sum(), 1)
    )
    by_churn = rate.groupby(labels.disengaged_14d.reindex(rate.index)).mean()
    assert by_churn[1] < by_churn[0] - 0.05, by_churn
