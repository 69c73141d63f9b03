#!/usr/bin/env python
"""Drive complete return_refund after-sales flows against a ShopDesk server and print their speed.

One flow is what a shopper and an agent do for one return, over the public API:

    create (shopper)  →  approve (staff)  →  ship-return (shopper)  →  receive (staff)
      →  refund-confirm (staff, once per refund row: the order was paid by two tenders)

and the case ends `completed`. The bench prints, per database: complete flows/s (wall clock,
closed loop, `--concurrency` flows in flight), p50/p99 of every step and of the whole flow; then
case creation alone at a fixed rate (open loop: requests leave on a timetable, whatever came
back) with p50/p99/max; and, with the same client, the ceiling of this stack: GET /healthz req/s
at the same concurrency.

By default it starts its own server per database (`shopdesk serve --no-jobs`, one uvicorn
process, on a free port): SQLite in a temporary directory, PostgreSQL in a fresh database
`shopdesk_bench_<pid>` that is dropped at the end; merchant, API key and staff come from the
command line tool, orders from `POST /api/v1/orders`. See bench/README.md.

    .venv/bin/python bench/aftersales_flow.py                       # both databases, defaults
    .venv/bin/python bench/aftersales_flow.py --db postgres --flows 2000 --concurrency 32
    .venv/bin/python bench/aftersales_flow.py --url http://127.0.0.1:8000 --key sk_… \\
        --staff-email agent@shop.test --staff-password secret     # a server already running
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SHOPDESK = Path(sys.executable).with_name("shopdesk")
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
STEPS = ("create", "approve", "ship-return", "receive", "refund-confirm", "refund-settle", "flow")
RETURN_ADDRESS = {"name": "售后仓", "phone": "021-5555 0000", "province": "上海", "city": "上海",
                  "district": "青浦区", "detail": "华新镇 88 号 售后组"}
# Targets of the issue (one server process on the 2-core machine).
TARGET_FLOWS_PER_S = 100.0
TARGET_CREATE_P99_MS = 50.0
TARGET_RATE = 100.0
# Ceilings of this machine, measured with wrk (/work/shared/performance.md).
CEILING_FASTAPI_JSON = 10_200.0
CEILING_FASTAPI_SQLITE_INSERT = 5_150.0
CEILING_PG_INSERT_TPS = 12_900.0


# --------------------------------------------------------------------------------------------
# A small HTTP/1.1 keep-alive client. httpx costs the client about as much CPU per request as a
# trivial FastAPI handler costs the server; on two shared cores that would be measured as server
# slowness. This one only writes a request and reads a Content-Length (or chunked) answer.
# --------------------------------------------------------------------------------------------
class HttpError(Exception):
    pass


class Conn:
    """One persistent connection; requests on it are sequential."""

    IDLE_S = 4.0  # uvicorn closes idle keep-alive connections after 5 s

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0
        self.requests = 0

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        if self.writer is None or time.monotonic() - self.last_used > self.IDLE_S:
            self.close()
            await self._open()
        assert self.reader is not None and self.writer is not None
        self.requests += 1
        payload = b"" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if token:
            head.append(f"Authorization: Bearer {token}")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append("Content-Type: application/json")
            head.append(f"Content-Length: {len(payload)}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            if "content-length" in headers:
                data = await self.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    chunk = await self.reader.readexactly(size + 2)
                    if size == 0:
                        break
                    parts.append(chunk[:-2])
                data = b"".join(parts)
            else:
                data = b""
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.close()
            raise HttpError(f"{method} {path}: connection lost ({exc!r})") from exc
        if headers.get("connection", "").lower() == "close":
            self.close()
        self.last_used = time.monotonic()
        ctype = headers.get("content-type", "")
        return status, (json.loads(data) if data and "json" in ctype else data)


class Pool:
    """Connections for overlapping requests (the open-loop phase)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[Conn] = []
        self.busy: set[Conn] = set()
        self.opened = 0

    async def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        conn = self.idle.pop() if self.idle else None
        if conn is None:
            conn = Conn(self.host, self.port)
            self.opened += 1
        self.busy.add(conn)
        try:
            answer = await conn.request(method, path, body, token)
        except BaseException:
            conn.close()
            raise
        finally:
            self.busy.discard(conn)
        self.idle.append(conn)
        return answer

    def close(self) -> None:
        for c in self.idle:
            c.close()
        self.idle.clear()


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise SystemExit("only http:// URLs are supported")
    return parts.hostname or "127.0.0.1", parts.port or 80


def expect(answer: tuple[int, Any], status: int, what: str) -> Any:
    code, body = answer
    if code != status:
        text = json.dumps(body, ensure_ascii=False)[:300] if isinstance(body, dict) else repr(body[:300])
        raise HttpError(f"{what}: HTTP {code} {text}")
    return body


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": pct(values, 50), "p99_ms": pct(values, 99),
            "max_ms": max(values) if values else float("nan")}


# --------------------------------------------------------------------------------------------
# The measured work. Each runs inside one client process; results are plain dicts.
# --------------------------------------------------------------------------------------------
@dataclass
class FlowConfig:
    url: str
    staff_token: str
    provider: str = "manual"  # manual: staff confirms each refund; sandbox: the job runner settles them
    settle_timeout_s: float = 30.0
    poll_s: float = 0.25


