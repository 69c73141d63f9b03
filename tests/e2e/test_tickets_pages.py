"""Tickets in the browser: the help form, the emailed link, the console's reply/solve, rating, merge and split,
macros, and images on replies."""
from __future__ import annotations

import re

import httpx
from playwright.async_api import Page, expect
from sqlalchemy import func, select

from shopdesk.accounts.models import Merchant
from shopdesk.aftersales.models import Upload
from shopdesk.core.db import transaction
from shopdesk.core.outbox import OutboxItem
from tests.e2e.conftest import PHONE, live_order, png, shopper_token, snap
from tests.factories import Shop

LINK = re.compile(r"/shop/tickets/(\w+)\?t=([\w.\-]+)")


async def ticket_settings(shop: Shop) -> None:
    """Categories, a custom status and a 24/7 SLA policy, as a merchant's admin sets them."""
    r = await shop.client.put("/api/v1/settings/tickets", headers=shop.h(shop.admin_token), json={
        "categories": ["物流", "质量问题", "发票"],
        "statuses": [{"name": "waiting_warehouse", "group": "pending", "label_zh": "等待仓库",
                      "label_en": "Waiting for warehouse"}]})
    assert r.status_code == 200, r.text
    r = await shop.client.put("/api/v1/settings/sla-policies/standard", headers=shop.h(shop.admin_token),
                              json={"first_response_minutes": 120, "resolution_minutes": 2880})
    assert r.status_code == 200, r.text


async def emails_to(address: str) -> list[dict]:
    async with transaction() as session:
        rows = (await session.execute(select(OutboxItem).where(OutboxItem.kind == "email")
                                      .order_by(OutboxItem.id))).scalars()
        return [r.payload for r in rows if r.payload.get("to") == address]


async def latest_link(address: str, subject_part: str) -> str:
    """The ticket link in the newest email to address whose subject holds subject_part."""
    mails = [m for m in await emails_to(address) if subject_part in m["subject"]]
    assert mails, f"no email to {address} about {subject_part!r}"
    found = LINK.search(mails[-1]["body"])
    assert found, mails[-1]["body"]
    return found.group(0)


def ticket_id_of(page: Page) -> str:
    return page.url.split("?")[0].split("#")[0].rstrip("/").rsplit("/", 1)[1]


async def badge(page: Page, group: str) -> None:
    await expect(page.locator(f"h1 .badge[data-group={group}]")).to_be_visible()


async def no_sideways_scroll(page: Page) -> None:
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{page.url} scrolls sideways by {overflow}px on a phone"


