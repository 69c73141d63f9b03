"""After-sales actions: every change to a case goes through one do_* here, in one transaction.

Each action: lock the case (and its order when money moves) → check the move against the state
table → transition → timeline event → deadlines → refunds → outbox (mail, webhooks) → audit.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from shopdesk.accounts.auth import Principal
from shopdesk.accounts.models import Merchant
from shopdesk.accounts.queries import merchant_of
from shopdesk.aftersales import rules, states
from shopdesk.aftersales.models import AftersaleCase, AftersaleEvent, AftersaleLine, CaseShipment, Upload
from shopdesk.aftersales.policy import DEFAULT_TIMERS, aftersales_settings, policy_of, timer
from shopdesk.aftersales.schemas import ApproveIn, CaseIn, DeductionIn, QuoteIn, SettingsIn
from shopdesk.core import storage
from shopdesk.core.audit import record
from shopdesk.core.clock import now
from shopdesk.core.db import lock_first
from shopdesk.core.ids import new_id
from shopdesk.core.errors import Forbidden, NotFound, ValidationFailed, VersionConflict
from shopdesk.core.records import next_number
from shopdesk.notifications.actions import notify_case_change
from shopdesk.orders.actions import line_shipping, load_order
from shopdesk.orders.models import Order, Product
from shopdesk.refunds.actions import create_refunds


def case_options():
    return (joinedload(AftersaleCase.customer, innerjoin=True), selectinload(AftersaleCase.lines),
            selectinload(AftersaleCase.events), selectinload(AftersaleCase.shipments))


def one_case_options():
    """Load one case whole in a single statement (its few lines, events and parcels joined)."""
    return (joinedload(AftersaleCase.customer, innerjoin=True), joinedload(AftersaleCase.lines),
            joinedload(AftersaleCase.events), joinedload(AftersaleCase.shipments))


async def access_case(session: AsyncSession, principal: Principal, case_id: str, *, lock: bool = False) -> AftersaleCase:
    """Fetch a case the caller may see (optionally locked); anyone else gets 404."""
    stmt = select(AftersaleCase).where(AftersaleCase.id == case_id).options(*one_case_options())
    if lock:
        await lock_first(session, AftersaleCase, AftersaleCase.id == case_id)
        stmt = stmt.with_for_update(of=AftersaleCase).execution_options(populate_existing=True)
    case = (await session.execute(stmt)).unique().scalar_one_or_none()
    if case is None or not can_see(principal, case):
        raise NotFound("no such case")
    return case


def can_see(principal: Principal, case: AftersaleCase) -> bool:
    if principal.is_platform:
        return case.status == "escalated" or any(e.action == "escalate" for e in case.events)
    if principal.merchant_id != case.merchant_id:
        return False
    return principal.kind != "shopper" or principal.customer_id == case.customer_id


async def order_view(session: AsyncSession, order: Order, *, exclude_case: str | None = None) -> rules.OrderView:
    """Build the pure view of an order that the money rules work on."""
    # One read of every case line on the order (a resubmission leaves its own case out).
    stmt = select(AftersaleLine.order_line_id, AftersaleLine.is_open).where(
        AftersaleLine.order_line_id.in_([ln.id for ln in order.lines]))
    if exclude_case:
        stmt = stmt.where(AftersaleLine.case_id != exclude_case)
    rows = (await session.execute(stmt)).all()
    counts = Counter(line_id for line_id, _ in rows)
    open_lines = {line_id for line_id, is_open in rows if is_open}
    shipping = line_shipping(order)
    lines = []
    for ln in order.lines:
        shipped_at, signed_at = shipping[ln.id]
        lines.append(rules.LineView(
            id=ln.id, line_no=ln.line_no, sku=ln.sku, quantity=ln.quantity, unit_price_fen=ln.unit_price_fen,
            paid_fen=ln.paid_fen, refunded_fen=ln.refunded_fen, refunded_qty=ln.refunded_qty, is_gift=ln.is_gift,
            declared_value_fen=ln.declared_value_fen, art7_confirmed=ln.art7_confirmed,
            no_reason_return=ln.no_reason_return, shipped_at=shipped_at, signed_at=signed_at,
            has_open_case=ln.id in open_lines, case_count=counts[ln.id]))
    tenders = [rules.TenderView(p.id, p.method, p.amount_fen, p.refunded_fen) for p in order.payments]
    return rules.OrderView(lines, tenders, order.shipping_fee_fen, order.shipping_refunded_fen, order.discounts)


async def _exchange_price(session: AsyncSession, merchant_id: str, body: QuoteIn) -> int:
    if not body.exchange_to:
        return 0
    skus = [e.sku for e in body.exchange_to]
    products = {p.sku: p for p in (await session.execute(select(Product).where(
        Product.merchant_id == merchant_id, Product.sku.in_(skus)))).scalars()}
    total = 0
    for i, e in enumerate(body.exchange_to):
        if e.sku not in products:
            raise ValidationFailed(f"unknown sku '{e.sku}'", field=f"exchange_to[{i}].sku")
        total += products[e.sku].price_fen * e.quantity
    return total


def _deductions(items: list[DeductionIn]) -> list[rules.Deduction]:
    return [rules.Deduction(d.type, d.amount_fen, d.note) for d in items]


async def _quote(session: AsyncSession, principal: Principal, body: QuoteIn, *, photo_count: int | None = None,
                 exclude_case: str | None = None, lock: bool = False) -> tuple[rules.Quote, Order, Merchant]:
    merchant_id = principal.merchant_id
    if merchant_id is None:
        raise NotFound("no such order")
    order = await load_order(session, merchant_id, body.order_id, lock=lock)
    if principal.kind == "shopper" and order.customer_id != principal.customer_id:
        raise NotFound("no such order")
    merchant = await merchant_of(session, merchant_id)
    view = await order_view(session, order, exclude_case=exclude_case)
    req = rules.QuoteRequest(
        type=body.type, reason=body.reason, lines=[(ln.order_line_id, ln.quantity) for ln in body.lines],
        exchange_to_fen=await _exchange_price(session, merchant_id, body), amount_fen=body.amount_fen,
        deductions=_deductions(body.deductions), photo_count=photo_count)
    return rules.quote(view, req, now(), policy_of(merchant)), order, merchant


async def do_quote(session: AsyncSession, principal: Principal, body: QuoteIn,
                   exclude_case: str | None = None) -> rules.Quote:
    """Quote a request; exclude_case leaves a rejected case's own lines out (a resubmission)."""
    if body.deductions and not principal.is_merchant_side:
        raise ValidationFailed("only the merchant sets deductions", field="deductions")
    q, _, _ = await _quote(session, principal, body, exclude_case=exclude_case)
    return q


