#!/usr/bin/env python
"""Count the SQL statements and the server CPU of each step of a return_refund flow, in-process.

The app runs in this process behind `httpx.ASGITransport`, so the CPU time of a step is the
server's work plus a little of httpx's. A `before_cursor_execute` listener counts the statements
sent through SQLAlchemy per step, and wrappers count those the PostgreSQL fast path sends through
psycopg (`fast.Step.rows` and `fast.Step.write`; BEGIN and COMMIT travel with them in pipeline
mode and are not counted). Set SHOPDESK_FAST_PATH=0 to profile the `do_*` path. This is the tool for finding where a flow's time goes; `aftersales_flow.py` is the
one that measures throughput over real sockets.

    .venv/bin/python bench/flow_profile.py                 # PostgreSQL (a fresh database)
    .venv/bin/python bench/flow_profile.py --db sqlite --flows 200
    .venv/bin/python bench/flow_profile.py --sql           # also print each statement of one flow
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aftersales_flow as bench  # noqa: E402


class AsgiConn:
    """Stands in for the bench's socket client: same request(), through the app in this process."""

    client: Any = None

    def __init__(self, host: str = "", port: int = 0) -> None:
        pass

    async def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        r = await self.client.request(method, path, json=body, headers=headers)
        ctype = r.headers.get("content-type", "")
        return r.status_code, (r.json() if r.content and "json" in ctype else r.content)

    def close(self) -> None:
        pass


async def profile(args) -> None:
    import httpx
    from sqlalchemy import event

    from shopdesk.core.db import get_engine
    from shopdesk.main import create_app

    app = create_app()
    engine = get_engine()
    current = {"step": "setup"}
    statements: dict[str, int] = defaultdict(int)
    shown: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _count(conn, cursor, statement, params, context, executemany) -> None:  # noqa: ANN001
        statements[current["step"]] += 1
        if args.sql and current["step"] != "setup" and current.get("show"):
            shown.append(f"[{current['step']}] {' '.join(statement.split())[:160]}")

    # The PostgreSQL fast path (decision 0011) sends its statements through psycopg itself.
    from shopdesk.aftersales import fast

    real_rows, real_execute = fast.Step.rows, fast.Step.write

    async def rows(self, sql, params):  # noqa: ANN001
        _count(None, None, sql, params, None, False)
        return await real_rows(self, sql, params)

    async def write(self, *cases, **kwargs):  # noqa: ANN001
        _count(None, None, "(write_sql: one data-modifying CTE, then COMMIT)", None, None, False)
        return await real_execute(self, *cases, **kwargs)

    fast.Step.rows, fast.Step.write = rows, write
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://asgi") as client:
        AsgiConn.client = client
        bench.Conn = AsgiConn  # prepare() and one_flow() open their connections through this
        creds = args.creds
        prep = await bench.prepare("http://asgi:80", creds, args.flows + args.warmup, "manual", seed_concurrency=1)
        cfg = bench.FlowConfig(url="http://asgi:80", staff_token=prep["staff_token"])
        orders = prep["orders"]
        conn = AsgiConn()
        lat: dict[str, list[float]] = defaultdict(list)
        for order in orders[:args.warmup]:
            await bench.one_flow(conn, cfg, order, lat)
        statements.clear()
        cpu: dict[str, float] = defaultdict(float)
        real_request = AsgiConn.request

        async def timed(self, method, path, body=None, token=None):  # noqa: ANN001
            step = _step(method, path)
            current["step"] = step
            t = time.process_time()
            try:
                return await real_request(self, method, path, body, token)
            finally:
                cpu[step] += time.process_time() - t
                current["step"] = "between"

        AsgiConn.request = timed
        start = time.process_time()
        for i, order in enumerate(orders[args.warmup:]):
            current["show"] = i == 0
            await bench.one_flow(conn, cfg, order, lat)
        total = time.process_time() - start
    n = args.flows
    print(f"{n} flows on {args.db}, in-process (httpx.ASGITransport), after {args.warmup} warm-up flows")
    print(f"{'step':<16}{'statements':>12}{'CPU ms':>10}")
    for step in ("create", "approve", "ship-return", "receive", "refund-confirm"):
        per = 2 if step == "refund-confirm" else 1
        print(f"{step:<16}{statements[step] / n / per:>12.1f}{cpu[step] * 1000 / n / per:>10.2f}"
              + ("   (each of 2)" if per == 2 else ""))
    flow_stmts = sum(v for k, v in statements.items() if k not in ("setup", "between"))
    print(f"{'flow':<16}{flow_stmts / n:>12.1f}{total * 1000 / n:>10.2f}")
    for line in shown:
        print(line)


def _step(method: str, path: str) -> str:
    if path.startswith("/api/v1/refunds/"):
        return "refund-confirm"
    if method == "POST" and path == "/api/v1/aftersales":
        return "create"
    return path.rsplit("/", 1)[-1] if path.startswith("/api/v1/aftersales/") else "other"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=("sqlite", "postgres"), default="postgres")
    p.add_argument("--pg-url", default=bench.DEFAULT_PG)
    p.add_argument("--flows", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--sql", action="store_true", help="print the statements of the first measured flow")
    args = p.parse_args()
    server = bench.ServerUnderTest(args.db, args.pg_url, jobs=False)
    tmp = Path(tempfile.mkdtemp(prefix="shopdesk-profile-"))
    try:
        env = dict(os.environ)
        url = server.database_url()
        env.update(SHOPDESK_DATABASE_URL=url, SHOPDESK_VAR_DIR=str(tmp), SHOPDESK_SECRET_KEY=secrets.token_hex(16),
                   SHOPDESK_LOG_LEVEL="WARNING", SHOPDESK_RUN_JOBS_IN_PROCESS="false")
        bench.cli(env, "db", "upgrade")
        slug = f"prof{secrets.token_hex(3)}"
        bench.cli(env, "merchants", "create", "--name", f"剖析 {slug}", "--slug", slug)
        key = bench.cli(env, "api-keys", "create", "--merchant", slug).splitlines()[-1].strip()
        email, password = f"agent@{slug}.test", secrets.token_urlsafe(12)
        bench.cli(env, "staff", "create", "--merchant", slug, "--email", email, "--password", password,
                  "--role", "agent")
        os.environ.update(env)
        args.creds = {"key": key, "email": email, "password": password}
        asyncio.run(profile(args))
    finally:
        server.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
