"""Reads of after-sales cases for the API and the pages."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.auth import Principal
from shopdesk.aftersales.actions import case_options
from shopdesk.aftersales.models import AftersaleCase
from shopdesk.aftersales.states import GROUPS, STATUSES, TYPES
from shopdesk.core.errors import ValidationFailed
from shopdesk.orders.models import Order
from shopdesk.refunds.models import Refund


def filtered(principal: Principal, *, type: str | None = None, status: str | None = None, group: str | None = None,
             created_from: datetime | None = None, created_to: datetime | None = None, q: str | None = None):
    """The select of cases a caller may see, with the list filters applied."""
    stmt = select(AftersaleCase)
    if principal.is_platform:
        stmt = stmt.where(AftersaleCase.status == "escalated")
    else:
        stmt = stmt.where(AftersaleCase.merchant_id == principal.merchant_id)
        if principal.kind == "shopper":
            stmt = stmt.where(AftersaleCase.customer_id == principal.customer_id)
    if type:
        if type not in TYPES:
            raise ValidationFailed(f"type must be one of {', '.join(TYPES)}", field="type")
        stmt = stmt.where(AftersaleCase.type == type)
    if status:
        if status not in STATUSES:
            raise ValidationFailed("unknown status", field="status")
        stmt = stmt.where(AftersaleCase.status == status)
    if group:
        if group not in GROUPS:
            raise ValidationFailed(f"group must be one of {', '.join(GROUPS)}", field="group")
        stmt = stmt.where(AftersaleCase.status.in_(GROUPS[group]))
    if created_from:
        stmt = stmt.where(AftersaleCase.created_at >= created_from)
    if created_to:
        stmt = stmt.where(AftersaleCase.created_at < created_to)
    if q:
        q = q.strip()
        stmt = stmt.where(or_(AftersaleCase.case_no == q, AftersaleCase.order_id.in_(
            select(Order.id).where(Order.order_no == q, Order.merchant_id == AftersaleCase.merchant_id))))
    return stmt


async def refunds_by_case(session: AsyncSession, case_ids: list[str]) -> dict[str, list[Refund]]:
    out: dict[str, list[Refund]] = {cid: [] for cid in case_ids}
    if case_ids:
        for r in (await session.execute(select(Refund).where(Refund.case_id.in_(case_ids))
                                        .order_by(Refund.created_at))).scalars():
            out[r.case_id].append(r)
    return out


async def list_cases(session: AsyncSession, principal: Principal, *, limit: int, after_id: str | None = None,
                     by_deadline: bool = False, **filters) -> tuple[list[AftersaleCase], bool]:
    stmt = filtered(principal, **filters).options(*case_options())
    if by_deadline:
        # The review queue: nearest deadline first, cases without one last.
        stmt = stmt.order_by(AftersaleCase.deadline_at.is_(None), AftersaleCase.deadline_at, AftersaleCase.id)
        rows = list((await session.execute(stmt.limit(limit + 1))).scalars())
    else:
        if after_id:
            stmt = stmt.where(AftersaleCase.id < after_id)
        rows = list((await session.execute(stmt.order_by(AftersaleCase.id.desc()).limit(limit + 1))).scalars())
    return rows[:limit], len(rows) > limit


# Statuses in which the merchant must act before the deadline (otherwise the timer acts for them).
MERCHANT_TURN = ("requested", "awaiting_receipt", "refund_exception", "awaiting_reship", "repairing")


def due_soon(merchant_id: str, before: datetime):
    """Cases waiting on the merchant whose deadline falls before `before` (the unified inbox's after-sales part)."""
    return select(AftersaleCase).where(AftersaleCase.merchant_id == merchant_id,
                                       AftersaleCase.status.in_(MERCHANT_TURN),
                                       AftersaleCase.deadline_at.is_not(None), AftersaleCase.deadline_at < before)
