"""The Dockerfile (linted here: no docker engine on the test machines), the compose file and
the systemd unit: every path they name exists, every command they run parses with our CLI,
the default container config loads the shipped model, and the settings the issue asked for
(#20: loopback broker, volumes, grace period, hardening) stay."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from agent import cli
from agent.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_copies_existing_paths():
    """Each COPY source (not --from a stage) exists in the build context (the repo root)."""
    text = (ROOT / "docker/Dockerfile").read_text()
    sources = []
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            sources += shlex.split(line)[1:-1]
    assert sources
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert not missing, missing
    assert "HEALTHCHECK" in text and "/readyz" in text
    assert re.search(r"^USER (?!root)\S+", text, re.M), "the image must not run as root"


def test_compose_mounts_and_build_exist():
    """The compose file's build context, Dockerfile and file mounts exist."""
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    agent = compose["services"]["agent"]
    context = (ROOT / "docker" / agent["build"]["context"]).resolve()
    assert (context / agent["build"]["dockerfile"]).is_file()
    for svc in compose["services"].values():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith(".") and "out/models" not in src:  # models are built locally
                assert (ROOT / "docker" / src).exists(), src


def test_systemd_unit_refers_to_real_things():
    """The unit's command lines parse with our CLI and its documentation file is shipped."""
    unit = (ROOT / "deploy/edge-agent.service").read_text()
    parser = build_parser()
    for key in ("ExecStartPre", "ExecStart"):
        cmd = shlex.split(re.search(rf"^{key}=(.+)$", unit, re.M)[1])
        assert cmd[0].endswith("/edge-agent")
        parser.parse_args(cmd[1:])
    doc = re.search(r"^Documentation=file://(\S+)$", unit, re.M)[1]
    assert (ROOT / "docs" / Path(doc).name).is_file()
    for option in (
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "UMask=0027",
        "ProtectProc=invisible",
        "SystemCallFilter=@system-service",
        "Type=notify",
    ):
        assert re.search(rf"^{re.escape(option)}$", unit, re.M), option


def test_reload_from_a_shell_signals_the_agent_the_unit_started(tmp_path, monkeypatch):
    """`edge-agent reload -c CONFIG` in an admin's shell (no $RUNTIME_DIRECTORY) finds the
    PID file that `run`, started by the unit's ExecStart with $RUNTIME_DIRECTORY set, wrote.
    The unit's runtime directory stands in tmp_path; the agent is a process that waits for
    its SIGHUP."""
    unit = (ROOT / "deploy/edge-agent.service").read_text()
    run_dir = tmp_path / re.search(r"^RuntimeDirectory=(\S+)$", unit, re.M)[1]
    run_dir.mkdir()
    monkeypatch.setattr(cli, "SYSTEM_RUN_DIR", run_dir, raising=False)
    args = build_parser().parse_args(shlex.split(re.search(r"^ExecStart=(.+)$", unit, re.M)[1])[1:])
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(run_dir))  # as systemd sets it for the unit
    agent_pid_file = Path(args.pid_file or cli.default_pid_file("starter"))

    waiter = (
        "import signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGHUP]);"
        " print('ready', flush=True); signal.sigwait([signal.SIGHUP]); sys.exit(7)"
    )
    agent = subprocess.Popen([sys.executable, "-c", waiter], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().strip() == "ready"
        agent_pid_file.write_text(f"{agent.pid}\n")
        monkeypatch.delenv("RUNTIME_DIRECTORY")  # the admin's shell
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "user"))
        assert cli.main(["reload", "-c", str(ROOT / "configs/starter.yaml")]) == 0
        assert agent.wait(10) == 7
    finally:
        agent.kill()
        agent.wait()


INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word, rest.strip()))
        pending = ""
    assert not pending, "a continuation runs off the end"
    return out


def _ignored(path: str, patterns: list[str]) -> bool:
    hit = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/")) for p in prefixes
        ):
            hit = not negate
    return hit


