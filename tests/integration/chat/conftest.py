"""Chat tests: real `shopdesk serve` processes on loopback, real WebSocket clients, the session's database."""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from shopdesk.accounts.actions import do_create_staff, merchant_by_slug
from shopdesk.core.db import transaction
from shopdesk.core.security import hmac_hex
from tests.conftest import ARTIFACTS, REQUIRE
from tests.factories import Shop, make_shop

ROOT = Path(__file__).resolve().parents[3]
REDIS_URL = os.environ.get("SHOPDESK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def pytest_configure(config):
    config.addinivalue_line("markers", "redis: needs the Redis server (fails instead of skipping in CI)")


@pytest.fixture(autouse=True)
def frozen_clock():
    """The servers run on the real clock, so these tests do too (tokens minted here must be valid there)."""
    from shopdesk.core.clock import clock
    from shopdesk.core.ratelimit import reset

    clock.reset()
    reset()
    yield clock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `shopdesk serve` process on the test session's database."""

    def __init__(self, name: str, jobs: bool = False, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log_path = ARTIFACTS / f"chat-server-{name}.log"
        full_env = {**os.environ, "SHOPDESK_BASE_URL": self.url, "SHOPDESK_RUN_JOBS_IN_PROCESS": "0", **env}
        command = [str(Path(sys.executable).parent / "shopdesk"), "serve", "--host", "127.0.0.1", "--port",
                   str(self.port), "--jobs" if jobs else "--no-jobs"]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the chat server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the chat server did not answer /healthz within 30 s; see {self.log_path}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def chat_server():
    server = Server("single")
    yield server
    server.stop()


def redis_reachable() -> bool:
    try:
        host_port = REDIS_URL.split("://", 1)[1].split("/", 1)[0]
        host, _, port = host_port.rpartition(":")
        socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=1).close()
        return True
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def redis_nodes():
    """Two server processes that share the chat through Redis; required in CI (SHOPDESK_TEST_REQUIRE_SERVICES=1)."""
    if not redis_reachable():
        if REQUIRE:
            pytest.fail(f"Redis is required (SHOPDESK_TEST_REQUIRE_SERVICES=1) but {REDIS_URL} is not reachable")
        pytest.skip(f"no Redis at {REDIS_URL} (`make services` starts it): the two-node chat test is skipped")
    nodes = [Server("node-a", SHOPDESK_REDIS_URL=REDIS_URL), Server("node-b", SHOPDESK_REDIS_URL=REDIS_URL)]
    yield nodes
    for node in nodes:
        node.stop()


@pytest.fixture
async def api(chat_server):
    async with httpx.AsyncClient(base_url=chat_server.url, timeout=30) as client:
        yield client


@pytest.fixture
async def chat_shop(api) -> Shop:
    return await make_shop(api)


class Sock:
    """A WebSocket client that keeps every frame it received, so tests can wait for one in particular."""

    def __init__(self, ws, name: str = "") -> None:
        self.ws, self.name = ws, name
        self.buffer: list[dict] = []
        self.log: list[dict] = []

    async def send(self, **frame) -> None:
        await self.ws.send(json.dumps(frame))

    async def send_raw(self, data) -> None:
        await self.ws.send(data)

    async def _recv(self, timeout: float) -> dict:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.log.append(frame)
        return frame

    async def expect(self, type_: str, timeout: float = 5.0, **match) -> dict:
        """The first frame of this type (and these top-level values), waiting up to timeout seconds."""
        def fits(f: dict) -> bool:
            return f.get("type") == type_ and all(f.get(k) == v for k, v in match.items())

        for i, f in enumerate(self.buffer):
            if fits(f):
                return self.buffer.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: no {type_} {match or ''} within {timeout} s; got {self.buffer}")
            try:
                f = await self._recv(left)
            except asyncio.TimeoutError:
                continue
            if fits(f):
                return f
            self.buffer.append(f)

    async def expect_where(self, type_: str, pred, timeout: float = 5.0) -> dict:
        for i, f in enumerate(self.buffer):
            if f.get("type") == type_ and pred(f):
                return self.buffer.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: no matching {type_} within {timeout} s; got {self.buffer}")
            try:
                f = await self._recv(left)
            except asyncio.TimeoutError:
                continue
            if f.get("type") == type_ and pred(f):
                return f
            self.buffer.append(f)

    async def drain(self, timeout: float = 0.5) -> list[dict]:
        """Everything that arrives within timeout seconds (and what was buffered)."""
        out, self.buffer = self.buffer, []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(await self._recv(left))
            except asyncio.TimeoutError:
                break
        return out

    async def closed_with(self, timeout: float = 5.0) -> int:
        """Read until the server closes the socket; return the close code."""
        from websockets.exceptions import ConnectionClosed

        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.buffer.append(await self._recv(deadline - time.monotonic()))
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else 1006
        except asyncio.TimeoutError:
            pass
        raise AssertionError(f"{self.name}: the socket was not closed within {timeout} s")

    async def close(self) -> None:
        await self.ws.close()


class Sockets:
    def __init__(self) -> None:
        self.open: list[Sock] = []

    async def __call__(self, server, token: str, name: str = "", hello: bool = True) -> Sock:
        # An unbounded client queue: frames a test never reads must not stall the closing handshake.
        ws = await connect(f"{server.ws_url}?token={token}&v=1", max_size=None, max_queue=None, open_timeout=10)
        sock = Sock(ws, name)
        self.open.append(sock)
        if hello:
            sock.hello = await sock.expect("hello")
        return sock

    async def close_all(self) -> None:
        for sock in self.open:
            try:
                await sock.close()
            except Exception:
                pass


@pytest.fixture
async def sockets():
    opened = Sockets()
    yield opened
    await opened.close_all()


@dataclass
class Agent:
    staff_id: str
    token: str
    name: str


async def add_agent(shop: Shop, api: httpx.AsyncClient, name: str | None = None) -> Agent:
    """Create a staff login for the shop through the accounts action and log in over the API."""
    email = f"a{secrets.token_hex(4)}@{shop.slug}.test"
    async with transaction() as session:
        merchant = await merchant_by_slug(session, shop.slug)
        staff = await do_create_staff(session, merchant=merchant, email=email, password="agent-pass-1", role="agent",
                                      name=name or email.split("@")[0])
        staff_id, staff_name = staff.id, staff.name
    r = await api.post("/api/v1/auth/token", json={"email": email, "password": "agent-pass-1"})
    assert r.status_code == 200, r.text
    return Agent(staff_id, r.json()["token"], staff_name)


async def presence(api: httpx.AsyncClient, agent: Agent | str, status: str = "online", capacity: int | None = None):
    token = agent.token if isinstance(agent, Agent) else agent
    body = {"status": status} if capacity is None else {"status": status, "capacity": capacity}
    r = await api.put("/api/v1/agents/me/presence", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return r.json()


async def widget(api: httpx.AsyncClient, shop: Shop, **body) -> dict:
    r = await api.post("/api/v1/widget/sessions", json={"store": "main", "merchant": shop.slug, **body})
    assert r.status_code == 200, r.text
    return r.json()


async def store_secret(shop: Shop) -> str:
    r = await shop.get("/stores")
    return next(s["identity_secret"] for s in r.json()["items"] if s["code"] == "main")


def sign(secret: str, external_id: str) -> str:
    return hmac_hex(secret, external_id)


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}
