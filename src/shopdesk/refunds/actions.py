"""Refunds, never twice and never lost (rulebook §7).

The refund row is written in the transaction that approves the money step; its refund_no is the
provider's idempotency key for every retry. Results and notifications only move a refund forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from shopdesk.accounts.auth import Principal
from shopdesk.accounts.models import Merchant
from shopdesk.accounts.queries import merchant_of
from shopdesk.aftersales.rules import TenderView, split_over_tenders
from shopdesk.core.audit import record
from shopdesk.core.clock import now
from shopdesk.core.errors import Conflict, NotFound, ValidationFailed
from shopdesk.core.ids import new_id
from shopdesk.orders.models import Order, Payment
from shopdesk.refunds.models import OPEN_STATUSES, STATUS_RANK, Refund, RefundNotification

FINAL_STATUSES = ("succeeded", "failed", "abnormal")


def new_refund_no() -> str:
    return f"RF{new_id()[2:]}"


async def do_set_payment_providers(session: AsyncSession, principal: Principal, providers: dict[str, str]) -> Merchant:
    """Choose which provider refunds each payment method (admins only, audited)."""
    from shopdesk.integrations.payments import PROVIDER_NAMES

    merchant_id = principal.require_merchant_side()
    principal.require_role("admin")
    for method, name in providers.items():
        if name not in PROVIDER_NAMES:
            raise ValidationFailed(f"provider must be one of {', '.join(PROVIDER_NAMES)}", field=f"providers.{method}")
    merchant = await session.get(Merchant, merchant_id, with_for_update=True, populate_existing=True)
    assert merchant is not None
    merchant.settings = {**(merchant.settings or {}), "payments": {"providers": dict(providers)}}
    record(session, merchant_id=merchant.id, actor_type=principal.actor, actor_id=principal.actor_id,
           action="settings.payments", object_type="merchant", object_id=merchant.id, data=dict(providers))
    return merchant


def payment_providers(merchant: Merchant) -> dict[str, str]:
    return dict((merchant.settings or {}).get("payments", {}).get("providers", {}))


async def create_refunds(session: AsyncSession, case, order: Order, amount: int) -> list[Refund]:
    """Split a refund over the order's tenders and insert one row each, checking the caps (4.6)."""
    providers = payment_providers(await merchant_of(session, order.merchant_id))
    tenders = [TenderView(p.id, p.method, p.amount_fen, p.refunded_fen) for p in order.payments]
    if amount > sum(t.amount_fen - t.refunded_fen for t in tenders):
        raise ValidationFailed("refund exceeds what is left to refund on the order's payments",
                               code="amount_exceeds_refundable")
    by_id = {p.id: p for p in order.payments}
    created = []
    for part in split_over_tenders(amount, tenders):
        payment = by_id[part.payment_id]
        payment.refunded_fen += part.amount_fen
        refund = Refund(merchant_id=order.merchant_id, refund_no=new_refund_no(), case_id=case.id, order_id=order.id,
                        payment_id=payment.id, method=payment.method, provider=providers.get(payment.method, "manual"),
                        trade_no=payment.trade_no, amount_fen=part.amount_fen, status="created",
                        next_attempt_at=now())
        session.add(refund)
        created.append(refund)
        record(session, merchant_id=order.merchant_id, actor_type="system", actor_id=None, action="refund.create",
               object_type="refund", object_id=refund.refund_no,
               data={"case_id": case.id, "amount_fen": part.amount_fen, "method": payment.method})
    await session.flush()
    return created


