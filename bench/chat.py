#!/usr/bin/env python
"""Measure the live chat of one ShopDesk server process, and the bare WebSocket ceiling of its stack.

Three parts, in one run, with the same client code (websockets' asyncio client, no compression,
spread over several client processes so that none holds more than 5,000 sockets):

1. **connections held**: N widget sockets (`POST /api/v1/widget/sessions` then `GET /ws?token=…&v=1`,
   one session each), every `hello` awaited; the server's RSS before and after (from /proc), the
   memory per connection; then one broadcast (`POST /api/v1/chat/announcements`, staff token of a
   supervisor) and how many sockets got the `announcement` frame, how fast (p50/p99/max).
2. **stored-and-delivered messages**: P shopper sockets, ceil(P/10) agents online with capacity 10
   (every shopper's conversation is assigned); shoppers send `message.send`; latency from the
   send to the `message.ack` and to the `message.created` at the assigned agent's socket; a closed
   loop (the most messages/s, every one acked and delivered exactly once) and open-loop phases at
   fixed rates (latency from the planned send time).
3. **ceiling**: a bare Starlette app on the same stack (uvicorn, ws="websockets-sansio", uvloop,
   httptools) started by the bench in its own process: the same N sockets held and broadcast to,
   echo round trips with the same clients at the same concurrency and rates, and a relay (ack to the
   sender, the message to a paired "agent" socket and back to the sender: the chat's frames without
   the database).

    .venv/bin/python bench/chat.py                               # PostgreSQL, 2,000 connections
    .venv/bin/python bench/chat.py --connections 19500           # the issue's target
    .venv/bin/python bench/chat.py --db sqlite --connections 300 --shoppers 100 --seconds 3 --rates 100
    SHOPDESK_DATABASE_URL=… .venv/bin/python bench/chat.py --url http://127.0.0.1:8000 --server-pid 1234

See bench/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aftersales_flow as af  # noqa: E402  (server start-up, HTTP client, CPU meters, percentiles)

PER_PROC_MAX = 5_000  # sockets per client process (the 20,000-files cap applies to each process)
SESSIONS_PER_IP = 250  # POST /widget/sessions is limited to 300/minute per client address
AGENT_CAPACITY = 10
VISITOR_PER_MINUTE = 120  # the server's default chat_visitor_messages_per_minute
# Targets of the issue (one server process on the 2-core machine).
TARGET_CONNECTIONS = 19_500
TARGET_RSS_BYTES = 1 << 30
TARGET_MSGS_S = 3_000.0
TARGET_P99_MS = 50.0
TARGET_RATE = 1_000.0
monotonic = time.monotonic  # CLOCK_MONOTONIC: one clock for every process of the machine


# ============================================================================================
# The bare server (phase 3): `chat.py --bare-server PORT` runs it in its own process.
# ============================================================================================
def bare_app():
    """/ws holds sockets (hello, then announcements); /echo echoes each frame; /relay plays the chat
    without storage: a shopper's message.send → message.ack to it, message.created to its paired
    agent and to itself. POST /api/v1/chat/announcements encodes once and sends in a plain loop."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    held: set[WebSocket] = set()
    agents: dict[str, WebSocket] = {}
    counter = [0]
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    async def hold(ws: WebSocket) -> None:
        await ws.accept()
        held.add(ws)
        try:
            await ws.send_text('{"type":"hello","protocol":1,"visitor_id":"bare"}')
            while True:
                await ws.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            held.discard(ws)

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        try:
            await ws.send_text('{"type":"hello","protocol":1,"visitor_id":"bare"}')
            while True:
                await ws.send_text(await ws.receive_text())
        except WebSocketDisconnect:
            pass

    async def relay(ws: WebSocket) -> None:
        await ws.accept()
        role, me = ws.query_params.get("role"), ws.query_params.get("id", "")
        peer = ws.query_params.get("agent", "")
        seq = 0
        try:
            if role == "agent":
                agents[me] = ws
                await ws.send_text(dumps({"type": "hello", "protocol": 1, "staff_id": me}))
                while True:
                    await ws.receive_text()
            await ws.send_text(dumps({"type": "hello", "protocol": 1, "visitor_id": me}))
            while True:
                frame = json.loads(await ws.receive_text())
                if frame.get("type") != "message.send":
                    continue
                seq += 1
                counter[0] += 1
                mid, conv, cmid = f"m{counter[0]}", f"c{me}", frame.get("client_msg_id")
                await ws.send_text(dumps({"type": "message.ack", "client_msg_id": cmid, "message_id": mid,
                                          "conversation_id": conv, "seq": seq}))
                created = dumps({"type": "message.created", "message": {
                    "id": mid, "conversation_id": conv, "seq": seq, "client_msg_id": cmid,
                    "sender": {"type": "visitor", "id": me, "name": ""}, "text": frame.get("text"),
                    "attachment": None, "created_at": datetime.now().isoformat()}})
                agent = agents.get(peer)
                if agent is not None:
                    await agent.send_text(created)
                await ws.send_text(created)
        except WebSocketDisconnect:
            pass
        finally:
            if role == "agent" and agents.get(me) is ws:
                del agents[me]

    async def announce(request: Request) -> JSONResponse:
        body = await request.json()
        counter[0] += 1
        frame = dumps({"type": "announcement", "id": f"a{counter[0]}", "text": body.get("text", ""),
                       "created_at": datetime.now().isoformat()})
        sent = 0
        for ws in list(held):
            try:
                await ws.send_text(frame)
                sent += 1
            except Exception:  # noqa: BLE001 - gone meanwhile
                pass
        return JSONResponse({"id": f"a{counter[0]}", "sent": sent}, status_code=201)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[WebSocketRoute("/ws", hold), WebSocketRoute("/echo", echo),
                             WebSocketRoute("/relay", relay), Route("/api/v1/chat/announcements", announce,
                                                                    methods=["POST"]),
                             Route("/healthz", healthz)])


def run_bare_server(port: int) -> None:
    import uvicorn

    # As `shopdesk serve` runs uvicorn: same loop (uvloop), HTTP (httptools), WebSocket implementation and limits.
    uvicorn.run(bare_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                ws="websockets-sansio", ws_max_size=1024 * 1024)


class BareServer:
    def __init__(self) -> None:
        self.port = af.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--bare-server", str(self.port)])
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("the bare server exited")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("the bare server did not start within 20 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ============================================================================================
# The client process: holds sockets, runs the phases it is told to, reports raw times.
# ============================================================================================
class BoundConn(af.Conn):
    """aftersales_flow's keep-alive HTTP client, from a chosen loopback address."""

    def __init__(self, host: str, port: int, local_ip: str | None = None) -> None:
        super().__init__(host, port)
        self.local_ip = local_ip

    async def _open(self) -> None:
        local = (self.local_ip, 0) if self.local_ip else None
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20,
                                                                 local_addr=local)


class Sock:
    __slots__ = ("ws", "role", "name", "agent", "task", "hello", "closing")

    def __init__(self, role: str, name: str, agent: str = "") -> None:
        self.role, self.name, self.agent = role, name, agent
        self.ws: Any = None
        self.task: asyncio.Task | None = None
        self.hello = False
        self.closing = False


