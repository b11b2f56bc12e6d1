"""The alarm targets of docs/alarms.md on the synthetic plants of bench.alarms (replay code)."""

from __future__ import annotations

from bench import alarms


def test_healthy_devices_stay_within_the_false_alarm_budget():
    """20 healthy devices x 24 h after a 4-h warm-up, budget 1 per day: at most 2 false
    episodes per device-day."""
    got = alarms.run(20, 24, faults=False)
    assert got["labelled"] == 0 and got["devices"] == 20
    assert got["false_per_device_day"] <= 2.0, got


def test_faults_are_detected_once_each():
    """20 devices each with one 10-min fault: at least 18 detected, no fault opens more than
    one episode with the default rule."""
    got = alarms.run(20, 12, faults=True)
    assert got["labelled"] == 20
    assert got["detected"] >= 18, got
    assert got["max_opened_in_a_fault"] == 1, got