async def supersede_failed(session: AsyncSession, case) -> list[str]:
    """Mint new refund numbers for definitively failed refunds, each recording what it supersedes."""
    refunds = list((await session.execute(select(Refund).where(Refund.case_id == case.id))).scalars())
    superseded = {r.supersedes for r in refunds if r.supersedes}
    minted = []
    for old in refunds:
        if old.status != "failed" or old.refund_no in superseded:
            continue
        payment = await session.get(Payment, old.payment_id, with_for_update=True, populate_existing=True)
        assert payment is not None
        if payment.refunded_fen + old.amount_fen > payment.amount_fen:
            raise ValidationFailed("refund exceeds what the tender paid", code="amount_exceeds_refundable")
        payment.refunded_fen += old.amount_fen
        new = Refund(merchant_id=old.merchant_id, refund_no=new_refund_no(), case_id=old.case_id,
                     order_id=old.order_id, payment_id=old.payment_id, method=old.method, provider=old.provider,
                     trade_no=old.trade_no, amount_fen=old.amount_fen, status="created", supersedes=old.refund_no,
                     next_attempt_at=now())
        session.add(new)
        minted.append(new.refund_no)
    if not minted:
        raise Conflict("no definitively failed refund to retry (abnormal refunds are settled by hand)",
                       code="nothing_to_retry")
    return minted


def backoff(attempts: int, base_s: float) -> timedelta:
    return timedelta(seconds=min(base_s * (2 ** min(attempts, 10)), 600))


async def apply_result(session: AsyncSession, refund_no: str, status: str, *, provider_ref: str | None = None,
                       detail: str = "", retry_base_s: float = 2.0, poll: bool = True,
                       locked: Refund | None = None) -> Refund | None:
    """Apply a provider answer to a refund, only ever moving it forward; settle the case when done.

    locked: the refund, already read FOR UPDATE in this transaction by the caller.
    """
    from shopdesk.aftersales.actions import on_refunds_changed

    refund = locked or await find_refund(session, refund_no, lock=True)
    if refund is None:
        return None
    if status in ("unknown", "not_found"):
        if refund.status in FINAL_STATUSES:
            # Settled meanwhile (a notification beat a timed-out answer): keep its outcome and detail.
            return refund
        if refund.status == "created":
            refund.status = "unknown"
        refund.last_error = detail or status
        refund.next_attempt_at = now() + backoff(refund.attempts, retry_base_s)
        return refund
    if STATUS_RANK[status] <= STATUS_RANK[refund.status]:
        if refund.status in ("unknown", "processing"):
            refund.next_attempt_at = now() + backoff(refund.attempts, retry_base_s)
        return refund  # stale or repeated news: never move backwards
    before = refund.status
    refund.status = status
    refund.provider_ref = provider_ref or refund.provider_ref
    refund.last_error = detail or None
    if status in FINAL_STATUSES:
        refund.next_attempt_at = None
        refund.settled_at = now()
    else:
        # A provider that is not polled (manual) waits for a person or a notification.
        refund.next_attempt_at = now() + backoff(refund.attempts, retry_base_s) if poll else None
    if status == "failed":
        # Only refunds not finally failed count against the tender's cap (4.6).
        payment = await session.get(Payment, refund.payment_id, with_for_update=True, populate_existing=True)
        assert payment is not None
        payment.refunded_fen -= refund.amount_fen
    record(session, merchant_id=refund.merchant_id, actor_type="system", actor_id=refund.provider,
           action=f"refund.{status}", object_type="refund", object_id=refund.refund_no,
           data={"from": before, "amount_fen": refund.amount_fen, "detail": detail})
    if status in FINAL_STATUSES:
        await on_refunds_changed(session, refund.case_id)
    return refund


async def record_notification(session: AsyncSession, provider: str, notify_id: str, refund_no: str,
                              status: str) -> bool:
    """Store a notification id; return False if it was seen before (apply it at most once)."""
    seen = (await session.execute(select(RefundNotification.id).where(
        RefundNotification.provider == provider, RefundNotification.notify_id == notify_id))).first()
    if seen:
        return False
    session.add(RefundNotification(provider=provider, notify_id=notify_id, refund_no=refund_no, status=status))
    await session.flush()
    return True


@dataclass(frozen=True)
class Claim:
    refund_no: str
    status: str
    provider: str
    trade_no: str | None
    method: str
    amount_fen: int
    payment_total_fen: int


