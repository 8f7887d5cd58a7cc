"""healthmate_features: HealthMate's feature pipeline and training-data builder on Feast."""

from __future__ import annotations

__version__ = "0.1.0"
