"""Ingest benchmark: signed 100-event batches POSTed to the real `web` process, beside two baselines.

Three targets, each a gunicorn started here with the same settings (the Procfile's
`-c gunicorn.conf.py`, with bind/workers/worker class/log level set on the command line):

- bare:    a Flask endpoint that reads the body and drops it (bench/baseline_app.py)
- minimal: the cheapest correct ingest — verify the signature, one LPUSH of the raw body, 202
- pruner:  `gunicorn 'webhooks:create_app()'`, REDIS_URL on DB 13, PRUNER_WEBHOOK_SECRET set,
           the inbound rate limit counting every request (`--rate-limit`, high enough never to refuse)

wrk (1 thread, so the server keeps the cores) replays pre-signed requests (bench/wrk_post.lua).
Each target is warmed up, then measured in `--rounds` interleaved rounds (order rotated) so that
drifting background load hits all three alike. Before every round a pool of distinct signed batches
is generated (timestamps fresh, far inside the 5-minute window), sized from the rates seen so far so
that Pruner never receives the same event id twice. Afterwards the jobs/bodies in Redis are checked
against the 202s counted, and Pruner's view is timed step by step in-process.

    .venv/bin/python -m bench.ingest [--duration 20] [--rounds 4] [--workers 2] [--worker-class sync]
                                     [--gunicorn-config none] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import math
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.baseline_app import RAW_KEY
from bench.common import (
    PLAIN_CONFIG,
    REDIS_URL,
    ROOT,
    BatchBuilder,
    GunicornSettings,
    bench_db,
    child_env,
    flush_bench_db,
    free_port,
    gunicorn,
    lead_ids,
    load_note,
    new_secret,
    raw_post,
    signed_headers,
)
from rules.fastparse import fast_count
from webhooks import create_app
from webhooks.signatures import verify
from worker.config import Config
from worker.queues import enqueue_batch, make_queue
from worker.secrets import decode_secret

PATH = "/webhooks/events"
LUA = Path(__file__).with_name("wrk_post.lua")
TARGETS: dict[str, tuple[str, str]] = {
    "bare": ("bench.baseline_app:create_bare_app()", "read the body, drop it"),
    "minimal": ("bench.baseline_app:create_app()", "verify signature + 1 LPUSH"),
    "pruner": ("webhooks:create_app()", "verify + validate + enqueue RQ job"),
}
TARGET_RATIO = 0.8
CPU_PARTS = ("gunicorn", "redis", "wrk")


@dataclass
class WrkResult:
    requests: int = 0
    duration_s: float = 0.0
    sent: int = 0
    pool: int = 0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def non_2xx(self) -> int:
        return sum(n for code, n in self.statuses.items() if not 200 <= code < 300)

    @property
    def socket_errors(self) -> int:
        return sum(n for name, n in self.errors.items() if name != "status")


@dataclass
class Target:
    """One server under test and everything measured on it."""

    name: str
    port: int
    builder: BatchBuilder
    warm: WrkResult = field(default_factory=WrkResult)
    runs: list[WrkResult] = field(default_factory=list)
    pool_seconds: float = 0.0
    stored: int | None = None
    pid: int = 0  # the gunicorn master
    # CPU seconds spent during the measured rounds: gunicorn (master + workers), Redis, wrk.
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CPU_PARTS, 0.0))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def rps(self) -> float:
        seconds = sum(r.duration_s for r in self.runs)
        return sum(r.requests for r in self.runs) / seconds if seconds else 0.0

    @property
    def accepted(self) -> int:
        return sum(r.statuses.get(202, 0) for r in [self.warm, *self.runs])

    def total(self, attr: str) -> int:
        return sum(int(getattr(r, attr)) for r in self.runs)


def parse_wrk(output: str) -> WrkResult:
    """Read the BENCH lines wrk_post.lua prints."""
    res = WrkResult()
    for line in output.splitlines():
        if not line.startswith("BENCH "):
            continue
        kind, _, rest = line[len("BENCH ") :].partition(" ")
        if kind == "status":
            code, count = rest.split()
            res.statuses[int(code)] = int(count)
            continue
        values = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", rest)}
        if kind == "summary":
            res.requests, res.sent, res.pool = values["requests"], values["sent"], values["pool"]
            res.duration_s = values["duration_us"] / 1e6
        elif kind == "latency":
            res.p50_ms, res.p90_ms = values["p50_us"] / 1000, values["p90_us"] / 1000
            res.p99_ms, res.max_ms = values["p99_us"] / 1000, values["max_us"] / 1000
        elif kind == "errors":
            res.errors = values
    if not res.duration_s:
        raise RuntimeError(f"could not read wrk's output:\n{output}")
    return res


def write_pool(directory: Path, builder: BatchBuilder, key: bytes, host: str, count: int) -> tuple[Path, Path]:
    """Write `count` freshly signed, distinct requests for wrk_post.lua; return (requests, index)."""
    data_path, index_path = directory / "requests.bin", directory / "requests.idx"
    with data_path.open("wb") as data, index_path.open("w") as index:
        for _ in range(count):
            body = builder.body()
            req = raw_post(host, PATH, body, signed_headers(key, body))
            data.write(req)
            index.write(f"{len(req)}\n")
    return data_path, index_path


def run_wrk(
    url: str, pool: tuple[Path, Path], seconds: float, threads: int, connections: int, timeout: float = 10.0
) -> WrkResult:
    whole = max(1, round(seconds))  # wrk takes whole seconds
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{whole}s", "--timeout", f"{timeout:g}s"]
    cmd += ["-s", str(LUA), url, "--", str(pool[0]), str(pool[1]), str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk(done.stdout)


def stored_count(name: str, conn: redis.Redis) -> int | None:
    """How many batches the target put in Redis (jobs for Pruner, raw bodies for minimal)."""
    if name == "pruner":
        return int(make_queue(conn).count)
    if name == "minimal":
        return int(conn.llen(RAW_KEY))
    return None


def print_log_problems(name: str, path: Path) -> None:
    """Show the gunicorn log lines that are not access-log lines: errors, tracebacks, warnings."""
    if not path.exists():
        return
    access = re.compile(r'^\S+ "(GET|POST) ')
    lines = [line for line in path.read_text(errors="replace").splitlines() if line and not access.match(line)]
    if lines:
        print(f"   gunicorn log ({name}), last non-access lines:")
        print("\n".join("   | " + line[:200] for line in lines[-15:]))


def scrape_counter(url: str, name: str) -> float:
    """Sum every series of one counter on a Prometheus text page."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (0 when it is gone or not visible here)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _family(pid: int) -> list[int]:
    """`pid` and its children (a gunicorn master and its workers)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return [pid, *kids]


def cpu_sample(t: Target, redis_pid: int | None) -> dict[str, float]:
    """CPU seconds so far of the target's gunicorn processes, of Redis, and of this process's children (wrk)."""
    children = os.times()
    return {
        "gunicorn": sum(_cpu_seconds(pid) for pid in _family(t.pid)),
        "redis": _cpu_seconds(redis_pid) if redis_pid else 0.0,
        "wrk": children.children_user + children.children_system,
    }


def measure(targets: list[Target], args: argparse.Namespace, key: bytes, conn: redis.Redis, tmp: Path) -> None:
    """Warm every target up, then run `--rounds` interleaved rounds (order rotated each round)."""
    for t in targets:
        pool = write_pool(tmp, t.builder, key, t.host, args.warmup_pool)
        t.warm = run_wrk(t.url, pool, args.warmup, args.wrk_threads, args.connections)
    pruner = next((t for t in targets if t.name == "pruner"), None)
    # /metrics during the load: the counters must move by exactly what was accepted.
    before = scrape_counter(pruner.url, "pruner_events_received_total") if pruner else 0.0
    chunk = max(1, round(args.duration / args.rounds))
    # Redis's own CPU is visible when it runs on this machine (the benchmark's default).
    redis_pid = int(conn.info("server")["process_id"])
    if not Path(f"/proc/{redis_pid}/stat").exists():
        redis_pid = 0
    for rnd in range(args.rounds):
        shift = rnd % len(targets)
        for t in targets[shift:] + targets[:shift]:
            # Enough distinct batches for the whole chunk at 1.5x the best rate seen (Pruner must never wrap).
            rate = max([t.warm.rps] + [r.rps for r in t.runs])
            count = min(args.max_pool, math.ceil(rate * chunk * 1.5) + 200)
            started = time.perf_counter()
            pool = write_pool(tmp, t.builder, key, t.host, count)  # signed now: fresh timestamps
            t.pool_seconds += time.perf_counter() - started
            before_cpu = cpu_sample(t, redis_pid)
            t.runs.append(run_wrk(t.url, pool, chunk, args.wrk_threads, args.connections))
            after_cpu = cpu_sample(t, redis_pid)
            for part in CPU_PARTS:
                t.cpu[part] += after_cpu[part] - before_cpu[part]
            print(f"   round {rnd + 1} {t.name:<8} {t.runs[-1].rps:>7,.0f} req/s", flush=True)
    time.sleep(0.3)  # let requests wrk abandoned at its deadline finish
    for t in targets:
        t.stored = stored_count(t.name, conn)
    if pruner is not None:
        moved = scrape_counter(pruner.url, "pruner_events_received_total") - before
        accepted = sum(r.statuses.get(202, 0) for r in pruner.runs) * args.events
        # wrk stops counting at its deadline; requests in flight then still land: moved >= accepted.
        verdict = "OK" if moved >= accepted else "MISMATCH"
        print(
            f"   /metrics during the load: pruner_events_received_total +{moved:,.0f} "
            f"for {accepted:,} events in the 202s wrk counted: {verdict}"
        )


def report(targets: list[Target], args: argparse.Namespace) -> float | None:
    print()
    head = f"{'target':<8} {'what':<42} {'req/s':>8} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7}"
    print(head + f" {'requests':>8} {'non-2xx':>7} {'sock err':>8}")
    for t in targets:
        p50 = statistics.median(r.p50_ms for r in t.runs)
        p99 = max(r.p99_ms for r in t.runs)
        line = f"{t.name:<8} {TARGETS[t.name][1]:<42} {t.rps:>8,.0f} {t.rps * args.events:>9,.0f}"
        print(
            line
            + f" {p50:>7.2f} {p99:>7.2f} {t.total('requests'):>8} {t.total('non_2xx'):>7} {t.total('socket_errors'):>8}"
        )
    if args.rounds > 1:
        print(f"(req/s over all {args.rounds} rounds; p50 = median of the rounds' p50, p99 = worst round's p99)")
    print()
    for t in targets:
        statuses: dict[int, int] = {}
        for r in t.runs:
            for code, n in r.statuses.items():
                statuses[code] = statuses.get(code, 0) + n
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items()))
        rounds = ", ".join(f"{r.rps:,.0f}" for r in t.runs)
        pools = sum(r.pool for r in t.runs)
        print(f"  {t.name}: statuses {{{codes}}}; req/s per round [{rounds}]")
        print(f"  {t.name}: {pools} distinct signed batches generated in {t.pool_seconds:.1f} s")
        if t.total("non_2xx") or t.total("socket_errors"):
            print(f"  !! {t.name}: {t.total('non_2xx')} non-2xx responses, {t.total('socket_errors')} socket errors")
        reused = sum(max(0, r.sent - r.pool) for r in t.runs)
        if reused:
            why = "event ids repeat!" if t.name == "pruner" else "harmless: this target ignores the content"
            print(f"  note: {t.name} re-sent {reused} bodies after its pool ran out ({why})")
        if t.stored is not None:
            ok = t.accepted <= t.stored <= t.accepted + 2 * args.connections * (1 + args.rounds)
            verdict = "OK" if ok else "MISMATCH"
            print(f"  {t.name}: {t.stored} batches in Redis for {t.accepted} 202s (incl. warm-up): {verdict}")
    by_name = {t.name: t.rps for t in targets}
    ratio = None
    print()
    if "pruner" in by_name and by_name.get("minimal"):
        ratio = by_name["pruner"] / by_name["minimal"]
        verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
        print(f"ratio pruner/minimal = {ratio:.2f}  ({verdict} the target >= {TARGET_RATIO})")
        runs = {t.name: t.runs for t in targets}
        per_round = [p.rps / m.rps for p, m in zip(runs["pruner"], runs["minimal"], strict=True) if m.rps]
        print(f"  per round: {', '.join(f'{r:.2f}' for r in per_round)} (the machine's noise)")
    cpu = {t.name: sum(t.cpu.values()) / t.total("requests") for t in targets if t.total("requests")}
    if cpu:
        # On a shared machine req/s swings with the neighbours' load; CPU per request much less:
        # with the cores saturated, requests/s is the cores divided by it.
        print("CPU per request during the rounds (gunicorn + Redis + wrk, from /proc):")
        for t in targets:
            if t.name in cpu:
                parts = ", ".join(f"{part} {t.cpu[part] / t.total('requests') * 1e6:,.0f}" for part in CPU_PARTS)
                print(f"  {t.name:<8} {cpu[t.name] * 1e6:>6,.0f} us ({parts})")
        if "pruner" in cpu and "minimal" in cpu:
            print(f"  CPU ratio minimal/pruner = {cpu['minimal'] / cpu['pruner']:.2f}")
    if by_name.get("bare"):
        for name in ("minimal", "pruner"):
            if name in by_name:
                print(f"ratio {name}/bare    = {by_name[name] / by_name['bare']:.2f}")
    return ratio


def stage_breakdown(secret: str, conn: redis.Redis, count: int, events: int, profile: bool) -> None:
    """Time each step of Pruner's view in-process against DB 13 (one core, no HTTP), and optionally cProfile it."""
    key = decode_secret(secret)
    builder = BatchBuilder(lead_ids(20_000), events, seed=7)
    bodies = [builder.body() for _ in range(count)]
    heads = [signed_headers(key, body) for body in bodies]
    queue = make_queue(conn)
    steps = ["verify", "validate (fast_count)", "enqueue_batch", "(minimal) lpush"]
    spent = dict.fromkeys(steps, 0.0)
    flush_bench_db(conn)
    for body, head in zip(bodies, heads, strict=True):
        # CPU time, not wall time: what the web process spends, whatever else the machine runs.
        t0 = time.process_time()
        now = time.time()
        verify(body, head, key, now)
        t1 = time.process_time()
        count = fast_count(body, int(now * 1000))
        t2 = time.process_time()
        if count is None:
            raise RuntimeError("the fast path declined a benchmark batch")
        enqueue_batch(queue, body, count, source="events")
        t3 = time.process_time()
        conn.lpush(RAW_KEY, body)
        t4 = time.process_time()
        for step, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            spent[step] += dt
    flush_bench_db(conn)
    app = create_app(Config.from_env({"REDIS_URL": REDIS_URL, "PRUNER_WEBHOOK_SECRET": secret}), conn)
    client = app.test_client()
    started = time.process_time()
    for body in bodies:  # re-signed: the view checks the timestamp, not the id, so bodies can repeat here
        client.post("/webhooks/events", data=body, headers=signed_headers(key, body))
    whole = (time.process_time() - started) / count
    flush_bench_db(conn)
    print(f"\nwhere Pruner's view spends CPU (in-process, {count} batches of {events} events, DB 13):")
    pruner_steps = steps[:-1]
    for step in steps:
        per = spent[step] / count * 1e6
        share = f"{spent[step] / sum(spent[s] for s in pruner_steps):>5.0%}" if step in pruner_steps else "     "
        print(f"  {step:<22} {per:>8.0f} us/request  {share}")
    print(f"  {'whole view':<22} {whole * 1e6:>8.0f} us/request  (Flask test client: + routing, hooks, metrics)")
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for body in bodies:
            client.post("/webhooks/events", data=body, headers=signed_headers(key, body))
        prof.disable()
        flush_bench_db(conn)
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        print(f"\ncProfile of {count} requests through the Flask test client, top 25 by own time:")
        print(out.getvalue())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=20, help="whole seconds of measured load per target (20)")
    p.add_argument("--warmup", type=int, default=2, help="whole seconds of warm-up per target (2)")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds sharing --duration (4)")
    p.add_argument("--targets", default="bare,minimal,pruner", help="comma-separated subset of bare,minimal,pruner")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (2: one per core)")
    p.add_argument("--worker-class", default="sync", help="gunicorn worker class (sync, as in the Procfile)")
    p.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker (gthread only)")
    p.add_argument(
        "--gunicorn-config",
        default="gunicorn.conf.py",
        help="config file, relative to the project, as the Procfile passes it (none: gunicorn's defaults)",
    )
    p.add_argument(
        "--rate-limit",
        default="1000000/second",
        help="PRUNER_INBOUND_RATE_LIMIT for the pruner target: counted but never reached by default, so the "
        "cost of counting is measured (wrk is one sender, which the real 200/second would refuse); off: no count",
    )
    p.add_argument("--connections", type=int, default=4, help="wrk connections (4: two per worker)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (1: leave the cores to the server)")
    p.add_argument("--events", type=int, default=100, help="events per batch (100)")
    p.add_argument("--leads", type=int, default=20_000, help="distinct leads the events are spread over")
    p.add_argument("--warmup-pool", type=int, default=1500, help="signed batches cycled during the warm-up")
    p.add_argument("--max-pool", type=int, default=60_000, help="cap on signed batches generated per target")
    p.add_argument("--breakdown", type=int, default=200, help="batches for the in-process step timing (0: skip)")
    p.add_argument("--profile", action="store_true", help="also cProfile the view in-process")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench.ingest: wrk is not installed (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        print(f"bench.ingest: unknown target(s) {unknown}; choose from {list(TARGETS)}", file=sys.stderr)
        return 2
    config = PLAIN_CONFIG if args.gunicorn_config == "none" else str(ROOT / args.gunicorn_config)
    if config != PLAIN_CONFIG and not Path(config).exists():
        print(f"bench.ingest: no gunicorn config at {config} (use --gunicorn-config none)", file=sys.stderr)
        return 2
    settings = GunicornSettings(args.workers, args.worker_class, args.threads, config)
    secret = new_secret()
    BatchBuilder(lead_ids(10), args.events).check()
    print("== ingest: signed batches -> POST /webhooks/events ==")
    print(f"gunicorn (same for every target): {settings.describe()}")
    print(f"wrk: {args.wrk_threads} thread(s), {args.connections} connections; per target {args.warmup:g} s warm-up")
    print(f"     then {args.duration:g} s measured in {args.rounds} interleaved round(s)")
    print(f"load: {args.events} distinct events per batch, spread over {args.leads} leads, signed just before each run")
    print(f"Redis: {REDIS_URL}; before: {load_note()}")
    print(f"pruner's PRUNER_INBOUND_RATE_LIMIT: {args.rate_limit}")
    targets: list[Target] = []
    with (
        bench_db() as conn,
        tempfile.TemporaryDirectory(prefix="pruner-bench-") as tmpdir,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmpdir)
        try:
            for name in names:
                spec = TARGETS[name][0]
                port = free_port()
                print(f"-- starting {name}: gunicorn '{spec}' on 127.0.0.1:{port}", flush=True)
                log = stack.enter_context((tmp / f"{name}.log").open("wb"))
                env = child_env(secret)
                if name == "pruner":
                    env["PRUNER_INBOUND_RATE_LIMIT"] = args.rate_limit
                server = stack.enter_context(gunicorn(spec, port, settings, env, log))
                builder = BatchBuilder(lead_ids(args.leads), args.events, seed=zlib.crc32(name.encode()))
                targets.append(Target(name, port, builder, pid=server.pid))
            measure(targets, args, decode_secret(secret), conn, tmp)
        finally:
            stack.close()
            for name in names:
                print_log_problems(name, tmp / f"{name}.log")
        print(f"after: {load_note()}")
        report(targets, args)
        if args.breakdown:
            stage_breakdown(secret, conn, args.breakdown, args.events, args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
