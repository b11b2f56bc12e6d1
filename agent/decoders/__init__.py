"""Decoders: payload bytes -> samples (device, ts, seq, values)."""
