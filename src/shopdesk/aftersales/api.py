"""Routes: quotes, cases, case actions, photos and after-sales settings."""
from __future__ import annotations

import json
from datetime import datetime

from fastapi import APIRouter, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError

from shopdesk.accounts.auth import Principal
from shopdesk.accounts.models import Merchant
from shopdesk.aftersales import actions, fast, states
from shopdesk.aftersales.models import AftersaleCase, Upload
from shopdesk.aftersales.policy import aftersales_settings
from shopdesk.aftersales.queries import list_cases, refunds_by_case
from shopdesk.aftersales.schemas import (ApproveIn, CaseIn, NoteIn, QuoteIn, ReceiveIn, RejectIn, RulingIn, SettingsIn,
                                         WaybillIn)
from shopdesk.core import storage
from shopdesk.core.clock import parse_instant
from shopdesk.core.errors import NotFound, ValidationFailed
from shopdesk.core.pagination import clamp_limit, decode_cursor, encode_cursor
from shopdesk.web.deps import CurrentPrincipal, DbSession
from shopdesk.web.responses import create_once, page

router = APIRouter()


def quote_out(q) -> dict:
    return {"eligible": q.eligible, "refund_fen": q.refund_fen, "goods_refund_fen": q.goods_refund_fen,
            "shipping_refund_fen": q.shipping_refund_fen, "deductions_fen": q.deductions_fen,
            "buyer_pays_fen": q.buyer_pays_fen, "responsibility": q.responsibility,
            "auto_approve": q.auto_approve, "needs_consent": q.needs_consent, "flags": q.flags,
            "lines": [{"order_line_id": ln.order_line_id, "quantity": ln.quantity, "refund_fen": ln.refund_fen}
                      for ln in q.lines],
            "tenders": [{"method": t.method, "amount_fen": t.amount_fen} for t in q.tenders],
            "problems": [{"code": p.code, "detail": p.detail, "field": p.field} for p in q.problems]}


async def full_case(session, case: AftersaleCase, principal: Principal) -> dict:
    refunds = (await refunds_by_case(session, [case.id]))[case.id] if states.may_have_refunds(case) else []
    return actions.case_out(case, refunds, shopper=principal.kind == "shopper")