async def test_visitor_help_form_agent_reply_email_link_solve_and_rating(browsers, live_shop, live_server):
    await ticket_settings(live_shop)
    email = f"visitor-{live_shop.slug}@example.com"

    # Given a visitor without an account on the shop's help page, on a phone
    visitor = await browsers.page(phone=True)
    await visitor.goto(f"/shop/help?merchant={live_shop.slug}")
    await expect(visitor.locator("h1")).to_contain_text("联系客服")
    await visitor.fill("#email", email)
    await visitor.fill("#name", "王女士")
    await visitor.select_option("#category", "物流")
    await visitor.fill("#subject", "快递三天没有更新")
    await visitor.fill("#description", "订单 E123 的快递显示已揽收，之后三天没有任何物流更新。")
    await snap(visitor, "tickets_help_visitor_phone")
    await no_sideways_scroll(visitor)
    # When they send it
    await visitor.get_by_test_id("help-submit").click()
    await visitor.wait_for_url(re.compile(r"/shop/tickets/\w+\?created=1"))
    ticket_id = ticket_id_of(visitor)
    # Then they see their ticket at once (a session for this ticket only) and got the link by email
    await expect(visitor.get_by_test_id("notice")).to_contain_text(email)
    await badge(visitor, "new")
    await expect(visitor.get_by_test_id("thread")).to_contain_text("三天没有任何物流更新")
    ack = await latest_link(email, "我们已收到您的工单")
    assert ticket_id in ack
    await expect(visitor.locator("nav.nav a")).to_have_count(0)  # no "my orders" for a link session
    await snap(visitor, "tickets_shopper_created_phone")
    await no_sideways_scroll(visitor)

    # When an agent finds it in the console list (new, with the SLA running) and answers in public
    agent = await browsers.staff(live_shop)
    await agent.get_by_test_id("nav-tickets").click()
    row = agent.locator("tr[data-ticket]", has_text="快递三天没有更新")
    await expect(row).to_be_visible()
    await expect(row.locator(".countdown")).to_contain_text("剩余")
    await expect(row.locator(".badge")).to_have_text("新建")
    await snap(agent, "tickets_console_list_zh")
    await row.locator("a.subject").click()
    await agent.wait_for_url(f"**/console/tickets/{ticket_id}")
    await expect(agent.get_by_test_id("sla")).to_contain_text("首次响应")
    await agent.get_by_test_id("private-toggle").check()
    await expect(agent.get_by_test_id("reply-send")).to_have_text("添加备注")
    await agent.fill("#reply-body", "已联系圆通网点核实，等回复。")
    await agent.get_by_test_id("reply-send").click()
    note = agent.locator(".bubble.note")
    await expect(note).to_contain_text("已联系圆通网点核实")
    await agent.fill("#reply-body", "您好，包裹在中转站滞留，已催促网点今天发出，请留意物流更新。")
    await agent.get_by_test_id("reply-send").click()
    await expect(agent.locator(".bubble.right:not(.note)")).to_contain_text("已催促网点今天发出")
    await badge(agent, "open")
    await snap(agent, "tickets_console_ticket_zh")

    # Then the visitor's conversation (the fragment the page polls, and the page) shows the reply, never the note
    fragment = await visitor.request.get(f"/shop/tickets/{ticket_id}?part=thread", headers={"HX-Request": "true"})
    assert fragment.status == 200
    text = await fragment.text()
    assert text.lstrip().startswith("<ol") and "已催促网点今天发出" in text and "圆通网点核实" not in text
    await visitor.reload()
    await expect(visitor.get_by_test_id("thread")).to_contain_text("已催促网点今天发出")
    await expect(visitor.get_by_test_id("thread")).not_to_contain_text("已联系圆通网点核实")

    # When the requester opens the link from the reply email on another device (no cookies at all)
    link = await latest_link(email, "回复：快递三天没有更新")
    reader = await browsers.page(phone=True)
    await reader.goto(link)
    await reader.wait_for_url(f"**/shop/tickets/{ticket_id}")  # the token is gone from the address bar
    await expect(reader.get_by_test_id("thread")).to_contain_text("已催促网点今天发出")
    await reader.fill("#reply-body", "好的，谢谢，明天还没更新我再联系你们。")
    await reader.get_by_test_id("reply-send").click()
    await expect(reader.locator(".bubble.right").last).to_contain_text("明天还没更新")
    # And that link session opens this ticket only: not the list, not the help form as a shopper, not orders
    for path in ("/shop/tickets", "/shop/orders"):
        await reader.goto(path)
        await reader.wait_for_url(re.compile(r"/shop/lookup"))

    # When the agent replies and marks it solved in one go
    await agent.reload()
    await expect(agent.get_by_test_id("thread")).to_contain_text("明天还没更新")
    await agent.fill("#reply-body", "物流已更新，包裹今天派送。")
    await agent.get_by_test_id("then-status").select_option("solved")
    await agent.get_by_test_id("reply-send").click()
    await badge(agent, "solved")

    # Then the requester rates it from the link session: 4 stars and a comment
    await reader.goto(f"/shop/tickets/{ticket_id}")
    await badge(reader, "solved")
    rating = reader.get_by_test_id("rating")
    await expect(rating).to_contain_text("为本次服务打分")
    await expect(reader.get_by_test_id("urge")).to_have_count(0)
    await reader.locator("label[for=star-4]").click()
    await reader.fill("#comment", "处理很及时")
    await snap(reader, "tickets_shopper_rating_phone")
    await reader.get_by_test_id("rate-submit").click()
    await expect(reader.get_by_test_id("notice")).to_have_text("感谢您的评价！")
    await expect(rating.locator(".stars-static .off")).to_have_count(1)
    await snap(reader, "tickets_shopper_rated_phone")
    await no_sideways_scroll(reader)

    # And the agent sees the rating and the whole history
    await agent.reload()
    await expect(agent.get_by_test_id("history")).to_contain_text("客户评价 4 星")
    await expect(agent.get_by_test_id("history")).to_contain_text("状态：处理中 → 已解决")
    await snap(agent, "tickets_console_solved_zh")