async def do_save_upload(session: AsyncSession, principal: Principal, data: bytes) -> Upload:
    """Store a photo after checking it by content (JPEG/PNG/WebP, size-limited)."""
    if principal.merchant_id is None:
        raise NotFound("not found")
    kind = storage.check_image(data)
    upload_id = new_id()
    ext = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}[kind]
    path = storage.save(principal.merchant_id, f"{upload_id}.{ext}", data)
    item = Upload(id=upload_id, merchant_id=principal.merchant_id,
                  owner_type="customer" if principal.kind == "shopper" else "staff",
                  owner_id=principal.customer_id or principal.staff_id or "api_key",
                  content_type=kind, size=len(data), path=path)
    session.add(item)
    return item


async def _check_photos(session: AsyncSession, principal: Principal, merchant_id: str, photo_ids: list[str]) -> None:
    for i, pid in enumerate(photo_ids):
        upload = await session.get(Upload, pid)
        if upload is None or upload.merchant_id != merchant_id or (
                principal.kind == "shopper" and upload.owner_id != principal.customer_id):
            raise ValidationFailed("unknown photo", field=f"photo_ids[{i}]")


def _ineligible(q: rules.Quote) -> ValidationFailed:
    first = q.problems[0]
    return ValidationFailed(first.detail, code=first.code if first.code != "validation_failed" else "not_eligible",
                            field=first.field,
                            extra={"problems": [{"code": p.code, "detail": p.detail, "field": p.field}
                                                for p in q.problems]})


