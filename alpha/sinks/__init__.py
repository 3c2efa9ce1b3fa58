"""Sinks: where run events go (log file and console, metrics.jsonl, events.jsonl, remote, Discord)."""
