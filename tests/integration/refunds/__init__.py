"""Refund tests (rulebook §7) and the helpers they share: a merchant refunding through the sandbox PSP,
and auto-approved refund_only cases on unshipped two-tender orders, built through the real actions."""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select

from shopdesk.accounts.actions import do_create_merchant, do_create_staff, do_create_store
from shopdesk.accounts.auth import Principal, staff_token
from shopdesk.accounts.models import Merchant
from shopdesk.aftersales.actions import do_create_case
from shopdesk.aftersales.schemas import CaseIn
from shopdesk.core.clock import now
from shopdesk.core.db import transaction
from shopdesk.orders.actions import do_upsert_order
from shopdesk.orders.schemas import OrderIn
from shopdesk.refunds.models import Refund


@dataclass(frozen=True)
class RefundCase:
    case_id: str
    order_id: str
    refund_fen: int
    refund_nos: tuple[str, ...]


async def make_merchant(providers: dict[str, str] | None = None) -> str:
    """A merchant with store "main" whose tenders refund through the given providers (default: sandbox)."""
    slug = f"r{secrets.token_hex(5)}"
    async with transaction() as session:
        merchant = await do_create_merchant(session, name=f"退款测试 {slug}", slug=slug)
        admin = Principal("merchant_key", merchant.id)
        await do_create_store(session, admin, code="main", name="旗舰店", platform="own_site")
        merchant.settings = {**(merchant.settings or {}), "payments": {
            "providers": providers if providers is not None else {"wechatpay": "sandbox", "balance": "sandbox"}}}
        return merchant.id


def order_in(n: int, *, price_fen: int, balance_fen: int) -> OrderIn:
    """An unshipped order of one line paid by WeChat Pay and store balance, each with its own trade number."""
    placed = now() - timedelta(hours=2)
    return OrderIn.model_validate({
        "store": "main", "order_no": f"R{n:05d}-{secrets.token_hex(3)}",
        "customer": {"external_id": f"c{n}-{secrets.token_hex(3)}", "name": "李四", "phone": "13900000000"},
        "placed_at": placed, "paid_at": placed + timedelta(minutes=1),
        "lines": [{"line_no": "1", "sku": "A", "name": "蓝牙耳机", "quantity": 1, "unit_price_fen": price_fen}],
        "payments": [
            {"method": "wechatpay", "amount_fen": price_fen - balance_fen, "trade_no": f"42{secrets.token_hex(10)}"},
            {"method": "balance", "amount_fen": balance_fen, "trade_no": f"bal{secrets.token_hex(10)}"}],
    })


async def make_refund_case(merchant_id: str, n: int = 1, *, price_fen: int = 10000,
                           balance_fen: int = 3000) -> RefundCase:
    """Import an unshipped order and open a refund_only case for all of it as its buyer.

    Rulebook §5 approves it at once, and §7.1 inserts one refund row per tender in that transaction.
    """
    async with transaction() as session:
        order = await do_upsert_order(session, merchant_id, order_in(n, price_fen=price_fen, balance_fen=balance_fen))
        buyer = Principal("shopper", merchant_id, customer_id=order.customer_id)
        case = await do_create_case(session, buyer, CaseIn.model_validate({
            "order_id": order.id, "type": "refund_only", "reason": "dont_want",
            "lines": [{"order_line_id": order.lines[0].id, "quantity": 1}]}))
        assert case.status == "refunding", case.status
        refunds = list((await session.execute(select(Refund).where(Refund.case_id == case.id)
                                              .order_by(Refund.method.desc()))).scalars())
        return RefundCase(case.id, order.id, case.refund_fen, tuple(r.refund_no for r in refunds))


async def make_staff(merchant_id: str, role: str) -> str:
    """A staff login of the merchant; returns its bearer token."""
    async with transaction() as session:
        merchant = await session.get(Merchant, merchant_id)
        staff = await do_create_staff(session, merchant=merchant, email=f"{role}-{secrets.token_hex(4)}@refunds.test",
                                      password="refund-pass-1", role=role, name=f"{role} 王五")
        return staff_token(staff)
