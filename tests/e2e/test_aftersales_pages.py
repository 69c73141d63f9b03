"""Each case type's happy path through the shopper pages and the merchant console, in Chromium."""
from __future__ import annotations

import re

from playwright.async_api import Page, expect

from tests.e2e.conftest import api_case, live_order, png, shopper_token, snap


def case_id_of(page: Page) -> str:
    return page.url.rstrip("/").rsplit("/", 1)[1]


async def badge(page: Page, status: str) -> None:
    await expect(page.locator(f"h1 .badge[data-status={status}]")).to_be_visible()


async def apply_for(page: Page, line_no: str, type_: str, reason: str) -> None:
    """From the order page: open the form for one line, pick the type and reason."""
    await page.get_by_test_id(f"apply-{line_no}").click()
    await page.wait_for_url(re.compile(r"/apply\?line="))
    await page.check(f"input[name=type][value={type_}]")
    await page.select_option("#reason", reason)


async def add_photo(page: Page, name: str = "photo.png") -> None:
    before = await page.locator("#photos figure.thumb").count()
    await page.get_by_test_id("photo-input").set_input_files(
        files=[{"name": name, "mimeType": "image/png", "buffer": png()}])
    await expect(page.locator("#photos figure.thumb")).to_have_count(before + 1)


async def submit_case(page: Page) -> str:
    await page.get_by_test_id("submit").click()
    await page.wait_for_url(re.compile(r"/shop/cases/[^/]+$"))
    return case_id_of(page)


async def confirm_refunds(agent: Page, case_id: str) -> None:
    """Confirm every open manual refund of the case, one row at a time."""
    await agent.goto(f"/console/cases/{case_id}")
    while await agent.get_by_test_id("confirm-refund").count():
        row = agent.locator("form[action^='/console/refunds/']").first
        await row.locator("input[name=reference]").fill("BANK-0001")
        async with agent.expect_navigation():
            await row.get_by_test_id("confirm-refund").click()
    await badge(agent, "completed")


async def test_refund_only_before_shipping(browsers, live_shop):
    order = await live_order(live_shop, shipped=False)
    shopper = await browsers.shopper(live_shop, order)
    await expect(shopper.locator("h1")).to_contain_text(order["order_no"])
    await snap(shopper, "shopper_order_zh")
    await apply_for(shopper, "2", "refund_only", "dont_want")
    await expect(shopper.get_by_test_id("quote-amount")).to_have_text("¥44.00")
    await expect(shopper.get_by_test_id("quote")).to_contain_text("系统自动同意")
    case_id = await submit_case(shopper)
    await badge(shopper, "refunding")
    await expect(shopper.get_by_test_id("refunds")).to_contain_text("¥38.26")

    agent = await browsers.staff(live_shop)
    await confirm_refunds(agent, case_id)
    await expect(agent.get_by_test_id("refunds")).not_to_contain_text("待退款")
    await shopper.reload()
    await badge(shopper, "completed")
    await expect(shopper.locator(".timeline")).to_contain_text("退款成功")


async def test_return_refund_with_photo_lookup_waybill_and_receipt(browsers, live_shop):
    order = await live_order(live_shop)
    shopper = await browsers.page()
    await shopper.goto(f"/shop/lookup?store=main&merchant={live_shop.slug}")
    await snap(shopper, "shopper_lookup_zh")
    await shopper.fill("#order_no", order["order_no"])
    await shopper.fill("#phone", "13800000000")
    await shopper.click("button[type=submit]")
    await shopper.wait_for_url(f"**/shop/orders/{order['id']}")

    await apply_for(shopper, "1", "return_refund", "quality")
    await expect(shopper.get_by_test_id("quote-amount")).to_have_text("¥88.00")
    await expect(shopper.get_by_test_id("photo-hint")).to_be_visible()
    await add_photo(shopper)
    await expect(shopper.get_by_test_id("photo-hint")).to_be_hidden()
    await expect(shopper.get_by_test_id("tenders")).to_contain_text("¥76.52")
    await shopper.fill("#description", "左耳没有声音，充电后依旧")
    await snap(shopper, "shopper_apply_zh")
    case_id = await submit_case(shopper)
    await badge(shopper, "requested")
    await expect(shopper.get_by_test_id("deadline").locator(".countdown")).to_contain_text("剩余")
    await expect(shopper.locator(".thumbs img")).to_have_count(1)

    agent = await browsers.staff(live_shop)
    row = agent.locator(f"tr[data-case] a[href='/console/cases/{case_id}']")
    await expect(row).to_be_visible()
    await snap(agent, "console_queue_zh")
    await row.click()
    await expect(agent.locator(".thumbs img")).to_have_count(1)
    await snap(agent, "console_case_review_zh")
    await agent.get_by_test_id("approve").click()
    await badge(agent, "awaiting_return")

    await shopper.reload()
    await expect(shopper.get_by_test_id("return-address")).to_contain_text("华新镇 88 号")
    await snap(shopper, "shopper_case_return_zh")
    await shopper.select_option("select[name=carrier]", "zhongtong")
    await shopper.fill("input[name=tracking_no]", "ZT7788990011")
    await shopper.get_by_test_id("ship-return").click()
    await badge(shopper, "awaiting_receipt")
    await expect(shopper.locator("h1 .badge")).to_have_text("待退款")

    await agent.reload()
    await agent.fill("#receive-note", "包装完好")
    await agent.get_by_test_id("receive-ok").click()
    await badge(agent, "refunding")
    await confirm_refunds(agent, case_id)
    await snap(agent, "console_case_completed_zh")

    await shopper.reload()
    await badge(shopper, "completed")
    await snap(shopper, "shopper_case_completed_zh")
    await shopper.goto("/shop/cases")
    await expect(shopper.locator(f".case-card[href='/shop/cases/{case_id}']")).to_contain_text("已完成")
    await snap(shopper, "shopper_cases_zh")


