"""Sinks: deliver events, summaries and stats upstream."""
