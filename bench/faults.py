"""Issue 19's fault run: one agent through an upstream outage, a SIGKILL, a full disk and a
rebuild reload under QoS 1 load; every sample sent must be counted once upstream, and no
record id may name two payloads (docs/reliability.md).

Two private mosquittos (input and upstream), ``edge-agent run`` as a subprocess (W1 int8,
QoS 1 input on a persistent session, QoS 1 upstream, 1-s summaries, a status heartbeat every
second) with its spool on a small tmpfs (mounting one needs root or CAP_SYS_ADMIN), a paced
QoS 1 publisher and an upstream collector on a persistent session. While the load runs, each
fault starts once its share of the load has been sent:

1. the upstream broker is stopped for ``--outage`` s, then started again on the same port;
2. 30 % into the outage, while the spool grows with the backlog, the spool's filesystem is
   filled until the agent reports ``write_failing``, held full while ``--disk-hold`` more
   messages are published, then freed (a full disk only matters to a spool that must grow:
   with the backlog drained SQLite reuses the pages its files have);
3. the agent is SIGKILLed and started again on the same spool;
4. the config's ``source.queue`` is changed and SIGHUP sent: a reload that rebuilds the
   pipeline.

When every device's sent samples are counted upstream (or ``--drain-timeout`` passed), the
agent gets SIGTERM and the figures are read from what arrived: summaries deduplicated by
``id``, their sample counts per device against the sent counts, ids with two payloads.

    python -m bench.faults     # 50 devices x 2,000 samples at 1,500 msg/s, 30-s outage (~2 min)
    python -m bench.faults --devices 20 --samples 600 --rate 1000 --outage 5     # ~20 s
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
import yaml

from agent.testing.mosquitto import Mosquitto

from . import HOST, until
from .fault_parts import AgentProcess, Load, MountError, Subscriber, fill, tmpfs
from .loadgen import device_names
from .proc import print_result

__all__ = ["Figures", "MountError", "Plan", "run"]


@dataclass(frozen=True)
class Plan:
    """The run's size and when each fault starts (as shares of the messages to send)."""

    devices: int = 50
    samples: int = 2000  # per device
    rate: float = 1500.0  # messages per second, all devices together
    outage: float = 30.0  # seconds the upstream broker is down
    disk: str = "16m"  # size of the spool's tmpfs
    disk_hold: int = 3000  # messages published while the disk is full
    at_outage: float = 0.05
    disk_after: float = 0.3  # share of the outage gone when the disk fills
    at_kill: float = 0.6
    at_reload: float = 0.85
    drain_timeout: float = 180.0  # after the last publish, for every sample to be counted

    @property
    def total(self) -> int:
        return self.devices * self.samples


@dataclass
class Figures:
    """What the run sent and what arrived upstream (summaries and records unique by id)."""

    sent: int
    sent_per_device: int
    samples_counted: int  # in summaries, deduplicated by id
    missing: int  # samples sent and in no summary
    counted_twice: int  # samples beyond the sent count of their device
    committed_before_kill: int  # in the killed agent's summaries: a prefix of the load, or -1
    counted_twice_at_kill: int  # of counted_twice: the last ones committed before the SIGKILL
    redelivered: int  # input sent again (DUP) after the SIGKILL, known committed: not counted
    devices_off: int  # devices whose counted samples differ from those sent
    records: int  # distinct ids upstream
    copies: int  # messages that arrived again with an id already seen (at least once)
    id_conflicts: int  # ids that arrived with two different payloads
    summaries: int
    recovered_summaries: int  # written from the period totals a SIGKILL left on disk
    events: int
    anomalies: int  # summed over the summaries
    spool_peak_rows: int  # the largest spool depth in a heartbeat
    write_failures: int  # failed spool commits (heartbeat) before the disk was freed
    decoded_while_full: int  # samples decoded between write_failing seen and the disk freed
    reload_restarted: list[str]
    exit_codes: list[int]  # the killed agent's, then the restarted one's after SIGTERM
    sent_at: dict[str, int] = field(default_factory=dict)  # messages sent when each fault began
    seconds: dict[str, float] = field(default_factory=dict)  # phase ends, s from the start

    @property
    def exact(self) -> bool:
        """Every sample counted once, and no id used for two payloads."""
        return not (self.missing or self.counted_twice or self.devices_off or self.id_conflicts)

    @property
    def as_documented(self) -> bool:
        """docs/reliability.md's guarantees: every sample counted once (input the SIGKILLed
        agent committed and the broker sent again is recognised), no id used for two
        payloads, and the killed agent's counts a prefix of the load."""
        return self.exact and self.committed_before_kill > 0


