"""The fault run's counting (bench/faults.py) on made-up arrivals: what it calls missing,
counted twice, the SIGKILL's own, and an id with two payloads."""

from __future__ import annotations

from bench.faults import Plan, tally

PLAN = Plan(devices=3, samples=4)
KILLED = "a-1.aaaa-"


def summary(n: int, device: int, count: int, boot: str = "1.aaaa", **extra) -> tuple[str, dict]:
    body = {"device": f"dev{device:05d}", "count": count, "anomalies": 0, **extra}
    return f"summary/dev{device:05d}", {**body, "id": f"a-{boot}-w1-{n}"}


def arrivals(after_kill: list[int]) -> list[tuple[str, dict]]:
    """The killed agent committed 7 messages (devices 0, 1, 2, 0, 1, 2, 0), 1 of them in
    recovered totals; the restarted one counted ``after_kill`` more per device."""
    return [
        summary(1, 0, 2),
        summary(2, 1, 2),
        summary(3, 2, 2),
        summary(1, 0, 1, boot="2.bbbb", recovered=True),
        *(summary(10 + d, d, n, boot="2.bbbb") for d, n in enumerate(after_kill)),
    ]


def test_every_sample_once():
    f = tally(PLAN, arrivals([1, 2, 2]), KILLED)
    assert (f["missing"], f["counted_twice"], f["id_conflicts"]) == (0, 0, 0)
    assert (f["committed_before_kill"], f["counted_twice_at_kill"]) == (7, 0)
    assert f["recovered_summaries"] == 1


def test_the_last_committed_before_the_kill_counted_again_are_the_kills():
    # messages 5 and 6 (devices 2 and 0) were committed, their PUBACKs lost with the kill
    f = tally(PLAN, arrivals([2, 2, 3]), KILLED)
    assert (f["counted_twice"], f["counted_twice_at_kill"], f["missing"]) == (2, 2, 0)


def test_a_sample_counted_twice_elsewhere_is_not_the_kills():
    f = tally(PLAN, arrivals([1, 3, 2]), KILLED)  # device 1: not among the last committed
    assert (f["counted_twice"], f["counted_twice_at_kill"]) == (1, 0)


def test_missing_samples_and_a_killed_agent_whose_counts_are_no_prefix():
    ups = arrivals([1, 2, 1])
    ups[1] = summary(2, 1, 1)  # the killed agent lost one of device 1's samples
    f = tally(PLAN, ups, KILLED)
    assert (f["missing"], f["committed_before_kill"], f["devices_off"]) == (2, -1, 2)


def test_an_id_with_two_payloads_and_a_copy():
    ups = arrivals([1, 2, 2])
    ups.append(ups[0])  # delivered again: a copy, not a conflict
    ups.append((ups[0][0], {**ups[0][1], "count": 1}))  # the same id, another payload
    f = tally(PLAN, ups, KILLED)
    assert (f["copies"], f["id_conflicts"]) == (2, 1)
