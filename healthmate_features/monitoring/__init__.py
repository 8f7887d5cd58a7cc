"""Watching the platform: feature view freshness from Feast's registry (`freshness`) and the
Prometheus metrics of the API and the workers, with their exposition (`metrics`)."""