def agent_config(
    agent_id: str, local: int, upstream: int, model: Path, spool: Path, queue: int
) -> dict:
    """W1 (int8) from the input broker to the upstream one, QoS 1 both ways, persistent input
    session, 1-s summaries, a heartbeat with spool figures every second on the input broker.
    Reconnects wait 0.2-2 s (not the defaults) so the drain after the outage starts soon."""
    backoff = {"host": HOST, "reconnect_min": "0.2s", "reconnect_max": "2s"}
    return {
        "agent": {
            "id": agent_id,
            "status_topic": f"status/{agent_id}",
            "status_broker": "local",
            "heartbeat": "1s",
        },
        "brokers": {
            "local": {"port": local, "clean_start": False, "session_expiry": 3600, **backoff},
            "upstream": {"port": upstream, **backoff},
        },
        "spool": {"path": str(spool)},
        "pipelines": [
            {
                "name": "w1",
                "source": {
                    "broker": "local",
                    "topics": ["plant/+/+/telemetry"],
                    "qos": 1,
                    "queue": queue,
                },
                "decoder": {"type": "json", "device": "topic[2]", "channels": 8},
                "window": {"size": 32, "hop": 8},
                "handler": {"type": "onnx_autoencoder", "model": str(model), "threshold": 1.5},
                "rule": {"events": "windows"},
                "summary": {"every": "1s"},
                "sinks": [
                    {
                        "type": "mqtt",
                        "broker": "upstream",
                        "qos": 1,
                        "events": "events/{device}",
                        "summaries": "summary/{device}",
                        "stats": "stats/{pipeline}",
                    }
                ],
            }
        ],
    }


def counted_per_device(summaries: list[dict]) -> Counter:
    """Samples per device in ``summaries``, each id counted once."""
    per: Counter = Counter()
    for s in {s["id"]: s for s in summaries}.values():
        per[s["device"]] += s["count"]
    return per


