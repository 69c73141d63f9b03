"""Agent tools over a real server: canned replies, private notes and @mentions, inviting a colleague, locks,
blocking a visitor, proactive invitations — and none of them reaches across merchants."""
import asyncio

from tests.factories import make_shop
from tests.integration.chat.conftest import add_agent, auth, presence, sign, store_secret, widget


async def chat_with(chat_server, api, shop, sockets, **session_body):
    agent = await add_agent(shop, api, "小王")
    await presence(api, agent)
    desk = await sockets(chat_server, agent.token, "agent")
    session = await widget(api, shop, **session_body)
    tab = await sockets(chat_server, session["token"], "tab")
    await tab.send(type="message.send", client_msg_id="first", text="你好")
    conv_id = (await tab.expect("message.ack"))["conversation_id"]
    await desk.expect("message.created")
    return agent, desk, session, tab, conv_id


async def test_canned_replies_fill_in_their_variables_for_the_conversation(chat_server, api, chat_shop, sockets):
    # given a shopper bound to a customer who has an order, chatting with an agent
    order = await chat_shop.order(external_id="buyer-9")
    secret = await store_secret(chat_shop)
    agent, desk, session, tab, conv_id = await chat_with(
        chat_server, api, chat_shop, sockets,
        identity={"external_id": "buyer-9", "name": "李雷", "hmac": sign(secret, "buyer-9")})

    # when an admin adds a shared reply and the agent one of their own
    r = await api.post("/api/v1/chat/canned", json={"shortcut": "hi", "text": "{customer_name}您好，我是{agent_name}",
                                                    "shared": True}, headers=auth(chat_shop.admin_token))
    assert r.status_code == 201, r.text
    assert r.json()["scope"] == "merchant"
    r = await api.post("/api/v1/chat/canned", json={"shortcut": "ship", "text": "订单 {order_no} 已发货 {unknown}"},
                       headers=auth(agent.token))
    assert r.status_code == 201 and r.json()["scope"] == "agent"
    own_id = r.json()["id"]

    # then listing them for the conversation fills in the customer, the agent and the order number
    r = await api.get("/api/v1/chat/canned", params={"conversation_id": conv_id}, headers=auth(agent.token))
    rendered = {c["shortcut"]: c["rendered"] for c in r.json()["items"]}
    assert rendered == {"hi": "李雷您好，我是小王", "ship": f"订单 {order['order_no']} 已发货 {{unknown}}"}
    # and a colleague sees the shared one but not the agent's own
    colleague = await add_agent(chat_shop, api, "小赵")
    r = await api.get("/api/v1/chat/canned", headers=auth(colleague.token))
    assert [c["shortcut"] for c in r.json()["items"]] == ["hi"]

    # when an agent tries to share one, repeats a shortcut, or puts a space in it
    r = await api.post("/api/v1/chat/canned", json={"shortcut": "x", "text": "t", "shared": True},
                       headers=auth(agent.token))
    assert r.status_code == 403
    r = await api.post("/api/v1/chat/canned", json={"shortcut": "ship", "text": "again"}, headers=auth(agent.token))
    assert (r.status_code, r.json()["code"], r.json()["field"]) == (409, "duplicate_shortcut", "shortcut")
    r = await api.post("/api/v1/chat/canned", json={"shortcut": "a b", "text": "t"}, headers=auth(agent.token))
    assert (r.status_code, r.json()["field"]) == (422, "shortcut")

    # and another merchant sees none of it and cannot render against this conversation or delete the reply
    other = await make_shop(api)
    stranger = await add_agent(other, api)
    r = await api.get("/api/v1/chat/canned", headers=auth(stranger.token))
    assert r.json()["items"] == []
    r = await api.get("/api/v1/chat/canned", params={"conversation_id": conv_id}, headers=auth(stranger.token))
    assert r.status_code == 404
    r = await api.delete(f"/api/v1/chat/canned/{own_id}", headers=auth(stranger.token))
    assert r.status_code == 404
    r = await api.delete(f"/api/v1/chat/canned/{own_id}", headers=auth(agent.token))
    assert r.status_code == 204


