"""What the widget needs from the server: cards, page views, video signalling, announcements, presence that
follows sockets, idle chats closing, and the visitor's info — over a real server and real sockets."""
import asyncio
import time

import httpx
import pytest

from tests.factories import make_shop
from websockets.asyncio.client import connect

from tests.integration.chat.conftest import Server, Sock, add_agent, auth, presence, sign, store_secret, widget


async def open_chat(chat_server, api, shop, sockets, **session_body):
    """An online agent and a shopper whose first message opened a chat assigned to that agent."""
    agent = await add_agent(shop, api, "小李")
    await presence(api, agent)
    desk = await sockets(chat_server, agent.token, "agent")
    session = await widget(api, shop, **session_body)
    tab = await sockets(chat_server, session["token"], "tab")
    await tab.send(type="message.send", client_msg_id="first", text="你好")
    ack = await tab.expect("message.ack")
    await desk.expect("message.created")
    return agent, desk, session, tab, ack["conversation_id"]


async def test_a_product_card_is_checked_filled_in_and_delivered(chat_server, api, chat_shop, sockets):
    # given a chat between a shopper and an agent
    agent, desk, session, tab, conv_id = await open_chat(chat_server, api, chat_shop, sockets)

    # when the shopper sends a product card with no text
    await tab.send(type="message.send", client_msg_id="card-1", conversation_id=conv_id,
                   card={"type": "product", "sku": "A"})

    # then the stored message carries the server's title and price in fen, on both sides
    ack = await tab.expect("message.ack", client_msg_id="card-1")
    for sock in (tab, desk):
        m = (await sock.expect_where("message.created", lambda f: f["message"]["seq"] == ack["seq"]))["message"]
        assert m["card"] == {"type": "product", "sku": "A", "title": "蓝牙耳机", "price_fen": 10000}
        assert m["text"] == ""
    r = await api.get(f"/api/v1/conversations/{conv_id}/messages", headers=auth(session["token"]))
    assert r.json()["items"][-1]["card"]["price_fen"] == 10000

    # when a card names a sku the merchant does not sell, or one of another merchant only
    other = await make_shop(api)
    r = await other.post("/products", {"sku": "ONLY-THERE", "name": "别家商品", "category": "x", "price_fen": 1})
    assert r.status_code == 201
    for sku in ("NOPE", "ONLY-THERE"):
        await tab.send(type="message.send", client_msg_id=f"bad-{sku}", conversation_id=conv_id,
                       card={"type": "product", "sku": sku})
        err = await tab.expect("error")
        # then an error names card.sku and nothing is stored
        assert (err["code"], err["field"], err["ref"]) == ("not_found", "card.sku", f"bad-{sku}")
    await tab.send(type="message.send", client_msg_id="bad-shape", conversation_id=conv_id, card={"type": "product"})
    assert (await tab.expect("error"))["field"] == "card.sku"
    await tab.send(type="message.send", client_msg_id="bad-type", conversation_id=conv_id,
                   card={"type": "coupon", "sku": "A"})
    assert (await tab.expect("error"))["field"] == "card.type"
    r = await api.get(f"/api/v1/conversations/{conv_id}", headers=auth(agent.token))
    assert r.json()["last_seq"] == ack["seq"]


