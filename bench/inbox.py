#!/usr/bin/env python
"""Measure the unified inbox at scale: first page, a saved view and the counts, on PostgreSQL.

The target of issue 4: with 100,000 open tickets and 1,000,000 messages, each answers in < 100 ms p99.

The bench starts `shopdesk serve` (one process, jobs off) on a fresh database `shopdesk_bench_<pid>`
(dropped at the end), creates a merchant and an agent with the command line, and fills the
database in SQL with generate_series:

- the merchant: `--open` open tickets (default 100,000: new, open and pending, some of them the
  agent's, some unassigned) and `--solved` solved or closed ones (default 50,000);
- `--messages` replies spread over all of them (default 1,000,000);
- another merchant with 50,000 tickets, so that every query has to pick its merchant's rows;
- a few hundred waiting chats, after-sales cases and revisit tasks are not seeded: the inbox's
  other sources are empty here, which is their best case — the figure is the tickets' part.

Then, over HTTP with the keep-alive client of aftersales_flow.py, sequentially (one request in
flight, so a figure is a request's own latency), `--requests` times each:

    GET /api/v1/inbox                          the first page (25 items, every source)
    GET /api/v1/inbox?view=<id>                a saved view: the agent's high/urgent tickets
    GET /api/v1/inbox/counts                   the counters

and prints p50/p99/max per request and the server's CPU per request.

    .venv/bin/python bench/inbox.py
    .venv/bin/python bench/inbox.py --open 20000 --messages 200000 --requests 200     # quicker
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aftersales_flow as flow  # noqa: E402

TARGET_P99_MS = 100.0


def seed(db_url: str, slug: str, agent_email: str, *, open_n: int, solved_n: int, messages: int) -> dict:
    """Fill the database in SQL; return the ids the requests need."""
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(flow.pg_admin_url(db_url), autocommit=True) as conn:
        merchant = conn.execute("SELECT id FROM merchant WHERE slug = %s", (slug,)).fetchone()[0]
        agent = conn.execute("SELECT id FROM staff WHERE email = %s", (agent_email,)).fetchone()[0]
        other = "f" * 32
        conn.execute("INSERT INTO merchant (id, slug, name, time_zone, settings, created_at) "
                     "VALUES (%s, 'other-bench', '另一个商家', 'Asia/Shanghai', '{}', now())", (other,))
        colleagues = [f"{i:032x}" for i in range(1, 20)]
        staff_pool = [agent, *colleagues]
        total = open_n + solved_n

        def tickets(owner: str, prefix: str, count: int, open_count: int) -> None:
            conn.execute(f"""
                INSERT INTO ticket (id, merchant_id, number, version, subject, description, channel, category,
                    priority, status, status_group, requester_name, team, tags, custom_fields, watchers, urge_count,
                    sla_emitted, sla_breaches, applied_rules, rating_comment, created_at, updated_at,
                    status_changed_at, assignee_id, requester_email)
                SELECT md5('{prefix}' || g), %(owner)s, 'TK20261101-' || lpad(g::text, 7, '0'), 1,
                       '商品问题 ' || g, '耳机左耳没有声音，已经试过重新配对。', 'api',
                       (ARRAY['物流','质量','发票','售后'])[1 + g %% 4],
                       (ARRAY['low','normal','high','urgent'])[1 + (g / 7) %% 4],
                       CASE WHEN g <= %(open)s THEN (ARRAY['new','open','pending'])[1 + g %% 3]
                            ELSE (ARRAY['solved','closed'])[1 + g %% 2] END,
                       CASE WHEN g <= %(open)s THEN (ARRAY['new','open','pending'])[1 + g %% 3]
                            ELSE (ARRAY['solved','closed'])[1 + g %% 2] END,
                       '顾客' || g, '', '["耳机"]'::jsonb, '{{}}'::jsonb, '[]'::jsonb, g %% 5,
                       '[]'::jsonb, '[]'::jsonb, '[]'::jsonb, '',
                       now() - make_interval(mins => g), now() - make_interval(secs => g * 7),
                       now() - make_interval(secs => g * 7),
                       CASE WHEN g %% 5 = 0 THEN NULL ELSE (%(pool)s::text[])[1 + (g / 5) %% %(pool_n)s] END,
                       'buyer' || g || '@example.com'
                FROM generate_series(1, %(count)s) AS g""",
                         {"owner": owner, "open": open_count, "count": count, "pool": staff_pool,
                          "pool_n": len(staff_pool)})

        tickets(merchant, "t", total, open_n)
        tickets(other, "o", 50_000, 40_000)
        conn.execute(f"""
            INSERT INTO ticket_reply (id, merchant_id, ticket_id, author_type, author_id, author_name, body, public,
                channel, attachment_ids, created_at)
            SELECT md5('r' || g), %(owner)s, md5('t' || (1 + g %% {total})),
                   (ARRAY['shopper','staff'])[1 + g %% 2], NULL, '', '您好，请问我的问题处理得怎么样了？第 ' || g || ' 条',
                   g %% 10 <> 0, 'api', '[]'::jsonb, now() - make_interval(secs => g)
            FROM generate_series(1, %(n)s) AS g""", {"owner": merchant, "n": messages})
        conn.execute("VACUUM ANALYZE ticket")
        conn.execute("VACUUM ANALYZE ticket_reply")
        counts = conn.execute("SELECT (SELECT count(*) FROM ticket WHERE merchant_id = %s AND status_group IN "
                              "('new','open','pending')), (SELECT count(*) FROM ticket_reply)", (merchant,)).fetchone()
    return {"merchant": merchant, "agent": agent, "open": counts[0], "messages": counts[1],
            "seconds": time.perf_counter() - started}


async def measure(url: str, token: str, path: str, n: int, server_pid: int) -> dict:
    host, port = flow.host_port(url)
    conn = flow.Conn(host, port)
    for _ in range(10):  # warm: the first requests pay for imports, plans and caches
        flow.expect(await conn.request("GET", path, token=token), 200, path)
    cpu0 = flow.proc_cpu_s(server_pid)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        body = flow.expect(await conn.request("GET", path, token=token), 200, path)
        times.append((time.perf_counter() - t0) * 1000)
    cpu1 = flow.proc_cpu_s(server_pid)
    conn.close()
    out = flow.summary(times)
    out["body"] = body
    if cpu0 is not None and cpu1 is not None:
        out["cpu_ms"] = (cpu1 - cpu0) * 1000 / n
    return out


def explain(db_url: str, data: dict) -> None:
    """Print the plans of the inbox's ticket queries, as the server sends them (literal groups)."""
    import psycopg

    groups = "('new', 'open', 'pending')"
    queries = {
        "first page": f"SELECT * FROM ticket WHERE merchant_id = %(m)s AND merged_into_id IS NULL AND status_group IN "
                      f"{groups} ORDER BY updated_at DESC, id DESC LIMIT 26",
        "saved view": f"SELECT * FROM ticket WHERE merchant_id = %(m)s AND merged_into_id IS NULL AND status_group IN "
                      f"{groups} AND assignee_id = %(a)s AND priority IN ('high', 'urgent') "
                      "ORDER BY updated_at DESC, id DESC LIMIT 26",
        "counts": f"SELECT count(*), count(*) FILTER (WHERE status_group = 'new'), count(*) FILTER (WHERE "
                  f"assignee_id = %(a)s) FROM ticket WHERE merchant_id = %(m)s AND merged_into_id IS NULL AND "
                  f"status_group IN {groups}",
    }
    with psycopg.connect(flow.pg_admin_url(db_url)) as conn:
        for name, sql in queries.items():
            rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, {"m": data["merchant"], "a": data["agent"]}).fetchall()
            print(f"--- {name}\n" + "\n".join(r[0] for r in rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg-url", default=os.environ.get("SHOPDESK_BENCH_PG_URL", flow.DEFAULT_PG))
    p.add_argument("--open", type=int, default=100_000, help="open tickets of the measured merchant")
    p.add_argument("--solved", type=int, default=50_000, help="solved and closed tickets of the merchant")
    p.add_argument("--messages", type=int, default=1_000_000, help="replies over the merchant's tickets")
    p.add_argument("--requests", type=int, default=500, help="requests per measured route")
    p.add_argument("--explain", action="store_true", help="also print PostgreSQL's plans of the inbox queries")
    args = p.parse_args()

    print(f"inbox bench — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs")
    server = flow.ServerUnderTest("postgres", args.pg_url, jobs=False)
    try:
        creds = server.start()
        data = seed(creds["database_url"], creds["slug"], creds["email"], open_n=args.open, solved_n=args.solved,
                    messages=args.messages)
        print(f"seeded {data['open']:,} open tickets (+{args.solved:,} solved, +50,000 of another merchant) and "
              f"{data['messages']:,} messages in {data['seconds']:.1f} s")

        async def run() -> list[tuple[str, dict]]:
            host, port = flow.host_port(server.url)
            conn = flow.Conn(host, port)
            token = flow.expect(await conn.request("POST", "/api/v1/auth/token", {
                "email": creds["email"], "password": creds["password"]}), 200, "login")["token"]
            view = flow.expect(await conn.request("POST", "/api/v1/inbox/views", {
                "name": "我的加急", "filters": {"assignee": "me", "priority": ["high", "urgent"], "kinds": ["ticket"]}},
                token=token), 201, "save view")
            conn.close()
            results = []
            for name, path in (("first page", "/api/v1/inbox"), ("saved view", f"/api/v1/inbox?view={view['id']}"),
                               ("counts", "/api/v1/inbox/counts")):
                results.append((name, await measure(server.url, token, path, args.requests, server.proc.pid)))
            return results

        results = asyncio.run(run())
        if args.explain:
            explain(creds["database_url"], data)
    finally:
        server.stop()
    print(f"{'request':<12} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'server CPU ms':>14}   target p99 < 100 ms")
    for name, r in results:
        verdict = "MET" if r["p99_ms"] < TARGET_P99_MS else "NOT MET"
        cpu = f"{r['cpu_ms']:.1f}" if "cpu_ms" in r else "—"
        print(f"{name:<12} {r['n']:>5} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} {cpu:>14}   {verdict}")
    counts = results[2][1]["body"]
    print(f"counts: {counts}")


if __name__ == "__main__":
    main()
