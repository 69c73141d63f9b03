"""Reads of accounts that other domains use."""
from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from shopdesk.accounts.models import Merchant
from shopdesk.core.errors import NotFound


async def merchant_of(session: AsyncSession, merchant_id: str) -> Merchant:
    """The merchant row, read at most once per session.

    The identity map holds rows only weakly, so without the reference kept in session.info every
    action that asks for the merchant would read it again.
    """
    held: dict[str, Merchant] = session.info.setdefault("merchants", {})
    merchant = held.get(merchant_id)
    if merchant is None:
        merchant = await session.get(Merchant, merchant_id)
        if merchant is None:
            raise NotFound("no such merchant")
        held[merchant_id] = merchant
    return merchant
