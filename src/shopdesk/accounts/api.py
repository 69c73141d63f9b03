"""Routes: staff tokens and stores."""
from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from shopdesk.accounts.actions import do_create_store, do_login
from shopdesk.accounts.models import Store
from shopdesk.web.deps import CurrentPrincipal, DbSession
from shopdesk.web.responses import create_once

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
