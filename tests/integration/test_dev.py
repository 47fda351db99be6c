"""`pruner dev` on a machine with no Redis at all: it brings its own, works end to end, stops clean."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.support import ROOT

BIN = Path(sys.executable).parent


def _can_unshare() -> bool:
    if not sys.platform.startswith("linux") or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root for a network namespace (CI runs as root)")
def test_dev_without_any_redis_starts_its_own_and_stops_clean() -> None:
    # A fresh network namespace: nothing answers on localhost:6379 (the machine's Redis is
    # outside it), and dev's PATH has no redis-server, so it must use the dev extras' one.
    script = f"ip link set lo up && exec {BIN / 'python'} -m tests.integration.dev_session"
    done = subprocess.run(["unshare", "-n", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    output = str(result["output"])
    assert result["ready"], output
    assert "started " in output and "redis-server" in output and "nothing answered on localhost:6379" in output
    assert str(result["exports"]).startswith("export REDIS_URL=redis://127.0.0.1:")
    assert "PRUNER_ADMIN_TOKEN=" in str(result["exports"]) and "PRUNER_DRY_RUN=1" in str(result["exports"])
    assert (result["sent"], result["lead"]) == (202, "ACTIVE"), output
    assert result["exit"] == 0, output
    assert "Traceback" not in output and "GET /readyz" not in output, output
    assert "\x1b[" not in output or "{" not in output  # no colour codes inside JSON lines


def test_dev_says_which_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [str(BIN / "pruner"), "dev", "--port", str(port)], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1
    assert f"port {port} is already in use" in done.stderr and "--port" in done.stderr


def test_dev_says_when_redis_url_is_dead() -> None:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0"}  # nothing listens on port 1
    done = subprocess.run([str(BIN / "pruner"), "dev"], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1
    assert "REDIS_URL=redis://127.0.0.1:1/0 does not answer" in done.stderr
