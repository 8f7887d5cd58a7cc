"""Watching the platform: feature view freshness against TTLs and an objective (`freshness`),
drift of recent feature values against a dataset version's training split (`drift`), and the
Prometheus metrics of the API and the workers, with their exposition (`metrics`)."""
