"""Routes: customers, shopper tokens and the no-login order lookup."""
from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from shopdesk.accounts.auth import shopper_token
from shopdesk.accounts.models import Merchant, Store
from shopdesk.core.errors import NotFound
from shopdesk.core.ratelimit import hit
from shopdesk.customers.actions import customer_out, do_upsert_customer
from shopdesk.customers.models import Customer
from shopdesk.orders.models import Order
from shopdesk.orders.schemas import CustomerIn
from shopdesk.web.deps import CurrentPrincipal, DbSession
from shopdesk.web.responses import create_once

router = APIRouter()


class LookupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    store: str = Field(min_length=1, max_length=64)
    order_no: str = Field(min_length=1, max_length=64)
    phone: str = Field(min_length=4, max_length=32)
    merchant: str | None = Field(default=None, max_length=64)


@router.post("/customers", status_code=201)
async def upsert_customer(body: CustomerIn, request: Request, session: DbSession, principal: CurrentPrincipal):
    merchant_id = principal.require_merchant_side()

    async def make() -> dict:
        return customer_out(await do_upsert_customer(session, merchant_id, **body.model_dump()))

    return await create_once(request, session, principal, make)


@router.post("/customers/{external_id}/token")
async def customer_token(external_id: str, session: DbSession, principal: CurrentPrincipal) -> dict:
    if principal.kind != "merchant_key":
        raise NotFound("not found")
    customer = (await session.execute(select(Customer).where(
        Customer.merchant_id == principal.merchant_id, Customer.external_id == external_id))).scalar_one_or_none()
    if customer is None:
        raise NotFound("no such customer")
    return {"token": shopper_token(customer.merchant_id, customer.id)}


async def lookup_order(session, store_code: str, order_no: str, phone: str, merchant_slug: str | None) -> Order:
    """Find an order by store code, number and the buyer's phone; a miss never says which was wrong."""
    stmt = (select(Order).join(Store, Store.id == Order.store_id).join(Customer, Customer.id == Order.customer_id)
            .where(Store.code == store_code, Order.order_no == order_no))
    if merchant_slug:
        stmt = stmt.join(Merchant, Merchant.id == Order.merchant_id).where(Merchant.slug == merchant_slug)
    digits = "".join(ch for ch in phone if ch.isdigit())
    for order in (await session.execute(stmt.add_columns(Customer.phone))).all():
        stored = "".join(ch for ch in order[1] if ch.isdigit())
        if stored and stored == digits:
            return order[0]
    raise NotFound("no order matches these details")


@router.post("/shopper/lookup")
async def shopper_lookup(body: LookupIn, request: Request, session: DbSession) -> dict:
    hit("10/minute", "lookup-ip", request.client.host if request.client else "-")
    hit("5/minute", "lookup-order", body.store, body.order_no)
    order = await lookup_order(session, body.store, body.order_no, body.phone, body.merchant)
    return {"token": shopper_token(order.merchant_id, order.customer_id), "order_id": order.id}
