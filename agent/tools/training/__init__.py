"""Reproducible scripts that build the shipped models from public data."""