async def test_a_private_note_reaches_staff_only_and_a_mention_brings_the_colleague_in(chat_server, api, chat_shop,
                                                                                          sockets):
    # given a chat, and a colleague online in another browser
    agent, desk, session, tab, conv_id = await chat_with(chat_server, api, chat_shop, sockets)
    colleague = await add_agent(chat_shop, api, "小赵")
    colleague_sock = await sockets(chat_server, colleague.token, "colleague")

    # when the agent writes a private note mentioning the colleague, then a reply
    await desk.send(type="message.send", client_msg_id="n1", conversation_id=conv_id, private=True,
                    text="@小赵 这个顾客是老客户，帮忙看下 <b>退款</b>")
    note_ack = await desk.expect("message.ack", client_msg_id="n1")
    await desk.send(type="message.send", client_msg_id="r1", conversation_id=conv_id, text="马上为您处理")
    reply_ack = await desk.expect("message.ack", client_msg_id="r1")
    assert reply_ack["seq"] == note_ack["seq"] + 1

    # then the colleague gets a mention frame and, now a participant, the conversation's messages
    mention = await colleague_sock.expect("mention")
    assert (mention["conversation_id"], mention["seq"], mention["by"]["id"]) == (conv_id, note_ack["seq"], agent.staff_id)
    note = (await colleague_sock.expect_where("message.created", lambda f: f["message"]["seq"] == note_ack["seq"]))
    assert note["message"]["private"] is True and note["message"]["mentions"] == [colleague.staff_id]
    await colleague_sock.expect_where("message.created", lambda f: f["message"]["seq"] == reply_ack["seq"])
    # and the shopper gets the reply but never the note, live or replayed or over HTTP
    got = await tab.expect_where("message.created", lambda f: f["message"]["seq"] == reply_ack["seq"])
    assert got["message"]["private"] is False
    again = await sockets(chat_server, session["token"], "again")
    await again.send(type="resume", conversation_id=conv_id, after_seq=0)
    await again.expect_where("message.created", lambda f: f["message"]["seq"] == reply_ack["seq"])
    for sock in (tab, again):
        seqs = [f["message"]["seq"] for f in sock.log + await sock.drain(0.3) if f["type"] == "message.created"]
        assert note_ack["seq"] not in seqs
    r = await api.get(f"/api/v1/conversations/{conv_id}/messages", headers=auth(session["token"]))
    assert [m["seq"] for m in r.json()["items"]] == [1, reply_ack["seq"]]
    r = await api.get(f"/api/v1/conversations/{conv_id}/messages", headers=auth(agent.token))
    assert [m["seq"] for m in r.json()["items"]] == [1, note_ack["seq"], reply_ack["seq"]]

    # when a shopper tries to write a note, or an agent mentions someone of another merchant
    await tab.send(type="message.send", client_msg_id="n2", conversation_id=conv_id, text="x", private=True)
    assert (await tab.expect("error"))["field"] == "private"
    stranger = await add_agent(await make_shop(api), api)
    await desk.send(type="message.send", client_msg_id="n3", conversation_id=conv_id, text="看看", private=True,
                    mentions=[stranger.staff_id])
    err = await desk.expect("error")
    assert (err["code"], err["field"]) == ("validation_failed", "mentions[0]")


async def test_an_invited_colleague_receives_the_chat_and_may_reply(chat_server, api, chat_shop, sockets):
    agent, desk, session, tab, conv_id = await chat_with(chat_server, api, chat_shop, sockets)
    colleague = await add_agent(chat_shop, api, "小赵")
    colleague_sock = await sockets(chat_server, colleague.token, "colleague")

    # when the agent invites the colleague
    r = await api.post(f"/api/v1/conversations/{conv_id}/participants", json={"agent_id": colleague.staff_id},
                       headers=auth(agent.token))
    assert r.status_code == 201, r.text
    # then the colleague is told, and sees the next messages of the chat
    added = await colleague_sock.expect("participant.added")
    assert added["conversation_id"] == conv_id and added["by"]["id"] == agent.staff_id
    await tab.send(type="message.send", client_msg_id="v2", conversation_id=conv_id, text="还在吗")
    await colleague_sock.expect_where("message.created", lambda f: f["message"]["client_msg_id"] == "v2")
    # and may reply; the shopper gets it
    await colleague_sock.send(type="message.send", client_msg_id="c1", conversation_id=conv_id, text="我来帮您")
    await colleague_sock.expect("message.ack", client_msg_id="c1")
    got = await tab.expect_where("message.created", lambda f: f["message"]["client_msg_id"] == "c1")
    assert got["message"]["sender"]["id"] == colleague.staff_id

    # when invited twice, or someone of another merchant, or into another merchant's chat
    r = await api.post(f"/api/v1/conversations/{conv_id}/participants", json={"agent_id": colleague.staff_id},
                       headers=auth(agent.token))
    assert (r.status_code, r.json()["field"]) == (409, "agent_id")
    other = await make_shop(api)
    stranger = await add_agent(other, api)
    r = await api.post(f"/api/v1/conversations/{conv_id}/participants", json={"agent_id": stranger.staff_id},
                       headers=auth(agent.token))
    assert (r.status_code, r.json()["field"]) == (422, "agent_id")
    r = await api.post(f"/api/v1/conversations/{conv_id}/participants", json={"agent_id": stranger.staff_id},
                       headers=auth(stranger.token))
    assert r.status_code == 404


