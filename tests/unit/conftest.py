"""The unit tier: no servers, no `feast apply`, no Feast or healthmate-features CLI subprocesses.

The fixtures below turn a test that reaches for one of them into a failure that says where the
test belongs, so the tier stays fast without anyone having to remember the rule.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

_WRONG_TIER = (
    "tests/unit uses no servers, no `feast apply` and no CLI subprocesses; move this test to tests/integration"
)
_CLIS = {"feast", "healthmate-features"}


@pytest.fixture
def pg_dsn():
    pytest.fail(f"{_WRONG_TIER} (it asked for PostgreSQL)", pytrace=False)


@pytest.fixture
def redis_url():
    pytest.fail(f"{_WRONG_TIER} (it asked for Redis)", pytrace=False)


class _NoCliPopen(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        program = args if isinstance(args, (str, bytes)) else args[0]
        if Path(str(program).split()[0]).name in _CLIS:
            raise AssertionError(f"{_WRONG_TIER} (it ran {program})")
        super().__init__(args, *rest, **kwargs)


@pytest.fixture(autouse=True)
def _no_cli_subprocesses(monkeypatch):
    """Refuse the Feast and healthmate-features command lines (and so `feast apply`) in this tier."""
    monkeypatch.setattr(subprocess, "Popen", _NoCliPopen)
