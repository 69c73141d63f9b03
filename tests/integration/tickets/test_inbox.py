"""The unified inbox: tickets, waiting chats, after-sales cases due soon and revisit tasks; views and counts."""
from __future__ import annotations

from datetime import timedelta

from shopdesk.chat.actions import do_send_message, do_start_widget_session, resolve_actor
from shopdesk.core.db import sessionmaker
from tests.integration.aftersales.test_flows import create
from tests.integration.tickets.test_sla import relogin
from tests.integration.tickets.test_tickets_api import new_ticket


async def pages(shop, token, **params) -> list[dict]:
    items, cursor = [], None
    while True:
        r = await shop.get("/inbox", token, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if not cursor:
            return items


async def test_one_list_over_every_kind_of_work(shop, frozen_clock):
    # Given an after-sales request whose 48 h review deadline is within a day (it came in 25 h ago),
    order = await shop.order()
    buyer = await shop.shopper(order)
    case = await create(shop, order, buyer, "return_refund", "no_reason_7d", [("B", 1)])
    frozen_clock.advance(timedelta(hours=25))
    await relogin(shop)
    me = (await shop.get("/auth/me", shop.agent_token)).json()
    # a ticket of mine, an unassigned one, a solved one and a 留言 chat
    mine = await new_ticket(shop, subject="我的工单", assignee_id=me["id"])
    frozen_clock.advance(timedelta(minutes=1))
    other = await new_ticket(shop, subject="没人管的工单", priority="urgent")
    solved = await new_ticket(shop, subject="已解决")
    await shop.client.patch(f"/api/v1/tickets/{solved['id']}", json={"status": "solved"},
                            headers=shop.h(shop.agent_token))
    widget = await do_start_widget_session(store="main", merchant=shop.slug)
    async with sessionmaker()() as session:
        visitor = await resolve_actor(session, widget["token"])
    chat = await do_send_message(visitor, client_msg_id="i1", text="有人吗")
    # When the agent opens the inbox, two items at a time
    items = await pages(shop, shop.agent_token, limit=2)
    kinds = {(i["kind"], i["id"]) for i in items}
    # Then every open piece of work is there once, and nothing solved
    assert ("ticket", mine["id"]) in kinds and ("ticket", other["id"]) in kinds
    assert ("ticket", solved["id"]) not in kinds
    assert ("chat", chat.ack["conversation_id"]) in kinds
    assert ("aftersales", case["id"]) in kinds
    assert len(items) == len(kinds)
    stamps = [i["at"] for i in items]
    assert stamps == sorted(stamps, reverse=True)
    # A filter on assignee keeps my work only; a priority filter keeps tickets only
    assert {i["id"] for i in await pages(shop, shop.agent_token, assignee="me", kinds="ticket")} == {mine["id"]}
    urgent = await pages(shop, shop.agent_token, priority="urgent")
    assert [i["id"] for i in urgent] == [other["id"]]
    # And the counts agree
    r = await shop.get("/inbox/counts", shop.agent_token)
    c = r.json()
    assert c["tickets"]["mine"] == 1 and c["tickets"]["new"] >= 2 and c["tickets"]["unassigned"] >= 1
    assert c["chats_waiting"] >= 1 and c["aftersales_due"] >= 1


async def test_saved_views_personal_and_shared(shop):
    me = (await shop.get("/auth/me", shop.agent_token)).json()
    t = await new_ticket(shop, subject="加急", priority="high", assignee_id=me["id"])
    await new_ticket(shop, subject="普通")
    r = await shop.post("/inbox/views", {"name": "我的加急", "filters": {"assignee": "me", "priority": ["high", "urgent"],
                                                                         "kinds": ["ticket"]}}, shop.agent_token)
    assert r.status_code == 201, r.text
    view = r.json()
    assert view["id"] and view["filters"] == {"assignee": "me", "priority": ["high", "urgent"], "kinds": ["ticket"]}, view
    stored = (await shop.get("/inbox/views", shop.agent_token)).json()["items"]
    assert [v["filters"] for v in stored] == [view["filters"]], stored
    r = await shop.get("/inbox", shop.agent_token, params={"view": view["id"]})
    assert [i["id"] for i in r.json()["items"]] == [t["id"]]
    # A personal view is the owner's: a colleague does not see it, an agent cannot share one
    r = await shop.get("/inbox/views", shop.admin_token)
    assert view["id"] not in [v["id"] for v in r.json()["items"]]
    r = await shop.get("/inbox", shop.admin_token, params={"view": view["id"]})
    assert r.status_code == 404
    r = await shop.post("/inbox/views", {"name": "团队", "filters": {}, "shared": True}, shop.agent_token)
    assert r.status_code == 403
    r = await shop.post("/inbox/views", {"name": "坏", "filters": {"mood": "happy"}}, shop.agent_token)
    assert r.status_code == 422 and r.json()["field"] == "filters.mood"
    r = await shop.client.delete(f"/api/v1/inbox/views/{view['id']}", headers=shop.h(shop.agent_token))
    assert r.status_code == 204


async def test_inbox_is_the_merchants_staff_only(shop, other_shop):
    t = await new_ticket(shop, subject="别人的")
    items = (await other_shop.get("/inbox", other_shop.agent_token)).json()["items"]
    assert t["id"] not in [i["id"] for i in items]
    order = await shop.order()
    buyer = await shop.shopper(order)
    assert (await shop.get("/inbox", buyer)).status_code == 404


async def test_bulk_change_reports_each_ticket(shop, other_shop):
    a = await new_ticket(shop, subject="a")
    b = await new_ticket(shop, subject="b")
    theirs = await new_ticket(other_shop, subject="c")
    merged = await new_ticket(shop, subject="d")
    await shop.post(f"/tickets/{merged['id']}/merge", {"into": a["id"]}, shop.agent_token)
    r = await shop.post("/tickets/bulk", {"ids": [a["id"], b["id"], theirs["id"], merged["id"]],
                                          "patch": {"priority": "high", "tags": ["批量"]}}, shop.agent_token)
    assert r.status_code == 200, r.text
    results = {x["id"]: x for x in r.json()["results"]}
    assert results[a["id"]]["ok"] and results[b["id"]]["ok"]
    assert results[theirs["id"]] == {"id": theirs["id"], "ok": False, "code": "not_found", "detail": "no such ticket"}
    assert results[merged["id"]]["ok"] is False and results[merged["id"]]["code"] == "illegal_transition"
    for t in (a, b):
        got = (await shop.get(f"/tickets/{t['id']}")).json()
        assert got["priority"] == "high" and got["tags"] == ["批量"]
    assert (await other_shop.get(f"/tickets/{theirs['id']}")).json()["priority"] == "normal"
    r = await shop.post("/tickets/bulk", {"ids": [], "patch": {}}, shop.agent_token)
    assert r.status_code == 422 and r.json()["field"] == "ids"


async def test_urged_filter_and_add_tags_keep_the_tickets_own(shop):
    order = await shop.order()
    shopper = await shop.shopper(order)
    hurried = await new_ticket(shop, shopper, channel="web", tags=["耳机"])
    calm = await new_ticket(shop, shopper, channel="web")
    await shop.post(f"/tickets/{hurried['id']}/urge", None, shopper)
    items = await pages(shop, shop.agent_token, urged="1")
    assert [i["id"] for i in items] == [hurried["id"]]
    r = await shop.post("/inbox/views", {"name": "被催单", "filters": {"urged": True}}, shop.agent_token)
    assert r.status_code == 201 and r.json()["filters"]["urged"] is True
    r = await shop.post("/tickets/bulk", {"ids": [hurried["id"], calm["id"]], "patch": {"add_tags": ["加急"]}},
                        shop.agent_token)
    assert all(x["ok"] for x in r.json()["results"])
    assert (await shop.get(f"/tickets/{hurried['id']}")).json()["tags"] == ["耳机", "加急"]
    assert (await shop.get(f"/tickets/{calm['id']}")).json()["tags"] == ["加急"]
    r = await shop.get("/inbox", shop.agent_token, params={"urged": "maybe"})
    assert r.status_code == 422 and r.json()["field"] == "urged"
