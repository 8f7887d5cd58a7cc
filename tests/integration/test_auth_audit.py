"""API keys and the audit log on Postgres (the contract of tests/contracts/access.py)."""

from __future__ import annotations

import pytest

from ..contracts.access import AccessContract

pytestmark = pytest.mark.postgres


class TestAccessOnPostgres(AccessContract):
    @pytest.fixture
    def backend_settings(self, postgres_settings):
        return postgres_settings