def case_body(order: dict) -> dict:
    return {"order_id": order["order_id"], "type": "return_refund", "reason": "no_reason_7d",
            "lines": [{"order_line_id": lid, "quantity": qty} for lid, qty in order["lines"]],
            "description": "七天无理由退货（压测）"}


async def one_flow(conn: Conn, cfg: FlowConfig, order: dict, lat: dict[str, list[float]]) -> None:
    """Run one complete return_refund flow; append each step's latency (ms) to lat."""
    shopper, staff = order["shopper_token"], cfg.staff_token
    clock = time.perf_counter
    start = t = clock()

    def mark(step: str) -> None:
        nonlocal t
        now_ = clock()
        lat[step].append((now_ - t) * 1000)
        t = now_

    case = expect(await conn.request("POST", "/api/v1/aftersales", case_body(order), shopper), 201, "create")
    mark("create")
    base = f"/api/v1/aftersales/{case['id']}"
    case = expect(await conn.request("POST", f"{base}/approve", {}, staff), 200, "approve")
    mark("approve")
    if case["status"] != "awaiting_return":
        raise HttpError(f"approve: case is {case['status']}")
    case = expect(await conn.request("POST", f"{base}/ship-return",
                                     {"carrier": "yuantong", "tracking_no": f"YTR{secrets.token_hex(6)}"}, shopper),
                  200, "ship-return")
    mark("ship-return")
    case = expect(await conn.request("POST", f"{base}/receive", {"outcome": "ok"}, staff), 200, "receive")
    mark("receive")
    if case["status"] != "refunding" or not case["refunds"]:
        raise HttpError(f"receive: case is {case['status']} with {len(case['refunds'])} refunds")
    if cfg.provider == "manual":
        for refund in case["refunds"]:
            r = expect(await conn.request("POST", f"/api/v1/refunds/{refund['refund_no']}/confirm",
                                          {"reference": f"BANK-{secrets.token_hex(4)}"}, staff), 200, "refund-confirm")
            mark("refund-confirm")
            if r["status"] != "succeeded":
                raise HttpError(f"refund-confirm: refund is {r['status']}")
    else:
        deadline = clock() + cfg.settle_timeout_s
        while True:
            await asyncio.sleep(cfg.poll_s)
            case = expect(await conn.request("GET", base, None, staff), 200, "refund-settle")
            if case["status"] == "completed":
                break
            if case["status"] != "refunding" or clock() > deadline:
                raise HttpError(f"refund-settle: case is {case['status']}")
        mark("refund-settle")
    lat["flow"].append((clock() - start) * 1000)


def _sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        time.sleep(delay)


async def run_flows(cfg: FlowConfig, orders: list[dict], concurrency: int, start_at: float = 0.0,
                    max_seconds: float | None = None) -> dict:
    """Closed loop: `concurrency` workers each run flows back to back until the orders are used up
    (or, with max_seconds, until no new flow may start; flows under way are finished)."""
    host, port = host_port(cfg.url)
    lat: dict[str, list[float]] = {s: [] for s in STEPS}
    errors: list[str] = []
    todo = iter(orders)
    _sleep_until(start_at)
    cpu0 = os.times()
    t0 = time.time()
    stop = t0 + max_seconds if max_seconds else float("inf")
    requests = 0

    async def worker() -> None:
        nonlocal requests
        conn = Conn(host, port)
        for order in todo:
            if time.time() >= stop:
                break
            try:
                await one_flow(conn, cfg, order, lat)
            except HttpError as exc:
                errors.append(str(exc))
                conn.close()
        conn.close()
        requests += conn.requests

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    t1 = time.time()
    cpu1 = os.times()
    return {"lat": lat, "errors": errors, "t0": t0, "t1": t1, "requests": requests,
            "client_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}


async def run_healthz(url: str, concurrency: int, seconds: float, start_at: float = 0.0) -> dict:
    """Closed loop GET /healthz for `seconds`: the stack's trivial-JSON ceiling with this client."""
    host, port = host_port(url)
    lat: list[float] = []
    errors: list[str] = []
    _sleep_until(start_at)
    t0 = time.time()
    stop = time.perf_counter() + seconds
    cpu0 = os.times()

    async def worker() -> None:
        conn = Conn(host, port)
        while time.perf_counter() < stop:
            s = time.perf_counter()
            try:
                code, _ = await conn.request("GET", "/healthz")
            except HttpError as exc:
                errors.append(str(exc))
                continue
            if code != 200:
                errors.append(f"healthz: HTTP {code}")
            lat.append((time.perf_counter() - s) * 1000)
        conn.close()

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    t1 = time.time()
    cpu1 = os.times()
    return {"lat": lat, "errors": errors, "t0": t0, "t1": t1,
            "client_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}


async def run_fixed_rate(url: str, orders: list[dict], rate: float, drain_s: float = 10.0) -> dict:
    """Open loop: POST /aftersales for each order, the i-th leaving at t0 + i/rate.

    Latency counts from the planned departure, so a late client or a queue in the server both
    show up (no coordinated omission). Answers still missing drain_s after the last departure are
    given up on and count as slower than anything measured.
    """
    host, port = host_port(url)
    pool = Pool(host, port)
    lat: list[float] = []
    lag: list[float] = []
    errors: list[str] = []
    tasks = []
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05
    last_sent = t0

    async def fire(planned: float, order: dict) -> None:
        nonlocal last_sent
        last_sent = loop.time()
        lag.append((last_sent - planned) * 1000)
        try:
            expect(await pool.request("POST", "/api/v1/aftersales", case_body(order), order["shopper_token"]),
                   201, "create")
            lat.append((loop.time() - planned) * 1000)
        except HttpError as exc:
            errors.append(str(exc))

    for i, order in enumerate(orders):
        planned = t0 + i / rate
        delay = planned - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(planned, order)))
    _, pending = await asyncio.wait(tasks, timeout=drain_s) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    elapsed = loop.time() - t0
    pool.close()
    for conn in list(pool.busy):
        conn.close()
    # The rate actually offered: n requests sent over n - 1 intervals.
    offered = (len(orders) - 1) / (last_sent - t0) if len(orders) > 1 and last_sent > t0 else float("nan")
    return {"lat": lat, "lag": lag, "errors": errors, "sent": len(orders), "elapsed_s": elapsed,
            "offered_s": offered, "connections": pool.opened, "unanswered": len(pending)}


