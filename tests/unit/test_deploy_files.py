"""Every path the Dockerfile, the compose file and the systemd unit refer to exists."""

from __future__ import annotations

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
    for option in ("NoNewPrivileges=true", "ProtectSystem=strict", "CapabilityBoundingSet="):
        assert option in unit


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
