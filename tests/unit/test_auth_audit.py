"""API keys and the audit log on SQLite (the contract of tests/contracts/access.py)."""

from __future__ import annotations

import pytest

from ..contracts.access import AccessContract


class TestAccessOnSqlite(AccessContract):
    @pytest.fixture
    def backend_settings(self, sqlite_settings):
        return sqlite_settings