async def claim_due(session: AsyncSession, *, limit: int, lease_s: float) -> list[Claim]:
    """Lease due refunds to this worker (SKIP LOCKED, so several workers never share one)."""
    other = aliased(Refund)
    at = now()
    # Another refund on the payment is in flight: at the provider, or leased to a worker right now.
    busy_payment = exists().where(and_(
        other.payment_id == Refund.payment_id, other.id != Refund.id,
        other.status.in_(("unknown", "processing")) | ((other.status == "created") & (other.next_attempt_at > at))))
    stmt = (select(Refund, Payment.amount_fen).join(Payment, Payment.id == Refund.payment_id)
            .where(Refund.status.in_(OPEN_STATUSES), Refund.next_attempt_at <= now())
            # Refunds on one payment are serialised (7.7): a new one waits while another is in flight.
            .where((Refund.status != "created") | ~busy_payment)
            .order_by(Refund.next_attempt_at).limit(limit)
            .with_for_update(skip_locked=True, of=Refund).execution_options(populate_existing=True))
    claims = []
    payments: set[str] = set()
    for refund, total in (await session.execute(stmt)).all():
        if refund.status == "created" and refund.payment_id in payments:
            continue  # one new refund per payment per batch (7.7)
        payments.add(refund.payment_id)
        refund.attempts += 1
        refund.next_attempt_at = now() + timedelta(seconds=lease_s)
        claims.append(Claim(refund.refund_no, refund.status, refund.provider, refund.trade_no, refund.method,
                            refund.amount_fen, total))
    return claims


async def find_refund(session: AsyncSession, refund_no: str, *, lock: bool = False) -> Refund | None:
    stmt = select(Refund).where(Refund.refund_no == refund_no)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return (await session.execute(stmt)).scalar_one_or_none()


async def access_refund(session: AsyncSession, principal: Principal, refund_no: str, *, lock: bool = False) -> Refund:
    refund = await find_refund(session, refund_no, lock=lock)
    if refund is None or refund.merchant_id != principal.merchant_id or principal.kind == "shopper":
        raise NotFound("no such refund")
    return refund


async def do_confirm_manual(session: AsyncSession, principal: Principal, refund_no: str, reference: str) -> Refund:
    """An agent records a refund made outside the system (manual provider only)."""
    refund = await access_refund(session, principal, refund_no, lock=True)
    if principal.kind != "staff":
        raise NotFound("no such refund")
    if refund.provider != "manual":
        raise Conflict("only manual refunds are confirmed by hand", code="not_manual")
    if refund.status == "succeeded":
        return refund
    if refund.status not in OPEN_STATUSES:
        raise Conflict(f"the refund is {refund.status}", code="illegal_transition")
    await apply_result(session, refund_no, "succeeded", provider_ref=reference, detail=f"confirmed by {principal.name}",
                       locked=refund)
    return refund


async def do_resolve(session: AsyncSession, principal: Principal, refund_no: str, status: str, note: str) -> Refund:
    """Settle a refund by hand after checking with the provider: abnormal ones, or manual ones that failed."""
    refund = await access_refund(session, principal, refund_no, lock=True)
    principal.require_role("supervisor", "admin")
    if status not in ("succeeded", "failed"):
        raise ValidationFailed("status must be succeeded or failed", field="status")
    if refund.status not in ("abnormal",) and not (refund.provider == "manual" and refund.status in OPEN_STATUSES):
        raise Conflict(f"a {refund.status} {refund.provider} refund is settled by the provider",
                       code="illegal_transition")
    await apply_result(session, refund_no, status, detail=note or f"resolved by {principal.name}", locked=refund)
    return refund


def refund_out(r: Refund) -> dict:
    from shopdesk.core.clock import isoformat

    return {"refund_no": r.refund_no, "case_id": r.case_id, "order_id": r.order_id, "method": r.method,
            "provider": r.provider, "amount_fen": r.amount_fen, "status": r.status, "supersedes": r.supersedes,
            "attempts": r.attempts, "last_error": r.last_error, "provider_ref": r.provider_ref,
            "created_at": isoformat(r.created_at), "settled_at": isoformat(r.settled_at)}
