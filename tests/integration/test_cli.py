"""The `pruner` command line as a user runs it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import pytest
import redis

from tests.integration.conftest import BIN, ROOT, base_env, free_port

pytestmark = pytest.mark.integration


def test_dev_runs_everything_and_its_printed_example_works(redis_db: redis.Redis) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "pruner"), "dev", "--port", str(port)],
        cwd=ROOT,
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(lines)
        assert f"ready on http://127.0.0.1:{port}" in text, text
        snippet = text.split("paste this into another shell:\n\n", 1)[1].split("\n\nCtrl-C", 1)[0]
        out = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, timeout=30, check=True).stdout
        accepted, lead = [line for line in out.splitlines() if line.strip()]
        assert json.loads(accepted) == {"accepted": 1}
        assert json.loads(lead)["counters"]["outbound_touches"] == 1
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0
    # Ctrl-C stopped the web process too: nothing listens on the port any more.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_check_names_the_bad_setting() -> None:
    result = subprocess.run(
        [str(BIN / "pruner"), "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=base_env(PRUNER_WEBHOOK_SECRET="whsec_not base64!"),
        timeout=30,
    )
    assert result.returncode == 3
    assert "PRUNER_WEBHOOK_SECRET" in result.stderr
    assert "not base64" not in result.stderr  # a secret's value is never echoed


def test_check_reports_what_is_enabled() -> None:
    result = subprocess.run(
        [str(BIN / "pruner"), "check"], cwd=ROOT, capture_output=True, text=True, env=base_env(), timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "on   /webhooks/events" in result.stdout
    assert "off  /webhooks/hubspot" in result.stdout
