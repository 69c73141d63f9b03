"""A shopper and an agent talk over real sockets: stored, acknowledged, delivered to every socket, in order."""
from tests.integration.chat.conftest import add_agent, auth, presence, widget


async def test_shopper_and_agent_exchange_with_acks_and_gapless_seqs(chat_server, api, chat_shop, sockets):
    # given an agent online with two devices, and a shopper with two tabs
    agent = await add_agent(chat_shop, api, "小王")
    await presence(api, agent)
    desk_a = await sockets(chat_server, agent.token, "agent-1")
    desk_b = await sockets(chat_server, agent.token, "agent-2")
    session = await widget(api, chat_shop)
    assert session["agents_online"] is True and session["conversation"] is None
    tab1 = await sockets(chat_server, session["token"], "tab-1")
    tab2 = await sockets(chat_server, session["token"], "tab-2")
    assert tab1.hello == {"type": "hello", "protocol": 1, "visitor_id": session["visitor_id"],
                          "conversation": None, "agents_online": True}
    assert desk_a.hello["staff_id"] == agent.staff_id

    # when the shopper writes (text with HTML in it) without naming a conversation
    text = "<script>alert('x')</script> 耳机坏了 & <b>急</b>"
    await tab1.send(type="message.send", client_msg_id="c-1", text=text)

    # then it is stored and acknowledged with seq 1, and the chat is assigned to the agent
    ack = await tab1.expect("message.ack")
    assert ack["client_msg_id"] == "c-1" and ack["seq"] == 1 and ack["message_id"]
    conv_id = ack["conversation_id"]
    updated = await tab1.expect("conversation.updated")
    assert updated["conversation"]["status"] == "assigned"
    assert updated["conversation"]["assignee"] == {"id": agent.staff_id, "name": "小王"}
    # and every socket of both sides receives the message, text exactly as sent (plain text, not HTML)
    for sock in (tab1, tab2, desk_a, desk_b):
        created = await sock.expect("message.created")
        m = created["message"]
        assert (m["id"], m["seq"], m["conversation_id"], m["client_msg_id"]) == (ack["message_id"], 1, conv_id, "c-1")
        assert m["text"] == text and m["sender"]["type"] == "visitor" and m["sender"]["id"] == session["visitor_id"]
        assert m["created_at"].endswith("Z") and m["attachment"] is None

    # when both sides write several messages
    for i in range(2, 6):
        await desk_a.send(type="message.send", client_msg_id=f"a-{i}", conversation_id=conv_id, text=f"答复 {i}")
        assert (await desk_a.expect("message.ack"))["seq"] == 2 * i - 2
        await tab2.send(type="message.send", client_msg_id=f"c-{i}", conversation_id=conv_id, text=f"追问 {i}")
        assert (await tab2.expect("message.ack"))["seq"] == 2 * i - 1

    # then every socket saw seq 1..9 exactly once and in order
    for sock in (tab1, tab2, desk_a, desk_b):
        seqs = [f["message"]["seq"] for f in sock.log if f["type"] == "message.created"]
        while len(seqs) < 9:
            await sock.expect("message.created")
            seqs = [f["message"]["seq"] for f in sock.log if f["type"] == "message.created"]
        assert seqs == list(range(1, 10)), (sock.name, seqs)
    agent_msgs = [f["message"] for f in tab1.log if f["type"] == "message.created" and f["message"]["sender"]["type"] == "agent"]
    assert {m["sender"]["name"] for m in agent_msgs} == {"小王"}

    # and the history over HTTP says the same, for the agent and for the shopper who owns it
    for token in (agent.token, session["token"]):
        r = await api.get(f"/api/v1/conversations/{conv_id}/messages", headers=auth(token))
        assert r.status_code == 200, r.text
        assert [m["seq"] for m in r.json()["items"]] == list(range(1, 10))
    assert r.json()["items"][0]["text"] == text


