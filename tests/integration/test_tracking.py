"""Model tracking on Postgres (the contract of tests/contracts/tracking.py)."""

from __future__ import annotations

import pytest

from ..contracts.tracking import TrackingContract

pytestmark = pytest.mark.postgres


class TestTrackingOnPostgres(TrackingContract):
    @pytest.fixture
    def backend_settings(self, postgres_settings):
        return postgres_settings
