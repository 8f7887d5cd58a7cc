"""Drift against a training split on generated data: calibrated thresholds, no false alarms, real shifts found."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from healthmate_features.datasets.sketches import OTHER, place, sketch_frame
from healthmate_features.errors import DriftError
from healthmate_features.monitoring import drift

SEEDS = 200


def population(rows: int, rng: np.random.Generator, *, shift: float = 0.0, smokers: float = 0.2) -> pd.DataFrame:
    """Five features of different shapes; `shift` moves the heart rate by that many SDs, `smokers` the category mix."""
    heart = rng.normal(70 + 10 * shift, 10, rows)
    heart[rng.random(rows) < 0.05] = np.nan
    return pd.DataFrame(
        {
            "resting_heart_rate": heart,
            "steps": rng.lognormal(8.5, 0.6, rows),
            "sessions": rng.poisson(3, rows).astype("int64"),
            "smoker": np.where(rng.random(rows) < smokers, "yes", "no"),
            "has_diabetes": rng.random(rows) < 0.1,
        }
    )


def test_sketches_count_every_row_and_pick_the_kind():
    frame = population(3000, np.random.default_rng(1))
    found = sketch_frame(frame)
    assert {name: s["kind"] for name, s in found.items()} == {
        "resting_heart_rate": "numeric",
        "steps": "numeric",
        "sessions": "categorical",
        "smoker": "categorical",
        "has_diabetes": "categorical",
    }
    for name, sketch in found.items():
        counted = sum(sketch["counts"]) if sketch["kind"] == "numeric" else sum(sketch["counts"].values())
        assert counted + sketch["nulls"] == sketch["rows"] == 3000, name
    assert found["resting_heart_rate"]["nulls"] == int(frame["resting_heart_rate"].isna().sum())
    assert len(found["steps"]["edges"]) == 99 and len(found["steps"]["counts"]) == 100
    # placing the reference itself gives the reference's counts back
    assert place(found["steps"], frame["steps"])["counts"] == found["steps"]["counts"]
    unseen = place(found["smoker"], pd.Series(["yes", "maybe", None]))
    assert unseen["counts"] == {"no": 0, "yes": 1, OTHER: 1} and unseen["nulls"] == 1


def _false_alarms(reference_rows: int, recent_rows: int, *, fixed_psi: float | None = None) -> tuple[float, float]:
    """(share of seeds with any feature "drift", share with any "warn" or "drift"); with
    `fixed_psi`, the share with any PSI above it (and 0)."""
    drifts = warns = 0
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        reference = sketch_frame(population(reference_rows, rng))
        found = drift.compare(reference, population(recent_rows, rng), seed=seed, resamples=200)
        if fixed_psi is None:
            drifts += any(f.status == "drift" for f in found)
            warns += any(f.status != "ok" for f in found)
        else:
            drifts += any(f.psi is not None and f.psi > fixed_psi for f in found)
    return drifts / SEEDS, warns / SEEDS


@pytest.mark.slow
@pytest.mark.parametrize("recent_rows", [40, 400, 4000])
def test_a_fresh_sample_of_the_same_population_is_not_flagged(recent_rows):
    """False alarms (any of the 5 features flagged) over 200 seeds; alpha is 0.01 per measure."""
    drifted, warned = _false_alarms(2000, recent_rows)
    print(
        f"\nfalse alarms, 2000 training rows vs {recent_rows} recent rows, {SEEDS} seeds: "
        f"drift {drifted:.3f}, warn or drift {warned:.3f}"
    )
    assert drifted <= 0.02
    assert warned <= 0.15  # 5 features x 2 measures (+ nulls) at 0.01 / 5 each, and PSI at 0.01 each


@pytest.mark.slow
def test_a_fixed_psi_cut_off_would_fire_on_small_unchanged_samples():
    """Why the threshold is calibrated: PSI > 0.1 on 40 unchanged rows is common."""
    fired, _ = _false_alarms(2000, 40, fixed_psi=0.1)
    print(f"\nPSI > 0.1 on 40 unchanged rows, {SEEDS} seeds: {fired:.3f}")
    assert fired > 0.3


def test_a_moved_null_fraction_warns_without_calling_it_drift():
    rng = np.random.default_rng(2)
    reference = sketch_frame(population(2000, rng))
    recent = population(1000, rng)
    recent.loc[recent.index[:400], "resting_heart_rate"] = np.nan  # 5% -> about 43% missing
    by_name = {f.feature: f for f in drift.compare(reference, recent)}
    moved = by_name["resting_heart_rate"]
    assert moved.null_shift and moved.status == "warn"
    assert moved.null_fraction[0] == pytest.approx(0.05, abs=0.02) and moved.null_fraction[1] > 0.4
    assert not any(f.null_shift for name, f in by_name.items() if name != "resting_heart_rate")


def test_a_shifted_population_is_flagged_and_ranked_first():
    rng = np.random.default_rng(5)
    reference = sketch_frame(population(2000, rng))
    found = drift.compare(reference, population(1000, rng, shift=0.5, smokers=0.45), seed=5)
    by_name = {f.feature: f for f in found}
    assert by_name["resting_heart_rate"].status == "drift"
    assert by_name["smoker"].status == "drift" and by_name["smoker"].test == "chi2"
    assert {f.feature for f in found[:2]} == {"resting_heart_rate", "smoker"}
    assert [f.status for f in found[2:]] == ["ok", "ok", "ok"]
    assert all(f.psi_threshold is not None and f.psi_threshold >= drift.PSI_FLOOR for f in found)
    assert by_name["resting_heart_rate"].test == "ks" and by_name["resting_heart_rate"].p_value < 1e-6


def test_the_ks_statistic_on_bins_is_close_to_scipys_exact_one():
    from scipy import stats

    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 5000), rng.normal(0.1, 1, 3000)
    reference = sketch_frame(pd.DataFrame({"x": a}))["x"]
    (found,) = drift.compare({"x": reference}, pd.DataFrame({"x": b}))
    exact = stats.ks_2samp(a, b)
    assert found.statistic == pytest.approx(exact.statistic, abs=0.01)
    assert found.statistic <= exact.statistic + 1e-12  # a lower bound: the CDFs compared at the edges only


def test_a_feature_with_no_recent_values_is_no_data_not_drift():
    rng = np.random.default_rng(0)
    reference = sketch_frame(population(500, rng))
    (found,) = drift.compare({"steps": reference["steps"]}, {"steps": pd.Series([], dtype="float64")})
    assert found.status == "no_data" and found.psi is None


@pytest.mark.parametrize("text", ["7", "0d", "7 days", "-1d", "1y"])
def test_a_bad_window_is_refused_with_the_units(text):
    with pytest.raises(DriftError, match="30m, 12h, 7d or 2w"):
        drift.parse_duration(text)


def test_windows_parse():
    assert drift.parse_duration("7d").days == 7
    assert drift.parse_duration("12h").total_seconds() == 12 * 3600


def test_the_cli_mirrors_the_library_constants():
    from healthmate_features.cli import monitor

    assert monitor.SOURCES == drift.SOURCES and monitor.ALPHA == drift.ALPHA


def test_an_old_version_without_sketches_is_sketched_from_its_stored_split(tmp_path, monkeypatch):
    """Versions are immutable: one saved before manifests held sketches gets them from joined_train."""
    from healthmate_features.datasets import manifest
    from healthmate_features.datasets.ref import DatasetRef
    from healthmate_features.datasets.registry import DatasetRegistry

    from ..helpers.datasets import make_dataset

    registry = DatasetRegistry(tmp_path)
    new = registry.save(make_dataset(seed=1, rows=400), "risk")
    with monkeypatch.context() as patched:
        patched.setattr(manifest, "sketch_frame", lambda frame, columns=None: {})
        old = registry.save(make_dataset(seed=1, rows=400), "risk_old")
    assert registry.show("risk_old", old)["splits"]["joined_train"]["sketches"] == {}
    stored, origin = drift.reference_sketches(registry, DatasetRef("risk", new))
    computed, old_origin = drift.reference_sketches(registry, DatasetRef("risk_old", old))
    assert (origin, old_origin) == ("manifest sketches", "stored joined_train split")
    assert computed == stored and set(stored) == {"a", "b", "c"}  # the feature refs' features, not user_id


def test_a_version_without_joined_frames_cannot_be_compared_and_says_why(tmp_path):
    from healthmate_features.datasets.ref import DatasetRef
    from healthmate_features.datasets.registry import DatasetRegistry
    from healthmate_features.errors import DatasetVersionError

    from ..helpers.datasets import make_dataset

    full = make_dataset(seed=2, rows=60)
    bare = type(full)(
        X_train=full.X_train,
        X_test=full.X_test,
        y_train=full.y_train,
        y_test=full.y_test,
        feature_names=full.feature_names,
        metadata=full.metadata,
    )
    registry = DatasetRegistry(tmp_path)
    version = registry.save(bare, "bare")
    with pytest.raises(DatasetVersionError, match="no distribution sketches and no joined_train split"):
        drift.reference_sketches(registry, DatasetRef("bare", version))


def test_a_feast_feature_log_is_read_over_the_window(tmp_path):
    """Feast's logged schema: `<view>__<feature>` columns and `__log_timestamp`, Parquet partitioned by date."""
    from datetime import datetime, timedelta, timezone

    import pyarrow as pa
    import pyarrow.parquet as pq
    from feast.feature_logging import LOG_DATE_FIELD, LOG_TIMESTAMP_FIELD

    assert drift.LOG_TIMESTAMP == LOG_TIMESTAMP_FIELD
    end = datetime(2026, 3, 10, tzinfo=timezone.utc)
    stamps = [end - timedelta(hours=h) for h in range(0, 24 * 10, 6)]  # 10 days, every 6 hours
    table = pa.table(
        {
            "health_rolling__steps_mean_7d": [float(i) for i in range(len(stamps))],
            "health_rolling__steps_mean_7d__status": ["PRESENT"] * len(stamps),
            LOG_TIMESTAMP_FIELD: pa.array(stamps, pa.timestamp("us", tz="UTC")),
            LOG_DATE_FIELD: pa.array([s.date() for s in stamps], pa.date32()),
        }
    )
    pq.write_to_dataset(table, tmp_path / "log", partition_cols=[LOG_DATE_FIELD])
    refs = ["health_rolling:steps_mean_7d", "profile:age_years"]
    values, window, skipped = drift.served_log_values(tmp_path / "log", refs, since=timedelta(days=2))
    assert window == {"start": end - timedelta(days=2), "end": end}
    assert sorted(values["steps_mean_7d"]) == [float(i) for i in range(8)]  # (end - 2d, end]: 8 logs
    assert skipped == [{"feature": "age_years", "view": "profile", "reason": "not in the served-feature log"}]
    with pytest.raises(DriftError, match="no served-feature log at"):
        drift.served_log_values(tmp_path / "none", refs, since=timedelta(days=2))