def _in_process(kind: str, args: tuple) -> dict:
    """Entry point of a client process (spawned)."""
    try:
        import uvloop  # same event loop as the server; cheaper per request than asyncio's own

        uvloop.install()
    except ImportError:
        pass
    if kind == "flows":
        return asyncio.run(run_flows(*args))
    if kind == "healthz":
        return asyncio.run(run_healthz(*args))
    raise ValueError(kind)


def merge(parts: list[dict]) -> dict:
    """Combine the results of several client processes."""
    out = {"errors": [], "t0": min(p["t0"] for p in parts), "t1": max(p["t1"] for p in parts),
           "client_cpu_s": sum(p["client_cpu_s"] for p in parts), "requests": sum(p.get("requests", 0) for p in parts)}
    if isinstance(parts[0]["lat"], dict):
        out["lat"] = {s: [v for p in parts for v in p["lat"][s]] for s in STEPS}
    else:
        out["lat"] = [v for p in parts for v in p["lat"]]
    for p in parts:
        out["errors"].extend(p["errors"])
    return out


def run_split(kind: str, procs: int, make_args) -> dict:
    """Run a phase in `procs` client processes started together; make_args(i, start_at) → args."""
    if procs <= 1:
        return _in_process(kind, make_args(0, 0.0))
    with ProcessPoolExecutor(max_workers=procs, mp_context=get_context("spawn")) as ex:
        # Warm the processes (imports) before the common start time.
        list(ex.map(_noop, range(procs)))
        start_at = time.time() + 1.0
        futures = [ex.submit(_in_process, kind, make_args(i, start_at)) for i in range(procs)]
        return merge([f.result() for f in futures])


def _noop(_: int) -> None:
    time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# CPU accounting from /proc (Linux): where the cycles of a phase went.
# --------------------------------------------------------------------------------------------
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def postgres_cpu_s() -> float:
    """CPU of every process named postgres on this machine (backends, WAL writer, checkpointer), plus
    what the postmaster has reaped from backends that exited (a pool that opens and closes
    connections would otherwise hide their cost). Other clients of the same server count too."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.find("(") + 1:raw.rfind(")")]
        if name.startswith("postgres"):
            fields = raw.rsplit(")", 1)[1].split()
            # utime + stime, and cutime + cstime (children that were waited for: exited backends)
            total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / TICK
    return total


def total_cpu_s() -> float:
    """Busy CPU-seconds of the whole machine."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts[:8]) - idle) / TICK


class CpuMeter:
    """CPU-seconds of the machine, the server process and PostgreSQL."""

    def __init__(self, server_pid: int | None, pg: bool) -> None:
        self.server_pid, self.pg = server_pid, pg

    def read(self) -> dict:
        out = {"machine": total_cpu_s()}
        if self.server_pid:
            out["server"] = proc_cpu_s(self.server_pid)
        if self.pg:
            out["postgres"] = postgres_cpu_s()
        return out

    @staticmethod
    def diff(a: dict, b: dict) -> dict:
        return {k: b[k] - a[k] for k in a}


def pg_counters(url: str) -> dict:
    """Commits, rollbacks and sessions opened on the bench database (read after the server stopped:
    backends flush their statistics when they exit)."""
    import psycopg

    try:
        with psycopg.connect(pg_admin_url(url), autocommit=True) as conn:
            row = conn.execute("SELECT xact_commit, xact_rollback, sessions FROM pg_stat_database "
                               "WHERE datname = current_database()").fetchone()
    except Exception:  # noqa: BLE001 - the figures are extras
        return {}
    return {"pg_commits": row[0], "pg_rollbacks": row[1], "pg_sessions": row[2]}