async def do_create_case(session: AsyncSession, principal: Principal, body: CaseIn) -> AftersaleCase:
    """Open a case on order lines; refund_only before shipping is approved by the system at once."""
    if principal.is_platform:
        raise NotFound("no such order")
    if body.deductions:
        raise ValidationFailed("deductions are set at approval", field="deductions")
    merchant_id = principal.merchant_id or ""
    await _check_photos(session, principal, merchant_id, body.photo_ids)
    # The order lock serialises case creation per order: one open case per line holds under concurrency.
    q, order, merchant = await _quote(session, principal, body, photo_count=len(body.photo_ids), lock=True)
    if not q.eligible:
        raise _ineligible(q)
    settings = aftersales_settings(merchant)
    at = now()
    day = at.astimezone(ZoneInfo(merchant.time_zone)).strftime("%Y%m%d")
    number = await next_number(session, merchant_id, f"AS{day}")
    # Every column the action reads before the INSERT is set here, so the case is inserted once, whole.
    case = AftersaleCase(
        id=new_id(), version=1, alarm_level=0, postage_refund_fen=0, resubmit_count=0,
        merchant_id=merchant_id, case_no=f"AS{day}-{number:04d}", order_id=order.id, customer_id=order.customer_id,
        type=body.type, reason=body.reason, responsibility=q.responsibility, status="requested",
        description=body.description, photo_ids=list(body.photo_ids),
        exchange_to=[e.model_dump() for e in body.exchange_to], requested_amount_fen=body.amount_fen,
        goods_refund_fen=q.goods_refund_fen, shipping_refund_fen=q.shipping_refund_fen, refund_fen=q.refund_fen,
        buyer_pays_fen=q.buyer_pays_fen, deductions=[], flags=list(q.flags), created_at=at, updated_at=at,
        lines=[], events=[], shipments=[])
    session.add(case)
    for pos, ql in enumerate(q.lines):
        line = AftersaleLine(merchant_id=merchant_id, case_id=case.id, order_line_id=ql.order_line_id,
                             position=pos, quantity=ql.quantity, refund_fen=ql.refund_fen)
        session.add(line)
        case.lines.append(line)
    _event(session, case, principal.actor, principal.actor_id, "create", None, "requested", body.description)
    _arm(case, settings, at)
    if q.auto_approve:
        # Rulebook §5: refund_only before shipping needs no review, and holds the lines from shipping.
        await _approve(session, case, order, merchant, "system", None, deductions=[], return_address=None,
                       note="未发货仅退款，系统自动同意")
        held = {ql.order_line_id: ql.quantity for ql in q.lines}
        for ln in order.lines:
            ln.held_qty += held.get(ln.id, 0)
    await notify_case_change(session, case, "create")
    record(session, merchant_id=merchant_id, actor_type=principal.actor, actor_id=principal.actor_id,
           action="aftersales.create", object_type="aftersale_case", object_id=case.id,
           data={"refund_fen": case.refund_fen, "type": case.type})
    return case


def _event(session: AsyncSession, case: AftersaleCase, actor: str, actor_id: str | None, action: str,
           from_status: str | None, to_status: str | None, note: str = "", data: dict | None = None) -> None:
    event = AftersaleEvent(merchant_id=case.merchant_id, case_id=case.id, seq=len(case.events) + 1, at=now(),
                           actor=actor, actor_id=actor_id, action=action, from_status=from_status,
                           to_status=to_status, note=note or "", data=data or {})
    session.add(event)
    case.events.append(event)


def _arm(case: AftersaleCase, settings: dict, at: datetime) -> None:
    """Set the deadline of the state just entered (rulebook §6)."""
    deadline: datetime | None = None
    action: str | None = None
    status = case.status
    if status == "requested":
        deadline, action = at + timer(settings, "review_h"), "auto_approve"
    elif status == "offer_pending":
        deadline, action = at + timer(settings, "offer_h"), "offer_expired"
    elif status == "awaiting_return":
        deadline, action = at + timer(settings, "ship_return_h"), "return_timeout"
    elif status == "awaiting_receipt":
        parcel = _parcel(case, "return")
        if parcel and parcel.signed_at:
            deadline = parcel.signed_at + timer(settings, "receipt_after_signed_h")
        else:
            deadline = (parcel.shipped_at if parcel else at) + timer(settings, "receipt_without_tracking_h")
        action = "auto_receive"
    elif status == "rejected":
        deadline, action = at + timer(settings, "escalate_h"), "escalation_expired"
    elif status == "awaiting_buyer_confirm":
        parcel = _parcel(case, "reship")
        if parcel and parcel.signed_at:
            deadline = parcel.signed_at + timer(settings, "confirm_replacement_h")
        else:
            deadline = ((parcel.shipped_at if parcel else at) + timer(settings, "receipt_without_tracking_h")
                        + timer(settings, "confirm_replacement_h"))
        action = "auto_confirm"
    case.deadline_at, case.deadline_action = deadline, action
    if status == "refunding" and case.alarm_level == 0:
        case.alarm_at = at + timer(settings, "refund_target_h")
    elif status in states.FINAL:
        case.alarm_at = None


def _parcel(case: AftersaleCase, direction: str) -> CaseShipment | None:
    parcels = [s for s in case.shipments if s.direction == direction]
    return parcels[-1] if parcels else None


def transition(case, target: str, at: datetime) -> str:
    """Set the case's own columns for a move to target (the fast path shares it); return the status left."""
    before = case.status
    case.status = target
    case.version += 1
    case.updated_at = at
    if target in states.FINAL:
        case.closed_at = at
        for line in case.lines:
            line.is_open = False
    return before


