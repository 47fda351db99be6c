"""Drive one `pruner dev` session the way a newcomer does; run inside a fresh network namespace.

Run by test_dev.py as `unshare -n sh -c 'ip link set lo up && python -m tests.integration.dev_session'`:
there nothing answers on localhost:6379 and PATH has no redis-server, so dev must bring its own
Redis. Prints one JSON line saying what happened; the test asserts on it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests.helpers import batch_body, event, signed_headers

BIN = Path(sys.executable).parent


def main() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRUNER_", "REDIS_", "HUBSPOT_", "SALESFORCE_"))}
    env["PATH"] = "/nonexistent"  # no redis-server on PATH: only the one beside python may be used
    proc = subprocess.Popen(
        [str(BIN / "pruner"), "dev", "--port", "5000"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    result: dict[str, object] = {"ready": ready.wait(60)}
    output = "".join(lines)
    exports = next((line for line in lines if line.startswith("export ")), "")
    result["exports"] = exports.strip()
    if result["ready"]:
        values = dict(part.split("=", 1) for part in exports.split()[1:])
        secret = values["PRUNER_WEBHOOK_SECRET"].strip("'")
        token = values["PRUNER_ADMIN_TOKEN"].strip("'")
        body = batch_body([event("not_interested", lead_id="dev-1", event_id="dev-evt-1")])
        sent = requests.post(
            "http://127.0.0.1:5000/webhooks/events", data=body, headers=signed_headers(body, secret), timeout=10
        )
        result["sent"] = sent.status_code
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = requests.get(
                "http://127.0.0.1:5000/leads/hubspot/dev-1", headers={"Authorization": f"Bearer {token}"}, timeout=5
            )
            if got.status_code == 200 and got.json()["counters"]["not_interested"] == 1:
                result["lead"] = got.json()["state"]
                break
            time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    result["exit"] = proc.wait(timeout=60)
    reader.join(timeout=5)
    result["output"] = "".join(lines) or output
    print(json.dumps(result))


if __name__ == "__main__":
    main()
