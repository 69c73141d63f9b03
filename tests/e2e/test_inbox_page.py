"""The unified inbox in the browser: every kind of work in one list, the counters, a saved view, a bulk change."""
from __future__ import annotations

import re
import secrets

from playwright.async_api import Page, expect

from shopdesk.chat.actions import do_save_contact, do_send_message, do_start_widget_session, resolve_actor
from shopdesk.core.db import sessionmaker
from tests.e2e.conftest import PHONE, api_case, live_order, shopper_token, snap
from tests.factories import Shop


async def desk_settings(shop: Shop) -> None:
    """Categories, a 24/7 SLA policy, a revisit 2 h after a solve, and a 6 h review for after-sales requests."""
    admin = shop.h(shop.admin_token)
    r = await shop.client.put("/api/v1/settings/tickets", headers=admin, json={
        "categories": ["物流", "发票", "质量问题"], "followup": {"revisit_after_hours": 2}})
    assert r.status_code == 200, r.text
    r = await shop.client.put("/api/v1/settings/sla-policies/standard", headers=admin,
                              json={"first_response_minutes": 120, "resolution_minutes": 2880})
    assert r.status_code == 200, r.text
    r = await shop.client.put("/api/v1/settings/aftersales", headers=admin, json={"timers": {"review_h": 6}})
    assert r.status_code == 200, r.text


async def ticket(shop: Shop, subject: str, **body) -> dict:
    r = await shop.post("/tickets", {"subject": subject, "description": subject, "channel": "web", **body})
    assert r.status_code == 201, r.text
    return r.json()


async def message_left_offline(shop: Shop, text: str) -> str:
    """A visitor writes in the chat widget while no agent is online: a 留言 (it also opens a ticket)."""
    widget = await do_start_widget_session(store="main", merchant=shop.slug)
    async with sessionmaker()() as session:
        visitor = await resolve_actor(session, widget["token"])
    await do_save_contact(visitor, {"name": "王五", "email": f"wangwu-{shop.slug}@example.com"})
    sent = await do_send_message(visitor, client_msg_id=secrets.token_hex(4), text=text)
    return sent.ack["conversation_id"]


def row(page: Page, text: str):
    return page.locator("[data-row]", has_text=text)


def counter(page: Page, name: str):
    return page.locator(f"#inbox-counters [data-counter={name}]")


async def no_sideways_scroll(page: Page) -> None:
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{page.url} scrolls sideways by {overflow}px on a phone"


