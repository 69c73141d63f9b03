"""Tickets through the public API: create, reply, notes, status, 催单, rating, merge, split, access."""
from __future__ import annotations

import re

from sqlalchemy import select

from shopdesk.core.db import transaction
from shopdesk.core.outbox import OutboxItem


async def new_ticket(shop, token=None, **body) -> dict:
    payload = {"subject": "耳机左耳没声音", "description": "收到两天左耳就不响了", "priority": "normal",
               "channel": "api", "category": "", "tags": [], **body}
    r = await shop.post("/tickets", payload, token)
    assert r.status_code == 201, r.text
    return r.json()


async def emails_to(address: str) -> list[dict]:
    async with transaction() as session:
        rows = (await session.execute(select(OutboxItem).where(OutboxItem.kind == "email")
                                      .order_by(OutboxItem.created_at, OutboxItem.id))).scalars()
        return [r.payload for r in rows if r.payload.get("to") == address]


async def test_create_read_and_list(shop):
    # Given a ticket created through the API for a known customer
    t = await new_ticket(shop, customer={"external_id": "c-1", "name": "李四", "email": f"li-{shop.slug}@example.com"},
                         tags=["质量", "质量", "耳机"], priority="high")
    # Then it has a public number, starts new, and keeps its fields
    assert re.fullmatch(r"TK\d{8}-\d{4}", t["number"])
    assert (t["status"], t["status_group"], t["priority"], t["urge_count"]) == ("new", "new", "high", 0)
    assert t["tags"] == ["质量", "耳机"]
    assert t["sla"] == {"policy": None, "first_response_due_at": None, "next_response_due_at": None,
                        "resolution_due_at": None, "breaches": []}
    assert [e["action"] for e in t["events"]] == ["create"]
    # And the requester got an acknowledgement only when the channel is email/web; this one is api
    assert await emails_to(f"li-{shop.slug}@example.com") == []
    # When listing by status group and by text
    r = await shop.get("/tickets", params={"status_group": "new", "q": "左耳"})
    assert r.status_code == 200
    assert [i["id"] for i in r.json()["items"]] == [t["id"]]
    r = await shop.get("/tickets", params={"status_group": "solved"})
    assert r.json()["items"] == []
    r = await shop.get(f"/tickets/{t['id']}")
    assert r.json()["number"] == t["number"]


async def test_list_pages_with_a_cursor(shop, frozen_clock):
    from datetime import timedelta

    made = []
    for i in range(5):  # within one second: a cursor of whole seconds would skip some
        made.append(await new_ticket(shop, subject=f"问题 {i}"))
        frozen_clock.advance(timedelta(milliseconds=150))
    seen, cursor = [], None
    while True:
        r = await shop.get("/tickets", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        seen += [i["id"] for i in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(t["id"] for t in made) and len(seen) == 5


async def test_staff_reply_note_and_shopper_view(shop):
    order = await shop.order(email=f"buyer-{shop.slug}@example.com")
    shopper = await shop.shopper(order)
    # Given a shopper's own ticket from the help form
    t = await new_ticket(shop, shopper, channel="web", order_id=order["id"])
    assert t["customer_id"] and t["order_id"] == order["id"]
    ack = await emails_to(f"buyer-{shop.slug}@example.com")
    assert len(ack) == 1 and t["number"] in ack[0]["subject"]
    # When an agent leaves a private note, then answers in public
    r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "仓库确认批次问题", "public": False}, shop.agent_token)
    assert r.status_code == 201, r.text
    assert r.json()["status_group"] == "new"  # a note is no response
    r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "您好，我们给您换新。"}, shop.agent_token)
    staff_view = r.json()
    assert staff_view["status"] == "open" and staff_view["first_response_at"]
    assert [x["public"] for x in staff_view["replies"]] == [False, True]
    # Then the shopper sees the public reply only, and got it by email with a link back
    r = await shop.get(f"/tickets/{t['id']}", shopper)
    mine = r.json()
    assert [x["body"] for x in mine["replies"]] == ["您好，我们给您换新。"]
    assert "custom_fields" not in mine and all(e["action"] != "note" for e in mine["events"])
    mail = (await emails_to(f"buyer-{shop.slug}@example.com"))[-1]
    assert "您好，我们给您换新。" in mail["body"] and f"/shop/tickets/{t['id']}?t=" in mail["body"]
    # And the shopper may not leave a private note
    r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "x", "public": False}, shopper)
    assert r.status_code == 422 and r.json()["field"] == "public"


