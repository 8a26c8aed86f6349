"""Metrics and logs: what the node tells the people who run it (no patient data, ever)."""
