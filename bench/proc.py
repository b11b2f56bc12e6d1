"""Child processes of the bench: a JSON-lines request channel, CPU time and peak RSS from /proc."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")


def reply(obj: dict[str, Any]) -> None:
    """Child side: write one JSON line to stdout."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve(commands: dict[str, Callable[[], dict[str, Any]]]) -> None:
    """Child side: answer each command line on stdin with one JSON line; return on EOF."""
    for line in sys.stdin:
        reply(commands[line.strip()]())


class Child:
    """A bench process started from this repo; stderr goes to ``log``.

    With ``channel`` it is driven by JSON lines: ``request(cmd)`` writes a command to its stdin
    and returns the next line it prints; closing stdin asks it to stop.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        channel: bool = False,
    ) -> None:
        self.log = log
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p
        )
        pipe = subprocess.PIPE if channel else subprocess.DEVNULL
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                list(argv),
                cwd=REPO,
                env=full_env,
                stdin=pipe,
                stdout=pipe,
                stderr=err,
                text=True,
            )
        self.pid = self.proc.pid
        self._lines: queue.Queue[str] = queue.Queue()
        if channel:
            threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put("")

    def expect(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the child prints."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"pid {self.pid}: no answer in {timeout} s") from None
        if not line:
            raise RuntimeError(f"pid {self.pid} exited: {self.tail()}")
        return dict(json.loads(line))

    def request(self, cmd: str, timeout: float = 10.0) -> dict[str, Any]:
        """Send ``cmd`` and return the child's answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.expect(timeout)

    def stop(self, timeout: float = 15.0) -> int:
        """Ask the child to stop (EOF on stdin, else SIGTERM); kill it after ``timeout``."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -signal.SIGKILL

    def tail(self, lines: int = 15) -> str:
        """The end of the child's stderr log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def python(module: str, *args: object) -> list[str]:
    """argv running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *map(str, args)]


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (/proc/<pid>/stat)."""
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _TICK


def run_seconds(pid: int) -> float:
    """Seconds ``pid`` and its live descendants ran, to the nanosecond: the scheduler's
    own count (``/proc/<pid>/task/*/schedstat``), not utime + stime, which are sampled at
    the 100 Hz tick and charge a whole tick to a thread whose timer woke it at one. An idle
    process is made of such wake-ups (a stock paho subscriber showed 0.6 % of a core by
    ticks). Threads that ended are not counted: for the idle figure only."""
    total = 0
    for p in _tree(pid):
        for task in Path(f"/proc/{p}/task").glob("*/schedstat"):
            try:
                total += int(task.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def thread_stats(pid: int) -> dict[str, tuple[float, int]]:
    """CPU seconds (utime + stime) and voluntary context switches (sleeps, i.e. wake-ups)
    per thread name of ``pid`` (``/proc/<pid>/task/*``); threads of one name are summed."""
    out: dict[str, tuple[float, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            head, rest = (task / "stat").read_text().rsplit(")", 1)
            status = (task / "status").read_text()
        except OSError:
            continue
        name = head.split("(", 1)[1]
        fields = rest.split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICK
        woke = next(
            int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("voluntary_ctxt")
        )
        c, w = out.get(name, (0.0, 0))
        out[name] = (c + cpu, w + woke)
    return out


def thread_delta(
    before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]], samples: int
) -> dict[str, dict[str, float]]:
    """Per thread name: CPU s and wake-ups per 1,000 samples between two :func:`thread_stats`."""
    k = 1000 / max(samples, 1)
    out = {}
    for name, (cpu, woke) in after.items():
        c0, w0 = before.get(name, (0.0, 0))
        out[name] = {
            "cpu_s_per_1k": round((cpu - c0) * k, 4),
            "wakeups_per_1k": round((woke - w0) * k, 1),
        }
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["cpu_s_per_1k"]))


def cpu_ticks() -> list[int]:
    """The machine's CPU time by state since boot (first line of /proc/stat, in ticks)."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def steal_share(before: list[int], after: list[int]) -> float:
    """Share of the machine's CPU time the hypervisor gave to others between two readings
    (the 8th field, steal): a VM's noise, reported beside latency figures."""
    delta = [b - a for a, b in zip(before, after)]
    return round(100 * delta[7] / max(sum(delta[:8]), 1), 1)


def peak_rss_mb(pid: int) -> float:
    """Sum of VmHWM (peak resident set) of ``pid`` and its live descendants, in MB."""
    kb = 0
    for p in _tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        kb += next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM:")), 0)
    return kb / 1024


def print_result(text: str, line: str, json_out: Path | None) -> None:
    """A bench's table (and footer), then its JSON line, also written to ``json_out``."""
    print(text)
    print(line)
    if json_out:
        json_out.write_text(line + "\n")