async def test_email_link_opens_that_ticket_only(shop):
    order = await shop.order(email=f"link-{shop.slug}@example.com")
    shopper = await shop.shopper(order)
    t = await new_ticket(shop, shopper, channel="web")
    other = await new_ticket(shop, shopper, channel="web", subject="另一个问题")
    await shop.post(f"/tickets/{t['id']}/replies", {"body": "请补充照片"}, shop.agent_token)
    body = (await emails_to(f"link-{shop.slug}@example.com"))[-1]["body"]
    token = re.search(r"\?t=(\S+)", body).group(1)
    # The link's token reads and answers its ticket
    r = await shop.get(f"/tickets/{t['id']}", token)
    assert r.status_code == 200
    r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "照片见附件"}, token)
    assert r.status_code == 201 and r.json()["replies"][-1]["author"]["type"] == "shopper"
    # And nothing else: not the other ticket, not the list, not orders
    assert (await shop.get(f"/tickets/{other['id']}", token)).status_code in (401, 404)
    assert (await shop.get("/tickets", token)).status_code == 401
    assert (await shop.get(f"/orders/{order['id']}", token)).status_code == 401


async def test_urge_raises_priority_and_tells_the_assignee(shop):
    order = await shop.order()
    shopper = await shop.shopper(order)
    me = (await shop.get("/auth/me", shop.agent_token)).json()
    t = await new_ticket(shop, shopper, channel="web", priority="low")
    r = await shop.client.patch(f"/api/v1/tickets/{t['id']}", json={"assignee_id": me["id"]},
                                headers=shop.h(shop.agent_token))
    assert r.status_code == 200, r.text
    for n, priority in ((1, "normal"), (2, "high"), (3, "urgent"), (4, "urgent")):
        r = await shop.post(f"/tickets/{t['id']}/urge", None, shopper)
        assert r.status_code == 200, r.text
        assert (r.json()["urge_count"], r.json()["priority"]) == (n, priority)
    assert len([m for m in await emails_to(shop.agent_email) if "催单" in m["subject"]]) == 4
    # Staff do not urge
    r = await shop.post(f"/tickets/{t['id']}/urge", None, shop.agent_token)
    assert r.status_code == 403


async def test_solve_opens_the_survey_and_the_shopper_rates(shop):
    order = await shop.order(email=f"rate-{shop.slug}@example.com")
    shopper = await shop.shopper(order)
    t = await new_ticket(shop, shopper, channel="web")
    r = await shop.post(f"/tickets/{t['id']}/rating", {"score": 5}, shopper)
    assert r.status_code == 409  # not solved yet
    r = await shop.client.patch(f"/api/v1/tickets/{t['id']}", json={"status": "solved"},
                                headers=shop.h(shop.agent_token))
    assert r.json()["status_group"] == "solved" and r.json()["survey_open"] is True
    assert any("已解决" in m["subject"] for m in await emails_to(f"rate-{shop.slug}@example.com"))
    r = await shop.post(f"/tickets/{t['id']}/rating", {"score": 4, "comment": "很快"}, shopper)
    assert r.status_code == 200 and r.json()["rating"]["score"] == 4
    r = await shop.post(f"/tickets/{t['id']}/rating", {"score": 9}, shopper)
    assert r.status_code == 422 and r.json()["field"] == "score"
    # A reply from the shopper reopens a solved ticket
    r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "还是不行"}, shopper)
    assert r.json()["status_group"] == "open"


async def test_custom_status_and_bad_changes(shop):
    r = await shop.client.put("/api/v1/settings/tickets", json={"statuses": [
        {"name": "waiting_warehouse", "group": "pending", "label_zh": "等待仓库"}], "categories": ["物流", "质量"]},
        headers=shop.h(shop.admin_token))
    assert r.status_code == 200, r.text
    t = await new_ticket(shop, category="物流")
    patch = shop.client.patch
    r = await patch(f"/api/v1/tickets/{t['id']}", json={"status": "waiting_warehouse"}, headers=shop.h(shop.agent_token))
    assert (r.json()["status"], r.json()["status_group"]) == ("waiting_warehouse", "pending")
    for body, field in (({"status": "nope"}, "status"), ({"category": "天气"}, "category"),
                        ({"priority": "asap"}, "priority"), ({"assignee_id": "nobody"}, "assignee_id")):
        r = await patch(f"/api/v1/tickets/{t['id']}", json=body, headers=shop.h(shop.agent_token))
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)
    r = await patch(f"/api/v1/tickets/{t['id']}", json={"status": "new"}, headers=shop.h(shop.agent_token))
    assert r.status_code == 409
    r = await shop.get(f"/tickets/{t['id']}")
    assert r.json()["status"] == "waiting_warehouse" and r.json()["category"] == "物流"
    r = await shop.client.put("/api/v1/settings/tickets", json={"statuses": [{"name": "Bad Name", "group": "open"}]},
                              headers=shop.h(shop.admin_token))
    assert r.status_code == 422 and r.json()["field"] == "statuses[0].name"