class Client:
    def __init__(self) -> None:
        self.groups: dict[str, list[Sock]] = {}
        self.hellos = 0
        self.hello_wait: tuple[int, asyncio.Event] | None = None
        self.announce: list[float] = []
        self.announce_ids: set[str] = set()
        self.announce_text: str | None = None
        self.announce_bad = 0
        self.announce_wait: tuple[int, asyncio.Event] | None = None
        self.acks: dict[str, float] = {}
        self.dup_acks = 0
        self.waiters: dict[str, asyncio.Future] = {}
        self.deliv: dict[str, list] = {}  # client_msg_id → [first arrival, count]
        self.deliv_wait: tuple[str, int, asyncio.Event] | None = None
        self.deliv_count: dict[str, int] = {}
        self.errors: list[tuple[str, str, str]] = []
        self.closes: list[tuple[int | None, str]] = []
        self.frames = 0

    # -- frames --------------------------------------------------------------------------------
    def on_frame(self, s: Sock, raw: str | bytes) -> None:
        t = monotonic()
        self.frames += 1
        if s.role in ("shopper", "echo") and raw.startswith('{"type":"message.created"'):
            return  # the shopper's own copy of its message: not measured, not parsed
        d = json.loads(raw)
        kind = d.get("type")
        if kind == "message.created":
            if s.role == "agent":
                cmid = d["message"].get("client_msg_id")
                if cmid:
                    rec = self.deliv.get(cmid)
                    if rec is None:
                        self.deliv[cmid] = [t, 1]
                        phase = cmid.split(":", 1)[0]
                        self.deliv_count[phase] = self.deliv_count.get(phase, 0) + 1
                        w = self.deliv_wait
                        if w and w[0] == phase and self.deliv_count[phase] >= w[1]:
                            w[2].set()
                    else:
                        rec[1] += 1
        elif kind == "message.ack" or (kind == "message.send" and s.role == "echo"):
            cmid = d.get("client_msg_id")
            if cmid in self.acks:
                self.dup_acks += 1
            else:
                self.acks[cmid] = t
            fut = self.waiters.pop(cmid, None)
            if fut is not None and not fut.done():
                fut.set_result(t)
        elif kind == "hello":
            if not s.hello:
                s.hello = True
                self.hellos += 1
                w = self.hello_wait
                if w and self.hellos >= w[0]:
                    w[1].set()
        elif kind == "announcement":
            if d.get("text") != self.announce_text or not d.get("id") or not d.get("created_at"):
                self.announce_bad += 1  # not the one we sent, or not the contract's fields
                return
            self.announce.append(t)
            self.announce_ids.add(str(d.get("id")))
            w = self.announce_wait
            if w and len(self.announce) >= w[0]:
                w[1].set()
        elif kind == "error":
            ref = d.get("ref") or d.get("client_msg_id") or ""
            self.errors.append((d.get("code", "?"), d.get("detail", ""), ref))
            fut = self.waiters.pop(ref, None)
            if fut is not None and not fut.done():
                fut.set_exception(RuntimeError(f"{d.get('code')}: {d.get('detail')}"))

    async def read(self, s: Sock) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in s.ws:
                self.on_frame(s, raw)
        except ConnectionClosed:
            pass
        except Exception as exc:  # noqa: BLE001 - count and keep the others going
            self.closes.append((None, f"reader: {exc!r}"[:200]))
            return
        if not s.closing:
            self.closes.append((s.ws.close_code, (s.ws.close_reason or "")[:100]))

    async def open_ws(self, url: str, s: Sock, local_ip: str | None) -> None:
        from websockets.asyncio.client import connect

        kwargs: dict[str, Any] = {"local_addr": (local_ip, 0)} if local_ip else {}
        s.ws = await connect(url, compression=None, ping_interval=None, open_timeout=120, close_timeout=2,
                             max_size=1 << 20, max_queue=64, user_agent_header=None, **kwargs)
        s.task = asyncio.get_running_loop().create_task(self.read(s))

    async def wait_hellos(self, target: int, timeout: float) -> None:
        if self.hellos >= target:
            return
        ev = asyncio.Event()
        self.hello_wait = (target, ev)
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self.hello_wait = None

    # -- commands ------------------------------------------------------------------------------
    async def cmd_widgets(self, a: dict) -> dict:
        """a: url, ws (socket URL without token), store (None: bare, no session), n, ips, group, concurrency."""
        host, port = af.host_port(a["url"])
        group = self.groups.setdefault(a["group"], [])
        todo = iter(range(a["n"]))
        failures: list[str] = []
        t0 = monotonic()
        before = self.hellos

        async def worker() -> None:
            conns: dict[str, BoundConn] = {}
            for i in todo:
                ip = a["ips"][i // SESSIONS_PER_IP]
                s = Sock("widget", f"w{i}")
                try:
                    url = a["ws"]
                    if a["store"]:
                        c = conns.get(ip)
                        if c is None:
                            for old in conns.values():
                                old.close()
                            conns.clear()
                            c = conns[ip] = BoundConn(host, port, ip)
                        sess = af.expect(await c.request("POST", "/api/v1/widget/sessions", {"store": a["store"]}),
                                         200, "widget session")
                        url = f"{a['ws']}?token={sess['token']}&v=1"
                    await self.open_ws(url, s, ip)
                    group.append(s)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    failures.append(f"{type(exc).__name__}: {exc}"[:300])
            for c in conns.values():
                c.close()

        await asyncio.gather(*(worker() for _ in range(a["concurrency"])))
        opened_s = monotonic() - t0
        await self.wait_hellos(before + len(group), a.get("hello_timeout", 60))
        return {"opened": len(group), "hellos": self.hellos - before, "failures": len(failures),
                "failure_samples": failures[:5], "seconds": monotonic() - t0, "open_seconds": opened_s}

    async def cmd_arm_announce(self, a: dict) -> dict:
        self.announce, self.announce_ids, self.announce_text, self.announce_bad = [], set(), a["text"], 0
        return {}

    async def cmd_collect_announce(self, a: dict) -> dict:
        ev = asyncio.Event()
        if len(self.announce) < a["expected"]:
            self.announce_wait = (a["expected"], ev)
            try:
                await asyncio.wait_for(ev.wait(), a["timeout"])
            except asyncio.TimeoutError:
                pass
            self.announce_wait = None
        return {"times": self.announce, "ids": sorted(self.announce_ids), "bad": self.announce_bad}

    async def cmd_close(self, a: dict) -> dict:
        socks = self.groups.pop(a["group"], [])
        sem = asyncio.Semaphore(200)

        async def close(s: Sock) -> None:
            async with sem:
                s.closing = True
                try:
                    await s.ws.close()
                except Exception:  # noqa: BLE001
                    pass
                if s.task:
                    s.task.cancel()

        await asyncio.gather(*(close(s) for s in socks))
        return {"closed": len(socks)}

    async def cmd_agents(self, a: dict) -> dict:
        """a: url, ws, logins [(email, password)] (shopdesk) or ids (bare relay), capacity."""
        host, port = af.host_port(a["url"])
        group = self.groups.setdefault("agents", [])
        staff_ids = []
        before = self.hellos
        c = BoundConn(host, port)
        for i, login in enumerate(a["logins"]):
            if a.get("bare"):
                s = Sock("agent", login)
                await self.open_ws(f"{a['ws']}?role=agent&id={login}", s, None)
                staff_ids.append(login)
            else:
                tok = af.expect(await c.request("POST", "/api/v1/auth/token",
                                                {"email": login[0], "password": login[1]}), 200, "agent login")
                s = Sock("agent", tok["staff"]["id"])
                await self.open_ws(f"{a['ws']}?token={tok['token']}&v=1", s, None)
                af.expect(await c.request("PUT", "/api/v1/agents/me/presence",
                                          {"status": "online", "capacity": a["capacity"]}, tok["token"]),
                          200, "presence")
                staff_ids.append(tok["staff"]["id"])
            group.append(s)
        c.close()
        await self.wait_hellos(before + len(group), 30)
        return {"staff_ids": staff_ids, "hellos": self.hellos - before}

    async def cmd_shoppers(self, a: dict) -> dict:
        """a: url, ws, store (shopdesk) or agents (bare relay: shopper i pairs with agents[i % len]), indices, ips."""
        host, port = af.host_port(a["url"])
        group = self.groups.setdefault("shoppers", [])
        before = self.hellos
        todo = iter(a["indices"])
        failures: list[str] = []

        async def worker() -> None:
            conns: dict[str, BoundConn] = {}
            for i in todo:
                ip = a["ips"][i // SESSIONS_PER_IP]
                try:
                    if a.get("agents"):
                        s = Sock(a.get("role", "shopper"), f"v{i}", a["agents"][i % len(a["agents"])])
                        url = f"{a['ws']}?role=shopper&id=v{i}&agent={s.agent}"
                    elif a.get("role") == "echo":
                        s = Sock("echo", f"v{i}")
                        url = a["ws"]
                    else:
                        c = conns.get(ip)
                        if c is None:
                            for old in conns.values():
                                old.close()
                            conns.clear()
                            c = conns[ip] = BoundConn(host, port, ip)
                        sess = af.expect(await c.request("POST", "/api/v1/widget/sessions", {"store": a["store"]}),
                                         200, "widget session")
                        s = Sock("shopper", sess["visitor_id"])
                        url = f"{a['ws']}?token={sess['token']}&v=1"
                    await self.open_ws(url, s, ip)
                    group.append(s)
                except Exception as exc:  # noqa: BLE001
                    failures.append(f"{type(exc).__name__}: {exc}"[:300])
            for c in conns.values():
                c.close()

        await asyncio.gather(*(worker() for _ in range(16)))
        await self.wait_hellos(before + len(group), 60)
        group.sort(key=lambda s: int(s.name[1:]) if s.name[1:].isdigit() else 0)
        return {"opened": len(group), "hellos": self.hellos - before, "failures": len(failures),
                "failure_samples": failures[:5]}

    def frame(self, cmid: str) -> str:
        return '{"type":"message.send","client_msg_id":"%s","text":"bench message %s"}' % (cmid, cmid)

    async def send_wait(self, s: Sock, cmid: str, timeout: float) -> float:
        fut = asyncio.get_running_loop().create_future()
        self.waiters[cmid] = fut
        await s.ws.send(self.frame(cmid))
        return await asyncio.wait_for(fut, timeout)

    async def cmd_first(self, a: dict) -> dict:
        """Each shopper sends one message (opens and routes its conversation), a few at a time."""
        socks = self.groups.get("shoppers", [])
        todo = iter(socks)
        sends: dict[str, float] = {}
        errors: list[str] = []

        async def worker() -> None:
            for s in todo:
                cmid = f"{a['phase']}:{s.name}"
                sends[cmid] = monotonic()
                try:
                    await self.send_wait(s, cmid, 60)
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"{cmid}: {exc!r}"[:200])

        await asyncio.gather(*(worker() for _ in range(a.get("concurrency", 8))))
        return {"sends": sends, "acks": {k: self.acks.pop(k, None) for k in sends}, "errors": errors}

    async def cmd_closed(self, a: dict) -> dict:
        """Closed loop: `slots` messages in flight, each slot cycling over its share of the shoppers."""
        socks = self.groups.get("shoppers", [])
        slots = max(1, min(a["slots"], len(socks)))
        sends: dict[str, float] = {}
        errors: list[str] = []
        delay = a["start_at"] - monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        cpu0 = os.times()
        stop = a["start_at"] + a["seconds"]
        n = [0]

        async def slot(j: int) -> None:
            mine = socks[j::slots]
            k = 0
            while monotonic() < stop:
                s = mine[k % len(mine)]
                k += 1
                n[0] += 1
                cmid = f"{a['phase']}:{a['proc']}.{n[0]}"
                sends[cmid] = monotonic()
                try:
                    await self.send_wait(s, cmid, a.get("timeout", 30))
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"{cmid}: {exc!r}"[:200])
                    if len(errors) > 1000:
                        return

        await asyncio.gather(*(slot(j) for j in range(slots)))
        cpu1 = os.times()
        return {"sends": sends, "acks": {k: self.acks.pop(k, None) for k in sends}, "errors": errors[:20],
                "n_errors": len(errors), "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}

    async def cmd_open(self, a: dict) -> dict:
        """Open loop: message k leaves at start_at + k/rate from shopper k % total (if it is one of ours)."""
        socks = self.groups.get("shoppers", [])
        total, procs, me, rate = a["total"], a["procs"], a["proc"], a["rate"]
        plan = []
        for k in range(int(rate * a["seconds"])):
            i = k % total
            if i % procs == me and i // procs < len(socks):
                plan.append((a["start_at"] + k / rate, socks[i // procs], f"{a['phase']}:{k}"))
        sends: dict[str, tuple[float, float]] = {}
        loop_errors: list[str] = []
        pending: set[asyncio.Task] = set()
        cpu0 = os.times()

        async def send(s: Sock, text: str, cmid: str) -> None:
            try:
                await s.ws.send(text)
            except Exception as exc:  # noqa: BLE001
                loop_errors.append(f"{cmid}: {exc!r}"[:200])

        for planned, s, cmid in plan:
            delay = planned - monotonic()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            sends[cmid] = (planned, monotonic())
            # Usually done at once; a socket whose send buffer is full must not hold up the timetable.
            task = asyncio.ensure_future(send(s, self.frame(cmid), cmid))
            if not task.done():
                pending.add(task)
                task.add_done_callback(pending.discard)
        deadline = monotonic() + a["drain"]
        while monotonic() < deadline and any(k not in self.acks for k in sends):
            await asyncio.sleep(0.05)
        cpu1 = os.times()
        return {"sends": sends, "acks": {k: self.acks.pop(k, None) for k in sends}, "errors": loop_errors[:20],
                "n_errors": len(loop_errors), "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}

    async def cmd_deliveries(self, a: dict) -> dict:
        """The agents' side: wait until `expected` messages of the phase arrived (or timeout), return them."""
        phase = a["phase"]
        if self.deliv_count.get(phase, 0) < a["expected"]:
            ev = asyncio.Event()
            self.deliv_wait = (phase, a["expected"], ev)
            try:
                await asyncio.wait_for(ev.wait(), a["timeout"])
            except asyncio.TimeoutError:
                pass
            self.deliv_wait = None
        await asyncio.sleep(a.get("settle", 0.3))  # late duplicates
        prefix = phase + ":"
        out = {k: v for k, v in self.deliv.items() if k.startswith(prefix)}
        for k in out:
            del self.deliv[k]
        return {"deliveries": out}

    async def cmd_status(self, a: dict) -> dict:
        errs: dict[str, int] = {}
        for code, _, _ in self.errors:
            errs[code] = errs.get(code, 0) + 1
        out = {"frames": self.frames, "errors": errs, "error_samples": self.errors[:5], "dup_acks": self.dup_acks,
               "closes": len(self.closes), "close_samples": self.closes[:5],
               "sockets": {g: len(v) for g, v in self.groups.items()}}
        if a.get("reset"):
            self.errors, self.closes, self.dup_acks = [], [], 0
        return out


def client_main(pipe) -> None:  # noqa: ANN001 - a multiprocessing Connection
    """Entry point of a client process: run commands from the parent until 'quit'."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def serve() -> None:
        client = Client()
        loop = asyncio.get_running_loop()
        while True:
            name, a = await loop.run_in_executor(None, pipe.recv)
            if name == "quit":
                for g in list(client.groups):
                    await client.cmd_close({"group": g})
                pipe.send({})
                return
            try:
                result = await getattr(client, "cmd_" + name)(a)
            except Exception as exc:  # noqa: BLE001 - report to the parent
                import traceback

                result = {"exception": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
            pipe.send(result)

    asyncio.run(serve())


class Clients:
    """The client processes, driven in parallel from the parent."""

    def __init__(self, n: int) -> None:
        ctx = get_context("spawn")
        self.pipes, self.procs = [], []
        for _ in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=client_main, args=(child,), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def cpu_s(self) -> float:
        return sum(af.proc_cpu_s(pid) for pid in self.pids)

    def run(self, calls: list[tuple[int, str, dict]]) -> list[dict]:
        """Send each (process, command, args), then wait for all the answers."""
        for i, name, a in calls:
            self.pipes[i].send((name, a))
        out = [self.pipes[i].recv() for i, _, _ in calls]
        for r in out:
            if "exception" in r:
                raise SystemExit(f"client process failed: {r['exception']}\n{r['trace']}")
        return out

    def all(self, name: str, a: dict, which: list[int] | None = None) -> list[dict]:
        return self.run([(i, name, a) for i in (range(len(self.procs)) if which is None else which)])

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("quit", {}))
            except (OSError, BrokenPipeError):
                pass
        for pipe, p in zip(self.pipes, self.procs):
            try:
                if pipe.poll(30):
                    pipe.recv()
            except (OSError, EOFError):
                pass
            p.join(timeout=5)
            if p.is_alive():
                p.kill()


# ============================================================================================
# Measurements from /proc
# ============================================================================================
def rss_bytes(pid: int | None) -> int | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def tcp_mem_bytes() -> int:
    """Kernel slab memory, machine-wide (/proc/meminfo): socket structures of both ends, among others."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("Slab:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def open_fds(pid: int | None) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd")) if pid else None
    except OSError:
        return None


class IpBlocks:
    """Loopback source addresses, SESSIONS_PER_IP widget sessions each (the per-address session limit)."""

    def __init__(self) -> None:
        self.base = secrets.randbelow(200) + 20  # another run against the same --url gets fresh addresses
        self.next = 0

    def take(self, n_sessions: int) -> list[str]:
        n = max(1, math.ceil(n_sessions / SESSIONS_PER_IP))
        ips = [f"127.{self.base}.{(self.next + j) // 250}.{(self.next + j) % 250 + 1}" for j in range(n)]
        self.next += n
        return ips


def wait_quiet(pid: int | None, limit_s: float = 90.0) -> float:
    """Wait until the server is nearly idle (a backlog left by an overloaded phase has drained)."""
    t0 = time.perf_counter()
    time.sleep(1.0)
    if not pid:
        return time.perf_counter() - t0
    while time.perf_counter() - t0 < limit_s:
        c0 = af.proc_cpu_s(pid)
        time.sleep(0.5)
        if af.proc_cpu_s(pid) - c0 < 0.1:  # under 20 % of a core
            break
    return time.perf_counter() - t0


def ws_url(http_url: str, path: str) -> str:
    return "ws://" + http_url.split("://", 1)[1] + path


# ============================================================================================
# Phases
# ============================================================================================
def split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def phase_connections(cl: Clients, which: list[int], url: str, store: str | None, n: int, ips: IpBlocks,
                      server_pid: int | None, announce_token: str | None, label: str) -> dict:
    """Hold n widget sockets, measure memory, then broadcast to all of them and time the arrivals."""
    host, port = af.host_port(url)
    out: dict[str, Any] = {"target": n}
    time.sleep(0.5)
    out["rss_before"] = rss_bytes(server_pid)
    out["tcp_mem_before"] = tcp_mem_bytes()
    cpu0 = af.proc_cpu_s(server_pid) if server_pid else 0.0
    ccpu0 = cl.cpu_s()
    shares = split(n, len(which))
    calls, start = [], 0
    for proc, share in zip(which, shares):
        calls.append((proc, "widgets", {"url": url, "ws": ws_url(url, "/ws"), "store": store, "n": share,
                                        "ips": ips.take(share), "group": "widgets", "concurrency": 24}))
        start += share
    t0 = time.perf_counter()
    res = cl.run(calls)
    out["seconds"] = time.perf_counter() - t0
    out["opened"] = sum(r["opened"] for r in res)
    out["hellos"] = sum(r["hellos"] for r in res)
    out["failures"] = sum(r["failures"] for r in res)
    out["failure_samples"] = [s for r in res for s in r["failure_samples"]][:5]
    out["server_cpu_s"] = (af.proc_cpu_s(server_pid) - cpu0) if server_pid else None
    out["client_cpu_s"] = cl.cpu_s() - ccpu0
    time.sleep(1.0)
    out["rss_after"] = rss_bytes(server_pid)
    out["tcp_mem_after"] = tcp_mem_bytes()
    out["server_fds"] = open_fds(server_pid)
    if out["rss_before"] and out["rss_after"]:
        out["rss_per_conn"] = (out["rss_after"] - out["rss_before"]) / max(out["hellos"], 1)
    out["kernel_per_conn"] = (out["tcp_mem_after"] - out["tcp_mem_before"]) / max(out["hellos"], 1)
    print(f"[{label}] {out['hellos']:,} of {n:,} sockets said hello in {out['seconds']:.1f} s; server RSS "
          f"{mib(out['rss_before'])} → {mib(out['rss_after'])}", flush=True)

    # The broadcast.
    c = af.Conn(host, port)
    text = f"压测公告 {secrets.token_hex(4)}"
    cl.all("arm_announce", {"text": text}, which)
    cpu0 = af.proc_cpu_s(server_pid) if server_pid else 0.0
    t_post, t_answer, status, body = asyncio.run(_post(c, "/api/v1/chat/announcements",
                                                       {"store": store or "bare", "text": text}, announce_token))
    out["broadcast_http"] = status
    out["broadcast_answer_ms"] = (t_answer - t_post) * 1000
    out["broadcast_body"] = body if isinstance(body, dict) else repr(body)[:300]
    timeout = 30.0 if status in (200, 201, 202) else 3.0
    res = cl.run([(proc, "collect_announce", {"expected": r["hellos"], "timeout": timeout})
                  for proc, r in zip(which, res)])
    times = [(t - t_post) * 1000 for r in res for t in r["times"]]
    out["server_cpu_broadcast_s"] = (af.proc_cpu_s(server_pid) - cpu0) if server_pid else None
    out["received"] = len(times)
    out["announce_bad"] = sum(r["bad"] for r in res)
    out["announce_ids"] = sorted({i for r in res for i in r["ids"]})
    out["broadcast"] = af.summary(times)
    print(f"[{label}] broadcast: HTTP {status}, {len(times):,} of {out['hellos']:,} sockets received it"
          + (f", p99 {times and af.pct(times, 99):.0f} ms" if times else ""), flush=True)
    st = cl.all("status", {"reset": True}, which)
    out["client_errors"] = merge_counts([r["errors"] for r in st])
    out["closed_by_server"] = sum(r["closes"] for r in st)
    out["close_samples"] = [s for r in st for s in r["close_samples"]][:5]
    out["rss_peak"] = rss_bytes(server_pid)
    cl.all("close", {"group": "widgets"}, which)
    return out


async def _post(c: af.Conn, path: str, body: dict, token: str | None) -> tuple[float, float, int, Any]:
    """One request; the times it left and its answer came back (monotonic)."""
    await c._open()
    t = monotonic()
    try:
        status, answer = await c.request("POST", path, body, token)
    except af.HttpError as exc:
        status, answer = 0, str(exc)
    t1 = monotonic()
    c.close()
    return t, t1, status, answer


def merge_counts(dicts: list[dict]) -> dict:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def phase_messages(cl: Clients, shop_procs: list[int], agent_proc: int, url: str, args, *, mode: str,
                   store: str | None, logins: list, ips: IpBlocks, meter: af.CpuMeter | None, label: str) -> dict:
    """mode 'chat' (the ShopDesk server), 'relay' or 'echo' (the bare server). Closed loop, then fixed rates."""
    P = args.shoppers
    nproc = len(shop_procs)
    out: dict[str, Any] = {"mode": mode, "shoppers": P, "slots": args.slots}
    server_pid = meter.server_pid if meter else None
    # Agents.
    if mode == "chat":
        r = cl.run([(agent_proc, "agents", {"url": url, "ws": ws_url(url, "/ws"), "logins": logins,
                                            "capacity": AGENT_CAPACITY})])[0]
        agent_ids = r["staff_ids"]
    elif mode == "relay":
        agent_ids = [f"a{i}" for i in range(len(logins))]
        cl.run([(agent_proc, "agents", {"url": url, "ws": ws_url(url, "/relay"), "logins": agent_ids, "bare": True})])
    else:
        agent_ids = []
    out["agents"] = len(agent_ids)
    # Shoppers: global index i lives in process i % nproc, at position i // nproc.
    block_ips = ips.take(P) if mode == "chat" else ["127.0.0.1"] * max(1, math.ceil(P / SESSIONS_PER_IP))
    calls = []
    for j, proc in enumerate(shop_procs):
        idx = list(range(j, P, nproc))
        a = {"url": url, "indices": idx, "ips": block_ips}
        if mode == "chat":
            a.update(ws=ws_url(url, "/ws"), store=store)
        elif mode == "relay":
            a.update(ws=ws_url(url, "/relay"), agents=agent_ids)
        else:
            a.update(ws=ws_url(url, "/echo"), role="echo")
        calls.append((proc, "shoppers", a))
    res = cl.run(calls)
    opened = sum(r["opened"] for r in res)
    out["opened"] = opened
    if opened < P:
        samples = [s for r in res for s in r["failure_samples"]]
        raise SystemExit(f"[{label}] only {opened} of {P} shopper sockets opened: {samples[:3]}")
    expect_deliv = mode != "echo"
    tag = {"chat": "C", "echo": "E", "relay": "R"}[mode]  # client message ids differ between runs

    def collect(phase: str, sends_res: list[dict], timeout: float) -> tuple[dict, dict, dict]:
        sends: dict = {}
        acks: dict = {}
        for r in sends_res:
            sends.update(r["sends"])
            acks.update(r["acks"])
        deliv = {}
        if expect_deliv:
            n_acked = sum(1 for v in acks.values() if v is not None)
            deliv = cl.run([(agent_proc, "deliveries", {"phase": phase, "expected": n_acked,
                                                        "timeout": timeout})])[0]["deliveries"]
        return sends, acks, deliv

    # 1. Each shopper's first message opens its conversation, which is routed to an agent.
    r = cl.run([(p, "first", {"phase": tag + "f"}) for p in shop_procs])
    sends, acks, deliv = collect(tag + "f", r, 30)
    out["first"] = {"sent": len(sends), "acked": sum(1 for v in acks.values() if v is not None),
                    "errors": [e for x in r for e in x["errors"]][:5]}
    if expect_deliv:
        counts = [deliv.get(k, [0, 0])[1] for k in sends]
        out["first"]["assigned"] = sum(1 for c in counts if c == 1)
        out["first"]["to_every_agent"] = sum(1 for c in counts if c > 1)
        out["first"]["undelivered"] = sum(1 for c in counts if c == 0)
        print(f"[{label}] {P} conversations opened: {out['first']['assigned']} delivered to one agent, "
              f"{out['first']['to_every_agent']} to several (not assigned), {out['first']['undelivered']} not "
              f"delivered", flush=True)
    cl.all("status", {"reset": True}, shop_procs + ([agent_proc] if agent_ids else []))

    def closed(phase: str, seconds: float) -> dict:
        cpu0 = meter.read() if meter else {}
        ccpu0 = cl.cpu_s()
        start_at = monotonic() + 0.5
        slots = split(args.slots, nproc)
        r = cl.run([(p, "closed", {"phase": phase, "slots": slots[j], "seconds": seconds, "start_at": start_at,
                                   "proc": j}) for j, p in enumerate(shop_procs)])
        sends, acks, deliv = collect(phase, r, 30)
        cpu = af.CpuMeter.diff(cpu0, meter.read()) if meter else {}
        return summarize(phase, sends, acks, deliv, start_at, cpu, cl.cpu_s() - ccpu0, r, closed=True)

    def summarize(phase: str, sends: dict, acks: dict, deliv: dict, start_at: float, cpu: dict,
                  client_cpu: float, r: list[dict], closed: bool) -> dict:
        st = cl.all("status", {"reset": True}, shop_procs + ([agent_proc] if agent_ids else []))
        acked = {k: v for k, v in acks.items() if v is not None}
        row: dict[str, Any] = {"phase": phase, "sent": len(sends), "acked": len(acked),
                               "send_errors": sum(x["n_errors"] for x in r),
                               "error_samples": [e for x in r for e in x["errors"]][:5],
                               "server_errors": merge_counts([x["errors"] for x in st]),
                               "server_error_samples": [e for x in st for e in x["error_samples"]][:3],
                               "dup_acks": sum(x["dup_acks"] for x in st), "closed_by_server": sum(x["closes"] for x in st),
                               "client_cpu_s": client_cpu, "cpu_s": cpu}
        planned = {k: (v[0] if isinstance(v, (list, tuple)) else v) for k, v in sends.items()}
        if not closed:
            row["send_lag"] = af.summary([(v[1] - v[0]) * 1000 for v in sends.values()])
        # Unanswered ones count as slower than anything measured (as in aftersales_flow's fixed rate).
        inf = float("inf")
        row["ack"] = af.summary([(acked[k] - planned[k]) * 1000 for k in acked] + [inf] * (len(sends) - len(acked)))
        last = max(acked.values()) if acked else start_at
        if expect_deliv:
            row["delivered"] = sum(1 for k in sends if k in deliv)
            row["lost"] = sum(1 for k in acked if k not in deliv)
            row["duplicated"] = sum(1 for k in sends if k in deliv and deliv[k][1] > 1)
            row["delivered_unacked"] = sum(1 for k in deliv if k not in acked)
            row["undelivered"] = len(sends) - row["delivered"]
            row["e2e"] = af.summary([(deliv[k][0] - planned[k]) * 1000 for k in sends if k in deliv]
                                    + [inf] * row["undelivered"])
            if deliv:
                last = max(last, max(v[0] for v in deliv.values()))
            done = sum(1 for k in acked if k in deliv)
        else:
            done = len(acked)
        first = min(planned.values()) if planned else start_at
        row["wall_s"] = max(last - first, 1e-9)
        row["msgs_s"] = done / row["wall_s"]
        if cpu.get("server"):
            row["server_ms_per_msg"] = cpu["server"] * 1000 / max(done, 1)
        if cpu.get("postgres"):
            row["postgres_ms_per_msg"] = cpu["postgres"] * 1000 / max(done, 1)
        row["client_ms_per_msg"] = client_cpu * 1000 / max(done, 1)
        return row

    def fixed(phase: str, rate: float) -> dict:
        cpu0 = meter.read() if meter else {}
        ccpu0 = cl.cpu_s()
        start_at = monotonic() + 0.5
        r = cl.run([(p, "open", {"phase": phase, "rate": rate, "seconds": args.rate_seconds, "start_at": start_at,
                                 "total": P, "procs": nproc, "proc": j, "drain": args.drain_seconds})
                    for j, p in enumerate(shop_procs)])
        sends, acks, deliv = collect(phase, r, args.drain_seconds)
        cpu = af.CpuMeter.diff(cpu0, meter.read()) if meter else {}
        row = summarize(phase, sends, acks, deliv, start_at, cpu, cl.cpu_s() - ccpu0, r, closed=False)
        row["rate"], row["drain_s"] = rate, args.drain_seconds
        return row

    # 2. Warm-up, then the closed loop.
    warm = closed(tag + "w", min(2.0, args.seconds))
    warm_end = monotonic()
    wait_quiet(server_pid)
    out["closed"] = row = closed(tag + "c", args.seconds)
    print(f"[{label}] closed loop ({args.slots} in flight): {row['msgs_s']:,.0f} msgs/s"
          + (f", lost {row['lost']}, duplicated {row['duplicated']}" if expect_deliv else ""), flush=True)
    # 3. Fixed rates.
    out["fixed"] = []
    # (phase end, messages per shopper) of the phases so far
    sent_at: list[tuple[float, float]] = [(warm_end, warm["sent"] / P), (monotonic(), row["sent"] / P)]
    for rate in args.rates:
        out["quiet_wait_s"] = out.get("quiet_wait_s", 0.0) + wait_quiet(server_pid)
        if mode == "chat":
            # The server lets a visitor send VISITOR_PER_MINUTE messages a minute: a fast closed loop can
            # use up that budget, and the phase after it would measure the limiter. Wait for the window.
            planned = rate * args.rate_seconds / P
            while sum(n for t, n in sent_at if monotonic() - t < 60) + planned > VISITOR_PER_MINUTE - 10:
                oldest = min(t for t, _ in sent_at if monotonic() - t < 60)
                wait = 60.5 - (monotonic() - oldest)
                print(f"[{label}] waiting {wait:.0f} s for the per-visitor limit's minute to pass", flush=True)
                out["limit_wait_s"] = out.get("limit_wait_s", 0.0) + wait
                time.sleep(wait)
        row = fixed(f"{tag}r{rate:g}", rate)
        sent_at.append((monotonic(), row["sent"] / P))
        out["fixed"].append(row)
        lat = row["e2e"] if expect_deliv else row["ack"]
        print(f"[{label}] {rate:g}/s: p50 {af.f1(lat['p50_ms'])} p99 {af.f1(lat['p99_ms'])} ms", flush=True)
    cl.all("close", {"group": "shoppers"}, shop_procs)
    if agent_ids:
        cl.run([(agent_proc, "close", {"group": "agents"})])
    return out


# ============================================================================================
# Set-up of the ShopDesk server: store, supervisor, agents.
# ============================================================================================
def create_staff(env: dict, slug: str, n: int, role: str, parallel: int = 2) -> list[tuple[str, str]]:
    logins = [(f"{role}{i}@{slug}.test", secrets.token_urlsafe(12)) for i in range(n)]

    def make(login: tuple[str, str]) -> None:
        af.cli(env, "staff", "create", "--merchant", slug, "--email", login[0], "--password", login[1],
               "--role", role, "--name", f"{role} {login[0].split('@')[0]}")

    with ThreadPoolExecutor(parallel) as ex:
        list(ex.map(make, logins))
    return logins


async def make_store(url: str, key: str) -> str:
    host, port = af.host_port(url)
    c = af.Conn(host, port)
    store = f"c{secrets.token_hex(3)}"
    af.expect(await c.request("POST", "/api/v1/stores", {"code": store, "name": "压测聊天店", "platform": "own_site"},
                              key), 201, "store")
    c.close()
    return store


async def login(url: str, email: str, password: str) -> str:
    host, port = af.host_port(url)
    c = af.Conn(host, port)
    tok = af.expect(await c.request("POST", "/api/v1/auth/token", {"email": email, "password": password}), 200,
                    "login")
    c.close()
    return tok["token"]


# ============================================================================================
# Report
# ============================================================================================
def mib(b: float | None) -> str:
    return "—" if b is None else f"{b / (1 << 20):,.1f} MiB"


def kib(b: float | None) -> str:
    return "—" if b is None else f"{b / 1024:,.1f} KiB"


def lat_line(s: dict) -> str:
    return f"p50 {af.f1(s['p50_ms'])}  p99 {af.f1(s['p99_ms'])}  max {af.f1(s['max_ms'])} ms"


def report_conn(title: str, c: dict) -> None:
    print(f"{title}")
    print(f"  sockets        {c['hellos']:,} said hello of {c['target']:,} ({c['opened']:,} opened, "
          f"{c['failures']} failed) in {c['seconds']:.1f} s")
    for s in c["failure_samples"][:3]:
        print(f"                 failure: {s}")
    print(f"  server RSS     {mib(c['rss_before'])} → {mib(c['rss_after'])} = {kib(c.get('rss_per_conn'))} per "
          f"connection; kernel slab {kib(c['kernel_per_conn'])} per connection (both ends, machine-wide); "
          f"server fds {c['server_fds']}")
    if c.get("server_cpu_s") is not None:
        print(f"  set-up CPU     server {c['server_cpu_s'] * 1000 / max(c['hellos'], 1):.2f} ms per connection "
              f"(session + socket + hello), clients {c['client_cpu_s'] * 1000 / max(c['hellos'], 1):.2f} ms")
    print(f"  broadcast      HTTP {c['broadcast_http']} in {c['broadcast_answer_ms']:.0f} ms; received by "
          f"{c['received']:,} of {c['hellos']:,}; {lat_line(c['broadcast'])} (from the POST)")
    if c["broadcast_http"] not in (200, 201, 202):
        print(f"                 answer: {json.dumps(c['broadcast_body'], ensure_ascii=False)[:200]}")
    if c.get("announce_bad"):
        print(f"                 {c['announce_bad']:,} announcement frames without the text sent, an id or created_at")
    if c.get("server_cpu_broadcast_s") and c["received"]:
        print(f"  server CPU     {c['server_cpu_broadcast_s'] * 1e6 / c['received']:.0f} µs per announcement frame")
    if c["client_errors"] or c["closed_by_server"]:
        print(f"  errors         frames {c['client_errors']}; sockets closed by the server {c['closed_by_server']} "
              f"{c['close_samples'][:3]}")


def report_msgs(title: str, m: dict) -> None:
    deliv = m["mode"] != "echo"
    print(f"{title}  ({m['shoppers']} clients" + (f", {m['agents']} agents" if deliv else "") + ")")
    if "assigned" in m["first"]:
        f = m["first"]
        print(f"  opening        {f['acked']} of {f['sent']} acked; assigned (delivered to one agent) {f['assigned']}, "
              f"to several agents {f['to_every_agent']}, not delivered {f['undelivered']}")
    rows = [("closed", m["closed"])] + [(f"{r['rate']:g}/s", r) for r in m["fixed"]]
    for name, r in rows:
        head = f"  {name:<14} sent {r['sent']:,}, acked {r['acked']:,}"
        if deliv:
            head += f", delivered {r['delivered']:,}"
            if name == "closed":
                head += f", lost {r['lost']}, duplicated {r['duplicated']}"
            else:
                head += (f" ({r.get('undelivered', 0):,} not delivered {r['drain_s']:g} s after the last send), "
                         f"duplicated {r['duplicated']}")
        head += f": {r['msgs_s']:,.0f} msgs/s over {r['wall_s']:.1f} s"
        print(head)
        print(f"    ack          {lat_line(r['ack'])}")
        if deliv:
            print(f"    delivered    {lat_line(r['e2e'])}")
        if "send_lag" in r:
            print(f"    send lag     p99 {af.f1(r['send_lag']['p99_ms'])} ms (client behind its timetable)")
        cpu = r["cpu_s"]
        parts = []
        if "server_ms_per_msg" in r:
            parts.append(f"server {r['server_ms_per_msg']:.3f} ms/msg ({cpu['server'] / r['wall_s']:.0%} of a core)")
        if "postgres_ms_per_msg" in r:
            parts.append(f"postgres {r['postgres_ms_per_msg']:.3f} ms/msg")
        parts.append(f"clients {r['client_ms_per_msg']:.3f} ms/msg")
        if cpu.get("machine"):
            other = cpu["machine"] - cpu.get("server", 0) - cpu.get("postgres", 0) - r["client_cpu_s"]
            parts.append(f"other processes {other / r['wall_s']:.2f} cores")
        print("    cpu          " + "; ".join(parts))
        if cpu.get("machine") and other / r["wall_s"] > 0.3:
            print(f"    WARNING      other processes used {other / r['wall_s']:.1f} cores: these figures understate "
                  f"the server; run again on a quiet machine")
        if r["send_errors"] or r["server_errors"] or r["dup_acks"] or r["closed_by_server"]:
            print(f"    errors       send {r['send_errors']}, error frames {r['server_errors']}, duplicate acks "
                  f"{r['dup_acks']}, sockets closed by the server {r['closed_by_server']}")
            for e in (r["error_samples"] + [str(x) for x in r["server_error_samples"]])[:3]:
                print(f"                 {e}")


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b or a != a or b != b:
        return "—"
    return f"{a / b:.2f}×" if a / b >= 0.1 else f"{a / b:.1%}"


def verdict(r: dict) -> None:
    c, m = r.get("connections"), r.get("messages")
    ceil = r.get("ceiling", {})
    print("\n=== against the ceiling (bare Starlette on uvicorn + websockets-sansio, same client, same run) ===")
    if c and ceil.get("connections"):
        cc = ceil["connections"]
        print(f"  RSS per connection      {kib(c.get('rss_per_conn'))} vs {kib(cc.get('rss_per_conn'))} "
              f"({ratio(c.get('rss_per_conn'), cc.get('rss_per_conn'))}; performance.md: 24 KiB)")
        print(f"  broadcast p99           {af.f1(c['broadcast']['p99_ms'])} vs {af.f1(cc['broadcast']['p99_ms'])} ms"
              f" to {c['received']:,} / {cc['received']:,} sockets")
    if m and ceil.get("echo"):
        e, rl = ceil["echo"], ceil.get("relay")
        relay_part = (f"{ratio(m['closed']['msgs_s'], rl['closed']['msgs_s'])} of the relay "
                      f"({rl['closed']['msgs_s']:,.0f}/s), ") if rl else ""
        print(f"  closed loop             {m['closed']['msgs_s']:,.0f} stored-and-delivered msgs/s = {relay_part}"
              f"{ratio(m['closed']['msgs_s'], e['closed']['msgs_s'])} of echo ({e['closed']['msgs_s']:,.0f} round "
              f"trips/s; performance.md: 51k with 100 clients)")
        for fr in m["fixed"]:
            er = next((x for x in e["fixed"] if x["rate"] == fr["rate"]), None)
            rr = next((x for x in rl["fixed"] if x["rate"] == fr["rate"]), None) if rl else None
            print(f"  at {fr['rate']:>6g}/s p99         chat {af.f1(fr['e2e']['p99_ms'])} ms; relay "
                  f"{af.f1(rr['e2e']['p99_ms']) if rr else '—'} ms; echo {af.f1(er['ack']['p99_ms']) if er else '—'} ms")
    print("\n=== targets (issue 3, one server process, this 2-core machine) ===")
    if c:
        n_ok = c["target"] >= TARGET_CONNECTIONS and c["hellos"] >= TARGET_CONNECTIONS
        rss_ok = c["rss_peak"] is not None and c["rss_peak"] < TARGET_RSS_BYTES
        all_ok = c["received"] >= c["hellos"] > 0
        ok = n_ok and rss_ok and all_ok
        note = "" if c["target"] >= TARGET_CONNECTIONS else f" — this run held {c['target']:,}: run --connections 19500"
        print(f"  hold {TARGET_CONNECTIONS:,} widget connections under 1 GiB, every one receiving a broadcast: "
              f"{'MET' if ok else 'NOT MET'} ({c['hellos']:,} held, RSS {mib(c['rss_peak'])}, broadcast received by "
              f"{c['received']:,}){note}")
    if m:
        db = r["db"]
        ok = m["closed"]["msgs_s"] >= TARGET_MSGS_S and m["closed"]["lost"] == 0 and m["closed"]["duplicated"] == 0
        print(f"  ≥ {TARGET_MSGS_S:,.0f} stored-and-delivered messages/s on PostgreSQL: "
              + (f"{'MET' if ok and db == 'postgres' else 'NOT MET'} ({m['closed']['msgs_s']:,.0f}/s on {db}, lost "
                 f"{m['closed']['lost']}, duplicated {m['closed']['duplicated']})"))
        fr = next((x for x in m["fixed"] if x["rate"] == TARGET_RATE), None)
        if fr:
            ok = (fr["e2e"]["p99_ms"] < TARGET_P99_MS and fr["undelivered"] == 0 and fr["duplicated"] == 0
                  and fr["delivered"] == fr["sent"])
            print(f"  p99 < {TARGET_P99_MS:.0f} ms at {TARGET_RATE:,.0f} messages/s: {'MET' if ok else 'NOT MET'} "
                  f"(p99 {af.f1(fr['e2e']['p99_ms'])} ms send → agent, {fr['delivered']:,} of {fr['sent']:,} "
                  f"delivered, on {db})")
        else:
            print(f"  p99 < {TARGET_P99_MS:.0f} ms at {TARGET_RATE:,.0f} messages/s: not measured (add 1000 to --rates)")


# ============================================================================================
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--db", choices=("sqlite", "postgres"), default="postgres",
                   help="database of the server the bench starts; with --url, only the label")
    p.add_argument("--pg-url", default=os.environ.get("SHOPDESK_BENCH_PG_URL", af.DEFAULT_PG),
                   help="PostgreSQL server; a database shopdesk_bench_<pid> is created on it and dropped")
    p.add_argument("--url", help="measure a server that is already running (SHOPDESK_DATABASE_URL must name its "
                                 "database: merchant, key and staff are created with the CLI)")
    p.add_argument("--server-pid", type=int, help="with --url: the server's pid, for its RSS and CPU")
    p.add_argument("--connections", type=int, default=2_000, help="widget sockets held (the target is 19500)")
    p.add_argument("--shoppers", type=int, default=500,
                   help="shopper sockets of the message phases (agents: one per 10 shoppers); each visitor may "
                        "send 120 messages a minute, so keep shoppers ≥ the messages of a minute / 110")
    p.add_argument("--slots", type=int, default=100, help="messages in flight in the closed loop")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the closed loop")
    p.add_argument("--rates", default="500,1000", help="fixed rates (messages/s), comma-separated")
    p.add_argument("--rate-seconds", type=float, default=10.0, help="length of each fixed-rate phase")
    p.add_argument("--drain-seconds", type=float, default=10.0,
                   help="how long to wait for acks and deliveries after the last send; later ones count as lost")
    p.add_argument("--client-procs", type=int, default=0,
                   help="client processes holding the widget sockets (0: one per 5,000 sockets, at least 2)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: connections, messages, ceiling")
    p.add_argument("--json", help="also write every figure to this file")
    p.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.rates = [float(x) for x in str(args.rates).split(",") if x.strip()]
    except ValueError:
        p.error("--rates: numbers separated by commas")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare_server:
        run_bare_server(args.bare_server)
        return 0
    started = time.perf_counter()
    print(f"chat bench — {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}", flush=True)
    n_widget_procs = args.client_procs or max(2, math.ceil(args.connections / PER_PROC_MAX))
    if math.ceil(args.connections / n_widget_procs) > PER_PROC_MAX + 500:
        raise SystemExit(f"--client-procs {n_widget_procs}: more than {PER_PROC_MAX} sockets per client process")
    result: dict[str, Any] = {"db": args.db, "connections_target": args.connections, "shoppers": args.shoppers,
                              "slots": args.slots, "rates": args.rates, "client_procs": n_widget_procs + 1}
    server = None
    scratch = None
    cl = None
    try:
        # --- the ShopDesk server, a merchant, a store, a supervisor and the agents ---------------
        n_agents = math.ceil(args.shoppers / AGENT_CAPACITY)
        if args.url:
            if not os.environ.get("SHOPDESK_DATABASE_URL"):
                raise SystemExit("--url needs SHOPDESK_DATABASE_URL (the server's database) to create the merchant, "
                                 "API key and staff with the CLI")
            url, server_pid = args.url.rstrip("/"), args.server_pid
            env = dict(os.environ)
            if not env.get("SHOPDESK_VAR_DIR"):
                scratch = env["SHOPDESK_VAR_DIR"] = tempfile.mkdtemp(prefix="shopdesk-bench-cli-")
            slug = f"chat{secrets.token_hex(3)}"
            af.cli(env, "merchants", "create", "--name", f"压测商家 {slug}", "--slug", slug)
            key = af.cli(env, "api-keys", "create", "--merchant", slug).splitlines()[-1].strip()
            is_pg = False
        else:
            server = af.ServerUnderTest(args.db, args.pg_url, jobs=False)
            creds = server.start()
            url, server_pid, key, slug = server.url, server.proc.pid, creds["key"], creds["slug"]
            env = dict(os.environ, SHOPDESK_DATABASE_URL=creds["database_url"], SHOPDESK_VAR_DIR=str(server.tmp))
            is_pg = args.db == "postgres"
            print(f"[shopdesk] server pid {server_pid} on {url}, {creds['database_url']}", flush=True)
        meter = af.CpuMeter(server_pid, is_pg)
        result["url"] = url
        t = time.perf_counter()
        supervisor = create_staff(env, slug, 1, "supervisor", 1)[0]
        agents = create_staff(env, slug, n_agents, "agent") if "messages" not in args.skip else []
        print(f"[shopdesk] created 1 supervisor and {len(agents)} agents with the CLI in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
        store = asyncio.run(make_store(url, key))
        sup_token = asyncio.run(login(url, *supervisor))
        ips = IpBlocks()
        cl = Clients(n_widget_procs + 1)
        widget_procs = list(range(n_widget_procs))
        agent_proc = n_widget_procs
        shop_procs = widget_procs[:max(1, min(len(widget_procs), math.ceil(args.shoppers / PER_PROC_MAX)))]
        if len(widget_procs) >= 2 and len(shop_procs) < 2 and args.shoppers >= 200:
            shop_procs = widget_procs[:2]

        # --- 1. connections held -------------------------------------------------------------------
        if "connections" not in args.skip:
            result["connections"] = phase_connections(cl, widget_procs, url, store, args.connections, ips,
                                                      server_pid, sup_token, "shopdesk")
        # --- 2. messages --------------------------------------------------------------------------
        if "messages" not in args.skip:
            time.sleep(1.0)
            result["messages"] = phase_messages(cl, shop_procs, agent_proc, url, args, mode="chat", store=store,
                                                logins=agents, ips=ips, meter=meter, label="shopdesk")
        result["server_rss_end"] = rss_bytes(server_pid)
    finally:
        if server is not None:
            server.stop(show_log=True)
            result["pg_stats"] = server.pg_stats
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    # --- 3. the ceiling: a bare server on the same stack, measured the same way -----------------------
    if "ceiling" not in args.skip and cl is not None:
        bare = BareServer()
        bare.start()
        try:
            ceil: dict[str, Any] = {}
            bmeter = af.CpuMeter(bare.proc.pid, False)
            print(f"[bare] server pid {bare.proc.pid} on {bare.url}", flush=True)
            if "connections" not in args.skip:
                ceil["connections"] = phase_connections(cl, widget_procs, bare.url, None, args.connections, ips,
                                                        bare.proc.pid, None, "bare")
            if "messages" not in args.skip:
                ceil["echo"] = phase_messages(cl, shop_procs, agent_proc, bare.url, args, mode="echo", store=None,
                                              logins=[], ips=ips, meter=bmeter, label="bare echo")
                ceil["relay"] = phase_messages(cl, shop_procs, agent_proc, bare.url, args, mode="relay", store=None,
                                               logins=[None] * n_agents, ips=ips, meter=bmeter, label="bare relay")
            result["ceiling"] = ceil
        finally:
            bare.stop()
    if cl is not None:
        cl.close()

    # --- report ---------------------------------------------------------------------------------
    print()
    print(f"=== ShopDesk chat, one `shopdesk serve --no-jobs` process on {args.db} ({result['url']}); "
          f"{result['client_procs']} client processes ===")
    if result.get("connections"):
        report_conn("connections held", result["connections"])
    if result.get("messages"):
        report_msgs("messages (shopper → stored → agent)", result["messages"])
    ceil = result.get("ceiling", {})
    if ceil:
        print("\n=== ceiling: bare Starlette app, uvicorn ws=websockets-sansio, same clients ===")
        if ceil.get("connections"):
            report_conn("connections held", ceil["connections"])
        if ceil.get("echo"):
            report_msgs("echo (the frame comes back: one round trip)", ceil["echo"])
        if ceil.get("relay"):
            report_msgs("relay (ack to the sender, message to the agent and the sender; no database)", ceil["relay"])
    if result.get("pg_stats"):
        ps = result["pg_stats"]
        print(f"\npg       whole run on the bench database: {ps['pg_commits']:,} commits, {ps['pg_rollbacks']:,} "
              f"rollbacks, {ps['pg_sessions']:,} sessions opened")
    verdict(result)
    print(f"\n(bench ran {time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
