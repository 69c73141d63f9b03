"""After-sales pages: the shopper's apply and track pages, and the merchant console (HTML + htmx fragments).

Every change goes through the same do_* actions as the API, with the page session's principal.
"""
from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote_plus

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import func, select
from starlette.datastructures import FormData, UploadFile

from shopdesk.accounts.auth import Principal
from shopdesk.accounts.models import Merchant
from shopdesk.aftersales import actions, states
from shopdesk.aftersales.models import AftersaleCase, Upload
from shopdesk.aftersales.policy import DEFAULT_TIMERS, aftersales_settings
from shopdesk.aftersales.queries import filtered, list_cases, refunds_by_case
from shopdesk.aftersales.rules import DEDUCTION_TYPES, PHOTO_TYPES
from shopdesk.aftersales.schemas import ApproveIn, CaseIn, NoteIn, ReceiveIn, SettingsIn, WaybillIn
from shopdesk.core import storage
from shopdesk.core.clock import UTC
from shopdesk.core.errors import DomainError, NotFound, ValidationFailed
from shopdesk.core.money import yuan_to_fen
from shopdesk.customers.actions import get_customer
from shopdesk.customers.models import Customer
from shopdesk.orders.actions import load_order, order_options
from shopdesk.orders.api import access_order
from shopdesk.orders.models import Order, OrderLine, Product
from shopdesk.refunds.actions import do_confirm_manual
from shopdesk.refunds.models import OPEN_STATUSES
from shopdesk.web.deps import DbSession
from shopdesk.web.pages import DISPLAY_ZONE, ShopperPage, StaffPage, error_text, go, lang_of, parse_model, render

router = APIRouter()

CARRIERS = ("shunfeng", "zhongtong", "yuantong", "yunda", "shentong", "jtexpress", "jd", "ems")
# URL action → state-table action, per side; the state table decides what the current status allows.
BUYER_ACTIONS = {"accept-offer": "accept_offer", "decline-offer": "decline_offer", "ship-return": "ship_return",
                 "confirm": "confirm", "cancel": "cancel", "escalate": "escalate"}
MERCHANT_ACTIONS = {"approve": "approve", "reject": "reject", "receive": "receive", "repaired": "repaired",
                    "reship": "reship", "retry-refund": "refund_retry"}
ADDRESS_FIELDS = ("name", "phone", "province", "city", "district", "detail")
REASON_CODE = re.compile(r"^[a-z][a-z0-9_]{1,31}$")
PAGE_SIZE = 20
QUEUE_SIZE = 100


# ---- form parsing -------------------------------------------------------------------------------

def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _fen(text: str, field: str) -> int:
    """Parse a yuan amount typed into a form (e.g. 17.6) into fen."""
    try:
        value = Decimal(text.replace(",", "").replace("¥", "").strip())
    except InvalidOperation as exc:
        raise ValidationFailed("not an amount in yuan", field=field) from exc
    if value <= 0 or value != value.quantize(Decimal("0.01")):
        raise ValidationFailed("a positive amount with at most 2 decimals", field=field)
    return yuan_to_fen(value)