async def test_order_cards_show_only_the_shoppers_own_orders(chat_server, api, chat_shop, sockets):
    # given two orders of two customers, and a shopper bound (HMAC) to the first customer
    mine = await chat_shop.order(external_id="buyer-1")
    theirs = await chat_shop.order(external_id="buyer-2")
    secret = await store_secret(chat_shop)
    identity = {"external_id": "buyer-1", "name": "张三", "hmac": sign(secret, "buyer-1")}
    agent, desk, session, tab, conv_id = await open_chat(chat_server, api, chat_shop, sockets, identity=identity)

    # when the shopper sends their own order
    await tab.send(type="message.send", client_msg_id="o-1", conversation_id=conv_id, text="这个订单",
                   card={"type": "order", "order_no": mine["order_no"]})
    ack = await tab.expect("message.ack", client_msg_id="o-1")
    m = (await desk.expect_where("message.created", lambda f: f["message"]["seq"] == ack["seq"]))["message"]
    # then the agent sees it with the order's status and amount, filled in by the server
    assert m["card"]["order_no"] == mine["order_no"] and m["card"]["status"] == mine["status"]
    assert m["card"]["paid_total_fen"] == mine["paid_total_fen"] and m["card"]["title"].startswith("蓝牙耳机")

    # when they send someone else's order number
    await tab.send(type="message.send", client_msg_id="o-2", conversation_id=conv_id,
                   card={"type": "order", "order_no": theirs["order_no"]})
    # then it is not found, exactly like a number that does not exist
    err = await tab.expect("error")
    assert (err["code"], err["field"]) == ("not_found", "card.order_no")

    # and an anonymous visitor may send no order at all
    anon = await widget(api, chat_shop)
    anon_tab = await sockets(chat_server, anon["token"], "anon")
    await anon_tab.send(type="message.send", client_msg_id="o-3", card={"type": "order", "order_no": mine["order_no"]})
    assert (await anon_tab.expect("error"))["field"] == "card.order_no"

    # while the agent may send any order of the merchant
    await desk.send(type="message.send", client_msg_id="o-4", conversation_id=conv_id,
                    card={"type": "order", "order_no": theirs["order_no"]})
    assert (await desk.expect("message.ack", client_msg_id="o-4"))["seq"] == ack["seq"] + 1


async def test_page_views_are_kept_and_shown_live_to_the_agent(chat_server, api, chat_shop, sockets):
    # given a chat, the widget session having reported the landing page
    agent, desk, session, tab, conv_id = await open_chat(
        chat_server, api, chat_shop, sockets, page={"url": "https://shop.test/", "title": "首页"})

    # when the shopper moves to two more pages
    await tab.send(type="page.view", url="https://shop.test/p/A", title="蓝牙耳机")
    await tab.send(type="page.view", url="https://shop.test/cart", title="<b>购物车</b>")

    # then the agent gets each one live, in order, and the visitor gets no ack
    first = await desk.expect("visitor.page")
    second = await desk.expect("visitor.page")
    assert (first["url"], second["url"]) == ("https://shop.test/p/A", "https://shop.test/cart")
    assert second == {"type": "visitor.page", "visitor_id": session["visitor_id"], "conversation_id": conv_id,
                      "url": "https://shop.test/cart", "title": "<b>购物车</b>", "at": second["at"]}
    assert not [f for f in await tab.drain(0.3) if f["type"] in ("visitor.page", "error")]
    # and the trail (newest first) is on the conversation for the customer card
    r = await api.get(f"/api/v1/conversations/{conv_id}", headers=auth(agent.token))
    assert [p["url"] for p in r.json()["visitor"]["pages"]] == [
        "https://shop.test/cart", "https://shop.test/p/A", "https://shop.test/"]
    assert r.json()["visitor"]["landing_page"] == "https://shop.test/"

    # when more than 50 pages are seen, the oldest drop off
    for i in range(52):
        await tab.send(type="page.view", url=f"https://shop.test/p/{i}", title="")
        if i % 20 == 19:
            await asyncio.sleep(2.2)  # stay under the socket's 10 frames/s
    for _ in range(52):
        await desk.expect("visitor.page")
    r = await api.get(f"/api/v1/conversations/{conv_id}", headers=auth(agent.token))
    pages = r.json()["visitor"]["pages"]
    assert len(pages) == 50 and pages[0]["url"] == "https://shop.test/p/51"

    # and a page.view from an agent is refused, naming the field
    await desk.send(type="page.view", url="https://x.test/", title="")
    assert (await desk.expect("error"))["code"] == "validation_failed"


