"""Isolation: every API route with a resource id, called with another merchant's key or another shopper's token, is 404."""
import re

from tests.integration.aftersales.test_flows import act, create

# Called by outside systems and authenticated by their signatures, not by a token (tested in their own files).
PUBLIC = {"/api/v1/payments/notify/{provider_name}", "/api/v1/hooks/cti/{store}", "/api/v1/hooks/wechat/{store}"}
# Routes whose path names a setting of the caller's own merchant (PUT creates it): nothing of another to hide.
OWN_SCOPE = {"/api/v1/settings/calendars/{name}", "/api/v1/settings/sla-policies/{name}",
             "/api/v1/settings/ticket-rules/{name}", "/api/v1/settings/wechat/{store}"}


async def build_objects(shop) -> dict:
    order = await shop.order()
    buyer = await shop.shopper(order)
    photo = await shop.photo(buyer)
    case = await create(shop, order, buyer, "compensation", "price_drop", [("A", 1)], amount_fen=100)
    case = await act(shop, case, "approve", token=shop.agent_token)
    chat = await build_chat(shop)
    ticket = (await shop.post("/tickets", {"subject": "耳机没声音", "channel": "web", "order_id": order["id"]},
                              buyer)).json()
    task = await build_task(shop)
    view = (await shop.post("/inbox/views", {"name": "iso", "filters": {}}, shop.agent_token)).json()
    call = await build_call(shop)
    return {"ticket_id": ticket["id"], "task_id": task, "name": "iso-macro", "view_id": view["id"], "call_id": call, "case_id": case["id"], "order_id": order["id"], "refund_no": case["refunds"][0]["refund_no"],
            "upload_id": photo, "external_id": order["customer_id"], "buyer": buyer, **chat}


async def build_call(shop) -> str:
    """A call the PBX reported (signed), as the call log's id."""
    from tests.integration.tickets.test_phone_hook import cti, secret_of

    r = await cti(shop, await secret_of(shop), {"event": "ringing", "call_id": "iso-call", "caller": "13800000000"})
    assert r.status_code == 200, r.text
    calls = (await shop.get("/calls")).json()["items"]
    return calls[0]["id"]


async def build_task(shop) -> str:
    """A revisit task of a solved ticket, and a macro named iso-macro."""
    h = shop.h(shop.admin_token)
    await shop.client.put("/api/v1/settings/tickets", json={"followup": {"revisit_after_hours": 24}}, headers=h)
    await shop.client.put("/api/v1/settings/ticket-rules/iso-macro", json={
        "kind": "macro", "actions": [{"type": "add_tags", "tags": ["x"]}]}, headers=h)
    solved = (await shop.post("/tickets", {"subject": "已解决的问题"})).json()
    await shop.client.patch(f"/api/v1/tickets/{solved['id']}", json={"status": "solved"}, headers=h)
    tasks = (await shop.get("/ticket-tasks", shop.admin_token)).json()["items"]
    return next(t["id"] for t in tasks if t["ticket_id"] == solved["id"])


async def build_chat(shop) -> dict:
    """A 留言 conversation with an image in it, through the chat actions."""
    from shopdesk.chat.actions import do_save_attachment, do_send_message, do_start_widget_session, resolve_actor
    from shopdesk.core.db import sessionmaker
    from tests.factories import PNG

    widget = await do_start_widget_session(store="main", merchant=shop.slug)
    async with sessionmaker()() as session:
        visitor = await resolve_actor(session, widget["token"])
    attachment = await do_save_attachment(visitor, PNG)
    sent = await do_send_message(visitor, client_msg_id="iso-1", text="有人吗", attachment_id=attachment.id)
    # The console's objects: a canned reply, a blocked (other) visitor, the staff room.
    from shopdesk.chat.actions import do_block, do_create_canned
    from shopdesk.chat.rooms import rooms_of

    async with sessionmaker()() as session:
        agent = await resolve_actor(session, shop.agent_token)
        room = (await rooms_of(session, agent))[0]
    canned = await do_create_canned(agent, shortcut="iso", text="您好", shared=False)
    pest = await do_start_widget_session(store="main", merchant=shop.slug)
    block = await do_block(agent, visitor_id=pest["visitor_id"])
    return {"conversation_id": sent.ack["conversation_id"], "attachment_id": attachment.id,
            "visitor_id": widget["visitor_id"], "canned_id": canned["id"], "block_id": block["id"],
            "room_id": room["id"]}


def id_routes(app) -> list[tuple[str, str]]:
    """Every API route that names a resource, read from the app's own OpenAPI document."""
    out = []
    for path, methods in app.openapi()["paths"].items():
        if path.startswith("/api/v1") and "{" in path and path not in PUBLIC | OWN_SCOPE:
            out.extend((method.upper(), path) for method in methods)
    return sorted(out)


def fill(path: str, objects: dict, action: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: action if m.group(1) == "action" else objects[m.group(1)], path)


