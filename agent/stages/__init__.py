"""The processing stages a batch goes through: windows, warm-up, calibration, rules, episodes,
aggregation; ``processor`` strings them together."""

# NumPy 2 imports numpy.ma on the first np.unique call (~9 ms on this VM): loaded with the
# stages, not by the worker's first batch of several devices, which made the first events of
# every run its slowest (tests/integration/test_first_event.py).
import numpy.ma  # noqa: F401
