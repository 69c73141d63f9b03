"""快递100 tracking pushes (rulebook §8): verify, de-duplicate, and mark parcels signed."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from shopdesk.config import get_settings
from shopdesk.core.clock import now
from shopdesk.core.db import transaction
from shopdesk.core.security import same

router = APIRouter()

OK = {"result": True, "returnCode": "200", "message": "成功"}
SIGNED = "3"
SHANGHAI = ZoneInfo("Asia/Shanghai")


def push_salt() -> str:
    return get_settings().secret_key[:16]


def sign_push(param: str, salt: str) -> str:
    return hashlib.md5((param + salt).encode()).hexdigest().upper()


def signed_time(last_result: dict) -> datetime:
    """The time of the newest 签收 entry (快递100 sends local Beijing times)."""
    for entry in last_result.get("data") or []:
        if str(entry.get("status") or entry.get("statusCode") or "") in ("签收", SIGNED) or "签收" in (
                entry.get("context") or ""):
            try:
                return datetime.strptime(entry["ftime" if "ftime" in entry else "time"], "%Y-%m-%d %H:%M:%S"
                                         ).replace(tzinfo=SHANGHAI)
            except (KeyError, ValueError):
                break
    return now()


@router.post("/hooks/kuaidi100")
async def push(request: Request):
    form = await request.form()
    param = str(form.get("param") or "")
    sign = str(form.get("sign") or "")
    if not param or not same(sign.upper(), sign_push(param, push_salt())):
        return JSONResponse({"result": False, "returnCode": "500", "message": "签名错误"}, status_code=400)
    try:
        body = json.loads(param)
        last = body["lastResult"]
        number, state = str(last["nu"]), str(last.get("state"))
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"result": False, "returnCode": "500", "message": "参数错误"}, status_code=400)
    if state == SIGNED:
        await mark_signed(number, signed_time(last), state)
    return OK


async def mark_signed(tracking_no: str, signed_at: datetime, state: str) -> int:
    """Mark every parcel with this waybill signed, once; re-arm the receipt timer of returns."""
    from shopdesk.aftersales.actions import on_parcel_signed
    from shopdesk.aftersales.models import CaseShipment
    from shopdesk.orders.actions import do_mark_shipment_signed
    from shopdesk.orders.models import Shipment

    touched = 0
    async with transaction() as session:
        for shipment in (await session.execute(select(Shipment).where(Shipment.tracking_no == tracking_no))).scalars():
            await do_mark_shipment_signed(session, shipment, signed_at, state)
            touched += 1
        parcels = (await session.execute(select(CaseShipment).where(CaseShipment.tracking_no == tracking_no))).scalars()
        for parcel in parcels:
            if parcel.signed_at is None:
                await on_parcel_signed(session, parcel, signed_at, state)
                touched += 1
    return touched
