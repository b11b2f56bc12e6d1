"""The processing stages a batch goes through: windows, warm-up, calibration, rules, episodes,
aggregation; ``processor`` strings them together."""
