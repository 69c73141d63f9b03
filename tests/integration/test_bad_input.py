"""Bad input gets a 4xx naming the field, and nothing is written."""
import pytest
from sqlalchemy import func, select

from shopdesk.core.db import transaction
from shopdesk.models import metadata
from tests.integration.aftersales.test_quote import line_id
from tests.factories import PNG


async def row_counts() -> dict:
    async with transaction() as session:
        return {name: (await session.execute(select(func.count()).select_from(table))).scalar_one()
                for name, table in metadata.tables.items()}


def order_body(**changes) -> dict:
    body = {"store": "main", "order_no": "BAD1", "customer": {"external_id": "bad", "name": "坏人"},
            "placed_at": "2026-11-01T10:00:00Z",
            "lines": [{"line_no": "1", "sku": "A", "name": "耳机", "quantity": 1, "unit_price_fen": 10000}],
            "payments": [{"method": "wechatpay", "amount_fen": 10000}]}
    body.update(changes)
    return body


async def test_bad_orders(shop, client):
    before = await row_counts()
    cases = [
        (b"{not json", "body", 400),
        (order_body(lines=[{"line_no": "1", "sku": "A", "name": "耳机", "quantity": "two", "unit_price_fen": 1}]),
         "lines.0.quantity", 422),
        (order_body(lines=[{"line_no": "1", "sku": "A", "name": "耳机", "quantity": -1, "unit_price_fen": 1}]),
         "lines.0.quantity", 422),
        (order_body(payments=[{"method": "wechatpay", "amount_fen": 9999}]), "payments", 422),
        (order_body(placed_at="yesterday"), "placed_at", 422),
        (order_body(store="nope"), "store", 422),
        (order_body(shipments=[{"carrier": "sf", "tracking_no": "1", "line_nos": ["9"],
                                "shipped_at": "2026-11-02T00:00:00Z"}]), "shipments[0].line_nos", 422),
    ]
    for body, field, status in cases:
        kw = {"content": body, "headers": {**shop.h(), "Content-Type": "application/json"}} if isinstance(body, bytes) \
            else {"json": body, "headers": shop.h()}
        r = await client.post("/api/v1/orders", **kw)
        assert r.status_code == status, (field, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["field"] == field, r.json()
    assert await row_counts() == before


@pytest.mark.parametrize("lines, field, code", [
    ([{"order_line_id": "A", "quantity": 0}], "lines.0.quantity", "validation_failed"),
    ([{"order_line_id": "A", "quantity": 3}], "lines[0].quantity", "quantity_exceeds_available"),
    ([{"order_line_id": "A", "quantity": 10**9}], "lines.0.quantity", "validation_failed"),
    ([{"order_line_id": "nope", "quantity": 1}], "lines[0].order_line_id", "unknown_line"),
    ([], "lines", "validation_failed"),
])
async def test_bad_cases(shop, lines, field, code):
    order = await shop.order()
    buyer = await shop.shopper(order)
    for ln in lines:
        if ln["order_line_id"] == "A":
            ln["order_line_id"] = line_id(order, "A")
    before = await row_counts()
    r = await shop.post("/aftersales", {"order_id": order["id"], "type": "return_refund", "reason": "no_reason_7d",
                                        "lines": lines}, token=buyer)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and r.json()["code"] == code
    assert await row_counts() == before


async def test_bad_case_action_bodies(shop):
    order = await shop.order()
    buyer = await shop.shopper(order)
    r = await shop.post("/aftersales", {"order_id": order["id"], "type": "return_refund", "reason": "no_reason_7d",
                                        "lines": [{"order_line_id": line_id(order, "A"), "quantity": 1}]}, token=buyer)
    case = r.json()
    before = await row_counts()
    bad = [("approve", {"deductions": [{"type": "bribe", "amount_fen": 1}]}, "deductions.0.type"),
           ("approve", {"deductions": [{"type": "gift_not_returned", "amount_fen": 500}]}, "deductions[0].amount_fen"),
           ("approve", {"deductions": [{"type": "negotiated_fee", "amount_fen": 100}]}, "deductions[0].type"),
           ("reject", {"reason": ""}, "reason"), ("reject", {"reason": 5}, "reason")]
    for action, body, field in bad:
        r = await shop.post(f"/aftersales/{case['id']}/{action}", body, token=shop.agent_token)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field, r.json()
    r = await shop.client.post(f"/api/v1/aftersales/{case['id']}/approve", content=b"{oops",
                               headers={**shop.h(shop.agent_token), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "malformed_json" and r.json()["field"] == "body"
    assert await row_counts() == before


async def test_uploads_are_checked_by_content_and_size(shop, client):
    before = await row_counts()
    r = await client.post("/api/v1/uploads", files={"file": ("photo.jpg", b"just some text, not a picture", "image/jpeg")},
                          headers=shop.h())
    assert r.status_code == 415 and r.json()["field"] == "file"
    big = b"\xff\xd8\xff\xe0" + b"\0" * (11 * 1024 * 1024)
    r = await client.post("/api/v1/uploads", files={"file": ("big.jpg", big, "image/jpeg")}, headers=shop.h())
    assert r.status_code == 413 and r.json()["field"] == "file"
    assert await row_counts() == before
    r = await client.post("/api/v1/uploads", files={"file": ("renamed.txt", PNG, "text/plain")}, headers=shop.h())
    assert r.status_code == 201 and r.json()["content_type"] == "image/png"


async def test_limits_and_cursors(shop):
    assert (await shop.get("/aftersales", params={"limit": 101})).json()["field"] == "limit"
    assert (await shop.get("/aftersales", params={"cursor": "%%%"})).json()["field"] == "cursor"
    assert (await shop.get("/aftersales", params={"group": "bogus"})).json()["field"] == "group"