async def test_exchange_for_another_colour(browsers, live_shop):
    order = await live_order(live_shop)
    shopper = await browsers.shopper(live_shop, order)
    await apply_for(shopper, "1", "exchange", "wrong_choice")
    await shopper.select_option("#exchange_sku", "A-RED")
    await expect(shopper.get_by_test_id("buyer-pays")).to_have_text("¥22.00")
    case_id = await submit_case(shopper)
    await badge(shopper, "requested")

    agent = await browsers.staff(live_shop)
    await agent.goto(f"/console/cases/{case_id}")
    await agent.get_by_test_id("approve").click()
    await badge(agent, "awaiting_return")
    await shopper.reload()
    await shopper.fill("input[name=tracking_no]", "SF1234567890")
    await shopper.select_option("select[name=carrier]", "shunfeng")
    await shopper.get_by_test_id("ship-return").click()
    await badge(shopper, "awaiting_receipt")
    await agent.reload()
    await agent.get_by_test_id("receive-ok").click()
    await badge(agent, "awaiting_reship")
    await agent.fill("#reship input[name=tracking_no]", "YT5566778899")
    await agent.get_by_test_id("reship").click()
    await badge(agent, "awaiting_buyer_confirm")
    await shopper.reload()
    await expect(shopper.locator("h1 .badge")).to_have_text("换货中")
    await shopper.get_by_test_id("confirm-receipt").click()
    await badge(shopper, "completed")


async def test_reship_a_missing_item(browsers, live_shop):
    order = await live_order(live_shop)
    shopper = await browsers.shopper(live_shop, order)
    await apply_for(shopper, "2", "reship", "missing_item")
    await expect(shopper.get_by_test_id("photo-hint")).to_be_visible()
    await shopper.get_by_test_id("submit").click()
    await expect(shopper.locator("#flash")).to_contain_text("至少上传一张图片凭证")
    await add_photo(shopper, "box.png")
    case_id = await submit_case(shopper)

    agent = await browsers.staff(live_shop)
    await agent.goto(f"/console/cases/{case_id}")
    await agent.get_by_test_id("approve").click()
    await badge(agent, "awaiting_reship")
    await agent.select_option("#reship select[name=carrier]", "jd")
    await agent.fill("#reship input[name=tracking_no]", "JD0012345678")
    await agent.get_by_test_id("reship").click()
    await badge(agent, "awaiting_buyer_confirm")
    await shopper.reload()
    await expect(shopper.locator("h1 .badge")).to_have_text("补发中")
    await shopper.get_by_test_id("confirm-receipt").click()
    await badge(shopper, "completed")


async def test_compensation_in_english(browsers, live_shop):
    order = await live_order(live_shop)
    shopper = await browsers.shopper(live_shop, order)
    await shopper.get_by_test_id("lang-switch").click()
    await expect(shopper.get_by_test_id("apply-1")).to_have_text("Request after-sales")
    await apply_for(shopper, "1", "compensation", "price_drop")
    await shopper.fill("#amount", "10")
    await expect(shopper.get_by_test_id("quote-amount")).to_have_text("¥10.00")
    await shopper.fill("#amount", "999")
    await expect(shopper.get_by_test_id("problems")).to_contain_text("More than can still be refunded")
    await shopper.fill("#amount", "10.00")
    await expect(shopper.get_by_test_id("problems")).to_have_count(0)
    await snap(shopper, "shopper_apply_en")
    case_id = await submit_case(shopper)
    await badge(shopper, "requested")
    await expect(shopper.locator("h1 .badge")).to_have_text("Awaiting review")

    agent = await browsers.staff(live_shop)
    await agent.get_by_test_id("lang-switch").click()
    await expect(agent.locator("h1")).to_have_text("After-sales queue")
    await snap(agent, "console_queue_en")
    await agent.goto(f"/console/cases/{case_id}")
    await agent.get_by_test_id("approve").click()
    await badge(agent, "refunding")
    await snap(agent, "console_case_en")
    await confirm_refunds(agent, case_id)
    await shopper.reload()
    await badge(shopper, "completed")
    await expect(shopper.locator(".timeline")).to_contain_text("Refund succeeded")
    await snap(shopper, "shopper_case_en")