async def test_video_signalling_goes_only_between_the_visitor_and_the_assignee(chat_server, api, chat_shop, sockets):
    # given a chat assigned to an agent, a colleague online too, and another merchant's agent
    agent, desk, session, tab, conv_id = await open_chat(chat_server, api, chat_shop, sockets)
    colleague = await add_agent(chat_shop, api, "小赵")
    colleague_sock = await sockets(chat_server, colleague.token, "colleague")
    other = await make_shop(api)
    stranger = await add_agent(other, api)
    stranger_sock = await sockets(chat_server, stranger.token, "stranger")

    # when the shopper invites the agent to a call
    await tab.send(type="call.invite", conversation_id=conv_id, call_id="call-1")
    invite = await desk.expect("call.invite")
    # then the assignee gets it, with who is calling
    assert invite["call_id"] == "call-1" and invite["conversation_id"] == conv_id
    assert invite["from"]["type"] == "visitor" and invite["from"]["id"] == session["visitor_id"]

    # when the agent accepts and the offer, answer and ICE go back and forth
    await desk.send(type="call.accepted", conversation_id=conv_id, call_id="call-1")
    assert (await tab.expect("call.accepted"))["call_id"] == "call-1"
    await tab.send(type="call.offer", conversation_id=conv_id, call_id="call-1", sdp="v=0\r\no=- 1 2 IN IP4 0.0.0.0")
    assert (await desk.expect("call.offer"))["sdp"].startswith("v=0")
    await desk.send(type="call.answer", conversation_id=conv_id, call_id="call-1", sdp="v=0 answer")
    assert (await tab.expect("call.answer"))["sdp"] == "v=0 answer"
    candidate = {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0",
                 "sdpMLineIndex": 0}
    await desk.send(type="call.ice", conversation_id=conv_id, call_id="call-1", candidate=candidate)
    assert (await tab.expect("call.ice"))["candidate"] == candidate
    await tab.send(type="call.hangup", conversation_id=conv_id, call_id="call-1")
    await desk.expect("call.hangup")

    # then nobody else saw any of it, and nothing was stored
    for sock in (colleague_sock, stranger_sock):
        assert not [f for f in await sock.drain(0.3) if f["type"].startswith("call.")]
    r = await api.get(f"/api/v1/conversations/{conv_id}/messages", headers=auth(agent.token))
    assert [m["seq"] for m in r.json()["items"]] == [1]

    # when a colleague who does not hold the chat, or another merchant's agent, signals into it
    await colleague_sock.send(type="call.accepted", conversation_id=conv_id, call_id="call-1")
    assert (await colleague_sock.expect("error"))["code"] == "not_found"
    await stranger_sock.send(type="call.offer", conversation_id=conv_id, call_id="call-1", sdp="v=0")
    assert (await stranger_sock.expect("error"))["code"] == "not_found"
    # and an sdp over 32 KiB is refused, naming the field
    await tab.send(type="call.offer", conversation_id=conv_id, call_id="call-1", sdp="a" * (32 * 1024 + 1))
    err = await tab.expect("error")
    assert (err["code"], err["field"]) == ("validation_failed", "sdp")
    # and a visitor cannot accept their own call
    await tab.send(type="call.accepted", conversation_id=conv_id, call_id="call-1")
    assert (await tab.expect("error"))["code"] == "forbidden"
    assert not [f for f in await desk.drain(0.3) if f["type"].startswith("call.")]