async def test_the_email_link_opens_one_ticket_only(live_server, live_shop):
    # Given two visitors' tickets, each with its emailed link
    made = []
    for i in range(2):
        async with httpx.AsyncClient(base_url=live_server) as c:
            page = await c.get(f"/shop/help?merchant={live_shop.slug}")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
            r = await c.post("/shop/help", data={"csrf_token": csrf, "merchant": live_shop.slug,
                                                 "email": f"v{i}-{live_shop.slug}@example.com",
                                                 "subject": f"问题 {i}", "description": "……"})
            assert r.status_code == 303, r.text
            made.append((r.headers["location"].split("?")[0].rsplit("/", 1)[1],
                         await latest_link(f"v{i}-{live_shop.slug}@example.com", "我们已收到")))
    (a_id, a_link), (b_id, b_link) = made
    async with httpx.AsyncClient(base_url=live_server) as c:
        # When the first link is opened, the session cookie is scoped to that ticket's path
        r = await c.get(a_link)
        assert r.status_code == 303 and r.headers["location"] == f"/shop/tickets/{a_id}"
        assert f"Path=/shop/tickets/{a_id}" in r.headers["set-cookie"]
        assert (await c.get(f"/shop/tickets/{a_id}")).status_code == 200
        # Then the other ticket, the list and the orders still ask for a login
        for path in (f"/shop/tickets/{b_id}", "/shop/tickets", "/shop/orders", "/shop/cases"):
            r = await c.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/shop/lookup"), path
        # And the first link's token on the second ticket's address opens nothing
        token = a_link.split("?t=")[1]
        r = await c.get(f"/shop/tickets/{b_id}", params={"t": token})
        assert r.status_code == 404
        # And the page speaks English when asked; a post without the CSRF token is refused
        c.cookies.set("lang", "en")
        r = await c.get(f"/shop/tickets/{a_id}")
        assert "Conversation" in r.text and "Hurry up" in r.text
        c.cookies.delete("lang")
        r = await c.post(f"/shop/tickets/{a_id}/reply", data={"body": "hi"})
        assert r.status_code == 403
        # And a forged or expired token is a friendly page, not a session
        r = await c.get(f"/shop/tickets/{a_id}", params={"t": "not-a-token"})
        assert r.status_code == 401 and "链接已失效" in r.text and "sd_ticket" not in r.headers.get("set-cookie", "")


