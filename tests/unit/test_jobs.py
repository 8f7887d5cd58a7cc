"""Background jobs without a worker: the job rows' state machine, leases, the schedule file, broker
choice, and the cleanup of killed dataset saves. Real SQLite stores; no broker, no Feast."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest
import yaml

from healthmate_features.backends import backend_for, open_sql_store
from healthmate_features.backends.locks import SqlLeases, hold
from healthmate_features.config import Settings
from healthmate_features.errors import ConfigError, JobNotFoundError, JobStateError, LockTimeoutError
from healthmate_features.jobs.schedule import load_schedule, parse_cron, parse_schedule
from healthmate_features.jobs.store import JobStore


@pytest.fixture
def jobs(sqlite_settings):
    with open_sql_store(sqlite_settings) as sql:
        yield JobStore(sql)


# -- the job row's state machine --------------------------------------------------------------


def test_a_job_is_claimed_once_renewed_and_finished_by_its_attempt_only(jobs):
    job = jobs.create("version_ml_data", {}, max_attempts=3, submitted_by="hmk_0123456789abcdef")
    assert (job.status, job.attempts, job.submitted_by) == ("queued", 0, "hmk_0123456789abcdef")
    first = jobs.claim(job.job_id, worker="a:1", lease_s=60)
    assert first is not None and (first.status, first.attempts, first.worker) == ("running", 1, "a:1")
    assert jobs.claim(job.job_id, worker="b:2", lease_s=60) is None  # a second delivery while it runs: dropped
    assert jobs.renew(job.job_id, 1, lease_s=60)
    assert not jobs.succeed(job.job_id, 2, {"x": 1})  # not this job's attempt: refused
    assert jobs.succeed(job.job_id, 1, {"checked": 0})
    done = jobs.get(job.job_id)
    assert (done.status, done.result, done.error) == ("succeeded", {"checked": 0}, None)
    assert done.finished_at >= done.started_at >= done.created_at
    assert jobs.claim(job.job_id, worker="b:2", lease_s=60) is None  # redelivered after it finished: dropped
    assert not jobs.renew(job.job_id, 1, lease_s=60)


def test_a_lapsed_lease_is_requeued_then_failed_after_the_last_attempt(jobs):
    job = jobs.create("version_ml_data", {}, max_attempts=2)
    jobs.claim(job.job_id, worker="dead:1", lease_s=0.01)
    time.sleep(0.05)
    assert [j.job_id for j in jobs.lapsed()] == [job.job_id]
    assert jobs.requeue_lapsed(jobs.lapsed()[0]) == "queued"
    again = jobs.get(job.job_id)
    assert again.status == "queued" and "dead:1 stopped renewing its lease during attempt 1 of 2" in again.error
    assert jobs.lapsed() == []
    jobs.claim(job.job_id, worker="dead:2", lease_s=0.01)
    time.sleep(0.05)
    assert jobs.requeue_lapsed(jobs.lapsed()[0]) == "failed"
    failed = jobs.get(job.job_id)
    assert failed.status == "failed" and "no attempts left" in failed.error and failed.attempts == 2


def test_a_running_job_whose_lease_lapsed_can_be_claimed_by_a_redelivery(jobs):
    job = jobs.create("version_ml_data", {}, max_attempts=3)
    jobs.claim(job.job_id, worker="dead:1", lease_s=0.01)
    time.sleep(0.05)
    taken = jobs.claim(job.job_id, worker="b:2", lease_s=60)
    assert taken is not None and taken.attempts == 2 and taken.worker == "b:2"
    assert not jobs.succeed(job.job_id, 1, {})  # the dead attempt, come back to life, cannot overwrite


def test_a_transient_failure_waits_for_its_retry_and_is_claimed_again(jobs):
    job = jobs.create("version_ml_data", {}, max_attempts=3)
    jobs.claim(job.job_id, worker="a:1", lease_s=60)
    assert jobs.retry_later(job.job_id, 1, "attempt 1 of 3: down", countdown_s=5, lease_s=60)
    waiting = jobs.get(job.job_id)
    assert waiting.status == "retrying" and waiting.error == "attempt 1 of 3: down"
    assert jobs.claim(job.job_id, worker="a:1", lease_s=60).attempts == 2


def test_cancel_applies_to_waiting_jobs_only(jobs):
    queued = jobs.create("version_ml_data", {}, max_attempts=3)
    assert jobs.cancel(queued.job_id).status == "cancelled"
    assert jobs.claim(queued.job_id, worker="a:1", lease_s=60) is None  # its message is dropped
    with pytest.raises(JobStateError, match="already finished"):
        jobs.cancel(queued.job_id)
    running = jobs.create("version_ml_data", {}, max_attempts=3)
    jobs.claim(running.job_id, worker="a:1", lease_s=60)
    with pytest.raises(JobStateError, match="is running"):
        jobs.cancel(running.job_id)
    with pytest.raises(JobNotFoundError, match="no job '0+'"):
        jobs.get("0" * 32)
    with pytest.raises(JobNotFoundError):
        jobs.get("../etc")


def test_job_rows_survive_a_new_connection(sqlite_settings):
    with open_sql_store(sqlite_settings) as sql:
        job = JobStore(sql).create("prepare_ml_datasets", {"configs": ["c.yaml"]}, max_attempts=3, target="dataset:x")
    with open_sql_store(sqlite_settings) as sql:
        again = JobStore(sql).get(job.job_id)
        assert again == job and JobStore(sql).list(kind="prepare_ml_datasets") == [job]
        assert JobStore(sql).list(status="running") == []


# -- leases -----------------------------------------------------------------------------------


def test_a_lease_is_exclusive_renewed_while_held_and_lapses_when_not_renewed(sqlite_settings):
    with open_sql_store(sqlite_settings) as sql:
        leases = SqlLeases(sql)
        assert leases.try_acquire("materialize:v", "a", 0.2)
        assert not leases.try_acquire("materialize:v", "b", 0.2)
        assert leases.holder("materialize:v") == "a"
        time.sleep(0.3)  # a's holder died: nobody renewed
        assert leases.try_acquire("materialize:v", "b", 60) and not leases.renew("materialize:v", "a", 60)
        leases.release("materialize:v", "a")  # not a's any more: no effect
        assert leases.holder("materialize:v") == "b"
        with hold(leases, "dataset:x", ttl_s=0.3, wait_s=1) as lease:
            time.sleep(0.6)  # twice the ttl: the renewal thread kept it
            assert leases.holder("dataset:x") == lease.holder and not lease.lost
            with pytest.raises(LockTimeoutError, match="lock 'dataset:x'.*still held by"):
                with hold(leases, "dataset:x", ttl_s=0.3, wait_s=0.3):
                    pass
        assert leases.holder("dataset:x") is None  # released at the end of the block


def test_the_backend_lock_serializes_holders_in_one_process(sqlite_settings):
    backend = backend_for(replace(sqlite_settings, lock_wait_s=0.2))
    with backend.lock("materialize:health_daily"):
        with pytest.raises(LockTimeoutError, match="materialize:health_daily"):
            with backend.lock("materialize:health_daily"):
                pass
        with backend.lock("materialize:health_weekly"):  # another view: independent
            pass
    with backend.lock("materialize:health_daily"):
        pass


# -- the schedule file ------------------------------------------------------------------------


def test_the_committed_schedule_file_is_valid(repo_root):
    entries = load_schedule(repo_root / "configs" / "schedule.yaml", Settings.from_env(repo_path=repo_root))
    assert {e.kind for e in entries} == {
        "extract_features_for_ml",
        "prepare_ml_datasets",
        "version_ml_data",
        "apply_retention",
    }
    assert all(e.crontab() for e in entries)


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("61 * * * *", "invalid minute field '61'"),
        ("0 25 * * *", "invalid hour field '25'"),
        ("0 0 32 * *", "invalid day of month field '32'"),
        ("0 0 * 13 *", "invalid month of year field '13'"),
        ("0 0 * * funday", "invalid day of week field 'funday'"),
        ("*/0 * * * *", "invalid minute field '*/0'"),
        ("every day", "'every day' is not a cron expression of five fields"),
        ("* * * * * *", "'* * * * * *' is not a cron expression of five fields"),
        (15, "15 is not a cron expression"),
    ],
)
def test_a_bad_cron_string_is_refused_naming_the_entry_field_and_value(repo_root, cron, message):
    data = {"schedules": {"nightly": {"job": "version_ml_data", "cron": cron}}}
    with pytest.raises(ConfigError, match="schedule 'nightly'") as info:
        parse_schedule(data, Settings.from_env(repo_path=repo_root))
    assert message in str(info.value)


def test_cron_fields_are_read_in_crons_own_order():
    tab = parse_cron("5 4 3 2 mon")  # Celery's crontab() takes day_of_week third: named here
    assert (tab.minute, tab.hour, tab.day_of_month, tab.month_of_year, tab.day_of_week) == ({5}, {4}, {3}, {2}, {1})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"job": "version_ml_data", "cron": "* * * * *", "when": 1}, "unknown key(s) when"),
        ({"cron": "* * * * *"}, "is missing job"),
        ({"job": "train_model", "cron": "* * * * *"}, "unknown job kind 'train_model'"),
        ({"job": "prepare_ml_datasets", "cron": "* * * * *", "params": {"configs": []}}, "non-empty list"),
        ({"job": "prepare_ml_datasets", "cron": "* * * * *", "params": {"configs": ["nope.yaml"]}}, "nope.yaml"),
        ({"job": "preprocess_ml_data", "cron": "* * * * *", "params": {"dataset": "x"}}, "is not NAME@VERSION"),
        ({"job": "extract_features_for_ml", "cron": "* * * * *", "params": {"raw": 3}}, "raw must be"),
    ],
)
def test_a_bad_schedule_entry_is_refused_naming_what_is_wrong(repo_root, entry, message):
    with pytest.raises(ConfigError, match="schedule 'e'") as info:
        parse_schedule({"schedules": {"e": entry}}, Settings.from_env(repo_path=repo_root))
    assert message in str(info.value)


def test_a_schedule_file_that_is_not_yaml_or_missing_is_a_config_error(tmp_path):
    settings = Settings.from_env(repo_path=tmp_path)
    with pytest.raises(ConfigError, match="cannot read schedule file"):
        load_schedule("configs/schedule.yaml", settings)
    (tmp_path / "s.yaml").write_text("schedules: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_schedule(tmp_path / "s.yaml", settings)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"schedule": {}}))
    with pytest.raises(ConfigError, match="one key, schedules"):
        load_schedule(tmp_path / "s.yaml", settings)


# -- broker choice ----------------------------------------------------------------------------


def test_each_profile_has_its_broker_and_hm_broker_url_overrides_it(tmp_path):
    embedded = Settings.from_env(repo_path=tmp_path, profile="embedded")
    broker = backend_for(embedded).broker()
    assert broker.url == f"sqla+sqlite:///{tmp_path / 'data' / 'broker.db'}"
    assert embedded.broker_path != embedded.sql_path  # never the SQL store's file
    production = Settings.from_env(repo_path=tmp_path, profile="production", redis_url="redis://h:6380/2")
    broker = backend_for(production).broker()
    assert broker.url == "redis://h:6380/2" and broker.transport_options["global_keyprefix"] == "healthmate:"
    other = replace(embedded, broker_url="redis://q:6379/5", redis_prefix="t:")
    assert backend_for(other).broker().url == "redis://q:6379/5"
    assert backend_for(other).broker().transport_options["global_keyprefix"] == "t:"
    amqp = backend_for(replace(embedded, broker_url="amqp://guest@127.0.0.1:5672//")).broker()
    assert amqp.transport_options == {} and "guest" not in amqp.description
    with pytest.raises(ConfigError, match="HM_BROKER_URL 'nonsense' is not a URL"):
        backend_for(replace(embedded, broker_url="nonsense")).broker()


def test_job_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HM_BROKER_URL", "redis://x:1/3")
    monkeypatch.setenv("HM_JOB_LEASE_S", "7.5")
    monkeypatch.setenv("HM_JOB_MAX_ATTEMPTS", "5")
    settings = Settings.from_env(repo_path=tmp_path)
    assert (settings.broker_url, settings.job_lease_s, settings.job_max_attempts) == ("redis://x:1/3", 7.5, 5)
    assert settings.to_env()["HM_BROKER_URL"] == "redis://x:1/3" and settings.to_env()["HM_JOB_MAX_ATTEMPTS"] == "5"


# -- temporary directories of killed saves ----------------------------------------------------


def test_clean_temporary_removes_unlocked_old_save_directories_only(tmp_path, make_dataset):
    import fcntl

    from healthmate_features.datasets.registry import DatasetRegistry

    registry = DatasetRegistry(tmp_path / "datasets")
    registry.save(make_dataset(), "risk")
    name_dir = tmp_path / "datasets" / "risk"
    dead, live, fresh = (name_dir / f".tmp-{n}" for n in ("dead", "live", "fresh"))
    for d in (dead, live, fresh):
        d.mkdir()
        (d / "X_train.parquet").write_bytes(b"partial")
        os.chmod(d / "X_train.parquet", 0o444)
    old = time.time() - 60
    for d in (dead, live):
        os.utime(d, (old, old))
    fd = os.open(live, os.O_RDONLY)  # a save in progress holds its directory's lock
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert registry.clean_temporary() == [str(dead)]
    finally:
        os.close(fd)
    assert not dead.exists() and live.exists() and fresh.exists()
    assert registry.versions("risk") == ["1.0.0"]
