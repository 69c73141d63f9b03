"""Tickets from chat: "turn into ticket" with the history, and a 留言 left offline becomes a ticket."""
from __future__ import annotations

from shopdesk.chat.actions import do_save_contact, do_send_message, do_start_widget_session, resolve_actor
from shopdesk.core.db import sessionmaker
from tests.integration.tickets.test_tickets_api import emails_to


async def visitor_of(shop):
    widget = await do_start_widget_session(store="main", merchant=shop.slug)
    async with sessionmaker()() as session:
        return await resolve_actor(session, widget["token"])


async def test_a_message_left_offline_becomes_one_ticket(shop):
    # Given no agent is online, a visitor leaves contact details and two messages
    visitor = await visitor_of(shop)
    await do_save_contact(visitor, {"name": "王五", "email": f"wangwu-{shop.slug}@example.com"})
    first = await do_send_message(visitor, client_msg_id="m1", text="你们周末发货吗？")
    await do_send_message(visitor, client_msg_id="m2", text="我下周要出差")
    conversation_id = first.ack["conversation_id"]
    # Then there is one ticket for the 留言, with both messages, owned by the desk
    r = await shop.get("/tickets", params={"q": "网页留言"})
    [item] = r.json()["items"]
    t = (await shop.get(f"/tickets/{item['id']}")).json()
    assert (t["channel"], t["conversation_id"], t["requester_name"]) == ("chat", conversation_id, "王五")
    assert t["description"] == "你们周末发货吗？"
    assert [x["body"] for x in t["replies"]] == ["我下周要出差"]
    assert t["replies"][0]["author"]["type"] == "shopper"
    # And the visitor got an acknowledgement by email
    assert any(t["number"] in m["subject"] for m in await emails_to(f"wangwu-{shop.slug}@example.com"))


async def test_agent_turns_a_chat_into_a_ticket_with_its_history(shop):
    visitor = await visitor_of(shop)
    sent = await do_send_message(visitor, client_msg_id="c1", text="耳机充不进电")
    conversation_id = sent.ack["conversation_id"]
    async with sessionmaker()() as session:
        agent = await resolve_actor(session, shop.agent_token)
    await do_send_message(agent, client_msg_id="c2", text="请问充电灯亮吗？", conversation_id=conversation_id)
    # Nobody was online, so the first message opened a 留言 ticket: turning the chat into a ticket finds it
    r = await shop.post(f"/conversations/{conversation_id}/ticket", {}, shop.agent_token)
    assert r.status_code == 200 and r.json()["subject"].startswith("网页留言")
    await shop.client.patch(f"/api/v1/tickets/{r.json()['id']}", json={"status": "solved"},
                            headers=shop.h(shop.agent_token))
    # Once that one is solved, the chat makes a new ticket with the whole history
    r = await shop.post(f"/conversations/{conversation_id}/ticket", {"priority": "high"}, shop.agent_token)
    assert r.status_code == 201, r.text
    t = r.json()
    assert t["channel"] == "chat" and t["priority"] == "high" and t["conversation_id"] == conversation_id
    assert "耳机充不进电" in t["description"] and "请问充电灯亮吗？" in t["description"]
    assert t["subject"].startswith("在线咨询：耳机充不进电")
    # Asking again gives the same open ticket
    r = await shop.post(f"/conversations/{conversation_id}/ticket", {}, shop.agent_token)
    assert r.status_code == 200 and r.json()["id"] == t["id"]


async def test_turn_into_ticket_is_for_the_merchants_staff(shop, other_shop):
    visitor = await visitor_of(shop)
    sent = await do_send_message(visitor, client_msg_id="x1", text="在吗")
    conversation_id = sent.ack["conversation_id"]
    for token in (other_shop.agent_token, other_shop.key):
        r = await shop.post(f"/conversations/{conversation_id}/ticket", {}, token)
        assert r.status_code == 404
