"""Watching the system run: Prometheus metrics."""
