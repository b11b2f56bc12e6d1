"""Exactly once across a crash: QoS 1 input the agent committed, sent again by the broker with
DUP set after the SIGKILL, is acknowledged and not counted twice (agent/runtime/redelivery.py).

The sequence is real and deterministic, with no hook in the agent: the agent is stopped
(SIGSTOP) while the broker sends it a burst, the broker saves its sessions (SIGUSR1: the burst
in flight, unacknowledged), the agent goes on and commits the burst, then both are SIGKILLed.
The broker restarted from its save holds the burst unacknowledged, exactly as a broker that
never read the PUBACKs of a SIGKILLed agent (docs/reliability.md), and redelivers it (DUP)
to the restarted agent.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import uuid
from pathlib import Path

import orjson
import pytest
import yaml

from agent.testing.mosquitto import Mosquitto
from tests.support.faults import samples_per_device, tally, write_config
from tests.support.mqtt import AgentProcess, Collector, publish, w1_payloads
from tests.support.waiting import until

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]


def period_samples(spool: Path) -> int:
    """Samples in the spool's running period totals (committed, not yet flushed)."""
    if not spool.exists():
        return 0
    db = sqlite3.connect(spool, timeout=10)
    try:
        rows = db.execute("SELECT body FROM period").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        db.close()
    return sum(orjson.loads(b)[0] for (b,) in rows)


@pytest.mark.parametrize("fast_path", [True, False])
def test_committed_input_redelivered_after_sigkill_is_counted_once(w1_models, tmp_path, fast_path):
    line = uuid.uuid4().hex[:8]
    for d in ("in", "up"):
        (tmp_path / d).mkdir()
    inb = Mosquitto(workdir=tmp_path / "in").start()
    up = Mosquitto(workdir=tmp_path / "up").start()
    col = Collector(up.port, ["summary/#", "stats/#"])
    spool = tmp_path / "spool.db"
    cfg = write_config(
        tmp_path / "agent.yaml",
        local=inb.port,
        upstream=up.port,
        model=w1_models[1],
        spool=spool,
        agent={"id": f"redeliver-{line}"},
        source_extra={"fast_path": fast_path},
    )
    doc = yaml.safe_load(cfg.read_text())
    doc["pipelines"][0]["summary"]["every"] = "1h"  # the counts stay in the period table
    cfg.write_text(yaml.safe_dump(doc))
    items = w1_payloads(devices=10, samples=40)
    agent = again = None
    try:
        agent = AgentProcess(cfg, {})
        agent.wait_ready()
        os.kill(agent.proc.pid, signal.SIGSTOP)
        publish(inb.port, f"plant/{line}/{{device}}/telemetry", items, qos=1)
        inb.proc.send_signal(signal.SIGUSR1)  # save: the burst is in flight to the agent
        assert until(lambda: (inb.dir / "mosquitto.db").exists(), 10), "no broker save"
        os.kill(agent.proc.pid, signal.SIGCONT)
        assert until(lambda: period_samples(spool) == len(items), 30), period_samples(spool)
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(10)
        inb.proc.kill()  # its last save: the burst not acknowledged
        inb.proc.wait(10)
        inb = Mosquitto(port=inb.port, workdir=tmp_path / "in").start()

        doc["pipelines"][0]["summary"]["every"] = "1s"  # stats each second from now on
        cfg.write_text(yaml.safe_dump(doc))
        again = AgentProcess(cfg, {})
        again.wait_ready()

        def counted() -> int:
            return sum(samples_per_device(tally(col.of("summary/"))[0]).values())

        def redelivered() -> int:
            return max((s.get("redelivered", 0) for s in col.of("stats/")), default=0)

        # the redelivered burst is either recognised, or counted a second time
        assert until(
            lambda: counted() >= len(items) and redelivered() + counted() >= 2 * len(items), 60
        ), (counted(), redelivered(), again.logs[-10:])
        assert again.stop() == 0, again.logs[-20:]
        col.settle()
    finally:
        for a in (agent, again):
            if a is not None and a.proc.poll() is None:
                os.kill(a.proc.pid, signal.SIGCONT)
                a.proc.kill()
        inb.stop()
        up.stop()
    col.close()
    summaries, _ = tally(col.of("summary/"))
    per_device = samples_per_device(summaries)
    stats = col.of("stats/")
    print(
        f"\nFIGURES redelivery fast_path={fast_path}: sent={len(items)} "
        f"counted={sum(per_device.values())} redelivered={redelivered()} "
        f"recovered_summaries={sum(bool(s.get('recovered')) for s in summaries.values())}"
    )
    assert all(n == 40 for n in per_device.values()) and len(per_device) == 10, per_device
    assert max(s["redelivered"] for s in stats) == len(items), stats[-1]
