"""Live chat in the browser: the widget on a demo product page and the agent console, side by side."""
from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from playwright.async_api import expect

from shopdesk.accounts.actions import do_create_staff, merchant_by_slug
from shopdesk.core.db import transaction
from tests.e2e.conftest import png, snap
from tests.factories import Shop


async def add_staff(shop: Shop, name: str, role: str = "agent") -> dict:
    email = f"{secrets.token_hex(3)}@{shop.slug}.test"
    async with transaction() as session:
        merchant = await merchant_by_slug(session, shop.slug)
        staff = await do_create_staff(session, merchant=merchant, email=email, password="agent-pass-1", role=role,
                                      name=name)
        return {"id": staff.id, "email": email, "name": name}


async def staff_token(api, email: str) -> str:
    r = await api.post("/api/v1/auth/token", json={"email": email, "password": "agent-pass-1"})
    assert r.status_code == 200, r.text
    return r.json()["token"]


async def set_presence(api, token: str, status: str = "online", capacity: int | None = None) -> None:
    body = {"status": status} if capacity is None else {"status": status, "capacity": capacity}
    r = await api.put("/api/v1/agents/me/presence", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text


async def product_page(browsers, shop: Shop, *, phone: bool = False):
    """A shopper on the demo shop's product page, with the chat panel open."""
    page = await browsers.page(phone=phone)
    await page.goto(f"/demo/shop/{shop.slug}/main")
    await page.get_by_test_id("chat-open").click()
    await expect(page.get_by_test_id("chat-input")).to_be_visible()
    return page


async def console(browsers, shop: Shop, email: str | None = None):
    page = await browsers.staff(shop, email=email)
    await page.goto("/console/chat")
    await page.get_by_test_id("presence").select_option("online")
    return page


async def shopper_says(page, text: str) -> None:
    await page.get_by_test_id("chat-input").fill(text)
    await page.get_by_test_id("chat-send").click()


async def open_chat(agent_page):
    item = agent_page.get_by_test_id("conv-item").first
    await expect(item).to_be_visible()
    await item.click()
    pane = agent_page.get_by_test_id("chat-pane").last
    await expect(pane).to_be_visible()
    return pane


async def test_shopper_and_agent_chat_transfer_and_rating(browsers, live_shop, api):
    # Given an agent in the console, online, and a second agent to transfer to
    agent = await console(browsers, live_shop)
    second = await add_staff(live_shop, "小李")
    await set_presence(api, await staff_token(api, second["email"]))
    shopper = await product_page(browsers, live_shop)

    # When the shopper writes (with HTML that must show as text) and sends an image
    await shopper_says(shopper, "你好，<b>耳机</b>有货吗？<script>alert(1)</script>")
    pane = await open_chat(agent)
    log = pane.get_by_test_id("agent-log")
    await expect(log).to_contain_text("<b>耳机</b>有货吗？<script>alert(1)</script>")
    await shopper.get_by_test_id("chat-file").set_input_files(
        files=[{"name": "defect.png", "mimeType": "image/png", "buffer": png()}])
    await expect(log.locator("img")).to_have_count(1)

    # Then typing shows on the other side, and the reply arrives with a read receipt
    await pane.get_by_test_id("agent-input").press_sequentially("您好", delay=50)
    await expect(shopper.get_by_test_id("chat-typing")).not_to_be_empty()
    await pane.get_by_test_id("agent-send").click()
    await expect(shopper.get_by_test_id("chat-log")).to_contain_text("您好")
    await expect(shopper.get_by_test_id("chat-log").locator(".tick.read").first).to_be_visible()
    await expect(shopper.get_by_test_id("chat-status")).to_have_attribute("data-status", "assigned")
    await snap(shopper, "chat_widget_zh")
    await snap(agent, "chat_console_zh")

    # When the agent transfers the chat to the colleague
    await pane.get_by_test_id("transfer-agent").select_option(f"agent:{second['id']}")
    await pane.get_by_test_id("transfer-go").click()
    await expect(shopper.get_by_test_id("chat-status")).to_contain_text("小李")

    # and the colleague ends it, the shopper rates it
    colleague = {"Authorization": f"Bearer {await staff_token(api, second['email'])}"}
    r = await api.get("/api/v1/conversations", params={"assignee": "me"}, headers=colleague)
    conv = r.json()["items"][0]
    assert conv["status"] == "assigned" and conv["assignee"]["id"] == second["id"]
    history = await api.get(f"/api/v1/conversations/{conv['id']}/messages", headers=colleague)
    assert "你好，<b>耳机</b>有货吗？<script>alert(1)</script>" in [m["text"] for m in history.json()["items"]]
    r = await api.post(f"/api/v1/conversations/{conv['id']}/end", headers=colleague)
    assert r.status_code == 200, r.text
    rating = shopper.get_by_test_id("chat-rating")
    await expect(rating).to_be_visible()
    await rating.locator("[data-score='5']").click()
    await rating.locator("textarea").fill("很快，谢谢")
    await rating.locator("button[type=submit]").click()
    await expect(rating).to_have_count(0)
    ended = await api.get(f"/api/v1/conversations/{conv['id']}", headers=colleague)
    assert ended.json()["rating"] == {"score": 5, "comment": "很快，谢谢"}
    await snap(shopper, "chat_widget_rated_zh")


async def test_leave_a_message_when_nobody_is_on_duty(browsers, live_shop, api):
    # Given no agent online
    shopper = await product_page(browsers, live_shop, phone=True)
    await shopper_says(shopper, "晚上有人吗？想问发票")
    status = shopper.get_by_test_id("chat-status")
    await expect(status).to_have_attribute("data-status", "offline")
    contact = shopper.get_by_test_id("chat-contact")
    await contact.locator("input[name=name]").fill("周女士")
    await contact.locator("input[name=email]").fill("zhou@example.com")
    await contact.locator("button[type=submit]").click()
    await expect(contact).to_have_count(0)
    await snap(shopper, "chat_widget_offline_phone_zh")

    # When an agent opens the console later, the message is there and is answered by email
    agent = await browsers.staff(live_shop)
    await agent.goto("/console/chat")
    await agent.get_by_test_id("filter-offline").click()
    pane = await open_chat(agent)
    await expect(pane.get_by_test_id("agent-log")).to_contain_text("想问发票")
    await pane.get_by_test_id("email-reply").fill("您好，发票已开具，请查收邮件。")
    await pane.get_by_test_id("email-send").click()
    await expect(pane.get_by_test_id("agent-log")).to_contain_text("发票已开具")
    await snap(agent, "chat_console_offline_reply_zh")


async def test_the_queue_shows_positions_and_moves_when_a_seat_frees(browsers, live_shop, api):
    # Given 3 agents with 2 seats each
    tokens = []
    for i in range(3):
        person = await add_staff(live_shop, f"坐席{i}")
        tokens.append(await staff_token(api, person["email"]))
        await set_presence(api, tokens[-1], capacity=2)
    # When 10 shoppers write, one after another
    shoppers = []
    for i in range(10):
        page = await product_page(browsers, live_shop)
        await shopper_says(page, f"第{i + 1}位顾客")
        await expect(page.get_by_test_id("chat-status")).not_to_have_attribute("data-status", "")
        shoppers.append(page)
    # Then 6 are being served and 4 wait with positions 1–4, oldest first
    for page in shoppers[:6]:
        await expect(page.get_by_test_id("chat-status")).to_have_attribute("data-status", "assigned")
    for pos, page in enumerate(shoppers[6:], start=1):
        await expect(page.get_by_test_id("chat-status")).to_have_attribute("data-position", str(pos))
    await snap(shoppers[7], "chat_widget_queued_zh")

    # When an agent ends one chat, the first in the queue is served within a second, the others move up
    r = await api.get("/api/v1/conversations", params={"assignee": "me"},
                      headers={"Authorization": f"Bearer {tokens[0]}"})
    conv_id = r.json()["items"][0]["id"]
    started = time.monotonic()
    r = await api.post(f"/api/v1/conversations/{conv_id}/end", headers={"Authorization": f"Bearer {tokens[0]}"})
    assert r.status_code == 200, r.text
    await expect(shoppers[6].get_by_test_id("chat-status")).to_have_attribute("data-status", "assigned",
                                                                             timeout=1000)
    assert time.monotonic() - started < 1.5
    for pos, page in enumerate(shoppers[7:], start=1):
        await expect(page.get_by_test_id("chat-status")).to_have_attribute("data-position", str(pos))


async def test_a_video_call_connects(browsers, live_shop):
    agent = await console(browsers, live_shop)
    shopper = await product_page(browsers, live_shop)
    await shopper_says(shopper, "我拍给你看看破损的地方")
    pane = await open_chat(agent)
    await expect(shopper.get_by_test_id("chat-status")).to_have_attribute("data-status", "assigned")
    # When the shopper starts a video call and the agent accepts
    await shopper.get_by_test_id("chat-video").click()
    await agent.get_by_test_id("call-accept").click()
    # Then both sides receive the other's (fake camera) stream
    remote = agent.get_by_test_id("remote-video")
    await expect(remote).to_be_visible()
    await agent.wait_for_function(
        "() => { const v = document.querySelector('[data-testid=remote-video]'); return v && v.readyState >= 2 && v.videoWidth > 0 }",
        timeout=15_000)
    await shopper.wait_for_function(
        "() => { const h = document.getElementById('shopdesk-widget'); const v = h && h.shadowRoot.querySelector('[data-testid=chat-video-remote]'); return v && v.readyState >= 2 && v.videoWidth > 0 }",
        timeout=15_000)
    await snap(agent, "chat_video_agent")
    await expect(pane.get_by_test_id("agent-log")).to_contain_text("破损")


async def test_an_agent_opens_a_case_for_the_shopper_from_the_chat(browsers, live_shop):
    from tests.e2e.conftest import live_order

    # Given a logged-in shopper (the shop signs their id) chatting about an order
    order = await live_order(live_shop)
    agent = await console(browsers, live_shop)
    shopper = await browsers.page()
    await shopper.goto(f"/demo/shop/{live_shop.slug}/main?login={order['external_id']}")
    await shopper.get_by_test_id("chat-open").click()
    await shopper_says(shopper, f"订单 {order['order_no']} 的耳机坏了，想退货")
    await open_chat(agent)
    card = agent.get_by_test_id("customer-card")
    await expect(card).to_contain_text(order["order_no"])

    # When the agent opens a case from the customer card, filled in for this order
    async with agent.context.expect_page() as opened:
        await card.get_by_test_id("open-case").first.click()
    form = await opened.value
    await form.wait_for_load_state()
    line_a = next(ln["id"] for ln in order["lines"] if ln["sku"] == "A")
    await form.check(f"input[name=line][value='{line_a}']")
    await form.check("input[name=type][value=return_refund]")
    await form.select_option("#reason", "no_reason_7d")
    await expect(form.get_by_test_id("quote")).to_contain_text("¥")
    await snap(form, "chat_open_case_console_zh")
    await form.get_by_test_id("submit").click()
    await form.wait_for_url("**/console/cases/*")
    case_no = (await form.locator("h1").inner_text()).strip()

    # Then the case exists for the shopper, and the chat tells them its number
    assert "AS" in case_no
    await expect(shopper.get_by_test_id("chat-log")).to_contain_text("客服已为您提交售后申请 AS")
    r = await live_shop.get(f"/aftersales?q={order['order_no']}")
    assert r.json()["items"][0]["customer_id"] == order["customer_id"]


async def test_an_agent_invites_a_browsing_visitor_and_the_widget_opens(browsers, live_shop):
    # Given a visitor browsing the demo shop with the chat closed, and an agent online
    agent = await console(browsers, live_shop)
    shopper = await browsers.page()
    await shopper.goto(f"/demo/shop/{live_shop.slug}/main")
    panel = shopper.get_by_test_id("chat-input")
    await expect(panel).to_be_hidden()
    # When the agent sees them among the visitors online and invites them
    await agent.get_by_test_id("filter-visitors").click()
    visitor = agent.get_by_test_id("visitor-item").first
    await expect(visitor).to_contain_text("旗舰店")  # the page they are on
    await visitor.get_by_test_id("invite-visitor").click()
    # Then the widget opens by itself with the agent's message, and the chat is the agent's
    await expect(panel).to_be_visible()
    await expect(shopper.get_by_test_id("chat-status")).to_have_attribute("data-status", "assigned")
    await expect(shopper.get_by_test_id("chat-log").get_by_test_id("chat-message").first).to_be_visible()
    await shopper_says(shopper, "好的，我想问问这款的颜色")
    pane = agent.get_by_test_id("chat-pane").last
    await expect(pane.get_by_test_id("agent-log")).to_contain_text("颜色")
    await snap(shopper, "chat_widget_invited_zh")
