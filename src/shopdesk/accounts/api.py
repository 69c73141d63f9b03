"""Routes: staff tokens and stores."""
from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from shopdesk.accounts.actions import do_create_store, do_login
from shopdesk.accounts.models import Store
from shopdesk.web.deps import CurrentPrincipal, DbSession
from shopdesk.core.clock import isoformat
from shopdesk.core.pagination import clamp_limit, cut, decode_cursor
from shopdesk.core.records import AuditLog
from shopdesk.web.responses import create_once, page

router = APIRouter()


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(min_length=3, max_length=254)
    password: str = Field(min_length=1, max_length=200)


class StoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=2, max_length=63)
    name: str = Field(min_length=1, max_length=200)
    platform: str


def store_out(store: Store, *, with_secret: bool) -> dict:
    out = {"id": store.id, "code": store.code, "name": store.name, "platform": store.platform}
    if with_secret:
        out["identity_secret"] = store.identity_secret
    return out


@router.post("/auth/token")
async def token(body: LoginIn, session: DbSession) -> dict:
    async with session.begin():
        staff, tok = await do_login(session, body.email, body.password)
    return {"token": tok, "staff": {"id": staff.id, "name": staff.name, "role": staff.role}}


@router.get("/auth/me")
async def me(principal: CurrentPrincipal) -> dict:
    """Who the bearer token belongs to (the console and tests use it to learn their own id)."""
    return {"kind": principal.kind, "id": principal.staff_id or principal.customer_id, "role": principal.role,
            "name": principal.name, "merchant_id": principal.merchant_id}


@router.post("/stores", status_code=201)
async def create_store(body: StoreIn, request: Request, session: DbSession, principal: CurrentPrincipal):
    async def make() -> dict:
        store = await do_create_store(session, principal, code=body.code, name=body.name, platform=body.platform)
        return store_out(store, with_secret=True)

    return await create_once(request, session, principal, make)


@router.get("/stores")
async def list_stores(session: DbSession, principal: CurrentPrincipal) -> dict:
    merchant_id = principal.require_merchant_side()
    stores = (await session.execute(select(Store).where(Store.merchant_id == merchant_id).order_by(Store.code))).scalars()
    secret = principal.kind == "merchant_key" or principal.role == "admin"
    return {"items": [store_out(s, with_secret=secret) for s in stores], "next_cursor": None}


@router.get("/audit-log")
async def audit_log(session: DbSession, principal: CurrentPrincipal, object_id: str | None = None,
                    action: str | None = None, limit: int | None = None, cursor: str | None = None) -> dict:
    """The merchant's audit trail (admins and supervisors), newest first."""
    merchant_id = principal.require_merchant_side()
    principal.require_role("admin", "supervisor")
    size = clamp_limit(limit)
    stmt = select(AuditLog).where(AuditLog.merchant_id == merchant_id)
    if object_id:
        stmt = stmt.where(AuditLog.object_id == object_id)
    if action:
        stmt = stmt.where(AuditLog.action == action)
    after = decode_cursor(cursor)
    if after:
        stmt = stmt.where(AuditLog.id < after[0])
    rows = list((await session.execute(stmt.order_by(AuditLog.id.desc()).limit(size + 1))).scalars())
    rows, next_cursor = cut(rows, size)
    return page([{"id": r.id, "at": isoformat(r.at), "actor_type": r.actor_type, "actor_id": r.actor_id,
                  "action": r.action, "object_type": r.object_type, "object_id": r.object_id, "data": r.data}
                 for r in rows], next_cursor)