def at_kill(plan: Plan, summaries: list[dict], killed: str, per: Counter) -> tuple[int, int]:
    """(messages the SIGKILLed agent had committed, samples counted twice among the last of
    them). Its summaries (ids starting ``killed``) and those recovered from its period
    totals hold a prefix of the load in publish order (-1 if not: a sample lost or counted
    twice before the kill). The samples counted twice are the kill's if they are exactly
    the last ones of that prefix: committed, their PUBACKs not yet read by the broker, so
    delivered again to the restarted agent (else 0)."""
    names = device_names(plan.devices)
    n = len(names)
    first = counted_per_device(
        [s for s in summaries if s["id"].startswith(killed) or s.get("recovered")]
    )
    p = sum(first.values())
    if any(first[d] != p // n + (i < p % n) for i, d in enumerate(names)):
        return -1, 0
    twice = Counter({d: per[d] - plan.samples for d in names if per[d] > plan.samples})
    x = twice.total()
    return p, x if twice == Counter(names[k % n] for k in range(p - x, p)) else 0


def tally(plan: Plan, upstream: list[tuple[str, dict]], killed: str) -> dict[str, int]:
    """The counts of what arrived upstream (see :class:`Figures`)."""
    bodies: dict[str, set[bytes]] = {}
    for _, m in upstream:
        bodies.setdefault(m["id"], set()).add(orjson.dumps(m, option=orjson.OPT_SORT_KEYS))
    unique = {m["id"]: (t, m) for t, m in upstream}
    summaries = [m for t, m in unique.values() if t.startswith("summary/")]
    per = counted_per_device(summaries)
    sent = {d: plan.samples for d in device_names(plan.devices)}
    committed, again = at_kill(plan, summaries, killed, per)
    return {
        "committed_before_kill": committed,
        "counted_twice_at_kill": again,
        "samples_counted": sum(per.values()),
        "missing": sum(max(0, n - per[d]) for d, n in sent.items()),
        "counted_twice": sum(max(0, per[d] - sent.get(d, 0)) for d in per),
        "devices_off": sum(per[d] != n for d, n in sent.items()) + len(set(per) - set(sent)),
        "records": len(bodies),
        "copies": len(upstream) - len(unique),
        "id_conflicts": sum(len(b) > 1 for b in bodies.values()),
        "summaries": len(summaries),
        "recovered_summaries": sum(bool(s.get("recovered")) for s in summaries),
        "events": sum(t.startswith("events/") for t, _ in unique.values()),
        "anomalies": sum(s["anomalies"] for s in summaries),
        "redelivered": max(
            (m.get("redelivered", 0) for t, m in upstream if t.startswith("stats/")), default=0
        ),
    }


def run(plan: Plan, work: Path, model: Path, say: Callable[[str], None] = print) -> Figures:
    """The whole fault run in ``work`` (brokers, config, logs); raises :class:`MountError`
    where no tmpfs can be mounted."""
    agent_id = f"faults-{uuid.uuid4().hex[:6]}"
    status_topic = f"status/{agent_id}"
    sent_at: dict[str, int] = {}
    seconds: dict[str, float] = {}
    exit_codes: list[int] = []
    for d in ("in", "up"):
        (work / d).mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        disk = stack.enter_context(tmpfs(work / "disk", plan.disk))
        local = stack.enter_context(Mosquitto(workdir=work / "in"))
        up = Mosquitto(workdir=work / "up").start()
        stack.callback(up.stop)
        received = Subscriber(up.port, ["events/#", "summary/#", "stats/#"], f"{agent_id}-col")
        stack.callback(received.close)
        status = Subscriber(local.port, [status_topic])
        stack.callback(status.close)
        doc = agent_config(agent_id, local.port, up.port, model, disk / "spool.db", 100_000)
        cfg = work / "agent.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        agent = AgentProcess(cfg, work / "agent-1.log")
        stack.callback(lambda: agent.kill())
        agent.wait_for("source_subscribed")

        def beat() -> dict:
            beats = [m for m in status.of(status_topic) if "spool" in m]
            return beats[-1] if beats else {}

        def mark(name: str, share: float) -> None:
            load.wait_sent(round(share * plan.total))
            sent_at[name] = load.sent
            say(f"{name}: at {load.sent:,} of {plan.total:,} sent")

        load = Load(local.port, plan.devices, plan.total, plan.rate)
        t0 = time.monotonic()
        load.start()

        mark("outage", plan.at_outage)
        up.stop(hold=True)  # its port stays its own: refused meanwhile, free for the restart
        down = time.monotonic()
        # The disk fills while the spool must grow, holding the outage's backlog: with the
        # backlog drained, SQLite reuses the pages its files have and a full disk stops
        # nothing (a 16 MiB tmpfs filled after the outage: no failed write in 60 s).
        time.sleep(plan.outage * plan.disk_after)  # the fault's schedule, not a wait
        sent_at["disk_full"] = load.sent
        filler = fill(disk)
        if not until(lambda: beat().get("spool", {}).get("write_failing"), 60):
            raise RuntimeError(f"the full disk was never reported: {beat()}")
        decoded_at_full = beat()["pipelines"]["w1"]["decoded"]
        load.wait_sent(load.sent + plan.disk_hold)
        held = time.time()  # a heartbeat sent after the hold, the disk still full:
        until(lambda: beat().get("ts", 0) > held and beat()["spool"]["write_failing"], 10)
        decoded_at_free = beat()["pipelines"]["w1"]["decoded"]
        write_failures = beat()["spool"]["write_failures"]
        filler.unlink()
        agent.wait_for("spool_write_recovered")
        seconds["disk_full"] = round(time.monotonic() - t0, 1)
        time.sleep(max(0.0, down + plan.outage - time.monotonic()))  # the outage's length
        up.start()
        seconds["outage"] = round(time.monotonic() - t0, 1)

        mark("sigkill", plan.at_kill)
        killed_boot = beat()["boot"]  # the ids this agent gave start <agent>-<boot>-
        agent.proc.send_signal(signal.SIGKILL)
        exit_codes.append(agent.stop())
        agent = AgentProcess(cfg, work / "agent-2.log")
        agent.wait_for("source_subscribed")
        seconds["sigkill"] = round(time.monotonic() - t0, 1)

        mark("reload", plan.at_reload)
        doc["pipelines"][0]["source"]["queue"] = 50_000  # a source change: rebuilt
        cfg.write_text(yaml.safe_dump(doc))
        agent.proc.send_signal(signal.SIGHUP)
        restarted = agent.wait_for("reload_applied")["restarted"]
        seconds["reload"] = round(time.monotonic() - t0, 1)

        load.join(plan.total / plan.rate * 3 + 120)
        if not load.acked_all:
            raise RuntimeError("the input broker did not acknowledge every message")
        seconds["load_end"] = round(time.monotonic() - t0, 1)
        say(f"load done: {plan.total:,} sent; waiting for every sample upstream")

        def all_counted() -> bool:
            per = counted_per_device(received.of("summary/"))
            return all(per[d] >= plan.samples for d in device_names(plan.devices))

        until(all_counted, plan.drain_timeout, interval=0.5)
        seconds["counted"] = round(time.monotonic() - t0, 1)
        exit_codes.append(agent.stop())
        received.settle()
        upstream = received.all()
        with (work / "upstream.jsonl").open("wb") as out:  # for a look after a --keep run
            out.writelines(orjson.dumps([t, m]) + b"\n" for t, m in upstream)
        beats = [m for m in status.of(status_topic) if "spool" in m]
        peak = max((m["spool"]["depth"] for m in beats), default=0)
    return Figures(
        sent=plan.total,
        sent_per_device=plan.samples,
        **tally(plan, upstream, f"{agent_id}-{killed_boot}-"),
        spool_peak_rows=peak,
        write_failures=write_failures,
        decoded_while_full=decoded_at_free - decoded_at_full,
        reload_restarted=restarted,
        exit_codes=exit_codes,
        sent_at=sent_at,
        seconds=seconds,
    )


def table(f: Figures) -> str:
    rows = [
        ("samples sent", f"{f.sent:,} ({f.sent_per_device:,} per device)"),
        ("samples counted upstream (summaries, by id)", f"{f.samples_counted:,}"),
        (
            "missing / counted twice / devices off",
            f"{f.missing} / {f.counted_twice} / {f.devices_off}",
        ),
        ("samples the killed agent had committed", f"{f.committed_before_kill:,}"),
        ("counted twice: its last before the SIGKILL", f"{f.counted_twice_at_kill}"),
        ("sent again after the SIGKILL, recognised (redelivered)", f"{f.redelivered}"),
        ("records (distinct ids) / copies again", f"{f.records:,} / {f.copies:,}"),
        ("ids with two payloads", f"{f.id_conflicts}"),
        ("summaries / recovered after SIGKILL", f"{f.summaries:,} / {f.recovered_summaries}"),
        ("events / anomalies in summaries", f"{f.events:,} / {f.anomalies:,}"),
        ("spool peak rows (heartbeats)", f"{f.spool_peak_rows:,}"),
        ("failed spool commits (disk full)", f"{f.write_failures}"),
        ("samples decoded while the disk was full", f"{f.decoded_while_full}"),
        ("reload restarted", ", ".join(f.reload_restarted)),
        ("exit codes (killed, last)", ", ".join(map(str, f.exit_codes))),
        ("sent when each fault began", ", ".join(f"{k} {v:,}" for k, v in f.sent_at.items())),
        ("phase ends (s from start)", ", ".join(f"{k} {v}" for k, v in f.seconds.items())),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n")[0])
    d = Plan()
    p.add_argument("--devices", type=int, default=d.devices)
    p.add_argument("--samples", type=int, default=d.samples, help="per device")
    p.add_argument("--rate", type=float, default=d.rate, help="messages per second in total")
    p.add_argument("--outage", type=float, default=d.outage, help="seconds upstream is down")
    p.add_argument("--disk", default=d.disk, help="size of the spool's tmpfs")
    p.add_argument("--disk-hold", type=int, default=d.disk_hold, help="messages sent while full")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout)
    p.add_argument("--json-out", type=Path, help="also write the JSON result here")
    p.add_argument("--keep", type=Path, help="work directory to keep (logs, config, brokers)")
    args = p.parse_args(argv)
    plan = Plan(
        devices=args.devices,
        samples=args.samples,
        rate=args.rate,
        outage=args.outage,
        disk=args.disk,
        disk_hold=args.disk_hold,
        drain_timeout=args.drain_timeout,
    )
    from .w1 import build_models, machine

    with contextlib.ExitStack() as stack:
        work = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="faults-")))
        work.mkdir(parents=True, exist_ok=True)
        model = build_models(work / "models")["int8"]
        try:
            figures = run(plan, work, model, say=lambda s: print(s, file=sys.stderr))
        except MountError as e:
            print(f"{e} (the spool's disk is a tmpfs: run as root)", file=sys.stderr)
            return 2
    result = {
        "bench": "faults",
        "command": "python -m bench.faults " + " ".join(argv if argv is not None else sys.argv[1:]),
        "plan": asdict(plan),
        "machine": machine(),
        "exact": figures.exact,
        "as_documented": figures.as_documented,
        "figures": asdict(figures),
    }
    print_result(table(figures), json.dumps(result), args.json_out)
    return 0 if figures.as_documented else 1


if __name__ == "__main__":
    raise SystemExit(main())
