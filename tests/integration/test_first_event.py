"""The data path imports nothing once the agent runs: a module imported on first use costs
the batch that first needs it (NumPy 2's ``np.unique`` imports ``numpy.ma`` on its first
call: ~9 ms on the worker, which made the first events of every run its slowest).

A fresh interpreter (the test session has imported everything already) builds and starts
an agent as ``edge-agent run`` does, then takes W1 traffic with spikes through decoding,
windows, the model, events, summaries, the spool and the MQTT sink; the modules it imports
from the first message on are reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.mosquitto

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import agent.cli  # noqa: F401  what `edge-agent run` imports before it starts
    from agent.config import parse_config
    from agent.runtime.agent import Agent
    from tests.support.configs import agent_config, mqtt_sink, w1_pipeline
    from tests.support.mqtt import Collector, publish, w1_payloads
    from tests.support.waiting import until

    port, model, spool = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    sink = mqtt_sink(events="fe-e/{device}", summaries="fe-s/{device}")
    pipe = w1_pipeline("fe/+/t", model, sinks=[sink], summary={"every": "200ms"})
    agent = Agent(parse_config(agent_config(port, spool, pipe), "test"))
    agent.build()
    agent.start()
    collector = Collector(port, ["fe-e/#", "fe-s/#"])
    [unit] = agent.units.values()
    assert until(unit.source.subscribed.is_set, 15)
    items = w1_payloads(devices=4, samples=120, spike_rate=0.05)
    before = set(sys.modules)
    publish(port, "fe/{device}/t", items)
    counted = lambda: sum(m["count"] for m in collector.of("fe-s/"))
    done = until(lambda: counted() == len(items) and collector.of("fe-e/"), 30)
    new = sorted(set(sys.modules) - before)
    events = len(collector.of("fe-e/"))
    agent.stop()
    collector.close()
    print(json.dumps({"done": bool(done), "events": events, "new": new}))
    """
)


def test_the_data_path_imports_nothing_after_start(broker, w1_models, tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(broker.port), str(w1_models[1]), str(tmp_path / "s.db")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["done"] and result["events"] > 0, result  # the whole path ran
    assert result["new"] == [], f"imported on the data path: {result['new']}"