async def test_agent_works_through_the_unified_inbox(browsers, live_shop):
    shop = live_shop
    await desk_settings(shop)
    me = (await shop.get("/auth/me", shop.agent_token)).json()
    # Given an urgent ticket, one assigned to the agent, an unassigned one and a solved one (a revisit is due),
    urgent = await ticket(shop, "退款三天还没到账", priority="urgent", category="质量问题")
    mine = await ticket(shop, "发票抬头需要修改", assignee_id=me["id"], category="发票")
    plain = await ticket(shop, "能否修改收货地址", category="物流")
    solved = await ticket(shop, "耳机已换新，请回访", assignee_id=me["id"])
    r = await shop.client.patch(f"/api/v1/tickets/{solved['id']}", json={"status": "solved"},
                                headers=shop.h(shop.agent_token))
    assert r.status_code == 200, r.text
    # an after-sales request waiting for review (due in 6 h) and a 留言 left in the chat
    case = await api_case(shop, await live_order(shop))
    chat_id = await message_left_offline(shop, "你们周末发货吗？")

    # When the agent opens the inbox from the first entry of the console nav
    agent = await browsers.staff(shop)
    nav = agent.locator("nav.nav a")
    await expect(nav.first).to_have_text("收件箱")
    await nav.first.click()
    await agent.wait_for_url("**/console/inbox")
    await expect(agent.locator("h1")).to_have_text("收件箱")
    # Then every kind of work is in the one list, each opening its own page
    await expect(row(agent, "退款三天还没到账")).to_have_attribute("data-kind", "ticket")
    await expect(row(agent, "退款三天还没到账").locator(".prio")).to_have_text("紧急")
    await expect(row(agent, "退款三天还没到账").get_by_test_id("due")).to_contain_text("后到期")
    await expect(row(agent, "发票抬头需要修改").get_by_test_id("assignee")).not_to_contain_text("未分配")
    chat = agent.locator(f"[data-row][data-kind=chat][data-id='{chat_id}']")
    await expect(chat).to_contain_text("网页留言")
    await expect(chat.get_by_test_id("open")).to_have_attribute("href", f"/console/chat?c={chat_id}")
    case_row = agent.locator(f"[data-row][data-kind=aftersales][data-id='{case['id']}']")
    await expect(case_row).to_contain_text(case["case_no"])
    await expect(case_row.get_by_test_id("due")).to_contain_text("后到期")
    task = agent.locator("[data-row][data-kind=task]")
    await expect(task).to_have_count(1)
    await expect(task.get_by_test_id("open")).to_have_attribute("href", f"/console/tickets/{solved['id']}")
    await expect(task).to_contain_text(solved["number"])
    await expect(agent.locator("[data-row][data-kind=ticket]", has_text="耳机已换新")).to_have_count(0)  # solved
    # And the counters add it up
    expected = (await shop.get("/inbox/counts", shop.agent_token)).json()
    assert expected["tickets"]["mine"] == 1 and expected["chats_waiting"] == 1
    assert expected["aftersales_due"] == 1 and expected["tasks_due"] == 1
    for name, n in (("new", expected["tickets"]["new"]), ("mine", 1), ("unassigned", expected["tickets"]["unassigned"]),
                    ("urged", 0), ("chats", 1), ("cases", 1), ("tasks", 1)):
        await expect(counter(agent, name)).to_have_attribute("data-n", str(n))
    await snap(agent, "inbox_console_zh")
    await expect(agent.locator("[data-row]")).to_have_count(7)  # 4 tickets (one the 留言's), a chat, a case, a task

    # When they click the "mine" counter, then save that list as a view
    await counter(agent, "mine").click()
    await agent.wait_for_url(re.compile(r"assignee=me"))
    await expect(counter(agent, "mine")).to_have_class(re.compile(r"\bactive\b"))
    await expect(agent.locator("[data-row]")).to_have_count(1)
    await expect(row(agent, "发票抬头需要修改")).to_be_visible()
    await expect(agent.locator("#f-assignee")).to_have_value("me")
    await agent.get_by_test_id("save-view-open").click()
    await agent.fill("#view-name", "我负责的工单")
    await expect(agent.get_by_test_id("view-shared")).to_have_count(0)  # an agent keeps views to themselves
    await agent.get_by_test_id("save-view-submit").click()
    await agent.wait_for_url(re.compile(r"view=\w+"))
    await expect(agent.get_by_test_id("notice")).to_contain_text("我负责的工单")
    view_link = agent.locator(".view-item[data-view='我负责的工单'] a")
    await expect(view_link).to_have_class(re.compile(r"\bactive\b"))
    await snap(agent, "inbox_console_view_zh")
    # Then back on everything, the view opens the same list again in one click
    await agent.get_by_role("link", name="全部待办").click()
    await expect(agent.locator("[data-row]")).to_have_count(7)
    await view_link.click()
    await agent.wait_for_url(re.compile(r"view=\w+"))
    await expect(agent.locator("[data-row]")).to_have_count(1)
    await expect(row(agent, "发票抬头需要修改")).to_be_visible()

    # When, on the full list, they tick two tickets, the list refreshes meanwhile, and they set priority high
    await agent.get_by_role("link", name="全部待办").click()
    await agent.wait_for_url(re.compile(r"/console/inbox$"))
    await row(agent, "能否修改收货地址").get_by_test_id("select").check()
    await row(agent, "发票抬头需要修改").get_by_test_id("select").check()
    await expect(agent.get_by_test_id("selected-count")).to_have_text("已选 2 个工单")
    await agent.evaluate("document.getElementById('inbox-rows').dataset.stale = '1'")
    async with agent.expect_response(lambda r: "part=live" in r.url):
        await agent.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # what a return to the tab does
    await expect(agent.locator("#inbox-rows[data-stale]")).to_have_count(0)  # the list was drawn anew
    await expect(row(agent, "能否修改收货地址").get_by_test_id("select")).to_be_checked()
    await expect(row(agent, "发票抬头需要修改").get_by_test_id("select")).to_be_checked()
    await agent.get_by_test_id("bulk-priority").select_option("high")
    await snap(agent, "inbox_console_bulk_zh")
    await agent.get_by_test_id("bulk-apply").click()
    # Then both rows show it, the selection is cleared and the result says so
    await expect(agent.get_by_test_id("bulk-result")).to_contain_text("已更新 2 个工单")
    await expect(row(agent, "能否修改收货地址").locator(".prio")).to_have_text("高")
    await expect(row(agent, "发票抬头需要修改").locator(".prio")).to_have_text("高")
    await expect(agent.get_by_test_id("selected-count")).to_be_hidden()
    for t in (plain, mine):
        assert (await shop.get(f"/tickets/{t['id']}")).json()["priority"] == "high"

    # When a ticket is merged away by a colleague while ticked, a bulk change reports it by number
    await row(agent, "能否修改收货地址").get_by_test_id("select").check()
    await row(agent, "退款三天还没到账").get_by_test_id("select").check()
    r = await shop.post(f"/tickets/{plain['id']}/merge", {"into": urgent["id"]}, shop.agent_token)
    assert r.status_code == 200, r.text
    await agent.get_by_test_id("bulk-assignee").select_option("me")
    await agent.get_by_test_id("bulk-apply").click()
    result = agent.get_by_test_id("bulk-result")
    await expect(result).to_contain_text("已更新 1 个工单")
    await expect(result.locator(f"[data-failed='{plain['id']}']")).to_contain_text(plain["number"])
    await expect(row(agent, "能否修改收货地址")).to_have_count(0)
    await expect(row(agent, "退款三天还没到账").get_by_test_id("assignee")).to_contain_text("agent")
    await expect(row(agent, "退款三天还没到账").locator(".prio")).to_have_text("紧急")  # only the change asked for
    await snap(agent, "inbox_console_bulk_result_zh")

    # And the page reads in English, and fits a phone
    await agent.get_by_test_id("lang-switch").click()
    await expect(agent.locator("h1")).to_have_text("Inbox")
    await expect(counter(agent, "chats")).to_contain_text("Chats waiting")
    await snap(agent, "inbox_console_en")
    await agent.get_by_test_id("lang-switch").click()
    await agent.set_viewport_size(PHONE)
    await agent.reload()
    await expect(agent.locator("[data-row]").first).to_be_visible()
    await no_sideways_scroll(agent)
    await snap(agent, "inbox_console_phone")
    await row(agent, "发票抬头需要修改").get_by_test_id("select").check()
    await expect(agent.get_by_test_id("bulk-apply")).to_be_visible()
    await no_sideways_scroll(agent)
    await snap(agent, "inbox_console_phone_bulk")
    # The whole row opens the item
    await row(agent, "发票抬头需要修改").locator(".ib-title").click()
    await agent.wait_for_url(f"**/console/tickets/{mine['id']}")