async def test_shopper_help_form_with_an_order_urge_and_my_tickets(browsers, live_shop):
    await ticket_settings(live_shop)
    order = await live_order(live_shop)
    shopper = await browsers.shopper(live_shop, order, next="/shop/help")
    await shopper.wait_for_url("**/shop/help")
    await shopper.select_option("#order_id", order["id"])
    await shopper.select_option("#category", "质量问题")
    await shopper.fill("#subject", "耳机左耳没有声音")
    await shopper.fill("#description", "收到第二天左耳就不响了，重启也没用。")
    await snap(shopper, "tickets_help_shopper_zh")
    await shopper.get_by_test_id("help-submit").click()
    await shopper.wait_for_url(re.compile(r"/shop/tickets/\w+\?created=1"))
    ticket_id = ticket_id_of(shopper)
    await expect(shopper.get_by_test_id("notice")).to_contain_text("已提交")
    await expect(shopper.locator("aside")).to_contain_text(order["order_no"])
    # When they press 催单 twice
    for n in (1, 2):
        await shopper.get_by_test_id("urge").click()
        await expect(shopper.get_by_test_id("urge-count")).to_have_text(f"已催单 {n} 次")
    await expect(shopper.get_by_test_id("notice")).to_have_text("已提醒客服尽快处理。")
    await snap(shopper, "tickets_shopper_urged_zh")
    # Then their list shows it
    await shopper.get_by_test_id("nav-my-tickets").click()
    card = shopper.locator(f".ticket-card[href='/shop/tickets/{ticket_id}']")
    await expect(card).to_contain_text("耳机左耳没有声音")
    await expect(card.locator(".urge")).to_have_text("催 2")
    await snap(shopper, "tickets_shopper_list_zh")

    # And the agent's list shows the urges and the raised priority; the English console too
    agent = await browsers.staff(live_shop)
    await agent.goto("/console/tickets?priority=urgent")
    row = agent.locator("tr[data-ticket]", has_text="耳机左耳没有声音")
    await expect(row.get_by_test_id("urge-count")).to_contain_text("催 2")
    await expect(row.locator(".prio")).to_have_text("紧急")
    await agent.get_by_test_id("lang-switch").click()
    await expect(agent.locator("h1")).to_have_text("Tickets")
    await expect(row.locator(".prio")).to_have_text("Urgent")
    await row.locator("a.subject").click()
    await expect(agent.locator("aside")).to_contain_text(order["order_no"])
    # When the agent assigns it to themselves, moves it to the custom status and tags it
    await agent.get_by_test_id("assign-me").click()
    await expect(agent.get_by_test_id("assign-me")).to_have_count(0)
    await agent.select_option("#p-status", "waiting_warehouse")
    await agent.fill("#p-tags", "耳机, 质量")
    await agent.get_by_test_id("save-properties").click()
    await expect(agent.locator("h1 .badge")).to_have_text("Waiting for warehouse")
    await expect(agent.get_by_test_id("history")).to_contain_text("Tags: 耳机、质量")
    await snap(agent, "tickets_console_ticket_en")
    await agent.goto("/console/tickets?assignee=me&tab=pending")
    await expect(agent.locator("tr[data-ticket]", has_text="耳机左耳没有声音")).to_be_visible()
    await snap(agent, "tickets_console_list_en")


async def api_ticket(shop: Shop, token: str, subject: str, description: str) -> dict:
    r = await shop.post("/tickets", {"subject": subject, "description": description, "channel": "web"}, token)
    assert r.status_code == 201, r.text
    return r.json()


