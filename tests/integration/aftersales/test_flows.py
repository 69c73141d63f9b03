"""Each case type's happy path through the API, refunds settled by the manual provider."""
from shopdesk.jobs.runner import process_refunds
from tests.integration.aftersales.test_quote import line_id


async def settle_manual_refunds(shop, case: dict) -> dict:
    """Given a case in refunding, when the worker submits and an agent confirms each refund, then it completes."""
    assert await process_refunds() >= 1
    case = (await shop.get(f"/aftersales/{case['id']}")).json()
    assert case["refunds"] and all(r["status"] == "processing" for r in case["refunds"])
    for refund in case["refunds"]:
        r = await shop.post(f"/refunds/{refund['refund_no']}/confirm", {"reference": f"bank-{refund['refund_no']}"},
                            token=shop.agent_token)
        assert r.status_code == 200, r.text
    return (await shop.get(f"/aftersales/{case['id']}")).json()


async def create(shop, order, buyer, type_, reason, lines, **extra) -> dict:
    body = {"order_id": order["id"], "type": type_, "reason": reason,
            "lines": [{"order_line_id": line_id(order, sku), "quantity": q} for sku, q in lines], **extra}
    r = await shop.post("/aftersales", body, token=buyer)
    assert r.status_code == 201, r.text
    return r.json()


async def act(shop, case, action, body=None, token=None, status=200) -> dict:
    r = await shop.post(f"/aftersales/{case['id']}/{action}", body or {}, token=token)
    assert r.status_code == status, r.text
    return r.json()


async def test_refund_only_before_shipping_is_auto_approved_and_holds_the_lines(shop):
    order = await shop.order(shipped=False)
    buyer = await shop.shopper(order)
    case = await create(shop, order, buyer, "refund_only", "dont_want", [("A", 2), ("B", 1)])
    assert case["status"] == "refunding" and case["refund_fen"] == 23000
    assert [e["actor"] for e in case["events"]] == ["buyer", "system"]
    assert sorted(r["amount_fen"] for r in case["refunds"]) == [3000, 20000]
    r = await shop.post(f"/orders/{order['id']}/shipments", {"carrier": "sf", "tracking_no": "SF1",
                        "line_nos": ["1"], "shipped_at": "2026-11-06T13:00:00Z"})
    assert r.status_code == 409 and r.json()["code"] == "fulfilment_hold"
    case = await settle_manual_refunds(shop, case)
    assert case["status"] == "completed"
    assert [e["action"] for e in case["events"]][-1] == "refunds_settled"


async def test_return_refund_happy_path(shop):
    order = await shop.order()
    buyer = await shop.shopper(order)
    photo = await shop.photo(buyer)
    case = await create(shop, order, buyer, "return_refund", "quality", [("A", 1)], photo_ids=[photo],
                        description="左耳没声音")
    assert case["status"] == "requested" and case["deadline_action"] == "auto_approve"
    case = await act(shop, case, "approve", token=shop.agent_token)
    assert case["status"] == "awaiting_return" and case["return_address"]["city"] == "上海"
    case = await act(shop, case, "ship-return", {"carrier": "zhongtong", "tracking_no": "ZT123456", "postage_fen": 1200},
                     token=buyer)
    assert case["status"] == "awaiting_receipt"
    case = await act(shop, case, "receive", {"outcome": "ok", "note": "确认质量问题"}, token=shop.agent_token)
    assert case["status"] == "refunding" and case["refund_fen"] == 8800 + 1200
    case = await settle_manual_refunds(shop, case)
    assert case["status"] == "completed"
    assert sum(r["amount_fen"] for r in case["refunds"]) == 10000
    order_now = (await shop.get(f"/orders/{order['id']}")).json()
    assert order_now["lines"][0]["refunded_qty"] == 1


async def test_exchange_happy_path(shop):
    order = await shop.order()
    buyer = await shop.shopper(order)
    case = await create(shop, order, buyer, "exchange", "wrong_choice", [("A", 1)],
                        exchange_to=[{"sku": "A-RED", "quantity": 1}])
    assert case["buyer_pays_fen"] == 2200
    case = await act(shop, case, "approve", token=shop.agent_token)
    case = await act(shop, case, "ship-return", {"carrier": "yunda", "tracking_no": "YD0001"}, token=buyer)
    case = await act(shop, case, "receive", {"outcome": "ok"}, token=shop.agent_token)
    assert case["status"] == "awaiting_reship"
    case = await act(shop, case, "reship", {"carrier": "sf", "tracking_no": "SF0002"}, token=shop.agent_token)
    assert case["status"] == "awaiting_buyer_confirm" and case["deadline_action"] == "auto_confirm"
    case = await act(shop, case, "confirm", token=buyer)
    assert case["status"] == "completed" and case["refunds"] == []


