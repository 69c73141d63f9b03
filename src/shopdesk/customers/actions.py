"""Customers: upsert by the shop's own id."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.customers.models import Customer


async def do_upsert_customer(session: AsyncSession, merchant_id: str, *, external_id: str, name: str | None = None,
                             phone: str | None = None, email: str | None = None) -> Customer:
    customer = (await session.execute(select(Customer).where(
        Customer.merchant_id == merchant_id, Customer.external_id == external_id))).scalar_one_or_none()
    if customer is None:
        customer = Customer(merchant_id=merchant_id, external_id=external_id, name=name or "",
                            phone=phone or "", email=email or "")
        session.add(customer)
        await session.flush()
        return customer
    if name is not None:
        customer.name = name
    if phone is not None:
        customer.phone = phone
    if email is not None:
        customer.email = email
    return customer


async def get_customer(session: AsyncSession, merchant_id: str, customer_id: str) -> Customer | None:
    customer = await session.get(Customer, customer_id)
    return customer if customer and customer.merchant_id == merchant_id else None


def customer_out(c: Customer, reveal: bool = True) -> dict:
    phone = c.phone if reveal or len(c.phone) < 7 else c.phone[:3] + "****" + c.phone[-4:]
    return {"id": c.id, "external_id": c.external_id, "name": c.name, "phone": phone, "email": c.email}