async def test_an_announcement_reaches_every_widget_of_the_store_and_no_one_else(chat_server, api, chat_shop, sockets):
    # given two widgets of the store (one with two tabs), an agent, and another merchant's widget
    a = await widget(api, chat_shop)
    b = await widget(api, chat_shop)
    tabs = [await sockets(chat_server, a["token"], "a1"), await sockets(chat_server, a["token"], "a2"),
            await sockets(chat_server, b["token"], "b")]
    other = await make_shop(api)
    foreign = await sockets(chat_server, (await widget(api, other))["token"], "foreign")
    agent = await add_agent(chat_shop, api)
    desk = await sockets(chat_server, agent.token, "agent")

    # when an admin announces to the store
    r = await api.post("/api/v1/chat/announcements", json={"store": "main", "text": "双11 客服延长至 24 点"},
                       headers=auth(chat_shop.admin_token))
    assert r.status_code == 201, r.text
    sent = r.json()

    # then every widget socket of the store gets the same frame
    for tab in tabs:
        got = await tab.expect("announcement")
        assert got == {"type": "announcement", "id": sent["id"], "text": "双11 客服延长至 24 点",
                       "created_at": sent["created_at"]}
    # and the other merchant's widget and the staff sockets do not
    for sock in (foreign, desk):
        assert not [f for f in await sock.drain(0.3) if f["type"] == "announcement"]

    # when an agent (not admin or supervisor) tries, or the store is unknown, or the text is empty
    r = await api.post("/api/v1/chat/announcements", json={"store": "main", "text": "x"}, headers=auth(agent.token))
    assert r.status_code == 403
    r = await api.post("/api/v1/chat/announcements", json={"store": "nope", "text": "x"},
                       headers=auth(chat_shop.admin_token))
    assert (r.status_code, r.json()["field"]) == (422, "store")
    r = await api.post("/api/v1/chat/announcements", json={"store": "main", "text": ""},
                       headers=auth(chat_shop.admin_token))
    assert (r.status_code, r.json()["field"]) == (422, "text")
    # and a widget token cannot announce at all
    r = await api.post("/api/v1/chat/announcements", json={"store": "main", "text": "x"}, headers=auth(a["token"]))
    assert r.status_code == 404


@pytest.fixture(scope="module")
def jobs_server():
    """A server running the job runner, with a 1 s presence grace, behind a 'trusted proxy'."""
    server = Server("jobs", jobs=True, SHOPDESK_CHAT_PRESENCE_GRACE_S="1", SHOPDESK_TRUSTED_PROXY="1",
                    SHOPDESK_JOB_INTERVAL_S="0.3")
    yield server
    server.stop()


async def agent_status(api, server, agent) -> dict:
    r = await api.get(f"{server.url}/api/v1/agents", headers=auth(agent.token))
    return next(a for a in r.json()["items"] if a["staff_id"] == agent.staff_id)


async def test_an_agent_whose_sockets_stay_closed_goes_offline_but_keeps_their_chats(jobs_server, api, sockets):
    # given an online agent with two sockets, holding a chat
    async with httpx.AsyncClient(base_url=jobs_server.url, timeout=30) as local:
        shop = await make_shop(local)
        agent = await add_agent(shop, local)
        await presence(local, agent)
        one = await sockets(jobs_server, agent.token, "one")
        two = await sockets(jobs_server, agent.token, "two")
        session = await widget(local, shop)
        tab = await sockets(jobs_server, session["token"], "tab")
        await tab.send(type="message.send", client_msg_id="m1", text="在吗")
        conv_id = (await tab.expect("message.ack"))["conversation_id"]

        # when one socket closes, the agent stays online past the grace period
        await one.close()
        await asyncio.sleep(2.5)
        assert (await agent_status(local, jobs_server, agent))["status"] == "online"

        # when the last socket closes and stays closed
        await two.close()
        deadline = time.monotonic() + 10
        while (await agent_status(local, jobs_server, agent))["status"] != "offline":
            assert time.monotonic() < deadline, "the agent never went offline"
            await asyncio.sleep(0.3)

        # then their open chat is still theirs, and a new shopper's chat is not routed to them
        r = await local.get(f"/api/v1/conversations/{conv_id}", headers=auth(agent.token))
        assert r.json()["status"] == "assigned" and r.json()["assignee"]["id"] == agent.staff_id
        newcomer = await widget(local, shop)
        assert newcomer["agents_online"] is False
        late = await sockets(jobs_server, newcomer["token"], "late")
        await late.send(type="message.send", client_msg_id="m2", text="有人吗")
        await late.expect("message.ack")
        assert (await late.expect("conversation.updated"))["conversation"]["status"] == "offline"


