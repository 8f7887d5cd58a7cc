"""Values as short text for people (the CLI's tables and summaries, the demo): the one formatter.

Machines get JSON (`util.jsonable`); people get what this module prints: numbers to six
significant digits, missing values as `-`, a `{"start", "end"}` range as `start .. end`, a
mapping as `key value, key value`, never a Python repr.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

MISSING = "-"


def format_value(value: Any) -> str:
    """One value as short text: None and NaN as `-`, floats to 6 significant digits, ranges and
    mappings flattened (`train 0.08, test 0.07`), lists comma-separated, datetimes without `T`."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return MISSING if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, Mapping):
        if set(value) == {"start", "end"}:
            return f"{format_value(value['start'])} .. {format_value(value['end'])}"
        return ", ".join(f"{key} {format_value(item)}" for key, item in value.items()) or MISSING
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(item) for item in value) or MISSING
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return format_value(value.item())
    return str(value)


def format_fields(fields: Mapping[str, Any]) -> str:
    """A mapping on one line: `key: value; key: value` (values through `format_value`)."""
    return "; ".join(f"{key}: {format_value(value)}" for key, value in fields.items())


def format_counts(counts: Mapping[str, int]) -> str:
    """Counts per reason, largest first: `3 value: impossible steps, 1 unit: wrong for spo2`."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{n:,} {reason}" for reason, n in ordered)


def repo_relative(path: str | Path, root: str | Path) -> str:
    """A path for a message: relative to the repository root `root` when inside it, else as given.

    Messages that can reach an API user or a job record never show the server's directory layout."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix() or "."
    except ValueError:
        return str(path)


def yaml_problem(exc: Exception) -> str:
    """What a YAML parser error says, with its line and column but without the file's lines it quotes."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem or type(exc).__name__}{where}"
