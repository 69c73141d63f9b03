"""Rulebook §4 worked examples through POST /aftersales/quote."""
import pytest


def line_id(order: dict, sku: str) -> str:
    return next(ln["id"] for ln in order["lines"] if ln["sku"] == sku)


async def test_o1_import_apportions_the_coupon(shop):
    order = await shop.order()
    assert [(ln["sku"], ln["discount_fen"], ln["paid_fen"]) for ln in order["lines"]] == [
        ("A", 2400, 17600), ("B", 600, 4400)]
    assert order["paid_total_fen"] == 23000


@pytest.mark.parametrize("type_, lines, shipped, expected", [
    ("refund_only", [("A", 2), ("B", 1)], False, 23000),
    ("refund_only", [("B", 1)], False, 4400),
    ("return_refund", [("A", 1)], True, 8800),
])
async def test_quote_vectors(shop, type_, lines, shipped, expected):
    order = await shop.order(shipped=shipped)
    body = {"order_id": order["id"], "type": type_, "reason": "dont_want" if not shipped else "no_reason_7d",
            "lines": [{"order_line_id": line_id(order, sku), "quantity": q} for sku, q in lines]}
    r = await shop.post("/aftersales/quote", body)
    assert r.status_code == 200, r.text
    assert r.json()["eligible"] is True
    assert r.json()["refund_fen"] == expected


async def test_quote_tenders_and_deductions(shop):
    order = await shop.order(gift=True)
    body = {"order_id": order["id"], "type": "return_refund", "reason": "no_reason_7d",
            "lines": [{"order_line_id": line_id(order, "A"), "quantity": 1}]}
    r = (await shop.post("/aftersales/quote", body)).json()
    assert r["tenders"] == [{"method": "wechatpay", "amount_fen": 7652}, {"method": "balance", "amount_fen": 1148}]
    body["deductions"] = [{"type": "gift_not_returned", "amount_fen": 1500, "note": "赠品未退"},
                          {"type": "lost_free_shipping", "amount_fen": 1000, "note": "不再满足包邮"}]
    assert (await shop.post("/aftersales/quote", body)).json()["refund_fen"] == 6300


async def test_quote_negotiated_fee_and_art17(shop, client):
    order = await shop.order()
    body = {"order_id": order["id"], "type": "return_refund", "reason": "quality",
            "lines": [{"order_line_id": line_id(order, "A"), "quantity": 1}],
            "deductions": [{"type": "negotiated_fee", "amount_fen": 1760, "note": "20% 服务费"}]}
    r = (await shop.post("/aftersales/quote", body)).json()
    assert r["refund_fen"] == 7040 and r["needs_consent"] is True
    r = await client.put("/api/v1/settings/aftersales", json={"art17_recalculation": True},
                         headers=shop.h(shop.admin_token))
    assert r.status_code == 200
    body = {"order_id": order["id"], "type": "return_refund", "reason": "no_reason_7d",
            "lines": [{"order_line_id": line_id(order, "A"), "quantity": 1}]}
    assert (await shop.post("/aftersales/quote", body)).json()["refund_fen"] == 7000


async def test_quote_exchange_difference(shop):
    order = await shop.order()
    body = {"order_id": order["id"], "type": "exchange", "reason": "wrong_choice",
            "lines": [{"order_line_id": line_id(order, "A"), "quantity": 1}],
            "exchange_to": [{"sku": "A-RED", "quantity": 1}]}
    r = (await shop.post("/aftersales/quote", body)).json()
    assert r["buyer_pays_fen"] == 2200 and r["refund_fen"] == 0
