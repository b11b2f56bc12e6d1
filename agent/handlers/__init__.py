"""Model handlers: score a batch of windows in one call."""
