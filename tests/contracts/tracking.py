"""The tracking contract: logging, history, comparison and the dashboard's latest results behave
alike on every backend. Run on SQLite by tests/unit/test_tracking.py and on Postgres by
tests/integration/test_tracking.py."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from healthmate_features.backends import open_sql_store
from healthmate_features.errors import TrackingError
from healthmate_features.tracking import Tracker

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)


def _log(tracker, version, metrics, *, dataset="health_risk@v1", env="staging", minutes=0, **kw):
    return tracker.log_metrics(
        "risk",
        version=version,
        dataset=dataset,
        environment=env,
        metrics=metrics,
        at=T0 + timedelta(minutes=minutes),
        **kw,
    )


class TrackingContract:
    """Model tracking on one backend: a subclass provides the `backend_settings` fixture."""

    @pytest.fixture
    def tracker(self, backend_settings):
        with open_sql_store(backend_settings) as store:
            yield Tracker(store)

    def test_a_run_names_a_version_the_dataset_registry_holds_or_says_it_is_external(
        self, backend_settings, make_dataset
    ):
        from click.testing import CliRunner

        from healthmate_features.cli import main
        from healthmate_features.datasets.registry import DatasetRegistry
        from healthmate_features.errors import DatasetNotFoundError

        registry = DatasetRegistry.from_settings(backend_settings)
        assert registry.save(make_dataset(), "health_risk") == "1.0.0"
        runner = CliRunner(env=backend_settings.to_env())

        def log(dataset, *extra):
            args = ["--model", "risk", "--version", "1.0", "--dataset", dataset, *extra, "--env", "staging"]
            return runner.invoke(main, ["models", "log", *args, "--metric", "auc=0.8"])

        unknown = log("nosuch@9.9.9")
        assert unknown.exit_code == 1
        assert f"Error: dataset nosuch@9.9.9 is not in the dataset registry at {registry.uri}: it has no dataset " in (
            unknown.output
        )
        assert "'nosuch' (datasets: health_risk); log the run on a saved version" in unknown.output
        assert "pass external_dataset=True (--external-dataset) if the dataset is kept in another registry" in (
            unknown.output
        )
        label = log("health_risk@v3")
        assert label.exit_code == 1
        assert (
            "'health_risk' has no version 'v3' (its versions: 1.0.0; registry versions are MAJOR.MINOR.PATCH); "
            "pass one of them, e.g. health_risk@1.0.0, or pass external_dataset=True (--external-dataset)"
        ) in label.output
        assert "'health_risk' has no version '1.0.1' (its versions: 1.0.0); " in log("health_risk@1.0.1").output
        assert "logged run 1: risk 1.0 on health_risk@1.0.0 in staging" in log("health_risk@1.0.0").output
        assert "logged run 2: risk 1.0 on nosuch@9.9.9" in log("nosuch@9.9.9", "--external-dataset").output
        with open_sql_store(backend_settings) as store:
            assert [r.dataset for r in Tracker(store).history("risk")] == ["health_risk@1.0.0", "nosuch@9.9.9"]
            with pytest.raises(DatasetNotFoundError, match=r"'health_risk' has no version '2\.0\.0'"):
                _log(Tracker(store, datasets=registry), "2.0", {"auc": 0.9}, dataset="health_risk@2.0.0")

    def test_log_and_history_over_time(self, tracker):
        run = _log(tracker, "1.0", {"AUC": 0.81, "accuracy": 0.9}, params={"max_depth": 4, "lr": 0.1})
        assert run.metrics == {"auc": 0.81, "accuracy": 0.9}
        assert run.dataset == "health_risk@v1"
        _log(tracker, "1.1", {"auc": 0.84}, minutes=10, env="production")
        _log(tracker, "1.0", {"auc": 0.80}, minutes=5, env="development")

        history = tracker.history("risk")
        assert [(r.model_version, r.metric) for r in history] == [
            ("1.0", "accuracy"),
            ("1.0", "auc"),
            ("1.0", "auc"),
            ("1.1", "auc"),
        ]
        assert [r.logged_at for r in history] == sorted(r.logged_at for r in history)
        assert history[0].params == {"lr": 0.1, "max_depth": 4}
        assert history[0].logged_at == T0 and history[0].logged_at.tzinfo == timezone.utc

        auc = tracker.history("risk", metric="AUC")
        assert [r.value for r in auc] == [0.81, 0.80, 0.84]
        assert [r.value for r in tracker.history("risk", environment="production")] == [0.84]
        assert tracker.history("risk", metric="rmse") == []
        assert tracker.models() == ["risk"]
        assert tracker.versions("risk") == ["1.0", "1.1"]
        assert history[0].to_dict()["logged_at"] == T0.isoformat()

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"environment": "prod"}, "environment 'prod' is unknown; use one of development, staging, production"),
            ({"dataset": "health_risk"}, "not NAME@VERSION"),
            ({"dataset": "health_risk@../../etc"}, "not NAME@VERSION"),
            ({"version": "1.0 beta"}, "model version '1.0 beta'"),
            ({"metrics": {}}, "at least one metric"),
            ({"metrics": {"auc": float("nan")}}, "metric 'auc' has value nan"),
            ({"metrics": {"auc": "high"}}, "metric 'auc' has value 'high'"),
            ({"metrics": {"auc": True}}, "metric 'auc' has value True"),
            ({"metrics": {"auc": 1, "AUC": 2}}, "given twice"),
            ({"metrics": {"a b": 1}}, "metric name 'a b'"),
            ({"params": {"when": datetime.now()}}, "not JSON-serializable"),
            ({"params": {"x": float("inf")}}, "not JSON-serializable"),
            ({"at": datetime(2024, 1, 1)}, "no time zone"),
        ],
    )
    def test_invalid_runs_are_refused_and_nothing_is_written(self, tracker, kwargs, match):
        args = dict(version="1.0", dataset="health_risk@v1", environment="staging", metrics={"auc": 0.8})
        args.update(kwargs)
        with pytest.raises(TrackingError, match=match):
            tracker.log_metrics("risk", **args)
        assert tracker.models() == []

    def test_unknown_model_names_the_known_ones(self, tracker):
        _log(tracker, "1.0", {"auc": 0.8})
        with pytest.raises(TrackingError, match=r"no metrics logged for model 'rsk' \(models with metrics: risk\)"):
            tracker.history("rsk")

    def test_compare_values_deltas_and_best(self, tracker):
        _log(tracker, "1.0", {"auc": 0.80, "rmse": 2.0, "ndcg": 0.5, "accuracy": 0.9})
        _log(tracker, "1.1", {"auc": 0.85, "rmse": 1.5, "ndcg": 0.6}, minutes=1)
        _log(tracker, "1.2", {"auc": 0.85, "rmse": 1.8, "ndcg": 0.4}, minutes=2)
        cmp = tracker.compare("risk", ["1.0", "1.1", "1.2"])
        assert cmp.baseline == "1.0" and not cmp.mixed_datasets
        assert cmp.datasets == {v: ["health_risk@v1"] for v in ("1.0", "1.1", "1.2")}
        by = {m.metric: m for m in cmp.metrics}
        assert list(by) == ["accuracy", "auc", "ndcg", "rmse"]

        assert by["auc"].direction == "higher"
        assert by["auc"].best == ["1.1", "1.2"]  # a tie names both
        assert by["auc"].deltas["1.0"] == 0.0
        assert by["auc"].deltas["1.1"] == pytest.approx(0.05)
        assert by["auc"].values["1.1"].dataset == "health_risk@v1"

        assert by["rmse"].direction == "lower" and by["rmse"].best == ["1.1"]
        assert by["rmse"].deltas["1.2"] == pytest.approx(-0.2)

        assert by["ndcg"].direction == "unknown" and by["ndcg"].best == []
        assert by["accuracy"].values["1.1"] is None and by["accuracy"].deltas["1.1"] is None
        assert by["accuracy"].best == ["1.0"]

        override = tracker.compare("risk", ["1.0", "1.1"], higher_is_better={"ndcg": True, "auc": False})
        by = {m.metric: m for m in override.metrics}
        assert by["ndcg"].direction == "higher" and by["ndcg"].best == ["1.1"]
        assert by["auc"].direction == "lower" and by["auc"].best == ["1.0"]
        assert override.to_dict()["metrics"][1]["values"]["1.0"]["logged_at"] == T0.isoformat()

    def test_compare_uses_each_versions_latest_value(self, tracker):
        _log(tracker, "1.0", {"auc": 0.70})
        _log(tracker, "1.0", {"auc": 0.80}, minutes=5)
        _log(tracker, "1.1", {"auc": 0.75}, minutes=6, env="production")
        by = {m.metric: m for m in tracker.compare("risk", ["1.1", "1.0"]).metrics}
        assert by["auc"].values["1.0"].value == 0.80
        assert by["auc"].deltas["1.0"] == pytest.approx(0.05)  # 1.1 is the baseline here
        assert by["auc"].best == ["1.0"]
        with pytest.raises(TrackingError, match=r"no metrics in production for version\(s\) 1.0"):
            tracker.compare("risk", ["1.1", "1.0"], environment="production")

    def test_compare_refuses_mixed_datasets_unless_allowed(self, tracker):
        _log(tracker, "1.0", {"auc": 0.80}, dataset="health_risk@v1")
        _log(tracker, "1.1", {"auc": 0.85}, dataset="health_risk@v2", minutes=1)
        with pytest.raises(
            TrackingError, match=r"different dataset versions \(1.0: health_risk@v1; 1.1: health_risk@v2\)"
        ):
            tracker.compare("risk", ["1.0", "1.1"])
        cmp = tracker.compare("risk", ["1.0", "1.1"], allow_mixed_datasets=True)
        assert cmp.mixed_datasets
        assert cmp.datasets == {"1.0": ["health_risk@v1"], "1.1": ["health_risk@v2"]}
        assert cmp.metrics[0].values["1.1"].dataset == "health_risk@v2"

        _log(tracker, "1.0", {"auc": 0.79}, dataset="health_risk@v2", minutes=2)
        picked = tracker.compare("risk", ["1.0", "1.1"], dataset="health_risk@v2")
        assert not picked.mixed_datasets and picked.metrics[0].values["1.0"].value == 0.79

    def test_compare_needs_known_distinct_versions(self, tracker):
        _log(tracker, "1.0", {"auc": 0.8})
        with pytest.raises(TrackingError, match="two or more distinct versions"):
            tracker.compare("risk", ["1.0"])
        with pytest.raises(TrackingError, match="two or more distinct versions"):
            tracker.compare("risk", ["1.0", "1.0"])
        with pytest.raises(TrackingError, match=r"version\(s\) 9.9 \(logged versions: 1.0\)"):
            tracker.compare("risk", ["1.0", "9.9"])

    def test_latest_per_environment(self, tracker):
        _log(tracker, "1.0", {"auc": 0.80}, env="production")
        _log(tracker, "1.1", {"auc": 0.84, "accuracy": 0.9}, env="staging", minutes=1)
        _log(tracker, "1.2", {"auc": 0.86}, env="staging", minutes=2)
        tracker.log_metrics(
            "churn", version="0.1", dataset="churn@2024-05", environment="development", metrics={"f1": 0.5}, at=T0
        )
        latest = tracker.latest_per_environment()
        assert [(r.environment, r.model_name, r.model_version) for r in latest] == [
            ("development", "churn", "0.1"),
            ("staging", "risk", "1.2"),
            ("production", "risk", "1.0"),
        ]
        assert latest[1].metrics == {"auc": 0.86}
        assert [r.model_name for r in tracker.latest_per_environment(model_name="churn")] == ["churn"]

    # -- CLI -------------------------------------------------------------------------------

    def test_cli_log_history_compare(self, backend_settings):
        import json

        from click.testing import CliRunner

        from healthmate_features.cli import main

        runner = CliRunner(env=backend_settings.to_env())

        def run(*args, ok=True):
            result = runner.invoke(main, ["models", *args])
            assert (result.exit_code == 0) is ok, result.output
            return result.output

        out = run(
            "log",
            "--model",
            "risk",
            "--version",
            "1.0",
            "--dataset",
            "health_risk@v1",
            "--external-dataset",  # a label of another registry
            "--env",
            "staging",
            "--metric",
            "auc=0.81",
            "--metric",
            "accuracy=0.9",
            "--param",
            "max_depth=4",
            "--param",
            "note=baseline run",
        )
        assert "logged run 1: risk 1.0 on health_risk@v1 in staging: auc=0.81, accuracy=0.9" in out
        run(
            "log",
            "--model",
            "risk",
            "--version",
            "1.1",
            "--dataset",
            "health_risk@v1",
            "--external-dataset",  # a label of another registry
            "--env",
            "production",
            "--metric",
            "auc=0.84",
            "--metric",
            "rmse=1.5",
        )
        run(
            "log",
            "--model",
            "risk",
            "--version",
            "2.0",
            "--dataset",
            "health_risk@v2",
            "--external-dataset",  # a label of another registry
            "--env",
            "staging",
            "--metric",
            "auc=0.9",
        )

        history = json.loads(run("history", "--model", "risk", "--metric", "auc", "--json"))
        assert [(h["model_version"], h["value"]) for h in history] == [("1.0", 0.81), ("1.1", 0.84), ("2.0", 0.9)]
        assert history[0]["params"] == {"max_depth": 4, "note": "baseline run"}
        table = run("history", "--model", "risk", "--env", "production")
        assert table.splitlines()[0].split() == [
            "logged_at",
            "model_version",
            "environment",
            "dataset",
            "metric",
            "value",
        ]
        assert len(table.splitlines()) == 3  # header + auc + rmse

        table = run("compare", "--model", "risk", "--versions", "1.0,1.1")
        assert "baseline 1.0; datasets: 1.0: health_risk@v1; 1.1: health_risk@v1" in table
        auc_row = next(line for line in table.splitlines() if line.startswith("auc"))
        assert auc_row.split() == ["auc", "higher", "0.81", "0.84", "(+0.03)", "1.1"]
        result = json.loads(run("compare", "--model", "risk", "--versions", "1.0,1.1", "--json"))
        assert result["metrics"][1]["best"] == ["1.1"]

        refused = run("compare", "--model", "risk", "--versions", "1.0,2.0", ok=False)
        assert "different dataset versions" in refused and "--allow-mixed-datasets" in refused
        mixed = run("compare", "--model", "risk", "--versions", "1.0,2.0", "--allow-mixed-datasets")
        assert "WARNING" in mixed

        assert "environment 'prod' is unknown" in run(
            "log",
            "--model",
            "risk",
            "--version",
            "1",
            "--dataset",
            "d@1",
            "--env",
            "prod",
            "--metric",
            "auc=1",
            ok=False,
        )
        assert "not a number" in run(
            "log",
            "--model",
            "risk",
            "--version",
            "1",
            "--dataset",
            "d@1",
            "--env",
            "staging",
            "--metric",
            "auc=high",
            ok=False,
        )
        assert "no metrics logged for model 'nope'" in run("history", "--model", "nope", ok=False)