@router.post("/aftersales/quote")
async def quote(body: QuoteIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    return quote_out(await actions.do_quote(session, principal, body))


@router.post("/aftersales", status_code=201)
async def create_case(body: CaseIn, request: Request, session: DbSession, principal: CurrentPrincipal):
    if fast.enabled(session) and "idempotency-key" not in request.headers:
        try:
            return JSONResponse(await fast.create(principal, body), status_code=201)
        except fast.Slow:
            pass  # nothing written: the do_* below decides
    async def make() -> dict:
        case = await actions.do_create_case(session, principal, body)
        return await full_case(session, case, principal)

    return await create_once(request, session, principal, make)


@router.get("/aftersales")
async def list_(session: DbSession, principal: CurrentPrincipal, type: str | None = None, status: str | None = None,
                group: str | None = None, created_from: str | None = None, created_to: str | None = None,
                q: str | None = None, limit: int | None = None, cursor: str | None = None) -> dict:
    size = clamp_limit(limit)
    after = decode_cursor(cursor)
    rows, more = await list_cases(session, principal, limit=size, after_id=after[0] if after else None, type=type,
                                  status=status, group=group, created_from=_instant(created_from, "created_from"),
                                  created_to=_instant(created_to, "created_to"), q=q)
    refunds = await refunds_by_case(session, [c.id for c in rows])
    items = [actions.case_out(c, refunds[c.id]) for c in rows]
    return page(items, encode_cursor([rows[-1].id]) if more else None)


def _instant(text: str | None, field: str) -> datetime | None:
    if not text:
        return None
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise ValidationFailed("not an RFC 3339 time", field=field) from exc


@router.get("/aftersales/{case_id}")
async def get_case(case_id: str, session: DbSession, principal: CurrentPrincipal) -> dict:
    return await full_case(session, await actions.access_case(session, principal, case_id), principal)


async def _parse(request: Request, model):
    try:
        raw = await request.body()
        data = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise ValidationFailed("the body is not valid JSON", code="malformed_json", field="body", status=400) from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValidationFailed(err["msg"], field=".".join(str(p) for p in err["loc"]) or "body") from exc


@router.post("/aftersales/{case_id}/{action}")
async def case_action(case_id: str, action: str, request: Request, session: DbSession,
                      principal: CurrentPrincipal) -> dict:
    """Run one case action; who may run it is checked against the token."""
    if action in fast.STEPS and fast.enabled(session):
        body = await _parse(request, fast.STEPS[action][0])
        try:
            return await fast.case_action(principal, case_id, action, body)
        except fast.Slow:
            pass  # nothing written: the do_* below decides
    async with session.begin():
        if action == "approve":
            b = await _parse(request, ApproveIn)
            case = await actions.do_approve(session, principal, case_id, b)
        elif action == "reject":
            b = await _parse(request, RejectIn)
            case = await actions.do_reject(session, principal, case_id, b.reason, b.expected_version)
        elif action == "accept-offer":
            case = await actions.do_accept_offer(session, principal, case_id)
        elif action == "decline-offer":
            case = await actions.do_decline_offer(session, principal, case_id)
        elif action == "ship-return":
            b = await _parse(request, WaybillIn)
            case = await actions.do_ship_return(session, principal, case_id, b.carrier, b.tracking_no, b.postage_fen)
        elif action == "receive":
            b = await _parse(request, ReceiveIn)
            case = await actions.do_receive(session, principal, case_id, b.outcome, b.note, b.expected_version)
        elif action == "repaired":
            b = await _parse(request, NoteIn)
            case = await actions.do_repaired(session, principal, case_id, b.note)
        elif action == "reship":
            b = await _parse(request, WaybillIn)
            case = await actions.do_reship(session, principal, case_id, b.carrier, b.tracking_no, b.expected_version)
        elif action == "confirm":
            case = await actions.do_confirm(session, principal, case_id)
        elif action == "cancel":
            b = await _parse(request, NoteIn)
            case = await actions.do_cancel(session, principal, case_id, b.note)
        elif action == "resubmit":
            b = await _parse(request, CaseIn)
            case = await actions.do_resubmit(session, principal, case_id, b)
        elif action == "escalate":
            b = await _parse(request, NoteIn)
            case = await actions.do_escalate(session, principal, case_id, b.note)
        elif action == "rule":
            b = await _parse(request, RulingIn)
            case = await actions.do_rule(session, principal, case_id, b.ruling, b.note)
        elif action == "retry-refund":
            b = await _parse(request, NoteIn)
            case = await actions.do_retry_refunds(session, principal, case_id, b.note)
        else:
            raise NotFound(f"no action '{action}'")
        return await full_case(session, case, principal)


@router.post("/uploads", status_code=201)
async def upload(file: UploadFile, session: DbSession, principal: CurrentPrincipal) -> dict:
    data = await file.read(storage.get_settings().upload_max_bytes + 1)
    async with session.begin():
        item = await actions.do_save_upload(session, principal, data)
    return {"id": item.id, "url": f"/api/v1/uploads/{item.id}", "content_type": item.content_type, "size": item.size}


@router.get("/uploads/{upload_id}")
async def get_upload(upload_id: str, session: DbSession, principal: CurrentPrincipal):
    item = await session.get(Upload, upload_id)
    if item is None or item.merchant_id != principal.merchant_id or (
            principal.kind == "shopper" and item.owner_id != principal.customer_id):
        raise NotFound("no such upload")
    return FileResponse(storage.open_path(item.path), media_type=item.content_type)


@router.get("/settings/aftersales")
async def get_settings_(session: DbSession, principal: CurrentPrincipal) -> dict:
    merchant = await session.get(Merchant, principal.require_merchant_side())
    return aftersales_settings(merchant)


@router.put("/settings/aftersales")
async def put_settings(body: SettingsIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    principal.require_role("admin", "supervisor")
    async with session.begin():
        merchant = await session.get(Merchant, principal.require_merchant_side(), with_for_update=True, populate_existing=True)
        return actions.do_update_settings(session, principal, merchant, body)
