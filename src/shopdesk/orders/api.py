"""Routes: products, orders and shipments."""
from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import or_, select

from shopdesk.accounts.models import Store
from shopdesk.core.errors import NotFound
from shopdesk.core.pagination import clamp_limit, cut, decode_cursor
from shopdesk.customers.models import Customer
from shopdesk.orders.actions import do_add_shipment, do_upsert_order, do_upsert_product, load_order, order_options, order_out
from shopdesk.orders.models import Order
from shopdesk.orders.schemas import OrderIn, ProductIn, ShipmentIn
from shopdesk.web.deps import CurrentPrincipal, DbSession
from shopdesk.web.responses import create_once, page

router = APIRouter()


@router.post("/products", status_code=201)
async def upsert_product(body: ProductIn, request: Request, session: DbSession, principal: CurrentPrincipal):
    merchant_id = principal.require_merchant_side()

    async def make() -> dict:
        p = await do_upsert_product(session, merchant_id, body)
        return {"id": p.id, "sku": p.sku, "name": p.name, "category": p.category, "price_fen": p.price_fen,
                "no_reason_return": p.no_reason_return}

    return await create_once(request, session, principal, make)


async def _store_code(session, store_id: str) -> str:
    store = await session.get(Store, store_id)
    return store.code if store else ""


@router.post("/orders", status_code=201)
async def upsert_order(body: OrderIn, request: Request, session: DbSession, principal: CurrentPrincipal):
    merchant_id = principal.require_merchant_side()

    async def make() -> dict:
        order = await do_upsert_order(session, merchant_id, body)
        return order_out(order, body.store)

    return await create_once(request, session, principal, make)


async def access_order(session, principal, order_id: str) -> Order:
    if principal.merchant_id is None or principal.is_platform:
        raise NotFound("no such order")
    order = await load_order(session, principal.merchant_id, order_id)
    if principal.kind == "shopper" and order.customer_id != principal.customer_id:
        raise NotFound("no such order")
    return order


@router.get("/orders/{order_id}")
async def get_order(order_id: str, session: DbSession, principal: CurrentPrincipal) -> dict:
    order = await access_order(session, principal, order_id)
    return order_out(order, await _store_code(session, order.store_id))


@router.post("/orders/{order_id}/shipments")
async def add_shipment(order_id: str, body: ShipmentIn, session: DbSession, principal: CurrentPrincipal) -> dict:
    merchant_id = principal.require_merchant_side()
    async with session.begin():
        order = await do_add_shipment(session, merchant_id, order_id, body, principal.actor_id)
        return order_out(order, await _store_code(session, order.store_id))


@router.get("/orders")
async def list_orders(session: DbSession, principal: CurrentPrincipal, customer: str | None = None,
                      q: str | None = None, limit: int | None = None, cursor: str | None = None) -> dict:
    if principal.merchant_id is None:
        return page([], None)
    size = clamp_limit(limit)
    stmt = select(Order).where(Order.merchant_id == principal.merchant_id).options(*order_options())
    if principal.kind == "shopper":
        stmt = stmt.where(Order.customer_id == principal.customer_id)
    elif not principal.is_merchant_side:
        return page([], None)
    if customer:
        stmt = stmt.join(Customer, Customer.id == Order.customer_id).where(
            or_(Customer.external_id == customer, Customer.id == customer))
    if q:
        stmt = stmt.where(Order.order_no.contains(q))
    after = decode_cursor(cursor)
    if after:
        stmt = stmt.where(Order.id < after[0])
    rows = list((await session.execute(stmt.order_by(Order.id.desc()).limit(size + 1))).scalars())
    rows, next_cursor = cut(rows, size)
    stores = {s.id: s.code for s in (await session.execute(select(Store).where(
        Store.merchant_id == principal.merchant_id))).scalars()}
    return page([order_out(o, stores.get(o.store_id)) for o in rows], next_cursor)
