"""The scheduler's timetable: `configs/schedule.yaml`, cron expressions in UTC, checked like every config.

    schedules:
      refresh-features:                   # the entry's name (letters, digits, '_', '-', '.')
        job: extract_features_for_ml      # a job kind (jobs.tasks.KINDS)
        cron: "15 * * * *"                # minute hour day-of-month month day-of-week, in UTC
        params: {raw: data/raw}           # the job's parameters, checked as a submission checks them

Every key is checked: an unknown key, a missing one, a job kind that does not exist, bad
parameters or a cron expression that does not parse is a ConfigError naming the entry, the field
and the offending value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from healthmate_features.config import Settings
from healthmate_features.errors import ConfigError
from healthmate_features.jobs import tasks
from healthmate_features.util.text import repo_relative, yaml_problem

if TYPE_CHECKING:
    from celery.schedules import crontab

CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
_ENTRY_KEYS = ("job", "cron", "params")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ScheduleEntry:
    """One line of the timetable: a job kind, its parameters, and when (a five-field cron expression, UTC)."""

    name: str
    kind: str
    cron: str
    params: dict[str, Any] = field(default_factory=dict)

    def crontab(self) -> crontab:
        """Celery's crontab for the expression (fields by name: Celery's positional order differs from cron's)."""
        return parse_cron(self.cron, where=f"schedule {self.name!r}")


def parse_cron(expression: Any, *, where: str = "cron") -> crontab:
    """Celery's crontab for a five-field cron expression; ConfigError naming the bad field and value."""
    from celery.schedules import crontab

    if not isinstance(expression, str) or len(expression.split()) != 5:
        raise ConfigError(
            f"{where}: cron {expression!r} is not a cron expression of five fields "
            "(minute hour day-of-month month day-of-week, e.g. '15 2 * * *')"
        )
    values = dict(zip(CRON_FIELDS, expression.split(), strict=True))
    for name, value in values.items():
        try:
            crontab(**{name: value})
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise ConfigError(
                f"{where}: cron {expression!r} has an invalid {name.replace('_', ' ')} field {value!r} ({exc})"
            ) from None
    return crontab(**values)


def parse_schedule(data: Any, settings: Settings, *, source: str = "schedule") -> list[ScheduleEntry]:
    """The entries of a parsed schedule document, every one checked."""
    if data is None:
        return []
    if not isinstance(data, dict) or set(data) - {"schedules"}:
        extra = sorted(set(data) - {"schedules"}) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{source}: the top level must be a mapping with one key, schedules (got {extra})")
    entries = data.get("schedules") or {}
    if not isinstance(entries, dict):
        raise ConfigError(f"{source}: schedules must map entry names to entries, got {type(entries).__name__}")
    out = []
    for name, entry in entries.items():
        where = f"{source}: schedule {name!r}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: a name is 1-64 letters, digits, '.', '_' or '-'")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping with keys {', '.join(_ENTRY_KEYS)}")
        unknown = sorted(set(entry) - set(_ENTRY_KEYS))
        if unknown:
            raise ConfigError(
                f"{where} has unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(_ENTRY_KEYS)}"
            )
        missing = [k for k in ("job", "cron") if k not in entry]
        if missing:
            raise ConfigError(f"{where} is missing {', '.join(missing)}")
        try:
            kind = tasks.kind_of(entry["job"]).name
            params = tasks.check_params(kind, entry.get("params") or {}, settings)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        parse_cron(entry["cron"], where=where)
        out.append(ScheduleEntry(name, kind, entry["cron"], params))
    return out


def load_schedule(path: str | Path, settings: Settings) -> list[ScheduleEntry]:
    """The checked entries of a schedule file (relative paths: to the repository root)."""
    path = Path(path)
    path = path if path.is_absolute() else settings.repo_path / path
    shown = repo_relative(path, settings.repo_path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read schedule file {shown}: {exc.strerror}; see configs/schedule.yaml") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"schedule file {shown} is not valid YAML: {yaml_problem(exc)}") from exc
    return parse_schedule(data, settings, source=shown)