async def test_rejected_then_resubmitted(browsers, live_shop):
    order = await live_order(live_shop)
    case = await api_case(live_shop, order, description="尺码不合适")
    agent = await browsers.staff(live_shop)
    await agent.goto(f"/console/cases/{case['id']}")
    await agent.locator("#reject .chip", has_text="未提供有效凭证").click()
    await expect(agent.locator("#reject-reason")).to_have_value("未提供有效凭证")
    await agent.get_by_test_id("reject").click()
    await badge(agent, "rejected")

    shopper = await browsers.shopper(live_shop, order, next=f"/shop/cases/{case['id']}")
    await expect(shopper.get_by_test_id("reject-reason")).to_have_text("未提供有效凭证")
    await snap(shopper, "shopper_case_rejected_zh")
    await shopper.get_by_role("link", name="修改后重新提交").click()
    await expect(shopper.get_by_test_id("quote-amount")).to_have_text("¥88.00")
    await shopper.fill("#description", "尺码不合适，吊牌完好，附照片")
    await add_photo(shopper)
    await shopper.get_by_test_id("submit").click()
    await shopper.wait_for_url(f"**/shop/cases/{case['id']}")
    await badge(shopper, "requested")
    await expect(shopper.locator(".timeline")).to_contain_text("买家修改后重新提交")


async def test_offer_with_a_negotiated_fee_is_accepted(browsers, live_shop):
    order = await live_order(live_shop)
    token = await shopper_token(live_shop, order)
    case = await api_case(live_shop, order, reason="quality", photo_ids=[await live_shop.photo(token)])
    agent = await browsers.staff(live_shop)
    await agent.goto(f"/console/cases/{case['id']}")
    await agent.get_by_test_id("add-deduction").click()
    await agent.select_option("select[name=ded_type]", "negotiated_fee")
    await agent.fill("input[name=ded_amount]", "17.60")
    await agent.fill("input[name=ded_note]", "20% 服务费（已与买家沟通）")
    await expect(agent.locator("#approve .amount-sm")).to_have_text("¥70.40")
    await snap(agent, "console_case_offer_zh")
    await agent.get_by_test_id("approve").click()
    await badge(agent, "offer_pending")

    shopper = await browsers.shopper(live_shop, order, next=f"/shop/cases/{case['id']}")
    offer = shopper.get_by_test_id("offer")
    await expect(offer).to_contain_text("协商服务费")
    await expect(offer.locator(".amount")).to_have_text("¥70.40")
    await snap(shopper, "shopper_case_offer_zh")
    await offer.get_by_role("button", name="同意方案").click()
    await badge(shopper, "awaiting_return")
    await expect(shopper.get_by_test_id("refund-amount")).to_have_text("¥70.40")


async def test_bulk_approve_from_the_queue_and_settings(browsers, live_shop):
    cases = [await api_case(live_shop, await live_order(live_shop)) for _ in range(3)]
    admin = await browsers.staff(live_shop, email=f"admin@{live_shop.slug}.test", password="admin-pass-1")
    for case in cases:
        await admin.locator(f"input[name=case_id][aria-label='{case['case_no']}']").check()
    await expect(admin.locator("#queue .bulkbar strong")).to_have_text("3")
    await admin.get_by_test_id("bulk-approve").click()
    result = admin.get_by_test_id("bulk-result")
    await expect(result).to_contain_text("成功 3 个，失败 0 个")
    for case in cases:
        await expect(result.locator(f"li[data-case='{case['case_no']}']")).to_contain_text("待退货")
        await expect(admin.locator(f"tr[data-case='{case['case_no']}']")).to_have_count(0)
    await snap(admin, "console_bulk_zh")

    await admin.get_by_role("link", name="售后设置").click()
    await admin.fill("#tm-review_h", "24")
    await admin.locator("#timers button").click()
    await expect(admin.locator("#timers [data-testid=saved]")).to_be_visible()
    await expect(admin.locator("#tm-review_h")).to_have_value("24")
    await snap(admin, "console_settings_zh")


async def test_phone_layout(browsers, live_shop):
    order = await live_order(live_shop)
    shopper = await browsers.shopper(live_shop, order, phone=True)
    await apply_for(shopper, "1", "return_refund", "no_reason_7d")
    await expect(shopper.get_by_test_id("quote-amount")).to_have_text("¥88.00")
    await snap(shopper, "shopper_apply_phone")
    case_id = await submit_case(shopper)
    await badge(shopper, "requested")
    await snap(shopper, "shopper_case_phone")
    for path in (f"/shop/orders/{order['id']}", "/shop/cases", f"/shop/cases/{case_id}"):
        await shopper.goto(path)
        overflow = await shopper.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px on a phone"
    await shopper.goto("/shop/cases")
    await snap(shopper, "shopper_cases_phone")
