"""Customers: upsert by the shop's own id."""
from __future__ import annotations

from sqlalchemy import func, select
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


async def customer_by_email(session: AsyncSession, merchant_id: str, address: str) -> Customer | None:
    """The merchant's first customer with this email address, whatever its case."""
    if not address:
        return None
    return (await session.execute(select(Customer).where(Customer.merchant_id == merchant_id,
                                                         func.lower(Customer.email) == address.lower())
                                  .order_by(Customer.created_at).limit(1))).scalar_one_or_none()


def _spellings(phone: str) -> list[str]:
    """The ways a shop may have stored this number, for an indexed IN lookup."""
    out = {phone, f"+86{phone}", f"86{phone}", f"+86 {phone}", f"0086{phone}"}
    if len(phone) == 11 and phone.startswith("1"):
        for sep in (" ", "-"):
            grouped = sep.join((phone[:3], phone[3:7], phone[7:]))
            out |= {grouped, f"+86 {grouped}", f"+86{sep}{grouped}"}
    return sorted(out)


async def customer_by_phone(session: AsyncSession, merchant_id: str, phone: str) -> Customer | None:
    """The merchant's customer with this number (the newest, if several share it)."""
    if len(phone) < 5:
        return None
    return (await session.execute(select(Customer).where(
        Customer.merchant_id == merchant_id, Customer.phone.in_(_spellings(phone)))
        .order_by(Customer.created_at.desc(), Customer.id.desc()).limit(1))).scalar_one_or_none()
