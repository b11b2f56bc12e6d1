"""Polling for a condition in tests, with a deadline (the bench's helper)."""

from __future__ import annotations

from bench import until

__all__ = ["until"]
