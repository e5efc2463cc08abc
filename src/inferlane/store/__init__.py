"""Durable state behind the lanes: the job store (SQLite embedded by default, Redis to scale out)."""