async def test_more_rows_the_refresh_keeps_them_and_the_hurried_counter(browsers, live_shop):
    shop = live_shop
    # Given a shopper's ticket hurried twice, then 26 more tickets (more than one page of 25)
    token = await shopper_token(shop, await live_order(shop))
    r = await shop.post("/tickets", {"subject": "催了两次的工单", "description": "还没处理", "channel": "web"}, token)
    assert r.status_code == 201, r.text
    hurried = r.json()
    for _ in range(2):
        assert (await shop.post(f"/tickets/{hurried['id']}/urge", None, token)).status_code == 200
    for i in range(26):
        await ticket(shop, f"批量工单 {i:02d}")
    agent = await browsers.staff(shop)
    await agent.goto("/console/inbox")
    rows = agent.locator("[data-row]")
    # When the agent asks for more, the next page is added below (keyset cursor), and nothing after it
    await expect(rows).to_have_count(25)
    await expect(rows.first).to_contain_text("批量工单 25")
    await agent.get_by_test_id("more").click()
    await expect(rows).to_have_count(27)
    await expect(rows.last).to_contain_text("催了两次的工单")
    await expect(agent.get_by_test_id("more")).to_have_count(0)
    # Then the refresh redraws every row on screen, not only the first page
    await agent.evaluate("document.getElementById('inbox-rows').dataset.stale = '1'")
    async with agent.expect_response(lambda r: "part=live" in r.url):
        await agent.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    await expect(agent.locator("#inbox-rows[data-stale]")).to_have_count(0)
    await expect(rows).to_have_count(27)
    # And the hurried counter opens the hurried tickets only; the oldest activity comes first when asked
    await expect(counter(agent, "urged")).to_have_attribute("data-n", "1")
    await counter(agent, "urged").click()
    await expect(rows).to_have_count(1)
    await expect(rows.get_by_test_id("urge-count")).to_have_text("⏰ 催 2")
    await expect(rows.locator(".prio")).to_have_text("紧急")
    await expect(agent.get_by_test_id("urged-filter")).to_be_visible()
    await agent.select_option("#f-sort", "updated_asc")
    await agent.get_by_test_id("filter-submit").click()
    await agent.wait_for_url(re.compile(r"sort=updated_asc"))
    await expect(rows).to_have_count(1)  # still only the hurried one: the filter form keeps it
    await agent.get_by_test_id("urged-filter").click()
    await expect(rows).to_have_count(25)
    await expect(rows.first).to_contain_text("催了两次的工单")