async def test_a_locked_chat_takes_replies_from_its_holder_only(chat_server, api, chat_shop, sockets):
    agent, desk, session, tab, conv_id = await chat_with(chat_server, api, chat_shop, sockets)
    colleague = await add_agent(chat_shop, api, "小赵")
    colleague_sock = await sockets(chat_server, colleague.token, "colleague")

    # when the holder locks it
    r = await api.post(f"/api/v1/conversations/{conv_id}/lock", headers=auth(agent.token))
    assert r.status_code == 200 and r.json()["locked_by"] == agent.staff_id
    # then a colleague's reply is refused with `locked` (a note is still fine), the holder's goes through
    await colleague_sock.send(type="message.send", client_msg_id="c1", conversation_id=conv_id, text="我来")
    err = await colleague_sock.expect("error")
    assert (err["code"], err["ref"]) == ("locked", "c1")
    await colleague_sock.send(type="message.send", client_msg_id="c2", conversation_id=conv_id, text="备注",
                              private=True)
    await colleague_sock.expect("message.ack", client_msg_id="c2")
    await desk.send(type="message.send", client_msg_id="a1", conversation_id=conv_id, text="您好")
    await desk.expect("message.ack", client_msg_id="a1")
    # and the colleague (an agent) cannot unlock it, nor can another merchant
    r = await api.post(f"/api/v1/conversations/{conv_id}/unlock", headers=auth(colleague.token))
    assert (r.status_code, r.json()["code"]) == (409, "locked")
    stranger = await add_agent(await make_shop(api), api)
    r = await api.post(f"/api/v1/conversations/{conv_id}/lock", headers=auth(stranger.token))
    assert r.status_code == 404

    # when the holder unlocks it, the colleague may reply
    r = await api.post(f"/api/v1/conversations/{conv_id}/unlock", headers=auth(agent.token))
    assert r.status_code == 200 and r.json()["locked_by"] is None
    await colleague_sock.send(type="message.send", client_msg_id="c3", conversation_id=conv_id, text="我来")
    await colleague_sock.expect("message.ack", client_msg_id="c3")