async def _move(session: AsyncSession, case: AftersaleCase, action: str, actor: str, actor_id: str | None,
                note: str = "", data: dict | None = None, settings: dict | None = None) -> str:
    """Apply one transition of the state table with its event, deadline and notifications."""
    target = states.next_status(action, case.status, case.type)
    if settings is None:
        # Read before anything changes: a read after would flush the case, and the deadline set
        # below would cost a second UPDATE.
        settings = aftersales_settings(await merchant_of(session, case.merchant_id))
    at = now()
    before = transition(case, target, at)
    _event(session, case, actor, actor_id, action, before, target, note, data)
    _arm(case, settings, at)
    await notify_case_change(session, case, action)
    record(session, merchant_id=case.merchant_id, actor_type=actor, actor_id=actor_id, action=f"aftersales.{action}",
           object_type="aftersale_case", object_id=case.id, data={"from": before, "to": target, **(data or {})})
    return target


def _check_version(case: AftersaleCase, expected: int | None) -> None:
    if expected is not None and expected != case.version:
        raise VersionConflict(f"the case is at version {case.version}, not {expected}",
                              extra={"version": case.version})


def _merchant_actor(principal: Principal) -> None:
    if not principal.is_merchant_side:
        raise Forbidden("only the merchant may do this", code="wrong_actor")


def _buyer_actor(principal: Principal, case: AftersaleCase) -> None:
    if principal.kind != "shopper" or principal.customer_id != case.customer_id:
        raise Forbidden("only the buyer may do this", code="wrong_actor")


async def _approve(session: AsyncSession, case: AftersaleCase, order: Order | None, merchant: Merchant, actor: str,
                   actor_id: str | None, *, deductions: list[DeductionIn], return_address: dict | None,
                   note: str = "", action: str = "approve") -> None:
    """Approve (or accept an offer, or rule for the buyer): money cases create their refunds now."""
    settings = aftersales_settings(merchant)
    target = states.after_approval(case.type)
    if target == "awaiting_return":
        case.return_address = return_address or settings.get("return_address")
        if not case.return_address:
            raise ValidationFailed("set a return address (in settings or here)", field="return_address")
    case.approved_at = now()
    await _move(session, case, action, actor, actor_id, note,
                data={"deductions": case.deductions} if case.deductions else None, settings=settings)
    if case.status == "refunding":
        if order is None:
            order = await load_order(session, case.merchant_id, case.order_id, lock=True)
        await _start_refunds(session, case, order)


async def _start_refunds(session: AsyncSession, case: AftersaleCase, order: Order) -> None:
    """Commit the case's money: refund rows, line and tender totals, under the order lock."""
    shipping = case.shipping_refund_fen if order.shipping_refunded_fen == 0 else 0
    line_gross = {ln.order_line_id: (ln.quantity, ln.refund_fen) for ln in case.lines}
    gross = case.goods_refund_fen + shipping + case.postage_refund_fen
    amount = max(gross - sum(d["amount_fen"] for d in case.deductions), 0)
    case.refund_fen = amount
    if amount == 0:
        await _move(session, case, "refunds_settled", "system", None, "无需退款")
        return
    counts_qty = case.type != "compensation"
    for ln in order.lines:
        if ln.id in line_gross:
            qty, fen = line_gross[ln.id]
            ln.refunded_fen += fen
            if counts_qty:
                ln.refunded_qty += qty
            if ln.refunded_fen > ln.paid_fen or ln.refunded_qty > ln.quantity:
                raise ValidationFailed("refund exceeds what the line paid", code="amount_exceeds_refundable")
    order.shipping_refunded_fen += shipping
    await create_refunds(session, case, order, amount)


async def do_approve(session: AsyncSession, principal: Principal, case_id: str, body: ApproveIn) -> AftersaleCase:
    case = await access_case(session, principal, case_id, lock=True)
    _merchant_actor(principal)
    _check_version(case, body.expected_version)
    states.next_status("approve", case.status, case.type)
    merchant = await merchant_of(session, case.merchant_id)
    # The order is only needed to value gifts for a deduction, or when money moves now.
    order = None
    if body.deductions or states.after_approval(case.type) == "refunding":
        order = await load_order(session, case.merchant_id, case.order_id, lock=True)
    view = rules.OrderView(lines=[rules.LineView(
        id=ln.id, line_no=ln.line_no, sku=ln.sku, quantity=ln.quantity, unit_price_fen=ln.unit_price_fen,
        paid_fen=ln.paid_fen, is_gift=ln.is_gift, declared_value_fen=ln.declared_value_fen)
        for ln in (order.lines if order else [])], tenders=[])
    gross = case.goods_refund_fen + case.shipping_refund_fen
    problems, needs_consent = rules.check_deductions(_deductions(body.deductions), case.reason, view, gross,
                                                     policy_of(merchant))
    if problems:
        raise ValidationFailed(problems[0].detail, code=problems[0].code, field=problems[0].field)
    case.deductions = [d.model_dump() for d in body.deductions]
    address = body.return_address.model_dump() if body.return_address else None
    if needs_consent:
        # 协商: a deduction the buyer must agree to turns approval into an offer.
        if address:
            case.return_address = address
        case.refund_fen = max(gross - sum(d.amount_fen for d in body.deductions), 0)
        await _move(session, case, "propose_offer", principal.actor, principal.actor_id, body.note,
                    data={"deductions": case.deductions})
        return case
    case.refund_fen = max(gross - sum(d.amount_fen for d in body.deductions), 0)
    await _approve(session, case, order, merchant, principal.actor, principal.actor_id,
                   deductions=body.deductions, return_address=address, note=body.note)
    return case


