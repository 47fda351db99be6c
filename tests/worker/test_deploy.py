"""Dockerfile and docker-compose.yml run exactly the Procfile's processes, the way production needs.

No Docker daemon runs in this project's CI sandbox, so the image is not built here: these
tests read the files as data (the Procfile is the source of truth), and, where Debian's
`docker-compose` is installed, let it validate the compose file without a daemon.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import require_tool

ROOT = Path(__file__).resolve().parents[2]


def procfile() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {name: shlex.split(cmd) for name, _, cmd in (line.partition(":") for line in lines if line.strip())}


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, argument) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arg = line.partition(" ")
            out.append((instruction.upper(), arg.strip()))
    return out


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_the_image_is_slim_unprivileged_and_pinned() -> None:
    steps = dockerfile()
    base = [arg for ins, arg in steps if ins == "FROM"]
    assert len(base) == 1 and base[0].startswith("python:") and base[0].endswith("-slim")
    runs = " ".join(arg for ins, arg in steps if ins == "RUN")
    assert "pip install -c constraints.txt ." in runs, "dependencies must come from the pinned constraints"
    users = [arg for ins, arg in steps if ins == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the processes must not run as root"
    assert [i for i, _ in steps].index("USER") > max(i for i, (ins, _) in enumerate(steps) if ins == "RUN")


def test_the_image_runs_the_procfiles_web_command_by_default() -> None:
    cmd = [arg for ins, arg in dockerfile() if ins == "CMD"][-1]
    assert yaml.safe_load(cmd) == procfile()["web"]


def test_compose_runs_every_procfile_process_with_its_exact_command() -> None:
    services = compose()["services"]
    proc = procfile()
    assert services["web"]["command"] == proc["web"]
    assert services["worker"]["command"] == proc["worker"]
    assert services["clock"]["command"] == proc["clock"]
    assert services["release"]["command"] == proc["release"]
    for name in ("web", "worker", "clock"):
        # A bad policy stops the deploy: the release phase must succeed first.
        assert services[name]["depends_on"]["release"]["condition"] == "service_completed_successfully"
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"


def test_compose_redis_keeps_every_write_and_never_evicts() -> None:
    command = compose()["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    assert any(v.endswith(":/data") for v in compose()["services"]["redis"]["volumes"])


def test_docker_compose_accepts_the_file() -> None:
    # `config` validates against the Compose schema and resolves anchors without a daemon.
    result = subprocess.run(
        [require_tool("docker-compose", "docker-compose"), "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