async def test_reship_happy_path(shop):
    order = await shop.order()
    buyer = await shop.shopper(order)
    photo = await shop.photo(buyer)
    case = await create(shop, order, buyer, "reship", "missing_item", [("B", 1)], photo_ids=[photo])
    case = await act(shop, case, "approve", token=shop.agent_token)
    assert case["status"] == "awaiting_reship"
    case = await act(shop, case, "reship", {"carrier": "sf", "tracking_no": "SF0003"}, token=shop.agent_token)
    case = await act(shop, case, "confirm", token=buyer)
    assert case["status"] == "completed"


async def test_compensation_happy_path(shop):
    order = await shop.order()
    buyer = await shop.shopper(order)
    case = await create(shop, order, buyer, "compensation", "price_drop", [("A", 1)], amount_fen=1500)
    case = await act(shop, case, "approve", token=shop.agent_token)
    assert case["status"] == "refunding" and case["refund_fen"] == 1500
    case = await settle_manual_refunds(shop, case)
    assert case["status"] == "completed"


async def test_offer_reject_resubmit_escalate_and_ruling(shop, client):
    order = await shop.order()
    buyer = await shop.shopper(order)
    case = await create(shop, order, buyer, "return_refund", "wrong_choice", [("A", 1)])
    fee = {"deductions": [{"type": "negotiated_fee", "amount_fen": 1760, "note": "20% 服务费"}]}
    case = await act(shop, case, "approve", fee, token=shop.agent_token)
    assert case["status"] == "offer_pending" and case["refund_fen"] == 7040
    case = await act(shop, case, "decline-offer", token=buyer)
    assert case["status"] == "requested"
    case = await act(shop, case, "reject", {"reason": "商品已影响二次销售"}, token=shop.agent_token)
    assert case["status"] == "rejected" and case["deadline_action"] == "escalation_expired"
    body = {"order_id": order["id"], "type": "return_refund", "reason": "wrong_choice",
            "lines": [{"order_line_id": line_id(order, "A"), "quantity": 1}], "description": "包装完好"}
    case = await act(shop, case, "resubmit", body, token=buyer)
    assert case["status"] == "requested"
    case = await act(shop, case, "approve", fee, token=shop.agent_token)
    case = await act(shop, case, "accept-offer", token=buyer)
    assert case["status"] == "awaiting_return" and case["refund_fen"] == 7040

    order2 = await shop.order()
    buyer2 = await shop.shopper(order2)
    case2 = await create(shop, order2, buyer2, "return_refund", "no_reason_7d", [("B", 1)])
    case2 = await act(shop, case2, "reject", {"reason": "超出售后期限"}, token=shop.agent_token)
    case2 = await act(shop, case2, "escalate", {"note": "明明在七天内"}, token=buyer2)
    assert case2["status"] == "escalated"
    from shopdesk.accounts.actions import do_create_staff
    from shopdesk.core.db import transaction

    async with transaction() as session:
        await do_create_staff(session, merchant=None, email=f"op-{shop.slug}@platform.test", password="platform-1",
                              role="platform")
    op = (await client.post("/api/v1/auth/token", json={"email": f"op-{shop.slug}@platform.test",
                                                        "password": "platform-1"})).json()["token"]
    await act(shop, case2, "approve", token=op, status=403)
    case2 = await act(shop, case2, "rule", {"for": "buyer", "note": "签收记录显示在七天内"}, token=op)
    assert case2["status"] == "awaiting_return"
    assert case2["events"][-1]["actor"] == "platform"


async def test_wrong_actor_and_illegal_transition(shop):
    order = await shop.order()
    buyer = await shop.shopper(order)
    case = await create(shop, order, buyer, "return_refund", "no_reason_7d", [("A", 1)])
    r = await shop.post(f"/aftersales/{case['id']}/approve", {}, token=buyer)
    assert r.status_code == 403 and r.json()["code"] == "wrong_actor"
    r = await shop.post(f"/aftersales/{case['id']}/receive", {"outcome": "ok"}, token=shop.agent_token)
    assert r.status_code == 409 and r.json()["code"] == "illegal_transition"
    r = await shop.post(f"/aftersales/{case['id']}/approve", {"expected_version": 99}, token=shop.agent_token)
    assert r.status_code == 409 and r.json()["code"] == "version_conflict"


