"""`shopdesk demo`: a believable demo shop, built through the same actions people use."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from shopdesk.accounts.actions import do_create_api_key, do_create_merchant, do_create_staff, do_create_store
from shopdesk.accounts.auth import Principal
from shopdesk.accounts.models import Merchant, Staff
from shopdesk.aftersales import actions as cases
from shopdesk.aftersales.schemas import ApproveIn, CaseIn, CaseLineIn, DeductionIn
from shopdesk.core.clock import isoformat, now
from shopdesk.core.db import transaction
from shopdesk.orders.actions import do_upsert_order, do_upsert_product
from shopdesk.orders.schemas import OrderIn, ProductIn

SLUG = "demo"
PASSWORD = "shopdesk-demo"
LOGINS = [("admin@demo.shopdesk.cn", "admin", "王店长"), ("supervisor@demo.shopdesk.cn", "supervisor", "李主管"),
          ("agent@demo.shopdesk.cn", "agent", "小美")]
PLATFORM = ("platform@shopdesk.cn", "platform", "平台小二")
RETURN_ADDRESS = {"name": "星河数码售后部", "phone": "021-6888 1234", "province": "上海", "city": "上海",
                  "district": "青浦区", "detail": "华新镇华志路 1688 号 3 号仓 售后组"}

PRODUCTS = [
    ("EAR-PRO", "星河 Pro 降噪蓝牙耳机", "数码", 59900, "allowed"),
    ("EAR-PRO-W", "星河 Pro 降噪蓝牙耳机 白色", "数码", 62900, "allowed"),
    ("CASE-01", "耳机硅胶保护套", "配件", 3900, "allowed"),
    ("PB-20K", "20000mAh 快充移动电源", "数码", 14900, "allowed"),
    ("TEE-M", "纯棉圆领T恤 M 码", "服饰", 7900, "allowed"),
    ("TEE-L", "纯棉圆领T恤 L 码", "服饰", 7900, "allowed"),
    ("UW-01", "贴身内衣（拆封不退）", "服饰", 12900, "excluded_art7"),
    ("FLOWER", "鲜花礼盒 · 99 朵玫瑰", "鲜花", 39900, "excluded_art6"),
    ("LANYARD", "品牌挂绳（赠品）", "赠品", 0, "allowed"),
]

CUSTOMERS = [("c1001", "张伟", "13800138001", "zhangwei@example.com"),
             ("c1002", "王芳", "13900139002", "wangfang@example.com"),
             ("c1003", "李娜", "13700137003", "lina@example.com"),
             ("c1004", "刘洋", "13600136004", "liuyang@example.com")]


def _order(no: str, customer: tuple, lines: list[tuple], *, days_ago: int, shipped: bool, signed: bool,
           coupon: int = 0, shipping: int = 0, split_balance: int = 0) -> OrderIn:
    placed = now() - timedelta(days=days_ago)
    goods = sum(q * p for _, _, q, p, *_ in lines)
    paid = goods - coupon + shipping
    payments = [{"method": "wechatpay", "amount_fen": paid - split_balance, "trade_no": f"wx{no}"}]
    if split_balance:
        payments.append({"method": "balance", "amount_fen": split_balance, "trade_no": f"bal{no}"})
    body = {
        "store": "main", "order_no": no,
        "customer": {"external_id": customer[0], "name": customer[1], "phone": customer[2], "email": customer[3]},
        "placed_at": isoformat(placed), "paid_at": isoformat(placed + timedelta(minutes=2)),
        "lines": [{"line_no": str(i + 1), "sku": sku, "name": name, "quantity": q, "unit_price_fen": p,
                   "is_gift": p == 0, "declared_value_fen": 1500 if p == 0 else None,
                   "art7_confirmed": bool(rest and rest[0])}
                  for i, (sku, name, q, p, *rest) in enumerate(lines)],
        "discounts": [{"kind": "coupon", "label": f"满{goods // 100 - 1}减{coupon // 100}", "amount_fen": coupon}]
        if coupon else [],
        "shipping_fee_fen": shipping, "payments": payments,
        "shipping_address": {"name": customer[1], "phone": customer[2], "province": "浙江", "city": "杭州",
                             "district": "西湖区", "detail": "文三路 90 号"},
        "shipments": [{"carrier": "yuantong", "tracking_no": f"YT{no}", "line_nos": [str(i + 1) for i in range(len(lines))],
                       "shipped_at": isoformat(placed + timedelta(days=1)),
                       "signed_at": isoformat(placed + timedelta(days=3)) if signed else None}] if shipped else [],
    }
    return OrderIn.model_validate(body)


async def build_demo() -> list[str]:
    """Create the demo merchant once; print its logins either way."""
    async with transaction() as session:
        existing = (await session.execute(select(Merchant).where(Merchant.slug == SLUG))).scalar_one_or_none()
        if existing is None:
            key = await _build(session)
        else:
            key = "(exists; create another with: shopdesk api-keys create --merchant demo)"
    lines = ["ShopDesk demo is ready.", f"  merchant: {SLUG}   API key: {key}"]
    for email, role, name in LOGINS + [PLATFORM]:
        lines.append(f"  {role:<10} {email} / {PASSWORD}   ({name})")
    lines += ["  console:  http://127.0.0.1:8000/console/login",
              "  shopper:  http://127.0.0.1:8000/shop/lookup?store=main  (order DM1004, phone 13800138001)",
              f"  chat:     http://127.0.0.1:8000/demo/shop/{SLUG}/main  (a shop page with the widget;"
              " agents answer in /console/chat)"]
    return lines


async def _build(session) -> str:
    merchant = await do_create_merchant(session, name="星河数码旗舰店", slug=SLUG)
    merchant.settings = {"aftersales": {"return_address": RETURN_ADDRESS},
                         "payments": {"providers": {"wechatpay": "sandbox", "alipay": "sandbox", "balance": "manual"}}}
    key = await do_create_api_key(session, merchant)
    people = {}
    for email, role, name in LOGINS:
        people[role] = await do_create_staff(session, merchant=merchant, email=email, password=PASSWORD, role=role,
                                             name=name)
    if not (await session.execute(select(Staff).where(Staff.email == PLATFORM[0]))).first():
        await do_create_staff(session, merchant=None, email=PLATFORM[0], password=PASSWORD, role="platform",
                              name=PLATFORM[2])
    api = Principal("merchant_key", merchant.id)
    await do_create_store(session, api, code="main", name="星河数码官方商城", platform="own_site")
    await do_create_store(session, api, code="tmall", name="星河数码天猫旗舰店", platform="tmall")
    for sku, name, cat, price, nrr in PRODUCTS:
        await do_upsert_product(session, merchant.id, ProductIn(sku=sku, name=name, category=cat, price_fen=price,
                                                                no_reason_return=nrr))
    c1, c2, c3, c4 = CUSTOMERS
    ear = ("EAR-PRO", "星河 Pro 降噪蓝牙耳机", 1, 59900)
    specs = [
        ("DM1001", c1, [ear, ("CASE-01", "耳机硅胶保护套", 2, 3900)], 1, False, False, 3000, 0, 0),
        ("DM1002", c2, [("PB-20K", "20000mAh 快充移动电源", 1, 14900)], 2, True, False, 0, 1000, 0),
        ("DM1003", c3, [("TEE-M", "纯棉圆领T恤 M 码", 3, 7900)], 4, True, True, 2000, 0, 0),
        ("DM1004", c1, [ear, ("LANYARD", "品牌挂绳（赠品）", 1, 0)], 4, True, True, 5000, 0, 10000),
        ("DM1005", c4, [("UW-01", "贴身内衣（拆封不退）", 1, 12900, True), ("TEE-L", "纯棉圆领T恤 L 码", 1, 7900)],
         5, True, True, 0, 0, 0),
        ("DM1006", c2, [("FLOWER", "鲜花礼盒 · 99 朵玫瑰", 1, 39900)], 3, True, True, 0, 0, 0),
        ("DM1007", c3, [ear], 30, True, True, 0, 0, 0),
        ("DM1008", c4, [("PB-20K", "20000mAh 快充移动电源", 2, 14900)], 5, True, True, 0, 0, 0),
        ("DM1009", c1, [("CASE-01", "耳机硅胶保护套", 1, 3900)], 5, True, True, 0, 800, 0),
        ("DM1010", c2, [ear], 6, True, True, 0, 0, 0),
        ("DM1011", c3, [("TEE-M", "纯棉圆领T恤 M 码", 1, 7900)], 5, True, True, 0, 0, 0),
        ("DM1012", c4, [("PB-20K", "20000mAh 快充移动电源", 1, 14900)], 6, True, True, 0, 0, 0),
    ]
    orders = {}
    for no, cust, lines, days, shipped, signed, coupon, ship_fee, bal in specs:
        orders[no] = await do_upsert_order(session, merchant.id, _order(
            no, cust, lines, days_ago=days, shipped=shipped, signed=signed, coupon=coupon, shipping=ship_fee,
            split_balance=bal))

    def shopper(no: str) -> Principal:
        return Principal("shopper", merchant.id, customer_id=orders[no].customer_id)

    async def open_case(no: str, type_: str, reason: str, qty: int = 1, line: int = 0, note: str = "", **kw):
        order = orders[no]
        body = CaseIn(order_id=order.id, type=type_, reason=reason, description=note,
                      lines=[CaseLineIn(order_line_id=order.lines[line].id, quantity=qty)], **kw)
        return await cases.do_create_case(session, shopper(no), body)

    staff = Principal("staff", merchant.id, staff_id=people["agent"].id, role="agent", name="小美")
    # One case in each state worth showing.
    await open_case("DM1003", "return_refund", "no_reason_7d", 1, note="尺码偏小，想退一件")
    c = await open_case("DM1008", "return_refund", "wrong_choice", 1, note="买多了一个")
    await cases.do_approve(session, staff, c.id, ApproveIn())
    c = await open_case("DM1004", "return_refund", "no_reason_7d", 1, note="不太喜欢，赠品挂绳不退了")
    await cases.do_approve(session, staff, c.id, ApproveIn(deductions=[
        DeductionIn(type="gift_not_returned", amount_fen=1500, note="赠品未退回，按申报价值扣除")]))
    c = await open_case("DM1011", "return_refund", "no_reason_7d", 1, note="颜色和图片有色差")
    await cases.do_approve(session, staff, c.id, ApproveIn())
    await cases.do_ship_return(session, shopper("DM1011"), c.id, "zhongtong", "ZT7788990011")
    c = await open_case("DM1009", "exchange", "wrong_choice", 1, exchange_to=[{"sku": "CASE-01", "quantity": 1}],
                        note="想换个颜色")
    await cases.do_approve(session, staff, c.id, ApproveIn())
    c = await open_case("DM1012", "compensation", "price_drop", 1, amount_fen=2000, note="买贵了 20 元，申请价保")
    await cases.do_reject(session, staff, c.id, "价保需在下单后 3 天内申请")
    c = await open_case("DM1010", "return_refund", "no_reason_7d", 1, note="降噪效果不如预期")
    await cases.do_approve(session, staff, c.id, ApproveIn())
    await cases.do_ship_return(session, shopper("DM1010"), c.id, "shunfeng", "SF1234567890")
    await cases.do_receive(session, staff, c.id, "ok", "包装完好，不影响二次销售")
    await open_case("DM1001", "refund_only", "dont_want", 1, note="拍错了，还没发货")
    await _tickets(session, merchant, people, orders, shopper, staff)
    return key


async def _tickets(session, merchant, people, orders, shopper, staff) -> None:
    """Tickets in every state worth showing, with a working-hours SLA and a custom status."""
    from shopdesk.tickets import actions as tickets
    from shopdesk.tickets.schemas import CalendarIn, RuleIn, SlaPolicyIn, TicketIn, TicketPatch

    admin = Principal("staff", merchant.id, staff_id=people["admin"].id, role="admin", name="管理员")
    week = {d: [["09:00", "12:00"], ["13:30", "18:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}
    await tickets.do_put_calendar(session, admin, "workdays", CalendarIn(
        time_zone="Asia/Shanghai", hours=week, holidays=["2027-01-01", "2027-02-16", "2027-02-17"]))
    await tickets.do_put_policy(session, admin, "urgent", SlaPolicyIn(
        calendar="workdays", match={"priority": ["urgent", "high"]}, first_response_minutes=30,
        next_response_minutes=60, resolution_minutes=8 * 60))
    await tickets.do_put_policy(session, admin, "standard", SlaPolicyIn(
        calendar="workdays", first_response_minutes=4 * 60, next_response_minutes=8 * 60,
        resolution_minutes=3 * 9 * 60, position=1))
    await tickets.do_update_ticket_settings(
        session, admin, [{"name": "waiting_warehouse", "group": "pending", "label_zh": "等待仓库", "label_en": "Warehouse"}],
        ["物流", "质量", "发票", "售后", "咨询"], {"method": "round_robin"}, {"revisit_after_hours": 72},
        {"scale": 5, "questions": [{"key": "speed", "label": "处理速度"}, {"key": "attitude", "label": "服务态度"}]})
    await tickets.do_put_rule(session, admin, "物流自动分类", RuleIn(
        kind="create", conditions=[{"field": "subject", "op": "contains", "value": "快递"}],
        actions=[{"type": "set", "field": "category", "value": "物流"}, {"type": "add_tags", "tags": ["物流"]}]))
    await tickets.do_put_rule(session, admin, "待回复提醒", RuleIn(
        kind="time", conditions=[{"field": "status_group", "op": "is", "value": "pending"},
                                 {"field": "hours_in_status", "op": "gte", "value": 72}],
        actions=[{"type": "reply", "body": "您好，工单 {{number}} 还在等您的回复，问题解决了吗？"}]))
    await tickets.do_put_rule(session, admin, "请补充照片", RuleIn(
        kind="macro", actions=[{"type": "reply", "body": "麻烦您拍一张商品问题处的照片发给我们，谢谢！"},
                               {"type": "set", "field": "status", "value": "pending"}]))

    async def ticket(no: str, subject: str, text: str, **kw):
        body = TicketIn(subject=subject, description=text, channel="web", order_id=orders[no].id, **kw)
        return await tickets.do_create_ticket(session, shopper(no), body)

    await ticket("DM1002", "快递三天没有更新物流", "单号一直停在转运中心，麻烦帮忙催一下。")
    shrunk = await ticket("DM1003", "T恤洗后缩水严重", "只洗了一次就缩了一个码，质量有问题吧？", priority="high")
    await tickets.do_reply(session, staff, shrunk.id, "非常抱歉给您带来不便！麻烦提供一下洗标和衣服平铺的照片，我们马上处理。")
    t = await ticket("DM1006", "鲜花礼盒少了一支", "说好的 99 朵只有 98 朵。")
    await tickets.do_reply(session, staff, t.id, "已联系仓库核实出库记录，请稍候。")
    await tickets.do_update_ticket(session, staff, t.id, TicketPatch(status="waiting_warehouse"))
    await tickets.do_urge(session, shopper("DM1006"), t.id)
    t = await ticket("DM1007", "需要开具增值税专用发票", "公司报销需要专票，抬头和税号稍后发您。", category="发票")
    await tickets.do_reply(session, staff, t.id, "专票已开具，电子版已发送到您的邮箱。")
    await tickets.do_update_ticket(session, staff, t.id, TicketPatch(status="solved"))
    await tickets.do_rate(session, shopper("DM1007"), t.id, 5, "很快，谢谢！", {"speed": 5, "attitude": 5})
    a = await ticket("DM1012", "充电宝充不进电", "新买的充电宝插上没反应。")
    b = await ticket("DM1012", "充电宝坏了怎么办", "昨天问过了，还没人回。")
    await tickets.do_merge(session, staff, b.id, a.id)
    await tickets.do_create_ticket(session, Principal("merchant_key", merchant.id), TicketIn(
        subject="仓库：DM1003 同批次 T 恤抽检", description="请抽检同批次 20 件的缩水率。", channel="api",
        priority="high", team="仓库", parent_id=shrunk.id))