# A valid body for each action, so the call reaches the access check (a bad body is 422 for anyone).
ACTIONS = {"approve": {}, "reject": {"reason": "x"}, "accept-offer": {}, "decline-offer": {},
           "ship-return": {"carrier": "sf", "tracking_no": "SF0001"}, "receive": {"outcome": "ok"}, "repaired": {},
           "reship": {"carrier": "sf", "tracking_no": "SF0002"}, "confirm": {}, "cancel": {}, "escalate": {},
           "rule": {"for": "buyer"}, "retry-refund": {}}
BODIES = {"/api/v1/refunds/{refund_no}/confirm": {"reference": "r"},
          "/api/v1/refunds/{refund_no}/resolve": {"status": "succeeded"},
          "/api/v1/orders/{order_id}/shipments": {"carrier": "sf", "tracking_no": "SF3", "line_nos": ["2"],
                                                  "shipped_at": "2026-11-06T12:00:00Z"},
          "/api/v1/conversations/{conversation_id}/transfer": {"desk": "0" * 32},
          "/api/v1/conversations/{conversation_id}/rating": {"score": 5},
          "/api/v1/conversations/{conversation_id}/reply-by-email": {"text": "您好"},
          "/api/v1/conversations/{conversation_id}/participants": {"agent_id": "0" * 32},
          "/api/v1/chat/visitors/{visitor_id}/invite": {"text": "您好"},
          "/api/v1/tickets/{ticket_id}/replies": {"body": "hi"}, "/api/v1/tickets/{ticket_id}/rating": {"score": 1},
          "/api/v1/tickets/{ticket_id}/merge": {"into": "0" * 32}, "/api/v1/tickets/{ticket_id}/split": {"reply_id": "x"},
          "/api/v1/tickets/{ticket_id}": {"priority": "low"}, "/api/v1/ticket-tasks/{task_id}/done": {"outcome": "x"}}


async def test_every_route_hides_other_tenants_and_other_shoppers(app, shop, other_shop, client):
    objects = await build_objects(shop)
    # another shopper of the same merchant
    stranger = await shop.shopper(await shop.order(external_id="stranger"))
    callers = {"other merchant key": other_shop.key, "other merchant staff": other_shop.agent_token,
               "other shopper": stranger}
    routes = id_routes(app)
    assert len(routes) >= 9
    checked = 0
    for method, path in routes:
        for action in (ACTIONS if "{action}" in path else [""]):
            url = fill(path, objects, action)
            body = ACTIONS[action] if action else BODIES.get(path, {})
            for who, token in callers.items():
                if who == "other shopper" and "/customers/" in path:
                    continue  # a merchant-key-only route: a shopper has no business here at all
                r = await client.request(method, url, json=body if method != "GET" else None,
                                         headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 404, f"{who} {method} {url} → {r.status_code} {r.text}"
                checked += 1
    assert checked > 40
    # and nothing moved: the case is as the owner left it
    case = (await shop.get(f"/aftersales/{objects['case_id']}")).json()
    assert case["status"] == "refunding" and case["version"] == 2
    conversation = (await shop.get(f"/conversations/{objects['conversation_id']}", token=shop.agent_token)).json()
    assert conversation["status"] == "offline" and conversation["last_seq"] == 1
    ticket = (await shop.get(f"/tickets/{objects['ticket_id']}")).json()
    assert ticket["version"] == 1 and ticket["replies"] == [] and ticket["priority"] == "normal"


async def test_lists_show_only_own_data(shop, other_shop):
    objects = await build_objects(shop)
    for path in ("/aftersales", "/orders"):
        items = (await other_shop.get(path)).json()["items"]
        assert objects["order_id"] not in {i.get("order_id", i.get("id")) for i in items}
    stranger = await shop.shopper(await shop.order(external_id="stranger2"))
    assert (await shop.get("/aftersales", token=stranger)).json()["items"] == []


async def test_no_token_or_bad_token_is_401(client):
    assert (await client.get("/api/v1/aftersales")).status_code == 401
    r = await client.get("/api/v1/aftersales", headers={"Authorization": "Bearer nonsense"})
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")
    r = await client.get("/api/v1/aftersales", headers={"Authorization": "Bearer sk_deadbeef_nope"})
    assert r.status_code == 401


async def test_order_lookup_miss_says_nothing_and_is_rate_limited(shop, client):
    order = await shop.order()
    wrong_phone = await client.post("/api/v1/shopper/lookup", json={"store": "main", "order_no": order["order_no"],
                                                                    "phone": "13999999999"})
    wrong_order = await client.post("/api/v1/shopper/lookup", json={"store": "main", "order_no": "NOPE",
                                                                    "phone": "13800000000"})
    assert wrong_phone.status_code == wrong_order.status_code == 404
    assert wrong_phone.json()["detail"] == wrong_order.json()["detail"]
    codes = [(await client.post("/api/v1/shopper/lookup", json={"store": "main", "order_no": order["order_no"],
                                                                "phone": "10000000000"})).status_code for _ in range(12)]
    assert 429 in codes
