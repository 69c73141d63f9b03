"""The after-sales pages over HTTP (no browser): sessions, CSRF, language, isolation and the main flows."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import event

from tests.factories import PNG

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def line_id(order: dict, sku: str) -> str:
    return next(ln["id"] for ln in order["lines"] if ln["sku"] == sku)


async def csrf_of(client, path: str = "/console/login") -> str:
    r = await client.get(path)
    return CSRF.search(r.text).group(1)


def hx(token: str) -> dict:
    return {"X-CSRF-Token": token, "HX-Request": "true"}


async def staff_login(client, email: str, password: str) -> str:
    token = await csrf_of(client)
    r = await client.post("/console/login", data={"email": email, "password": password, "csrf_token": token})
    assert r.status_code == 303, r.text
    return token


async def shopper_enter(client, shop, order: dict) -> str:
    r = await client.get("/shop/enter", params={"token": await shop.shopper(order)})
    assert r.status_code == 303
    return await csrf_of(client, "/shop/cases")


async def open_case(shop, order: dict, type_: str = "return_refund", reason: str = "no_reason_7d", **extra) -> dict:
    token = await shop.shopper(order)
    body = {"order_id": order["id"], "type": type_, "reason": reason,
            "lines": [{"order_line_id": line_id(order, "A"), "quantity": 1}], **extra}
    r = await shop.post("/aftersales", body, token=token)
    assert r.status_code == 201, r.text
    return r.json()


# ---- sessions and CSRF ----------------------------------------------------------------------------

async def test_a_post_without_the_csrf_token_is_refused(client, shop):
    await client.get("/console/login")
    r = await client.post("/console/login", data={"email": shop.agent_email, "password": "agent-pass-1"})
    assert r.status_code == 403
    assert "页面已过期" in r.text
    assert "sd_console" not in r.headers.get("set-cookie", "")


async def test_a_csrf_token_from_another_browser_is_refused(client, shop):
    token = await csrf_of(client)
    client.cookies.set("sd_csrf", "forged-token")
    r = await client.post("/console/login", data={"email": shop.agent_email, "password": "agent-pass-1",
                                                  "csrf_token": token})
    assert r.status_code == 403


async def test_a_wrong_password_shows_a_message_and_opens_no_session(client, shop):
    token = await csrf_of(client)
    r = await client.post("/console/login", data={"email": shop.agent_email, "password": "nope-nope",
                                                  "csrf_token": token})
    assert r.status_code == 401
    assert "邮箱或密码错误" in r.text
    assert "sd_console" not in r.headers.get("set-cookie", "")
    assert (await client.get("/console/cases")).headers["location"].startswith("/console/login")


async def test_login_opens_the_queue_and_logout_closes_it(client, shop):
    token = await staff_login(client, shop.agent_email, "agent-pass-1")
    r = await client.get("/console/cases")
    assert r.status_code == 200 and "售后队列" in r.text
    assert "HttpOnly" in (await client.post("/console/logout", data={"csrf_token": token})).headers["set-cookie"]
    assert (await client.get("/console/cases")).status_code == 303


async def test_a_tampered_session_cookie_is_no_session(client, shop):
    await staff_login(client, shop.agent_email, "agent-pass-1")
    client.cookies.set("sd_console", "x" + client.cookies.get("sd_console"), path="/console")
    assert (await client.get("/console/cases")).status_code == 303


# ---- language -------------------------------------------------------------------------------------

async def test_language_is_chinese_until_the_person_switches(client):
    assert "查询订单" in (await client.get("/shop/lookup")).text
    assert "查询订单" in (await client.get("/shop/lookup", headers={"Accept-Language": "en-US,en;q=0.9"})).text
    r = await client.get("/lang/en", params={"next": "/shop/lookup"})
    assert r.status_code == 303 and r.headers["location"] == "/shop/lookup"
    page = await client.get("/shop/lookup", headers={"Accept-Language": "zh-CN"})
    assert "Find your order" in page.text and 'lang="en"' in page.text
    await client.get("/lang/zh_CN", params={"next": "https://evil.example/"})
    assert "查询订单" in (await client.get("/shop/lookup", headers={"Accept-Language": "en"})).text


async def test_shopper_errors_come_in_the_shoppers_language(client, shop):
    order = await shop.order()
    case = await open_case(shop, order)
    token = await shopper_enter(client, shop, order)
    await client.get("/lang/en")
    r = await client.post(f"/shop/cases/{case['id']}/ship-return", headers=hx(token),
                          data={"carrier": "zhongtong", "tracking_no": "ZT123456"})
    assert r.status_code == 409
    assert r.headers["HX-Retarget"] == "#flash"
    assert "Not possible in the current state" in r.text


# ---- lookup ---------------------------------------------------------------------------------------

async def test_lookup_opens_the_order_and_a_miss_says_nothing_specific(client, shop):
    order = await shop.order()
    token = await csrf_of(client, "/shop/lookup")
    miss = await client.post("/shop/lookup", data={"store": "main", "order_no": order["order_no"],
                                                   "phone": "13900000000", "merchant": shop.slug,
                                                   "csrf_token": token})
    assert miss.status_code == 404 and "没有找到匹配的订单" in miss.text
    r = await client.post("/shop/lookup", data={"store": "main", "order_no": order["order_no"],
                                                "phone": "138 0000 0000", "merchant": shop.slug, "csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == f"/shop/orders/{order['id']}"
    page = await client.get(r.headers["location"])
    assert page.status_code == 200 and order["order_no"] in page.text and "申请售后" in page.text


async def test_an_email_link_survives_the_lookup(client, shop):
    order = await shop.order()
    case = await open_case(shop, order)
    r = await client.get(f"/shop/cases/{case['id']}")
    assert r.status_code == 303 and r.headers["location"] == f"/shop/lookup?next=/shop/cases/{case['id']}"
    page = await client.get(r.headers["location"])
    token = CSRF.search(page.text).group(1)
    assert f'name="next" value="/shop/cases/{case["id"]}"' in page.text
    r = await client.post("/shop/lookup", data={"store": "main", "order_no": order["order_no"], "phone": "13800000000",
                                                "merchant": shop.slug, "next": f"/shop/cases/{case['id']}",
                                                "csrf_token": token})
    assert r.headers["location"] == f"/shop/cases/{case['id']}"
    assert case["case_no"] in (await client.get(r.headers["location"])).text


async def test_lookup_shares_the_api_rate_limit(client, shop):
    order = await shop.order()
    token = await csrf_of(client, "/shop/lookup")
    form = {"store": "main", "order_no": order["order_no"], "phone": "0000", "csrf_token": token}
    codes = [(await client.post("/shop/lookup", data=form)).status_code for _ in range(6)]
    assert codes[:5] == [404] * 5 and codes[5] == 429


# ---- isolation ------------------------------------------------------------------------------------

async def test_another_shoppers_case_is_a_404_page(client, shop):
    mine, theirs = await shop.order(), await shop.order()
    case = await open_case(shop, theirs)
    await shopper_enter(client, shop, mine)
    r = await client.get(f"/shop/cases/{case['id']}")
    assert r.status_code == 404 and "没有找到" in r.text and case["case_no"] not in r.text
    assert (await client.get(f"/shop/orders/{theirs['id']}")).status_code == 404
    listing = await client.get("/shop/cases")
    assert case["case_no"] not in listing.text


async def test_another_merchants_staff_sees_a_404(client, shop, other_shop):
    order = await shop.order()
    case = await open_case(shop, order)
    await staff_login(client, other_shop.agent_email, "agent-pass-1")
    assert (await client.get(f"/console/cases/{case['id']}")).status_code == 404
    assert case["case_no"] not in (await client.get("/console/cases")).text


async def test_photos_are_served_only_to_their_owner(client, shop):
    mine, theirs = await shop.order(), await shop.order()
    token = await shopper_enter(client, shop, mine)
    r = await client.post("/shop/uploads", headers=hx(token), files={"file": ("a.png", PNG, "image/png")})
    assert r.status_code == 200
    photo = re.search(r'name="photo_ids" value="([^"]+)"', r.text).group(1)
    assert (await client.get(f"/shop/uploads/{photo}")).content == PNG
    await shopper_enter(client, shop, theirs)
    assert (await client.get(f"/shop/uploads/{photo}")).status_code == 404
    bad = await client.post("/shop/uploads", headers=hx(token), files={"file": ("a.png", b"GIF89a....", "image/png")})
    assert bad.status_code == 415 and "只支持" in bad.text


# ---- flows ----------------------------------------------------------------------------------------

async def test_shopper_applies_with_a_live_quote(client, shop):
    order = await shop.order()
    token = await shopper_enter(client, shop, order)
    a = line_id(order, "A")
    page = await client.get(f"/shop/orders/{order['id']}/apply", params={"line": a})
    assert page.status_code == 200 and "退货退款" in page.text
    form = {"line": a, f"qty_{a}": "1", "type": "return_refund", "reason": "no_reason_7d"}
    quote = await client.post(f"/shop/orders/{order['id']}/quote", headers=hx(token), data=form)
    assert "¥88.00" in quote.text and "¥76.52" in quote.text and "¥11.48" in quote.text
    quality = await client.post(f"/shop/orders/{order['id']}/quote", headers=hx(token), data={**form, "reason": "quality"})
    assert "至少上传一张图片" in quality.text
    empty = await client.post(f"/shop/orders/{order['id']}/quote", headers=hx(token), data={"type": "return_refund"})
    assert "请选择要申请售后的商品" in empty.text
    r = await client.post(f"/shop/orders/{order['id']}/apply", headers=hx(token), data={**form, "description": "不合适"})
    assert r.status_code == 200
    case_url = r.headers["HX-Redirect"]
    case_page = await client.get(case_url)
    assert "待审核" in case_page.text and "不合适" in case_page.text and "¥88.00" in case_page.text


async def test_refund_only_before_shipping_then_manual_refunds_complete_it(client, shop):
    order = await shop.order(shipped=False)
    token = await shopper_enter(client, shop, order)
    form = {"line": [line_id(order, "A"), line_id(order, "B")], f"qty_{line_id(order, 'A')}": "2",
            f"qty_{line_id(order, 'B')}": "1", "type": "refund_only", "reason": "dont_want"}
    r = await client.post(f"/shop/orders/{order['id']}/apply", headers=hx(token), data=form)
    case_id = r.headers["HX-Redirect"].rsplit("/", 1)[1]
    assert "退款中" in (await client.get(f"/shop/cases/{case_id}")).text
    staff = await staff_login(client, shop.agent_email, "agent-pass-1")
    page = await client.get(f"/console/cases/{case_id}")
    assert "¥230.00" in page.text
    for refund_no in re.findall(r'/console/refunds/([A-Za-z0-9_-]+)/confirm"', page.text)[::2]:
        done = await client.post(f"/console/refunds/{refund_no}/confirm", headers=hx(staff), data={"reference": "BANK-1"})
        assert done.headers["HX-Redirect"] == f"/console/cases/{case_id}"
    assert 'data-status="completed"' in (await client.get(f"/console/cases/{case_id}")).text


async def test_reject_with_a_template_then_resubmit(client, shop):
    order = await shop.order()
    case = await open_case(shop, order)
    staff = await staff_login(client, shop.agent_email, "agent-pass-1")
    assert "商品已影响二次销售" in (await client.get(f"/console/cases/{case['id']}")).text
    r = await client.post(f"/console/cases/{case['id']}/reject", headers=hx(staff),
                          data={"reason": "商品已影响二次销售", "expected_version": "1"})
    assert r.status_code == 200
    token = await shopper_enter(client, shop, order)
    page = await client.get(f"/shop/cases/{case['id']}")
    assert "审核拒绝" in page.text and "商品已影响二次销售" in page.text
    form_page = await client.get(f"/shop/cases/{case['id']}/resubmit")
    assert "修改并重新提交" in form_page.text
    a = line_id(order, "A")
    data = {"line": a, f"qty_{a}": "1", "type": "return_refund", "reason": "no_reason_7d", "description": "包装完好"}
    quote = await client.post(f"/shop/cases/{case['id']}/quote", headers=hx(token), data=data)
    assert "¥88.00" in quote.text and "已有进行中的售后" not in quote.text
    r = await client.post(f"/shop/cases/{case['id']}/resubmit", headers=hx(token), data=data)
    assert r.status_code == 200, r.text
    assert "待审核" in (await client.get(f"/shop/cases/{case['id']}")).text


async def test_stale_version_is_refused_with_a_message(client, shop):
    order = await shop.order()
    case = await open_case(shop, order)
    staff = await staff_login(client, shop.agent_email, "agent-pass-1")
    r = await client.post(f"/console/cases/{case['id']}/approve", headers=hx(staff), data={"expected_version": "7"})
    assert r.status_code == 409 and "已被他人更新" in r.text


async def test_bulk_reports_each_case(client, shop):
    ok = await open_case(shop, await shop.order())
    done = await open_case(shop, await shop.order())
    staff = await staff_login(client, shop.agent_email, "agent-pass-1")
    await client.post(f"/console/cases/{done['id']}/approve", headers=hx(staff), data={})
    r = await client.post("/console/cases/bulk", headers=hx(staff),
                          data={"bulk_action": "approve", "case_id": [ok["id"], done["id"]], "group": "pending_review"})
    assert r.status_code == 200
    assert "成功 1 个，失败 1 个" in r.text
    assert f'data-case="{ok["case_no"]}" class="ok"' in r.text
    assert f'data-case="{done["case_no"]}" class="bad"' in r.text


async def test_escalation_reaches_the_platform_which_rules(client, shop):
    from shopdesk.accounts.actions import do_create_staff
    from shopdesk.core.db import transaction

    order = await shop.order()
    case = await open_case(shop, order)
    staff = await staff_login(client, shop.agent_email, "agent-pass-1")
    await client.post(f"/console/cases/{case['id']}/reject", headers=hx(staff), data={"reason": "不支持"})
    token = await shopper_enter(client, shop, order)
    r = await client.post(f"/shop/cases/{case['id']}/escalate", headers=hx(token), data={"note": "商品本身有问题"})
    assert r.status_code == 200
    email = f"platform-{shop.slug}@shopdesk.test"
    async with transaction() as session:
        await do_create_staff(session, merchant=None, email=email, password="platform-pass", role="platform")
    platform = await staff_login(client, email, "platform-pass")
    queue = await client.get("/console/cases")
    assert case["case_no"] in queue.text
    page = await client.get(f"/console/cases/{case['id']}")
    assert "平台判定" in page.text and "同意申请" not in page.text
    r = await client.post(f"/console/cases/{case['id']}/rule", headers=hx(platform), data={"ruling": "buyer"})
    assert r.status_code == 200, r.text
    assert 'data-status="awaiting_return"' in (await client.get(f"/console/cases/{case['id']}")).text


async def test_settings_save_for_admins_only(client, shop):
    admin = await staff_login(client, f"admin@{shop.slug}.test", "admin-pass-1")
    r = await client.post("/console/settings/timers", headers=hx(admin),
                          data={f"timer_{name}": "72" for name in ("review_h", "offer_h", "ship_return_h",
                                                                   "receipt_after_signed_h", "receipt_without_tracking_h",
                                                                   "escalate_h", "confirm_replacement_h",
                                                                   "refund_target_h", "refund_alarm_h",
                                                                   "refund_hard_alarm_h")})
    assert r.headers["HX-Redirect"].startswith("/console/settings?saved=timers")
    r = await client.post("/console/settings/reasons", headers=hx(admin), data={
        "code": ["quality"], "label": ["质量问题"], "label_en": ["Quality"], "responsibility": ["merchant"],
        "new_code": "late", "new_label": "发货太慢", "new_label_en": "Shipped late", "new_responsibility": "merchant"})
    assert r.status_code == 200
    page = await client.get("/console/settings")
    assert 'value="72"' in page.text and "发货太慢" in page.text and "七天无理由" not in page.text
    agent = await staff_login(client, shop.agent_email, "agent-pass-1")
    r = await client.post("/console/settings/templates", headers=hx(agent), data={"templates": "x"})
    assert r.status_code == 403


async def test_the_queue_reads_a_fixed_number_of_queries(client, shop):
    from shopdesk.core.db import get_engine

    await staff_login(client, shop.agent_email, "agent-pass-1")
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    engine = get_engine().sync_engine
    await open_case(shop, await shop.order())
    await client.get("/console/cases")  # the first request resolves the login; later ones remember it
    event.listen(engine, "before_cursor_execute", count)
    try:
        await client.get("/console/cases")
        one = len(statements)
        for _ in range(3):
            await open_case(shop, await shop.order())
        statements.clear()
        page = await client.get("/console/cases")
        assert page.text.count("data-case=") == 4
        assert len(statements) == one
    finally:
        event.remove(engine, "before_cursor_execute", count)


# ---- catalogue --------------------------------------------------------------------------------------

def test_every_message_a_template_uses_exists_in_both_languages():
    from shopdesk.core import i18n

    root = Path(__file__).resolve().parents[3] / "src/shopdesk/web/templates"
    keys = set()
    for path in root.rglob("*.html"):
        keys |= set(re.findall(r"""\bt\(\s*['"]([a-z0-9_.]+)['"]""", path.read_text()))
    assert keys
    missing = sorted(k for k in keys if not k.endswith(".") and not i18n.has(k))
    assert missing == []
    assert all(i18n.MESSAGES["zh_CN"][k] and i18n.MESSAGES["en"][k] for k in i18n.MESSAGES["en"])