async def test_merge_moves_replies_and_tells_the_shopper(shop):
    order = await shop.order(email=f"merge-{shop.slug}@example.com")
    shopper = await shop.shopper(order)
    a = await new_ticket(shop, shopper, channel="web", subject="快递一直不动", tags=["物流"])
    b = await new_ticket(shop, shopper, channel="web", subject="快递三天没更新", tags=["催件"])
    await shop.post(f"/tickets/{a['id']}/replies", {"body": "已联系快递"}, shop.agent_token)
    r = await shop.post(f"/tickets/{a['id']}/merge", {"into": b["id"]}, shop.agent_token)
    assert r.status_code == 200, r.text
    merged = r.json()
    assert (merged["status_group"], merged["merged_into"]) == ("closed", b["id"])
    r = await shop.get(f"/tickets/{b['id']}", shop.agent_token)
    target = r.json()
    bodies = [x["body"] for x in target["replies"]]
    assert "已联系快递" in bodies and any("快递一直不动" in x for x in bodies)
    assert set(target["tags"]) == {"物流", "催件"}
    assert any(e["action"] == "merged_in" for e in target["events"])
    assert any("已合并" in m["subject"] for m in await emails_to(f"merge-{shop.slug}@example.com"))
    # The merged ticket takes no more replies or changes, and is not merged twice
    r = await shop.post(f"/tickets/{a['id']}/replies", {"body": "还在吗"}, shopper)
    assert r.status_code == 409 and r.json()["merged_into"] == b["id"]
    r = await shop.post(f"/tickets/{a['id']}/merge", {"into": b["id"]}, shop.agent_token)
    assert r.status_code == 409
    r = await shop.post(f"/tickets/{b['id']}/merge", {"into": b["id"]}, shop.agent_token)
    assert r.status_code == 422 and r.json()["field"] == "into"
    # And the default list leaves merged tickets out
    r = await shop.get("/tickets", params={"q": "快递"})
    assert [i["id"] for i in r.json()["items"]] == [b["id"]]


async def test_split_moves_one_reply_into_a_new_ticket(shop):
    order = await shop.order()
    shopper = await shop.shopper(order)
    t = await new_ticket(shop, shopper, channel="web")
    r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "另外发票抬头开错了\n请重开"}, shopper)
    reply_id = r.json()["reply"]["id"]
    r = await shop.post(f"/tickets/{t['id']}/split", {"reply_id": reply_id}, shop.agent_token)
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["subject"] == "另外发票抬头开错了" and new["customer_id"] == t["customer_id"]
    assert [x["id"] for x in new["replies"]] == [reply_id]
    old = (await shop.get(f"/tickets/{t['id']}", shop.agent_token)).json()
    assert reply_id not in [x["id"] for x in old["replies"]]
    assert any(e["action"] == "split" and e["data"]["new_id"] == new["id"] for e in old["events"])
    # The shopper sees both of their tickets
    r = await shop.get("/tickets", shopper)
    assert {i["id"] for i in r.json()["items"]} == {t["id"], new["id"]}
    r = await shop.post(f"/tickets/{t['id']}/split", {"reply_id": "nope"}, shop.agent_token)
    assert r.status_code == 422 and r.json()["field"] == "reply_id"


async def test_store_is_recorded_and_checked(shop):
    r = await shop.post("/tickets", {"subject": "天猫店的问题", "store": "main"})
    assert r.status_code == 201
    r = await shop.post("/tickets", {"subject": "x", "store": "nope"})
    assert r.status_code == 422 and r.json()["field"] == "store"


async def test_parent_and_child_tickets(shop):
    parent = await new_ticket(shop, subject="批次质量问题")
    child = await new_ticket(shop, subject="仓库：抽检 20 件", parent_id=parent["id"], team="仓库")
    assert child["parent_id"] == parent["id"] and child["team"] == "仓库"


async def test_other_merchant_and_other_shopper_see_nothing(shop, other_shop):
    order = await shop.order()
    shopper = await shop.shopper(order)
    t = await new_ticket(shop, shopper, channel="web")
    stranger_order = await shop.order()
    stranger = await shop.shopper(stranger_order)
    for token in (other_shop.key, other_shop.agent_token, stranger):
        for method, path, body in (("get", f"/tickets/{t['id']}", None),
                                   ("post", f"/tickets/{t['id']}/replies", {"body": "hi"}),
                                   ("post", f"/tickets/{t['id']}/urge", None),
                                   ("post", f"/tickets/{t['id']}/rating", {"score": 1}),
                                   ("post", f"/tickets/{t['id']}/merge", {"into": t["id"]}),
                                   ("post", f"/tickets/{t['id']}/split", {"reply_id": "x"})):
            r = await shop.client.request(method.upper(), f"/api/v1{path}", json=body, headers=shop.h(token))
            assert r.status_code == 404, (token[:6], path, r.status_code)
        r = await shop.client.patch(f"/api/v1/tickets/{t['id']}", json={"priority": "low"}, headers=shop.h(token))
        assert r.status_code == 404
        r = await shop.get("/tickets", token)
        assert t["id"] not in [i["id"] for i in r.json()["items"]]


