"""Concurrency: one transition out of 50 approvals; one case out of 20 creations on the same line."""
import asyncio

from tests.integration.aftersales.test_flows import create
from tests.integration.aftersales.test_quote import line_id


async def test_fifty_simultaneous_approvals_make_one_transition(shop):
    order = await shop.order()
    buyer = await shop.shopper(order)
    case = await create(shop, order, buyer, "return_refund", "no_reason_7d", [("A", 1)])
    results = await asyncio.gather(*(shop.post(f"/aftersales/{case['id']}/approve", {}, token=shop.agent_token)
                                     for _ in range(50)))
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) == 1 and codes.count(409) == 49, codes
    assert {r.json()["code"] for r in results if r.status_code == 409} <= {"illegal_transition", "version_conflict"}
    case = (await shop.get(f"/aftersales/{case['id']}")).json()
    assert [e["action"] for e in case["events"]] == ["create", "approve"]
    assert case["version"] == 2


async def test_twenty_simultaneous_creations_on_one_line_make_one_case(shop):
    order = await shop.order()
    buyer = await shop.shopper(order)
    body = {"order_id": order["id"], "type": "return_refund", "reason": "no_reason_7d",
            "lines": [{"order_line_id": line_id(order, "A"), "quantity": 1}]}
    results = await asyncio.gather(*(shop.post("/aftersales", body, token=buyer) for _ in range(20)))
    codes = [r.status_code for r in results]
    assert codes.count(201) == 1, codes
    assert all(r.json()["code"] == "line_has_open_case" for r in results if r.status_code != 201)
    listed = (await shop.get("/aftersales", params={"q": order["order_no"]})).json()["items"]
    assert len(listed) == 1