async def do_accept_offer(session: AsyncSession, principal: Principal, case_id: str) -> AftersaleCase:
    case = await access_case(session, principal, case_id, lock=True)
    _buyer_actor(principal, case)
    states.next_status("accept_offer", case.status, case.type)
    order = await load_order(session, case.merchant_id, case.order_id, lock=True)
    merchant = await merchant_of(session, case.merchant_id)
    await _approve(session, case, order, merchant, "buyer", principal.customer_id, deductions=[],
                   return_address=case.return_address, action="accept_offer")
    return case


async def do_decline_offer(session: AsyncSession, principal: Principal, case_id: str) -> AftersaleCase:
    case = await access_case(session, principal, case_id, lock=True)
    _buyer_actor(principal, case)
    await _move(session, case, "decline_offer", "buyer", principal.customer_id)
    case.deductions = []
    case.refund_fen = case.goods_refund_fen + case.shipping_refund_fen
    return case


async def do_reject(session: AsyncSession, principal: Principal, case_id: str, reason: str,
                    expected_version: int | None = None) -> AftersaleCase:
    case = await access_case(session, principal, case_id, lock=True)
    _merchant_actor(principal)
    _check_version(case, expected_version)
    case.reject_reason = reason
    await _move(session, case, "reject", principal.actor, principal.actor_id, reason)
    return case


async def do_ship_return(session: AsyncSession, principal: Principal, case_id: str, carrier: str, tracking_no: str,
                         postage_fen: int | None = None) -> AftersaleCase:
    case = await access_case(session, principal, case_id, lock=True)
    _buyer_actor(principal, case)
    states.next_status("ship_return", case.status, case.type)
    merchant = await merchant_of(session, case.merchant_id)
    settings = aftersales_settings(merchant)
    if postage_fen:
        if case.responsibility != "merchant":
            raise ValidationFailed("return postage is the buyer's unless the merchant is at fault (办法 Art. 18)",
                                   field="postage_fen")
        if postage_fen > settings["max_return_postage_fen"]:
            raise ValidationFailed(f"at most {settings['max_return_postage_fen']} fen", field="postage_fen")
        case.postage_refund_fen = postage_fen
    parcel = CaseShipment(merchant_id=case.merchant_id, case_id=case.id, direction="return", carrier=carrier,
                          tracking_no=tracking_no, shipped_at=now())
    session.add(parcel)
    case.shipments.append(parcel)
    await _move(session, case, "ship_return", "buyer", principal.customer_id, f"{carrier} {tracking_no}",
                data={"carrier": carrier, "tracking_no": tracking_no}, settings=settings)
    return case


async def do_receive(session: AsyncSession, principal: Principal | None, case_id: str, outcome: str, note: str = "",
                     expected_version: int | None = None, *, case: AftersaleCase | None = None) -> AftersaleCase:
    """Record the returned goods' inspection; a timer passes principal=None (treated as received OK)."""
    if principal is not None:
        case = await access_case(session, principal, case_id, lock=True)
        _merchant_actor(principal)
    assert case is not None
    _check_version(case, expected_version)
    actor, actor_id = (principal.actor, principal.actor_id) if principal else ("system", None)
    if outcome == "failed":
        if not note:
            raise ValidationFailed("say what the inspection found", field="note")
        case.reject_reason = note
        await _move(session, case, "inspection_failed", actor, actor_id, note)
        return case
    states.next_status("receive", case.status, case.type)
    order = await load_order(session, case.merchant_id, case.order_id, lock=True)
    settings = aftersales_settings(await merchant_of(session, case.merchant_id))
    case.received_at = now()
    await _move(session, case, "receive", actor, actor_id, note or ("超时自动确认收货" if principal is None else ""),
                settings=settings)
    if case.status == "refunding":
        await _start_refunds(session, case, order)
    elif case.type == "exchange" and case.goods_refund_fen > 0:
        await create_refunds(session, case, order, case.goods_refund_fen)
    return case