async def test_agent_merges_two_tickets_and_splits_one(browsers, live_shop):
    # Given a shopper who wrote twice about the same parcel, once adding a second problem
    order = await live_order(live_shop)
    token = await shopper_token(live_shop, order)
    first = await api_ticket(live_shop, token, "还没收到货", "下单五天了还没收到")
    second = await api_ticket(live_shop, token, "物流不动了", "快递单号查不到信息")
    r = await live_shop.post(f"/tickets/{first['id']}/replies", {"body": "另外发票抬头开错了，需要重开"}, token)
    assert r.status_code == 201, r.text

    # When the agent merges the first into the second by its number
    agent = await browsers.staff(live_shop)
    await agent.goto(f"/console/tickets/{first['id']}")
    await expect(agent.locator("#merge")).to_contain_text(second["number"])  # suggested: same customer
    await agent.fill("#merge-into", second["number"])
    await snap(agent, "tickets_console_merge_zh")
    await agent.get_by_test_id("merge").click()
    await agent.wait_for_url(f"**/console/tickets/{second['id']}")
    # Then the second ticket holds the first one's messages, marked with where they came from
    thread = agent.get_by_test_id("thread")
    await expect(thread).to_contain_text("下单五天了还没收到")
    await expect(thread).to_contain_text("另外发票抬头开错了")
    await expect(thread.locator(".tag", has_text=first["number"]).first).to_be_visible()
    await expect(agent.get_by_test_id("history")).to_contain_text(f"工单 {first['number']} 合并到本工单")
    # And the first is closed, pointing at the second
    await agent.goto(f"/console/tickets/{first['id']}")
    await badge(agent, "closed")
    await expect(agent.get_by_test_id("merged")).to_contain_text(second["number"])
    await expect(agent.get_by_test_id("split")).to_have_count(0)

    # When the agent splits the invoice message out of the second ticket
    await agent.goto(f"/console/tickets/{second['id']}")
    message = agent.locator(".bubble[data-reply]", has_text="另外发票抬头开错了")
    await message.get_by_test_id("split").click()
    await agent.wait_for_url(lambda url: "/console/tickets/" in url and second["id"] not in url)
    new_id = ticket_id_of(agent)
    assert new_id not in (first["id"], second["id"])
    # Then the new ticket is about the invoice, for the same customer, and the second no longer has it
    await expect(agent.get_by_test_id("ticket-subject")).to_have_text("另外发票抬头开错了，需要重开")
    await expect(agent.get_by_test_id("history")).to_contain_text(f"从工单 {second['number']} 拆分而来")
    await expect(agent.locator("aside")).to_contain_text("张三")
    await snap(agent, "tickets_console_split_zh")
    await agent.goto(f"/console/tickets/{second['id']}")
    await expect(agent.get_by_test_id("thread")).not_to_contain_text("另外发票抬头开错了")
    await expect(agent.get_by_test_id("history")).to_contain_text("拆分出新工单")
    # And both console pages fit a phone (an agent on the go)
    await agent.set_viewport_size(PHONE)
    await snap(agent, "tickets_console_ticket_phone")
    await no_sideways_scroll(agent)
    await agent.goto("/console/tickets?tab=all")
    await expect(agent.locator("tr[data-ticket]")).to_have_count(3)
    await no_sideways_scroll(agent)
    await snap(agent, "tickets_console_list_phone")

    # And the shopper's list has the second and the new ticket, not the merged one
    shopper = await browsers.shopper(live_shop, order, next="/shop/tickets")
    await shopper.wait_for_url("**/shop/tickets")
    cards = shopper.locator(".ticket-card")
    await expect(cards).to_have_count(2)
    await expect(shopper.locator(f".ticket-card[href='/shop/tickets/{first['id']}']")).to_have_count(0)
    await shopper.goto(f"/shop/tickets/{first['id']}")
    await expect(shopper.get_by_test_id("merged")).to_contain_text(second["number"])


# ---- macros and images on replies ---------------------------------------------------------------------

NOT_AN_IMAGE = {"name": "收据.jpg", "mimeType": "image/jpeg", "buffer": "这不是图片，只是改了扩展名的文本。".encode()}


def image(name: str, rgb: tuple[int, int, int] = (70, 110, 200)) -> dict:
    return {"name": name, "mimeType": "image/png", "buffer": png(160, 120, rgb)}


async def uploads_of(shop: Shop) -> int:
    async with transaction() as session:
        return (await session.execute(select(func.count()).select_from(Upload).join(
            Merchant, Merchant.id == Upload.merchant_id).where(Merchant.slug == shop.slug))).scalar_one()


async def put_macro(shop: Shop, name: str, actions: list[dict], *, active: bool = True) -> None:
    r = await shop.client.put(f"/api/v1/settings/ticket-rules/{name}", headers=shop.h(shop.admin_token),
                              json={"kind": "macro", "actions": actions, "active": active})
    assert r.status_code == 200, r.text


