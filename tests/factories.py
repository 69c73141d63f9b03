"""Build test state through the same actions and API a merchant uses."""
from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field

import httpx

from shopdesk.accounts.actions import do_create_api_key, do_create_merchant, do_create_staff
from shopdesk.core.db import transaction

SHIPPED = "2026-11-02T08:00:00Z"
SIGNED = "2026-11-04T09:00:00Z"
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
       b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")
RETURN_ADDRESS = {"name": "售后仓", "phone": "021-5555 0000", "province": "上海", "city": "上海",
                  "district": "青浦区", "detail": "华新镇 88 号 售后组"}


@dataclass
class Shop:
    client: httpx.AsyncClient
    slug: str
    key: str
    agent_token: str
    admin_token: str
    agent_email: str
    counter: list[int] = field(default_factory=lambda: [0])

    def h(self, token: str | None = None) -> dict:
        return {"Authorization": f"Bearer {token or self.key}"}

    async def post(self, path: str, body: dict | None = None, token: str | None = None, **kw) -> httpx.Response:
        return await self.client.post(f"/api/v1{path}", json=body, headers={**self.h(token), **kw.pop("headers", {})},
                                      **kw)

    async def get(self, path: str, token: str | None = None, **kw) -> httpx.Response:
        return await self.client.get(f"/api/v1{path}", headers=self.h(token), **kw)

    async def order(self, *, shipped: bool = True, signed: bool = True, gift: bool = False,
                    external_id: str | None = None, email: str = "") -> dict:
        """Import order O1 of the rulebook (A = 2 × 100.00, B = 50.00, coupon −30, shipping 10)."""
        self.counter[0] += 1
        lines = [
            {"line_no": "1", "sku": "A", "name": "蓝牙耳机", "quantity": 2, "unit_price_fen": 10000},
            {"line_no": "2", "sku": "B", "name": "耳机保护套", "quantity": 1, "unit_price_fen": 5000},
        ]
        if gift:
            lines.append({"line_no": "3", "sku": "GIFT", "name": "赠品挂绳", "quantity": 1, "unit_price_fen": 0,
                          "is_gift": True, "declared_value_fen": 1500})
        body = {
            "store": "main", "order_no": f"T{self.counter[0]:04d}",
            "customer": {"external_id": external_id or f"u{self.counter[0]}", "name": "张三",
                         "phone": "13800000000", "email": email},
            "placed_at": "2026-11-01T10:00:00Z", "paid_at": "2026-11-01T10:01:00Z", "lines": lines,
            "discounts": [{"kind": "coupon", "label": "满200减30", "amount_fen": 3000}], "shipping_fee_fen": 1000,
            "payments": [{"method": "wechatpay", "amount_fen": 20000, "trade_no": f"wx{secrets.token_hex(6)}"},
                         {"method": "balance", "amount_fen": 3000, "trade_no": f"bal{secrets.token_hex(6)}"}],
            "shipping_address": {"name": "张三", "phone": "13800000000", "province": "北京", "city": "北京",
                                 "district": "朝阳区", "detail": "建国路 1 号"},
            "shipments": [{"carrier": "yuantong", "tracking_no": f"YT{secrets.token_hex(5)}",
                           "line_nos": [ln["line_no"] for ln in lines], "shipped_at": SHIPPED,
                           "signed_at": SIGNED if signed else None}] if shipped else [],
        }
        r = await self.post("/orders", body)
        assert r.status_code == 201, r.text
        return r.json()

    async def shopper(self, order: dict) -> str:
        r = await self.client.post("/api/v1/shopper/lookup",
                                   json={"store": "main", "order_no": order["order_no"], "phone": "13800000000",
                                         "merchant": self.slug})
        assert r.status_code == 200, r.text
        return r.json()["token"]

    async def photo(self, token: str) -> str:
        r = await self.client.post("/api/v1/uploads", files={"file": ("a.png", PNG, "image/png")},
                                   headers=self.h(token))
        assert r.status_code == 201, r.text
        return r.json()["id"]


async def make_shop(client: httpx.AsyncClient) -> Shop:
    slug = f"m{secrets.token_hex(4)}"
    async with transaction() as session:
        merchant = await do_create_merchant(session, name=f"测试商家 {slug}", slug=slug)
        key = await do_create_api_key(session, merchant)
        agent_email, admin_email = f"agent@{slug}.test", f"admin@{slug}.test"
        await do_create_staff(session, merchant=merchant, email=agent_email, password="agent-pass-1", role="agent")
        await do_create_staff(session, merchant=merchant, email=admin_email, password="admin-pass-1", role="admin")
    tokens = []
    for email, pw in ((agent_email, "agent-pass-1"), (admin_email, "admin-pass-1")):
        r = await client.post("/api/v1/auth/token", json={"email": email, "password": pw})
        assert r.status_code == 200, r.text
        tokens.append(r.json()["token"])
    shop = Shop(client, slug, key, tokens[0], tokens[1], agent_email)
    r = await shop.post("/stores", {"code": "main", "name": "旗舰店", "platform": "own_site"})
    assert r.status_code == 201, r.text
    for sku, name, price in (("A", "蓝牙耳机", 10000), ("A-RED", "蓝牙耳机 红色", 11000), ("B", "耳机保护套", 5000),
                             ("GIFT", "赠品挂绳", 0)):
        r = await shop.post("/products", {"sku": sku, "name": name, "category": "数码", "price_fen": price})
        assert r.status_code == 201, r.text
    r = await client.put("/api/v1/settings/aftersales", json={"return_address": RETURN_ADDRESS},
                         headers=shop.h(shop.admin_token))
    assert r.status_code == 200, r.text
    return shop


async def add_agent(shop: Shop, name: str, role: str = "agent") -> str:
    """Add a staff member to the shop's merchant; return their id."""
    from sqlalchemy import select

    from shopdesk.accounts.models import Merchant

    async with transaction() as session:
        merchant = (await session.execute(select(Merchant).where(Merchant.slug == shop.slug))).scalar_one()
        staff = await do_create_staff(session, merchant=merchant, email=f"{name}@{shop.slug}.test",
                                      password="agent-pass-1", role=role, name=name)
        await session.flush()
        return staff.id


@contextlib.contextmanager
def count_queries():
    """Collect the SQL statements this process sends (transaction control left out) while the block runs."""
    from sqlalchemy import event

    from shopdesk.core.db import get_engine

    seen: list[str] = []

    def before(conn, cursor, statement, *args):
        if not statement.lstrip().upper().startswith(("BEGIN", "PRAGMA", "ROLLBACK", "COMMIT")):
            seen.append(statement)

    engine = get_engine().sync_engine
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)