async def do_repaired(session: AsyncSession, principal: Principal, case_id: str, note: str = "") -> AftersaleCase:
    case = await access_case(session, principal, case_id, lock=True)
    _merchant_actor(principal)
    await _move(session, case, "repaired", principal.actor, principal.actor_id, note)
    return case


async def do_reship(session: AsyncSession, principal: Principal, case_id: str, carrier: str,
                    tracking_no: str, expected_version: int | None = None) -> AftersaleCase:
    case = await access_case(session, principal, case_id, lock=True)
    _merchant_actor(principal)
    _check_version(case, expected_version)
    states.next_status("reship", case.status, case.type)
    parcel = CaseShipment(merchant_id=case.merchant_id, case_id=case.id, direction="reship", carrier=carrier,
                          tracking_no=tracking_no, shipped_at=now())
    session.add(parcel)
    case.shipments.append(parcel)
    await _move(session, case, "reship", principal.actor, principal.actor_id, f"{carrier} {tracking_no}",
                data={"carrier": carrier, "tracking_no": tracking_no})
    return case


async def do_confirm(session: AsyncSession, principal: Principal, case_id: str) -> AftersaleCase:
    case = await access_case(session, principal, case_id, lock=True)
    _buyer_actor(principal, case)
    await _move(session, case, "confirm", "buyer", principal.customer_id)
    return case


async def do_cancel(session: AsyncSession, principal: Principal, case_id: str, note: str = "") -> AftersaleCase:
    case = await access_case(session, principal, case_id, lock=True)
    _buyer_actor(principal, case)
    await _move(session, case, "cancel", "buyer", principal.customer_id, note or "买家撤销申请")
    return case


async def do_resubmit(session: AsyncSession, principal: Principal, case_id: str, body: CaseIn) -> AftersaleCase:
    case = await access_case(session, principal, case_id, lock=True)
    _buyer_actor(principal, case)
    states.next_status("resubmit", case.status, case.type)
    if body.order_id != case.order_id:
        raise ValidationFailed("a resubmission stays on the same order", field="order_id")
    await _check_photos(session, principal, case.merchant_id, body.photo_ids)
    q, order, _ = await _quote(session, principal, body, photo_count=len(body.photo_ids), exclude_case=case.id,
                               lock=True)
    if not q.eligible:
        raise _ineligible(q)
    for line in list(case.lines):
        await session.delete(line)
    case.lines.clear()
    await session.flush()
    for pos, ql in enumerate(q.lines):
        line = AftersaleLine(merchant_id=case.merchant_id, case_id=case.id, order_line_id=ql.order_line_id,
                             position=pos, quantity=ql.quantity, refund_fen=ql.refund_fen)
        session.add(line)
        case.lines.append(line)
    case.type, case.reason, case.responsibility = body.type, body.reason, q.responsibility
    case.description, case.photo_ids = body.description, list(body.photo_ids)
    case.exchange_to = [e.model_dump() for e in body.exchange_to]
    case.requested_amount_fen = body.amount_fen
    case.goods_refund_fen, case.shipping_refund_fen = q.goods_refund_fen, q.shipping_refund_fen
    case.refund_fen, case.buyer_pays_fen, case.deductions = q.refund_fen, q.buyer_pays_fen, []
    case.reject_reason = None
    case.resubmit_count += 1
    await _move(session, case, "resubmit", "buyer", principal.customer_id, body.description)
    return case


async def do_escalate(session: AsyncSession, principal: Principal, case_id: str, note: str = "") -> AftersaleCase:
    case = await access_case(session, principal, case_id, lock=True)
    _buyer_actor(principal, case)
    await _move(session, case, "escalate", "buyer", principal.customer_id, note)
    return case


async def do_rule(session: AsyncSession, principal: Principal, case_id: str, ruling: str, note: str = "") -> AftersaleCase:
    """The platform operator rules on an escalated case."""
    case = await access_case(session, principal, case_id, lock=True)
    if not principal.is_platform:
        raise Forbidden("only the platform rules on escalations", code="wrong_actor")
    if ruling == "merchant":
        await _move(session, case, "rule_for_merchant", "platform", principal.staff_id, note)
        return case
    states.next_status("rule_for_buyer", case.status, case.type)
    order = await load_order(session, case.merchant_id, case.order_id, lock=True)
    merchant = await merchant_of(session, case.merchant_id)
    case.deductions = []
    await _approve(session, case, order, merchant, "platform", principal.staff_id, deductions=[],
                   return_address=None, note=note, action="rule_for_buyer")
    return case