async def test_one_open_case_per_line_and_idempotency(shop):
    order = await shop.order()
    buyer = await shop.shopper(order)
    body = {"order_id": order["id"], "type": "return_refund", "reason": "no_reason_7d",
            "lines": [{"order_line_id": line_id(order, "A"), "quantity": 1}]}
    first = await shop.post("/aftersales", body, token=buyer, headers={"Idempotency-Key": "k1"})
    again = await shop.post("/aftersales", body, token=buyer, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 201 and first.json()["id"] == again.json()["id"]
    other = await shop.post("/aftersales", {**body, "description": "x"}, token=buyer, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"
    dup = await shop.post("/aftersales", body, token=buyer)
    assert dup.status_code == 422 and dup.json()["code"] == "line_has_open_case"


async def test_list_filters_and_search(shop):
    order = await shop.order()
    buyer = await shop.shopper(order)
    case = await create(shop, order, buyer, "return_refund", "no_reason_7d", [("A", 1)])
    await create(shop, order, buyer, "compensation", "price_drop", [("B", 1)], amount_fen=500)
    r = (await shop.get("/aftersales", params={"q": order["order_no"]})).json()
    assert {c["type"] for c in r["items"]} == {"return_refund", "compensation"}
    r = (await shop.get("/aftersales", params={"q": case["case_no"]})).json()
    assert [c["id"] for c in r["items"]] == [case["id"]]
    r = (await shop.get("/aftersales", params={"type": "compensation", "group": "pending_review"})).json()
    assert [c["type"] for c in r["items"]] == ["compensation"]
    r = (await shop.get("/aftersales", params={"limit": 1, "q": order["order_no"]})).json()
    assert len(r["items"]) == 1 and r["next_cursor"]
    r2 = (await shop.get("/aftersales", params={"limit": 1, "q": order["order_no"], "cursor": r["next_cursor"]})).json()
    assert r2["items"][0]["id"] != r["items"][0]["id"] and r2["next_cursor"] is None
    mine = (await shop.get("/aftersales", token=buyer)).json()
    assert len(mine["items"]) == 2


async def test_audit_log_records_money_and_case_changes(shop):
    order = await shop.order()
    buyer = await shop.shopper(order)
    case = await create(shop, order, buyer, "compensation", "price_drop", [("A", 1)], amount_fen=300)
    await act(shop, case, "approve", token=shop.agent_token)
    r = await shop.get("/audit-log", token=shop.admin_token, params={"object_id": case["id"]})
    assert [e["action"] for e in r.json()["items"]] == ["aftersales.approve", "aftersales.create"]
    refunds = (await shop.get("/audit-log", token=shop.admin_token, params={"action": "refund.create"})).json()
    assert sum(e["data"]["amount_fen"] for e in refunds["items"] if e["data"]["case_id"] == case["id"]) == 300
    assert (await shop.get("/audit-log", token=shop.agent_token)).status_code == 403


async def test_five_cases_per_line_over_its_life(shop):
    # Given a line whose buyer opened and cancelled five cases
    order = await shop.order()
    buyer = await shop.shopper(order)
    for _ in range(5):
        case = await create(shop, order, buyer, "return_refund", "no_reason_7d", [("A", 1)])
        await act(shop, case, "cancel", token=buyer)
    # When a sixth is asked for on that line, it is refused; the other line is unaffected
    body = {"order_id": order["id"], "type": "return_refund", "reason": "no_reason_7d",
            "lines": [{"order_line_id": line_id(order, "A"), "quantity": 1}]}
    r = await shop.post("/aftersales", body, token=buyer)
    assert r.status_code == 422 and r.json()["code"] == "line_case_limit"
    await create(shop, order, buyer, "return_refund", "no_reason_7d", [("B", 1)])


async def test_payment_provider_settings(shop):
    r = await shop.client.put("/api/v1/settings/payments", json={"providers": {"wechatpay": "sandbox"}},
                              headers=shop.h(shop.admin_token))
    assert r.status_code == 200 and r.json()["providers"] == {"wechatpay": "sandbox"}
    r = await shop.client.put("/api/v1/settings/payments", json={"providers": {"alipay": "paypal"}},
                              headers=shop.h(shop.admin_token))
    assert r.status_code == 422 and r.json()["field"] == "providers.alipay"
    r = await shop.client.put("/api/v1/settings/payments", json={"providers": {"alipay": "manual"}},
                              headers=shop.h(shop.agent_token))
    assert r.status_code == 403
    assert (await shop.get("/settings/payments")).json()["providers"] == {"wechatpay": "sandbox"}
    # and the next refund goes through the chosen provider
    order = await shop.order(shipped=False)
    case = await create(shop, order, await shop.shopper(order), "refund_only", "dont_want", [("B", 1)])
    assert {r["method"]: r["provider"] for r in [(await shop.get(f"/refunds/{x['refund_no']}")).json()
                                                 for x in case["refunds"]]} == {"wechatpay": "sandbox",
                                                                                "balance": "manual"}
