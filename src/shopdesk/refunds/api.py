"""Routes: refunds, provider notifications and payment settings."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from shopdesk.accounts.models import Merchant
from shopdesk.aftersales import fast
from shopdesk.config import get_settings
from shopdesk.core.errors import NotFound
from shopdesk.integrations.payments import PROVIDER_NAMES, BadNotification, get_provider
from shopdesk.refunds.actions import (access_refund, apply_result, do_confirm_manual, do_resolve,
                                      do_set_payment_providers, find_refund, payment_providers,
                                      record_notification, refund_out)
from shopdesk.web.deps import CurrentPrincipal, DbSession

router = APIRouter()


class ConfirmIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reference: str = Field(min_length=1, max_length=128)


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: str
    note: str = Field(default="", max_length=1000)


class PaymentSettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    providers: dict[str, str]


@router.get("/refunds/{refund_no}")
async def get_refund(refund_no: str, session: DbSession, principal: CurrentPrincipal) -> dict:
    return refund_out(await access_refund(session, principal, refund_no))


@router.post("/refunds/{refund_no}/confirm")
async def confirm(refund_no: str, body: ConfirmIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    if fast.enabled(session):
        try:
            return await fast.confirm_refund(principal, refund_no, body.reference)
        except fast.Slow:
            pass  # nothing written: the do_* below decides
    async with session.begin():
        refund = await do_confirm_manual(session, principal, refund_no, body.reference)
        return refund_out(refund)


@router.post("/refunds/{refund_no}/resolve")
async def resolve(refund_no: str, body: ResolveIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    async with session.begin():
        return refund_out(await do_resolve(session, principal, refund_no, body.status, body.note))


@router.post("/payments/notify/{provider_name}")
async def notify(provider_name: str, request: Request, session: DbSession):
    """A provider's refund notification: verified, de-duplicated, applied forward-only."""
    try:
        provider = get_provider(provider_name)
    except KeyError as exc:
        raise NotFound("no such provider") from exc
    try:
        note = provider.parse_notification(request.headers, await request.body())
    except BadNotification as exc:
        return JSONResponse({"code": "FAIL", "message": str(exc)}, status_code=400)
    async with session.begin():
        if await record_notification(session, provider_name, note.notify_id, note.refund_no, note.status):
            status, detail = note.status, f"notification {note.notify_id}"
            refund = await find_refund(session, note.refund_no)
            if refund and note.amount_fen is not None and note.amount_fen != refund.amount_fen:
                # The provider speaks of another amount than we asked for: a person must look, never a retry.
                status, detail = "abnormal", f"notification {note.notify_id} says {note.amount_fen} fen"
            await apply_result(session, note.refund_no, status, detail=detail,
                               retry_base_s=get_settings().refund_retry_base_s)
    return {"code": "SUCCESS", "message": "成功"}


def payments_out(merchant: Merchant) -> dict:
    return {"providers": payment_providers(merchant), "default": "manual", "available": list(PROVIDER_NAMES)}


@router.get("/settings/payments")
async def get_payments(session: DbSession, principal: CurrentPrincipal) -> dict:
    merchant = await session.get(Merchant, principal.require_merchant_side())
    return payments_out(merchant)


@router.put("/settings/payments")
async def put_payments(body: PaymentSettingsIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    async with session.begin():
        merchant = await do_set_payment_providers(session, principal, body.providers)
        return payments_out(merchant)
