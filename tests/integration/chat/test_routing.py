"""Routing over real sockets: least-loaded assignment, a real queue with positions, sticky agents, 留言."""
import time

from sqlalchemy import select

from shopdesk.core.db import transaction
from shopdesk.core.outbox import OutboxItem
from tests.integration.chat.conftest import add_agent, auth, presence, widget


async def start_chat(chat_server, api, shop, sockets, name: str):
    session = await widget(api, shop)
    sock = await sockets(chat_server, session["token"], name)
    await sock.send(type="message.send", client_msg_id=f"{name}-1", text="你好")
    ack = await sock.expect("message.ack")
    update = await sock.expect("conversation.updated")
    return session, sock, ack["conversation_id"], update["conversation"]


async def test_three_agents_of_two_and_ten_shoppers_make_six_chats_and_a_queue_of_four(chat_server, api, chat_shop,
                                                                                        sockets):
    # given three agents online with a cap of 2 each
    agents = [await add_agent(chat_shop, api, f"客服{i}") for i in range(3)]
    for a in agents:
        assert (await presence(api, a, "online", 2))["capacity"] == 2
    desks = [await sockets(chat_server, a.token, f"agent-{i}") for i, a in enumerate(agents)]

    # when ten shoppers open a chat, one after the other
    chats = [await start_chat(chat_server, api, chat_shop, sockets, f"shopper-{i}") for i in range(10)]

    # then six are assigned, two per agent, and four wait in line with positions 1–4 and a wait estimate
    first_six = [c[3] for c in chats[:6]]
    assert all(c["status"] == "assigned" for c in first_six)
    loads = {a.staff_id: sum(1 for c in first_six if c["assignee"]["id"] == a.staff_id) for a in agents}
    assert sorted(loads.values()) == [2, 2, 2]
    queued = [c[3] for c in chats[6:]]
    assert [c["status"] for c in queued] == ["queued"] * 4
    assert [c["queue_position"] for c in queued] == [1, 2, 3, 4]
    assert all(c["assignee"] is None and c["eta_s"] > 0 for c in queued)
    assert queued[0]["eta_s"] < queued[3]["eta_s"]
    # and what a reconnecting widget and the console are told agrees
    again = await sockets(chat_server, chats[8][0]["token"], "shopper-8-again")
    assert again.hello["conversation"]["queue_position"] == 3
    r = await api.get("/api/v1/conversations", params={"status": "queued"}, headers=auth(agents[0].token))
    assert sorted(c["queue_position"] for c in r.json()["items"]) == [1, 2, 3, 4]
    r = await api.get("/api/v1/agents", headers=auth(agents[0].token))
    assert sorted(a["load"] for a in r.json()["items"] if a["staff_id"] in loads) == [2, 2, 2]

    # when an agent ends one of their chats
    ender = agents[0]
    mine = next(c for c in chats[:6] if c[3]["assignee"]["id"] == ender.staff_id)
    started = time.monotonic()
    r = await api.post(f"/api/v1/conversations/{mine[2]}/end", headers=auth(ender.token))
    assert r.status_code == 200 and r.json()["status"] == "ended", r.text

    # then the first in the queue is assigned to that agent within a second
    update = await chats[6][1].expect_where("conversation.updated",
                                            lambda f: f["conversation"]["status"] == "assigned", timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert update["conversation"]["assignee"]["id"] == ender.staff_id
    # and the others move up
    for (session, sock, conv_id, _), position in zip(chats[7:], (1, 2, 3)):
        moved = await sock.expect_where("conversation.updated",
                                        lambda f: f["conversation"]["queue_position"] == position, timeout=1.0)
        assert moved["conversation"]["status"] == "queued" and moved["conversation"]["id"] == conv_id
    # and the agent's console hears of the new chat; the ended shopper sees the end
    await desks[0].expect_where("conversation.updated", lambda f: f["conversation"]["id"] == chats[6][2])
    ended = await mine[1].expect_where("conversation.updated", lambda f: f["conversation"]["status"] == "ended")
    assert ended["conversation"]["ended_at"]
    system = await mine[1].expect_where("message.created", lambda f: f["message"]["sender"]["type"] == "system")
    assert system["message"]["seq"] == 2

    # when another agent raises their cap, they take the next in line at once
    await presence(api, agents[1], "online", 3)
    await chats[7][1].expect_where("conversation.updated", lambda f: f["conversation"]["status"] == "assigned",
                                   timeout=1.0)
    await chats[8][1].expect_where("conversation.updated", lambda f: f["conversation"]["queue_position"] == 1,
                                   timeout=1.0)


async def test_sticky_to_the_last_agent_within_a_day(chat_server, api, chat_shop, sockets):
    # given a shopper served by agent X, whose chat has ended
    x = await add_agent(chat_shop, api, "X")
    await presence(api, x)
    session, sock, conv_id, conv = await start_chat(chat_server, api, chat_shop, sockets, "returning")
    assert conv["assignee"]["id"] == x.staff_id
    r = await api.post(f"/api/v1/conversations/{conv_id}/end", headers=auth(session["token"]))
    assert r.status_code == 200
    # and agent Y comes online (idle, never assigned: the round robin would pick Y)
    y = await add_agent(chat_shop, api, "Y")
    await presence(api, y)
    fresh = await start_chat(chat_server, api, chat_shop, sockets, "newcomer")
    assert fresh[3]["assignee"]["id"] == y.staff_id

    # when the same shopper starts a new chat
    await sock.send(type="message.send", client_msg_id="returning-2", text="又是我")
    ack = await sock.expect("message.ack")
    update = await sock.expect_where("conversation.updated", lambda f: f["conversation"]["id"] == ack["conversation_id"])
    # then it is a new conversation, with X again
    assert ack["conversation_id"] != conv_id and ack["seq"] == 1
    assert update["conversation"]["assignee"]["id"] == x.staff_id


async def test_nobody_online_means_leave_a_message_answered_by_email(chat_server, api, chat_shop, sockets):
    # given a shop with no agent online
    agent = await add_agent(chat_shop, api, "值班")
    session = await widget(api, chat_shop)
    assert session["agents_online"] is False
    tab = await sockets(chat_server, session["token"], "tab")
    assert tab.hello["agents_online"] is False
    console = await sockets(chat_server, agent.token, "console")

    # when the shopper leaves a message
    await tab.send(type="message.send", client_msg_id="l1", text="质量有问题，请回电")
    ack = await tab.expect("message.ack")
    conv_id = ack["conversation_id"]
    # then the chat is offline (留言), the message is stored, and agents see it live and in the list
    assert (await tab.expect("conversation.updated"))["conversation"]["status"] == "offline"
    assert (await console.expect("message.created"))["message"]["text"] == "质量有问题，请回电"
    r = await api.get("/api/v1/conversations", params={"status": "offline"}, headers=auth(agent.token))
    item = next(c for c in r.json()["items"] if c["id"] == conv_id)
    assert item["unread"] == 1 and item["waiting_since"]
    r = await api.get(f"/api/v1/conversations/{conv_id}/messages", headers=auth(agent.token))
    assert [m["text"] for m in r.json()["items"]] == ["质量有问题，请回电"]

    # when an agent answers by email before the shopper left an address
    r = await api.post(f"/api/v1/conversations/{conv_id}/reply-by-email", json={"text": "您好，已收到"},
                       headers=auth(agent.token))
    assert r.status_code == 422 and r.json()["code"] == "no_email", r.text
    # and after the shopper leaves one
    r = await api.put("/api/v1/widget/contact", json={"email": "buyer@example.com", "name": "李女士"},
                      headers=auth(session["token"]))
    assert r.status_code == 200, r.text
    bad = await api.put("/api/v1/widget/contact", json={"email": "not-an-email"}, headers=auth(session["token"]))
    assert bad.status_code == 422 and bad.json()["field"] == "email"
    headers = {**auth(agent.token), "Idempotency-Key": "reply-1"}
    r = await api.post(f"/api/v1/conversations/{conv_id}/reply-by-email", json={"text": "您好，已收到"}, headers=headers)
    assert r.status_code == 201 and r.json()["seq"] == 2 and r.json()["replayed"] is False, r.text
    again = await api.post(f"/api/v1/conversations/{conv_id}/reply-by-email", json={"text": "您好，已收到"},
                           headers=headers)
    assert again.json()["seq"] == 2 and again.json()["replayed"] is True
    # then one email is queued in the outbox, and the reply is in the chat for the next visit
    async with transaction() as session_:
        mails = [i for i in (await session_.execute(select(OutboxItem).where(OutboxItem.kind == "email"))).scalars()
                 if i.payload.get("to") == "buyer@example.com"]
    assert len(mails) == 1 and "您好，已收到" in mails[0].payload["body"]
    created = await tab.expect_where("message.created", lambda f: f["message"]["seq"] == 2)
    assert created["message"]["via"] == "email" and created["message"]["sender"]["type"] == "agent"

    # when an agent comes online and the shopper writes again, the chat is routed
    await presence(api, agent)
    await tab.send(type="message.send", client_msg_id="l2", text="现在有人吗", conversation_id=conv_id)
    update = await tab.expect_where("conversation.updated", lambda f: f["conversation"]["status"] == "assigned")
    assert update["conversation"]["assignee"]["id"] == agent.staff_id


async def test_presence_input_is_checked(api, chat_shop):
    agent = await add_agent(chat_shop, api)
    for body, field in (({"status": "busy"}, "status"), ({"status": "online", "capacity": 11}, "capacity"),
                        ({"status": "online", "capacity": 0}, "capacity"), ({"status": "online", "x": 1}, "x")):
        r = await api.put("/api/v1/agents/me/presence", json=body, headers=auth(agent.token))
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    r = await api.put("/api/v1/agents/me/presence", json={"status": "online"}, headers=auth(chat_shop.key))
    assert r.status_code == 404  # a merchant key is nobody's presence
    assert (await presence(api, agent))["capacity"] == 5  # default cap
