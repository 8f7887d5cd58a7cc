"""Declared constraints for config values: one way to check them, one message shape.

A module declares what a value may be once (`Number(0, MAX_DAYS)`, `Integer(0, MAX_SEED)`) and
checks it with `check("split.embargo_days", value, constraint)`; a bad value raises ConfigError
"split.embargo_days is 1e+308; it must be a number in [0, 36500]" (scikit-learn's
`_param_validation` is the model). Ranges are what the code downstream can hold: a day count
that fits a pandas Timedelta next to a timestamp, a seed numpy accepts; nothing overflows later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from healthmate_features.errors import ConfigError

MAX_DAYS = 36_500  # 100 years: every day count of a config (windows, horizons, embargoes)
MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's random_state range is [0, 2**32 - 1]


def _show(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


@dataclass(frozen=True)
class Number:
    """A finite real number (bools are not numbers) in [low, high]; an open end excludes its bound."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    kind = "a number"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, Real):
            return False
        try:
            number = float(value)
        except OverflowError:  # an int beyond the float range
            return False
        if not math.isfinite(number):
            return False
        if self.low is not None and (number <= self.low if self.open_low else number < self.low):
            return False
        return self.high is None or (number < self.high if self.open_high else number <= self.high)

    def describe(self) -> str:
        if self.low is None and self.high is None:
            return f"{self.kind} (finite)"
        if self.high is None:
            return f"{self.kind} {'>' if self.open_low else '>='} {_show(self.low)}"  # type: ignore[arg-type]
        if self.low is None:
            return f"{self.kind} {'<' if self.open_high else '<='} {_show(self.high)}"
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"{self.kind} in {left}{_show(self.low)}, {_show(self.high)}{right}"


@dataclass(frozen=True)
class Integer(Number):
    """An integer (not a bool, not a float) in [low, high]."""

    kind = "an integer"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, Integral) and super().accepts(value)


def check(where: str, value: Any, constraint: Number, *, hint: str = "") -> Any:
    """Return `value` if `constraint` accepts it; else ConfigError naming `where`, the value and the range."""
    if not constraint.accepts(value):
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
        raise ConfigError(f"{where} is {shown}; it must be {constraint.describe()}{hint}")
    return value
