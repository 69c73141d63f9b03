"""Conversation history: search, export (JSON, CSV), import (idempotent, ids re-mapped) and delete."""
import csv
import io

from tests.factories import make_shop
from tests.integration.chat.conftest import add_agent, auth, presence, sign, store_secret, widget


async def finished_chat(chat_server, api, shop, sockets, agent, texts, **session_body) -> str:
    """A chat whose shopper wrote `texts`, answered and ended by the agent; return its id."""
    session = await widget(api, shop, **session_body)
    tab = await sockets(chat_server, session["token"], "tab")
    conv_id = None
    for i, text in enumerate(texts):
        frame = {"client_msg_id": f"m{i}", "text": text}
        if conv_id:
            frame["conversation_id"] = conv_id
        await tab.send(type="message.send", **frame)
        conv_id = (await tab.expect("message.ack"))["conversation_id"]
    desk = await sockets(chat_server, agent.token, "agent")
    await desk.send(type="message.send", client_msg_id="a", conversation_id=conv_id, text="已处理")
    await desk.expect("message.ack")
    r = await api.post(f"/api/v1/conversations/{conv_id}/end", headers=auth(agent.token))
    assert r.status_code == 200, r.text
    return conv_id


async def test_search_by_text_customer_order_and_date(chat_server, api, chat_shop, sockets):
    # given two finished chats: one of a bound customer with an order card, one anonymous about an invoice
    order = await chat_shop.order(external_id="buyer-h")
    secret = await store_secret(chat_shop)
    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    bound = await finished_chat(chat_server, api, chat_shop, sockets, agent, ["耳机没声音了"],
                                identity={"external_id": "buyer-h", "name": "韩梅梅", "hmac": sign(secret, "buyer-h")})
    anon = await finished_chat(chat_server, api, chat_shop, sockets, agent, ["请开发票 100%"])
    other = await make_shop(api)
    stranger = await add_agent(other, api)

    async def found(token=agent.token, **params):
        r = await api.get("/api/v1/conversations/search", params=params, headers=auth(token))
        assert r.status_code == 200, r.text
        return [c["id"] for c in r.json()["items"]]

    # then each filter finds the right one
    assert await found(q="没声音") == [bound]
    assert await found(q="100%") == [anon]  # % is matched as typed, not as a wildcard
    assert await found(q="100_") == []
    assert await found(customer="buyer-h") == [bound]
    assert await found(customer="韩梅") == [bound]
    assert await found(order_no=order["order_no"]) == [bound]
    assert set(await found(date_from="2000-01-01", date_to="2999-12-31")) >= {bound, anon}
    assert await found(date_to="2000-01-01") == []
    # and another merchant finds none of them
    assert await found(token=stranger.token, q="没声音") == []
    # and a bad date names its field
    r = await api.get("/api/v1/conversations/search", params={"date_from": "昨天"}, headers=auth(agent.token))
    assert (r.status_code, r.json()["field"]) == (422, "date_from")