async def do_retry_refunds(session: AsyncSession, principal: Principal, case_id: str, note: str = "") -> AftersaleCase:
    """After a definite failure: new refund numbers that supersede the failed ones (rulebook 7.5)."""
    from shopdesk.refunds.actions import supersede_failed

    case = await access_case(session, principal, case_id, lock=True)
    _merchant_actor(principal)
    states.next_status("refund_retry", case.status, case.type)
    minted = await supersede_failed(session, case)
    await _move(session, case, "refund_retry", principal.actor, principal.actor_id, note,
                data={"refund_nos": minted})
    return case


async def on_refunds_changed(session: AsyncSession, case_id: str) -> None:
    """Move the case when its refunds settle: all succeeded → completed; failed or abnormal → exception."""
    from shopdesk.refunds.models import Refund

    # Lock the case first (settlements of one case queue here), then load it whole.
    await lock_first(session, AftersaleCase, AftersaleCase.id == case_id)
    case = (await session.execute(select(AftersaleCase).where(AftersaleCase.id == case_id)
                                  .options(*one_case_options()).with_for_update(of=AftersaleCase)
                                  .execution_options(populate_existing=True))).unique().scalar_one()
    refunds = list((await session.execute(select(Refund).where(Refund.case_id == case_id))).scalars())
    superseded = {r.supersedes for r in refunds if r.supersedes}
    live = [r for r in refunds if r.refund_no not in superseded]
    settled = live and all(r.status == "succeeded" for r in live)
    troubled = any(r.status in ("failed", "abnormal") for r in live)
    status = case.status
    if not (status == "refunding" and (settled or troubled) or status == "refund_exception" and live and not troubled):
        return  # nothing moves (the other refunds are still open, or the case is elsewhere)
    if case.status == "refund_exception":
        # Fixed without a retry (an abnormal refund settled by hand or by the provider): back to refunding (§5).
        await _move(session, case, "refund_retry", "system", None, "异常退款已处理")
    if settled:
        await _move(session, case, "refunds_settled", "system", None, "退款成功")
    elif troubled:
        bad = [r.refund_no for r in live if r.status in ("failed", "abnormal")]
        await _move(session, case, "refund_exception", "system", None, "退款异常", data={"refund_nos": bad})


# Timers (rulebook §6): the sweeper calls these as actor "system".
async def fire_deadline(session: AsyncSession, case: AftersaleCase) -> bool:
    """Run the action of a due deadline; return whether anything changed."""
    action = case.deadline_action
    merchant = await merchant_of(session, case.merchant_id)
    if action == "auto_approve":
        if case.status != "requested":
            return False
        order = await load_order(session, case.merchant_id, case.order_id, lock=True)
        settings = aftersales_settings(merchant)
        if states.after_approval(case.type) == "awaiting_return" and not settings.get("return_address"):
            # Cannot tell the buyer where to send it: alarm instead of approving blind.
            case.deadline_at = None
            _event(session, case, "system", None, "auto_approve_blocked", case.status, case.status,
                   "未设置退货地址，无法自动同意")
            return True
        case.deductions = []
        await _approve(session, case, order, merchant, "system", None, deductions=[], return_address=None,
                       note="商家超时未处理，系统自动同意", action="auto_approve")
        return True
    if action == "offer_expired":
        await _move(session, case, "offer_expired", "system", None, "买家超时未确认")
        case.deductions = []
        case.refund_fen = case.goods_refund_fen + case.shipping_refund_fen
        return True
    if action == "return_timeout":
        await _move(session, case, "return_timeout", "system", None, "买家超时未退货，申请关闭")
        return True
    if action == "auto_receive":
        await do_receive(session, None, case.id, "ok", case=case)
        return True
    if action == "escalation_expired":
        await _move(session, case, "escalation_expired", "system", None, "超时未申请平台介入，申请关闭")
        return True
    if action == "auto_confirm":
        await _move(session, case, "confirm", "system", None, "买家超时未确认，系统自动完成")
        return True
    case.deadline_at = None
    return False


async def fire_alarm(session: AsyncSession, case: AftersaleCase) -> bool:
    """Raise the next refund alarm (24 h target, 7 days, 15 days by law) to supervisors."""
    from shopdesk.notifications.actions import notify_supervisors

    if case.status not in ("refunding", "refund_exception"):
        case.alarm_at = None
        return False
    settings = aftersales_settings(await merchant_of(session, case.merchant_id))
    start = case.received_at or case.approved_at or case.created_at
    level = case.alarm_level + 1
    labels = {1: "退款超过24小时目标", 2: "退款超过7天", 3: "退款超过15天（办法第31条）"}
    _event(session, case, "system", None, "refund_alarm", case.status, case.status, labels.get(level, ""),
           data={"level": level})
    case.alarm_level = level
    nxt = {1: "refund_alarm_h", 2: "refund_hard_alarm_h"}.get(level)
    case.alarm_at = start + timer(settings, nxt) if nxt else None
    await notify_supervisors(session, case, labels.get(level, ""))
    return True


