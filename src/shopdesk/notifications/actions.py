"""Notifications: a Chinese email to the shopper on every state change, signed webhooks, staff alarms."""
from __future__ import annotations

import fnmatch

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.models import Merchant, Staff
from shopdesk.accounts.queries import merchant_of
from shopdesk.core.clock import isoformat, now
from shopdesk.core.ids import new_id
from shopdesk.core.outbox import enqueue
from shopdesk.customers.models import Customer
from shopdesk.notifications.models import Webhook

_mail = Environment(loader=PackageLoader("shopdesk", "notifications/templates"),
                    autoescape=select_autoescape(["html"]))

STATUS_ZH = {
    "requested": "待审核", "offer_pending": "待买家确认", "awaiting_return": "待退货", "awaiting_receipt": "待退款",
    "repairing": "维修中", "awaiting_reship": "待换货", "awaiting_buyer_confirm": "换货中", "refunding": "退款中",
    "refund_exception": "退款异常", "rejected": "审核拒绝", "escalated": "平台介入", "completed": "已完成",
    "closed": "已关闭",
}


def case_mail(case, customer) -> dict | None:
    """The shopper's email about a case change, or None when they gave no address."""
    from shopdesk.config import get_settings

    if not (customer and customer.email):
        return None
    status_zh = STATUS_ZH.get(case.status, case.status)
    body = _mail.get_template("case_changed.txt").render(
        case=case, status_zh=status_zh, customer=customer, link=f"{get_settings().base_url}/shop/cases/{case.id}")
    return {"to": customer.email, "subject": f"【售后进度】{case.case_no} {status_zh}", "body": body}


def case_event_data(case) -> dict:
    """What a case webhook says about the case."""
    return {"case": {"id": case.id, "case_no": case.case_no, "type": case.type, "status": case.status,
                     "version": case.version, "order_id": case.order_id, "refund_fen": case.refund_fen,
                     "deadline_at": isoformat(case.deadline_at)}}


def wants(patterns: list[str] | None, event: str) -> bool | None:
    """Whether the merchant's webhook summary matches an event; None when there is no summary."""
    if patterns is None:
        return None
    return any(fnmatch.fnmatchcase(event, p) for p in patterns)


def webhook_payloads(hooks, event: str, data: dict) -> list[dict]:
    """One outbox payload per webhook subscribed to the event."""
    return [{"webhook_id": hook.id, "url": hook.url, "body": {
        "id": new_id(), "event": event, "created_at": isoformat(now()), "data": data}}
        for hook in hooks if any(fnmatch.fnmatchcase(event, pattern) for pattern in hook.events)]


async def notify_case_change(session: AsyncSession, case, action: str) -> None:
    """Queue the shopper's email and the merchant's webhooks for a case change (after commit)."""
    mail = case_mail(case, await session.get(Customer, case.customer_id))
    if mail:
        enqueue(session, "email", mail, case.merchant_id)
    await emit_webhook(session, case.merchant_id, f"aftersales.{action}", case_event_data(case))


async def do_create_webhook(session: AsyncSession, merchant_id: str, url: str, events: list[str],
                            secret: str) -> Webhook:
    """Subscribe a URL to events, and keep the merchant's summary of subscribed patterns current."""
    merchant = await session.get(Merchant, merchant_id, with_for_update=True, populate_existing=True)
    assert merchant is not None
    hook = Webhook(merchant_id=merchant_id, url=url, events=events, secret=secret)
    session.add(hook)
    await session.flush()
    patterns: set[str] = set()
    for row in (await session.execute(select(Webhook.events).where(Webhook.merchant_id == merchant_id))).scalars():
        patterns.update(row)
    merchant.settings = {**(merchant.settings or {}), "webhook_events": sorted(patterns)}
    return hook


async def emit_webhook(session: AsyncSession, merchant_id: str, event: str, data: dict) -> None:
    # The merchant row (usually already read by the action) summarises what its webhooks subscribe
    # to, so an event nobody wants costs no query. A merchant without the summary is looked up in full.
    if wants(((await merchant_of(session, merchant_id)).settings or {}).get("webhook_events"), event) is False:
        return
    hooks = (await session.execute(select(Webhook).where(Webhook.merchant_id == merchant_id))).scalars()
    for payload in webhook_payloads(hooks, event, data):
        enqueue(session, "webhook", payload, merchant_id)


async def notify_supervisors(session: AsyncSession, case, text: str) -> None:
    staff = (await session.execute(select(Staff).where(
        Staff.merchant_id == case.merchant_id, Staff.role.in_(("supervisor", "admin"))))).scalars()
    for person in staff:
        enqueue(session, "email", {"to": person.email, "subject": f"【退款告警】{case.case_no} {text}",
                                   "body": f"售后单 {case.case_no} {text}，请尽快处理。"}, case.merchant_id)
    await emit_webhook(session, case.merchant_id, "aftersales.refund_alarm",
                       {"case": {"id": case.id, "case_no": case.case_no, "alarm": text}})
