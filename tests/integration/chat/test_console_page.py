"""The agent console's chat page over HTTP: session, the token it hands to its JS app, language, nav, the app's
hooks (data-testid) — and the customer card route the page reads."""
import html
import json
import re
from pathlib import Path

import httpx

from tests.factories import make_shop
from tests.integration.chat.conftest import add_agent, auth, presence, sign, store_secret, widget

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
APP = Path(__file__).resolve().parents[3] / "src" / "shopdesk" / "web" / "static" / "console-chat.js"


async def login(client: httpx.AsyncClient, email: str, password: str) -> None:
    page = await client.get("/console/login")
    token = CSRF.search(page.text).group(1)
    r = await client.post("/console/login", data={"email": email, "password": password, "csrf_token": token,
                                                  "next": "/console/chat"})
    assert r.status_code == 303 and r.headers["location"] == "/console/chat", r.text


def attr(page: str, name: str) -> str:
    return html.unescape(re.search(rf'{name}="([^"]*)"', page).group(1))


async def test_the_chat_page_needs_a_staff_session_and_hands_its_token_to_the_app(chat_server, chat_shop):
    async with httpx.AsyncClient(base_url=chat_server.url, timeout=30) as browser:
        # given nobody logged in, the page sends them to the login
        r = await browser.get("/console/chat")
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login")

        # when the agent logs in and opens it
        await login(browser, chat_shop.agent_email, "agent-pass-1")
        r = await browser.get("/console/chat")

        # then it is the Chinese page with the nav link, the app and the staff's own token
        assert r.status_code == 200
        assert 'data-testid="nav-chat"' in r.text and "在线客服" in r.text
        assert '<script src="/static/console-chat.js" defer></script>' in r.text
        token = attr(r.text, "data-token")
        me = json.loads(attr(r.text, "data-me"))
        strings = json.loads(attr(r.text, "data-strings"))
        assert me["role"] == "agent" and strings["send"] == "发送" and strings["presence"] == "状态"
        r = await browser.get("/api/v1/agents", headers=auth(token))
        assert r.status_code == 200 and me["id"] in [a["staff_id"] for a in r.json()["items"]]

        # and in English after the switch
        await browser.get("/lang/en")
        r = await browser.get("/console/chat")
        assert json.loads(attr(r.text, "data-strings"))["send"] == "Send"

        # and the app is served
        r = await browser.get("/static/console-chat.js")
        assert r.status_code == 200 and "new WebSocket" in r.text


def test_the_app_carries_every_hook_the_browser_tests_use():
    # (the browser tests drive the page through these data-testid values)
    source = APP.read_text()
    for testid in ("presence", "capacity", "conv-item", "unread", "chat-pane", "agent-log", "agent-message",
                   "agent-input", "agent-send", "agent-file", "agent-typing", "transfer-agent", "transfer-go",
                   "end-chat", "email-reply", "email-send", "call-accept", "call-decline", "remote-video",
                   "customer-card", "pages-browsed"):
        assert f'testid: "{testid}"' in source, testid
    # and text from the network is never parsed as HTML
    assert "innerHTML" not in source and "insertAdjacentHTML" not in source


async def test_the_customer_card_shows_the_customers_orders_cases_and_past_chats(chat_server, api, chat_shop,
                                                                                   sockets):
    # given a bound shopper with an order, an after-sales case on it and an earlier, ended chat
    order = await chat_shop.order(external_id="card-1")
    line = next(ln["id"] for ln in order["lines"] if ln["sku"] == "A")
    shopper = await chat_shop.shopper(order)
    r = await chat_shop.post("/aftersales", {"order_id": order["id"], "type": "return_refund", "reason": "quality",
                                             "lines": [{"order_line_id": line, "quantity": 1}],
                                             "photo_ids": [await chat_shop.photo(shopper)]}, token=shopper)
    assert r.status_code == 201, r.text
    case_no = r.json()["case_no"]
    secret = await store_secret(chat_shop)
    identity = {"external_id": "card-1", "name": "王五", "hmac": sign(secret, "card-1")}
    agent = await add_agent(chat_shop, api)
    await presence(api, agent)
    session = await widget(api, chat_shop, identity=identity)
    tab = await sockets(chat_server, session["token"], "tab")
    await tab.send(type="message.send", client_msg_id="m1", text="第一次")
    earlier = (await tab.expect("message.ack"))["conversation_id"]
    assert (await api.post(f"/api/v1/conversations/{earlier}/end", headers=auth(agent.token))).status_code == 200
    await tab.send(type="message.send", client_msg_id="m2", text="又来了")
    conv_id = (await tab.expect("message.ack", client_msg_id="m2"))["conversation_id"]

    # when the agent opens the card
    r = await api.get(f"/api/v1/conversations/{conv_id}/customer", headers=auth(agent.token))
    assert r.status_code == 200, r.text
    card = r.json()

    # then it has the customer, their order, the case and the earlier chat
    assert card["customer"]["external_id"] == "card-1" and card["customer"]["name"] == "王五"
    assert [o["order_no"] for o in card["orders"]] == [order["order_no"]]
    assert [(c["case_no"], c["order_no"]) for c in card["cases"]] == [(case_no, order["order_no"])]
    assert [c["id"] for c in card["conversations"]] == [earlier]
    assert card["visitor"]["id"] == session["visitor_id"]

    # and another merchant, or the shopper, gets 404
    stranger = await add_agent(await make_shop(api), api)
    for token in (stranger.token, session["token"]):
        assert (await api.get(f"/api/v1/conversations/{conv_id}/customer", headers=auth(token))).status_code == 404