async def test_idle_chats_end_by_themselves_with_a_system_message(jobs_server, api, sockets):
    # given a merchant whose chats end after 1 idle minute, and a chat whose last message is 2 minutes old
    async with httpx.AsyncClient(base_url=jobs_server.url, timeout=30) as local:
        shop = await make_shop(local)
        r = await local.put("/api/v1/chat/settings", json={"idle_close_minutes": 1}, headers=auth(shop.admin_token))
        assert r.status_code == 200 and r.json()["idle_close_minutes"] == 1
        r = await local.put("/api/v1/chat/settings", json={"idle_close_minutes": 1}, headers=auth(shop.agent_token))
        assert r.status_code == 403
        r = await local.put("/api/v1/chat/settings", json={"idle_close_minutes": -1}, headers=auth(shop.admin_token))
        assert (r.status_code, r.json()["field"]) == (422, "idle_close_minutes")
        agent = await add_agent(shop, local)
        await presence(local, agent)
        desk = await sockets(jobs_server, agent.token, "agent")
        session = await widget(local, shop)
        tab = await sockets(jobs_server, session["token"], "tab")
        await tab.send(type="message.send", client_msg_id="m1", text="在吗")
        conv_id = (await tab.expect("message.ack"))["conversation_id"]
        # (the stored clock of the last message is moved back: the server's clock is real time)
        from sqlalchemy import update

        from shopdesk.chat.models import Conversation
        from shopdesk.core.clock import now
        from shopdesk.core.db import transaction
        from datetime import timedelta

        async with transaction() as s:
            await s.execute(update(Conversation).where(Conversation.id == conv_id).values(
                last_message_at=now() - timedelta(minutes=2)))

        # when the job runner sweeps
        ended = await tab.expect_where("conversation.updated", lambda f: f["conversation"]["status"] == "ended",
                                       timeout=10)

        # then the chat is ended by the system, and a system message says so, on both sides
        assert ended["conversation"]["id"] == conv_id
        for sock in (tab, desk):
            m = (await sock.expect_where("message.created", lambda f: f["message"]["sender"]["type"] == "system"))
            assert "自动结束" in m["message"]["text"]
        r = await local.get(f"/api/v1/conversations/{conv_id}", headers=auth(agent.token))
        assert r.json()["ended_by"] == "system"


async def test_the_customer_card_knows_ip_device_referrer_and_visits(jobs_server, chat_server, api, sockets):
    # given a widget session from an iPhone behind a proxy the jobs server trusts (and the other does not)
    ua = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Mobile/15E148 MicroMessenger/8.0.40")
    headers = {"User-Agent": ua, "X-Forwarded-For": "203.0.113.7, 10.0.0.1"}
    for server, ip in ((jobs_server, "203.0.113.7"), (chat_server, "127.0.0.1")):
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as local:
            shop = await make_shop(local)
            agent = await add_agent(shop, local)
            await presence(local, agent)
            r = await local.post("/api/v1/widget/sessions", headers=headers, json={
                "store": "main", "merchant": shop.slug, "referrer": "https://www.baidu.com/s?wd=耳机",
                "page": {"url": "https://shop.test/p/A", "title": "蓝牙耳机"}})
            assert r.status_code == 200, r.text
            session = r.json()
            # (the socket comes through the same proxy, with the same headers)
            ws = await connect(f"{server.ws_url}?token={session['token']}&v=1", additional_headers=headers,
                               max_queue=None)
            tab = Sock(ws, "tab")
            await tab.expect("hello")
            await tab.send(type="message.send", client_msg_id="m1", text="你好")
            conv_id = (await tab.expect("message.ack"))["conversation_id"]

            # when the agent opens the conversation
            v = (await local.get(f"/api/v1/conversations/{conv_id}", headers=auth(agent.token))).json()["visitor"]

            # then the card shows where they came from, their device, and that they are new and online
            assert v["ip"] == ip
            assert v["device"] == {"device": "mobile", "os": "iOS", "browser": "WeChat"}
            assert v["referrer"] == "https://www.baidu.com/s?wd=耳机"
            assert v["landing_page"] == "https://shop.test/p/A"
            assert (v["visit_count"], v["returning"], v["online"]) == (1, False, True)
            assert v["location"] == "内网"  # loopback; public addresses are looked up in ip2region (core/iplocation.py)
            await tab.close()
            await asyncio.sleep(0.3)
            v = (await local.get(f"/api/v1/conversations/{conv_id}", headers=auth(agent.token))).json()["visitor"]
            assert v["online"] is False