async def test_round_robin_assignment(shop):
    from tests.factories import add_agent

    second = await add_agent(shop, "agent2")
    r = await shop.client.put("/api/v1/settings/tickets", json={"assignment": {"method": "round_robin"}},
                              headers=shop.h(shop.admin_token))
    assert r.status_code == 200, r.text
    assignees = [(await new_ticket(shop, subject=f"t{i}"))["assignee_id"] for i in range(4)]
    assert len(set(assignees)) == 2 and assignees[0] == assignees[2] and assignees[1] == assignees[3]
    assert second in assignees


async def test_reply_attachments_must_be_the_callers_uploads(shop, other_shop):
    order = await shop.order()
    shopper = await shop.shopper(order)
    t = await new_ticket(shop, shopper, channel="web")
    mine = await shop.photo(shopper)
    r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "照片", "attachment_ids": [mine]}, shopper)
    assert r.status_code == 201 and r.json()["reply"]["attachment_ids"] == [mine]
    stranger = await shop.shopper(await shop.order(external_id="other-buyer"))
    theirs = await shop.photo(stranger)
    other_merchants = await other_shop.photo(other_shop.key)
    for upload in (theirs, other_merchants, "nope"):
        r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "x", "attachment_ids": [upload]}, shopper)
        assert r.status_code == 422 and r.json()["field"] == "attachment_ids[0]", r.text
    # staff may attach the merchant's uploads, not another merchant's
    r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "见图", "attachment_ids": [theirs]}, shop.agent_token)
    assert r.status_code == 201
    r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "x", "attachment_ids": [other_merchants]},
                        shop.agent_token)
    assert r.status_code == 422


async def test_an_email_link_attaches_only_images_stored_for_its_ticket(shop):
    from shopdesk.accounts.auth import resolve
    from shopdesk.aftersales.actions import do_save_upload
    from tests.factories import PNG

    # Given a ticket answered by email (so its requester holds a link), and another ticket of theirs
    order = await shop.order(email=f"att-{shop.slug}@example.com")
    shopper = await shop.shopper(order)
    t = await new_ticket(shop, shopper, channel="web")
    other = await new_ticket(shop, shopper, channel="web", subject="另一个问题")
    await shop.post(f"/tickets/{t['id']}/replies", {"body": "请补充照片"}, shop.agent_token)
    token = re.search(r"\?t=(\S+)", (await emails_to(f"att-{shop.slug}@example.com"))[-1]["body"]).group(1)
    # And images stored the way the ticket page stores a link holder's: owned by the ticket
    async with transaction() as session:
        link = await resolve(session, token)
        stored = {}
        for name, ticket_id in (("ours", t["id"]), ("other_ticket", other["id"])):
            item = await do_save_upload(session, link, PNG)
            item.owner_type, item.owner_id = "ticket", ticket_id
            stored[name] = item.id
    # When the link attaches the one stored for its ticket, then it is on the reply
    r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "照片见附件", "attachment_ids": [stored["ours"]]},
                        token)
    assert r.status_code == 201, r.text
    assert r.json()["reply"]["attachment_ids"] == [stored["ours"]]
    # But another ticket's image, or the shopper's own upload, is refused to the link
    for upload in (stored["other_ticket"], await shop.photo(shopper)):
        r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "x", "attachment_ids": [upload]}, token)
        assert r.status_code == 422 and r.json()["field"] == "attachment_ids[0]", r.text
    # And the shopper's session may not attach the ticket's image as if it were theirs
    r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "x", "attachment_ids": [stored["ours"]]}, shopper)
    assert r.status_code == 422


async def test_a_note_mentioning_a_colleague_tells_them_and_makes_them_watch(shop):
    from tests.factories import add_agent

    await add_agent(shop, "小王")
    t = await new_ticket(shop)
    r = await shop.post(f"/tickets/{t['id']}/replies", {"body": "@小王 帮忙看下仓库记录", "public": False},
                        shop.agent_token)
    assert r.status_code == 201
    wang = await emails_to(f"小王@{shop.slug}.test")
    assert len(wang) == 1 and "帮忙看下仓库记录" in wang[0]["body"]
    assert len(r.json()["watchers"]) == 1