async def test_export_then_import_elsewhere_is_idempotent(chat_server, api, chat_shop, sockets):
    # given a finished chat (with a formula-looking message) in one merchant
    agent = await add_agent(chat_shop, api, "小王")
    await presence(api, agent)
    conv_id = await finished_chat(chat_server, api, chat_shop, sockets, agent, ["=HYPERLINK(\"x\")", "第二句"])

    # when it is exported as JSON and as CSV
    r = await api.get("/api/v1/conversations/export", params={"format": "json", "q": "第二句"},
                      headers=auth(agent.token))
    assert r.status_code == 200, r.text
    exported = r.json()
    [conv] = exported["conversations"]
    assert conv["id"] == conv_id and conv["store"] == "main" and conv["status"] == "ended"
    assert [m["seq"] for m in conv["messages"]] == list(range(1, len(conv["messages"]) + 1))
    assert [m["text"] for m in conv["messages"][:2]] == ["=HYPERLINK(\"x\")", "第二句"]
    r = await api.get("/api/v1/conversations/export", params={"format": "csv", "q": "第二句"},
                      headers=auth(agent.token))
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text.lstrip("\ufeff"))))
    assert len(rows) == len(conv["messages"])
    assert rows[0]["text"] == "'=HYPERLINK(\"x\")"  # kept as text in a spreadsheet
    assert rows[1]["text"] == "第二句" and rows[1]["sender_type"] == "visitor"

    # when another merchant's admin imports it, twice
    other = await make_shop(api)
    r = await api.post("/api/v1/conversations/import", json=exported, headers=auth(other.admin_token))
    assert r.status_code == 200, r.text
    assert (r.json()["imported"], r.json()["skipped"]) == (1, 0)
    new_id = r.json()["ids"][conv_id]
    assert new_id != conv_id
    r = await api.post("/api/v1/conversations/import", json=exported, headers=auth(other.admin_token))
    assert (r.json()["imported"], r.json()["skipped"]) == (0, 1) and r.json()["ids"][conv_id] == new_id

    # then it is there once, ended, with the same messages in the same order, and no foreign staff id
    r = await api.get(f"/api/v1/conversations/{new_id}/messages", headers=auth(other.admin_token))
    items = r.json()["items"]
    assert [(m["seq"], m["text"]) for m in items] == [(m["seq"], m["text"]) for m in conv["messages"]]
    assert all(m["sender"]["id"] != agent.staff_id for m in items)
    assert next(m for m in items if m["sender"]["type"] == "agent")["sender"]["name"] == "小王"
    r = await api.get("/api/v1/conversations/search", params={"q": "第二句"}, headers=auth(other.admin_token))
    assert [c["id"] for c in r.json()["items"]] == [new_id]
    # and importing into the first merchant again changes nothing (the originals are there)
    r = await api.post("/api/v1/conversations/import", json=exported, headers=auth(chat_shop.admin_token))
    assert (r.json()["imported"], r.json()["skipped"]) == (0, 1)

    # when the input is bad: unknown store, missing field, an agent (not admin/supervisor), bad format
    bad = {"conversations": [{**conv, "store": "nope"}]}
    r = await api.post("/api/v1/conversations/import", json=bad, headers=auth(other.admin_token))
    assert (r.status_code, r.json()["field"]) == (422, "conversations[0].store")
    r = await api.post("/api/v1/conversations/import", json={"conversations": [{"id": "x"}]},
                       headers=auth(other.admin_token))
    assert r.status_code == 422 and r.json()["field"].startswith("conversations.0.")
    r = await api.post("/api/v1/conversations/import", json=exported, headers=auth(other.agent_token))
    assert r.status_code == 403
    r = await api.get("/api/v1/conversations/export", params={"format": "xml"}, headers=auth(agent.token))
    assert (r.status_code, r.json()["field"]) == (422, "format")
    # and another merchant's export holds none of the first merchant's chats
    r = await api.get("/api/v1/conversations/export", params={"q": "HYPERLINK"}, headers=auth(other.admin_token))
    assert [c["id"] for c in r.json()["conversations"]] == [new_id]


async def test_delete_removes_the_conversation_and_its_messages(chat_server, api, chat_shop, sockets):
    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    conv_id = await finished_chat(chat_server, api, chat_shop, sockets, agent, ["删除我"])
    session = await widget(api, chat_shop)
    tab = await sockets(chat_server, session["token"], "open")
    await tab.send(type="message.send", client_msg_id="o", text="还开着")
    open_id = (await tab.expect("message.ack"))["conversation_id"]
    stranger = await make_shop(api)

    # when an agent, another merchant's admin, or an admin on an open chat tries
    assert (await api.delete(f"/api/v1/conversations/{conv_id}", headers=auth(agent.token))).status_code == 403
    assert (await api.delete(f"/api/v1/conversations/{conv_id}",
                             headers=auth(stranger.admin_token))).status_code == 404
    r = await api.delete(f"/api/v1/conversations/{open_id}", headers=auth(chat_shop.admin_token))
    assert (r.status_code, r.json()["code"]) == (409, "illegal_transition")

    # when the admin deletes the ended one
    r = await api.delete(f"/api/v1/conversations/{conv_id}", headers=auth(chat_shop.admin_token))
    assert r.status_code == 204

    # then it and its messages are gone, and the deletion is in the audit log
    assert (await api.get(f"/api/v1/conversations/{conv_id}", headers=auth(agent.token))).status_code == 404
    assert (await api.get(f"/api/v1/conversations/{conv_id}/messages",
                          headers=auth(agent.token))).status_code == 404
    from sqlalchemy import func, select

    from shopdesk.chat.models import ChatMessage
    from shopdesk.core.records import AuditLog as AuditEntry
    from shopdesk.core.db import transaction

    async with transaction() as s:
        left = (await s.execute(select(func.count()).where(ChatMessage.conversation_id == conv_id))).scalar_one()
        audit = (await s.execute(select(AuditEntry).where(AuditEntry.object_id == conv_id,
                                                          AuditEntry.action == "chat.delete"))).scalars().all()
    assert left == 0
    assert len(audit) == 1 and audit[0].data["messages"] >= 3