def _int(text: str, field: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise ValidationFailed("not a whole number", field=field) from exc


def _version(form: FormData) -> int | None:
    raw = _text(form, "expected_version")
    return _int(raw, "expected_version") if raw else None


def _case_body(form: FormData, order_id: str) -> CaseIn:
    """Build the create/resubmit body from the application form."""
    lines = []
    for i, line_id in enumerate(v for v in form.getlist("line") if isinstance(v, str)):
        lines.append({"order_line_id": line_id,
                      "quantity": _int(_text(form, f"qty_{line_id}") or "1", f"lines[{i}].quantity")})
    data: dict[str, Any] = {"order_id": order_id, "type": _text(form, "type"), "reason": _text(form, "reason"),
                            "lines": lines, "description": _text(form, "description"),
                            "photo_ids": [v for v in form.getlist("photo_ids") if isinstance(v, str) and v]}
    if data["type"] == "compensation" and _text(form, "amount"):
        data["amount_fen"] = _fen(_text(form, "amount"), "amount_fen")
    if data["type"] == "exchange" and _text(form, "exchange_sku") and lines:
        data["exchange_to"] = [{"sku": _text(form, "exchange_sku"), "quantity": sum(ln["quantity"] for ln in lines)}]
    if not lines:
        raise ValidationFailed("choose at least one order line", field="lines")
    if not data["reason"]:
        raise ValidationFailed("choose a reason", code="unknown_reason", field="reason")
    return parse_model(CaseIn, data)


def _day_start(text: str, field: str) -> datetime | None:
    """Return the first instant of a Beijing calendar day typed into a date filter."""
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError as exc:
        raise ValidationFailed("not a date (YYYY-MM-DD)", field=field) from exc
    return datetime.combine(day, time(0), tzinfo=DISPLAY_ZONE).astimezone(UTC)


def _list_filters(params: dict[str, str]) -> dict:
    end = _day_start(params.get("date_to", ""), "created_to")
    return {"type": params.get("type") or None, "group": params.get("group") or None,
            "created_from": _day_start(params.get("date_from", ""), "created_from"),
            "created_to": end + timedelta(days=1) if end else None, "q": params.get("q") or None}


# ---- shared reads ---------------------------------------------------------------------------------

async def _merchant_settings(session, merchant_id: str) -> dict:
    merchant = await session.get(Merchant, merchant_id)
    if merchant is None:
        raise NotFound("no such merchant")
    return aftersales_settings(merchant)


async def _list_facts(session, cases: list[AftersaleCase]) -> dict:
    """Fetch order numbers, customer names and item names for a list of cases, in three reads."""
    merchants = {c.merchant_id for c in cases}
    if not cases:
        return {"order_nos": {}, "customers": {}, "line_names": {}}
    order_nos = dict((await session.execute(select(Order.id, Order.order_no).where(
        Order.id.in_({c.order_id for c in cases}), Order.merchant_id.in_(merchants)))).all())
    customers = dict((await session.execute(select(Customer.id, Customer.name).where(
        Customer.id.in_({c.customer_id for c in cases}), Customer.merchant_id.in_(merchants)))).all())
    line_names = dict((await session.execute(select(OrderLine.id, OrderLine.name).where(
        OrderLine.id.in_({ln.order_line_id for c in cases for ln in c.lines}),
        OrderLine.merchant_id.in_(merchants)))).all())
    return {"order_nos": order_nos, "customers": customers, "line_names": line_names}


async def _product_names(session, merchant_id: str, skus: list[str] | None = None) -> dict[str, str]:
    stmt = select(Product.sku, Product.name).where(Product.merchant_id == merchant_id)
    if skus is not None:
        stmt = stmt.where(Product.sku.in_(skus))
    return dict((await session.execute(stmt.order_by(Product.sku).limit(500))).all())


async def _case_view(session, case: AftersaleCase) -> dict:
    """Gather what a case page shows beside the case itself."""
    settings = await _merchant_settings(session, case.merchant_id)
    order = await load_order(session, case.merchant_id, case.order_id)
    refunds = (await refunds_by_case(session, [case.id]))[case.id]
    superseded = {r.supersedes for r in refunds if r.supersedes}
    skus = [e.get("sku") for e in case.exchange_to or []]
    return {"case": case, "order": order, "order_lines": {ln.id: ln for ln in order.lines}, "refunds": refunds,
            "superseded": superseded, "settings": settings, "reasons": settings["reasons"],
            "allowed": set(states.allowed_actions(case.status)), "events": list(reversed(case.events)),
            "carriers": CARRIERS, "products": await _product_names(session, case.merchant_id, skus) if skus else {},
            "gross_fen": case.goods_refund_fen + case.shipping_refund_fen + case.postage_refund_fen,
            "deduction_types": list(DEDUCTION_TYPES)}


async def _order_cases(session, principal: Principal, order_id: str) -> list[AftersaleCase]:
    stmt = filtered(principal).where(AftersaleCase.order_id == order_id).options(*actions.case_options())
    return list((await session.execute(stmt.order_by(AftersaleCase.created_at.desc()))).scalars())


def _open_lines(cases: list[AftersaleCase]) -> dict[str, str]:
    """Map each order line to the open case holding it (at most one, rulebook §1)."""
    return {ln.order_line_id: c.id for c in cases if c.status not in states.FINAL for ln in c.lines}


# ---- shopper: orders and the application form ------------------------------------------------------

@router.get("/shop")
async def shop_home() -> Response:
    return RedirectResponse("/shop/cases", status_code=303)


@router.get("/shop/orders")
async def shopper_orders(request: Request, session: DbSession, principal: ShopperPage) -> Response:
    orders = list((await session.execute(
        select(Order).where(Order.merchant_id == principal.merchant_id, Order.customer_id == principal.customer_id)
        .options(*order_options()).order_by(Order.placed_at.desc()).limit(50))).scalars())
    return render(request, "shopper/orders.html", {"orders": orders})


@router.get("/shop/orders/{order_id}")
async def shopper_order(order_id: str, request: Request, session: DbSession, principal: ShopperPage) -> Response:
    order = await access_order(session, principal, order_id)
    cases = await _order_cases(session, principal, order.id)
    settings = await _merchant_settings(session, order.merchant_id)
    return render(request, "shopper/order.html", {"order": order, "cases": cases, "open_lines": _open_lines(cases),
                                                  "reasons": settings["reasons"]})


async def _apply_context(session, principal: Principal, order: Order, form: dict) -> dict:
    settings = await _merchant_settings(session, order.merchant_id)
    cases = await _order_cases(session, principal, order.id)
    open_lines = _open_lines(cases)
    if form.get("resubmit_of"):
        open_lines = {k: v for k, v in open_lines.items() if v != form["resubmit_of"]}
    return {"order": order, "form": form, "reasons": settings["reasons"], "types": states.TYPES,
            "open_lines": open_lines, "products": await _product_names(session, order.merchant_id),
            "settings": settings}


@router.get("/shop/orders/{order_id}/apply")
async def apply_form(order_id: str, request: Request, session: DbSession, principal: ShopperPage,
                     line: str = "") -> Response:
    order = await access_order(session, principal, order_id)
    chosen = {line: 1} if any(ln.id == line for ln in order.lines) else {}
    form = {"type": "return_refund" if order.shipments else "refund_only", "reason": "", "lines": chosen,
            "description": "", "photo_ids": [], "amount": "", "exchange_sku": "",
            "action": f"/shop/orders/{order.id}/apply", "quote_url": f"/shop/orders/{order.id}/quote"}
    return render(request, "shopper/apply.html", await _apply_context(session, principal, order, form))


async def _quote_fragment(request: Request, session, principal: Principal, order_id: str, *,
                          exclude_case: str | None = None) -> Response:
    """Render the live quote (refund, tender split, problems) for what the form holds now."""
    form = await request.form()
    lang = lang_of(request)
    context: dict[str, Any] = {"quote": None, "problems": [], "photo_hint": False}
    try:
        body = _case_body(form, order_id)
        # A resubmission's own lines are still open on the rejected case: exclude_case leaves them out.
        q = await actions.do_quote(session, principal, body, exclude_case=exclude_case)
        settings = await _merchant_settings(session, principal.merchant_id or "")
        reason = settings["reasons"].get(body.reason) or {}
        context["quote"] = q
        context["problems"] = [error_text(ValidationFailed(p.detail, code=p.code, field=p.field), lang)
                               for p in q.problems]
        context["photo_hint"] = (body.type in PHOTO_TYPES and reason.get("responsibility") == "merchant"
                                 and not body.photo_ids)
        context["case_type"] = body.type
    except DomainError as exc:
        # An unfinished form is not an error yet: say what is missing in the quote box.
        context["problems"] = [] if exc.field == "lines" else [error_text(exc, lang)]
        context["pick_lines"] = exc.field == "lines"
    return render(request, "shopper/apply.html", context, block="quote")


@router.post("/shop/orders/{order_id}/quote")
async def apply_quote(order_id: str, request: Request, session: DbSession, principal: ShopperPage) -> Response:
    return await _quote_fragment(request, session, principal, order_id)


@router.post("/shop/orders/{order_id}/apply")
async def apply(order_id: str, request: Request, session: DbSession, principal: ShopperPage) -> Response:
    body = _case_body(await request.form(), order_id)
    async with session.begin():
        case = await actions.do_create_case(session, principal, body)
    return go(request, f"/shop/cases/{case.id}")


async def _upload_photos(request: Request, session, principal: Principal, photo_base: str) -> Response:
    """Store the chosen photos and answer with their thumbnails, each carrying its hidden photo_ids input."""
    form = await request.form()
    files = [f for f in form.getlist("file") if isinstance(f, UploadFile) and f.filename]
    if not files:
        raise ValidationFailed("choose an image", field="file")
    limit = storage.get_settings().upload_max_bytes
    async with session.begin():
        uploads = [await actions.do_save_upload(session, principal, await f.read(limit + 1)) for f in files[:9]]
    # The quote box listens for this to drop its "a photo is needed" hint.
    return render(request, "shopper/apply.html", {"photos": [u.id for u in uploads], "photo_base": photo_base},
                  block="photos_added", headers={"HX-Trigger-After-Settle": "photos-changed"})


@router.post("/shop/uploads")
async def upload_photos(request: Request, session: DbSession, principal: ShopperPage) -> Response:
    return await _upload_photos(request, session, principal, "/shop/uploads/")


@router.get("/shop/uploads/{upload_id}")
async def shopper_photo(upload_id: str, session: DbSession, principal: ShopperPage) -> Response:
    item = await session.get(Upload, upload_id)
    # Only the shopper who uploaded a photo sees it through the shop pages.
    if item is None or item.merchant_id != principal.merchant_id or item.owner_id != principal.customer_id:
        raise NotFound("no such photo")
    return FileResponse(storage.open_path(item.path), media_type=item.content_type,
                        headers={"Cache-Control": "private, max-age=3600"})


# ---- shopper: cases ---------------------------------------------------------------------------------

@router.get("/shop/cases")
async def shopper_cases(request: Request, session: DbSession, principal: ShopperPage) -> Response:
    params = {k: request.query_params.get(k, "").strip() for k in ("type", "group", "date_from", "date_to", "q")}
    rows, more = await list_cases(session, principal, limit=PAGE_SIZE,
                                  after_id=request.query_params.get("after") or None, **_list_filters(params))
    settings = await _merchant_settings(session, principal.merchant_id or "")
    refunds = await refunds_by_case(session, [c.id for c in rows])
    return render(request, "shopper/cases.html", {
        "cases": rows, "more": more, "params": params, "reasons": settings["reasons"], "refunds": refunds,
        "types": states.TYPES, "groups": list(states.GROUPS), **await _list_facts(session, rows)})


@router.get("/shop/cases/{case_id}")
async def shopper_case(case_id: str, request: Request, session: DbSession, principal: ShopperPage) -> Response:
    case = await actions.access_case(session, principal, case_id)
    return render(request, "shopper/case.html", await _case_view(session, case))


@router.get("/shop/cases/{case_id}/resubmit")
async def resubmit_form(case_id: str, request: Request, session: DbSession, principal: ShopperPage) -> Response:
    case = await actions.access_case(session, principal, case_id)
    order = await access_order(session, principal, case.order_id)
    exchange = case.exchange_to[0]["sku"] if case.exchange_to else ""
    form = {"type": case.type, "reason": case.reason, "lines": {ln.order_line_id: ln.quantity for ln in case.lines},
            "description": case.description, "photo_ids": list(case.photo_ids),
            "amount": f"{case.requested_amount_fen / 100:.2f}" if case.requested_amount_fen else "",
            "exchange_sku": exchange, "resubmit_of": case.id, "case": case,
            "action": f"/shop/cases/{case.id}/resubmit", "quote_url": f"/shop/cases/{case.id}/quote"}
    return render(request, "shopper/apply.html", await _apply_context(session, principal, order, form))


@router.post("/shop/cases/{case_id}/quote")
async def resubmit_quote(case_id: str, request: Request, session: DbSession, principal: ShopperPage) -> Response:
    case = await actions.access_case(session, principal, case_id)
    return await _quote_fragment(request, session, principal, case.order_id, exclude_case=case.id)


@router.post("/shop/cases/{case_id}/resubmit")
async def resubmit(case_id: str, request: Request, session: DbSession, principal: ShopperPage) -> Response:
    form = await request.form()
    async with session.begin():
        case = await actions.access_case(session, principal, case_id)
        await actions.do_resubmit(session, principal, case_id, _case_body(form, case.order_id))
    return go(request, f"/shop/cases/{case_id}")


@router.post("/shop/cases/{case_id}/{action}")
async def shopper_action(case_id: str, action: str, request: Request, session: DbSession,
                         principal: ShopperPage) -> Response:
    """Run one of the buyer's case actions from the case page."""
    if action not in BUYER_ACTIONS:
        raise NotFound(f"no action '{action}'")
    form = await request.form()
    note = parse_model(NoteIn, {"note": _text(form, "note")}).note
    async with session.begin():
        if action == "accept-offer":
            await actions.do_accept_offer(session, principal, case_id)
        elif action == "decline-offer":
            await actions.do_decline_offer(session, principal, case_id)
        elif action == "ship-return":
            postage = _text(form, "postage")
            body = parse_model(WaybillIn, {"carrier": _text(form, "carrier"), "tracking_no": _text(form, "tracking_no"),
                                           "postage_fen": _fen(postage, "postage_fen") if postage else None})
            await actions.do_ship_return(session, principal, case_id, body.carrier, body.tracking_no, body.postage_fen)
        elif action == "confirm":
            await actions.do_confirm(session, principal, case_id)
        elif action == "cancel":
            await actions.do_cancel(session, principal, case_id, note)
        elif action == "escalate":
            await actions.do_escalate(session, principal, case_id, note)
    return go(request, f"/shop/cases/{case_id}")


# ---- console: the queue and bulk actions -------------------------------------------------------------

async def _queue_context(session, principal: Principal, params: dict[str, str]) -> dict:
    rows, more = await list_cases(session, principal, limit=QUEUE_SIZE, by_deadline=True, **_list_filters(params))
    reasons = {}
    templates: list[str] = []
    if principal.merchant_id:
        settings = await _merchant_settings(session, principal.merchant_id)
        reasons, templates = settings["reasons"], settings["reject_templates"]
    refunds = await refunds_by_case(session, [c.id for c in rows])
    return {"cases": rows, "more": more, "params": params, "reasons": reasons, "reject_templates": templates,
            "refunds": refunds, "types": states.TYPES, "groups": list(states.GROUPS),
            **await _list_facts(session, rows)}


def _queue_params(source: Any, principal: Principal) -> dict[str, str]:
    params = {k: str(source.get(k) or "").strip() for k in ("type", "date_from", "date_to", "q")}
    group = source.get("group")
    # The queue opens on what waits for review; platform operators only ever see escalations.
    params["group"] = str(group).strip() if group is not None else ("" if principal.is_platform else "pending_review")
    return params


@router.get("/console")
async def console_home() -> Response:
    return RedirectResponse("/console/cases", status_code=303)


@router.get("/console/cases")
async def queue(request: Request, session: DbSession, principal: StaffPage) -> Response:
    params = _queue_params(request.query_params, principal)
    return render(request, "console/queue.html", await _queue_context(session, principal, params))


@router.post("/console/cases/bulk")
async def bulk(request: Request, session: DbSession, principal: StaffPage) -> Response:
    """Approve or reject many cases, each through its own action and transaction; report each outcome."""
    form = await request.form()
    lang = lang_of(request)
    kind = _text(form, "bulk_action")
    reason = _text(form, "reason") or _text(form, "template")
    ids = [v for v in form.getlist("case_id") if isinstance(v, str)][:QUEUE_SIZE]
    results = []
    for case_id in ids:
        try:
            async with session.begin():
                if kind == "approve":
                    case = await actions.do_approve(session, principal, case_id, ApproveIn())
                elif kind == "reject":
                    if not reason:
                        raise ValidationFailed("give a reason", field="reason")
                    case = await actions.do_reject(session, principal, case_id, reason)
                else:
                    raise ValidationFailed("approve or reject", field="bulk_action")
                results.append({"id": case.id, "case_no": case.case_no, "ok": True, "status": case.status,
                                "type": case.type})
        except DomainError as exc:
            results.append({"id": case_id, "case_no": "", "ok": False, "error": error_text(exc, lang)})
    failed = [r["id"] for r in results if not r["ok"]]
    if failed:
        numbers = dict((await session.execute(filtered(principal).with_only_columns(
            AftersaleCase.id, AftersaleCase.case_no).where(AftersaleCase.id.in_(failed)))).all())
        for r in results:
            r["case_no"] = r["case_no"] or numbers.get(r["id"], r["id"])
    context = await _queue_context(session, principal, _queue_params(form, principal))
    context.update(results=results, bulk_none=not ids)
    block = "queue" if request.headers.get("hx-request") else None
    return render(request, "console/queue.html", context, block=block)


# ---- console: one case -----------------------------------------------------------------------------

@router.get("/console/cases/{case_id}")
async def console_case(case_id: str, request: Request, session: DbSession, principal: StaffPage) -> Response:
    case = await actions.access_case(session, principal, case_id)
    view = await _case_view(session, case)
    customer = await get_customer(session, case.merchant_id, case.customer_id)
    count = (await session.execute(select(func.count()).select_from(AftersaleCase).where(
        AftersaleCase.merchant_id == case.merchant_id, AftersaleCase.customer_id == case.customer_id))).scalar_one()
    view.update(customer=customer, customer_cases=count,
                reject_templates=view["settings"]["reject_templates"],
                can_confirm_refunds=principal.is_merchant_side, open_refund_statuses=OPEN_STATUSES)
    return render(request, "console/case.html", view)


@router.get("/console/cases/{case_id}/photos/{upload_id}")
async def console_photo(case_id: str, upload_id: str, session: DbSession, principal: StaffPage) -> Response:
    case = await actions.access_case(session, principal, case_id)
    item = await session.get(Upload, upload_id) if upload_id in (case.photo_ids or []) else None
    if item is None or item.merchant_id != case.merchant_id:
        raise NotFound("no such photo")
    return FileResponse(storage.open_path(item.path), media_type=item.content_type,
                        headers={"Cache-Control": "private, max-age=3600"})


def _deductions(form: FormData) -> list[dict]:
    rows = zip(form.getlist("ded_type"), form.getlist("ded_amount"), form.getlist("ded_note"))
    out = []
    for i, (kind, amount, note) in enumerate(rows):
        if isinstance(amount, str) and amount.strip():
            out.append({"type": kind, "amount_fen": _fen(amount, f"deductions[{i}].amount_fen"),
                        "note": str(note).strip()})
    return out


@router.post("/console/cases/{case_id}/{action}")
async def console_action(case_id: str, action: str, request: Request, session: DbSession,
                         principal: StaffPage) -> Response:
    """Run one of the merchant's (or the platform's) case actions from the case page."""
    if action not in MERCHANT_ACTIONS and action != "rule":
        raise NotFound(f"no action '{action}'")
    form = await request.form()
    version = _version(form)
    note = parse_model(NoteIn, {"note": _text(form, "note")}).note
    async with session.begin():
        if action == "approve":
            body = parse_model(ApproveIn, {"deductions": _deductions(form), "note": note,
                                           "expected_version": version})
            await actions.do_approve(session, principal, case_id, body)
        elif action == "reject":
            reason = _text(form, "reason") or _text(form, "template")
            if not reason:
                raise ValidationFailed("give a reason", field="reason")
            await actions.do_reject(session, principal, case_id, reason, version)
        elif action == "receive":
            body = parse_model(ReceiveIn, {"outcome": _text(form, "outcome"), "note": note,
                                           "expected_version": version})
            await actions.do_receive(session, principal, case_id, body.outcome, body.note, body.expected_version)
        elif action == "repaired":
            await actions.do_repaired(session, principal, case_id, note)
        elif action == "reship":
            body = parse_model(WaybillIn, {"carrier": _text(form, "carrier"), "tracking_no": _text(form, "tracking_no"),
                                           "expected_version": version})
            await actions.do_reship(session, principal, case_id, body.carrier, body.tracking_no, body.expected_version)
        elif action == "retry-refund":
            await actions.do_retry_refunds(session, principal, case_id, note)
        elif action == "rule":
            ruling = _text(form, "ruling")
            if ruling not in ("buyer", "merchant"):
                raise ValidationFailed("for the buyer or the merchant", field="ruling")
            await actions.do_rule(session, principal, case_id, ruling, note)
    return go(request, f"/console/cases/{case_id}")


@router.post("/console/refunds/{refund_no}/confirm")
async def confirm_refund(refund_no: str, request: Request, session: DbSession, principal: StaffPage) -> Response:
    """Record a manual refund as paid (the money went out by hand)."""
    form = await request.form()
    reference = _text(form, "reference")
    if not reference or len(reference) > 128:
        raise ValidationFailed("the transfer reference, up to 128 characters", field="reference")
    async with session.begin():
        refund = await do_confirm_manual(session, principal, refund_no, reference)
        case_id = refund.case_id
    return go(request, f"/console/cases/{case_id}")


# ---- console: settings -------------------------------------------------------------------------------

# ---- console: a case opened by an agent for the shopper (from a chat) --------------------------------

def _console_apply_form(order: Order, conversation_id: str, line: str = "") -> dict:
    suffix = f"?conversation_id={quote_plus(conversation_id)}" if conversation_id else ""
    chosen = {line: 1} if any(ln.id == line for ln in order.lines) else {}
    return {"type": "return_refund" if order.shipments else "refund_only", "reason": "", "lines": chosen,
            "description": "", "photo_ids": [], "amount": "", "exchange_sku": "",
            "action": f"/console/orders/{order.id}/apply{suffix}", "quote_url": f"/console/orders/{order.id}/quote",
            "back": "/console/chat" if conversation_id else "/console/cases", "case_prefix": "/console/cases/",
            "upload_url": "/console/uploads"}


@router.get("/console/orders/{order_id}/apply")
async def console_apply_form(order_id: str, request: Request, session: DbSession, principal: StaffPage,
                             conversation_id: str = "", line: str = "") -> Response:
    """The application form, filled in by an agent for the shopper (the customer card's 'open a case')."""
    order = await access_order(session, principal, order_id)
    form = _console_apply_form(order, conversation_id, line)
    context = await _apply_context(session, principal, order, form)
    return render(request, "shopper/apply.html", {**context, "photo_base": "/console/uploads/"})


@router.post("/console/orders/{order_id}/quote")
async def console_apply_quote(order_id: str, request: Request, session: DbSession, principal: StaffPage) -> Response:
    return await _quote_fragment(request, session, principal, order_id)


@router.post("/console/orders/{order_id}/apply")
async def console_apply(order_id: str, request: Request, session: DbSession, principal: StaffPage,
                        conversation_id: str = "") -> Response:
    from shopdesk.chat.actions import actor_from_principal, do_system_message

    body = _case_body(await request.form(), order_id)
    async with session.begin():
        case = await actions.do_create_case(session, principal, body)
        case_id, case_no = case.id, case.case_no
    if conversation_id:
        # The shopper hears about it in the chat they are in; their case page has the details.
        await do_system_message(actor_from_principal(principal), conversation_id,
                                f"客服已为您提交售后申请 {case_no}，进度可在“我的售后”中查看。")
    return go(request, f"/console/cases/{case_id}")


@router.post("/console/uploads")
async def console_upload_photos(request: Request, session: DbSession, principal: StaffPage) -> Response:
    """Photos an agent adds to a case opened for the shopper (checked by content like the shopper's)."""
    return await _upload_photos(request, session, principal, "/console/uploads/")


@router.get("/console/uploads/{upload_id}")
async def console_upload(upload_id: str, session: DbSession, principal: StaffPage) -> Response:
    item = await session.get(Upload, upload_id)
    if item is None or item.merchant_id != principal.merchant_id:
        raise NotFound("no such photo")
    return FileResponse(storage.open_path(item.path), media_type=item.content_type,
                        headers={"Cache-Control": "private, max-age=3600"})


@router.get("/console/settings")
async def settings_page(request: Request, session: DbSession, principal: StaffPage, saved: str = "") -> Response:
    settings = await _merchant_settings(session, principal.require_merchant_side())
    return render(request, "console/settings.html", {
        "settings": settings, "saved": saved, "timers": list(DEFAULT_TIMERS), "address_fields": ADDRESS_FIELDS,
        "can_edit": principal.role in ("admin", "supervisor"), "reasons": settings["reasons"]})


def _settings_changes(section: str, form: FormData) -> dict:
    """Turn one settings form into the PUT /settings/aftersales body it stands for."""
    if section == "address":
        return {"return_address": {k: _text(form, k) for k in ADDRESS_FIELDS}}
    if section == "timers":
        return {"timers": {name: _int(_text(form, f"timer_{name}"), f"timers.{name}") for name in DEFAULT_TIMERS}}
    if section == "templates":
        return {"reject_templates": [line.strip() for line in _text(form, "templates").splitlines() if line.strip()]}
    if section == "reasons":
        remove = set(form.getlist("remove"))
        reasons = {}
        for code, label, label_en, resp in zip(form.getlist("code"), form.getlist("label"), form.getlist("label_en"),
                                               form.getlist("responsibility")):
            if code not in remove:
                reasons[str(code)] = {"label": str(label).strip(), "label_en": str(label_en).strip(),
                                      "responsibility": str(resp)}
        new_code = _text(form, "new_code")
        if new_code:
            if not REASON_CODE.match(new_code) or new_code in reasons:
                raise ValidationFailed("lowercase letters, digits and _, not in use", field=f"reasons.{new_code}")
            reasons[new_code] = {"label": _text(form, "new_label"), "label_en": _text(form, "new_label_en"),
                                 "responsibility": _text(form, "new_responsibility")}
        return {"reasons": reasons}
    raise NotFound(f"no settings section '{section}'")


@router.post("/console/settings/{section}")
async def save_settings(section: str, request: Request, session: DbSession, principal: StaffPage) -> Response:
    principal.require_role("admin", "supervisor")
    body = parse_model(SettingsIn, _settings_changes(section, await request.form()))
    async with session.begin():
        merchant = await session.get(Merchant, principal.require_merchant_side(), with_for_update=True, populate_existing=True)
        actions.do_update_settings(session, principal, merchant, body)
    return go(request, f"/console/settings?saved={section}#{section}")