async def test_a_blocked_visitor_is_cut_off_and_refused(chat_server, api, chat_shop, sockets):
    agent, desk, session, tab, conv_id = await chat_with(chat_server, api, chat_shop, sockets)
    other_tab = await sockets(chat_server, session["token"], "tab-2")
    bystander = await widget(api, chat_shop)
    bystander_tab = await sockets(chat_server, bystander["token"], "bystander")
    stranger = await add_agent(await make_shop(api), api)

    # when another merchant's agent tries to block them
    r = await api.post("/api/v1/chat/blocks", json={"conversation_id": conv_id}, headers=auth(stranger.token))
    assert r.status_code == 404
    # when the agent blocks them
    r = await api.post("/api/v1/chat/blocks", json={"conversation_id": conv_id, "reason": "骚扰"},
                       headers=auth(agent.token))
    assert r.status_code == 201, r.text

    # then both their sockets are told and closed with 1008
    for sock in (tab, other_tab):
        assert await sock.closed_with() == 1008
        assert any(f.get("code") == "blocked" for f in sock.buffer)
    # and their chat has ended
    r = await api.get(f"/api/v1/conversations/{conv_id}", headers=auth(agent.token))
    assert r.json()["status"] == "ended"
    # and a new session or socket for that visitor is refused
    r = await api.post("/api/v1/widget/sessions", json={"store": "main", "merchant": chat_shop.slug,
                                                        "visitor_id": session["visitor_id"]})
    assert (r.status_code, r.json()["code"]) == (403, "blocked")
    again = await sockets(chat_server, session["token"], "again", hello=False)
    assert (await again.expect("error"))["code"] == "blocked"
    assert await again.closed_with() == 1008
    # while another visitor is unaffected
    await bystander_tab.send(type="ping")
    await bystander_tab.expect("pong")
    # and the block is listed, and lifting it lets them back
    r = await api.get("/api/v1/chat/blocks", headers=auth(agent.token))
    block_id = next(b["id"] for b in r.json()["items"] if b["value"] == session["visitor_id"])
    assert (await api.get("/api/v1/chat/blocks", headers=auth(stranger.token))).json()["items"] == []
    assert (await api.delete(f"/api/v1/chat/blocks/{block_id}", headers=auth(stranger.token))).status_code == 404
    assert (await api.delete(f"/api/v1/chat/blocks/{block_id}", headers=auth(agent.token))).status_code == 204
    r = await api.post("/api/v1/widget/sessions", json={"store": "main", "merchant": chat_shop.slug,
                                                        "visitor_id": session["visitor_id"]})
    assert r.status_code == 200


async def test_an_agent_invites_a_browsing_visitor(chat_server, api, chat_shop, sockets):
    # given an online agent and a visitor browsing a product with the widget closed (no chat yet)
    agent = await add_agent(chat_shop, api, "小王")
    await presence(api, agent)
    session = await widget(api, chat_shop, page={"url": "https://shop.test/p/A", "title": "蓝牙耳机"})
    tab = await sockets(chat_server, session["token"], "tab")

    # when the agent lists who is browsing
    r = await api.get("/api/v1/chat/visitors/online", headers=auth(agent.token))
    browsing = next(v for v in r.json()["items"] if v["id"] == session["visitor_id"])
    assert browsing["pages"][0]["url"] == "https://shop.test/p/A" and browsing["conversation_id"] is None
    # and invites them
    r = await api.post(f"/api/v1/chat/visitors/{session['visitor_id']}/invite", json={"text": "需要帮忙吗？"},
                       headers=auth(agent.token))
    assert r.status_code == 201, r.text
    conv = r.json()["conversation"]
    assert conv["status"] == "assigned" and conv["assignee"]["id"] == agent.staff_id

    # then the widget gets the invitation, then the message itself
    invitation = await tab.expect("invitation")
    assert invitation == {"type": "invitation", "text": "需要帮忙吗？", "agent": {"id": agent.staff_id, "name": "小王"},
                          "conversation_id": conv["id"], "message_id": r.json()["message"]["id"]}
    m = (await tab.expect("message.created"))["message"]
    assert (m["seq"], m["text"], m["sender"]["type"]) == (1, "需要帮忙吗？", "agent")
    # and the visitor's answer lands in that chat
    await tab.send(type="message.send", client_msg_id="v1", text="好的")
    assert (await tab.expect("message.ack"))["conversation_id"] == conv["id"]

    # when invited again while chatting, or by another merchant
    r = await api.post(f"/api/v1/chat/visitors/{session['visitor_id']}/invite", json={"text": "x"},
                       headers=auth(agent.token))
    assert (r.status_code, r.json()["code"]) == (409, "already_chatting")
    stranger = await add_agent(await make_shop(api), api)
    r = await api.post(f"/api/v1/chat/visitors/{session['visitor_id']}/invite", json={"text": "x"},
                       headers=auth(stranger.token))
    assert r.status_code == 404
    r = await api.get("/api/v1/chat/visitors/online", headers=auth(stranger.token))
    assert all(v["id"] != session["visitor_id"] for v in r.json()["items"])
    # and a visitor who left is no longer listed
    await tab.close()
    await asyncio.sleep(0.3)
    r = await api.get("/api/v1/chat/visitors/online", headers=auth(agent.token))
    assert all(v["id"] != session["visitor_id"] for v in r.json()["items"])