# --------------------------------------------------------------------------------------------
# Set-up: a server (unless --url), a merchant, a staff login, a store, products and orders.
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(env: dict, *args: str) -> str:
    done = subprocess.run([str(SHOPDESK), *args], env=env, cwd=env["SHOPDESK_VAR_DIR"], capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"shopdesk {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip()


def pg_admin_url(url: str) -> str:
    return re.sub(r"^postgresql\+\w+://", "postgresql://", url)


class ServerUnderTest:
    """One `shopdesk serve` process on a fresh database, with a merchant, API key and staff login."""

    def __init__(self, db: str, pg_url: str, jobs: bool) -> None:
        self.db, self.pg_url, self.jobs = db, pg_url, jobs
        self.tmp = Path(tempfile.mkdtemp(prefix=f"shopdesk-bench-{db}-"))
        self.proc: subprocess.Popen | None = None
        self.pg_db: str | None = None
        self.db_url: str | None = None
        self.pg_stats: dict = {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def database_url(self) -> str:
        if self.db == "sqlite":
            return f"sqlite+aiosqlite:///{self.tmp / 'bench.db'}"
        import psycopg

        self.pg_db = f"shopdesk_bench_{os.getpid()}"
        with psycopg.connect(pg_admin_url(self.pg_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}"')
            conn.execute(f'CREATE DATABASE "{self.pg_db}"')
        path, _, query = self.pg_url.partition("?")  # keep e.g. ?host=/var/run/postgresql (a Unix socket)
        return f"{path.rsplit('/', 1)[0]}/{self.pg_db}" + (f"?{query}" if query else "")

    def start(self) -> dict:
        env = dict(os.environ)
        self.db_url = self.database_url()
        env.update(SHOPDESK_DATABASE_URL=self.db_url, SHOPDESK_VAR_DIR=str(self.tmp),
                   SHOPDESK_SECRET_KEY=secrets.token_hex(16), SHOPDESK_LOG_LEVEL="WARNING",
                   SHOPDESK_BASE_URL=self.url)
        cli(env, "db", "upgrade")
        slug = f"bench{secrets.token_hex(3)}"
        cli(env, "merchants", "create", "--name", f"压测商家 {slug}", "--slug", slug)
        key = cli(env, "api-keys", "create", "--merchant", slug).splitlines()[-1].strip()
        email, password = f"agent@{slug}.test", secrets.token_urlsafe(12)
        cli(env, "staff", "create", "--merchant", slug, "--email", email, "--password", password, "--role", "agent")
        args = [str(SHOPDESK), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if not self.jobs:
            args.append("--no-jobs")
        self.log = open(self.tmp / "server.log", "w")
        self.proc = subprocess.Popen(args, env=env, cwd=self.tmp, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited:\n{(self.tmp / 'server.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("the server did not start within 30 s")
        return {"key": key, "email": email, "password": password, "slug": slug,
                "database_url": env["SHOPDESK_DATABASE_URL"]}

    def stop(self, show_log: bool = False) -> None:
        if show_log and (self.tmp / "server.log").exists():
            tail = (self.tmp / "server.log").read_text(errors="replace").splitlines()[-30:]
            if tail:
                print(f"[{self.db}] last lines of the server log:\n  " + "\n  ".join(tail), file=sys.stderr)
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.pg_db and self.db_url:
            time.sleep(0.5)
            self.pg_stats = pg_counters(self.db_url)
        if self.pg_db:
            import psycopg

            try:
                with psycopg.connect(pg_admin_url(self.pg_url), autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
            except Exception as exc:  # noqa: BLE001 - report, keep going
                print(f"warning: could not drop {self.pg_db}: {exc}", file=sys.stderr)
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def prepare(url: str, creds: dict, n_orders: int, provider: str, seed_concurrency: int = 16,
                  store_only: dict | None = None) -> dict:
    """Log the agent in, create a store, products and settings, and import n_orders shipped orders.

    With store_only (an earlier answer of prepare), reuse its store and login and only import orders.
    """
    host, port = host_port(url)
    key = creds["key"]
    if store_only is None:
        staff_token, store = await _set_up_shop(host, port, creds, provider)
    else:
        staff_token, store = store_only["staff_token"], store_only["store"]
    # The server uses the real clock: signed yesterday is inside the 7-day no-reason window.
    now = datetime.now(timezone.utc)
    placed, signed = now - timedelta(days=3), now - timedelta(days=1)
    run = secrets.token_hex(3)
    orders: list[dict] = []
    todo = iter(range(n_orders))

    async def seeder() -> None:
        c = Conn(host, port)
        for i in todo:
            ext = f"{run}-{i}"
            body = {
                "store": store, "order_no": f"B{run}{i:06d}",
                "customer": {"external_id": ext, "name": "张三", "phone": f"138{i % 100000000:08d}"},
                "placed_at": iso(placed), "paid_at": iso(placed + timedelta(minutes=1)),
                "lines": [{"line_no": "1", "sku": "A", "name": "蓝牙耳机", "quantity": 2, "unit_price_fen": 10000},
                          {"line_no": "2", "sku": "B", "name": "耳机保护套", "quantity": 1, "unit_price_fen": 5000}],
                "discounts": [{"kind": "coupon", "label": "满200减30", "amount_fen": 3000}],
                "shipping_fee_fen": 1000,
                "payments": [{"method": "wechatpay", "amount_fen": 20000, "trade_no": f"wx{run}{i:06d}"},
                             {"method": "balance", "amount_fen": 3000, "trade_no": f"bal{run}{i:06d}"}],
                "shipping_address": {"name": "张三", "phone": "13800000000", "province": "北京", "city": "北京",
                                     "district": "朝阳区", "detail": "建国路 1 号"},
                "shipments": [{"carrier": "yuantong", "tracking_no": f"YT{run}{i:06d}", "line_nos": ["1", "2"],
                               "shipped_at": iso(placed + timedelta(days=1)), "signed_at": iso(signed)}],
            }
            order = expect(await c.request("POST", "/api/v1/orders", body, key), 201, "order")
            tok = expect(await c.request("POST", f"/api/v1/customers/{ext}/token", {}, key), 200, "shopper token")
            orders.append({"order_id": order["id"], "shopper_token": tok["token"],
                           "lines": [(ln["id"], ln["quantity"]) for ln in order["lines"]]})
        c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(seeder() for _ in range(seed_concurrency)))
    return {"staff_token": staff_token, "store": store, "orders": orders, "seed_s": time.perf_counter() - t0}


async def _set_up_shop(host: str, port: int, creds: dict, provider: str) -> tuple[str, str]:
    """Log the agent in; create a store, its products, the return address and (sandbox) payment settings."""
    conn = Conn(host, port)
    key = creds["key"]
    login = expect(await conn.request("POST", "/api/v1/auth/token",
                                      {"email": creds["email"], "password": creds["password"]}), 200, "login")
    staff_token = login["token"]
    store = f"b{secrets.token_hex(3)}"
    expect(await conn.request("POST", "/api/v1/stores", {"code": store, "name": "压测旗舰店", "platform": "own_site"},
                              key), 201, "store")
    for sku, name, price in (("A", "蓝牙耳机", 10000), ("B", "耳机保护套", 5000)):
        expect(await conn.request("POST", "/api/v1/products",
                                  {"sku": sku, "name": name, "category": "数码", "price_fen": price}, key),
               201, "product")
    expect(await conn.request("PUT", "/api/v1/settings/aftersales", {"return_address": RETURN_ADDRESS}, key),
           200, "settings")
    if provider == "sandbox":
        expect(await conn.request("PUT", "/api/v1/settings/payments",
                                  {"providers": {"wechatpay": "sandbox", "balance": "sandbox"}}, key),
               200, "payment settings")
    conn.close()
    return staff_token, store


async def wait_idle(url: str, limit_s: float = 60.0) -> None:
    """Wait until the server answers /healthz quickly again (a backlog of given-up requests has drained)."""
    host, port = host_port(url)
    conn = Conn(host, port)
    deadline = time.perf_counter() + limit_s
    quick = 0
    while time.perf_counter() < deadline and quick < 5:
        t = time.perf_counter()
        await conn.request("GET", "/healthz")
        quick = quick + 1 if time.perf_counter() - t < 0.02 else 0
        await asyncio.sleep(0.1)
    conn.close()


async def count_completed(url: str, token: str) -> int:
    """Count the merchant's completed cases (the check that every flow really finished)."""
    host, port = host_port(url)
    conn = Conn(host, port)
    total, cursor = 0, None
    while True:
        path = "/api/v1/aftersales?group=completed&limit=100" + (f"&cursor={cursor}" if cursor else "")
        page = expect(await conn.request("GET", path, None, token), 200, "list")
        total += len(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    conn.close()
    return total


# --------------------------------------------------------------------------------------------
# One database: set up, warm up, measure, report.
# --------------------------------------------------------------------------------------------
def bench_one(label: str, url: str, creds: dict, args, server_pid: int | None, is_pg: bool) -> dict:
    t_prep = time.perf_counter()
    rate_orders = sum(int(r * args.rate_seconds) for r in args.rates)
    first = asyncio.run(prepare(url, creds, args.warmup + rate_orders, args.provider))
    orders = first["orders"]
    warm_orders, rate_list = orders[:args.warmup], orders[args.warmup:]
    cfg = FlowConfig(url, first["staff_token"], provider=args.provider, poll_s=args.poll)
    meter = CpuMeter(server_pid, is_pg)
    result: dict[str, Any] = {"label": label, "url": url, "concurrency": args.concurrency,
                              "client_procs": args.client_procs, "provider": args.provider}

    # Warm-up (imports, statement caches, the connection pool), which also sizes the measured phase.
    estimate = float("nan")
    result["warmup_completed"] = 0
    if warm_orders:
        w = asyncio.run(run_flows(cfg, warm_orders, args.concurrency))
        if w["errors"]:
            print(f"[{label}] warm-up errors: {w['errors'][:3]}", flush=True)
        result["warmup_completed"] = len(w["lat"]["flow"])
        estimate = len(w["lat"]["flow"]) / (w["t1"] - w["t0"])
    if args.flows:
        n_flows, max_seconds = args.flows, None
    else:
        # Enough orders for --flow-seconds at the warm-up's pace with room to spare; the phase is cut at that time.
        n_flows = int(max(100, min(20_000, (estimate if estimate == estimate else 50) * args.flow_seconds * 1.6)))
        max_seconds = args.flow_seconds
    more = asyncio.run(prepare(url, creds, n_flows, args.provider, store_only=first))
    flow_orders = more["orders"]
    seed_s = first["seed_s"] + more["seed_s"]
    seeded = len(orders) + len(flow_orders)
    print(f"[{label}] seeded {seeded} orders in {seed_s:.1f} s ({seeded / seed_s:.0f} orders/s, 2 requests each); "
          f"warm-up pace {estimate:.1f} flows/s", flush=True)

    # 1. The ceiling of this stack with this client.
    c0 = meter.read()
    hz = run_split("healthz", args.client_procs,
                   lambda i, s: (url, max(1, args.concurrency // args.client_procs), args.healthz_seconds, s))
    c1 = meter.read()
    hz_wall = hz["t1"] - hz["t0"]
    result["healthz"] = {"req_s": len(hz["lat"]) / hz_wall, **summary(hz["lat"]), "errors": len(hz["errors"]),
                         "cpu_s": CpuMeter.diff(c0, c1), "wall_s": hz_wall, "client_cpu_s": hz["client_cpu_s"]}
    print(f"[{label}] healthz ceiling: {result['healthz']['req_s']:,.0f} req/s", flush=True)

    # 2. Complete flows, closed loop.
    procs = args.client_procs
    slices = [flow_orders[i::procs] for i in range(procs)]
    c0 = meter.read()
    fl = run_split("flows", procs,
                   lambda i, s: (cfg, slices[i], max(1, args.concurrency // procs), s, max_seconds))
    c1 = meter.read()
    wall = fl["t1"] - fl["t0"]
    done = len(fl["lat"]["flow"])
    requests = fl["requests"]
    result["flows"] = {"completed": done, "wall_s": wall, "flows_s": done / wall, "req_s": requests / wall,
                       "errors": len(fl["errors"]), "error_samples": fl["errors"][:5],
                       "steps": {s: summary(fl["lat"][s]) for s in STEPS if fl["lat"][s]},
                       "cpu_s": CpuMeter.diff(c0, c1), "client_cpu_s": fl["client_cpu_s"]}
    print(f"[{label}] flows: {done} in {wall:.1f} s = {done / wall:.1f} flows/s", flush=True)

    # 3. Case creation alone at fixed rates (open loop), in this process; a pause between rates
    #    lets a backlog of the previous one drain.
    result["fixed_rates"] = []
    for rate in args.rates:
        batch, rate_list = rate_list[:int(rate * args.rate_seconds)], rate_list[int(rate * args.rate_seconds):]
        if not batch:
            continue
        c0 = meter.read()
        fr = asyncio.run(run_fixed_rate(url, batch, rate, args.rate_drain_seconds))
        c1 = meter.read()
        cpu = CpuMeter.diff(c0, c1)
        row = {"rate": rate, "sent": fr["sent"], "ok": len(fr["lat"]),
               "unanswered": fr["unanswered"], "drain_s": args.rate_drain_seconds, "offered_s": fr["offered_s"],
               **summary(fr["lat"] + [float("inf")] * fr["unanswered"]),
               "send_lag_p99_ms": pct(fr["lag"], 99), "errors": len(fr["errors"]),
               "error_samples": fr["errors"][:5], "connections": fr["connections"],
               "cpu_s": cpu, "wall_s": fr["elapsed_s"]}
        if "server" in cpu:
            row["server_ms_per_create"] = cpu["server"] * 1000 / max(fr["sent"], 1)
        result["fixed_rates"].append(row)
        print(f"[{label}] fixed rate {rate:g}/s: p99 {f1(row['p99_ms'])} ms", flush=True)
        asyncio.run(wait_idle(url))
    if result["fixed_rates"]:
        # The figure the target is about: 100/s if it was run, else the last rate.
        result["fixed_rate"] = next((r for r in result["fixed_rates"] if r["rate"] == TARGET_RATE),
                                    result["fixed_rates"][-1])

    result["completed_cases"] = asyncio.run(count_completed(url, cfg.staff_token))
    result["bench_s"] = time.perf_counter() - t_prep
    return result


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def f1(x: float) -> str:
    if x == float("inf"):
        return "unanswered"
    return "—" if x != x else f"{x:,.1f}"


def report(r: dict) -> None:
    label = r["label"]
    hz, fl = r["healthz"], r["flows"]
    print()
    print(f"=== {label}: {r['url']}  (provider {r['provider']}, concurrency {r['concurrency']}, "
          f"client processes {r['client_procs']}) ===")
    print(f"ceiling  GET /healthz       {hz['req_s']:>9,.0f} req/s   p50 {f1(hz['p50_ms'])} ms  "
          f"p99 {f1(hz['p99_ms'])} ms  errors {hz['errors']}")
    print(f"flows    {fl['completed']} complete in {fl['wall_s']:.1f} s = {fl['flows_s']:.1f} flows/s "
          f"({fl['req_s']:,.0f} req/s = {fl['req_s'] / hz['req_s']:.1%} of the healthz ceiling), "
          f"errors {fl['errors']}")
    for e in fl["error_samples"]:
        print(f"         error: {e}")
    print(f"  {'step':<16}{'n':>7}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for step, s in fl["steps"].items():
        print(f"  {step:<16}{s['n']:>7}{f1(s['p50_ms']):>10}{f1(s['p99_ms']):>10}{f1(s['max_ms']):>10}")
    for fr in r.get("fixed_rates", []):
        print(f"fixed    POST /aftersales at {fr['rate']:.0f}/s (open loop, {fr['sent']} sent, "
              f"{fr['offered_s']:.1f}/s offered, {fr['ok']} answered 201, errors {fr['errors']}, "
              f"{fr['unanswered']} unanswered {fr['drain_s']:.0f} s after the last, {fr['connections']} connections)")
        print(f"         p50 {f1(fr['p50_ms'])} ms   p99 {f1(fr['p99_ms'])} ms   max {f1(fr['max_ms'])} ms   "
              f"(client send lag p99 {f1(fr['send_lag_p99_ms'])} ms)")
        if "server_ms_per_create" in fr:
            print(f"         server CPU {fr['server_ms_per_create']:.1f} ms per case created "
                  f"(one core allows ≈ {1000 / fr['server_ms_per_create']:.0f} creations/s)")
        for e in fr["error_samples"]:
            print(f"         error: {e}")
    cpu = fl["cpu_s"]
    n = max(fl["completed"], 1)
    requests = fl["req_s"] * fl["wall_s"]
    parts = [f"machine busy {cpu['machine'] / fl['wall_s']:.2f} of {os.cpu_count()} cores"]
    other = cpu["machine"] - fl["client_cpu_s"]
    if "server" in cpu:
        other -= cpu["server"]
        parts.append(f"server process {cpu['server'] / fl['wall_s']:.0%} of a core = {cpu['server'] * 1000 / n:.1f} ms "
                     f"per flow ({cpu['server'] * 1000 / max(requests, 1):.2f} ms per request)")
    if "postgres" in cpu:
        other -= cpu["postgres"]
        parts.append(f"postgres {cpu['postgres'] * 1000 / n:.1f} ms per flow")
    parts.append(f"client {fl['client_cpu_s'] * 1000 / n:.1f} ms per flow")
    parts.append(f"other processes {other / fl['wall_s']:.2f} cores")
    print("cpu      " + ";\n         ".join(parts))
    if other / fl["wall_s"] > 0.3:
        print(f"WARNING  other processes kept {other / fl['wall_s']:.1f} of the {os.cpu_count()} cores busy during the "
              f"flows: these figures understate the server; run again on a quiet machine")
    if "server" in hz["cpu_s"]:
        per = hz["cpu_s"]["server"] * 1e6 / max(hz["req_s"] * hz["wall_s"], 1)
        hz_other = hz["cpu_s"]["machine"] - hz["cpu_s"]["server"] - hz["client_cpu_s"] - hz["cpu_s"].get("postgres", 0)
        print(f"         during healthz: server {per:.0f} µs per request, "
              f"other processes {hz_other / hz['wall_s']:.2f} cores")
    expected = r.get("warmup_completed", 0) + fl["completed"]
    print(f"check    {r.get('completed_cases', '?')} cases completed on the server, "
          f"{expected} flows finished by the client (warm-up + measured)"
          + ("" if r.get("completed_cases") == expected else "  ← MISMATCH"))
    if r.get("pg_stats"):
        ps = r["pg_stats"]
        print(f"pg       whole run on the bench database: {ps['pg_commits']:,} commits, {ps['pg_rollbacks']:,} rollbacks, "
              f"{ps['pg_sessions']:,} sessions opened")


def verdict(results: list[dict]) -> None:
    print()
    print("=== summary ===")
    print(f"{'database':<10}{'flows/s':>9}{'flow p99':>10}{'create p99':>12}{'@rate p99':>11}{'healthz/s':>11}"
          f"{'flow req/s':>12}{'÷healthz':>9}{'÷10.2k':>8}")
    for r in results:
        fl, hz = r["flows"], r["healthz"]
        fr = r.get("fixed_rate", {})
        print(f"{r['label']:<10}{fl['flows_s']:>9.1f}{f1(fl['steps']['flow']['p99_ms']):>10}"
              f"{f1(fl['steps']['create']['p99_ms']):>12}{f1(fr.get('p99_ms', float('nan'))):>11}"
              f"{hz['req_s']:>11,.0f}{fl['req_s']:>12,.0f}{fl['req_s'] / hz['req_s']:>9.1%}"
              f"{fl['req_s'] / CEILING_FASTAPI_JSON:>8.1%}")
    for r in results:
        fl = r["flows"]
        fr = r.get("fixed_rate")
        goals = []
        if r["label"].startswith("postgres") and r["provider"] == "manual":
            ok = fl["flows_s"] >= TARGET_FLOWS_PER_S
            goals.append(f"≥ {TARGET_FLOWS_PER_S:.0f} flows/s: {'MET' if ok else 'NOT MET'} ({fl['flows_s']:.1f})")
        if fr and fr["rate"] == TARGET_RATE:
            ok = fr["p99_ms"] < TARGET_CREATE_P99_MS and fr["errors"] == 0
            goals.append(f"create p99 < {TARGET_CREATE_P99_MS:.0f} ms at 100/s: {'MET' if ok else 'NOT MET'} "
                         f"({f1(fr['p99_ms'])} ms)")
        if goals:
            print(f"target   {r['label']}: " + "; ".join(goals))


# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", help="measure a server that is already running (no server is started)")
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both",
                   help="databases to start servers on; with --url, the label of the server's database")
    p.add_argument("--pg-url", default=os.environ.get("SHOPDESK_BENCH_PG_URL", DEFAULT_PG),
                   help="PostgreSQL server; a database shopdesk_bench_<pid> is created on it and dropped")
    p.add_argument("--flows", type=int, default=0,
                   help="complete flows to measure (0: as many as fit in --flow-seconds)")
    p.add_argument("--flow-seconds", type=float, default=12.0,
                   help="without --flows: length of the measured flow phase (orders are seeded to cover it)")
    p.add_argument("--warmup", type=int, default=32, help="flows run before measuring")
    p.add_argument("--concurrency", type=int, default=16, help="flows in flight (and healthz connections)")
    p.add_argument("--client-procs", type=int, default=1, help="client processes for the flows and healthz phases")
    p.add_argument("--rate", default="100",
                   help="case creations per second in the fixed-rate phase; several, comma-separated "
                        "(e.g. 50,75,100), run one after the other")
    p.add_argument("--rate-seconds", type=float, default=10.0, help="length of the fixed-rate phase (0: skip)")
    p.add_argument("--rate-drain-seconds", type=float, default=8.0,
                   help="how long to wait for answers after the last fixed-rate request; later ones count as "
                        "unanswered (slower than any figure)")
    p.add_argument("--healthz-seconds", type=float, default=3.0, help="length of the healthz ceiling phase")
    p.add_argument("--provider", choices=("manual", "sandbox"), default="manual",
                   help="manual: staff confirms each refund (server --no-jobs); sandbox: the in-process job "
                        "runner refunds through the sandbox PSP and the bench polls the case until completed")
    p.add_argument("--poll", type=float, default=0.25,
                   help="sandbox: seconds between GETs of the case while waiting for the refunds to settle")
    p.add_argument("--server-pid", type=int, help="with --url: the server's process id, to report its CPU")
    p.add_argument("--key", help="with --url: the merchant API key")
    p.add_argument("--staff-email", help="with --url: a staff login of that merchant")
    p.add_argument("--staff-password", help="with --url: its password")
    p.add_argument("--json", help="also write the raw figures to this file")
    args = p.parse_args(argv)
    try:
        args.rates = [float(x) for x in str(args.rate).split(",") if x.strip()]
    except ValueError:
        p.error("--rate: numbers separated by commas")
    if any(r <= 0 for r in args.rates):
        p.error("--rate: positive numbers")
    return args


def external_creds(args) -> dict:
    """Credentials for --url: given on the command line, or created with the CLI on SHOPDESK_DATABASE_URL."""
    if args.key and args.staff_email and args.staff_password:
        return {"key": args.key, "email": args.staff_email, "password": args.staff_password}
    if not os.environ.get("SHOPDESK_DATABASE_URL"):
        raise SystemExit("--url needs --key, --staff-email and --staff-password, or SHOPDESK_DATABASE_URL set to "
                         "the server's database so that they can be created with the shopdesk CLI")
    env = dict(os.environ)
    scratch = None
    if not env.get("SHOPDESK_VAR_DIR"):
        scratch = env["SHOPDESK_VAR_DIR"] = tempfile.mkdtemp(prefix="shopdesk-bench-cli-")
    try:
        slug = f"bench{secrets.token_hex(3)}"
        cli(env, "merchants", "create", "--name", f"压测商家 {slug}", "--slug", slug)
        key = cli(env, "api-keys", "create", "--merchant", slug).splitlines()[-1].strip()
        email, password = f"agent@{slug}.test", secrets.token_urlsafe(12)
        cli(env, "staff", "create", "--merchant", slug, "--email", email, "--password", password, "--role", "agent")
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return {"key": key, "email": email, "password": password}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    started = time.perf_counter()
    print(f"aftersales_flow bench — {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}", flush=True)
    results = []
    if args.url:
        creds = external_creds(args)
        label = args.db if args.db != "both" else "external"
        results.append(bench_one(label, args.url.rstrip("/"), creds, args, args.server_pid, False))
    else:
        for db in (("sqlite", "postgres") if args.db == "both" else (args.db,)):
            server = ServerUnderTest(db, args.pg_url, jobs=args.provider == "sandbox")
            failed = True
            try:
                creds = server.start()
                print(f"[{db}] server pid {server.proc.pid} on {server.url}, {creds['database_url']}", flush=True)
                results.append(bench_one(db, server.url, creds, args, server.proc.pid, db == "postgres"))
                r = results[-1]
                failed = bool(r["flows"]["errors"] or any(f["errors"] for f in r.get("fixed_rates", [])))
            finally:
                server.stop(show_log=failed)
            if server.pg_stats and results and results[-1]["label"] == db:
                results[-1]["pg_stats"] = server.pg_stats
    for r in results:
        report(r)
    verdict(results)
    print(f"\n(bench ran {time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