async def test_a_resend_gets_the_first_ack_and_stores_nothing(chat_server, api, chat_shop, sockets):
    # given a shopper whose first message was stored
    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    desk = await sockets(chat_server, agent.token, "agent")
    session = await widget(api, chat_shop)
    tab = await sockets(chat_server, session["token"], "tab")
    await tab.send(type="message.send", client_msg_id="same-id", text="在吗")
    first = await tab.expect("message.ack")
    await desk.expect("message.created")

    # when the shopper resends it (same client id), on a new socket, with and without the conversation id
    again = await sockets(chat_server, session["token"], "reconnected")
    await again.send(type="message.send", client_msg_id="same-id", text="在吗")
    second = await again.expect("message.ack")
    await again.send(type="message.send", client_msg_id="same-id", text="在吗",
                     conversation_id=first["conversation_id"])
    third = await again.expect("message.ack")

    # then the same ack comes back, and nothing new is stored or broadcast
    assert first == second == third
    assert not [f for f in await desk.drain(0.7) if f["type"] == "message.created"]
    r = await api.get(f"/api/v1/conversations/{first['conversation_id']}/messages", headers=auth(agent.token))
    assert [m["client_msg_id"] for m in r.json()["items"]] == ["same-id"]
    # and the same client id from the agent is a different message (dedupe is per sender)
    await desk.send(type="message.send", client_msg_id="same-id", text="在的", conversation_id=first["conversation_id"])
    assert (await desk.expect("message.ack"))["seq"] == 2


async def test_typing_and_read_are_relayed_to_the_other_side_only(chat_server, api, chat_shop, sockets):
    # given a conversation between a shopper and an agent
    agent = await add_agent(chat_shop, api, "小李")
    await presence(api, agent)
    desk = await sockets(chat_server, agent.token, "agent")
    session = await widget(api, chat_shop)
    tab = await sockets(chat_server, session["token"], "tab")
    await tab.send(type="message.send", client_msg_id="m1", text="你好")
    conv_id = (await tab.expect("message.ack"))["conversation_id"]
    await desk.expect("message.created")

    # when the shopper types, then the agent sees it and the shopper gets no echo
    await tab.send(type="typing", conversation_id=conv_id)
    typing = await desk.expect("typing")
    assert typing == {"type": "typing", "conversation_id": conv_id,
                      "sender": {"type": "visitor", "id": session["visitor_id"], "name": typing["sender"]["name"]}}
    # when the agent types, the shopper sees it
    await desk.send(type="typing", conversation_id=conv_id)
    assert (await tab.expect("typing"))["sender"] == {"type": "agent", "id": agent.staff_id, "name": "小李"}
    assert not [f for f in await tab.drain(0.3) if f["type"] == "typing"]

    # when the agent replies and the shopper reads up to it
    await desk.send(type="message.send", client_msg_id="r1", text="您好", conversation_id=conv_id)
    seq = (await desk.expect("message.ack"))["seq"]
    await tab.expect("message.created", timeout=5)
    await tab.send(type="read", conversation_id=conv_id, seq=seq)
    # then the agent is told, and the read mark is stored (a read beyond the last seq is clipped)
    read = await desk.expect("read")
    assert read["conversation_id"] == conv_id and read["seq"] == seq and read["reader"]["type"] == "visitor"
    r = await api.get(f"/api/v1/conversations/{conv_id}", headers=auth(session["token"]))
    assert r.json()["unread"] == 0
    await tab.send(type="message.send", client_msg_id="m2", text="谢谢", conversation_id=conv_id)
    last = (await tab.expect("message.ack"))["seq"]
    r = await api.get(f"/api/v1/conversations/{conv_id}", headers=auth(agent.token))
    assert r.json()["unread"] == 1
    await desk.send(type="read", conversation_id=conv_id, seq=999)
    read = await tab.expect("read")
    assert read["seq"] == last and read["reader"] == {"type": "agent", "id": agent.staff_id, "name": "小李"}
    r = await api.get(f"/api/v1/conversations/{conv_id}", headers=auth(agent.token))
    assert r.json()["unread"] == 0 and r.json()["last_seq"] == last
    # reading again moves nothing, so nobody is told
    await desk.send(type="read", conversation_id=conv_id, seq=last)
    assert not [f for f in await tab.drain(0.5) if f["type"] == "read"]