def test_dockerfile_lint():
    """What hadolint would hold us to, without docker: known instructions, pinned base
    images, exec-form CMD/ENTRYPOINT/HEALTHCHECK that our CLI parses, no ADD, a stop signal,
    a non-root user, and no COPY source excluded by .dockerignore."""
    steps = _instructions((ROOT / "docker/Dockerfile").read_text())
    assert {w for w, _ in steps} <= INSTRUCTIONS
    assert all(w == w.upper() for w, _ in steps)
    assert "ADD" not in {w for w, _ in steps}
    for word, rest in steps:
        if word == "FROM":
            image = rest.split()[0]
            assert ":" in image and not image.endswith(":latest"), image
    args = {w: rest for w, rest in steps}
    entry = json.loads(args["ENTRYPOINT"])
    cmd = json.loads(args["CMD"])
    assert entry == ["edge-agent"]
    parser = build_parser()
    parser.parse_args(cmd)
    options, _, health = args["HEALTHCHECK"].partition("CMD ")
    assert "--interval" in options and "--timeout" in options
    health_cmd = json.loads(health)
    assert health_cmd[0] == "edge-agent"
    parsed = parser.parse_args(health_cmd[1:])
    assert parsed.command == "health" and parsed.config == cmd[cmd.index("-c") + 1]
    assert args["STOPSIGNAL"] == "SIGTERM"
    assert args["USER"] not in ("root", "0")
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert _ignored(".venv/lib/x.py", ignore) and _ignored(".git/HEAD", ignore)
    assert _ignored("agent/__pycache__/cli.pyc", ignore)
    for word, rest in steps:
        if word == "COPY" and "--from" not in rest:
            for src in shlex.split(rest)[:-1]:
                assert not _ignored(src, ignore), src
                files = (
                    [src]
                    if (ROOT / src).is_file()
                    else [str(f.relative_to(ROOT)) for f in (ROOT / src).rglob("*") if f.is_file()]
                )
                kept = [f for f in files if not _ignored(f, ignore)]
                assert kept, f"{src}: everything excluded by .dockerignore"


def test_default_container_config_serves_the_shipped_model(monkeypatch):
    """docker/agent.yaml with the image's environment (defaults): valid, and its pipeline
    loads builtin:skab_pump_ae_int8 from the package with online calibration."""
    from agent.config import load_config
    from agent.models import resolve
    from agent.stages.processor import build_processor

    for var in ("AGENT_ID", "MQTT_HOST", "MQTT_PORT", "MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("METRICS_TOKEN", "from-the-compose-env")  # compose requires it
    cfg = load_config(ROOT / "docker/agent.yaml")
    (pipe,) = cfg.pipelines
    assert pipe.handler.threshold == "auto" and pipe.calibration is not None
    processor = build_processor(pipe)
    assert Path(processor.handler.path) == resolve("builtin:skab_pump_ae_int8")
    assert cfg.spool.path.parent == Path("/var/lib/edge-agent")


def test_compose_broker_volumes_and_grace_period():
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    mosquitto, agent = compose["services"]["mosquitto"], compose["services"]["agent"]
    for svc in (mosquitto, agent):  # published on the host's loopback only
        assert all(p.startswith("127.0.0.1:") for p in svc.get("ports", [])), svc["ports"]
    conf = (ROOT / "docker/mosquitto.conf").read_text()
    data = re.search(r"^persistence_location (\S+)$", conf, re.M)[1].rstrip("/")
    assert re.search(r"^persistence true$", conf, re.M)
    mounts = {v.split(":")[1].split(":")[0]: v.split(":")[0] for v in mosquitto["volumes"]}
    assert mounts[data] in compose["volumes"], "mosquitto's data needs a named volume"
    agent_mounts = {v.split(":")[1]: v.split(":")[0] for v in agent["volumes"]}
    assert agent_mounts["/var/lib/edge-agent"] in compose["volumes"]
    grace = int(agent["stop_grace_period"].rstrip("s"))
    unit = (ROOT / "deploy/edge-agent.service").read_text()
    assert grace >= int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M)[1])