@pytest.mark.parametrize("cookie, header, expected", [
    (None, None, "zh_CN"), ("en", "zh-CN", "en"), (None, "en-GB,en;q=0.8", "zh_CN"),
    ("zh_CN", "en", "zh_CN"), ("xx", "en", "zh_CN"),
])
def test_language_negotiation(cookie, header, expected):
    from shopdesk.core.i18n import negotiate

    assert negotiate(cookie, header) == expected


async def test_unknown_page_is_an_html_404_and_unknown_api_path_a_problem(client):
    page = await client.get("/shop/no-such-page")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    api = await client.get("/api/v1/no-such-thing")
    assert api.status_code == 404 and api.headers["content-type"].startswith("application/problem+json")


async def test_an_agent_opens_a_case_for_the_shopper_and_only_for_their_own_merchant(client, shop, other_shop):
    order = await shop.order()
    # another merchant's agent gets 404 for the form, the quote and the submission
    token = await staff_login(client, other_shop.agent_email, "agent-pass-1")
    assert (await client.get(f"/console/orders/{order['id']}/apply")).status_code == 404
    form = {"line": line_id(order, "A"), "type": "return_refund", "reason": "no_reason_7d", "csrf_token": token}
    assert (await client.post(f"/console/orders/{order['id']}/apply", data=form)).status_code == 404
    # the shop's own agent fills the form in (photos upload into the console, shown only to the merchant)
    token = await staff_login(client, shop.agent_email, "agent-pass-1")
    page = await client.get(f"/console/orders/{order['id']}/apply")
    assert page.status_code == 200 and 'action="/console/orders/' in page.text
    r = await client.post("/console/uploads", headers=hx(token), files={"file": ("a.png", PNG, "image/png")})
    photo = re.search(r'name="photo_ids" value="([^"]+)"', r.text).group(1)
    assert f'src="/console/uploads/{photo}"' in r.text
    assert (await client.get(f"/console/uploads/{photo}")).content == PNG
    r = await client.post(f"/console/orders/{order['id']}/apply", data={**form, "csrf_token": token,
                                                                        "photo_ids": photo})
    assert r.status_code == 303 and r.headers["location"].startswith("/console/cases/")
    case = (await shop.get(r.headers["location"].replace("/console/cases/", "/aftersales/"))).json()
    assert case["customer_id"] == order["customer_id"] and case["photo_ids"] == [photo]
    assert case["events"][0]["actor"] == "agent"
    # and the other merchant's staff cannot see the photo
    await staff_login(client, other_shop.agent_email, "agent-pass-1")
    assert (await client.get(f"/console/uploads/{photo}")).status_code == 404