async def image_loaded(locator) -> bool:
    """The image (lazy-loaded: brought into view first) was drawn from a real image file."""
    await locator.scroll_into_view_if_needed()
    return await locator.evaluate("""img => img.complete ? img.naturalWidth > 0 : new Promise(done => {
        img.addEventListener("load", () => done(img.naturalWidth > 0));
        img.addEventListener("error", () => done(false));
    })""")


async def test_shopper_sends_images_agent_sees_them_and_applies_a_macro(browsers, live_shop):
    await ticket_settings(live_shop)
    # Given a shopper's ticket, and the merchant's macros: one active, one switched off
    order = await live_order(live_shop)
    token = await shopper_token(live_shop, order)
    ticket = await api_ticket(live_shop, token, "耳机外壳有裂纹", "拆开包装就看到外壳裂了")
    await put_macro(live_shop, "质量问题-补发", [
        {"type": "reply", "body": "您好，已为您安排补发新品，请留意物流信息。"},
        {"type": "set", "field": "status", "value": "waiting_warehouse"},
        {"type": "set", "field": "priority", "value": "high"},
        {"type": "add_tags", "tags": ["补发", "质量"]}])
    await put_macro(live_shop, "old-macro", [{"type": "add_tags", "tags": ["旧"]}], active=False)

    # When the shopper picks an image and a text file renamed .jpg, and sends
    shopper = await browsers.shopper(live_shop, order, next=f"/shop/tickets/{ticket['id']}")
    await shopper.wait_for_url(f"**/shop/tickets/{ticket['id']}")
    before = await uploads_of(live_shop)
    await shopper.fill("#reply-body", "外壳裂纹的照片见附件。")
    picker = shopper.get_by_test_id("reply-images-input")
    await picker.set_input_files(files=[image("裂纹.png"), NOT_AN_IMAGE])
    picked = shopper.get_by_test_id("picked-images").locator("figure")
    await expect(picked).to_have_count(2)
    await expect(picked.nth(1)).to_have_class(re.compile("is-bad"))  # the browser cannot draw it either
    await shopper.get_by_test_id("reply-send").click()
    # Then the whole reply is refused, naming the field, and nothing is stored or sent
    error = shopper.locator("#flash .alert-error")
    await expect(error).to_contain_text("只支持 JPG、PNG 或 WebP 图片")
    await expect(error).to_contain_text("请检查「图片附件」")
    await snap(shopper, "tickets_shopper_image_refused_zh")
    assert await uploads_of(live_shop) == before
    await expect(shopper.get_by_test_id("thread")).not_to_contain_text("外壳裂纹的照片见附件")

    # When they pick more than five, the box says so (and the server would refuse them too)
    await picker.set_input_files(files=[image(f"{i}.png") for i in range(5)])
    await expect(picked).to_have_count(7)
    await expect(shopper.locator(".too-many")).to_be_visible()
    await snap(shopper, "tickets_shopper_too_many_images_zh")
    await shopper.get_by_test_id("reply-send").click()
    await expect(error).to_contain_text("一次最多附 5 张图片")
    assert await uploads_of(live_shop) == before
    # And when they remove the text file and the extra images, and send again
    await picked.nth(1).locator(".thumb-x").click()
    for _ in range(5):
        await picked.last.locator(".thumb-x").click()
    await expect(picked).to_have_count(1)
    await expect(shopper.locator(".too-many")).to_be_hidden()
    await snap(shopper, "tickets_shopper_image_picked_zh")
    await shopper.get_by_test_id("reply-send").click()
    # Then the reply shows its image as a thumbnail that opens full size
    mine = shopper.locator(".bubble.right[data-reply]", has_text="外壳裂纹的照片见附件")
    await expect(mine.get_by_test_id("reply-image")).to_have_count(1)
    assert await image_loaded(mine.locator("img"))
    assert await uploads_of(live_shop) == before + 1
    await snap(shopper, "tickets_shopper_image_sent_zh")

    # When the agent opens the ticket
    agent = await browsers.staff(live_shop)
    await agent.goto(f"/console/tickets/{ticket['id']}")
    theirs = agent.locator(".bubble.left[data-reply]", has_text="外壳裂纹的照片见附件")
    thumb = theirs.get_by_test_id("reply-image")
    await expect(thumb).to_have_count(1)
    assert await image_loaded(thumb.locator("img"))
    # Then the thumbnail opens the full-size image in a new tab
    async with agent.context.expect_page() as opened:
        await thumb.click()
    full = await opened.value
    await full.wait_for_load_state()
    assert "/files/" in full.url and await full.evaluate("document.contentType") == "image/png"
    assert await full.evaluate("document.images[0].naturalWidth") == 160
    await full.close()

    # When the agent leaves a private note with an image, and answers in public with one
    await agent.get_by_test_id("private-toggle").check()
    await agent.fill("#reply-body", "仓库质检照片，仅内部参考。")
    await agent.get_by_test_id("reply-images-input").set_input_files(files=[image("质检.png", (200, 90, 60))])
    await agent.get_by_test_id("reply-send").click()
    note = agent.locator(".bubble.note", has_text="仓库质检照片")
    await expect(note.get_by_test_id("reply-image")).to_have_count(1)
    note_image = await note.get_by_test_id("reply-image").get_attribute("href")
    await agent.get_by_test_id("private-toggle").uncheck()
    await agent.fill("#reply-body", "收到，这是正确的外壳样式，您对比看看。")
    await agent.get_by_test_id("reply-images-input").set_input_files(files=[image("样式.png", (60, 160, 90))])
    await agent.get_by_test_id("reply-send").click()
    public = agent.locator(".bubble.right:not(.note)", has_text="正确的外壳样式")
    await expect(public.get_by_test_id("reply-image")).to_have_count(1)

    # And applies the macro: only the active one is offered, and it says what it does
    options = agent.get_by_test_id("macro-select").locator("option")
    await expect(options).to_have_count(2)  # "choose" and the active macro
    await agent.get_by_test_id("macro-select").select_option("质量问题-补发")
    steps = agent.locator("ul.macro-steps[data-macro='质量问题-补发']")
    await expect(steps).to_contain_text("公开回复：您好，已为您安排补发新品")
    await expect(steps).to_contain_text("状态改为「等待仓库」")
    await expect(steps).to_contain_text("加标签：补发、质量")
    await snap(agent, "tickets_console_macro_pick_zh")
    await agent.get_by_test_id("macro-apply").click()
    # Then the ticket shows what the macro did, in the agent's name
    await expect(agent.get_by_test_id("notice")).to_have_text("已应用宏「质量问题-补发」")
    await expect(agent.locator("h1 .badge")).to_have_text("等待仓库")
    await expect(agent.locator("h1 .prio")).to_have_text("高")
    await expect(agent.locator("#p-tags")).to_have_value("补发, 质量")
    macro_reply = agent.locator(".bubble.right:not(.note)", has_text="已为您安排补发新品")
    await expect(macro_reply).to_have_attribute("data-author", "staff")  # the agent's reply, not the system's
    await expect(agent.get_by_test_id("history")).to_contain_text("执行自动化规则或宏「质量问题-补发」")
    await snap(agent, "tickets_console_macro_applied_zh")

    # And the page in English names the macro box, its steps and the image hint
    await agent.get_by_test_id("lang-switch").click()
    await expect(agent.locator("#macros")).to_contain_text("Macros")
    await expect(agent.locator("#composer")).to_contain_text("Up to 5: JPG, PNG or WebP")
    await agent.get_by_test_id("macro-select").select_option("质量问题-补发")
    await expect(steps).to_contain_text("Status → Waiting for warehouse")
    await snap(agent, "tickets_console_macro_en")
    # And a macro switched off meanwhile is an error shown like the other forms'
    await put_macro(live_shop, "质量问题-补发", [{"type": "add_tags", "tags": ["x"]}], active=False)
    await agent.get_by_test_id("macro-apply").click()
    await expect(agent.locator("#flash .alert-error")).to_contain_text("Please check “macro”")

    # And the shopper sees the public reply's image and the macro's reply, never the note or its image
    await shopper.reload()
    thread = shopper.get_by_test_id("thread")
    await expect(thread).to_contain_text("已为您安排补发新品")
    await expect(thread).not_to_contain_text("仓库质检照片")
    staff_image = shopper.locator(".bubble.left", has_text="正确的外壳样式").get_by_test_id("reply-image")
    assert await image_loaded(staff_image.locator("img"))
    note_id = note_image.rsplit("/", 1)[1]
    for path in (f"/shop/tickets/{ticket['id']}/files/{note_id}", f"/console/tickets/{ticket['id']}/files/{note_id}"):
        r = await shopper.request.get(path, max_redirects=0)
        assert r.status != 200, path
    await snap(shopper, "tickets_shopper_images_zh")


