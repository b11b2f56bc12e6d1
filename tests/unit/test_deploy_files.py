"""Every path the Dockerfile, the compose file and the systemd unit refer to exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

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
