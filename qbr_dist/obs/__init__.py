"""Observability: Prometheus metrics defined in one place."""
