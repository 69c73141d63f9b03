"""Orders: catalogue upserts, order import with discount apportionment, shipments and holds."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from shopdesk.accounts.actions import store_by_code
from shopdesk.core.audit import record
from shopdesk.core.db import lock_first
from shopdesk.core.errors import Conflict, NotFound, ValidationFailed
from shopdesk.core.money import apportion
from shopdesk.customers.actions import do_upsert_customer
from shopdesk.orders.models import Order, OrderLine, Payment, Product, Shipment
from shopdesk.orders.schemas import OrderIn, ProductIn, ShipmentIn


async def do_upsert_product(session: AsyncSession, merchant_id: str, data: ProductIn) -> Product:
    product = (await session.execute(select(Product).where(
        Product.merchant_id == merchant_id, Product.sku == data.sku))).scalar_one_or_none()
    if product is None:
        product = Product(merchant_id=merchant_id, **data.model_dump())
        session.add(product)
        await session.flush()
    else:
        for key, value in data.model_dump().items():
            setattr(product, key, value)
    return product


def order_options():
    return (selectinload(Order.lines), selectinload(Order.payments), selectinload(Order.shipments))


async def load_order(session: AsyncSession, merchant_id: str, order_id: str, *, lock: bool = False) -> Order:
    """Fetch an order of this merchant (optionally locked), or 404."""
    # One statement: an order's lines, payments and shipments are few, so joining them is cheaper
    # than a round trip for each.
    stmt = select(Order).where(Order.id == order_id, Order.merchant_id == merchant_id).options(
        joinedload(Order.customer, innerjoin=True), joinedload(Order.lines), joinedload(Order.payments),
        joinedload(Order.shipments))
    if lock:
        await lock_first(session, Order, Order.id == order_id, Order.merchant_id == merchant_id)
        stmt = stmt.with_for_update(of=Order).execution_options(populate_existing=True)
    order = (await session.execute(stmt)).unique().scalar_one_or_none()
    if order is None:
        raise NotFound("no such order")
    return order


def check_order(data: OrderIn) -> None:
    """Refuse orders whose lines, discounts and payments do not add up."""
    seen: set[str] = set()
    for i, line in enumerate(data.lines):
        if line.line_no in seen:
            raise ValidationFailed("line_no repeated", field=f"lines[{i}].line_no")
        seen.add(line.line_no)
    goods = sum(ln.quantity * ln.unit_price_fen for ln in data.lines)
    discount = sum(d.amount_fen for d in data.discounts)
    if discount > goods:
        raise ValidationFailed("discounts exceed the goods total", field="discounts")
    due = goods - discount + data.shipping_fee_fen
    paid = sum(p.amount_fen for p in data.payments)
    if paid != due:
        raise ValidationFailed(f"payments add up to {paid} fen but goods − discounts + shipping is {due} fen",
                               field="payments")
    for i, s in enumerate(data.shipments):
        for ln in s.line_nos:
            if ln not in seen:
                raise ValidationFailed(f"unknown line_no '{ln}'", field=f"shipments[{i}].line_nos")


async def do_upsert_order(session: AsyncSession, merchant_id: str, data: OrderIn) -> Order:
    """Create an order, or update it while nothing after-sales depends on its lines."""
    check_order(data)
    store = await store_by_code(session, merchant_id, data.store)
    customer = await do_upsert_customer(session, merchant_id, **data.customer.model_dump())
    existing = (await session.execute(select(Order).where(Order.store_id == store.id, Order.order_no == data.order_no)
                                      .options(*order_options()).with_for_update(of=Order).execution_options(populate_existing=True))).scalar_one_or_none()
    products = {p.sku: p for p in (await session.execute(select(Product).where(
        Product.merchant_id == merchant_id, Product.sku.in_([ln.sku for ln in data.lines])))).scalars()}
    goods = sum(ln.quantity * ln.unit_price_fen for ln in data.lines)
    discount = sum(d.amount_fen for d in data.discounts)
    # Rulebook 4.1: order-level discounts spread over lines by value, the last line takes the remainder.
    shares = apportion(discount, [ln.quantity * ln.unit_price_fen for ln in data.lines])

    if existing is not None:
        same_lines = [(ln.line_no, ln.sku, ln.quantity, ln.unit_price_fen) for ln in existing.lines] == [
            (ln.line_no, ln.sku, ln.quantity, ln.unit_price_fen) for ln in data.lines]
        if not same_lines and any(ln.refunded_qty or ln.held_qty for ln in existing.lines):
            raise Conflict("order lines cannot change once after-sales has moved money", code="order_locked")
        if not same_lines:
            raise Conflict("order lines cannot change after import; cancel and re-import", code="order_locked")
        existing.customer_id = customer.id
        existing.shipping_address = data.shipping_address
        for s in data.shipments:
            await _add_shipment(session, existing, s)
        existing.status = _status(existing)
        existing.version += 1
        return existing

    order = Order(merchant_id=merchant_id, store_id=store.id, order_no=data.order_no, customer_id=customer.id,
                  placed_at=data.placed_at, paid_at=data.paid_at, goods_total_fen=goods,
                  discount_total_fen=discount, shipping_fee_fen=data.shipping_fee_fen,
                  paid_total_fen=goods - discount + data.shipping_fee_fen,
                  discounts=[d.model_dump() for d in data.discounts], shipping_address=data.shipping_address)
    session.add(order)
    await session.flush()
    for pos, (ln, disc) in enumerate(zip(data.lines, shares)):
        product = products.get(ln.sku)
        session.add(OrderLine(
            merchant_id=merchant_id, order_id=order.id, position=pos, line_no=ln.line_no, sku=ln.sku, name=ln.name,
            quantity=ln.quantity, unit_price_fen=ln.unit_price_fen, is_gift=ln.is_gift,
            declared_value_fen=ln.declared_value_fen, art7_confirmed=ln.art7_confirmed,
            no_reason_return=product.no_reason_return if product else "allowed",
            discount_fen=disc, paid_fen=ln.quantity * ln.unit_price_fen - disc))
    for pos, p in enumerate(data.payments):
        session.add(Payment(merchant_id=merchant_id, order_id=order.id, position=pos, method=p.method,
                            amount_fen=p.amount_fen, trade_no=p.trade_no))
    await session.flush()
    order = await load_order(session, merchant_id, order.id)
    for s in data.shipments:
        await _add_shipment(session, order, s)
    order.status = _status(order)
    return order


async def _add_shipment(session: AsyncSession, order: Order, data: ShipmentIn) -> Shipment:
    by_no = {ln.line_no: ln for ln in order.lines}
    for i, no in enumerate(data.line_nos):
        line = by_no.get(no)
        if line is None:
            raise ValidationFailed(f"unknown line_no '{no}'", field=f"line_nos[{i}]")
        # Rulebook §5: lines refunded before shipping are held; shipping them is refused. Shipments
        # carry no quantities, so a line with only some units held may still ship the rest.
        if line.held_qty >= line.quantity:
            raise Conflict(f"line {no} is on a fulfilment hold (refunded before shipping)", code="fulfilment_hold",
                           field=f"line_nos[{i}]")
    for s in order.shipments:
        if s.carrier == data.carrier and s.tracking_no == data.tracking_no:
            if data.signed_at and not s.signed_at:
                s.signed_at = data.signed_at
            return s
    shipment = Shipment(merchant_id=order.merchant_id, order_id=order.id, carrier=data.carrier,
                        tracking_no=data.tracking_no, line_nos=list(data.line_nos), shipped_at=data.shipped_at,
                        signed_at=data.signed_at)
    session.add(shipment)
    order.shipments.append(shipment)
    return shipment


async def do_add_shipment(session: AsyncSession, merchant_id: str, order_id: str, data: ShipmentIn,
                          actor_id: str | None) -> Order:
    order = await load_order(session, merchant_id, order_id, lock=True)
    await _add_shipment(session, order, data)
    order.status = _status(order)
    order.version += 1
    record(session, merchant_id=merchant_id, actor_type="agent", actor_id=actor_id, action="order.ship",
           object_type="order", object_id=order.id, data={"tracking_no": data.tracking_no, "lines": data.line_nos})
    return order


async def do_mark_shipment_signed(session: AsyncSession, shipment: Shipment, signed_at: datetime, state: str) -> None:
    shipment.tracking_state = state
    if shipment.signed_at is None:
        shipment.signed_at = signed_at


def _status(order: Order) -> str:
    if order.status == "cancelled":
        return "cancelled"
    shipped = {no for s in order.shipments for no in s.line_nos}
    to_ship = [ln for ln in order.lines if ln.held_qty < ln.quantity]
    if not shipped:
        return "paid"
    if any(ln.line_no not in shipped for ln in to_ship):
        return "partially_shipped"
    return "signed" if all(s.signed_at for s in order.shipments) else "shipped"


def line_shipping(order: Order) -> dict[str, tuple[datetime | None, datetime | None]]:
    """Map line id → (shipped_at, signed_at) of the first parcel carrying it."""
    out: dict[str, tuple[datetime | None, datetime | None]] = {}
    for line in order.lines:
        for s in order.shipments:
            if line.line_no in s.line_nos:
                out[line.id] = (s.shipped_at, s.signed_at)
                break
        else:
            out[line.id] = (None, None)
    return out


def order_out(order: Order, store_code: str | None = None) -> dict:
    from shopdesk.core.clock import isoformat

    return {
        "id": order.id, "order_no": order.order_no, "store": store_code, "status": order.status,
        "customer_id": order.customer_id, "placed_at": isoformat(order.placed_at), "paid_at": isoformat(order.paid_at),
        "goods_total_fen": order.goods_total_fen, "discount_total_fen": order.discount_total_fen,
        "shipping_fee_fen": order.shipping_fee_fen, "paid_total_fen": order.paid_total_fen,
        "shipping_refunded_fen": order.shipping_refunded_fen, "discounts": order.discounts,
        "shipping_address": order.shipping_address, "version": order.version,
        "lines": [{"id": ln.id, "line_no": ln.line_no, "sku": ln.sku, "name": ln.name, "quantity": ln.quantity,
                   "unit_price_fen": ln.unit_price_fen, "is_gift": ln.is_gift,
                   "declared_value_fen": ln.declared_value_fen, "art7_confirmed": ln.art7_confirmed,
                   "no_reason_return": ln.no_reason_return, "discount_fen": ln.discount_fen,
                   "paid_fen": ln.paid_fen, "refunded_fen": ln.refunded_fen, "refunded_qty": ln.refunded_qty,
                   "held_qty": ln.held_qty} for ln in order.lines],
        "payments": [{"id": p.id, "method": p.method, "amount_fen": p.amount_fen, "trade_no": p.trade_no,
                      "refunded_fen": p.refunded_fen} for p in order.payments],
        "shipments": [{"id": s.id, "carrier": s.carrier, "tracking_no": s.tracking_no, "line_nos": s.line_nos,
                       "shipped_at": isoformat(s.shipped_at), "signed_at": isoformat(s.signed_at)}
                      for s in order.shipments],
    }