async def test_ping_pong_and_an_image_message(chat_server, api, chat_shop, sockets):
    from tests.factories import PNG

    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    desk = await sockets(chat_server, agent.token, "agent")
    session = await widget(api, chat_shop)
    tab = await sockets(chat_server, session["token"], "tab")
    await tab.send(type="ping")
    assert await tab.expect("pong") == {"type": "pong"}
    # given an image uploaded by the shopper (checked by content)
    r = await api.post("/api/v1/chat/uploads", files={"file": ("x.txt", PNG, "text/plain")}, headers=auth(session["token"]))
    assert r.status_code == 201 and r.json()["content_type"] == "image/png", r.text
    upload = r.json()
    bad = await api.post("/api/v1/chat/uploads", files={"file": ("x.png", b"not an image", "image/png")},
                         headers=auth(session["token"]))
    assert bad.status_code == 415 and bad.json()["field"] == "file"
    # when it is sent as a message
    await tab.send(type="message.send", client_msg_id="img", attachment_id=upload["id"])
    await tab.expect("message.ack")
    m = (await desk.expect("message.created"))["message"]
    # then the agent gets the attachment and may fetch it; another visitor may not
    assert m["attachment"]["id"] == upload["id"] and m["attachment"]["content_type"] == "image/png"
    assert (await api.get(m["attachment"]["url"], headers=auth(agent.token))).content == PNG
    stranger = await widget(api, chat_shop)
    assert (await api.get(m["attachment"]["url"], headers=auth(stranger["token"]))).status_code == 404
    # and another visitor cannot send somebody else's upload
    other_tab = await sockets(chat_server, stranger["token"], "stranger")
    await other_tab.send(type="message.send", client_msg_id="steal", attachment_id=upload["id"])
    err = await other_tab.expect("error")
    assert err["code"] == "not_found" and err["field"] == "attachment_id" and err["ref"] == "steal"


async def test_concurrent_senders_get_unique_gapless_seqs_delivered_in_order(chat_server, api, chat_shop, sockets):
    import asyncio

    # given a shopper with two tabs and an agent with two devices in one conversation
    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    session = await widget(api, chat_shop)
    tabs = [await sockets(chat_server, session["token"], f"tab-{i}") for i in range(2)]
    await tabs[0].send(type="message.send", client_msg_id="open", text="开始")
    conv_id = (await tabs[0].expect("message.ack"))["conversation_id"]
    desks = [await sockets(chat_server, agent.token, f"desk-{i}") for i in range(2)]
    for d in desks:
        await d.send(type="resume", conversation_id=conv_id, after_seq=0)

    # when all four write 20 messages each, at once, without waiting for acks
    async def burst(sock, prefix):
        for i in range(20):
            await sock.send(type="message.send", client_msg_id=f"{prefix}-{i}", text=f"{prefix} {i}",
                            conversation_id=conv_id)
        return [(await sock.expect("message.ack", timeout=20))["seq"] for _ in range(20)]

    acks = await asyncio.gather(*(burst(s, s.name) for s in tabs + desks))
    # then the 80 acks hold seqs 2..81, each once, and each sender's own are increasing
    assert sorted(seq for a in acks for seq in a) == list(range(2, 82))
    assert all(a == sorted(a) for a in acks)
    # and every socket receives 1..81 in order, each once
    for sock in tabs + desks:
        while len([f for f in sock.log if f["type"] == "message.created"]) < 81:
            await sock.expect("message.created", timeout=10)
        assert [f["message"]["seq"] for f in sock.log if f["type"] == "message.created"] == list(range(1, 82)), sock.name
