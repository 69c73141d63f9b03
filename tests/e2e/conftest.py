"""Browser tests: the real server in a subprocess on the test session's database, driven by Debian's Chromium."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from tests.conftest import ARTIFACTS, REQUIRE
from tests.factories import Shop, make_shop

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("SHOPDESK_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run",
                 # Video calls: a fake camera and microphone, no permission prompt, and host ICE candidates
                 # as plain loopback addresses (mDNS names cannot be resolved inside the test machine).
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 "--disable-features=WebRtcHideLocalIpsWithMdns"]
SCREENSHOTS = ARTIFACTS / "screenshots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def frozen_clock():
    """Replace the suite's frozen clock: the server subprocess runs on the real one, so the test does too."""
    from shopdesk.core.clock import clock
    from shopdesk.core.ratelimit import reset

    clock.reset()
    reset()
    yield clock


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def live_server():
    """Run `shopdesk serve` on the database this test session uses; yield its base URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / "live-server.log"
    env = {**os.environ, "SHOPDESK_BASE_URL": url, "SHOPDESK_RUN_JOBS_IN_PROCESS": "0"}
    command = [str(Path(sys.executable).parent / "shopdesk"), "serve", "--host", "127.0.0.1", "--port", str(port),
               "--no-jobs"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the live server exited with {proc.returncode}; see {log_path}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the live server did not answer /healthz within 30 s; see {log_path}")
            time.sleep(0.1)
        # The pages load htmx and Alpine from /vendor (node_modules): without them every form is dead.
        vendor = httpx.get(f"{url}/vendor/htmx.org/dist/htmx.min.js", timeout=5)
        if vendor.status_code != 200:
            pytest.fail(f"/vendor/htmx.org is missing ({vendor.status_code}): run `make setup` (npm install)")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
async def browser():
    """Start one headless Chromium for the whole session (never a downloaded build)."""
    if not Path(CHROMIUM).exists():
        if REQUIRE:
            pytest.fail(f"chromium is required (SHOPDESK_TEST_REQUIRE_SERVICES=1) but {CHROMIUM} is missing")
        pytest.skip(f"no chromium at {CHROMIUM} (`make chromium` installs it): browser tests skipped")
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=10_000)
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def api(live_server):
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as client:
        yield client


@pytest.fixture
async def live_shop(api) -> Shop:
    return await make_shop(api)


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


async def live_order(shop: Shop, *, shipped: bool = True, signed: bool = True) -> dict:
    """Import rulebook order O1 dated against the real clock: paid 3 days ago, shipped 2, signed 1."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    external_id = f"e2e-{secrets.token_hex(4)}"
    lines = [{"line_no": "1", "sku": "A", "name": "蓝牙耳机", "quantity": 2, "unit_price_fen": 10000},
             {"line_no": "2", "sku": "B", "name": "耳机保护套", "quantity": 1, "unit_price_fen": 5000}]
    body = {
        "store": "main", "order_no": f"E{secrets.token_hex(4).upper()}",
        "customer": {"external_id": external_id, "name": "张三", "phone": "13800000000"},
        "placed_at": _iso(now - timedelta(days=3)), "paid_at": _iso(now - timedelta(days=3)), "lines": lines,
        "discounts": [{"kind": "coupon", "label": "满200减30", "amount_fen": 3000}], "shipping_fee_fen": 1000,
        "payments": [{"method": "wechatpay", "amount_fen": 20000, "trade_no": f"wx{secrets.token_hex(6)}"},
                     {"method": "balance", "amount_fen": 3000, "trade_no": f"bal{secrets.token_hex(6)}"}],
        "shipping_address": {"name": "张三", "phone": "13800000000", "province": "北京", "city": "北京",
                             "district": "朝阳区", "detail": "建国路 1 号"},
        "shipments": [{"carrier": "yuantong", "tracking_no": f"YT{secrets.token_hex(5)}", "line_nos": ["1", "2"],
                       "shipped_at": _iso(now - timedelta(days=2)),
                       "signed_at": _iso(now - timedelta(days=1)) if signed else None}] if shipped else [],
    }
    r = await shop.post("/orders", body)
    assert r.status_code == 201, r.text
    return {**r.json(), "external_id": external_id}


async def shopper_token(shop: Shop, order: dict) -> str:
    """Mint a shopper token the way a shop does for its logged-in user (no lookup rate limit)."""
    r = await shop.post(f"/customers/{order['external_id']}/token")
    assert r.status_code == 200, r.text
    return r.json()["token"]


async def api_case(shop: Shop, order: dict, type_: str = "return_refund", reason: str = "no_reason_7d",
                   **extra) -> dict:
    """Open a case through the API, for tests whose subject is a later step."""
    token = await shopper_token(shop, order)
    line = next(ln["id"] for ln in order["lines"] if ln["sku"] == "A")
    body = {"order_id": order["id"], "type": type_, "reason": reason,
            "lines": [{"order_line_id": line, "quantity": 1}], **extra}
    r = await shop.post("/aftersales", body, token=token)
    assert r.status_code == 201, r.text
    return r.json()


def png(width: int = 96, height: int = 96, rgb: tuple[int, int, int] = (70, 110, 200)) -> bytes:
    """Draw a small gradient PNG, so thumbnails look like photos in screenshots."""
    rows = b"".join(b"\x00" + bytes(c for x in range(width) for c in (
        min(255, rgb[0] + x), min(255, rgb[1] + y), rgb[2])) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


class Browsers:
    """Open pages in fresh browser contexts (a shopper and an agent never share cookies)."""

    def __init__(self, browser, url: str):
        self.browser, self.url, self.contexts, self.errors = browser, url, [], []

    async def page(self, *, phone: bool = False, lang: str = "zh-CN"):
        context = await self.browser.new_context(
            base_url=self.url, locale=lang, viewport=PHONE if phone else DESKTOP, timezone_id="Asia/Shanghai",
            device_scale_factor=2 if phone else 1, is_mobile=phone, has_touch=phone)
        context.set_default_timeout(10_000)
        self.contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
        page.on("dialog", lambda dialog: dialog.accept())
        return page

    async def shopper(self, shop: Shop, order: dict, *, phone: bool = False, next: str | None = None):
        page = await self.page(phone=phone)
        token = await shopper_token(shop, order)
        await page.goto(f"/shop/enter?token={token}&next={next or '/shop/orders/' + order['id']}")
        return page

    async def staff(self, shop: Shop, *, email: str | None = None, password: str = "agent-pass-1"):
        page = await self.page()
        await page.goto("/console/login")
        await page.fill("#email", email or shop.agent_email)
        await page.fill("#password", password)
        await page.click("button[type=submit]")
        await page.wait_for_url("**/console/cases")
        return page

    async def close(self):
        for context in self.contexts:
            await context.close()


@pytest.fixture
async def browsers(browser, live_server):
    opened = Browsers(browser, live_server)
    yield opened
    await opened.close()
    assert opened.errors == [], "JavaScript errors on the pages"


async def snap(page, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    # A page scrolled to an anchor would draw its sticky header mid-image in a full-page shot.
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(path), full_page=True, animations="disabled")
    return path