async def test_a_visitor_from_the_email_link_attaches_an_image(browsers, live_shop):
    # Given a visitor who wrote through the help form on a phone (a link session for that ticket only)
    email = f"img-{live_shop.slug}@example.com"
    visitor = await browsers.page(phone=True)
    await visitor.goto(f"/shop/help?merchant={live_shop.slug}")
    await visitor.fill("#email", email)
    await visitor.fill("#subject", "收到的杯子有缺口")
    await visitor.fill("#description", "杯口有一个小缺口。")
    await visitor.get_by_test_id("help-submit").click()
    await visitor.wait_for_url(re.compile(r"/shop/tickets/\w+\?created=1"))
    ticket_id = ticket_id_of(visitor)
    # When they attach a photo to a reply
    await visitor.fill("#reply-body", "补充一张缺口的照片。")
    await visitor.get_by_test_id("reply-images-input").set_input_files(files=[image("缺口.png", (180, 120, 40))])
    await snap(visitor, "tickets_visitor_image_picked_phone")
    await no_sideways_scroll(visitor)
    await visitor.get_by_test_id("reply-send").click()
    # Then their reply shows it, served to their link session
    mine = visitor.locator(".bubble.right[data-reply]", has_text="补充一张缺口的照片")
    await expect(mine.get_by_test_id("reply-image")).to_have_count(1)
    assert await image_loaded(mine.locator("img"))
    await snap(visitor, "tickets_visitor_image_sent_phone")
    await no_sideways_scroll(visitor)
    # And the file belongs to the ticket (a link has no account), and the agent sees it
    async with transaction() as session:
        owners = (await session.execute(select(Upload.owner_type, Upload.owner_id).join(
            Merchant, Merchant.id == Upload.merchant_id).where(Merchant.slug == live_shop.slug))).all()
    assert [tuple(o) for o in owners] == [("ticket", ticket_id)]
    agent = await browsers.staff(live_shop)
    await agent.goto(f"/console/tickets/{ticket_id}")
    thumb = agent.locator(".bubble.left[data-reply]", has_text="补充一张缺口的照片").get_by_test_id("reply-image")
    assert await image_loaded(thumb.locator("img"))
    # And a browser without the link or a console session gets nothing but the way to sign in
    upload_id = (await thumb.get_attribute("href")).rsplit("/", 1)[1]
    stranger = await browsers.page()
    for area in ("shop", "console"):
        r = await stranger.request.get(f"/{area}/tickets/{ticket_id}/files/{upload_id}", max_redirects=0)
        assert r.status == 303 and r.headers["location"].startswith(("/console/login", "/shop/lookup")), area