def case_out(case: AftersaleCase, refunds: list[Any] | None = None, *, shopper: bool = False) -> dict:
    from shopdesk.core.clock import isoformat

    return {
        "id": case.id, "case_no": case.case_no, "type": case.type, "reason": case.reason,
        "responsibility": case.responsibility, "status": case.status, "status_group": states.group_of(case.status),
        "version": case.version, "order_id": case.order_id, "customer_id": case.customer_id,
        "description": case.description, "photo_ids": case.photo_ids, "exchange_to": case.exchange_to,
        "amount_fen": case.requested_amount_fen,
        "lines": [{"order_line_id": ln.order_line_id, "quantity": ln.quantity, "refund_fen": ln.refund_fen}
                  for ln in case.lines],
        "goods_refund_fen": case.goods_refund_fen, "shipping_refund_fen": case.shipping_refund_fen,
        "postage_refund_fen": case.postage_refund_fen, "refund_fen": case.refund_fen,
        "buyer_pays_fen": case.buyer_pays_fen, "deductions": case.deductions,
        "deadline_at": isoformat(case.deadline_at), "deadline_action": case.deadline_action,
        "return_address": case.return_address if case.approved_at else None,
        "reject_reason": case.reject_reason, "flags": case.flags,
        "allowed_actions": states.allowed_actions(case.status),
        "shipments": [{"direction": s.direction, "carrier": s.carrier, "tracking_no": s.tracking_no,
                       "shipped_at": isoformat(s.shipped_at), "signed_at": isoformat(s.signed_at)}
                      for s in case.shipments],
        "refunds": [{"refund_no": r.refund_no, "method": r.method, "amount_fen": r.amount_fen, "status": r.status,
                     "supersedes": r.supersedes} for r in (refunds or [])],
        "events": [{"at": isoformat(e.at), "actor": e.actor, "action": e.action, "from_status": e.from_status,
                    "to_status": e.to_status, "note": e.note} for e in case.events],
        "created_at": isoformat(case.created_at), "updated_at": isoformat(case.updated_at),
    }


async def on_parcel_signed(session: AsyncSession, parcel: CaseShipment, signed_at: datetime, state: str) -> None:
    """A return or replacement was signed for: restart the step's timer from the signing (rulebook §6)."""
    case = (await session.execute(select(AftersaleCase).where(AftersaleCase.id == parcel.case_id)
                                  .options(*case_options()).with_for_update(of=AftersaleCase).execution_options(populate_existing=True))).scalar_one()
    # Changed only now, under the case lock: reloading the case refreshes its parcels from the database.
    parcel.signed_at, parcel.tracking_state = signed_at, state
    if (case.status, parcel.direction) in (("awaiting_receipt", "return"), ("awaiting_buyer_confirm", "reship")):
        settings = aftersales_settings(await merchant_of(session, case.merchant_id))
        _arm(case, settings, now())
        _event(session, case, "system", None, "parcel_signed", case.status, case.status,
               f"{parcel.carrier} {parcel.tracking_no} 已签收", data={"direction": parcel.direction})


def do_update_settings(session: AsyncSession, principal: Principal, merchant: Merchant, body: SettingsIn) -> dict:
    """Change a merchant's after-sales settings (checked, audited)."""
    changes = body.model_dump(exclude_none=True)
    for name, hours in (changes.get("timers") or {}).items():
        if name not in DEFAULT_TIMERS:
            raise ValidationFailed(f"unknown timer '{name}'", field=f"timers.{name}")
        if hours < 1 or hours > 24 * 90:
            raise ValidationFailed("between 1 hour and 90 days", field=f"timers.{name}")
    for code, reason in (changes.get("reasons") or {}).items():
        if reason.get("responsibility") not in ("buyer", "merchant", "undetermined") or not reason.get("label"):
            raise ValidationFailed("each reason needs a label and a responsibility of buyer, merchant or undetermined",
                                   field=f"reasons.{code}")
    settings = dict(merchant.settings or {})
    current = dict(settings.get("aftersales", {}))
    if "timers" in changes:
        current["timers"] = {**current.get("timers", {}), **changes.pop("timers")}
    current.update(changes)
    settings["aftersales"] = current
    merchant.settings = settings
    record(session, merchant_id=merchant.id, actor_type=principal.actor, actor_id=principal.actor_id,
           action="settings.aftersales", object_type="merchant", object_id=merchant.id, data=changes)
    return aftersales_settings(merchant)
